//! The futures waiting on a queue, in a slab: O(1) to find by id.

use std::collections::VecDeque;
use std::task::Waker;
use std::time::Instant;

use crate::ShardId;

/// A grant the scheduler made, on its way to the shard's future.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Grant {
    pub(super) shard: ShardId,
    /// Numbers grants: in hold mode a permit releases only its own hold, not a later
    /// one of the same shard (after its own timed out).
    pub(super) number: u64,
    /// The scheduler's instant of the grant.
    pub(super) at: Instant,
    /// How many updates had changed `max_concurrency` when it was made.
    pub(super) rekeys: u64,
    /// Timer mode: still undelivered at the end of its cooldown, it was turned into
    /// an occupation of its bucket (invariant 3).
    pub(super) occupies: bool,
}

/// A waiting `Acquire` or `Grants`: its index in the slab (64 bits: the shard index
/// that maps shards to waiters stores this type).
pub(super) type WaiterId = u64;

pub(super) struct Waiter {
    /// The waker of the task that polled it last; taken when it is woken.
    pub(super) waker: Option<Waker>,
    /// Its shards still queued in the scheduler.
    pub(super) queued: usize,
    /// Its grants not yet delivered (taken by a poll), oldest first.
    pub(super) undelivered: Undelivered,
}

/// A waiter's undelivered grants, oldest first. An `Acquire` has one at most: it is
/// kept inline, so handing a grant over allocates nothing, and the rest (a `Grants`
/// stream's) are boxed, so that every waiter's slot stays small.
#[derive(Default)]
pub(super) struct Undelivered {
    first: Option<Grant>,
    // Boxed on purpose: 8 bytes in every waiter's slot instead of a `VecDeque`'s 32.
    #[allow(clippy::box_collection)]
    rest: Option<Box<VecDeque<Grant>>>,
}

impl Undelivered {
    #[inline]
    pub(super) fn push_back(&mut self, grant: Grant) {
        if self.first.is_none() {
            self.first = Some(grant);
        } else {
            self.rest.get_or_insert_default().push_back(grant);
        }
    }

    #[inline]
    pub(super) fn front(&self) -> Option<&Grant> {
        self.first.as_ref()
    }

    /// The grant numbered `number`, if it is still here.
    pub(super) fn find_mut(&mut self, number: u64) -> Option<&mut Grant> {
        self.first
            .iter_mut()
            .chain(self.rest.iter_mut().flat_map(|rest| rest.iter_mut()))
            .find(|grant| grant.number == number)
    }

    #[inline]
    pub(super) fn pop_front(&mut self) -> Option<Grant> {
        let first = self.first.take();
        self.first = self.rest.as_mut().and_then(|rest| rest.pop_front());
        first
    }
}

impl IntoIterator for Undelivered {
    type Item = Grant;
    type IntoIter = std::iter::Chain<
        std::option::IntoIter<Grant>,
        std::iter::Flatten<std::option::IntoIter<VecDeque<Grant>>>,
    >;

    fn into_iter(self) -> Self::IntoIter {
        let rest = self.rest.map(|rest| *rest);
        self.first.into_iter().chain(rest.into_iter().flatten())
    }
}

impl Waiter {
    /// Remembers the waker of the task polling now (futures move between tasks).
    pub(super) fn register(&mut self, waker: &Waker) {
        match &self.waker {
            Some(known) if known.will_wake(waker) => {}
            _ => self.waker = Some(waker.clone()),
        }
    }
}

/// Waiters by id. Slots of finished waiters are reused; an id is only ever held by
/// its own future (and by the queue's bookkeeping, which forgets it on removal).
#[derive(Default)]
pub(super) struct Waiters {
    slots: Vec<Option<Waiter>>,
    free: Vec<usize>,
}

impl Waiters {
    /// A waiter with nothing queued yet, not polled yet.
    pub(super) fn insert(&mut self) -> WaiterId {
        self.insert_waiter(Waiter {
            waker: None,
            queued: 0,
            undelivered: Undelivered::default(),
        })
    }

    /// A waiter with one shard queued, polled by the task of `waker`.
    #[inline]
    pub(super) fn insert_queued(&mut self, waker: &Waker) -> WaiterId {
        self.insert_waiter(Waiter {
            waker: Some(waker.clone()),
            queued: 1,
            undelivered: Undelivered::default(),
        })
    }

    #[inline(always)]
    fn insert_waiter(&mut self, waiter: Waiter) -> WaiterId {
        let index = match self.free.pop() {
            Some(index) => {
                self.slots[index] = Some(waiter);
                index
            }
            None => {
                self.slots.push(Some(waiter));
                self.slots.len() - 1
            }
        };
        index as WaiterId
    }

    fn slot(id: WaiterId) -> usize {
        usize::try_from(id).unwrap_or(usize::MAX)
    }

    #[inline]
    pub(super) fn get_mut(&mut self, id: WaiterId) -> Option<&mut Waiter> {
        self.slots.get_mut(Self::slot(id))?.as_mut()
    }

    #[inline]
    pub(super) fn remove(&mut self, id: WaiterId) -> Option<Waiter> {
        let index = Self::slot(id);
        let waiter = self.slots.get_mut(index)?.take()?;
        self.free.push(index);
        Some(waiter)
    }

    /// [`remove`](Self::remove) for a waiter nobody needs back: dropped where it is,
    /// not moved out first.
    #[inline]
    pub(super) fn forget(&mut self, id: WaiterId) {
        let index = Self::slot(id);
        if let Some(slot @ Some(_)) = self.slots.get_mut(index) {
            *slot = None;
            self.free.push(index);
        }
    }

    /// Takes the waker of every waiter that still waits for a grant.
    pub(super) fn take_waiting_wakers(&mut self, into: &mut Vec<Waker>) {
        let waiting = self.slots.iter_mut().flatten();
        into.extend(
            waiting
                .filter(|w| w.queued > 0)
                .filter_map(|w| w.waker.take()),
        );
    }
}
