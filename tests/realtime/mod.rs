//! The same behaviours for the queues on real time (smol, async-std): short intervals,
//! and only order and lower bounds asserted, since the machine may be slow.

#[path = "../support/judge.rs"]
mod judge;
#[path = "../support/limit.rs"]
mod limit;

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use async_io::Timer;
use identify_queue::smol::Queue;
use identify_queue::{Config, Error, SessionStartLimit, ShardId};
use limit::limit;
use smol::stream::StreamExt;

pub const INTERVAL: Duration = Duration::from_millis(30);

/// Spawns a task on the executor under test.
pub trait Executor {
    fn spawn<F>(future: F) -> Pin<Box<dyn Future<Output = F::Output> + Send>>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static;
}

fn queue(limit: SessionStartLimit, config: Config) -> Queue {
    Queue::with_limit(limit, config.interval(INTERVAL)).unwrap()
}

async fn sleep(duration: Duration) {
    Timer::after(duration).await;
}

/// Shards of a bucket in request order, each an interval or more after the last.
pub async fn grants_keep_order_and_spacing() {
    let queue = queue(limit(2, 1000), Config::default());
    let start = Instant::now();
    let mut grants = queue.acquire_all(0..12);
    let mut log: Vec<(Duration, ShardId)> = Vec::new();
    while let Some(permit) = grants.next().await {
        let permit = permit.unwrap();
        log.push((permit.granted_at() - start, permit.shard()));
    }
    let order: Vec<ShardId> = log.iter().map(|&(_, shard)| shard).collect();
    assert_eq!(order, (0..12).collect::<Vec<_>>());
    for (index, &(at, shard)) in log.iter().enumerate() {
        // Round k of two buckets goes no sooner than k intervals in.
        assert!(
            at >= INTERVAL * (index as u32 / 2),
            "shard {shard} at {at:?}"
        );
    }
    assert!(queue.is_empty());
}

/// Many tasks at once: every one granted, buckets spaced by the interval.
pub async fn concurrent_tasks_all_get_their_turn<E: Executor>() {
    let queue = queue(limit(4, 1000), Config::default());
    let start = Instant::now();
    let tasks: Vec<_> = (0..32)
        .map(|shard| {
            let queue = queue.clone();
            E::spawn(async move {
                let permit = queue.acquire(shard).await.unwrap();
                // The task runs at or after the grant; the grant instant is exact.
                assert!(Instant::now() >= permit.granted_at());
                (permit.granted_at() - start, permit.shard())
            })
        })
        .collect();
    let mut log = Vec::new();
    for task in tasks {
        log.push(task.await);
    }
    log.sort();
    assert_eq!(log.len(), 32);
    let rules = judge::Rules::spacing(4, INTERVAL);
    assert_eq!(judge::judge_arrivals(rules, log), Vec::<String>::new());
    assert!(start.elapsed() >= 7 * INTERVAL);
}

/// A waiter that gives up is cancelled: never granted, nothing spent, and the shard
/// behind it goes as soon as the bucket allows.
pub async fn a_dropped_waiter_is_cancelled() {
    // Shard 0 holds the bucket until its permit goes, so shard 1 cannot be granted
    // while it waits, however slow the machine is.
    let config = Config::default().hold_until_release(Duration::from_secs(60));
    let queue = queue(limit(1, 1000), config);
    let first = queue.acquire(0).await.unwrap();
    let gave_up = smol::future::or(async { queue.acquire(1).await.is_ok() }, async {
        sleep(INTERVAL / 3).await;
        false
    })
    .await;
    assert!(
        !gave_up,
        "shard 1 cannot be granted while shard 0 holds the bucket"
    );
    assert!(queue.is_empty());
    let first_granted_at = first.granted_at();
    first.release();
    let second = queue.acquire(2).await.unwrap();
    assert_eq!(second.shard(), 2);
    assert!(second.granted_at() - first_granted_at >= INTERVAL);
    assert_eq!(queue.remaining(), 998, "nothing spent for shard 1");
}

/// Hold mode: the bucket stays held until the permit goes, never less than an interval.
pub async fn hold_mode_waits_for_the_permit() {
    let config = Config::default().hold_until_release(Duration::from_secs(60));
    let queue = queue(limit(1, 1000), config);
    let first = queue.acquire(0).await.unwrap();
    let granted_first = Instant::now();
    let releaser = {
        async move {
            sleep(3 * INTERVAL).await;
            first.release();
        }
    };
    let (second, ()) = smol::future::zip(queue.acquire(1), releaser).await;
    assert_eq!(second.unwrap().shard(), 1);
    assert!(
        granted_first.elapsed() >= 3 * INTERVAL,
        "granted before the release"
    );
}

/// An update that refills an exhausted budget wakes the waiters without the reset.
pub async fn an_update_refills_the_budget() {
    let queue = queue(limit(4, 1), Config::default());
    let _zero = queue.acquire(0).await.unwrap();
    let updater = {
        let queue = queue.clone();
        async move {
            sleep(INTERVAL).await;
            assert_eq!(queue.len(), 1, "shard 1 waits for budget");
            queue.update(limit(4, 1000)).unwrap();
        }
    };
    let start = Instant::now();
    let (one, ()) = smol::future::zip(queue.acquire(1), updater).await;
    assert_eq!(one.unwrap().shard(), 1);
    assert!(start.elapsed() >= INTERVAL);
    // The budget reset is an hour away: it was the update that let shard 1 go.
    assert!(start.elapsed() < Duration::from_secs(3600));
    assert_eq!(queue.update(limit(0, 1)), Err(Error::ZeroMaxConcurrency));
}
