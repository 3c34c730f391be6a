//! One bucket: its FIFO of queued shards and when it is free again.

use std::collections::VecDeque;
use std::time::Instant;

use crate::limit::ShardId;
use crate::shard_map::{Seq, ShardMap};
use crate::time::Moment;

/// A bucket's key: `shard % max_concurrency`.
pub(crate) type BucketId = u32;

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

/// A granted shard that holds its bucket (hold mode) until released or `until`.
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
    /// Its first shard, of this sequence number, is eligible (budget permitting).
    Ready(Seq),
    /// Free at this instant.
    Waiting(Instant),
    /// Not free until some input (a release, an update) changes it.
    Stalled,
}

#[derive(Clone, Debug)]
pub(crate) struct Bucket {
    /// Requests in sequence order. Cancelled entries stay until they reach the front
    /// or outnumber the live ones, so a cancel costs O(1); the front is always live.
    queue: VecDeque<Entry>,
    /// Cancelled entries still in `queue`.
    dead: usize,
    /// Not free before this: the latest grant plus the interval.
    cooldown_until: Option<Moment>,
    /// Hold mode: granted shards that have not released. Usually one; several after an
    /// update merged buckets.
    holders: Vec<Hold>,
    pub(crate) standing: Standing,
}

impl Bucket {
    pub(crate) fn new() -> Self {
        Self {
            queue: VecDeque::new(),
            dead: 0,
            cooldown_until: None,
            holders: Vec::new(),
            standing: Standing::Empty,
        }
    }

    /// The first live entry.
    pub(crate) fn head(&self) -> Option<Entry> {
        self.queue.front().copied()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Live entries.
    pub(crate) fn len(&self) -> usize {
        self.queue.len() - self.dead
    }

    pub(crate) fn push(&mut self, entry: Entry) {
        self.queue.push_back(entry);
    }

    /// Removes the (live) front entry and any cancelled ones behind it.
    pub(crate) fn pop_head(&mut self, queued: &ShardMap) -> Option<Entry> {
        let head = self.queue.pop_front()?;
        self.drop_dead_front(queued);
        Some(head)
    }

    /// Notes that the entry `seq` was cancelled (its shard is gone from `queued`).
    pub(crate) fn cancelled(&mut self, seq: Seq, queued: &ShardMap) {
        if self.head().is_some_and(|head| head.seq == seq) {
            self.queue.pop_front();
            self.drop_dead_front(queued);
        } else {
            self.dead += 1;
            // Compact once the dead outnumber the live: O(1) amortised per cancel, and
            // cancelled shards never take more memory than the queued ones.
            if self.dead > self.len() {
                self.queue.retain(|entry| entry.is_live(queued));
                self.dead = 0;
                self.shrink_if_sparse();
            }
        }
    }

    fn drop_dead_front(&mut self, queued: &ShardMap) {
        while self.dead > 0 {
            match self.queue.front() {
                Some(entry) if !entry.is_live(queued) => {
                    self.queue.pop_front();
                    self.dead -= 1;
                }
                _ => break,
            }
        }
        if self.queue.is_empty() {
            self.shrink_if_sparse();
        }
    }

    /// Gives back memory a large queue no longer needs. Geometric, so amortised O(1).
    fn shrink_if_sparse(&mut self) {
        const KEEP: usize = 64;
        if self.queue.capacity() > KEEP && self.queue.len() < self.queue.capacity() / 4 {
            self.queue.shrink_to(KEEP.max(self.queue.len() * 2));
        }
    }

    /// Live entries in sequence order, consuming them (for re-keying).
    pub(crate) fn drain_live(&mut self, queued: &ShardMap, into: &mut Vec<Entry>) {
        into.extend(self.queue.drain(..).filter(|entry| entry.is_live(queued)));
        self.dead = 0;
    }

    /// Live entries ahead of `seq` (which must be queued here).
    pub(crate) fn ahead_of(&self, seq: Seq, queued: &ShardMap) -> usize {
        let position = self.queue.partition_point(|entry| entry.seq < seq);
        if self.dead == 0 {
            position
        } else {
            self.queue
                .range(..position)
                .filter(|entry| entry.is_live(queued))
                .count()
        }
    }

    /// Renumbers live entries with `queued`'s new numbers; the caller has purged the dead.
    pub(crate) fn relabel(&mut self, queued: &ShardMap) {
        for entry in &mut self.queue {
            if let Some(seq) = queued.get(entry.shard) {
                entry.seq = seq;
            }
        }
    }

    /// Drops cancelled entries now.
    pub(crate) fn purge_dead(&mut self, queued: &ShardMap) {
        if self.dead > 0 {
            self.queue.retain(|entry| entry.is_live(queued));
            self.dead = 0;
        }
    }

    /// A grant at `now` makes the bucket busy until `cooldown`.
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

    /// When the bucket is free: `None` if it is free whatever the time.
    pub(crate) fn free_at(&self) -> Option<Moment> {
        let held_until = self.holders.iter().map(|hold| hold.until).max();
        match (self.cooldown_until, held_until) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the bucket carries nothing that matters at `now`: nothing queued, no
    /// cooldown or hold still running. Such a bucket can be forgotten.
    pub(crate) fn is_idle(&self, now: Instant) -> bool {
        self.queue.is_empty() && self.free_at().is_none_or(|free| free.has_passed(now))
    }
}
