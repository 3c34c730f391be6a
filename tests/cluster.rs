//! Cluster mode against real `redis-server` processes on loopback (feature `redis`).
//! Each test starts its own server(s) on free ports in temp dirs. Real time, short
//! intervals: the checks are on order and lower bounds, never on tight upper bounds.

#[path = "support/judge.rs"]
mod judge;
#[path = "support/limit.rs"]
mod limit;
#[path = "support/redis_server.rs"]
mod redis_server;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use identify_queue::redis::{ConnectError, Health, NeedLimit, Options, Queue};
use identify_queue::{Config, Priority, SessionStartLimit, ShardId};
use limit::limit;
use redis_server::Server;

use tokio::time::{sleep, timeout};

const INTERVAL: Duration = Duration::from_millis(200);
/// What Redis keeps between two grants of a bucket: the interval, the 5 ms delivery
/// window and a millisecond of rounding (`Queue::connect_with`).
const SPACING: Duration = Duration::from_millis(206);

fn config() -> Config {
    Config::default().interval(INTERVAL)
}

/// A queue of the bot `bot` on `server`.
async fn bot_queue(server: &Server, limit: SessionStartLimit, config: Config) -> Queue {
    Queue::connect(server.url(), "bot", limit, config)
        .await
        .unwrap()
}

/// `shard` acquired in a task of its own: resolves to when its permit was taken.
fn spawn_acquire(queue: &Queue, shard: ShardId) -> tokio::task::JoinHandle<Instant> {
    let queue = queue.clone();
    tokio::spawn(async move { queue.acquire(shard).await.unwrap().granted_at() })
}

/// Grants as (instant, shard), in the order their permits were taken.
type Log = Arc<Mutex<Vec<(Instant, ShardId)>>>;

/// Acquires every shard of `shards` on `queue`, one task per shard, logging each
/// permit as it is taken.
fn spawn_shards(
    queue: &Queue,
    shards: impl IntoIterator<Item = ShardId>,
    log: &Log,
) -> Vec<tokio::task::JoinHandle<()>> {
    shards
        .into_iter()
        .map(|shard| {
            let (queue, log) = (queue.clone(), log.clone());
            tokio::spawn(async move {
                let permit = queue.acquire(shard).await.expect("granted");
                log.lock().unwrap().push((permit.granted_at(), shard));
            })
        })
        .collect()
}

/// Redis's own log of the grants, judged exactly on its clock (see
/// `GrantLog::assert_spaced`): the Lua's spacing, with no jitter allowance.
fn judge_log(server: &Server) {
    let log = server.grant_log("bot").expect("the shared state");
    assert!(!log.grants.is_empty(), "nothing logged");
    log.assert_spaced();
}

/// Same-bucket permits at least `interval` apart (less 1 ms of clock rounding: Redis
/// counts whole milliseconds).
fn assert_spaced(log: &[(Instant, ShardId)], max_concurrency: u32, interval: Duration) {
    for (i, &(at, shard)) in log.iter().enumerate() {
        for &(other_at, other) in &log[..i] {
            if other % max_concurrency == shard % max_concurrency {
                let gap = if at > other_at {
                    at - other_at
                } else {
                    other_at - at
                };
                assert!(
                    gap + Duration::from_millis(1) >= interval,
                    "shards {other} and {shard} of one bucket {gap:?} apart"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let server = Server::start(false);
    let url = server.url();
    let bad_limit = SessionStartLimit {
        max_concurrency: 0,
        ..limit(1, 10)
    };
    let cases: Vec<(Result<Queue, ConnectError>, &str)> = vec![
        (
            Queue::connect(&url, "", limit(1, 10), config()).await,
            "namespace",
        ),
        (
            Queue::connect(&url, "a{b}", limit(1, 10), config()).await,
            "hash tag",
        ),
        (
            Queue::connect(&url, "bot", bad_limit, config()).await,
            "max_concurrency",
        ),
        (
            Queue::connect(
                &url,
                "bot",
                limit(1, 10),
                Config::default().interval(Duration::ZERO),
            )
            .await,
            "interval",
        ),
        (
            Queue::connect("http://nope", "bot", limit(1, 10), config()).await,
            "URL",
        ),
        (
            Queue::connect("redis+sentinel:///mymaster", "bot", limit(1, 10), config()).await,
            "Sentinel",
        ),
        (
            Queue::connect_with(
                &url,
                "bot",
                limit(1, 10),
                config(),
                Options::default().head_grace(Duration::ZERO),
            )
            .await,
            "head_grace",
        ),
        (
            Queue::connect(
                &format!("redis://127.0.0.1:{}/0", redis_server::free_port()),
                "bot",
                limit(1, 10),
                config(),
            )
            .await,
            "cannot use Redis",
        ),
    ];
    for (result, needle) in cases {
        let error = result.expect_err(needle);
        let text = error.to_string();
        assert!(text.contains(needle), "{text:?} should name {needle:?}");
        // Bad input says so; Redis out of reach keeps the Redis client's error.
        match error {
            ConnectError::Invalid(_) => assert_ne!(needle, "cannot use Redis"),
            ConnectError::Unreachable(unreachable) => {
                assert_eq!(needle, "cannot use Redis");
                let source = std::error::Error::source(&unreachable).expect("a source");
                assert!(source.is::<redis::RedisError>(), "{source:?}");
            }
            other => panic!("{other:?}"),
        }
    }
    // Nothing was written.
    assert_eq!(server.cli(&["DBSIZE"]).unwrap().trim(), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_queues_share_buckets_and_budget() {
    let server = Server::start(false);
    let a = bot_queue(&server, limit(2, 10), config()).await;
    let b = bot_queue(&server, limit(2, 10), config()).await;
    let log: Log = Default::default();
    let start = Instant::now();
    let mut tasks = spawn_shards(
        &a,
        (0..12)
            .step_by(2)
            .chain((1..12).step_by(2))
            .filter(|s| s % 4 < 2),
        &log,
    );
    tasks.extend(spawn_shards(&b, (0..12).filter(|s| s % 4 >= 2), &log));
    // 12 shards, budget 10: ten are granted, two wait for the budget.
    let deadline = Instant::now() + Duration::from_secs(10);
    while log.lock().unwrap().len() < 10 && Instant::now() < deadline {
        sleep(Duration::from_millis(20)).await;
    }
    sleep(3 * INTERVAL).await;
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 10, "the budget over both queues: {log:?}");
    assert_spaced(&log, 2, INTERVAL);
    // Two buckets, ten grants: five rounds, the last at 4 intervals at least.
    let last = log.iter().map(|&(at, _)| at).max().unwrap();
    assert!(last - start >= 4 * INTERVAL - Duration::from_millis(2));
    assert_eq!(a.len() + b.len(), 2);
    assert!(
        matches!(a.health(), Health::NoBudget { .. })
            || matches!(b.health(), Health::NoBudget { .. })
    );
    let snapshot = a.snapshot().await.unwrap().unwrap();
    assert_eq!(snapshot.remaining, 0);
    assert_eq!(snapshot.grants_logged, 10);
    // Discord's word: 11 left by its count. Its last seconds may not be counted yet,
    // so the 10 grants of the grace period are subtracted: 1 unit, one more grant.
    a.update(limit(2, 11)).await.unwrap();
    sleep(3 * INTERVAL).await;
    assert_eq!(a.len() + b.len(), 1, "one unit after the word");
    assert_eq!(a.snapshot().await.unwrap().unwrap().remaining, 0);
    a.update(limit(2, 12)).await.unwrap();
    timeout(Duration::from_secs(5), async {
        for task in tasks {
            task.await.unwrap();
        }
    })
    .await
    .expect("the last one is served after the second word");
    judge_log(&server);
}

/// Waits (real time, bounded) until `check` holds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_empty_grants_nothing_until_discords_word() {
    let mut server = Server::start(false);
    let grace = Duration::from_millis(500);
    let queue = bot_queue(&server, limit(1, 100), config().grace(grace)).await;
    drop(queue.acquire(0).await.unwrap());
    let waiting = tokio::spawn({
        let queue = queue.clone();
        async move { queue.acquire(1).await }
    });
    eventually("shard 1 waits", || queue.len() == 1).await;
    server.kill();
    // Unreachable: the waiting request waits, it is not an error.
    eventually("unreachable", || {
        matches!(queue.health(), Health::Unreachable { .. })
    })
    .await;
    assert_eq!(queue.len(), 1);
    server.restart();
    // Back, but empty: no grants until Discord's word, and the queue says so.
    eventually("needs limit", || {
        queue.health() == Health::NeedsLimit(NeedLimit::StateMissing)
    })
    .await;
    let noticed = Instant::now();
    sleep(3 * INTERVAL).await;
    assert!(!waiting.is_finished(), "granted without Discord's word");
    assert_eq!(queue.snapshot().await.unwrap(), None);
    // A word read at once is quarantined (rules 6.3): a grant made before the loss
    // may still reach Discord unseen for the longest window and a grace. Applied less
    // what the bucket can have granted then, it leaves nothing here.
    queue.update(limit(1, 50)).await.unwrap();
    assert_eq!(queue.snapshot().await.unwrap().unwrap().remaining, 0);
    // Read after the quarantine, Discord's word is taken whole.
    sleep_until_after(noticed + Duration::from_secs(10) + grace).await;
    assert!(!waiting.is_finished(), "granted from a quarantined word");
    let word = Instant::now();
    queue.update(limit(1, 50)).await.unwrap();
    let permit = timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    // The lost state may have held a grant a moment before: the first word was
    // followed by a quiet interval.
    assert!(permit.granted_at() >= word);
    assert_eq!(queue.health(), Health::Ready);
    assert_eq!(queue.snapshot().await.unwrap().unwrap().remaining, 49);
}

/// Sleeps until a little after `at` (a margin for Redis's clock against ours).
async fn sleep_until_after(at: Instant) {
    tokio::time::sleep_until((at + Duration::from_millis(200)).into()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_from_aof_asks_the_limit_source_once() {
    let mut server = Server::start(true);
    let calls = Arc::new(Mutex::new(0));
    let options = {
        let calls = calls.clone();
        Options::default().limit_source(move || {
            *calls.lock().unwrap() += 1;
            Box::pin(async { Ok(limit(2, 40)) })
        })
    };
    let config = config().grace(Duration::from_millis(500));
    let a = Queue::connect_with(
        &server.url(),
        "bot",
        limit(2, 100),
        config.clone(),
        options.clone(),
    )
    .await
    .unwrap();
    let b = Queue::connect_with(&server.url(), "bot", limit(2, 100), config, options)
        .await
        .unwrap();
    let log: Log = Default::default();
    let first = spawn_shards(&a, [0, 1], &log);
    for task in first {
        task.await.unwrap();
    }
    // Let the AOF reach the disk (fsync every second), then restart from it.
    sleep(Duration::from_millis(1200)).await;
    server.restart();
    let restarted = Instant::now();
    let mut tasks = spawn_shards(&a, [2, 3, 4, 5], &log);
    tasks.extend(spawn_shards(&b, [6, 7, 8, 9], &log));
    // The word is fetched once the quarantine of the new server is over (the longest
    // window and a grace after the restart was noticed: rules 6.3).
    timeout(Duration::from_secs(25), async {
        for task in tasks {
            task.await.unwrap();
        }
    })
    .await
    .expect("served after the limit source's word");
    let log = log.lock().unwrap().clone();
    assert_spaced(&log, 2, INTERVAL);
    // One process fetched Discord's word for both (a lease in Redis decides who).
    assert_eq!(*calls.lock().unwrap(), 1);
    let first = log
        .iter()
        .map(|&(at, _)| at)
        .filter(|&at| at > restarted)
        .min();
    assert!(
        first.is_some_and(|at| at >= restarted + Duration::from_millis(10_500)),
        "granted within the quarantine: {first:?}"
    );
    let snapshot = a.snapshot().await.unwrap().unwrap();
    // 40 by Discord's count (the 2 grants before the restart are older than the grace
    // before it), less 8 since.
    assert_eq!(snapshot.remaining, 40 - 8);
    assert_eq!(snapshot.needs_limit, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_flush_changes_nothing() {
    let server = Server::start(false);
    let queue = bot_queue(&server, limit(2, 100), config()).await;
    let log: Log = Default::default();
    let tasks = spawn_shards(&queue, 0..8, &log);
    sleep(INTERVAL + INTERVAL / 2).await;
    assert_eq!(server.cli(&["SCRIPT", "FLUSH"]).unwrap().trim(), "OK");
    for task in tasks {
        timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
    let log = log.lock().unwrap().clone();
    assert_spaced(&log, 2, INTERVAL);
    assert_eq!(queue.snapshot().await.unwrap().unwrap().remaining, 92);
    assert_eq!(queue.health(), Health::Ready);
    judge_log(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrency_changed_mid_run_rekeys_every_process() {
    let server = Server::start(false);
    let a = bot_queue(&server, limit(2, 100), config()).await;
    let b = bot_queue(&server, limit(2, 100), config()).await;
    let log: Log = Default::default();
    let mut tasks = spawn_shards(&a, 0..12, &log);
    tasks.extend(spawn_shards(&b, 12..24, &log));
    sleep(INTERVAL + INTERVAL / 2).await;
    let changed = Instant::now();
    a.update(limit(4, 100)).await.unwrap();
    for task in tasks {
        timeout(Duration::from_secs(10), task)
            .await
            .unwrap()
            .unwrap();
    }
    let log = log.lock().unwrap().clone();
    let (before, after): (Vec<_>, Vec<_>) = log.iter().partition(|&&(at, _)| at < changed);
    assert_spaced(&before, 2, INTERVAL);
    assert_spaced(&after, 4, INTERVAL);
    // No grant of the new buckets within an interval of any earlier grant.
    let last_before = before.iter().map(|&(at, _)| at).max().unwrap();
    let first_after = after.iter().map(|&(at, _)| at).min().unwrap();
    assert!(first_after - last_before + Duration::from_millis(1) >= INTERVAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permit_taken_late_keeps_its_bucket_busy_from_delivery() {
    let server = Server::start(false);
    let a = bot_queue(&server, limit(1, 100), config()).await;
    let b = bot_queue(&server, limit(1, 100), config()).await;
    // Granted at once, but its future is not polled for three intervals.
    let mut late = Box::pin(a.acquire(0));
    assert!(futures_util::FutureExt::now_or_never(late.as_mut()).is_none());
    sleep(Duration::from_millis(20)).await;
    let other = spawn_acquire(&b, 1);
    // Not a multiple of the touches' half interval: taken well after the last one.
    sleep(3 * INTERVAL + Duration::from_millis(70)).await;
    assert!(
        !other.is_finished(),
        "the bucket freed while a grant was not delivered"
    );
    let taken = late.await.unwrap().granted_at();
    let other = timeout(Duration::from_secs(5), other)
        .await
        .unwrap()
        .unwrap();
    assert!(
        other - taken + Duration::from_millis(1) >= INTERVAL,
        "{:?}",
        other - taken
    );
    assert!(a.stats().touches >= 1);
    judge_log(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_mode_frees_a_bucket_on_release_for_the_other_process() {
    let server = Server::start(false);
    let held = Config::default()
        .interval(INTERVAL)
        .hold_until_release(Duration::from_secs(5));
    let a = bot_queue(&server, limit(1, 100), held.clone()).await;
    let b = bot_queue(&server, limit(1, 100), held).await;
    // What connecting cost (the scripts loaded, the round trip measured, the sync).
    let connected = b.stats().commands;
    let permit = a.acquire(0).await.unwrap();
    let other = spawn_acquire(&b, 1);
    sleep(3 * INTERVAL).await;
    assert!(!other.is_finished(), "granted while the bucket was held");
    let released = Instant::now();
    permit.release();
    let other = timeout(Duration::from_secs(5), other)
        .await
        .unwrap()
        .unwrap();
    assert!(other >= released);
    // Woken by the notification, not by polling: one ask while held, one after the
    // release (and a touch or two if this machine is slow to poll).
    assert!(b.stats().commands - connected <= 4, "{:?}", b.stats());
    judge_log(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_grant_never_spends_twice() {
    let server = Server::start(false);
    let queue = bot_queue(&server, limit(1, 100), config()).await;
    drop(queue);
    // A fresh state is quiet for an interval (a grant may have preceded its loss).
    sleep(SPACING).await;
    // The acquire script as the queue sends it, called twice with one nonce, as a
    // driver does after losing the first answer.
    let script = redis::Script::new(&format!(
        "#!lua\n{}\n{}",
        include_str!("../src/redis/lua/prelude.lua"),
        include_str!("../src/redis/lua/acquire.lua")
    ));
    let client = redis::Client::open(server.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let call = |nonce: &'static str| {
        let mut connection = connection.clone();
        let script = &script;
        async move {
            script
                .key("iq:{bot}:")
                .arg("tester")
                .arg(7)
                .arg(nonce)
                .arg(1)
                .arg(-1)
                .arg(5) // the delivery window, ms
                .invoke_async::<Vec<i64>>(&mut connection)
                .await
                .unwrap()
        }
    };
    let first = call("nonce-1").await;
    let second = call("nonce-1").await;
    assert_eq!(first[0], 1, "granted: {first:?}");
    assert_eq!(first[..5], second[..5], "the same grant");
    // Once another grant followed in its bucket, the old answer is void: a retry
    // then asks afresh (and waits), it does not hand out a stale grant.
    sleep(SPACING).await;
    assert_eq!(call("nonce-2").await[0], 1);
    let stale = call("nonce-1").await;
    assert_eq!(stale[0], 2, "asked afresh: {stale:?}");
    let remaining: String = redis::cmd("HGET")
        .arg("iq:{bot}:state")
        .arg("rem")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(remaining, "98");
    judge_log(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_dropped_while_waiting_delays_no_process() {
    let server = Server::start(false);
    // A dead head would be passed by only after 10 s: a cancel must not cost that.
    let options = Options::default().head_grace(Duration::from_secs(10));
    let url = server.url();
    let connect = || Queue::connect_with(&url, "bot", limit(1, 100), config(), options.clone());
    let (a, b) = (connect().await.unwrap(), connect().await.unwrap());
    sleep(SPACING).await; // the fresh state's quiet interval
    let first = a.acquire(0).await.unwrap().granted_at();
    // A's next shard is next in line for the bucket, B's after it.
    let mut cancelled = Box::pin(a.acquire(2));
    assert!(futures_util::FutureExt::now_or_never(cancelled.as_mut()).is_none());
    sleep(Duration::from_millis(50)).await;
    let other = spawn_acquire(&b, 1);
    sleep(Duration::from_millis(50)).await;
    drop(cancelled);
    let other = timeout(Duration::from_secs(5), other)
        .await
        .expect("not held up by a cancelled head")
        .unwrap();
    assert!(other - first + Duration::from_millis(1) >= INTERVAL);
    assert_eq!(a.len(), 0);
    assert_eq!(
        a.snapshot().await.unwrap().unwrap().remaining,
        98,
        "the cancel spent nothing"
    );
    judge_log(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_in_another_process_goes_before_queued_starts() {
    let server = Server::start(false);
    let a = bot_queue(&server, limit(1, 100), config()).await;
    let b = bot_queue(&server, limit(1, 100), config()).await;
    let log: Log = Default::default();
    let starts = spawn_shards(&a, 0..5, &log);
    sleep(INTERVAL + INTERVAL / 2).await; // the quiet interval, then shard 0
    let reconnect = tokio::spawn({
        let (b, log) = (b.clone(), log.clone());
        async move {
            let permit = b.acquire_with(9, Priority::Reconnect).await.unwrap();
            log.lock().unwrap().push((permit.granted_at(), 9));
        }
    });
    reconnect.await.unwrap();
    for task in starts {
        task.await.unwrap();
    }
    let order: Vec<ShardId> = {
        let mut log = log.lock().unwrap().clone();
        log.sort();
        log.iter().map(|&(_, shard)| shard).collect()
    };
    // Shard 0 went first; the reconnect came next, before A's four other starts.
    assert_eq!(order.iter().position(|&s| s == 9), Some(1), "{order:?}");
    judge_log(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_moved_between_tasks_and_a_permit_dropped_on_a_plain_thread() {
    let server = Server::start(false);
    let held = Config::default()
        .interval(INTERVAL)
        .hold_until_release(Duration::from_secs(30));
    let a = bot_queue(&server, limit(1, 100), held.clone()).await;
    let b = bot_queue(&server, limit(1, 100), held).await;
    // Made in one task, polled once there, awaited in another.
    let (send, receive) = tokio::sync::oneshot::channel();
    let a2 = a.clone();
    tokio::spawn(async move {
        let mut acquire = Box::pin(a2.acquire(0));
        let _ = futures_util::FutureExt::now_or_never(acquire.as_mut());
        let _ = send.send(acquire);
    });
    let permit = tokio::spawn(async move { receive.await.unwrap().await })
        .await
        .unwrap()
        .unwrap();
    let other = spawn_acquire(&b, 1);
    sleep(3 * INTERVAL).await;
    assert!(!other.is_finished(), "granted while held");
    // Released on a thread with no runtime: the driver sends it.
    let released = Instant::now();
    std::thread::spawn(move || drop(permit)).join().unwrap();
    let other = timeout(Duration::from_secs(5), other)
        .await
        .expect("released long before the 30 s hold timeout")
        .unwrap();
    assert!(other >= released);
    judge_log(&server);
}

#[test]
fn a_queue_outlives_the_runtime_it_connected_on() {
    let server = Server::start(false);
    let first = tokio::runtime::Runtime::new().unwrap();
    let queue = first
        .block_on(Queue::connect(
            &server.url(),
            "bot",
            limit(1, 100),
            config(),
        ))
        .unwrap();
    first.block_on(async { drop(queue.acquire(0).await.unwrap()) });
    // The runtime that ran its driver (and its connection) is gone.
    drop(first);
    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        let permit = timeout(Duration::from_secs(10), queue.acquire(1))
            .await
            .expect("a driver on this runtime serves it")
            .unwrap();
        assert_eq!(permit.shard(), 1);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_all_yields_every_permit_in_grant_order() {
    let server = Server::start(false);
    let queue = bot_queue(&server, limit(2, 100), config()).await;
    let mut grants = queue.acquire_all(0..6);
    let mut log = Vec::new();
    while let Some(permit) = timeout(
        Duration::from_secs(5),
        futures_util::StreamExt::next(&mut grants),
    )
    .await
    .expect("the next permit in time")
    {
        let permit = permit.unwrap();
        log.push((permit.granted_at(), permit.shard()));
    }
    assert_eq!(log.len(), 6);
    assert_spaced(&log, 2, INTERVAL);
    assert!(queue.is_empty());
    judge_log(&server);
}

/// `eta` of a waiting shard: its bucket's next instant plus a spacing (the interval and
/// this process's window) for each shard ahead of it in this process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eta_of_a_waiting_shard_counts_the_shards_ahead() {
    let server = Server::start(false);
    let queue = bot_queue(&server, limit(1, 100), config()).await;
    sleep(SPACING).await; // the fresh state's quiet interval
    let first = queue.acquire(0).await.unwrap().granted_at();
    // The requests are made at their futures' first poll.
    let mut second = queue.acquire(1);
    let mut third = queue.acquire(2);
    assert_eq!(queue.eta(1), None, "not requested yet");
    assert!(futures_util::FutureExt::now_or_never(&mut second).is_none());
    assert!(futures_util::FutureExt::now_or_never(&mut third).is_none());
    let (second, third) = timeout(Duration::from_secs(1), async {
        (queue.eta(1).unwrap(), queue.eta(2).unwrap())
    })
    .await
    .expect("eta answers");
    assert_eq!(third - second, queue.spacing());
    assert!(second >= first, "{:?}", second - first);
    assert_eq!(queue.eta(3), None);
    judge_log(&server);
}
