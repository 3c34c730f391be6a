//! `Permit`: leave to IDENTIFY, granted by Redis for the whole cluster.

use std::fmt;
use std::sync::Arc;

use tokio::time::Instant;

use super::scripts::Token;
use super::shared::Inner;
use crate::ShardId;

/// Leave to IDENTIFY, granted by Redis for the whole cluster.
///
/// In hold mode the bucket stays held until [`release`](Permit::release) or drop (or
/// the hold timeout, counted from the grant in Redis). The release is sent by the
/// queue's driver: one that cannot be sent (Redis unreachable until the hold timeout,
/// or every handle of the queue dropped first) ends at the timeout instead.
#[must_use = "in hold mode, dropping the permit frees the bucket at once"]
pub struct Permit {
    /// Hold mode: where to send the release.
    inner: Option<Arc<Inner>>,
    shard: ShardId,
    token: Token,
    granted_at: Instant,
}

impl Permit {
    pub(super) fn new(
        inner: &Arc<Inner>,
        shard: ShardId,
        token: Token,
        granted_at: Instant,
    ) -> Self {
        Self {
            inner: inner.hold().is_some().then(|| inner.clone()),
            shard,
            token,
            granted_at,
        }
    }

    /// The shard this permit is for.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// When the permit was delivered (tokio's clock): the poll that returned it.
    pub fn granted_at(&self) -> Instant {
        self.granted_at
    }

    /// The grant's identity in Redis: the epoch and the grant's number in it.
    pub fn token(&self) -> (i64, i64) {
        (self.token.epoch, self.token.seq)
    }

    /// The shard got READY (or failed): in hold mode, free its bucket for every
    /// process. Same as drop. Synchronous: the queue's driver sends it.
    pub fn release(self) {}

    /// Lets the permit go without freeing the bucket: the hold ends with
    /// [`Queue::release`](super::Queue::release) for this shard, or at the hold
    /// timeout.
    pub fn keep(mut self) {
        if let Some(inner) = self.inner.take() {
            inner.lock().kept.insert(self.shard, self.token);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            inner.release(self.shard, self.token);
        }
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("shard", &self.shard)
            .field("token", &self.token())
            .field("granted_at", &self.granted_at)
            .finish()
    }
}
