//! The futures a shard waits on: `Acquire` (one shard's request) and `Grants` (a
//! stream of many). Both take what the driver recorded for them in `Local`; the poll
//! that returns a permit delivers it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::time::Instant;

use super::local::Taken;
use super::permit::Permit;
use super::shared::Inner;
use crate::{Error, ShardId};

/// The future of [`Queue::acquire`](super::Queue::acquire): resolves with the permit
/// once Redis granted the shard.
///
/// # Cancel safety
///
/// Dropping it while it waits cancels the request (nothing spent, nobody delayed);
/// dropped after the grant came back, the unit is spent and a hold is released.
#[must_use = "the request waits only while its future lives"]
pub struct Acquire {
    inner: Arc<Inner>,
    shard: ShardId,
    /// Resolved at creation (the shard was already queued): nothing of ours to cancel.
    failed: Option<Error>,
    done: bool,
}

impl Acquire {
    pub(super) fn new(inner: Arc<Inner>, shard: ShardId) -> Self {
        Self {
            inner,
            shard,
            failed: None,
            done: false,
        }
    }

    pub(super) fn failed(inner: Arc<Inner>, shard: ShardId, error: Error) -> Self {
        Self {
            inner,
            shard,
            failed: Some(error),
            done: false,
        }
    }

    /// The shard this request is for.
    pub fn shard(&self) -> ShardId {
        self.shard
    }
}

impl Future for Acquire {
    type Output = Result<Permit, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if this.done {
            // Polled after it resolved: a fused "nothing more" rather than a panic.
            return Poll::Pending;
        }
        if let Some(error) = this.failed.take() {
            this.done = true;
            return Poll::Ready(Err(error));
        }
        // Its driver may have ended with the runtime it ran on.
        super::driver::ensure(&this.inner);
        let now = Instant::now();
        let mut local = this.inner.lock();
        match local.take(this.shard, now) {
            Taken::Permit(token) => {
                drop(local);
                this.done = true;
                return Poll::Ready(Ok(Permit::new(&this.inner, this.shard, token, now)));
            }
            Taken::Gone => {
                this.done = true;
                return Poll::Ready(Err(Error::GrantLost(this.shard)));
            }
            // Taken late: the driver first keeps the bucket busy until an interval
            // after a new window (spacing counts from delivery), then wakes us.
            Taken::Pending { touch: true } => this.inner.wake.notify_one(),
            Taken::Pending { touch: false } => {}
        }
        if let Some(waiter) = local.waiters.get_mut(&this.shard) {
            if !waiter
                .waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                waiter.waker = Some(cx.waker().clone());
            }
        }
        Poll::Pending
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        if self.done || self.failed.is_some() {
            return;
        }
        let mut local = self.inner.lock();
        local.abandon(self.shard, Instant::now());
        let wake = !local.outbox.is_empty();
        drop(local);
        if wake {
            self.inner.wake.notify_one();
        }
    }
}

impl fmt::Debug for Acquire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire")
            .field("shard", &self.shard)
            .finish()
    }
}

/// The stream of [`Queue::acquire_all`](super::Queue::acquire_all): permits in the
/// order they are granted.
///
/// # Cancel safety
///
/// Dropping it cancels the requests still waiting.
#[must_use = "the requests wait only while the stream lives"]
pub struct Grants {
    pending: Vec<Acquire>,
}

impl Grants {
    pub(super) fn new(pending: Vec<Acquire>) -> Self {
        Self { pending }
    }
}

impl Stream for Grants {
    type Item = Result<Permit, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let pending = &mut self.pending;
        if pending.is_empty() {
            return Poll::Ready(None);
        }
        for index in 0..pending.len() {
            if let Poll::Ready(result) = Pin::new(&mut pending[index]).poll(cx) {
                // Resolved: its drop has nothing to cancel.
                drop(pending.remove(index));
                return Poll::Ready(Some(result));
            }
        }
        Poll::Pending
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.pending.len(), Some(self.pending.len()))
    }
}

impl fmt::Debug for Grants {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grants")
            .field("pending", &self.pending.len())
            .finish()
    }
}
