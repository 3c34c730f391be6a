//! The runtime queue as the futures' authority (`crate::queue`): the local scheduler
//! decides, under the queue's lock, and its waiters (`waiters.rs`, routed in
//! `shared.rs`) carry each grant to the future that asked.

use std::collections::VecDeque;
use std::task::{Context, Poll};

use super::Runtime;
use super::driver::Caller;
use super::queue::Queue;
use super::shared::{Found, Shared, Wakeups};
use super::waiters::WaiterId;
use crate::queue::{Authority, Grant, Request, Step};
use crate::scheduler::Requested;
use crate::{AcquireError, OnConflict, Priority, ShardId};

/// What a runtime queue keeps of a `Grants` stream: its waiter, and the shards it
/// could not ask for, to yield as errors.
pub struct StreamState {
    id: WaiterId,
    errors: VecDeque<AcquireError>,
}

impl<R: Runtime> Authority for Queue<R> {
    type Place = WaiterId;
    type Stream = StreamState;
    /// The grant's number: a permit releases only its own hold, not a later one of the
    /// same shard (after its own timed out).
    type Token = u64;

    fn poll_request(
        &self,
        request: &Request,
        place: Option<WaiterId>,
        cx: &mut Context<'_>,
    ) -> Step<WaiterId, u64> {
        let Request {
            shard,
            priority,
            on_conflict,
        } = *request;
        self.change(Caller::WaiterPoll, |shared, wakeups| {
            let (id, now) = match place {
                Some(id) => (id, R::now()),
                None if on_conflict == OnConflict::TakeOver && shared.is_waiting(shard) => {
                    let id = shared.add_waiter();
                    shared.take_over(shard, id, wakeups);
                    (id, R::now())
                }
                None => {
                    // Queued behind another shard of its bucket, a request is made at
                    // the latest instant the queue has seen: it is not granted, and
                    // nothing it does depends on the time (what came due since is the
                    // driver's). That saves reading the runtime's clock, a third of a
                    // request's cost (`benches/compare`'s `--profile ours`).
                    let (requested, now, behind) =
                        match shared.scheduler.request_behind(shard, priority) {
                            Some(requested) => (requested, shared.scheduler.now(), true),
                            None => {
                                let now = R::now();
                                (shared.request(shard, priority, now), now, false)
                            }
                        };
                    match requested {
                        Err(error) => return Step::Ready(Err(error.into())),
                        Ok(Requested::Granted) => {
                            // Granted and delivered in one poll: no bucket to keep busy.
                            let grant = shared.number(shard, now);
                            shared.settle(now, wakeups);
                            let delivered = shared.deliver(grant, now, wakeups);
                            return Step::Ready(delivered);
                        }
                        Ok(Requested::Queued(answer)) => {
                            let id = shared.add_queued_waiter(shard, cx.waker());
                            if !shared.queued(answer, now, wakeups) {
                                // Nothing handed out since the request, and a driver
                                // has the deadline: it waits, registered (the common
                                // case).
                                shared.stats.polls += 1;
                                return Step::Waiting(id);
                            }
                            // A drive may have granted it already: look, on the
                            // runtime's clock (a permit is delivered at its poll).
                            (id, if behind { R::now() } else { now })
                        }
                    }
                }
            };
            match shared.poll_waiter(id, cx.waker(), now, wakeups) {
                Found::Waiting => Step::Waiting(id),
                Found::Grant(grant) => {
                    shared.forget_waiter(id, now, wakeups);
                    Step::Ready(shared.deliver(grant, now, wakeups))
                }
                Found::Nothing => {
                    shared.forget_waiter(id, now, wakeups);
                    Step::Ready(Err(AcquireError::Superseded(shard)))
                }
            }
        })
    }

    fn abandon(&self, shard: ShardId, id: WaiterId) {
        self.change(Caller::Other, |shared, wakeups| {
            shared.remove_waiter(id, &[shard], R::now(), wakeups);
        });
    }

    fn poll_stream(
        &self,
        shards: &mut Vec<ShardId>,
        stream: &mut Option<StreamState>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Grant<u64>, AcquireError>>> {
        self.change(Caller::WaiterPoll, |shared, wakeups| {
            let now = R::now();
            let state = stream.get_or_insert_with(|| ask_for_all(shared, shards, now, wakeups));
            if let Some(error) = state.errors.pop_front() {
                return Poll::Ready(Some(Err(error)));
            }
            let id = state.id;
            match shared.poll_waiter(id, cx.waker(), now, wakeups) {
                Found::Waiting => Poll::Pending,
                Found::Grant(grant) => Poll::Ready(Some(shared.deliver(grant, now, wakeups))),
                Found::Nothing => {
                    shared.forget_waiter(id, now, wakeups);
                    Poll::Ready(None)
                }
            }
        })
    }

    fn abandon_stream(&self, shards: &[ShardId], stream: StreamState) {
        self.change(Caller::Other, |shared, wakeups| {
            shared.remove_waiter(stream.id, shards, R::now(), wakeups);
        });
    }

    fn stream_len(_: &[ShardId], _: Option<&StreamState>) -> Option<usize> {
        // The waiter counts its shards still queued, not the grants it yielded.
        None
    }

    fn release(&self, shard: ShardId, number: u64) {
        self.change(Caller::Other, |shared, wakeups| {
            let now = R::now();
            if shared.release_at(shard, number, now, wakeups) {
                shared.settle(now, wakeups);
            }
        });
    }

    #[cfg(feature = "twilight")]
    fn served(&self, shard: ShardId) -> bool {
        super::shared::lock(&self.shared).is_served(shard)
    }

    #[cfg(feature = "twilight")]
    fn mark_served(&self, shard: ShardId) {
        super::shared::lock(&self.shared).mark_served(shard);
    }
}

/// A stream's first poll: one waiter asks for all of `shards` at `now`.
fn ask_for_all(
    shared: &mut Shared,
    shards: &[ShardId],
    now: std::time::Instant,
    wakeups: &mut Wakeups,
) -> StreamState {
    let id = shared.add_waiter();
    let mut errors = VecDeque::new();
    shared.scheduler.reserve(shards.len());
    for &shard in shards {
        if let Err(error) = shared.request_for(id, shard, Priority::Start, now) {
            errors.push_back(error.into());
        }
    }
    shared.settle(now, wakeups);
    StreamState { id, errors }
}
