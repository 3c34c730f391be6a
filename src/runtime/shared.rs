//! The mechanism behind [`Queue`](super::Queue): the scheduler, who waits for which
//! shard, grants on their way to their shards, and the driver's slot.
//!
//! # Implementation details
//!
//! Everything lives in one `Shared` behind the queue's mutex; every change runs under
//! it and collects the wakers to wake (and a driver to start) in [`Wakeups`], acted on
//! after the lock is released (tokio's `WakeList` discipline: a woken task may run at
//! once, on this thread, and lock again).
//!
//! The invariants, kept at the end of every change:
//!
//! 1. **Nothing due is left undone.** After every change the scheduler has been
//!    polled at the change's instant until it answered `Wait` or `Idle` (`drive`):
//!    every shard it granted sits in its waiter's `granted` list, its waiter woken.
//!    `deadline` is that last answer.
//! 2. **Someone will drive the next deadline.** Whenever `deadline` is set, the
//!    driver slot is `Running`: either a driver task is parked on its timer for an
//!    instant no later than `deadline`, or it has been woken (or is being started,
//!    or is running) and will read the state again before it parks
//!    (`ensure_driver`). The driver is the only one that polls the timer; callers'
//!    futures only register wakers, so none of them can hold anyone up.
//! 3. **A grant keeps its bucket busy until it is delivered.** In timer mode the
//!    grant's own cooldown keeps its bucket busy for an interval; a grant still not
//!    delivered when its cooldown ends is turned into an occupation of its bucket
//!    ([`Scheduler::occupy`], until told otherwise) before the scheduler is asked
//!    anything at or after that instant (`catch_up`). The poll that delivers it sets
//!    its bucket busy until an interval after the delivery ([rules 5](crate::rules),
//!    "spacing counts from delivery"). Most permits are delivered within their
//!    cooldown, at the grant's own instant under a paused clock, and then cost the
//!    scheduler nothing more. In hold mode the hold does the same up to its timeout. A
//!    grant dropped undelivered frees its bucket at the drop (not before its cooldown).
//! 4. **Deliveries in one bucket are an interval apart, even across a re-key.** The
//!    rules above space deliveries in one bucket by themselves, except where an
//!    update changed `max_concurrency` between a grant and its delivery: two grants
//!    made in different buckets may share one now. So a grant made before the latest
//!    such update is delivered only once no other shard of its new bucket was
//!    delivered within the interval (`recent_deliveries`) or, in hold mode, holds it
//!    after a delivery (`delivered_holds`); until then its future waits, woken by the
//!    driver when that gate passes (`gated`, part of `deadline`) or by a release.
//! 5. **`asked_by` mirrors the scheduler's queue**: a shard is in it exactly when it
//!    is queued in the scheduler, mapped to the waiter that asked for it, whose
//!    `queued` counts it.
//! 6. **The budget counts a grant from its delivery** ([rules 3.11](crate::rules)): the
//!    scheduler defers deliveries, and each grant it made is told exactly once as
//!    [`delivered`](Scheduler::delivered) (its permit handed over, `deliver`) or
//!    [`abandoned`](Scheduler::abandoned) (dropped undelivered, `abandon`; void in hold
//!    mode). Until then a word or a reset subtracts it: it may still be sent.
//!
//! [`Scheduler::occupy`]: crate::Scheduler::occupy

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::Waker;
use std::time::{Duration, Instant};

use super::stats::QueueStats;
use super::waiters::{Grant, Waiter, WaiterId, Waiters};
use crate::buckets::bucket_of;
use crate::scheduler::{Answer, Requested};
use crate::shard_map::ShardIndex;
use crate::{
    AcquireError, Decision, Error, Moment, Priority, Scheduler, SessionStartLimit, ShardId,
};

/// Locks the queue's state. Nothing panics while holding the lock; if something did,
/// the state is still consistent between changes, so carry on.
#[inline]
pub(super) fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Wakes `wakers`; called with the lock released.
pub(super) fn wake(wakers: Vec<Waker>) {
    for waker in wakers {
        waker.wake();
    }
}

/// A grant handed to its shard: what a [`Permit`](super::Permit) carries, its token
/// the grant's number.
pub(super) type Delivered = crate::queue::Grant<u64>;

/// `recent_deliveries` is never pruned below this length.
const MIN_PRUNE: usize = 64;

/// Whether the queue has a driver task.
enum DriverSlot {
    /// No driver: nothing waited, or the task that ran it is gone.
    Stopped,
    /// Driver `id` is being started or runs; `parked` while it sleeps on its timer.
    Running { id: u64, parked: Option<Parked> },
}

/// A driver asleep on its timer.
struct Parked {
    waker: Waker,
    until: Instant,
}

/// Whether the waiting futures are woken when a driver goes (so that one of them
/// starts the next from its own runtime).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum WakeWaiters {
    Yes,
    No,
}

/// What a change leaves to do once the lock is released.
#[derive(Default)]
pub(super) struct Wakeups {
    pub(super) wakers: Vec<Waker>,
    /// Start driver task `id`.
    pub(super) start_driver: Option<u64>,
}

/// What the poll of a waiting future finds.
pub(super) enum Found {
    /// A grant to deliver.
    Grant(Grant),
    /// Nothing is left to wait for: its shard was taken over by a newer request
    /// (`Acquire`), or every shard was handed out (`Grants`).
    Nothing,
    /// Still waiting; its waker is registered.
    Waiting,
}

pub(super) struct Shared {
    pub(super) scheduler: Scheduler,
    asked_by: ShardIndex<WaiterId>,
    waiters: Waiters,
    /// When to drive next (`None`: idle): the scheduler's last answer after a drive,
    /// or the earliest gate, if sooner.
    deadline: Option<Instant>,
    /// Updates that changed `max_concurrency` so far.
    rekeys: u64,
    /// Deliveries (instant, shard), oldest first: every one within the last interval
    /// (invariant 4), and older ones until the log is next pruned.
    recent_deliveries: VecDeque<(Instant, ShardId)>,
    /// Prune `recent_deliveries` once it is this long: pruning at every delivery costs
    /// a tenth of a delivery (`benches/compare`'s `--profile ours`), and this keeps the
    /// log within about twice the deliveries of an interval.
    prune_deliveries_at: usize,
    /// Waiters holding a grant that may not be delivered before its gate ends
    /// (invariant 4), to wake then; `Never`: not before a release.
    gated: Vec<(Moment, WaiterId)>,
    /// Hold mode: delivered grants whose holds may still run: (shard, grant number).
    delivered_holds: Vec<(ShardId, u64)>,
    driver: DriverSlot,
    drivers: u64,
    grants: u64,
    /// Hold mode: the number of each shard's latest grant.
    latest_grant: ShardIndex<u64>,
    /// Timer mode: grants handed to waiters, by the end of their cooldown (the order
    /// they were made in): (cooldown end, waiter, grant number). An entry whose grant
    /// has left its waiter meanwhile (delivered, dropped) is skipped, or dropped by
    /// its delivery when it is first.
    undelivered: VecDeque<(Instant, WaiterId, u64)>,
    /// Shards whose grant reached a running session (twilight: its `()` was sent): a
    /// later request of theirs is a reconnect.
    #[cfg(feature = "twilight")]
    served: ShardIndex<u32>,
    pub(super) stats: QueueStats,
}

impl Shared {
    pub(super) fn new(mut scheduler: Scheduler) -> Self {
        // Invariant 6: the budget learns of each grant's delivery from us.
        scheduler.defer_deliveries();
        Self {
            scheduler,
            asked_by: ShardIndex::default(),
            waiters: Waiters::default(),
            deadline: None,
            rekeys: 0,
            recent_deliveries: VecDeque::new(),
            prune_deliveries_at: MIN_PRUNE,
            gated: Vec::new(),
            delivered_holds: Vec::new(),
            driver: DriverSlot::Stopped,
            drivers: 0,
            grants: 0,
            latest_grant: ShardIndex::default(),
            undelivered: VecDeque::new(),
            #[cfg(feature = "twilight")]
            served: ShardIndex::default(),
            stats: QueueStats::default(),
        }
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    fn timer_mode(&self) -> bool {
        self.scheduler.config().get_hold_timeout().is_none()
    }

    /// Numbers a grant of `shard` that the scheduler made at `at`.
    pub(super) fn number(&mut self, shard: ShardId, at: Instant) -> Grant {
        self.grants += 1;
        if !self.timer_mode() {
            self.latest_grant.insert(shard, self.grants);
        }
        Grant {
            shard,
            number: self.grants,
            at,
            rekeys: self.rekeys,
            occupies: false,
        }
    }

    /// The end of the cooldown of a grant made at `now`, in timer mode (invariant 3):
    /// `None` in hold mode, or when it never ends (and so never needs turning into an
    /// occupation).
    fn cooldown_end(&self, now: Instant) -> Option<Instant> {
        let config = self.scheduler.config();
        match config.get_hold_timeout() {
            None => now.checked_add(config.get_interval()),
            Some(_) => None,
        }
    }

    /// Hands a grant the scheduler made at `now` to waiter `id`, which will take it
    /// later: in timer mode its bucket stays busy until it does (invariant 3), so a
    /// grant with a `cooldown_end` (see [`Self::cooldown_end`]) is filed under it.
    /// Returns the waiter, if it is still there, for the caller to count its `queued`.
    #[inline(always)]
    fn hand_to(
        &mut self,
        id: WaiterId,
        shard: ShardId,
        now: Instant,
        cooldown_end: Option<Instant>,
    ) -> Option<&mut Waiter> {
        let grant = self.number(shard, now);
        if let Some(cooldown_end) = cooldown_end {
            self.undelivered.push_back((cooldown_end, id, grant.number));
        }
        let waiter = self.waiters.get_mut(id)?;
        waiter.undelivered.push_back(grant);
        Some(waiter)
    }

    /// Invariant 3: grants still undelivered at the end of their cooldown occupy
    /// their buckets from then on. Runs before anything that may grant at `now`.
    #[inline]
    fn catch_up(&mut self, now: Instant) {
        // Nearly always, the first cooldown is still running: only that is inlined.
        if self
            .undelivered
            .front()
            .is_some_and(|&(cooldown_end, ..)| cooldown_end <= now)
        {
            self.occupy_undelivered(now);
        }
    }

    /// [`catch_up`](Self::catch_up) once a cooldown has ended.
    #[inline(never)]
    fn occupy_undelivered(&mut self, now: Instant) {
        while let Some(&(cooldown_end, id, number)) = self.undelivered.front() {
            if cooldown_end > now {
                break;
            }
            self.undelivered.pop_front();
            let waiting = self.waiters.get_mut(id);
            if let Some(grant) = waiting.and_then(|waiter| waiter.undelivered.find_mut(number)) {
                grant.occupies = true;
                self.scheduler.occupy(grant.shard, None, now);
            }
        }
    }

    /// Requests `shard` at `now` (after `catch_up`, like every scheduler call that
    /// may grant).
    #[inline]
    pub(super) fn request(
        &mut self,
        shard: ShardId,
        priority: Priority,
        now: Instant,
    ) -> Result<Requested, Error> {
        self.catch_up(now);
        self.scheduler.request_queueing(shard, priority, now)
    }

    /// Hands `grant` to its shard at `now`: from now on the interval of its bucket
    /// runs from here. In hold mode a grant whose hold timed out is void.
    #[inline]
    pub(super) fn deliver(
        &mut self,
        grant: Grant,
        now: Instant,
        wakeups: &mut Wakeups,
    ) -> Result<Delivered, AcquireError> {
        let now = now.max(grant.at);
        let config = self.scheduler.config();
        let (interval, hold_timeout) = (config.get_interval(), config.get_hold_timeout());
        if let Some(timeout) = hold_timeout {
            if grant.at.checked_add(timeout).is_some_and(|end| end <= now) {
                // Void: its shard never sends the IDENTIFY (invariant 6). A unit
                // held back for it may come back: the queue is asked again.
                self.scheduler.abandoned(now);
                self.settle(now, wakeups);
                return Err(AcquireError::HoldExpired(grant.shard));
            }
        }
        // From here its IDENTIFY may be sent: Discord may count it (invariant 6). With
        // the budget spent, the delivery may open Discord's window and so set when it
        // refills: the deadline is asked again.
        self.scheduler.delivered(now);
        // Grants are mostly taken in the order they were handed out: the first one
        // filed for invariant 3 is this one, which no longer needs it.
        if let Some(&(_, _, number)) = self.undelivered.front() {
            if number == grant.number {
                self.undelivered.pop_front();
            }
        }
        // Taken at the grant's own instant, the cooldown covers the interval already.
        // Taken later, its bucket is busy until an interval after the delivery (an
        // occupation that replaces the one `catch_up` may have made).
        let on_time = !grant.occupies;
        if !(on_time && now == grant.at) {
            self.scheduler
                .occupy(grant.shard, now.checked_add(interval), now);
            self.settle(now, wakeups);
        } else if self.scheduler.remaining(now) == 0 {
            self.settle(now, wakeups);
        }
        if self.recent_deliveries.len() >= self.prune_deliveries_at {
            self.prune_deliveries(now, interval);
        }
        self.recent_deliveries.push_back((now, grant.shard));
        if hold_timeout.is_some() {
            let (latest, scheduler) = (&self.latest_grant, &self.scheduler);
            self.delivered_holds.retain(|&(shard, number)| {
                latest.get(shard) == Some(number) && scheduler.hold_end(shard, now).is_some()
            });
            self.delivered_holds.push((grant.shard, grant.number));
        }
        Ok(Delivered {
            shard: grant.shard,
            token: grant.number,
            at: now,
            holds: hold_timeout.is_some(),
        })
    }

    /// A grant dropped before delivery: its unit stays spent (the safe side; only a
    /// unit a refill held back for it while Discord's window is surely closed comes
    /// back, see [`Scheduler::abandoned`]), its bucket frees now (and not before its
    /// cooldown).
    fn abandon(&mut self, grant: Grant, now: Instant, wakeups: &mut Wakeups) {
        self.scheduler.abandoned(now);
        if !self.timer_mode() {
            self.release_at(grant.shard, grant.number, now, wakeups);
        } else if grant.occupies {
            // Its occupation ends now.
            self.scheduler.occupy(grant.shard, Some(now), now);
        }
    }

    /// Releases the hold of grant `number` of `shard` if it is the shard's latest;
    /// whether it held its bucket. The caller settles. A release may open the gate of
    /// a waiter (invariant 4): every gated waiter is woken to look again.
    pub(super) fn release_at(
        &mut self,
        shard: ShardId,
        number: u64,
        now: Instant,
        wakeups: &mut Wakeups,
    ) -> bool {
        if self.latest_grant.get(shard) != Some(number) {
            return false;
        }
        self.latest_grant.remove(shard);
        let released = self.scheduler.release(shard, now);
        if released {
            for (_, id) in self.gated.drain(..) {
                if let Some(waker) = self.waiters.get_mut(id).and_then(|w| w.waker.take()) {
                    wakeups.wakers.push(waker);
                }
            }
        }
        released
    }

    /// The number of `shard`'s latest grant, in hold mode.
    pub(super) fn latest_grant(&self, shard: ShardId) -> Option<u64> {
        self.latest_grant.get(shard)
    }

    /// Applies a fresh limit at `now` (the caller settles).
    pub(super) fn update(
        &mut self,
        limit: SessionStartLimit,
        age: Duration,
        now: Instant,
    ) -> Result<(), Error> {
        let rekeyed = limit.max_concurrency != self.scheduler.max_concurrency();
        self.scheduler.update_with_age(limit, age, now)?;
        if rekeyed {
            self.rekeys += 1;
        }
        Ok(())
    }

    /// Forgets the deliveries whose interval has ended by `now`.
    fn prune_deliveries(&mut self, now: Instant, interval: Duration) {
        if let Some(ended) = now.checked_sub(interval) {
            while let Some(&(at, _)) = self.recent_deliveries.front() {
                if at > ended {
                    break;
                }
                self.recent_deliveries.pop_front();
            }
        }
        self.prune_deliveries_at = MIN_PRUNE.max(2 * self.recent_deliveries.len());
    }

    /// Invariant 4: when `grant` may be delivered, if it must wait: the end of the
    /// interval of another shard's delivery in its bucket, or of such a shard's hold
    /// (`Never`: not before a release).
    fn gate(&self, grant: &Grant, now: Instant) -> Option<Moment> {
        if grant.rekeys == self.rekeys {
            return None;
        }
        let max_concurrency = self.scheduler.max_concurrency();
        let bucket = bucket_of(grant.shard, max_concurrency);
        let other =
            |shard: ShardId| shard != grant.shard && bucket_of(shard, max_concurrency) == bucket;
        let interval = self.scheduler.config().get_interval();
        let intervals = self
            .recent_deliveries
            .iter()
            .filter(|&&(_, shard)| other(shard))
            .map(|&(at, _)| Moment::after(at, interval))
            .filter(|end| !end.has_passed(now));
        let holds = self
            .delivered_holds
            .iter()
            .filter(|&&(shard, number)| {
                other(shard) && self.latest_grant.get(shard) == Some(number)
            })
            .filter_map(|&(shard, _)| self.scheduler.hold_end(shard, now));
        // The latest end (`Never` orders after every instant).
        intervals.chain(holds).max()
    }

    /// Polls the scheduler at `now` until it waits, handing every grant to its waiter
    /// (invariant 1), and wakes the waiters whose gate has passed (invariant 4).
    pub(super) fn drive(&mut self, now: Instant, wakeups: &mut Wakeups) {
        self.catch_up(now);
        if !self.gated.is_empty() {
            let waiters = &mut self.waiters;
            self.gated.retain(|&(gate, id)| {
                if !gate.has_passed(now) {
                    return true;
                }
                if let Some(waker) = waiters.get_mut(id).and_then(|w| w.waker.take()) {
                    wakeups.wakers.push(waker);
                }
                false
            });
        }
        let gate = self
            .gated
            .iter()
            .filter_map(|&(gate, _)| match gate {
                Moment::At(at) => Some(at),
                Moment::Never => None,
            })
            .min();
        // Every grant of this drive is made at `now`.
        let cooldown_end = self.cooldown_end(now);
        loop {
            match self.scheduler.poll(now) {
                Decision::Grant(shard) => {
                    let Some(id) = self.asked_by.remove(shard) else {
                        // Unreachable (invariant 5); the grant counts as spent.
                        continue;
                    };
                    if let Some(waiter) = self.hand_to(id, shard, now, cooldown_end) {
                        waiter.queued -= 1;
                        if let Some(waker) = waiter.waker.take() {
                            self.stats.wakeups += 1;
                            wakeups.wakers.push(waker);
                        }
                    }
                }
                Decision::Wait(until) => {
                    self.deadline = Some(gate.map_or(until, |gate| gate.min(until)));
                    return;
                }
                Decision::Idle => {
                    self.deadline = gate;
                    return;
                }
            }
        }
    }

    /// After a request that queued its shard, with the scheduler's `answer`: others
    /// may be due at once, else the deadline is the answer's `Wait` (it covers every
    /// queued shard), and a driver must take it. Whether it drove (and so may have
    /// handed out grants).
    #[inline]
    pub(super) fn queued(&mut self, answer: Answer, now: Instant, wakeups: &mut Wakeups) -> bool {
        let until = match answer {
            _ if !self.gated.is_empty() => None,
            Answer::New(Decision::Wait(until)) => Some(until),
            // The deadline stands (made sure of a driver: one whose runtime went may
            // have left it without), unless it has come: nothing due may wait.
            Answer::Stands => match self.deadline {
                Some(deadline) if deadline > now => Some(deadline),
                _ => None,
            },
            Answer::New(_) => None,
        };
        match until {
            Some(until) if until > now => {
                self.deadline = Some(until);
                self.ensure_driver(wakeups);
                false
            }
            _ => {
                self.settle(now, wakeups);
                true
            }
        }
    }

    /// After an input: drive at `now`, and make sure a driver will take the next
    /// deadline (invariants 1 and 2).
    pub(super) fn settle(&mut self, now: Instant, wakeups: &mut Wakeups) {
        self.drive(now, wakeups);
        self.ensure_driver(wakeups);
    }

    /// Invariant 2: wakes a driver parked past the deadline (or with nothing left to
    /// wait for, so that it ends), or starts one if there is none.
    pub(super) fn ensure_driver(&mut self, wakeups: &mut Wakeups) {
        match &mut self.driver {
            DriverSlot::Running { parked, .. } => {
                let late = match (self.deadline, parked.as_ref()) {
                    (Some(deadline), Some(sleep)) => deadline < sleep.until,
                    (None, Some(_)) => true,
                    (_, None) => false,
                };
                if late {
                    if let Some(sleep) = parked.take() {
                        self.stats.driver_wakeups += 1;
                        wakeups.wakers.push(sleep.waker);
                    }
                }
            }
            DriverSlot::Stopped if self.deadline.is_some() => {
                self.drivers += 1;
                self.stats.drivers_started += 1;
                self.driver = DriverSlot::Running {
                    id: self.drivers,
                    parked: None,
                };
                wakeups.start_driver = Some(self.drivers);
            }
            DriverSlot::Stopped => {}
        }
    }

    /// Whether `id` is the queue's current driver.
    pub(super) fn is_driver(&self, id: u64) -> bool {
        matches!(self.driver, DriverSlot::Running { id: current, .. } if current == id)
    }

    /// Driver `id` sleeps on its timer until `until`.
    pub(super) fn park_driver(&mut self, id: u64, waker: &Waker, until: Instant) {
        if let DriverSlot::Running {
            id: current,
            parked,
        } = &mut self.driver
        {
            if *current == id {
                *parked = Some(Parked {
                    waker: waker.clone(),
                    until,
                });
            }
        }
    }

    /// Driver `id` is gone (it ended, or its runtime dropped it). If it was the
    /// current one and shards still wait, their futures are woken so that the next
    /// one polled starts a driver on its own runtime.
    pub(super) fn driver_gone(&mut self, id: u64, wake: WakeWaiters, wakeups: &mut Wakeups) {
        if !self.is_driver(id) {
            return;
        }
        self.driver = DriverSlot::Stopped;
        if wake == WakeWaiters::Yes && self.deadline.is_some() {
            self.waiters.take_waiting_wakers(&mut wakeups.wakers);
        }
    }

    pub(super) fn add_waiter(&mut self) -> WaiterId {
        self.waiters.insert()
    }

    /// A waiter for `shard`, which the scheduler has just queued, polled by the task
    /// of `waker`: its first poll registers it at once (invariant 5: it asked for
    /// `shard`).
    #[inline(always)]
    pub(super) fn add_queued_waiter(&mut self, shard: ShardId, waker: &Waker) -> WaiterId {
        let id = self.waiters.insert_queued(waker);
        self.asked_by.insert(shard, id);
        id
    }

    /// Requests `shard` for waiter `id` at `now`; a grant at once goes to the waiter's
    /// list like any other. The caller settles.
    pub(super) fn request_for(
        &mut self,
        id: WaiterId,
        shard: ShardId,
        priority: Priority,
        now: Instant,
    ) -> Result<(), Error> {
        match self.request(shard, priority, now)? {
            Requested::Granted => {
                let cooldown_end = self.cooldown_end(now);
                self.hand_to(id, shard, now, cooldown_end);
            }
            Requested::Queued(_) => self.enqueued(id, shard),
        }
        Ok(())
    }

    /// Routes queued `shard` to waiter `id`.
    pub(super) fn enqueued(&mut self, id: WaiterId, shard: ShardId) {
        if let Some(waiter) = self.waiters.get_mut(id) {
            waiter.queued += 1;
        }
        self.asked_by.insert(shard, id);
    }

    /// Forgets a waiter that has nothing left: no shard queued, no grant undelivered.
    #[inline(always)]
    pub(super) fn forget_waiter(&mut self, id: WaiterId, now: Instant, wakeups: &mut Wakeups) {
        self.waiters.forget(id);
        if self.ungate(id) {
            // Its gate was part of the deadline: the driver may have less to wait for.
            self.settle(now, wakeups);
        }
    }

    /// Forgets waiter `id`'s gate; whether it had one.
    fn ungate(&mut self, id: WaiterId) -> bool {
        if self.gated.is_empty() {
            // Gates come only with an update that changed `max_concurrency`.
            return false;
        }
        let gates = self.gated.len();
        self.gated.retain(|&(_, gated)| gated != id);
        self.gated.len() != gates
    }

    /// Whether `shard` waits in the scheduler for some future.
    pub(super) fn is_waiting(&self, shard: ShardId) -> bool {
        self.asked_by.contains_key(shard)
    }

    /// Moves waiting `shard` from the waiter that asked for it to waiter `id`, which
    /// keeps its place in line; the old waiter is woken to find it gone.
    pub(super) fn take_over(&mut self, shard: ShardId, id: WaiterId, wakeups: &mut Wakeups) {
        if let Some(old) = self.asked_by.get(shard) {
            if let Some(waiter) = self.waiters.get_mut(old) {
                waiter.queued -= 1;
                if let Some(waker) = waiter.waker.take() {
                    self.stats.wakeups += 1;
                    wakeups.wakers.push(waker);
                }
            }
        }
        self.enqueued(id, shard);
    }

    /// The poll of waiting future `id`: its next grant, or nothing left to wait for,
    /// or still waiting (its waker registered, and a driver made sure of: the one
    /// that ran may have gone with its runtime).
    #[inline(always)]
    pub(super) fn poll_waiter(
        &mut self,
        id: WaiterId,
        waker: &Waker,
        now: Instant,
        wakeups: &mut Wakeups,
    ) -> Found {
        self.stats.polls += 1;
        let Some(waiter) = self.waiters.get_mut(id) else {
            return Found::Nothing;
        };
        match waiter.undelivered.front().copied() {
            // Made since the latest update that changed `max_concurrency`: no gate
            // (invariant 4), the common case.
            Some(grant) if grant.rekeys == self.rekeys => {
                waiter.undelivered.pop_front();
                return Found::Grant(grant);
            }
            Some(grant) => match self.gate(&grant, now) {
                None => {
                    if let Some(waiter) = self.waiters.get_mut(id) {
                        waiter.undelivered.pop_front();
                    }
                    return Found::Grant(grant);
                }
                Some(gate) => {
                    // Its gate may have moved (another update): only the latest counts.
                    self.ungate(id);
                    self.gated.push((gate, id));
                    if let Moment::At(gate) = gate {
                        self.deadline = Some(self.deadline.map_or(gate, |d| d.min(gate)));
                    }
                }
            },
            None if waiter.queued == 0 => return Found::Nothing,
            None => {
                waiter.register(waker);
                self.ensure_driver(wakeups);
                return Found::Waiting;
            }
        }
        let Some(waiter) = self.waiters.get_mut(id) else {
            return Found::Nothing;
        };
        waiter.register(waker);
        self.ensure_driver(wakeups);
        Found::Waiting
    }

    /// Forgets waiter `id` at `now`: its queued `shards` are cancelled, and grants it
    /// did not take count as granted but free their buckets now.
    pub(super) fn remove_waiter(
        &mut self,
        id: WaiterId,
        shards: &[ShardId],
        now: Instant,
        wakeups: &mut Wakeups,
    ) {
        let Some(waiter) = self.waiters.remove(id) else {
            return;
        };
        self.ungate(id);
        if waiter.queued > 0 {
            for &shard in shards {
                if self.asked_by.get(shard) == Some(id) {
                    self.asked_by.remove(shard);
                    self.scheduler.cancel(shard);
                }
            }
        }
        for grant in waiter.undelivered {
            self.abandon(grant, now, wakeups);
        }
        self.settle(now, wakeups);
    }

    /// Marks `shard` as serving: its next request is a reconnect.
    #[cfg(feature = "twilight")]
    pub(super) fn mark_served(&mut self, shard: ShardId) {
        self.served.insert(shard, 1);
    }

    /// Whether `shard` was serving (its next request is a reconnect).
    #[cfg(feature = "twilight")]
    pub(super) fn is_served(&self, shard: ShardId) -> bool {
        self.served.contains_key(shard)
    }
}
