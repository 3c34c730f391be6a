//! One contract for both queues: every test here runs once against the tokio queue
//! (`identify_queue::tokio::Queue`) and once against the cluster queue
//! (`identify_queue::redis::Queue`, on a real `redis-server` started on loopback), as
//! tokio's `rt_test!` runs one body per runtime. A name both queues have means the
//! same thing on both; what must differ is listed in `identify_queue::redis`'s docs
//! ("Beside the tokio queue").
//!
//! Real time on both (Redis keeps its own clock), short intervals: the checks are on
//! order and lower bounds, never on tight upper bounds. Each cluster test ends by
//! judging Redis's own log of its grants, exactly, on Redis's clock.

#[path = "support/judge.rs"]
mod judge;
#[path = "support/limit.rs"]
mod limit;
#[path = "support/redis_server.rs"]
mod redis_server;

use std::future::Future;
use std::time::Duration;

use identify_queue::{AcquireError, Config, Error, Priority, SessionStartLimit};
use limit::limit;

/// The bucket interval of every test.
const INTERVAL: Duration = Duration::from_millis(300);

fn config() -> Config {
    Config::default().interval(INTERVAL)
}

/// Polls `future` once (with a waker that does nothing): whether it resolved.
fn poll_once<F: std::future::Future + Unpin>(future: &mut F) -> Option<F::Output> {
    futures_util::FutureExt::now_or_never(future)
}

/// Runs each test body once per queue. In each body, `queue(limit, config).await`
/// makes a fresh queue (and whatever it needs, kept alive by `_guard`).
macro_rules! queue_contract {
    ($(
        $(#[$meta:meta])*
        async fn $name:ident() $body:block
    )*) => {
        mod tokio_queue {
            use super::*;
            use identify_queue::tokio::Queue;

            async fn queue(limit: SessionStartLimit, config: Config) -> (Queue, ()) {
                (Queue::with_limit(limit, config).unwrap(), ())
            }

            $(
                $(#[$meta])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() $body
            )*
        }

        mod cluster_queue {
            use super::*;
            use identify_queue::redis::Queue;

            /// The test's Redis; when the test ends, Redis's own log of its grants is
            /// judged on Redis's clock (the Lua's spacing, exactly).
            struct Judged(redis_server::Server);

            impl Drop for Judged {
                fn drop(&mut self) {
                    if !std::thread::panicking() {
                        let log = self.0.grant_log("bot").expect("the shared state");
                        log.assert_spaced();
                    }
                }
            }

            async fn queue(limit: SessionStartLimit, config: Config) -> (Queue, Judged) {
                let server = redis_server::Server::start(false);
                let queue = Queue::connect(server.url(), "bot", limit, config)
                    .await
                    .unwrap();
                // A fresh state keeps every bucket quiet for an interval (a process
                // that granted just before may not be known yet).
                tokio::time::sleep(queue.spacing()).await;
                (queue, Judged(server))
            }

            $(
                $(#[$meta])*
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() $body
            )*
        }
    };
}

queue_contract! {
    /// The request is made when the future is first polled: a future made and never
    /// polled asks for nothing.
    async fn a_request_is_made_at_the_first_poll() {
        let (queue, _guard) = queue(limit(1, 1000), config()).await;
        let _zero = queue.acquire(0).await.unwrap();
        let mut one = queue.acquire(1);
        assert_eq!(queue.len(), 0, "made, not polled: nothing asked");
        assert_eq!(queue.eta(1), None);
        assert!(poll_once(&mut one).is_none());
        assert_eq!(queue.len(), 1);
        assert!(queue.eta(1).is_some());
        let permit = one.await.unwrap();
        assert_eq!(permit.shard(), 1);
        assert!(queue.is_empty());
    }

    /// A waker may call into the queue when it is woken (an executor may poll the
    /// task at once, on the waking thread): wakers are woken with the queue's lock
    /// released, never under it.
    async fn a_waker_may_call_into_the_queue() {
        use std::sync::Arc;
        use std::task::{Context, Wake, Waker};

        /// Reads the queue from inside `wake`, and says so.
        struct CallsIn {
            queue: Queue,
            woken: tokio::sync::mpsc::UnboundedSender<usize>,
        }

        impl Wake for CallsIn {
            fn wake(self: Arc<Self>) {
                let _ = self.woken.send(self.queue.len());
            }
        }

        let (queue, _guard) = queue(limit(1, 1000), config()).await;
        let _zero = queue.acquire(0).await.unwrap();
        let mut one = queue.acquire(1);
        let (woken, mut wakes) = tokio::sync::mpsc::unbounded_channel();
        let waker = Waker::from(Arc::new(CallsIn {
            queue: queue.clone(),
            woken,
        }));
        let polled = std::pin::Pin::new(&mut one).poll(&mut Context::from_waker(&waker));
        assert!(polled.is_pending());
        // Woken by the grant, an interval on: the waker read the queue (a request not
        // resolved yet: granted, not taken).
        let read = tokio::time::timeout(10 * INTERVAL + Duration::from_secs(5), wakes.recv())
            .await
            .expect("the waker ran (under the queue's lock, its read would deadlock)");
        assert_eq!(read, Some(1));
        assert_eq!(one.await.unwrap().shard(), 1);
    }

    /// A shard asks once at a time: a second `acquire` of a shard that waits resolves
    /// to `AlreadyQueued`, and the first keeps its place.
    async fn a_second_acquire_of_a_waiting_shard_is_refused() {
        let (queue, _guard) = queue(limit(1, 1000), config()).await;
        let _zero = queue.acquire(0).await.unwrap();
        let mut first = queue.acquire(1);
        assert!(poll_once(&mut first).is_none());
        let second = queue.acquire(1).await;
        assert!(
            matches!(second, Err(AcquireError::Refused(Error::AlreadyQueued(1)))),
            "{second:?}"
        );
        assert_eq!(queue.len(), 1);
        assert_eq!(first.await.unwrap().shard(), 1);
    }

    /// `acquire_replacing` takes over the place of a waiting request of the same
    /// shard; the older future resolves to `Superseded`.
    async fn acquire_replacing_takes_over_the_place_in_line() {
        let (queue, _guard) = queue(limit(1, 1000), config()).await;
        let _zero = queue.acquire(0).await.unwrap();
        let mut old = queue.acquire(1);
        assert!(poll_once(&mut old).is_none());
        let mut behind = queue.acquire(2);
        assert!(poll_once(&mut behind).is_none());
        let mut new = queue.acquire_replacing(1);
        assert!(poll_once(&mut new).is_none());
        assert!(matches!(old.await, Err(AcquireError::Superseded(1))));
        assert_eq!(queue.len(), 2);
        // Shard 1 kept its place ahead of shard 2.
        let one = new.await.unwrap();
        let two = behind.await.unwrap();
        assert!(two.granted_at() >= one.granted_at() + INTERVAL);
    }

    /// Futures and streams are fused: resolved, they say so, and polling them again
    /// neither panics nor yields anything more.
    async fn futures_and_streams_are_fused() {
        use futures_core::{FusedFuture, FusedStream};
        let (queue, _guard) = queue(limit(2, 1000), config()).await;
        let mut acquire = queue.acquire(0);
        assert!(!acquire.is_terminated());
        let permit = (&mut acquire).await.unwrap();
        assert!(acquire.is_terminated());
        assert!(poll_once(&mut acquire).is_none(), "nothing more");
        drop(permit);
        let mut grants = queue.acquire_all([1, 3]);
        let mut shards = Vec::new();
        while let Some(permit) = futures_util::StreamExt::next(&mut grants).await {
            shards.push(permit.unwrap().shard());
        }
        assert_eq!(shards, [1, 3]);
        assert!(grants.is_terminated());
        assert!(futures_util::StreamExt::next(&mut grants).await.is_none());
    }

    /// Dropping a waiting future cancels its request: it leaves the queue, spends
    /// nothing, and the shard behind it moves up.
    async fn a_dropped_future_spends_nothing_and_delays_nobody() {
        let (queue, _guard) = queue(limit(1, 1000), config()).await;
        let first = queue.acquire(0).await.unwrap().granted_at();
        let remaining = queue.remaining();
        let mut dropped = queue.acquire(1);
        assert!(poll_once(&mut dropped).is_none());
        let mut next = queue.acquire(2);
        assert!(poll_once(&mut next).is_none());
        drop(dropped);
        assert_eq!(queue.len(), 1);
        let two = next.await.unwrap();
        // Shard 2 went in shard 1's turn, one interval after shard 0.
        assert!(two.granted_at() >= first + INTERVAL);
        assert!(two.granted_at() < first + 2 * INTERVAL, "it moved up");
        assert_eq!(queue.remaining(), remaining - 1, "only shard 2 spent a unit");
    }

    /// `acquire_all` yields a permit per shard in the order they are granted: FIFO
    /// within each bucket, an interval apart.
    async fn acquire_all_yields_each_shard_in_grant_order() {
        let (queue, _guard) = queue(limit(2, 1000), config()).await;
        let mut grants = queue.acquire_all(0..6);
        let mut log = Vec::new();
        while let Some(permit) = futures_util::StreamExt::next(&mut grants).await {
            let permit = permit.unwrap();
            log.push((permit.shard(), permit.granted_at()));
        }
        let shards: Vec<u32> = log.iter().map(|&(shard, _)| shard).collect();
        for bucket in 0..2 {
            let order: Vec<u32> = shards.iter().copied().filter(|s| s % 2 == bucket).collect();
            assert_eq!(order, (0..6).filter(|s| s % 2 == bucket).collect::<Vec<_>>());
        }
        for (i, &(shard, at)) in log.iter().enumerate() {
            for &(other, other_at) in &log[..i] {
                if other % 2 == shard % 2 {
                    assert!(at >= other_at + INTERVAL, "{shard} after {other}");
                }
            }
        }
        assert_eq!(queue.remaining(), 994);
    }

    /// `len` counts the requests that have not resolved: waiting, or granted and not
    /// yet taken by their future; `eta` is for those still waiting for their grant.
    async fn len_counts_grants_not_taken_and_eta_only_waiting_ones() {
        let (queue, _guard) = queue(limit(1, 1000), config()).await;
        let _zero = queue.acquire(0).await.unwrap();
        let mut one = queue.acquire(1);
        assert!(poll_once(&mut one).is_none());
        assert_eq!(queue.len(), 1, "waiting");
        assert!(queue.eta(1).is_some());
        // Granted an interval later; its future is not polled until then and after.
        tokio::time::sleep(INTERVAL + Duration::from_millis(150)).await;
        assert_eq!(queue.len(), 1, "granted, not taken");
        assert_eq!(queue.eta(1), None, "it waits for no grant");
        let _one = one.await.unwrap();
        assert_eq!(queue.len(), 0);
    }

    /// A reconnect goes before the shards of its bucket that are still starting.
    async fn a_reconnect_goes_first_in_its_bucket() {
        let (queue, _guard) = queue(limit(1, 1000), config()).await;
        let _zero = queue.acquire(0).await.unwrap();
        let mut start = queue.acquire(1);
        assert!(poll_once(&mut start).is_none());
        let mut reconnect = queue.acquire_with(2, Priority::Reconnect);
        assert!(poll_once(&mut reconnect).is_none());
        let reconnect = reconnect.await.unwrap().granted_at();
        let start = start.await.unwrap().granted_at();
        assert!(start >= reconnect + INTERVAL);
    }

    /// Hold mode: a granted shard holds its bucket past the interval until released;
    /// `release(shard)` frees it for a kept permit (true: it held the bucket), and
    /// says false for a shard that holds nothing.
    async fn release_frees_a_held_bucket_and_says_whether_it_held() {
        let config = config().hold_until_release(Duration::from_secs(30));
        let (queue, _guard) = queue(limit(1, 1000), config).await;
        queue.acquire(0).await.unwrap().keep();
        let mut next = queue.acquire(1);
        assert!(poll_once(&mut next).is_none());
        tokio::time::sleep(INTERVAL * 2).await;
        assert!(poll_once(&mut next).is_none(), "held past the interval");
        let released = std::time::Instant::now();
        assert!(queue.release(0));
        assert!(!queue.release(0), "released once");
        assert!(!queue.release(7), "never granted");
        let next = next.await.unwrap();
        assert!(next.granted_at() >= released);
        assert!(next.granted_at() < released + Duration::from_secs(10));
    }

    /// `granted_at` is a `std` instant on the queue's clock: never in the future.
    async fn granted_at_is_a_std_instant() {
        let (queue, _guard) = queue(limit(1, 1000), config()).await;
        let before = std::time::Instant::now();
        let at: std::time::Instant = queue.acquire(0).await.unwrap().granted_at();
        assert!(at >= before && at <= std::time::Instant::now());
    }
}
