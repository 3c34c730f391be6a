//! The `Queue` facade: what a bot calls. The mechanism is in `shared.rs`, the task
//! that drives it in `driver.rs`.

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Runtime;
use super::driver::Caller;
use super::shared::{Shared, Wakeups, lock};
use super::stats::QueueStats;
use super::{Acquire, Grants};
use crate::{Config, Error, OnConflict, Priority, Scheduler, SessionStartLimit, ShardId};

/// An async IDENTIFY queue over a [`Scheduler`], shared by every shard of a bot.
///
/// Cloning is cheap (an `Arc`); all clones are the same queue. The queue starts its
/// own driver task on the runtime at hand when a shard has to wait, and the driver
/// ends when nothing waits (see the [module docs](super)).
pub struct Queue<R: Runtime> {
    pub(super) shared: Arc<Mutex<Shared>>,
    runtime: PhantomData<fn() -> R>,
}

impl<R: Runtime> Queue<R> {
    /// A queue over `scheduler`.
    ///
    /// Make the scheduler with the runtime's clock ([`Queue::now`]), or use
    /// [`Queue::with_limit`]: under a paused tokio clock, `std::time::Instant::now()`
    /// is ahead of the runtime's.
    pub fn new(scheduler: Scheduler) -> Self {
        Self {
            shared: Arc::new(Mutex::new(Shared::new(scheduler))),
            runtime: PhantomData,
        }
    }

    /// A queue over a new scheduler for `limit` and `config`, on the runtime's clock.
    pub fn with_limit(limit: SessionStartLimit, config: Config) -> Result<Self, Error> {
        Ok(Self::new(Scheduler::with_config(limit, config, R::now())?))
    }

    /// The runtime's clock, as the queue reads it.
    pub fn now() -> Instant {
        R::now()
    }

    /// Runs `change` under the lock, then wakes and starts what it asked for (see
    /// [`driver::change`](super::driver::change)).
    pub(super) fn change<T>(
        &self,
        caller: Caller,
        change: impl FnOnce(&mut Shared, &mut Wakeups) -> T,
    ) -> T {
        super::driver::change::<R, T>(&self.shared, caller, change)
    }

    /// Waits until `shard` may IDENTIFY, as a [`Priority::Start`]. The request is made
    /// when the future is first polled; see [`acquire_with`](Self::acquire_with).
    ///
    /// Resolves to [`AcquireError::Refused`](crate::AcquireError::Refused) (with
    /// [`Error::AlreadyQueued`]) if the shard already waits in this queue.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future while it waits cancels the request: no unit is spent, no
    /// bucket is held, and the shards behind it move up at once. It loses its place in
    /// line. Dropped after its grant but before a poll delivered the permit, the grant
    /// counts as made (its unit is spent, the safe side) and its bucket frees at the
    /// drop.
    pub fn acquire(&self, shard: ShardId) -> Acquire<R> {
        self.acquire_with(shard, Priority::Start)
    }

    /// Waits until `shard` may IDENTIFY, with `priority`: a [`Priority::Reconnect`]
    /// (a shard that was serving and lost its session) goes before every shard
    /// starting up in its bucket, and before them for the budget.
    ///
    /// The future resolves with a [`Permit`](super::Permit) when the shard is granted
    /// and the future is polled; the permit is *delivered* then, and the interval of
    /// its bucket runs from that instant ([`Permit::granted_at`](super::Permit#method.granted_at)).
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Self::acquire): dropping it while it waits cancels the
    /// request and loses its place in line; after its grant, the unit stays spent.
    pub fn acquire_with(&self, shard: ShardId, priority: Priority) -> Acquire<R> {
        Acquire::new(self.clone(), shard, priority, OnConflict::Refuse)
    }

    /// Like [`acquire`](Self::acquire), but if `shard` already waits here, this
    /// request takes over its place in line and the older one resolves to
    /// [`AcquireError::Superseded`](crate::AcquireError::Superseded). For integrations (twilight) in which asking again means
    /// the earlier request was abandoned.
    ///
    /// # Cancel safety
    ///
    /// As for [`acquire`](Self::acquire). Dropping the future that took a place over
    /// cancels the request: the older future is not given its place back.
    pub fn acquire_replacing(&self, shard: ShardId) -> Acquire<R> {
        Acquire::new(self.clone(), shard, Priority::Start, OnConflict::TakeOver)
    }

    /// Releases the hold of `shard`'s latest grant (hold mode), for integrations in
    /// which the permit was [kept](super::Permit#method.keep) rather than held by the
    /// shard's code; whether it still held its bucket.
    pub fn release(&self, shard: ShardId) -> bool {
        self.change(Caller::Other, |shared, wakeups| {
            let Some(number) = shared.latest_grant(shard) else {
                return false;
            };
            let now = R::now();
            let released = shared.release_at(shard, number, now, wakeups);
            if released {
                shared.settle(now, wakeups);
            }
            released
        })
    }

    /// Requests every shard of `shards`, in order, and yields a permit for each as it
    /// is granted (or an error for a shard that already waits, or whose hold timed
    /// out before the stream was polled).
    ///
    /// Each permit is delivered when the stream yields it: a grant waiting in the
    /// stream keeps its bucket busy, so poll the stream again soon (a consumer busy
    /// with one permit holds up the buckets of the grants behind it, and only those).
    ///
    /// # Cancel safety
    ///
    /// Dropping the stream cancels the shards still waiting; grants it had not yielded
    /// yet count as made (their units are spent) and free their buckets at the drop.
    pub fn acquire_all(&self, shards: impl IntoIterator<Item = ShardId>) -> Grants<R> {
        Grants::new(self.clone(), shards.into_iter().collect())
    }

    /// Applies a fresh `session_start_limit` now, waking whoever it makes eligible.
    ///
    /// Its `remaining` is taken less the grants that Discord may not have counted yet:
    /// those delivered within the [`grace`](crate::Config::grace) before it, and those
    /// not taken by their futures yet ([rules 3.11](crate::rules)).
    pub fn update(&self, limit: SessionStartLimit) -> Result<(), Error> {
        self.update_with_age(limit, Duration::ZERO)
    }

    /// [`update`](Self::update) with a limit read `age` ago (say, at start-up, before
    /// a retry loop): its `reset_after` counts from the read, and the grace reaches
    /// back from the read. Errors, changing nothing: a bad limit, or an `age` above
    /// [`MAX_WORD_AGE`](crate::MAX_WORD_AGE).
    pub fn update_with_age(&self, limit: SessionStartLimit, age: Duration) -> Result<(), Error> {
        self.change(Caller::Other, |shared, wakeups| {
            let now = R::now();
            shared.update(limit, age, now)?;
            shared.settle(now, wakeups);
            Ok(())
        })
    }

    /// Shards whose request has not resolved: waiting for their grant, or granted and
    /// not yet taken by their future (or stream).
    pub fn len(&self) -> usize {
        let shared = lock(&self.shared);
        let undelivered = usize::try_from(shared.scheduler.undelivered()).unwrap_or(usize::MAX);
        shared.scheduler.len().saturating_add(undelivered)
    }

    /// Whether no shard waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Session starts left now.
    pub fn remaining(&self) -> u32 {
        lock(&self.shared).scheduler.remaining(R::now())
    }

    /// The earliest instant `shard` can be granted if nothing changes (see
    /// [`Scheduler::eta`]); `None` if it is not waiting.
    pub fn eta(&self, shard: ShardId) -> Option<Instant> {
        lock(&self.shared).scheduler.eta(shard, R::now())
    }

    /// When `bucket` is next free to grant (see [`Scheduler::bucket_free_at`]).
    pub fn bucket_free_at(&self, bucket: u32) -> Option<Instant> {
        lock(&self.shared)
            .scheduler
            .bucket_free_at(bucket, R::now())
    }

    /// The limit in force now, as Discord would report it (see [`Scheduler::limit`]).
    pub fn limit(&self) -> SessionStartLimit {
        lock(&self.shared).scheduler.limit(R::now())
    }

    /// How hard the queue has worked so far.
    pub fn stats(&self) -> QueueStats {
        lock(&self.shared).stats
    }
}

impl<R: Runtime> Clone for Queue<R> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            runtime: PhantomData,
        }
    }
}

impl<R: Runtime> fmt::Debug for Queue<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = lock(&self.shared);
        f.debug_struct("Queue")
            .field("waiting", &shared.scheduler.len())
            .field("deadline", &shared.deadline())
            .field("stats", &shared.stats)
            .finish_non_exhaustive()
    }
}
