//! The futures a shard waits on: `Acquire` (one shard's request) and `Grants` (a
//! stream of many). Each makes its requests when first polled, then takes what the
//! driver recorded for them in `Local`; the poll that returns a permit delivers it.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::{FusedFuture, FusedStream, Stream};
use tokio::time::Instant;

use super::local::{Owner, Taken, Ticket};
use super::permit::Permit;
use super::shared::Inner;
use crate::{AcquireError, Error, OnConflict, Priority, ShardId};

/// Where an `Acquire` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Not polled yet: nothing requested.
    Start,
    /// Requested: the place of this ticket.
    Waiting(Ticket),
    /// Resolved.
    Done,
}

/// The future of [`Queue::acquire`](super::Queue::acquire): resolves with the permit
/// once Redis granted the shard. The request is made when it is first polled.
///
/// # Cancel safety
///
/// Dropping it while it waits cancels the request (nothing spent, nobody delayed);
/// dropped after the grant came back, the unit is spent and a hold is released.
#[must_use = "a request is made only when the future is polled"]
pub struct Acquire {
    inner: Arc<Inner>,
    shard: ShardId,
    priority: Priority,
    /// What it does if a request of the same shard waits here.
    on_conflict: OnConflict,
    state: State,
}

impl Acquire {
    pub(super) fn new(
        inner: Arc<Inner>,
        shard: ShardId,
        priority: Priority,
        on_conflict: OnConflict,
    ) -> Self {
        Self {
            inner,
            shard,
            priority,
            on_conflict,
            state: State::Start,
        }
    }

    /// The shard this request is for.
    pub fn shard(&self) -> ShardId {
        self.shard
    }
}

impl Future for Acquire {
    type Output = Result<Permit, AcquireError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        // Its driver may have ended with the runtime it ran on.
        super::driver::ensure(&this.inner);
        let now = Instant::now();
        let mut local = this.inner.lock();
        let ticket = match this.state {
            // Polled after it resolved: a fused "nothing more" rather than a panic.
            State::Done => return Poll::Pending,
            State::Waiting(ticket) => ticket,
            State::Start => {
                let owner = Owner::Future(None);
                match local.enqueue(this.shard, this.priority, this.on_conflict, owner, now) {
                    Ok(ticket) => {
                        this.state = State::Waiting(ticket);
                        this.inner.wake.notify_one();
                        ticket
                    }
                    Err(_) => {
                        this.state = State::Done;
                        return Poll::Ready(Err(Error::AlreadyQueued(this.shard).into()));
                    }
                }
            }
        };
        match local.take(this.shard, ticket, now) {
            Taken::Permit(token) => {
                drop(local);
                // Its delivery is for Redis to hear of (`report_deliveries`).
                this.inner.wake.notify_one();
                this.state = State::Done;
                return Poll::Ready(Ok(Permit::new(&this.inner, this.shard, token, now)));
            }
            Taken::Gone => {
                this.state = State::Done;
                return Poll::Ready(Err(AcquireError::GrantLost(this.shard)));
            }
            Taken::Superseded => {
                this.state = State::Done;
                return Poll::Ready(Err(AcquireError::Superseded(this.shard)));
            }
            // Taken late: the driver first keeps the bucket busy until an interval
            // after a new window (spacing counts from delivery), then wakes us.
            Taken::Pending { touch: true } => this.inner.wake.notify_one(),
            Taken::Pending { touch: false } => {}
        }
        if let Some(waiter) = local.waiters.get_mut(&this.shard) {
            if let Owner::Future(waker) = &mut waiter.owner {
                if !waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    *waker = Some(cx.waker().clone());
                }
            }
        }
        Poll::Pending
    }
}

impl FusedFuture for Acquire {
    fn is_terminated(&self) -> bool {
        self.state == State::Done
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        if let State::Waiting(ticket) = self.state {
            self.inner.abandon(None, [(self.shard, ticket)]);
        }
    }
}

impl fmt::Debug for Acquire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire")
            .field("shard", &self.shard)
            .field("state", &self.state)
            .finish()
    }
}

/// The stream of [`Queue::acquire_all`](super::Queue::acquire_all): permits in the
/// order they are granted (and an error for a shard that already waits). The
/// requests are made when it is first polled. Each grant costs the stream O(1): the
/// driver puts its shard on the stream's ready list.
///
/// # Cancel safety
///
/// Dropping it cancels the requests still waiting; a grant it had not yielded yet is
/// spent, and its hold released.
#[must_use = "the requests are made only when the stream is polled"]
pub struct Grants {
    inner: Arc<Inner>,
    /// The shards to ask for, until the first poll.
    shards: Vec<ShardId>,
    /// Its id among the queue's streams, once it asked.
    id: Option<u64>,
    /// The requests still waiting, by shard.
    waiting: HashMap<ShardId, Ticket>,
    /// Shards that could not be asked for, to yield as errors.
    refused: VecDeque<ShardId>,
    /// It yielded `None`.
    ended: bool,
}

impl Grants {
    pub(super) fn new(inner: Arc<Inner>, shards: Vec<ShardId>) -> Self {
        Self {
            inner,
            shards,
            id: None,
            waiting: HashMap::new(),
            refused: VecDeque::new(),
            ended: false,
        }
    }
}

impl Stream for Grants {
    type Item = Result<Permit, AcquireError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        super::driver::ensure(&this.inner);
        let now = Instant::now();
        let mut local = this.inner.lock();
        let id = match this.id {
            Some(id) => id,
            None => {
                let id = local.open_stream();
                this.id = Some(id);
                for shard in std::mem::take(&mut this.shards) {
                    let owner = Owner::Stream(id);
                    match local.enqueue(shard, Priority::Start, OnConflict::Refuse, owner, now) {
                        Ok(ticket) => drop(this.waiting.insert(shard, ticket)),
                        Err(_) => this.refused.push_back(shard),
                    }
                }
                this.inner.wake.notify_one();
                id
            }
        };
        if let Some(shard) = this.refused.pop_front() {
            return Poll::Ready(Some(Err(Error::AlreadyQueued(shard).into())));
        }
        // The driver is woken for a touch asked for, or to tell Redis of a delivery.
        let mut wake_driver = false;
        while let Some(shard) = local
            .streams
            .get_mut(&id)
            .and_then(|stream| stream.ready.pop_front())
        {
            let Some(&ticket) = this.waiting.get(&shard) else {
                continue;
            };
            let outcome = match local.take(shard, ticket, now) {
                Taken::Permit(token) => {
                    wake_driver = true;
                    Ok(token)
                }
                Taken::Gone => Err(AcquireError::GrantLost(shard)),
                Taken::Superseded => Err(AcquireError::Superseded(shard)),
                Taken::Pending { touch: asked } => {
                    wake_driver |= asked;
                    continue;
                }
            };
            this.waiting.remove(&shard);
            drop(local);
            if wake_driver {
                this.inner.wake.notify_one();
            }
            let outcome = outcome.map(|token| Permit::new(&this.inner, shard, token, now));
            return Poll::Ready(Some(outcome));
        }
        if wake_driver {
            this.inner.wake.notify_one();
        }
        if this.waiting.is_empty() {
            local.streams.remove(&id);
            this.ended = true;
            return Poll::Ready(None);
        }
        if let Some(stream) = local.streams.get_mut(&id) {
            if !stream
                .waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                stream.waker = Some(cx.waker().clone());
            }
        }
        Poll::Pending
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.shards.len() + self.waiting.len() + self.refused.len();
        (left, Some(left))
    }
}

impl FusedStream for Grants {
    fn is_terminated(&self) -> bool {
        self.ended
    }
}

impl Drop for Grants {
    fn drop(&mut self) {
        if self.id.is_some() {
            self.inner.abandon(self.id, self.waiting.drain());
        }
    }
}

impl fmt::Debug for Grants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grants")
            .field("waiting", &(self.shards.len() + self.waiting.len()))
            .finish()
    }
}
