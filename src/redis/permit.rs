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
    granted_at: std::time::Instant,
}

impl Permit {
    pub(super) fn new(
        inner: &Arc<Inner>,
        shard: ShardId,
        token: Token,
        granted_at: Instant,
    ) -> Self {
        let inner = inner.hold().map(|hold| {
            let until = granted_at + hold;
            inner.lock().holds.insert(shard, (token, until));
            inner.clone()
        });
        Self {
            inner,
            shard,
            token,
            granted_at: granted_at.into_std(),
        }
    }

    /// The shard this permit is for.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// When the permit was delivered: the poll that returned it (on tokio's clock, as
    /// a `std` instant, as the runtime queues report it).
    pub fn granted_at(&self) -> std::time::Instant {
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
        // Its hold stays in `holds`, for `Queue::release`.
        self.inner = None;
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.take() {
            let mut local = inner.lock();
            // `Queue::release` may have released this hold already.
            if local
                .holds
                .get(&self.shard)
                .is_some_and(|(t, _)| *t == self.token)
            {
                local.holds.remove(&self.shard);
                drop(local);
                inner.release(self.shard, self.token);
            }
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
