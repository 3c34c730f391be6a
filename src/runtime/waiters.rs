//! The futures waiting on a queue, in a slab: O(1) to find by id.

use std::collections::VecDeque;
use std::task::Waker;

use super::shared::Grant;

/// A waiting `Acquire` or `Grants`: its index in the slab (64 bits: the shard index
/// that maps shards to waiters stores this type).
pub(super) type WaiterId = u64;

pub(super) struct Waiter {
    /// The waker of the task that polled it last; taken when it is woken.
    pub(super) waker: Option<Waker>,
    /// Its shards still queued in the scheduler.
    pub(super) queued: usize,
    /// Its grants not yet delivered (taken by a poll), oldest first.
    pub(super) granted: VecDeque<Grant>,
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
    pub(super) fn insert(&mut self) -> WaiterId {
        let waiter = Waiter {
            waker: None,
            queued: 0,
            granted: VecDeque::new(),
        };
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

    pub(super) fn get(&self, id: WaiterId) -> Option<&Waiter> {
        self.slots.get(Self::slot(id))?.as_ref()
    }

    pub(super) fn get_mut(&mut self, id: WaiterId) -> Option<&mut Waiter> {
        self.slots.get_mut(Self::slot(id))?.as_mut()
    }

    pub(super) fn remove(&mut self, id: WaiterId) -> Option<Waiter> {
        let index = Self::slot(id);
        let waiter = self.slots.get_mut(index)?.take()?;
        self.free.push(index);
        Some(waiter)
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
