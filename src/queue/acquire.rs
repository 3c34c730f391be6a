//! The futures a shard waits on: `Acquire` (one shard's request) and `Grants` (a
//! stream of many). They keep where their request stands and hand each poll to the
//! authority; the poll that returns a permit delivers it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::{FusedFuture, FusedStream, Stream};

use super::{Authority, Permit, Request, Step};
use crate::{AcquireError, OnConflict, Priority, ShardId};

/// Where an `Acquire` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State<P> {
    /// Not polled yet: nothing requested.
    Start,
    /// Requested: waiting at this place.
    Waiting(P),
    /// Resolved (or ended).
    Done,
}

/// The future of a queue's `acquire`: resolves with a [`Permit`] when the shard may
/// IDENTIFY, delivering it. The request is made when it is first polled.
///
/// Each queue names it for itself: [`runtime::Acquire`](crate::runtime::Acquire) (and
/// `tokio::Acquire`, `smol::Acquire`), `redis::Acquire`.
///
/// # Cancel safety
///
/// Dropping it while it waits cancels the request (nothing spent, nobody delayed).
/// Dropped after its grant but before the poll that delivers it, the unit counts as
/// spent, its bucket frees at the drop and a hold is released.
#[must_use = "a request is made only when the future is polled"]
pub struct Acquire<Q: Authority> {
    queue: Q,
    request: Request,
    state: State<Q::Place>,
}

impl<Q: Authority> Acquire<Q> {
    pub(crate) fn new(
        queue: Q,
        shard: ShardId,
        priority: Priority,
        on_conflict: OnConflict,
    ) -> Self {
        Self {
            queue,
            request: Request {
                shard,
                priority,
                on_conflict,
            },
            state: State::Start,
        }
    }

    /// The shard this request is for.
    pub fn shard(&self) -> ShardId {
        self.request.shard
    }
}

impl<Q: Authority> Future for Acquire<Q> {
    type Output = Result<Permit<Q>, AcquireError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let place = match this.state {
            // Polled after it resolved: a fused "nothing more" rather than a panic.
            State::Done => return Poll::Pending,
            State::Start => None,
            State::Waiting(place) => Some(place),
        };
        match this.queue.poll_request(&this.request, place, cx) {
            Step::Waiting(place) => {
                this.state = State::Waiting(place);
                Poll::Pending
            }
            Step::Ready(outcome) => {
                this.state = State::Done;
                Poll::Ready(outcome.map(|grant| Permit::new(&this.queue, grant)))
            }
        }
    }
}

impl<Q: Authority> FusedFuture for Acquire<Q> {
    fn is_terminated(&self) -> bool {
        self.state == State::Done
    }
}

impl<Q: Authority> Drop for Acquire<Q> {
    fn drop(&mut self) {
        if let State::Waiting(place) = self.state {
            self.queue.abandon(self.request.shard, place);
        }
    }
}

impl<Q: Authority> fmt::Debug for Acquire<Q> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire")
            .field("shard", &self.request.shard)
            .field("priority", &self.request.priority)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// The stream of a queue's `acquire_all`: a permit per shard in the order they are
/// granted (and an error for a shard that could not be asked for), each delivered
/// when the stream yields it. The requests are made when it is first polled; each
/// grant costs it O(1).
///
/// Each queue names it for itself: [`runtime::Grants`](crate::runtime::Grants) (and
/// `tokio::Grants`, `smol::Grants`), `redis::Grants`.
///
/// # Cancel safety
///
/// Dropping it cancels the shards still waiting; grants it had not yielded count as
/// made (their units are spent), free their buckets at the drop and release their
/// holds.
#[must_use = "requests are made only when the stream is polled"]
pub struct Grants<Q: Authority> {
    queue: Q,
    /// The shards it asks for (the authority may take them once asked).
    shards: Vec<ShardId>,
    /// What the authority keeps of it, once it asked and until it ends.
    stream: Option<Q::Stream>,
    /// It yielded `None`.
    ended: bool,
}

impl<Q: Authority> Grants<Q> {
    pub(crate) fn new(queue: Q, shards: Vec<ShardId>) -> Self {
        Self {
            queue,
            shards,
            stream: None,
            ended: false,
        }
    }
}

impl<Q: Authority> Stream for Grants<Q> {
    type Item = Result<Permit<Q>, AcquireError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match this
            .queue
            .poll_stream(&mut this.shards, &mut this.stream, cx)
        {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(outcome)) => {
                Poll::Ready(Some(outcome.map(|grant| Permit::new(&this.queue, grant))))
            }
            Poll::Ready(None) => {
                // The authority forgot the stream: nothing is left to abandon.
                this.stream = None;
                this.ended = true;
                Poll::Ready(None)
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.ended {
            return (0, Some(0));
        }
        match Q::stream_len(&self.shards, self.stream.as_ref()) {
            Some(left) => (left, Some(left)),
            None => (0, None),
        }
    }
}

impl<Q: Authority> FusedStream for Grants<Q> {
    fn is_terminated(&self) -> bool {
        self.ended
    }
}

impl<Q: Authority> Drop for Grants<Q> {
    fn drop(&mut self) {
        if let Some(stream) = self.stream.take() {
            self.queue.abandon_stream(&self.shards, stream);
        }
    }
}

impl<Q: Authority> fmt::Debug for Grants<Q> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grants")
            .field("shards", &self.shards.len())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}
