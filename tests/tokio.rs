//! The tokio queue on a paused clock: grants at exactly the core's instants.

#[path = "support/judge.rs"]
mod judge;
#[path = "support/limit.rs"]
mod limit;

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use identify_queue::tokio::Queue;
use identify_queue::{
    AcquireError, Config, Decision, Error, Scheduler, SessionStartLimit, ShardId,
};
use limit::limit;
use tokio::time::{Instant, advance, sleep, timeout};

const FIVE: Duration = Duration::from_secs(5);

/// Grants as (offset from start, shard), in the order the tasks saw them.
type Log = Arc<Mutex<Vec<(Duration, ShardId)>>>;

fn spawn_shard(
    queue: &Queue,
    shard: ShardId,
    start: Instant,
    log: &Log,
) -> tokio::task::JoinHandle<()> {
    let (queue, log) = (queue.clone(), Arc::clone(log));
    tokio::spawn(async move {
        let permit = queue.acquire(shard).await.expect("acquire");
        // The task runs at or after its grant (on a paused clock, at the same instant).
        let granted = Instant::from_std(permit.granted_at()) - start;
        assert!(start.elapsed() >= granted);
        log.lock().unwrap().push((granted, permit.shard()));
    })
}

/// A task per shard of `shards`, each awaiting its grant: the grants as the tasks saw
/// them.
async fn a_task_per_shard(
    queue: &Queue,
    shards: std::ops::Range<ShardId>,
    start: Instant,
) -> Vec<(Duration, ShardId)> {
    let log = Log::default();
    let tasks: Vec<_> = shards
        .map(|shard| spawn_shard(queue, shard, start, &log))
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    log.lock().unwrap().clone()
}

/// The core driven directly: what the queue must reproduce.
fn expected_schedule(
    scheduler: &mut Scheduler,
    shards: impl Iterator<Item = ShardId>,
) -> Vec<(Duration, ShardId)> {
    let start = scheduler.now();
    let mut now = start;
    let mut grants = Vec::new();
    for shard in shards {
        if let Ok(Decision::Grant(shard)) = scheduler.request(shard, now) {
            grants.push((now - start, shard));
        }
    }
    loop {
        match scheduler.poll(now) {
            Decision::Grant(shard) => grants.push((now - start, shard)),
            Decision::Wait(until) => now = until,
            Decision::Idle => return grants,
        }
    }
}

/// Compares schedules, showing the first difference instead of 10,000 entries.
fn assert_same_schedule(actual: &[(Duration, ShardId)], expected: &[(Duration, ShardId)]) {
    let first_difference = actual.iter().zip(expected).position(|(a, e)| a != e);
    if let Some(index) = first_difference {
        panic!(
            "grant {index} differs: {:?} instead of {:?}",
            &actual[index..(index + 3).min(actual.len())],
            &expected[index..(index + 3).min(expected.len())]
        );
    }
    assert_eq!(actual.len(), expected.len());
}

#[tokio::test(start_paused = true)]
async fn ten_thousand_shards_are_granted_in_the_cores_order_at_its_instants() {
    let start = Instant::now();
    // 10,000 shards: a budget above the one word's 1,000.
    let scheduler = Scheduler::new(
        SessionStartLimit {
            total: 20_000,
            ..limit(16, 20_000)
        },
        start.into_std(),
    )
    .unwrap();
    let expected = expected_schedule(&mut scheduler.clone(), 0..10_000);
    let queue = Queue::new(scheduler);
    let mut log = a_task_per_shard(&queue, 0..10_000, start).await;
    // Tasks woken at one instant may run in any order (the timer's holder finishes
    // first); across instants the order is the grants'. Within an instant the core
    // grants in request order, which is shard order here, so sorting by (instant,
    // shard) must give the core's schedule exactly.
    assert_eq!(log.len(), 10_000);
    assert!(
        log.windows(2).all(|pair| pair[0].0 <= pair[1].0),
        "instants go forward"
    );
    log.sort();
    assert_same_schedule(&log, &expected);
    assert_eq!(log.last(), Some(&((10_000 / 16 - 1) * FIVE, 9_999)));
    assert_eq!(start.elapsed(), 624 * FIVE);
    assert!(queue.is_empty());

    // No busy loop: 625 distinct instants, 624 of them deadlines to wait for.
    let stats = queue.stats();
    println!("10,000 shards: {stats:?}");
    let deadlines = 624;
    assert!(stats.timer_resets <= deadlines + 1, "{stats:?}");
    // One wake per grant to a sleeping task (the first 16 were granted on asking),
    // and the timer changes hands a handful of times at most.
    assert!(stats.wakeups <= 10_000 - 16 + 8, "{stats:?}");
    // Each task polls once to ask and once when woken; the timer's holder once more
    // per deadline.
    assert!(
        stats.polls <= 10_000 + (10_000 - 16) + deadlines + 8,
        "{stats:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn acquire_all_yields_permits_in_grant_order() {
    use std::pin::Pin;
    let start = Instant::now();
    let scheduler = Scheduler::new(limit(4, 1000), start.into_std()).unwrap();
    let expected = expected_schedule(&mut scheduler.clone(), 0..64);
    let queue = Queue::new(scheduler);
    let mut grants = pin!(queue.acquire_all(0..64));
    let mut log = Vec::new();
    while let Some(permit) =
        poll_fn(|cx| futures_core::Stream::poll_next(Pin::as_mut(&mut grants), cx)).await
    {
        log.push((start.elapsed(), permit.unwrap().shard()));
    }
    assert_eq!(log, expected);
    assert_eq!(start.elapsed(), 15 * FIVE);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_dropped_by_timeout_is_never_granted_and_delays_nobody() {
    let start = Instant::now();
    let queue = Queue::new(Scheduler::new(limit(1, 1000), start.into_std()).unwrap());
    let log = Log::default();
    spawn_shard(&queue, 0, start, &log).await.unwrap();
    let quitter = {
        let queue = queue.clone();
        tokio::spawn(async move {
            timeout(Duration::from_secs(3), queue.acquire(1))
                .await
                .is_err()
        })
    };
    tokio::task::yield_now().await;
    let behind = spawn_shard(&queue, 2, start, &log);
    assert!(quitter.await.unwrap(), "shard 1 timed out");
    assert_eq!(queue.len(), 1, "only shard 2 waits after 3 s");
    behind.await.unwrap();
    assert_eq!(*log.lock().unwrap(), vec![(Duration::ZERO, 0), (FIVE, 2)]);
    assert_eq!(queue.remaining(), 1000 - 2, "nothing spent for shard 1");
}

#[tokio::test(start_paused = true)]
async fn a_waiter_dropped_by_select_is_cancelled_at_once() {
    let start = Instant::now();
    let queue = Queue::new(Scheduler::new(limit(1, 1000), start.into_std()).unwrap());
    let _first = queue.acquire(0).await.unwrap();
    tokio::select! {
        _ = queue.acquire(1) => panic!("shard 1 cannot be granted within 1 s"),
        () = sleep(Duration::from_secs(1)) => {}
    }
    assert!(queue.is_empty());
    // Its slot went to nobody: shard 2, asking now, is next, at 5 s exactly.
    let permit = queue.acquire(2).await.unwrap();
    assert_eq!((permit.shard(), start.elapsed()), (2, FIVE));
}

#[tokio::test(start_paused = true)]
async fn a_shard_that_asks_twice_gets_an_error_not_a_hang() {
    let start = Instant::now();
    let queue = Queue::new(Scheduler::new(limit(1, 1000), start.into_std()).unwrap());
    let _first = queue.acquire(0).await.unwrap();
    let waiting = tokio::spawn({
        let queue = queue.clone();
        async move { queue.acquire(7).await.map(|permit| permit.shard()) }
    });
    tokio::task::yield_now().await;
    assert_eq!(
        queue.acquire(7).await.unwrap_err(),
        AcquireError::Refused(Error::AlreadyQueued(7))
    );
    assert_eq!(waiting.await.unwrap(), Ok(7));
    assert_eq!(start.elapsed(), FIVE);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_dropped_just_after_its_grant_counts_as_granted() {
    let start = Instant::now();
    let queue = Queue::new(Scheduler::new(limit(2, 1000), start.into_std()).unwrap());
    let _zero = queue.acquire(0).await.unwrap();
    let mut late = Box::pin(queue.acquire(2));
    // Poll once: it waits for bucket 0.
    poll_fn(|cx| {
        assert!(late.as_mut().poll(cx).is_pending());
        Poll::Ready(())
    })
    .await;
    advance(FIVE).await;
    // Another waiter's poll hands shard 2 its grant before shard 2 is polled again.
    let _one = queue.acquire(1).await.unwrap();
    drop(late);
    assert_eq!(queue.remaining(), 1000 - 3, "shard 2's grant was spent");
    // Bucket 0 counts it: shard 4 goes 5 s after shard 2's grant.
    let four = queue.acquire(4).await.unwrap();
    assert_eq!((four.shard(), start.elapsed()), (4, 2 * FIVE));
}

#[tokio::test(start_paused = true)]
async fn hold_mode_waits_for_permits_released_early_late_or_never() {
    let start = Instant::now();
    let config = Config::default().hold_until_release(Duration::from_secs(30));
    let queue =
        Queue::new(Scheduler::with_config(limit(1, 1000), config, start.into_std()).unwrap());
    let log = Log::default();
    let first = queue.acquire(0).await.unwrap();
    let second = spawn_shard(&queue, 1, start, &log);
    // Released early (READY at 1 s): the interval still holds the bucket to 5 s.
    sleep(Duration::from_secs(1)).await;
    first.release();
    second.await.unwrap();
    // Dropped late (READY at 8 s after a grant at 5 s): the bucket frees at 8 s.
    let second_permit = {
        let queue = queue.clone();
        // Shard 1's permit was dropped in its task; take a fresh grant for shard 3.
        sleep(Duration::from_secs(5)).await; // now 10 s
        queue.acquire(3).await.unwrap()
    };
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    let third = spawn_shard(&queue, 4, start, &log);
    sleep(Duration::from_secs(8)).await; // 18 s
    drop(second_permit);
    third.await.unwrap();
    // Never released: the hold times out 30 s after the grant at 18 s.
    let kept = queue.acquire(5).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(23));
    let after_timeout = spawn_shard(&queue, 6, start, &log);
    after_timeout.await.unwrap();
    let log = log.lock().unwrap();
    assert_eq!(
        *log,
        vec![
            (FIVE, 1),
            (Duration::from_secs(18), 4),
            (Duration::from_secs(53), 6),
        ]
    );
    drop(kept);
}

#[tokio::test(start_paused = true)]
async fn an_update_that_rekeys_buckets_wakes_waiters_at_once() {
    let start = Instant::now();
    let queue = Queue::new(Scheduler::new(limit(1, 1000), start.into_std()).unwrap());
    let log = Log::default();
    let _zero = queue.acquire(0).await.unwrap();
    let waiters: Vec<_> = (1..4)
        .map(|shard| spawn_shard(&queue, shard, start, &log))
        .collect();
    sleep(Duration::from_secs(1)).await;
    // max_concurrency 1 -> 4: shards 1, 2, 3 get buckets of their own, all free.
    queue.update(limit(4, 999)).unwrap();
    for waiter in waiters {
        waiter.await.unwrap();
    }
    let one = Duration::from_secs(1);
    assert_eq!(*log.lock().unwrap(), vec![(one, 1), (one, 2), (one, 3)]);
}

#[tokio::test(start_paused = true)]
async fn an_update_that_refills_an_exhausted_budget_resumes_waiters() {
    let start = Instant::now();
    let exhausted = SessionStartLimit {
        total: 1000,
        remaining: 1,
        reset_after: Duration::from_secs(3600),
        max_concurrency: 16,
    };
    let queue = Queue::new(Scheduler::new(exhausted, start.into_std()).unwrap());
    let log = Log::default();
    let _zero = queue.acquire(0).await.unwrap();
    let waiters: Vec<_> = (1..3)
        .map(|shard| spawn_shard(&queue, shard, start, &log))
        .collect();
    sleep(Duration::from_secs(60)).await;
    assert_eq!(queue.len(), 2, "no budget: both wait");
    queue
        .update(SessionStartLimit {
            remaining: 1000,
            reset_after: Duration::from_secs(86_400),
            ..exhausted
        })
        .unwrap();
    for waiter in waiters {
        waiter.await.unwrap();
    }
    let minute = Duration::from_secs(60);
    assert_eq!(*log.lock().unwrap(), vec![(minute, 1), (minute, 2)]);
    assert!(
        queue
            .update(SessionStartLimit {
                total: 0,
                ..exhausted
            })
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn the_budget_reset_wakes_waiters_exactly_then() {
    let start = Instant::now();
    let limit = SessionStartLimit {
        total: 10,
        remaining: 1,
        reset_after: Duration::from_secs(3600),
        max_concurrency: 4,
    };
    let queue = Queue::new(Scheduler::new(limit, start.into_std()).unwrap());
    let _zero = queue.acquire(0).await.unwrap();
    let one = queue.acquire(1).await.unwrap();
    assert_eq!(
        (one.shard(), start.elapsed()),
        (1, Duration::from_secs(3600))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_on_many_worker_threads_keep_the_rules() {
    const INTERVAL: Duration = Duration::from_millis(20);
    let config = Config::default().interval(INTERVAL);
    let queue = Queue::with_limit(limit(4, 1000), config).unwrap();
    let start = Instant::now();
    let mut log = a_task_per_shard(&queue, 0..64, start).await;
    assert_eq!(log.len(), 64);
    log.sort();
    let rules = judge::Rules::spacing(4, INTERVAL);
    assert_eq!(judge::judge_arrivals(rules, log), Vec::<String>::new());
    assert!(start.elapsed() >= 15 * INTERVAL);
    assert!(queue.is_empty());
}

#[tokio::test(start_paused = true)]
async fn an_old_permit_does_not_release_a_newer_hold_of_its_shard() {
    let start = Instant::now();
    let config = Config::default().hold_until_release(Duration::from_secs(10));
    let queue =
        Queue::new(Scheduler::with_config(limit(1, 1000), config, start.into_std()).unwrap());
    let old = queue.acquire(0).await.unwrap();
    // READY never came; the hold timed out and shard 0 reconnects.
    let new = queue.acquire(0).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    sleep(Duration::from_secs(1)).await;
    drop(old);
    // The new hold stands until its own timeout at 20 s (the interval alone says 15 s).
    let one = queue.acquire(1).await.unwrap();
    assert_eq!((one.shard(), start.elapsed()), (1, Duration::from_secs(20)));
    drop(new);
}

#[test]
fn the_queue_is_clone_send_sync_and_its_futures_are_send() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    fn sendable<T: Send + 'static>() {}
    shareable::<Queue>();
    sendable::<identify_queue::tokio::Acquire>();
    sendable::<identify_queue::tokio::Grants>();
    sendable::<identify_queue::tokio::Permit>();
}

// rules 3.11: the queue tells its scheduler when each grant is delivered.

/// Polls `future` once.
async fn poll_once<F: Future + Unpin>(mut future: F) -> Poll<F::Output> {
    poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut future).poll(cx))).await
}

/// A grant whose future has not taken it yet may still be sent: a word subtracts it,
/// however long ago it was made.
#[tokio::test(start_paused = true)]
async fn a_word_subtracts_a_permit_not_taken_yet() {
    let limit = SessionStartLimit {
        total: 10,
        remaining: 10,
        reset_after: Duration::from_secs(86_400),
        max_concurrency: 1,
    };
    let queue = Queue::with_limit(limit, Config::default()).unwrap();
    let _first = queue.acquire(0).await.unwrap();
    let mut parked = pin!(queue.acquire(1));
    assert!(poll_once(parked.as_mut()).await.is_pending());
    // Shard 1 is granted at 5 s; its future is not polled for a minute.
    advance(FIVE).await;
    assert_eq!(queue.len(), 1, "granted, not taken: unresolved");
    assert_eq!(queue.eta(1), None, "no longer waits for its grant");
    advance(Duration::from_secs(60)).await;
    assert_eq!(queue.remaining(), 8);
    // Discord counted shard 0 only: 9 left, less shard 1, which may still come.
    queue
        .update(SessionStartLimit {
            remaining: 9,
            ..limit
        })
        .unwrap();
    assert_eq!(queue.remaining(), 8);
    let permit = parked.await.unwrap();
    assert_eq!(permit.shard(), 1);
    // Delivered now: a word read within the grace does not count it yet...
    queue
        .update(SessionStartLimit {
            remaining: 9,
            ..limit
        })
        .unwrap();
    assert_eq!(queue.remaining(), 8);
    // ...one read after the grace does.
    advance(Config::default().get_grace() + Duration::from_secs(1)).await;
    queue
        .update(SessionStartLimit {
            remaining: 8,
            ..limit
        })
        .unwrap();
    assert_eq!(queue.remaining(), 8);
}

/// A future dropped after its grant never sends its IDENTIFY: while Discord's window
/// is surely not open, the unit a refill held back for it comes back at the drop.
#[tokio::test(start_paused = true)]
async fn a_grant_dropped_untaken_frees_the_unit_held_for_it() {
    let limit = SessionStartLimit {
        total: 2,
        remaining: 0,
        reset_after: Duration::from_secs(10),
        max_concurrency: 1,
    };
    let queue = Queue::with_limit(limit, Config::default()).unwrap();
    let mut parked = Box::pin(queue.acquire(0));
    assert!(poll_once(parked.as_mut()).await.is_pending());
    // Refilled at 10 s, shard 0 granted then; its future is kept but not polled.
    advance(Duration::from_secs(50)).await;
    assert_eq!(queue.remaining(), 1);
    // Discord's word a minute on: nothing counted, its window not open.
    queue
        .update(SessionStartLimit {
            remaining: 2,
            ..limit
        })
        .unwrap();
    assert_eq!(queue.remaining(), 1, "shard 0's IDENTIFY may still come");
    drop(parked);
    assert_eq!(queue.remaining(), 2, "it never will");
}

/// A word's age moves back only where it counts from: its reset counts from its
/// application (Discord may have computed it as late as that; rules 3.11), and an hour
/// is the oldest taken.
#[tokio::test(start_paused = true)]
async fn a_word_with_an_age_resets_from_its_application() {
    let start = Instant::now();
    let limit = SessionStartLimit {
        total: 10,
        remaining: 5,
        reset_after: Duration::from_secs(100),
        max_concurrency: 1,
    };
    let queue = Queue::with_limit(limit, Config::default()).unwrap();
    queue
        .update_with_age(limit, Duration::from_secs(40))
        .unwrap();
    assert_eq!(queue.limit().reset_after, Duration::from_secs(100));
    let old = Duration::from_secs(3601);
    assert_eq!(
        queue.update_with_age(limit, old),
        Err(Error::WordTooOld(old))
    );
    // Spent, shard 0 waits for the reset 100 s after the word's application.
    queue
        .update_with_age(
            SessionStartLimit {
                remaining: 0,
                ..limit
            },
            Duration::from_secs(40),
        )
        .unwrap();
    let permit = queue.acquire(0).await.unwrap();
    assert_eq!(
        Instant::from_std(permit.granted_at()) - start,
        Duration::from_secs(100)
    );
}
