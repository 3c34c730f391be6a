//! One bucket: its queues of shards (a FIFO per priority) and when it is free again.

use std::collections::VecDeque;
use std::time::Instant;

use crate::limit::ShardId;
use crate::priority::Priority;
use crate::shard_map::{Seq, ShardMap};
use crate::time::Moment;

/// A bucket's key: `shard % max_concurrency`.
pub(crate) type BucketId = u32;

/// The bucket of `shard` ([rules 1](crate::rules)), the one place it is computed: the
/// core, the queues' gates, the cluster's process side and the server all ask here.
/// `max_concurrency` is never 0 (a limit with 0 is refused before it is applied).
#[inline]
pub(crate) fn bucket_of(shard: ShardId, max_concurrency: u32) -> BucketId {
    shard % max_concurrency
}

/// A request's place in line ([rules 3.10](crate::rules)): its priority's rank in the
/// high 32 bits, its sequence number in the low ones, so that comparing two orders
/// compares the priority first and the sequence number second.
pub(crate) type Order = u64;

/// The order of the request numbered `seq` in the class of rank `rank`.
pub(crate) fn order(rank: usize, seq: Seq) -> Order {
    ((rank as u64) << 32) | Order::from(seq)
}

/// The priority rank of a request of order `order`: the inverse of [`order`].
pub(crate) fn rank_of(order: Order) -> usize {
    (order >> 32) as usize
}

/// A queued request, 8 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) seq: Seq,
    pub(crate) shard: ShardId,
}

impl Entry {
    fn is_live(self, queued: &ShardMap) -> bool {
        queued.get(self.shard) == Some(self.seq)
    }
}

/// A shard that keeps its bucket busy until `until`: a hold (hold mode: granted and
/// not released), or an occupation (an undelivered grant, another process's grant).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Hold {
    pub(crate) shard: ShardId,
    pub(crate) until: Moment,
}

/// Where a bucket stands in the scheduler's index of non-empty buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Standing {
    /// Nothing queued.
    Empty,
    /// Its first shard, of this order, is eligible (budget permitting).
    Ready(Order),
    /// Free at this instant.
    Waiting(Instant),
    /// Not free until some input (a release, an update) changes it.
    Stalled,
}

#[derive(Clone, Debug)]
pub(crate) struct Bucket {
    /// Requests by priority rank (`Reconnect` first), each in sequence order.
    /// Cancelled entries stay until they reach the front or outnumber the live ones,
    /// so a cancel costs O(1); the front of each queue is always live.
    queues: [VecDeque<Entry>; Priority::COUNT],
    /// Cancelled entries still in `queues`.
    dead: usize,
    /// Not free before this: the latest grant plus the interval.
    cooldown_until: Option<Moment>,
    /// Hold mode: granted shards that have not released. Usually one; several after an
    /// update merged buckets.
    holders: Vec<Hold>,
    /// Shards that keep the bucket busy until an instant set from outside (the
    /// scheduler's `occupy`). Usually none.
    occupants: Vec<Hold>,
    pub(crate) standing: Standing,
}

impl Bucket {
    pub(crate) fn new() -> Self {
        Self {
            queues: [VecDeque::new(), VecDeque::new()],
            dead: 0,
            cooldown_until: None,
            holders: Vec::new(),
            occupants: Vec::new(),
            standing: Standing::Empty,
        }
    }

    /// The first live entry: the front of the highest class that has one.
    pub(crate) fn head(&self) -> Option<Entry> {
        self.queues.iter().find_map(|queue| queue.front().copied())
    }

    /// The order of the first live entry.
    #[inline]
    pub(crate) fn head_order(&self) -> Option<Order> {
        self.queues
            .iter()
            .enumerate()
            .find_map(|(rank, queue)| queue.front().map(|entry| order(rank, entry.seq)))
    }

    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.queues.iter().all(VecDeque::is_empty)
    }

    /// Whether nothing of class `rank` or ahead of it is queued: a request of that
    /// class would be first.
    #[inline]
    pub(crate) fn is_clear_for(&self, rank: usize) -> bool {
        self.queues[..=rank].iter().all(VecDeque::is_empty)
    }

    /// Live entries.
    pub(crate) fn len(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum::<usize>() - self.dead
    }

    /// Queues `entry` behind the others of its class.
    #[inline]
    pub(crate) fn push(&mut self, rank: usize, entry: Entry) {
        self.queues[rank].push_back(entry);
    }

    /// Removes the (live) first entry and any cancelled ones behind it in its class.
    #[inline]
    pub(crate) fn pop_head(&mut self, queued: &ShardMap) -> Option<Entry> {
        let rank = self.queues.iter().position(|queue| !queue.is_empty())?;
        let head = self.queues[rank].pop_front()?;
        self.drop_dead_front(rank, queued);
        Some(head)
    }

    /// Notes that the entry `seq` was cancelled (its shard is gone from `queued`).
    pub(crate) fn cancelled(&mut self, seq: Seq, queued: &ShardMap) {
        let front = (0..Priority::COUNT).find(|&rank| {
            self.queues[rank]
                .front()
                .is_some_and(|entry| entry.seq == seq)
        });
        if let Some(rank) = front {
            self.queues[rank].pop_front();
            self.drop_dead_front(rank, queued);
        } else {
            self.dead += 1;
            // Compact once the dead outnumber the live: O(1) amortised per cancel, and
            // cancelled shards never take more memory than the queued ones.
            if self.dead > self.len() {
                for queue in &mut self.queues {
                    queue.retain(|entry| entry.is_live(queued));
                    shrink_if_sparse(queue);
                }
                self.dead = 0;
            }
        }
    }

    #[inline(always)]
    fn drop_dead_front(&mut self, rank: usize, queued: &ShardMap) {
        let queue = &mut self.queues[rank];
        while self.dead > 0 {
            match queue.front() {
                Some(entry) if !entry.is_live(queued) => {
                    queue.pop_front();
                    self.dead -= 1;
                }
                _ => break,
            }
        }
        if queue.is_empty() {
            shrink_if_sparse(queue);
        }
    }

    /// Live entries with their class rank, class by class in sequence order,
    /// consuming them (for re-keying).
    pub(crate) fn drain_live(&mut self, queued: &ShardMap, into: &mut Vec<(usize, Entry)>) {
        for (rank, queue) in self.queues.iter_mut().enumerate() {
            into.extend(
                queue
                    .drain(..)
                    .filter(|entry| entry.is_live(queued))
                    .map(|entry| (rank, entry)),
            );
        }
        self.dead = 0;
    }

    /// Live entries ahead of `seq` (which must be queued here), every class ahead of
    /// its own included.
    pub(crate) fn ahead_of(&self, seq: Seq, queued: &ShardMap) -> usize {
        let mut ahead = 0;
        for queue in &self.queues {
            let position = queue.partition_point(|entry| entry.seq < seq);
            let found = queue.get(position).is_some_and(|entry| entry.seq == seq);
            let end = if found { position } else { queue.len() };
            ahead += if self.dead == 0 {
                end
            } else {
                queue
                    .range(..end)
                    .filter(|entry| entry.is_live(queued))
                    .count()
            };
            if found {
                break;
            }
        }
        ahead
    }

    /// Renumbers live entries with `queued`'s new numbers; the caller has purged the dead.
    pub(crate) fn relabel(&mut self, queued: &ShardMap) {
        for entry in self.queues.iter_mut().flatten() {
            if let Some(seq) = queued.get(entry.shard) {
                entry.seq = seq;
            }
        }
    }

    /// Drops cancelled entries now.
    pub(crate) fn purge_dead(&mut self, queued: &ShardMap) {
        if self.dead > 0 {
            for queue in &mut self.queues {
                queue.retain(|entry| entry.is_live(queued));
            }
            self.dead = 0;
        }
    }

    /// A grant at `now` makes the bucket busy until `cooldown`.
    #[inline]
    pub(crate) fn extend_cooldown(&mut self, cooldown: Moment) {
        self.cooldown_until = Some(self.cooldown_until.map_or(cooldown, |c| c.max(cooldown)));
    }

    /// Hold mode: `shard` holds the bucket until released or `until`.
    pub(crate) fn hold(&mut self, shard: ShardId, until: Moment, now: Instant) {
        self.holders
            .retain(|hold| hold.shard != shard && !hold.until.has_passed(now));
        self.holders.push(Hold { shard, until });
    }

    /// Ends `shard`'s hold if it still holds at `now`; whether it did.
    pub(crate) fn release(&mut self, shard: ShardId, now: Instant) -> bool {
        match self.live_hold(shard, now) {
            Some(index) => {
                self.holders.swap_remove(index);
                true
            }
            None => false,
        }
    }

    /// Where `shard`'s unexpired hold is.
    pub(crate) fn live_hold(&self, shard: ShardId, now: Instant) -> Option<usize> {
        self.holders
            .iter()
            .position(|hold| hold.shard == shard && !hold.until.has_passed(now))
    }

    pub(crate) fn holders(&self) -> &[Hold] {
        &self.holders
    }

    /// `shard` keeps the bucket busy until `until`, instead of any earlier occupation
    /// of its own; an `until` that has come by `now` ends it.
    pub(crate) fn occupy(&mut self, shard: ShardId, until: Moment, now: Instant) {
        self.occupants
            .retain(|busy| busy.shard != shard && !busy.until.has_passed(now));
        if !until.has_passed(now) {
            self.occupants.push(Hold { shard, until });
        }
    }

    pub(crate) fn occupants(&self) -> &[Hold] {
        &self.occupants
    }

    /// When the bucket is free: `None` if it is free whatever the time.
    #[inline]
    pub(crate) fn free_at(&self) -> Option<Moment> {
        if self.holders.is_empty() && self.occupants.is_empty() {
            // Timer mode, nothing occupying: the common case.
            return self.cooldown_until;
        }
        let busy_until = self
            .holders
            .iter()
            .chain(&self.occupants)
            .map(|hold| hold.until)
            .max();
        match (self.cooldown_until, busy_until) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Where the bucket stands at `now`, from its head and when it is free.
    #[inline(always)]
    pub(crate) fn standing_at(&self, now: Instant) -> Standing {
        match (self.head_order(), self.free_at()) {
            (None, _) => Standing::Empty,
            (Some(head), None) => Standing::Ready(head),
            (Some(head), Some(free)) if free.has_passed(now) => Standing::Ready(head),
            (Some(_), Some(Moment::At(at))) => Standing::Waiting(at),
            (Some(_), Some(Moment::Never)) => Standing::Stalled,
        }
    }

    /// Whether the bucket carries nothing that matters at `now`: nothing queued, no
    /// cooldown, hold or occupation still running. Such a bucket can be forgotten.
    pub(crate) fn is_idle(&self, now: Instant) -> bool {
        self.is_empty() && self.free_at().is_none_or(|free| free.has_passed(now))
    }
}

/// Gives back memory a large queue no longer needs. Geometric, so amortised O(1).
fn shrink_if_sparse(queue: &mut VecDeque<Entry>) {
    const KEEP: usize = 64;
    if queue.capacity() > KEEP && queue.len() < queue.capacity() / 4 {
        queue.shrink_to(KEEP.max(queue.len() * 2));
    }
}
