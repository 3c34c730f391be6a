//! rules 5, "grants never depend on how callers poll their futures" and
//! "spacing counts from delivery": one test per way a caller may hold, park, drop or
//! move a future, with exact instants on tokio's paused clock where one will do.

#[path = "support/limit.rs"]
mod limit;

use std::future::{Future, poll_fn};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread;
use std::time::Duration;

use futures_util::StreamExt;
use identify_queue::tokio::{Permit, Queue};
use identify_queue::{AcquireError, Config, Priority};
use limit::limit;
use tokio::time::{Instant, sleep};

const FIVE: Duration = Duration::from_secs(5);
const SECOND: Duration = Duration::from_secs(1);

/// A queue on tokio's clock, started now.
fn queue(max_concurrency: u32, config: Config) -> Queue {
    Queue::with_limit(limit(max_concurrency, 1000), config).unwrap()
}

/// When `permit` was delivered, as an offset from `start`.
fn at(permit: &Permit, start: Instant) -> Duration {
    Instant::from_std(permit.granted_at()) - start
}

/// Awaits `shard`'s permit in a task of its own; yields its delivery offset.
fn spawn_shard(queue: &Queue, shard: u32, start: Instant) -> tokio::task::JoinHandle<Duration> {
    let queue = queue.clone();
    tokio::spawn(async move {
        let permit = queue.acquire(shard).await.expect("granted");
        assert_eq!(Instant::from_std(permit.granted_at()), Instant::now());
        at(&permit, start)
    })
}

/// `shard`'s request, made (polled once, still waiting) and then left unpolled.
async fn asked(queue: &Queue, shard: u32) -> Pin<Box<identify_queue::tokio::Acquire>> {
    let mut waiting = Box::pin(queue.acquire(shard));
    assert!(poll_once(&mut waiting).await.is_pending(), "{shard} waits");
    waiting
}

/// Polls `future` once, in the current task.
async fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    poll_fn(|cx| Poll::Ready(Pin::new(&mut *future).poll(cx))).await
}

#[tokio::test(start_paused = true)]
async fn a_future_that_lost_a_select_and_is_kept_unpolled_delays_no_other_bucket() {
    let start = Instant::now();
    let queue = queue(2, Config::default());
    let _zero = queue.acquire(0).await.unwrap();
    let _one = queue.acquire(1).await.unwrap();
    // Shard 2 (bucket 0) loses a select at 1 s and is kept, unpolled, for a minute.
    let mut two = pin!(queue.acquire(2));
    tokio::select! {
        _ = &mut two => panic!("bucket 0 is busy until 5 s"),
        () = sleep(SECOND) => {}
    }
    // Bucket 1 is not held up: shard 3 at 5 s exactly, shard 5 at 10 s.
    let three = spawn_shard(&queue, 3, start);
    let five = spawn_shard(&queue, 5, start);
    // Shard 4 (bucket 0, behind 2) waits for 2's delivery plus the interval.
    let four = spawn_shard(&queue, 4, start);
    assert_eq!(three.await.unwrap(), FIVE);
    assert_eq!(five.await.unwrap(), 2 * FIVE);
    sleep(Duration::from_secs(60) - 2 * FIVE).await;
    let two = two.await.unwrap();
    assert_eq!(at(&two, start), Duration::from_secs(60));
    assert_eq!(four.await.unwrap(), Duration::from_secs(65));
}

#[tokio::test(start_paused = true)]
async fn a_buffered_stream_whose_consumer_waits_delays_no_other_bucket() {
    let start = Instant::now();
    let queue = queue(3, Config::default());
    for shard in 0..3 {
        let _ = queue.acquire(shard).await.unwrap();
    }
    // Shards 3 and 4 (buckets 0 and 1) through `buffered`; the consumer takes 3 and
    // then waits 30 s for its READY without polling the stream.
    let mut starting = futures_util::stream::iter([3, 4])
        .map(|shard| queue.acquire(shard))
        .buffered(2);
    let three = starting.next().await.unwrap().unwrap();
    assert_eq!(at(&three, start), FIVE);
    let others = [5, 8, 7].map(|shard| spawn_shard(&queue, shard, start));
    sleep(Duration::from_secs(30)).await;
    let four = starting.next().await.unwrap().unwrap();
    assert_eq!(at(&four, start), Duration::from_secs(35));
    let [five, eight, seven] = others;
    // Bucket 2 is not held up; bucket 1 (7 behind 4) waits for 4's delivery.
    assert_eq!(five.await.unwrap(), FIVE);
    assert_eq!(eight.await.unwrap(), 2 * FIVE);
    assert_eq!(seven.await.unwrap(), Duration::from_secs(40));
}

#[tokio::test(start_paused = true)]
async fn a_grants_stream_busy_with_a_permit_delays_no_other_bucket() {
    let start = Instant::now();
    let queue = queue(2, Config::default());
    let _zero = queue.acquire(0).await.unwrap();
    let _one = queue.acquire(1).await.unwrap();
    // A stream of 2 and 4 (bucket 0): busy with shard 2 for a minute after 5 s.
    let stream = tokio::spawn({
        let queue = queue.clone();
        async move {
            let mut grants = queue.acquire_all([2, 4]);
            let two = grants.next().await.unwrap().unwrap();
            sleep(Duration::from_secs(60)).await;
            let four = grants.next().await.unwrap().unwrap();
            assert!(grants.next().await.is_none());
            (at(&two, start), at(&four, start))
        }
    });
    tokio::task::yield_now().await;
    // Bucket 1 goes on: 3 at 5 s, 5 at 10 s.
    let three = spawn_shard(&queue, 3, start);
    let five = spawn_shard(&queue, 5, start);
    // Bucket 0: 4 was granted at 10 s and taken at 65 s; 6 waits for that plus 5 s.
    let six = spawn_shard(&queue, 6, start);
    assert_eq!(three.await.unwrap(), FIVE);
    assert_eq!(five.await.unwrap(), 2 * FIVE);
    assert_eq!(
        stream.await.unwrap(),
        (FIVE, Duration::from_secs(65)),
        "4 delivered when the stream was polled again"
    );
    assert_eq!(six.await.unwrap(), Duration::from_secs(70));
}

#[tokio::test(start_paused = true)]
async fn a_future_moved_between_tasks_is_woken_where_it_is_now() {
    let start = Instant::now();
    let queue = queue(1, Config::default());
    let _zero = queue.acquire(0).await.unwrap();
    // Polled first in one task, which then hands it to another and ends.
    let (sender, receiver) = tokio::sync::oneshot::channel();
    tokio::spawn({
        let queue = queue.clone();
        async move {
            let one = asked(&queue, 1).await;
            sender.send(one).ok();
        }
    })
    .await
    .unwrap();
    let one = tokio::spawn(async move { receiver.await.unwrap().await.unwrap() });
    let one = one.await.unwrap();
    assert_eq!((one.shard(), at(&one, start)), (1, FIVE));
}

#[tokio::test(start_paused = true)]
async fn a_permit_dropped_on_a_plain_thread_neither_panics_nor_stalls() {
    let start = Instant::now();
    let config = Config::default().hold_until_release(Duration::MAX);
    let queue = queue(1, config);
    let zero = queue.acquire(0).await.unwrap();
    let one = spawn_shard(&queue, 1, start);
    // READY for shard 0 arrives at 8 s, on a thread with no runtime at all.
    sleep(Duration::from_secs(8)).await;
    thread::spawn(move || drop(zero)).join().unwrap();
    assert_eq!(one.await.unwrap(), Duration::from_secs(8));
    // Timer mode too: nothing to release, nothing to panic.
    let queue = self::queue(1, Config::default());
    let permit = queue.acquire(0).await.unwrap();
    thread::spawn(move || drop(permit)).join().unwrap();
    assert!(queue.release(0).then_some(()).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_release_on_a_plain_thread_wakes_the_driver_for_an_earlier_deadline() {
    let start = Instant::now();
    let config = Config::default().hold_until_release(Duration::from_secs(60));
    let queue = queue(1, config);
    let zero = queue.acquire(0).await.unwrap();
    zero.keep();
    // Shard 1 waits for the hold, until 60 s at most; the driver sleeps until then.
    let one = spawn_shard(&queue, 1, start);
    sleep(Duration::from_secs(3)).await;
    let released = {
        let queue = queue.clone();
        thread::spawn(move || queue.release(0)).join().unwrap()
    };
    assert!(released);
    // Released at 3 s: the bucket frees at 5 s, the interval.
    assert_eq!(one.await.unwrap(), FIVE);
}

#[tokio::test(start_paused = true)]
async fn spacing_counts_from_delivery_and_granted_at_is_the_delivery() {
    let start = Instant::now();
    let queue = queue(1, Config::default());
    let _zero = queue.acquire(0).await.unwrap();
    let mut one = asked(&queue, 1).await;
    let two = spawn_shard(&queue, 2, start);
    // Shard 1 is granted at 5 s, but its task only polls at 7 s.
    sleep(Duration::from_secs(7)).await;
    let Poll::Ready(Ok(one)) = poll_once(&mut one).await else {
        panic!("granted at 5 s");
    };
    assert_eq!(at(&one, start), Duration::from_secs(7));
    assert_eq!(two.await.unwrap(), Duration::from_secs(12));
    assert_eq!(queue.remaining(), 1000 - 3);
}

/// Shard 1 is granted at 5 s and never taken; its future is dropped at `dropped`.
/// When is shard 2, behind it in the bucket, granted? (Its unit is spent either way.)
async fn next_grant_after_a_drop_at(dropped: Duration) -> Duration {
    let start = Instant::now();
    let queue = queue(1, Config::default());
    let _zero = queue.acquire(0).await.unwrap();
    let one = asked(&queue, 1).await;
    let two = spawn_shard(&queue, 2, start);
    sleep(dropped).await;
    drop(one);
    let two = two.await.unwrap();
    assert_eq!(queue.remaining(), 1000 - 3);
    two
}

#[tokio::test(start_paused = true)]
async fn a_future_dropped_after_its_grant_frees_its_bucket_at_the_drop() {
    let dropped = Duration::from_secs(12);
    assert_eq!(next_grant_after_a_drop_at(dropped).await, dropped);
}

#[tokio::test(start_paused = true)]
async fn a_future_dropped_within_its_cooldown_frees_nothing_early() {
    // Dropped at 6 s: the interval from the grant at 5 s still holds.
    let dropped = Duration::from_secs(6);
    assert_eq!(next_grant_after_a_drop_at(dropped).await, 2 * FIVE);
}

#[tokio::test(start_paused = true)]
async fn hold_mode_voids_a_permit_not_taken_before_its_hold_timeout() {
    let start = Instant::now();
    let config = Config::default().hold_until_release(Duration::from_secs(10));
    let queue = queue(1, config);
    queue.acquire(0).await.unwrap().release();
    let mut one = asked(&queue, 1).await;
    let two = spawn_shard(&queue, 2, start);
    // Granted at 5 s; its hold ends at 15 s whether or not it is taken.
    sleep(Duration::from_secs(16)).await;
    let Poll::Ready(Err(error)) = poll_once(&mut one).await else {
        panic!("a void permit is an error");
    };
    assert_eq!(error, AcquireError::HoldExpired(1));
    assert_eq!(two.await.unwrap(), Duration::from_secs(15));
    assert_eq!(
        queue.remaining(),
        1000 - 3,
        "the void grant's unit stays spent"
    );
}

#[tokio::test(start_paused = true)]
async fn hold_mode_counts_the_interval_from_a_late_delivery() {
    let start = Instant::now();
    let config = Config::default().hold_until_release(Duration::from_secs(10));
    let queue = queue(1, config);
    queue.acquire(0).await.unwrap().release();
    let mut one = asked(&queue, 1).await;
    let two = spawn_shard(&queue, 2, start);
    // Granted at 5 s, taken at 14 s just before its timeout, released at once.
    sleep(Duration::from_secs(14)).await;
    let Poll::Ready(Ok(one)) = poll_once(&mut one).await else {
        panic!("taken before the timeout");
    };
    assert_eq!(at(&one, start), Duration::from_secs(14));
    one.release();
    assert_eq!(two.await.unwrap(), Duration::from_secs(19));
}

#[tokio::test(start_paused = true)]
async fn an_update_rekeys_an_undelivered_grant_like_a_hold() {
    let start = Instant::now();
    let queue = queue(2, Config::default());
    let _zero = queue.acquire(0).await.unwrap();
    let _one = queue.acquire(1).await.unwrap();
    let mut three = asked(&queue, 3).await;
    // Shard 3 is granted at 5 s and not taken; at 6 s max_concurrency becomes 1, so
    // shard 4 shares its bucket and waits for it.
    sleep(Duration::from_secs(6)).await;
    queue.update(limit(1, 1000)).unwrap();
    let four = spawn_shard(&queue, 4, start);
    sleep(Duration::from_secs(14)).await;
    let Poll::Ready(Ok(three)) = poll_once(&mut three).await else {
        panic!("granted at 5 s");
    };
    assert_eq!(at(&three, start), Duration::from_secs(20));
    assert_eq!(four.await.unwrap(), Duration::from_secs(25));
}

#[tokio::test(start_paused = true)]
async fn a_reconnect_goes_before_the_start_up_of_its_bucket() {
    let start = Instant::now();
    let queue = queue(1, Config::default());
    let _zero = queue.acquire(0).await.unwrap();
    let starting: Vec<_> = (1..4)
        .map(|shard| spawn_shard(&queue, shard, start))
        .collect();
    tokio::task::yield_now().await;
    let reconnect = queue.acquire_with(9, Priority::Reconnect).await.unwrap();
    assert_eq!(at(&reconnect, start), FIVE);
    let starts: Vec<_> = futures_util::future::join_all(starting).await;
    let starts: Vec<_> = starts.into_iter().map(Result::unwrap).collect();
    assert_eq!(starts, [2 * FIVE, 3 * FIVE, 4 * FIVE]);
}

/// A tiny executor for a plain thread: no runtime, the thread parks between wakes.
fn block_on<F: Future>(future: F) -> F::Output {
    struct Unpark(thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = pin!(future);
    loop {
        if let Poll::Ready(output) = future.as_mut().poll(&mut cx) {
            return output;
        }
        thread::park();
    }
}

/// Real time from here on: runtimes that come and go each have a clock of their own.
const INTERVAL: Duration = Duration::from_millis(30);

fn real_time_queue(max_concurrency: u32) -> identify_queue::tokio::Queue {
    let config = Config::default().interval(INTERVAL);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _inside = runtime.enter();
    Queue::with_limit(limit(max_concurrency, 1000), config).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap()
}

#[test]
fn a_future_outlives_the_runtime_its_driver_ran_on() {
    let queue = real_time_queue(1);
    let first = runtime();
    let one = first.block_on(async {
        let _zero = queue.acquire(0).await.unwrap();
        // Shard 1 waits: this starts the driver on the first runtime.
        let one = asked(&queue, 1).await;
        Some(one)
    });
    let mut one = one.expect("a waiting future");
    let asked = std::time::Instant::now();
    // The runtime goes, with the driver task; the future lives on.
    drop(first);
    let permit = runtime().block_on(async { (&mut one).await.unwrap() });
    assert_eq!(permit.shard(), 1);
    assert!(permit.granted_at() + Duration::from_millis(1) >= asked);
    // And later polls, on yet another runtime, do not panic either.
    let two = runtime().block_on(queue.acquire(2)).unwrap();
    assert!(two.granted_at() >= permit.granted_at() + INTERVAL);
}

#[test]
fn a_future_moved_to_a_plain_thread_is_granted_there() {
    let queue = real_time_queue(1);
    let main = runtime();
    let (zero, mut one) = main.block_on(async {
        let zero = queue.acquire(0).await.unwrap();
        let one = asked(&queue, 1).await;
        (zero, one)
    });
    // The runtime keeps running the driver on another thread; the future moves to a
    // thread with no runtime, and is woken there.
    let driver_thread = thread::spawn(move || main.block_on(async { sleep(INTERVAL * 4).await }));
    let one = thread::spawn(move || block_on(&mut one).unwrap())
        .join()
        .unwrap();
    assert!(one.granted_at() >= zero.granted_at() + INTERVAL);
    driver_thread.join().unwrap();
}

#[test]
fn a_queue_used_from_two_runtimes_at_once_keeps_the_rules() {
    let queue = real_time_queue(2);
    let workers: Vec<_> = [0u32, 1]
        .into_iter()
        .map(|half| {
            let queue = queue.clone();
            thread::spawn(move || {
                runtime().block_on(async move {
                    let mut permits = Vec::new();
                    // Shards of both buckets from each runtime.
                    for shard in (0..12).filter(|shard| shard / 2 % 2 == half) {
                        permits.push(queue.acquire(shard).await.unwrap());
                    }
                    permits
                        .iter()
                        .map(|p| (p.granted_at(), p.shard()))
                        .collect::<Vec<_>>()
                })
            })
        })
        .collect();
    let mut grants: Vec<_> = workers
        .into_iter()
        .flat_map(|worker| worker.join().unwrap())
        .collect();
    grants.sort();
    assert_eq!(grants.len(), 12);
    for bucket in 0..2 {
        let times: Vec<_> = grants
            .iter()
            .filter(|(_, shard)| shard % 2 == bucket)
            .map(|(time, _)| *time)
            .collect();
        for pair in times.windows(2) {
            assert!(pair[1] - pair[0] >= INTERVAL, "bucket {bucket}: {pair:?}");
        }
    }
    assert!(queue.is_empty());
}

#[test]
fn the_driver_ends_when_the_queue_is_idle() {
    let queue = real_time_queue(1);
    runtime().block_on(async {
        let _zero = queue.acquire(0).await.unwrap();
        let _one = queue.acquire(1).await.unwrap();
    });
    let stats = queue.stats();
    assert_eq!(stats.drivers_started, 1, "{stats:?}");
    // A queue with nothing to wait for has no task left on any runtime: a new one
    // starts when a shard waits again.
    runtime().block_on(async {
        let _two = queue.acquire(2).await.unwrap();
    });
    assert_eq!(queue.stats().drivers_started, 2);
}
