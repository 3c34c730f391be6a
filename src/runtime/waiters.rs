//! The futures waiting on a queue, in a slab: O(1) to find by id.

use std::collections::VecDeque;
use std::task::Waker;

/// A waiting `Acquire` or `Grants`: its index in the slab.
pub(super) type WaiterId = u64;

pub(super) struct Waiter {
    pub(super) waker: Option<Waker>,
    /// Its shards still queued in the scheduler.
    pub(super) queued: usize,
    /// Its grants not yet handed out.
    pub(super) granted: VecDeque<super::queue::Grant>,
}

impl Waiter {
    pub(super) fn is_waiting(&self) -> bool {
        self.queued > 0
    }
}

/// Waiters by id. Slots of finished waiters are reused; an id is only ever held by
/// its own future (and by the queue's bookkeeping, which forgets it on removal).
#[derive(Default)]
pub(super) struct Waiters {
    slots: Vec<Option<Waiter>>,
    free: Vec<usize>,
    /// The most recently added waiter, the first choice to hold the timer.
    newest: Option<WaiterId>,
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
        let id = index as WaiterId;
        self.newest = Some(id);
        id
    }

    pub(super) fn get(&self, id: &WaiterId) -> Option<&Waiter> {
        self.slots.get(*id as usize)?.as_ref()
    }

    pub(super) fn get_mut(&mut self, id: &WaiterId) -> Option<&mut Waiter> {
        self.slots.get_mut(*id as usize)?.as_mut()
    }

    pub(super) fn remove(&mut self, id: &WaiterId) -> Option<Waiter> {
        let index = *id as usize;
        let waiter = self.slots.get_mut(index)?.take()?;
        self.free.push(index);
        if self.newest == Some(*id) {
            self.newest = None;
        }
        Some(waiter)
    }

    /// A waiter still waiting, other than `except`: the newest if it is, else the one
    /// in the highest slot (deterministic, and in practice found at once).
    pub(super) fn pick_waiting(
        &mut self,
        except: Option<WaiterId>,
    ) -> Option<(WaiterId, &mut Waiter)> {
        let newest = self
            .newest
            .filter(|&id| Some(id) != except && self.get(&id).is_some_and(Waiter::is_waiting));
        let index = match newest {
            Some(id) => id as usize,
            None => self
                .slots
                .iter()
                .enumerate()
                .rev()
                .find_map(|(index, slot)| {
                    let waiting = slot.as_ref().is_some_and(Waiter::is_waiting);
                    (waiting && Some(index as WaiterId) != except).then_some(index)
                })?,
        };
        let waiter = self.slots[index].as_mut()?;
        Some((index as WaiterId, waiter))
    }
}
