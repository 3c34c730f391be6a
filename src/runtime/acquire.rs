//! The futures a shard waits on: `Acquire` (one shard) and `Grants` (a stream of many).
//!
//! Both only register their waker and take what the driver handed them (see
//! `shared.rs`); the poll that returns a permit delivers it.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::{FusedFuture, FusedStream, Stream};

use super::Runtime;
use super::driver::Caller;
use super::permit::Permit;
use super::queue::Queue;
use super::shared::Found;
use super::waiters::WaiterId;
use crate::scheduler::Requested;
use crate::{AcquireError, OnConflict, Priority, ShardId};

/// Where a waiting future is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Not polled yet: nothing requested.
    Start,
    /// Requested, registered as this waiter.
    Waiting(WaiterId),
    /// Resolved (or ended).
    Done,
}

/// The future of [`Queue::acquire`]: resolves with a [`Permit`] when the shard may
/// IDENTIFY, delivering it.
///
/// # Cancel safety
///
/// Dropping it while it waits cancels the request (nothing spent, nobody delayed);
/// dropped after its grant but before the poll that delivers it, the unit counts as
/// spent and its bucket frees at the drop.
#[must_use = "a request is made only when the future is polled"]
pub struct Acquire<R: Runtime> {
    queue: Queue<R>,
    shard: ShardId,
    priority: Priority,
    /// What it does if a request of the same shard waits here.
    on_conflict: OnConflict,
    state: State,
}

impl<R: Runtime> Acquire<R> {
    pub(super) fn new(
        queue: Queue<R>,
        shard: ShardId,
        priority: Priority,
        on_conflict: OnConflict,
    ) -> Self {
        Self {
            queue,
            shard,
            priority,
            on_conflict,
            state: State::Start,
        }
    }
}

impl<R: Runtime> Future for Acquire<R> {
    type Output = Result<Permit<R>, AcquireError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Self {
            queue,
            shard,
            priority,
            on_conflict,
            state,
        } = self.get_mut();
        let shard = *shard;
        queue.change(Caller::WaiterPoll, |shared, wakeups| {
            let (id, now) = match *state {
                State::Done => return Poll::Pending,
                State::Waiting(id) => (id, R::now()),
                State::Start
                    if *on_conflict == OnConflict::TakeOver && shared.is_waiting(shard) =>
                {
                    let id = shared.add_waiter();
                    shared.take_over(shard, id, wakeups);
                    (id, R::now())
                }
                State::Start => {
                    // Queued behind another shard of its bucket, a request is made at
                    // the latest instant the queue has seen: it is not granted, and
                    // nothing it does depends on the time (what came due since is the
                    // driver's). That saves reading the runtime's clock, a third of a
                    // request's cost (`benches/compare`'s `--profile ours`).
                    let (requested, now, behind) =
                        match shared.scheduler.request_behind(shard, *priority) {
                            Some(requested) => (requested, shared.scheduler.now(), true),
                            None => {
                                let now = R::now();
                                (shared.request(shard, *priority, now), now, false)
                            }
                        };
                    match requested {
                        Err(error) => {
                            *state = State::Done;
                            return Poll::Ready(Err(error.into()));
                        }
                        Ok(Requested::Granted) => {
                            // Granted and delivered in one poll: no bucket to keep busy.
                            let grant = shared.number(shard, now);
                            shared.settle(now, wakeups);
                            *state = State::Done;
                            let delivered = shared.deliver(grant, now, wakeups);
                            return Poll::Ready(delivered.map(|d| Permit::new(queue, d)));
                        }
                        Ok(Requested::Queued(answer)) => {
                            let id = shared.add_queued_waiter(shard, cx.waker());
                            *state = State::Waiting(id);
                            if !shared.queued(answer, now, wakeups) {
                                // Nothing handed out since the request, and a driver
                                // has the deadline: it waits, registered (the common
                                // case).
                                shared.stats.polls += 1;
                                return Poll::Pending;
                            }
                            // A drive may have granted it already: look, on the
                            // runtime's clock (a permit is delivered at its poll).
                            (id, if behind { R::now() } else { now })
                        }
                    }
                }
            };
            *state = State::Waiting(id);
            match shared.poll_waiter(id, cx.waker(), now, wakeups) {
                Found::Waiting => Poll::Pending,
                Found::Grant(grant) => {
                    shared.forget_waiter(id, now, wakeups);
                    *state = State::Done;
                    let delivered = shared.deliver(grant, now, wakeups);
                    Poll::Ready(delivered.map(|d| Permit::new(queue, d)))
                }
                Found::Nothing => {
                    shared.forget_waiter(id, now, wakeups);
                    *state = State::Done;
                    Poll::Ready(Err(AcquireError::Superseded(shard)))
                }
            }
        })
    }
}

impl<R: Runtime> FusedFuture for Acquire<R> {
    fn is_terminated(&self) -> bool {
        self.state == State::Done
    }
}

impl<R: Runtime> Drop for Acquire<R> {
    fn drop(&mut self) {
        if let State::Waiting(id) = self.state {
            let shard = self.shard;
            self.queue.change(Caller::Other, |shared, wakeups| {
                shared.remove_waiter(id, &[shard], R::now(), wakeups);
            });
        }
    }
}

impl<R: Runtime> fmt::Debug for Acquire<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire")
            .field("shard", &self.shard)
            .field("priority", &self.priority)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// The stream of [`Queue::acquire_all`]: a permit per shard, in grant order, each
/// delivered when the stream yields it.
///
/// # Cancel safety
///
/// Dropping it cancels the shards still waiting; grants it had not yielded count as
/// made (their units are spent) and free their buckets at the drop.
#[must_use = "requests are made only when the stream is polled"]
pub struct Grants<R: Runtime> {
    queue: Queue<R>,
    shards: Vec<ShardId>,
    errors: VecDeque<AcquireError>,
    state: State,
}

impl<R: Runtime> Grants<R> {
    pub(super) fn new(queue: Queue<R>, shards: Vec<ShardId>) -> Self {
        Self {
            queue,
            shards,
            errors: VecDeque::new(),
            state: State::Start,
        }
    }
}

impl<R: Runtime> Stream for Grants<R> {
    type Item = Result<Permit<R>, AcquireError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Self {
            queue,
            shards,
            errors,
            state,
        } = self.get_mut();
        queue.change(Caller::WaiterPoll, |shared, wakeups| {
            let now = R::now();
            let id = match *state {
                State::Done => return Poll::Ready(None),
                State::Waiting(id) => id,
                State::Start => {
                    let id = shared.add_waiter();
                    shared.scheduler.reserve(shards.len());
                    for &shard in shards.iter() {
                        if let Err(error) = shared.request_for(id, shard, Priority::Start, now) {
                            errors.push_back(error.into());
                        }
                    }
                    shared.settle(now, wakeups);
                    *state = State::Waiting(id);
                    id
                }
            };
            if let Some(error) = errors.pop_front() {
                return Poll::Ready(Some(Err(error)));
            }
            match shared.poll_waiter(id, cx.waker(), now, wakeups) {
                Found::Waiting => Poll::Pending,
                Found::Grant(grant) => {
                    let delivered = shared.deliver(grant, now, wakeups);
                    Poll::Ready(Some(delivered.map(|d| Permit::new(queue, d))))
                }
                Found::Nothing => {
                    shared.forget_waiter(id, now, wakeups);
                    *state = State::Done;
                    Poll::Ready(None)
                }
            }
        })
    }
}

impl<R: Runtime> FusedStream for Grants<R> {
    fn is_terminated(&self) -> bool {
        self.state == State::Done
    }
}

impl<R: Runtime> Drop for Grants<R> {
    fn drop(&mut self) {
        if let State::Waiting(id) = self.state {
            let shards = &self.shards;
            self.queue.change(Caller::Other, |shared, wakeups| {
                shared.remove_waiter(id, shards, R::now(), wakeups);
            });
        }
    }
}

impl<R: Runtime> fmt::Debug for Grants<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grants")
            .field("shards", &self.shards.len())
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}
