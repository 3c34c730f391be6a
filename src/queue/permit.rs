//! `Permit`: leave to IDENTIFY, delivered to the shard.

use std::fmt;
use std::time::Instant;

use super::{Authority, Grant};
use crate::ShardId;

/// Leave to IDENTIFY, delivered when the future or stream returned it.
///
/// Each queue names it for itself: [`runtime::Permit`](crate::runtime::Permit) (and
/// `tokio::Permit`, `smol::Permit`), `redis::Permit`.
///
/// In timer mode dropping it changes nothing: its bucket is busy for an interval from
/// [`granted_at`](Permit::granted_at) whatever happens to the permit. In hold mode the
/// shard's bucket also stays held until [`release`](Permit::release) or drop (or the
/// hold timeout, counted from the grant): release it when the shard gets READY, or
/// fails. The cluster queue's driver sends the release to Redis; one it cannot send
/// (Redis out of reach until the timeout) ends at the timeout instead.
#[must_use = "in hold mode, dropping the permit frees the bucket at once"]
pub struct Permit<Q: Authority> {
    /// Hold mode: the queue to release the hold in. Timer mode has nothing to do when
    /// the permit goes, and keeps no reference.
    queue: Option<Q>,
    shard: ShardId,
    granted_at: Instant,
    token: Q::Token,
}

impl<Q: Authority> Permit<Q> {
    #[inline]
    pub(super) fn new(queue: &Q, grant: Grant<Q::Token>) -> Self {
        Self {
            queue: grant.holds.then(|| queue.clone()),
            shard: grant.shard,
            granted_at: grant.at,
            token: grant.token,
        }
    }

    /// The shard this permit is for.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// The instant the permit was delivered: the poll that returned it, on the queue's
    /// clock (the runtime's; tokio's for the cluster queue). The interval of its bucket
    /// runs from here; the IDENTIFY may go from then on.
    pub fn granted_at(&self) -> Instant {
        self.granted_at
    }

    /// The grant's identity, as its authority knows it.
    #[cfg(feature = "redis")]
    pub(crate) fn grant_token(&self) -> Q::Token {
        self.token
    }

    /// The shard got READY (or failed): free its bucket (hold mode). Same as drop.
    pub fn release(self) {}

    /// Lets the permit go without freeing the bucket: the hold ends with the queue's
    /// `release` for this shard, or at the hold timeout. For integrations that learn
    /// of READY away from the code that acquired the permit.
    pub fn keep(mut self) {
        self.queue = None;
    }
}

impl<Q: Authority> Drop for Permit<Q> {
    fn drop(&mut self) {
        if let Some(queue) = self.queue.take() {
            queue.release(self.shard, self.token);
        }
    }
}

impl<Q: Authority> fmt::Debug for Permit<Q> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("shard", &self.shard)
            .field("granted_at", &self.granted_at)
            .field("token", &self.token)
            .finish()
    }
}
