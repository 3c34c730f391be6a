//! The budget in cluster mode is never overspent (rules 3.11 across processes, 6.3):
//! each finding of the safety review (`F1`..`F9`) as a test against real
//! `redis-server` processes, shaped so that it fails without its fix.

#[path = "support/judge.rs"]
mod judge;
#[path = "support/limit.rs"]
mod limit;
#[path = "support/redis_server.rs"]
mod redis_server;

use std::time::{Duration, Instant};

use identify_queue::redis::{Health, NeedLimit, Options, Queue};
use identify_queue::{Config, SessionStartLimit};
use limit::limit;
use redis_server::Server;
use tokio::time::{sleep, timeout};

const INTERVAL: Duration = Duration::from_millis(100);

/// A queue's settings: its grace (`Config::grace`) and the cluster options.
struct Settings {
    grace: Duration,
    options: Options,
}

fn options(grace: Duration) -> Settings {
    Settings {
        grace,
        options: Options::default(),
    }
}

impl From<Options> for Settings {
    fn from(options: Options) -> Self {
        Self {
            grace: Config::default().get_grace(),
            options,
        }
    }
}

/// A queue of the bot `bot` on `server`, past a fresh state's quiet interval.
async fn queue(server: &Server, limit: SessionStartLimit, settings: impl Into<Settings>) -> Queue {
    let Settings { grace, options } = settings.into();
    let queue = Queue::connect_with(
        server.url(),
        "bot",
        limit,
        Config::default().interval(INTERVAL).grace(grace),
        options,
    )
    .await
    .unwrap();
    sleep(INTERVAL * 2).await;
    queue
}

/// A queue whose word counts nothing (`reset_after` 0, 10 of 10 left): Discord's window
/// opens with the next IDENTIFY.
async fn unopened(server: &Server, max_concurrency: u32, grace: Duration) -> Queue {
    let limit = SessionStartLimit {
        total: 10,
        reset_after: Duration::ZERO,
        ..limit(max_concurrency, 10)
    };
    queue(server, limit, options(grace)).await
}

/// `shard` acquired in a task of its own: resolves to when its permit was taken.
fn spawn_acquire(
    queue: &Queue,
    shard: u32,
) -> tokio::task::JoinHandle<Result<Instant, identify_queue::AcquireError>> {
    let queue = queue.clone();
    tokio::spawn(async move { queue.acquire(shard).await.map(|p| p.granted_at()) })
}

/// A word of `remaining` read just after a loss was applied quarantined (rules 6.3):
/// less what the bucket can have granted before the loss and still deliver unseen, one
/// grant per spacing (101 ms) for the longest window and the grace (10 s and 30 s).
async fn assert_quarantined(queue: &Queue, remaining: u32) {
    let left = self::remaining(queue).await;
    assert!(
        left <= remaining - 390,
        "not quarantined: {left} of {remaining}"
    );
}

async fn remaining(queue: &Queue) -> u32 {
    queue.snapshot().await.unwrap().expect("state").remaining
}

/// F2, the review's program through the public API: the four `acquire` futures made
/// (and polled once, which makes their requests) up front, shard 0 awaited and started, a word read 3 s later with Discord's count
/// (which has only shard 0), then shards 1..3 awaited. Their grants were made before
/// the word but reach their shards after it: Discord had not counted them, so the word
/// must not hand their units out again. Before the fix: Discord 6, Redis 9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_word_read_while_grants_wait_untaken_does_not_count_them_twice() {
    let server = Server::start(false);
    let queue = queue(&server, limit(4, 10), options(Duration::from_secs(1))).await;
    let mut discord_remaining = 10;
    let mut waiting: Vec<_> = (0..4).map(|shard| queue.acquire(shard)).collect();
    let mut rest = waiting.split_off(1);
    for acquire in &mut rest {
        assert!(futures_util::FutureExt::now_or_never(acquire).is_none());
    }
    let first = waiting.pop().unwrap();
    drop(first.await.unwrap());
    discord_remaining -= 1; // shard 0 identified
    sleep(Duration::from_secs(3)).await; // starting shard 0
    queue.update(limit(4, discord_remaining)).await.unwrap();
    for acquire in rest {
        drop(acquire.await.unwrap());
        discord_remaining -= 1;
    }
    let ours = remaining(&queue).await;
    eprintln!("Discord's remaining: {discord_remaining}   Redis's remaining: {ours}");
    assert!(
        ours <= discord_remaining,
        "Discord {discord_remaining}, Redis {ours}"
    );
    assert!(queue.stats().touches >= 3, "{:?}", queue.stats());
}

/// F1: a word read 1 s before it was applied says the budget resets in 2 s, so
/// Discord resets 1 s after the sync. The grants made after Discord's reset come out
/// of the old budget but count in Discord's new window; Redis's refill must not hand
/// out a full budget again in that window. Before the fix: 6 grants after Discord's
/// reset in a window of 3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_refill_after_a_late_word_leaves_out_the_grants_near_the_reset() {
    let server = Server::start(false);
    let queue = queue(
        &server,
        SessionStartLimit {
            total: 3,
            ..limit(1, 3)
        },
        options(Duration::from_secs(1)),
    )
    .await;
    // Read 1 s ago (as far as the queue knows: now), applied now.
    queue
        .update(SessionStartLimit {
            total: 3,
            reset_after: Duration::from_millis(2000),
            ..limit(1, 3)
        })
        .await
        .unwrap();
    let discord_reset = Instant::now() + Duration::from_millis(1000);
    sleep(Duration::from_millis(1100)).await; // past Discord's reset
    let mut after_reset = 0;
    let deadline = Instant::now() + Duration::from_millis(2500);
    for shard in 0.. {
        match timeout(
            deadline.saturating_duration_since(Instant::now()),
            queue.acquire(shard),
        )
        .await
        {
            Ok(permit) => {
                assert!(permit.unwrap().granted_at() >= discord_reset);
                after_reset += 1;
            }
            Err(_) => break,
        }
    }
    eprintln!("grants in Discord's window of 3 after its reset: {after_reset}");
    assert_eq!(after_reset, 3);
    assert_eq!(remaining(&queue).await, 0);
}

/// F1's mirror: the first grant after a refill opens the next window, but Discord
/// opens it when that IDENTIFY arrives: Redis's next reset is placed a grace after
/// the end of the grant's delivery window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_window_is_placed_at_the_latest_arrival() {
    let server = Server::start(false);
    let grace = Duration::from_secs(5);
    let queue = unopened(&server, 1, grace).await;
    drop(queue.acquire(0).await.unwrap());
    let reset_in = queue.snapshot().await.unwrap().unwrap().reset_in.unwrap();
    let day = Duration::from_secs(24 * 3600);
    assert!(
        reset_in > day + grace - Duration::from_secs(1),
        "{reset_in:?}"
    );
    let window = queue.stats().window;
    assert!(reset_in <= day + grace + window, "{reset_in:?}");
}

/// Rules 6.3, a delivery heard of: after a word that counts nothing, every grant may
/// be the one whose delivery opens Discord's window (an earlier one may never be
/// delivered), and pushes Redis's reset on, until a process says a permit reached its
/// shard. The queue says so by itself, in its next grant call or alone: a grant half a
/// second after the first delivered one leaves the reset where that delivery placed
/// it. (Without the word of the delivery the reset would move half a second on; before
/// `budget-lua-vs-rust.md`'s F1 was fixed, the first grant fixed it, delivered or not.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_heard_of_settles_where_discords_window_opened() {
    let server = Server::start(false);
    let queue = unopened(&server, 2, Duration::from_secs(5)).await;
    // Shard 0 taken, and nothing else waits here: its delivery is told alone.
    drop(queue.acquire(0).await.unwrap());
    let settled = Instant::now();
    let placed = queue.snapshot().await.unwrap().unwrap().reset_in.unwrap();
    sleep(Duration::from_millis(500)).await;
    // Shard 1, in the other bucket: it may not open the window any more.
    drop(queue.acquire(1).await.unwrap());
    let reset_in = queue.snapshot().await.unwrap().unwrap().reset_in.unwrap();
    let moved = (Instant::now() + reset_in).saturating_duration_since(settled + placed);
    assert!(
        moved < Duration::from_millis(250),
        "the reset moved {moved:?} with a grant after a delivery"
    );
}

/// F5: a word read a while ago subtracts the grants made within the grace before it
/// was read, not before it was applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_word_subtracts_the_grants_before_its_reading() {
    let server = Server::start(false);
    let queue = queue(&server, limit(2, 10), options(Duration::from_secs(1))).await;
    drop(queue.acquire(0).await.unwrap());
    drop(queue.acquire(1).await.unwrap());
    sleep(Duration::from_millis(2000)).await;
    // Read 2.5 s ago (before the grants), applied now: Discord had not counted them.
    queue
        .update_with_age(limit(2, 10), Duration::from_millis(2500))
        .await
        .unwrap();
    assert_eq!(remaining(&queue).await, 8);
    // The same word as if just read: they are older than the grace, Discord counted
    // them.
    queue.update(limit(2, 8)).await.unwrap();
    assert_eq!(remaining(&queue).await, 8);
}

/// F3: a server whose eviction policy may drop keys without a TTL is refused (the
/// error names the setting), at connect and at once when it changes under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_may_evict_the_state_is_refused() {
    let server = Server::start_with(
        false,
        &["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"],
    );
    let error = Queue::connect(
        server.url(),
        "bot",
        limit(1, 10),
        Config::default().interval(INTERVAL),
    )
    .await
    .expect_err("allkeys-lru refused")
    .to_string();
    assert!(error.contains("maxmemory-policy allkeys-lru"), "{error}");
    // A volatile policy never evicts keys without a TTL: accepted.
    server.cli(&["CONFIG", "SET", "maxmemory-policy", "volatile-lru"]);
    let queue = queue(&server, limit(1, 10), Options::default()).await;
    drop(queue.acquire(0).await.unwrap());
    // Changed under load: nothing more is granted, and health says why.
    server.cli(&["CONFIG", "SET", "maxmemory-policy", "allkeys-random"]);
    let waiting = spawn_acquire(&queue, 1);
    sleep(INTERVAL * 4).await;
    assert!(!waiting.is_finished(), "granted on an evicting server");
    match queue.health() {
        Health::Unreachable { reason } => assert!(reason.contains("maxmemory-policy"), "{reason}"),
        other => panic!("health {other:?}"),
    }
    server.cli(&["CONFIG", "SET", "maxmemory-policy", "noeviction"]);
    timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served once the policy is safe")
        .unwrap()
        .unwrap();
}

/// F3: a key of the state lost on its own (as an eviction does) makes the whole state
/// count as missing: nothing is granted until Discord's word, and then not before an
/// interval. Before the fix: the bucket read as free at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn part_of_the_state_lost_counts_as_all_of_it() {
    for key in ["iq:{bot}:bkt", "iq:{bot}:log"] {
        let server = Server::start(false);
        let queue = queue(&server, limit(1, 10), Options::default()).await;
        drop(queue.acquire(0).await.unwrap());
        server.cli(&["DEL", key]);
        let waiting = spawn_acquire(&queue, 1);
        sleep(INTERVAL * 3).await;
        assert!(
            !waiting.is_finished(),
            "{key} lost: granted without Discord's word"
        );
        assert_eq!(
            queue.health(),
            Health::NeedsLimit(NeedLimit::StateMissing),
            "{key}"
        );
        let word = Instant::now();
        queue.update(limit(1, 900)).await.unwrap();
        assert_quarantined(&queue, 900).await;
        let granted = timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(
            granted >= word + INTERVAL,
            "{key}: granted {:?} after the word",
            granted - word
        );
    }
}

/// F4: a server demoted and promoted again keeps its run_id but not its replication
/// id: it may have lost writes, so it is a new epoch (Discord's word first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_and_repromoted_server_is_a_new_epoch() {
    let server = Server::start(false);
    let queue = queue(&server, limit(1, 10), Options::default()).await;
    drop(queue.acquire(0).await.unwrap());
    let before = queue.snapshot().await.unwrap().unwrap().epoch;
    let run_id = |server: &Server| {
        server
            .cli(&["INFO", "server"])
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("run_id:").map(str::to_owned))
    };
    let id = run_id(&server);
    let nowhere = redis_server::free_port().to_string();
    server.cli(&["REPLICAOF", "127.0.0.1", &nowhere]);
    server.cli(&["REPLICAOF", "NO", "ONE"]);
    assert_eq!(run_id(&server), id, "the same process");
    let waiting = spawn_acquire(&queue, 1);
    sleep(INTERVAL * 5).await;
    assert!(
        !waiting.is_finished(),
        "granted without Discord's word after a promotion"
    );
    assert_eq!(queue.health(), Health::NeedsLimit(NeedLimit::NewServer));
    queue.update(limit(1, 900)).await.unwrap();
    assert_quarantined(&queue, 900).await;
    timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let after = queue.snapshot().await.unwrap().unwrap().epoch;
    assert!(after > before, "epoch {before} -> {after}");
}

/// F8: epochs never repeat, even when a restart loses the bump of the one before: a
/// new epoch is at least the server's clock in milliseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epochs_are_unique_stamps() {
    let mut server = Server::start(true);
    let queue = queue(&server, limit(1, 10), Options::default()).await;
    // The AOF's fsync, and enough time that the creation stamp plus one is stale.
    sleep(Duration::from_millis(2100)).await;
    server.restart();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let waiting = spawn_acquire(&queue, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while queue.health() != Health::NeedsLimit(NeedLimit::NewServer) {
        assert!(Instant::now() < deadline, "health {:?}", queue.health());
        sleep(Duration::from_millis(20)).await;
    }
    let epoch = queue.snapshot().await.unwrap().unwrap().epoch;
    assert!(
        epoch >= now_ms - 1000,
        "epoch {epoch} is not a stamp ({now_ms})"
    );
    waiting.abort();
}

/// F9: a touch for a grant of an earlier epoch is refused, even when the grant's record
/// survived (a failover that replicated it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_touch_of_an_earlier_epoch_is_refused() {
    let server = Server::start(false);
    let queue = queue(&server, limit(1, 10), Options::default()).await;
    let permit = queue.acquire(0).await.unwrap();
    let (epoch, seq) = permit.token();
    let touch = redis::Script::new(&format!(
        "#!lua\n{}\n{}",
        include_str!("../src/redis/lua/prelude.lua"),
        include_str!("../src/redis/lua/touch.lua")
    ));
    let client = redis::Client::open(server.url()).unwrap();
    let connection = client.get_multiplexed_async_connection().await.unwrap();
    let call = |epoch: i64| {
        let mut invocation = touch.prepare_invoke();
        invocation
            .key("iq:{bot}:")
            .arg(0)
            .arg(epoch)
            .arg(seq)
            .arg(5);
        let mut connection = connection.clone();
        async move {
            invocation
                .invoke_async::<i64>(&mut connection)
                .await
                .unwrap()
        }
    };
    assert_eq!(call(epoch).await, 1, "the grant's own epoch");
    // Its record says epoch E; the state moves to E + 1 as a failover would, keeping
    // the record.
    redis::cmd("HSET")
        .arg("iq:{bot}:state")
        .arg("epoch")
        .arg(epoch + 1)
        .query_async::<i64>(&mut connection.clone())
        .await
        .unwrap();
    assert_eq!(call(epoch).await, 0, "a grant of an earlier epoch");
}

/// F6: a reserve on a single server (which forgets the last second of grants with
/// AOF `everysec` when it restarts) is allowed, and kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reserve_on_a_single_server_is_kept() {
    let server = Server::start(true);
    let queue = queue(&server, limit(4, 4), Options::default().reserve(2)).await;
    drop(queue.acquire(0).await.unwrap());
    drop(queue.acquire(1).await.unwrap());
    let third = queue.acquire(2);
    assert!(
        timeout(INTERVAL * 3, third).await.is_err(),
        "the reserve was granted"
    );
    assert_eq!(remaining(&queue).await, 2);
    assert!(
        matches!(queue.health(), Health::NoBudget { .. }),
        "{:?}",
        queue.health()
    );
}

/// F4: with Sentinel, a master cut off from the others keeps serving the processes
/// that still reach it while the others promote a replica. A grant must need a replica
/// on the majority side: `Options::replicas`, or the master's `min-replicas-to-write`.
/// Without either, `connect` refuses, naming the option.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_without_a_minority_fence_is_refused() {
    let master = Server::start(false);
    let replica = Server::start_with(
        false,
        &["--replicaof", "127.0.0.1", &master.port.to_string()],
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !master
        .cli(&["INFO", "replication"])
        .is_some_and(|info| info.contains("connected_slaves:1") && info.contains("online"))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the replica did not sync"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let sentinel = Server::sentinel("iq", master.port);
    let url = format!("redis+sentinel://127.0.0.1:{}/iq", sentinel.port);
    let connect = |options: Options| {
        Queue::connect_with(
            url.clone(),
            "bot",
            limit(1, 10),
            Config::default().interval(INTERVAL),
            options,
        )
    };
    let error = connect(Options::default())
        .await
        .expect_err("no fence")
        .to_string();
    assert!(
        error.contains("`replicas`") && error.contains("min-replicas-to-write"),
        "{error}"
    );
    assert_eq!(
        master.cli(&["DBSIZE"]).unwrap().trim(),
        "0",
        "nothing written"
    );
    // Either fence will do.
    drop(connect(Options::default().replicas(1)).await.unwrap());
    master.cli(&["CONFIG", "SET", "min-replicas-to-write", "1"]);
    let queue = connect(Options::default()).await.unwrap();
    sleep(INTERVAL * 2).await;
    drop(queue.acquire(0).await.unwrap());
    drop(replica);
}

/// A word that counts nothing (`remaining` = `total`) says Discord's window is not
/// open: whatever its `reset_after`, the window opens with the next IDENTIFY and
/// resets a day after it. Taking `reset_after` as Discord's reset would refill at
/// 600 ms (the grants at about 200 and 300 ms are more than the grace before it) while
/// Discord's window holds both for a day.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_word_counting_nothing_waits_for_the_window_the_next_grant_opens() {
    let server = Server::start(false);
    let queue = queue(
        &server,
        SessionStartLimit {
            total: 2,
            reset_after: Duration::from_millis(600),
            ..limit(1, 2)
        },
        options(Duration::from_millis(100)),
    )
    .await;
    drop(queue.acquire(0).await.unwrap());
    drop(queue.acquire(1).await.unwrap());
    let third = queue.acquire(2);
    assert!(
        timeout(Duration::from_secs(1), third).await.is_err(),
        "refilled at the word's reset_after"
    );
    let reset_in = queue.snapshot().await.unwrap().unwrap().reset_in.unwrap();
    assert!(reset_in > Duration::from_secs(23 * 3600), "{reset_in:?}");
}

/// A refill that held back a grant cannot tell whether that grant opened Discord's
/// next window: the next reset is placed at once (a day and a grace after it), and
/// the first grant after the refill moves it on to a day and a grace after that
/// grant's delivery; the refill then counts from a day less a grace after the grant
/// held back was made (no delivery of it was earlier: the end of its delivery window
/// would count from up to a window too late, `budget-lua-vs-rust.md` F4). (rules 3.11
/// read on the safe side; the core's
/// `a_window_that_may_have_opened_early_counts_from_its_earliest_opening`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refill_that_held_back_a_grant_waits_for_both_openings() {
    let server = Server::start(false);
    let grace = Duration::from_secs(1);
    let day = Duration::from_secs(24 * 3600);
    let queue = queue(
        &server,
        SessionStartLimit {
            total: 10,
            reset_after: Duration::from_millis(1500),
            ..limit(1, 9)
        },
        options(grace),
    )
    .await;
    // Within the grace before the reset (1.5 s after the word).
    sleep(Duration::from_millis(900)).await;
    drop(queue.acquire(0).await.unwrap());
    sleep(Duration::from_millis(800)).await;
    let snapshot = queue.snapshot().await.unwrap().unwrap();
    assert_eq!(snapshot.remaining, 9, "10 less the grant near the reset");
    let placed = snapshot.reset_in.expect("a reset placed at the refill");
    assert!(placed > day && placed <= day + grace, "{placed:?}");
    // The first grant after the refill: the later opening.
    sleep(Duration::from_millis(500)).await;
    drop(queue.acquire(1).await.unwrap());
    let moved = queue.snapshot().await.unwrap().unwrap().reset_in.unwrap();
    assert!(moved > day + Duration::from_millis(900), "{moved:?}");
    // The next refill counts from a day less a grace after the grant held back.
    let client = redis::Client::open(server.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let log: Vec<(String, i64)> = redis::cmd("ZRANGE")
        .arg("iq:{bot}:log")
        .arg(0)
        .arg(0)
        .arg("WITHSCORES")
        .query_async(&mut connection)
        .await
        .unwrap();
    let count_from: i64 = redis::cmd("HGET")
        .arg("iq:{bot}:state")
        .arg("cfrom")
        .query_async(&mut connection)
        .await
        .unwrap();
    // Member `epoch:seq:shard:granted-at`.
    let granted_at: i64 = log[0].0.split(':').nth(3).unwrap().parse().unwrap();
    assert!(granted_at <= log[0].1);
    assert_eq!(
        count_from,
        granted_at + day.as_millis() as i64 - grace.as_millis() as i64
    );
}
