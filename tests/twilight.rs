//! End to end: real `twilight_gateway::Shard`s identify through our queue against the
//! fake gateway in `gateway/`, which checks Discord's rules on its own clock.
//!
//! Real time, short intervals: assertions are on order, counts and lower bounds, with
//! generous upper bounds only where a makespan is compared with the optimum.

mod gateway;
#[path = "support/judge.rs"]
mod judge;
#[path = "support/limit.rs"]
mod limit;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use gateway::{Gateway, Rules};
use identify_queue::tokio::Queue;
use identify_queue::{Config, SessionStartLimit};
use limit::limit;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use twilight_gateway::{ConfigBuilder, Event, EventTypeFlags, Intents, Shard, ShardId, StreamExt};

const INTERVAL: Duration = Duration::from_millis(200);
const JITTER: Duration = Duration::from_millis(40);
const C: u32 = 4;

/// One end-to-end run at a time: they measure real time on a small machine, and
/// running them side by side would only add delivery jitter.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn rules(remaining: u32) -> Rules {
    Rules {
        max_concurrency: C,
        interval: INTERVAL,
        jitter: JITTER,
        remaining,
        ready_after: Duration::ZERO,
    }
}

/// READY events: (shard, when the test saw it).
type Readies = mpsc::UnboundedReceiver<(u32, Instant)>;

/// Starts `ids` as shards of a bot with `total` shards, each in its own task, all
/// through `queue`; in hold mode each releases its hold when it sees READY.
fn start_shards(
    ids: impl IntoIterator<Item = u32>,
    total: u32,
    gateway: &Gateway,
    queue: &Queue,
    hold_mode: bool,
    readies: &mpsc::UnboundedSender<(u32, Instant)>,
) -> HashMap<u32, JoinHandle<()>> {
    let config = ConfigBuilder::new("test-token".to_owned(), Intents::empty())
        .proxy_url(gateway.url.clone())
        .queue(queue.clone())
        .build();
    ids.into_iter()
        .map(|id| {
            let mut shard = Shard::with_config(ShardId::new(id, total), config.clone());
            let (queue, readies) = (queue.clone(), readies.clone());
            let task = tokio::spawn(async move {
                while let Some(event) = shard.next_event(EventTypeFlags::READY).await {
                    // Errors are disconnects: the shard reconnects by itself.
                    if let Ok(Event::Ready(ready)) = event {
                        assert_eq!(ready.shard.map(|shard| shard.number()), Some(id));
                        if hold_mode {
                            queue.release(id);
                        }
                        let _ = readies.send((id, Instant::now()));
                    }
                }
            });
            (id, task)
        })
        .collect()
}

/// Waits for `count` READYs (at most a minute: a hang fails instead of hanging CI).
async fn wait_for_readies(readies: &mut Readies, count: usize) -> Vec<(u32, Instant)> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let next = tokio::time::timeout(Duration::from_secs(60), readies.recv()).await;
        match next {
            Ok(Some(ready)) => seen.push(ready),
            _ => panic!("only {} of {count} shards got READY", seen.len()),
        }
    }
    seen
}

/// Accepted IDENTIFYs' span, first to last.
fn makespan(gateway: &Gateway) -> Duration {
    let times: Vec<Instant> = gateway
        .identifies()
        .iter()
        .filter(|i| i.accepted)
        .map(|i| i.at)
        .collect();
    let first = times.iter().min().expect("identifies");
    let last = times.iter().max().expect("identifies");
    *last - *first
}

fn assert_no_violations(gateway: &Gateway) {
    let violations = gateway.violations();
    assert!(violations.is_empty(), "the gateway saw: {violations:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_shards_start_restart_and_give_up_without_breaking_a_rule() {
    let _one = ONE_AT_A_TIME.lock().await;
    sixty_four_shards(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_in_hold_mode_releasing_on_ready() {
    let _one = ONE_AT_A_TIME.lock().await;
    sixty_four_shards(true).await;
}

async fn sixty_four_shards(hold_mode: bool) {
    let gateway = Gateway::start(rules(1000)).await;
    let mut config = Config::default().interval(INTERVAL);
    if hold_mode {
        config = config.hold_until_release(Duration::from_secs(10));
    }
    let queue = Queue::with_limit(limit(C, 1000), config).unwrap();
    let (ready_sender, mut readies) = mpsc::unbounded_channel();

    // 64 shards at once: 16 rounds of 4 buckets.
    let mut shards = start_shards(0..64, 64, &gateway, &queue, hold_mode, &ready_sender);
    let first = wait_for_readies(&mut readies, 64).await;
    let mut ready_shards: Vec<u32> = first.iter().map(|&(shard, _)| shard).collect();
    ready_shards.sort_unstable();
    assert_eq!(ready_shards, (0..64).collect::<Vec<_>>());
    assert_no_violations(&gateway);
    assert_eq!(gateway.accepted(), 64);
    let optimum = INTERVAL * (64 / C - 1);
    let span = makespan(&gateway);
    println!(
        "64 shards (hold mode: {hold_mode}): makespan {span:?}, optimum {optimum:?}, violations 0"
    );
    assert!(
        span + JITTER >= optimum,
        "faster than the rules allow: {span:?}"
    );
    assert!(
        span <= optimum + Duration::from_secs(2),
        "far from the optimum: {span:?}"
    );

    // A third are told to start over: they re-identify through the queue.
    for shard in 0..21 {
        assert!(gateway.invalidate(shard), "shard {shard} has a session");
    }
    wait_for_readies(&mut readies, 21).await;
    assert_no_violations(&gateway);
    assert_eq!(gateway.accepted(), 64 + 21);

    // Eight more shards ask while the restarted ones keep bucket 0 busy, and give up
    // (their tasks end, dropping the shard and its identify receiver).
    for shard in [0, 4, 8, 12, 16] {
        assert!(gateway.invalidate(shard));
    }
    let quitters = start_shards(
        (64..96).step_by(4),
        96,
        &gateway,
        &queue,
        hold_mode,
        &ready_sender,
    );
    // All eight connect and wait behind the restarted shards of bucket 0.
    let deadline = Instant::now() + Duration::from_secs(30);
    while queue.len() < 8 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        queue.len() >= 8,
        "the quitters wait in bucket 0: {}",
        queue.len()
    );
    for task in quitters.values() {
        task.abort();
    }
    wait_for_readies(&mut readies, 5).await;
    // Nothing more waits, nothing was spent for the quitters beyond the ones the
    // gateway let through before they quit.
    tokio::time::sleep(INTERVAL * 3).await;
    assert!(queue.is_empty(), "{} still queued", queue.len());
    let accepted = gateway.accepted() as u32;
    assert_eq!(queue.remaining(), 1000 - accepted);
    assert_eq!(gateway.remaining(), 1000 - accepted);
    assert_no_violations(&gateway);
    println!(
        "after restarts and quitters (hold mode: {hold_mode}): {} IDENTIFYs, {} accepted, 0 violations",
        gateway.identifies().len(),
        accepted
    );
    shards.extend(quitters);
    for task in shards.values() {
        task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_budget_waits_for_the_update_that_refills_it() {
    let _one = ONE_AT_A_TIME.lock().await;
    let gateway = Gateway::start(rules(20)).await;
    let queue = Queue::with_limit(limit(C, 20), Config::default().interval(INTERVAL)).unwrap();
    let (ready_sender, mut readies) = mpsc::unbounded_channel();
    let shards = start_shards(0..32, 32, &gateway, &queue, false, &ready_sender);
    wait_for_readies(&mut readies, 20).await;
    tokio::time::sleep(INTERVAL * 3).await;
    assert_eq!(gateway.accepted(), 20, "nobody identifies without budget");
    assert_eq!(queue.len(), 12);
    assert_eq!(queue.remaining(), 0);

    // Discord's window resets; a fresh /gateway/bot says so.
    gateway.refill(1000);
    queue
        .update(SessionStartLimit {
            remaining: 1000,
            reset_after: Duration::from_secs(86_400),
            ..limit(C, 1000)
        })
        .unwrap();
    wait_for_readies(&mut readies, 12).await;
    assert_no_violations(&gateway);
    assert_eq!(gateway.accepted(), 32);
    assert!(queue.is_empty());
    for task in shards.values() {
        task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_mode_frees_a_bucket_when_twilight_reports_ready() {
    let _one = ONE_AT_A_TIME.lock().await;
    // READY comes 400 ms after IDENTIFY: in hold mode a bucket waits for it.
    let ready_after = Duration::from_millis(400);
    let gateway = Gateway::start(Rules {
        ready_after,
        ..rules(1000)
    })
    .await;
    let config = Config::default()
        .interval(INTERVAL)
        .hold_until_release(Duration::from_secs(10));
    let queue = Queue::with_limit(limit(C, 1000), config).unwrap();
    let (ready_sender, mut readies) = mpsc::unbounded_channel();
    let shards = start_shards(0..16, 16, &gateway, &queue, true, &ready_sender);
    wait_for_readies(&mut readies, 16).await;
    assert_no_violations(&gateway);
    let mut by_bucket: HashMap<u32, Vec<Instant>> = HashMap::new();
    for identify in gateway.identifies() {
        by_bucket
            .entry(identify.shard % C)
            .or_default()
            .push(identify.at);
    }
    for (bucket, mut times) in by_bucket {
        times.sort();
        for pair in times.windows(2) {
            // Not the interval: the previous shard's READY.
            assert!(
                pair[1] - pair[0] >= ready_after,
                "bucket {bucket}: {:?}",
                pair[1] - pair[0]
            );
        }
    }
    assert!(queue.is_empty());
    for task in shards.values() {
        task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_handshakes_and_invalid_sessions_leak_nothing() {
    let _one = ONE_AT_A_TIME.lock().await;
    let gateway = Gateway::start(rules(1000)).await;
    // The first four IDENTIFYs are answered with INVALID_SESSION, the next six lose
    // their connection before READY.
    gateway.reject_next_identifies(4);
    gateway.drop_next_identifies(6);
    let queue = Queue::with_limit(limit(C, 1000), Config::default().interval(INTERVAL)).unwrap();
    let (ready_sender, mut readies) = mpsc::unbounded_channel();
    let shards = start_shards(0..16, 16, &gateway, &queue, false, &ready_sender);
    wait_for_readies(&mut readies, 16).await;
    // Then some sessions are invalidated and must come back.
    for shard in [1, 5, 9] {
        assert!(gateway.invalidate(shard));
    }
    wait_for_readies(&mut readies, 3).await;
    tokio::time::sleep(INTERVAL).await;
    assert_no_violations(&gateway);
    assert!(queue.is_empty(), "{} queue entries leaked", queue.len());
    // Every unit the queue spent, the gateway counted: 16 + 4 + 6 retries + 3 restarts.
    let accepted = gateway.accepted() as u32;
    assert_eq!(accepted, 16 + 4 + 6 + 3);
    assert_eq!(queue.remaining(), 1000 - accepted);
    // A rejected shard re-queued and came back no sooner than its bucket allowed.
    let identifies = gateway.identifies();
    for rejected in identifies.iter().take(4) {
        let again = identifies
            .iter()
            .find(|later| later.shard == rejected.shard && later.at > rejected.at)
            .expect("the rejected shard identified again");
        assert!(
            again.at - rejected.at + JITTER >= INTERVAL,
            "shard {}",
            rejected.shard
        );
    }
    for task in shards.values() {
        task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_catches_a_queue_that_breaks_the_rules() {
    let _one = ONE_AT_A_TIME.lock().await;
    // twilight's own queue with max_concurrency 0 lets every shard identify at once.
    let gateway = Gateway::start(rules(1000)).await;
    let reckless =
        twilight_gateway_queue::InMemoryQueue::new(0, 1000, Duration::from_secs(3600), 1000);
    let config = ConfigBuilder::new("test-token".to_owned(), Intents::empty())
        .proxy_url(gateway.url.clone())
        .queue(reckless)
        .build();
    let shards: Vec<_> = (0..8)
        .map(|id| {
            let mut shard = Shard::with_config(ShardId::new(id, 8), config.clone());
            tokio::spawn(
                async move { while shard.next_event(EventTypeFlags::READY).await.is_some() {} },
            )
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while gateway.violations().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !gateway.violations().is_empty(),
        "8 shards in 4 buckets at once must break the 5 s rule"
    );
    for task in shards {
        task.abort();
    }
}

/// twilight's contract, on a paused clock: `()` on grant, a dropped receiver
/// cancels, asking again replaces the older request (whose channel closes).
#[tokio::test(start_paused = true)]
async fn the_queue_keeps_twilights_contract() {
    use twilight_gateway_queue::Queue as _;
    let limit = SessionStartLimit {
        max_concurrency: 1,
        ..limit(C, 1000)
    };
    let queue = Queue::with_limit(limit, Config::default()).unwrap();
    let start = tokio::time::Instant::now();

    queue.enqueue(0).await.expect("granted at once");
    assert_eq!(start.elapsed(), Duration::ZERO);

    // Given up while waiting: cancelled, nothing spent.
    let gave_up = queue.enqueue(1);
    tokio::task::yield_now().await;
    assert_eq!(queue.len(), 1);
    drop(gave_up);
    tokio::task::yield_now().await;
    assert!(queue.is_empty());
    assert_eq!(queue.remaining(), 999);

    // Asked again: the new request keeps the place, the old channel closes.
    let old = queue.enqueue(2);
    tokio::task::yield_now().await;
    let new = queue.enqueue(2);
    assert!(old.await.is_err(), "the older request's channel is closed");
    new.await.expect("granted");
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert_eq!(queue.remaining(), 998);
}

/// The twilight contract itself, on a paused clock: a shard that enqueues again after
/// its `()` was sent lost its session, and goes before the start-up of its bucket; one
/// that gave up while waiting and asks again is still starting.
#[tokio::test(start_paused = true)]
async fn a_shard_served_before_enqueues_again_as_a_reconnect() {
    use twilight_gateway_queue::Queue as _;
    let start = tokio::time::Instant::now();
    let queue = Queue::with_limit(
        SessionStartLimit {
            max_concurrency: 1,
            ..limit(C, 1000)
        },
        Config::default(),
    )
    .unwrap();
    // Shard 0 is served at once; 1, 2, 3 start up behind it, give up while waiting
    // (their receivers dropped) and ask again: still starting, not reconnecting.
    queue.enqueue(0).await.unwrap();
    let gave_up = [1, 2, 3].map(|shard| queue.enqueue(shard));
    tokio::task::yield_now().await;
    drop(gave_up);
    tokio::task::yield_now().await;
    let (one, two, three) = (queue.enqueue(1), queue.enqueue(2), queue.enqueue(3));
    tokio::task::yield_now().await;
    // At 1 s shard 0 loses its session and enqueues again.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let zero = queue.enqueue(0);
    let at = |receiver: tokio::sync::oneshot::Receiver<()>| async move {
        receiver.await.unwrap();
        start.elapsed()
    };
    let (zero, one, two, three) = tokio::join!(at(zero), at(one), at(two), at(three));
    let five = Duration::from_secs(5);
    assert_eq!(
        (zero, one, two, three),
        (five, 2 * five, 3 * five, 4 * five)
    );
}
