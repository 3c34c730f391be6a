//! `Permit`: leave to IDENTIFY, delivered to the shard.

use std::fmt;
use std::time::Instant;

use super::Runtime;
use super::queue::Queue;
use super::shared::Delivered;
use crate::ShardId;

/// Leave to IDENTIFY, delivered when the future or stream returned it.
///
/// In timer mode dropping it changes nothing: its bucket is busy for an interval from
/// [`granted_at`](Permit::granted_at) whatever happens to the permit. In hold mode the
/// shard's bucket also stays held until [`release`](Permit::release) or drop (or the
/// hold timeout, counted from the grant): release it when the shard gets READY, or
/// fails.
#[must_use = "in hold mode, dropping the permit frees the bucket at once"]
pub struct Permit<R: Runtime> {
    /// Hold mode: the queue to release the hold in. Timer mode has nothing to do when
    /// the permit goes, and keeps no reference.
    queue: Option<Queue<R>>,
    delivered: Delivered,
}

impl<R: Runtime> Permit<R> {
    pub(super) fn new(queue: &Queue<R>, delivered: Delivered) -> Self {
        Self {
            queue: delivered.holds.then(|| queue.clone()),
            delivered,
        }
    }

    /// The shard this permit is for.
    pub fn shard(&self) -> ShardId {
        self.delivered.shard
    }

    /// The instant (on the runtime's clock) the permit was delivered: the poll that
    /// returned it. The interval of its bucket runs from here; the IDENTIFY may go
    /// from then on.
    pub fn granted_at(&self) -> Instant {
        self.delivered.at
    }

    /// The shard got READY (or failed): free its bucket (hold mode). Same as drop.
    pub fn release(self) {}

    /// Lets the permit go without freeing the bucket: the hold ends with
    /// [`Queue::release`] for this shard, or at the hold timeout. For integrations
    /// that learn of READY away from the code that acquired the permit.
    pub fn keep(mut self) {
        self.delivered.holds = false;
    }
}

impl<R: Runtime> Drop for Permit<R> {
    fn drop(&mut self) {
        if let (true, Some(queue)) = (self.delivered.holds, &self.queue) {
            let Delivered { shard, number, .. } = self.delivered;
            queue.change(super::driver::Caller::Other, |shared, wakeups| {
                let now = R::now();
                if shared.release_at(shard, number, now, wakeups) {
                    shared.settle(now, wakeups);
                }
            });
        }
    }
}

impl<R: Runtime> fmt::Debug for Permit<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("shard", &self.delivered.shard)
            .field("granted_at", &self.delivered.at)
            .finish()
    }
}
