//! The shared queue state, the `Acquire` future, the `Grants` stream and the `Permit`.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use futures_core::{FusedFuture, FusedStream, Stream};

use super::Runtime;
use crate::shard_map::ShardIndex;
use crate::{Config, Decision, Error, Scheduler, SessionStartLimit, ShardId};

use super::waiters::{Waiter, WaiterId, Waiters};

/// An async IDENTIFY queue over a [`Scheduler`], shared by every shard of a bot.
///
/// Cloning is cheap (an `Arc`); all clones are the same queue. See the
/// [module docs](super) for how it is driven without a background task.
pub struct Queue<R: Runtime> {
    shared: Arc<Mutex<Shared<R>>>,
}

/// Counters that show how hard the queue works, for tests and monitoring.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QueueStats {
    /// Times an `Acquire` or `Grants` was polled while waiting.
    pub polls: u64,
    /// Wakers the queue woke: one per grant handed to a sleeping waiter, plus one
    /// whenever the timer passes to another waiter.
    pub wakeups: u64,
    /// Times the timer was set to a new deadline.
    pub timer_resets: u64,
}

struct Shared<R: Runtime> {
    scheduler: Scheduler,
    /// Which waiter asked for each queued shard.
    asked_by: ShardIndex<WaiterId>,
    waiters: Waiters,
    timer: Option<Pin<Box<R::Timer>>>,
    /// The deadline the timer is set to, until it fires.
    timer_at: Option<Instant>,
    /// The scheduler's last `Wait`, if any.
    deadline: Option<Instant>,
    /// The waiter whose task the timer will wake.
    timer_holder: Option<WaiterId>,
    /// A waiter woken to take the timer over that has not polled yet.
    elected: Option<WaiterId>,
    /// Grants so far, numbering each.
    grants: u64,
    /// Hold mode: the number of each shard's latest grant.
    latest_grant: ShardIndex<u64>,
    stats: QueueStats,
}

/// A granted shard and which of its grants this is: in hold mode a permit releases
/// only its own hold, not a later one of the same shard (after its own timed out).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Grant {
    shard: ShardId,
    number: u64,
    at: Instant,
    /// Hold mode: dropping the permit releases the bucket. In timer mode a permit
    /// has nothing to do when it goes.
    holds: bool,
}

/// Wakers collected under the lock, woken after it is released.
type ToWake = Vec<Waker>;

impl<R: Runtime> Shared<R> {
    /// Numbers a grant of `shard` that the scheduler just made.
    fn number(&mut self, shard: ShardId) -> Grant {
        self.grants += 1;
        let holds = self.scheduler.config().get_hold_timeout().is_some();
        if holds {
            self.latest_grant.insert(shard, self.grants);
        }
        Grant {
            shard,
            number: self.grants,
            // The scheduler's clock: the instant it granted at.
            at: self.scheduler.now(),
            holds,
        }
    }

    /// Releases the hold of grant `number` of `shard` if it is the shard's latest
    /// grant, settling the queue if that freed anything; whether it did.
    fn release(&mut self, shard: ShardId, number: u64, to_wake: &mut ToWake) -> bool {
        if self.latest_grant.get(shard) != Some(number) {
            return false;
        }
        self.latest_grant.remove(shard);
        let released = self.scheduler.release(shard, R::now());
        if released {
            self.settle(to_wake);
        }
        released
    }

    /// Hands out every grant the scheduler has at `now` and moves the timer to the
    /// next deadline.
    fn drive(&mut self, now: Instant, to_wake: &mut ToWake) {
        loop {
            match self.scheduler.poll(now) {
                Decision::Grant(shard) => {
                    let grant = self.number(shard);
                    let Some(id) = self.asked_by.remove(shard) else {
                        continue;
                    };
                    if let Some(waiter) = self.waiters.get_mut(&id) {
                        waiter.queued -= 1;
                        waiter.granted.push_back(grant);
                        if let Some(waker) = waiter.waker.take() {
                            self.stats.wakeups += 1;
                            to_wake.push(waker);
                        }
                    }
                }
                Decision::Wait(until) => {
                    self.deadline = Some(until);
                    break;
                }
                Decision::Idle => {
                    self.deadline = None;
                    break;
                }
            }
        }
        if let Some(deadline) = self.deadline {
            if self.timer_at != Some(deadline) {
                match &mut self.timer {
                    Some(timer) => R::reset(timer.as_mut(), deadline),
                    None => self.timer = Some(Box::pin(R::timer(deadline))),
                }
                self.stats.timer_resets += 1;
                self.timer_at = Some(deadline);
                // The task registered with the old deadline must poll again.
                self.timer_holder = None;
            }
        }
    }

    fn is_waiting(&self, id: WaiterId) -> bool {
        self.waiters.get(&id).is_some_and(Waiter::is_waiting)
    }

    /// Makes sure that some waiting task will poll the timer. `busy` is a waiter
    /// whose poll is returning a grant: its task will not poll the timer now (it may
    /// be busy with the grant for a while), so it gives the timer up.
    fn hand_over_timer(&mut self, busy: Option<WaiterId>, to_wake: &mut ToWake) {
        if let Some(id) = busy {
            if self.timer_holder == Some(id) {
                self.timer_holder = None;
            }
            if self.elected == Some(id) {
                self.elected = None;
            }
        }
        if self.deadline.is_none() || self.timer_holder.is_some() {
            return;
        }
        if self.elected.is_some_and(|id| self.is_waiting(id)) {
            return;
        }
        // The newest waiter: it will wait longest, so the timer seldom moves again.
        let next = self.waiters.pick_waiting(busy);
        self.elected = None;
        if let Some((id, waiter)) = next {
            self.elected = Some(id);
            // No waker: it was woken for a grant already and will poll anyway.
            if let Some(waker) = waiter.waker.take() {
                self.stats.wakeups += 1;
                to_wake.push(waker);
            }
        }
    }

    /// The poll of a waiting `Acquire` or `Grants`: hand out grants, and if it still
    /// waits, sleep on the timer unless another task does.
    fn poll_waiter(&mut self, id: WaiterId, cx: &mut Context<'_>, to_wake: &mut ToWake) {
        self.stats.polls += 1;
        if self
            .waiters
            .get(&id)
            .is_some_and(|waiter| !waiter.granted.is_empty())
        {
            // Woken for a grant: the poll that granted it drove everything else.
            self.hand_over_timer(Some(id), to_wake);
            return;
        }
        // Fired timers are re-armed each round; a timer that keeps firing before the
        // scheduler's deadline is not trusted past a few rounds.
        for _ in 0..4 {
            // The clock is read before the timer is polled: a timer that fires late
            // (or returns Pending past its deadline) never delays a grant.
            self.drive(R::now(), to_wake);
            let Some(waiter) = self.waiters.get_mut(&id) else {
                return;
            };
            if waiter.queued == 0 || !waiter.granted.is_empty() {
                break;
            }
            match &waiter.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                _ => waiter.waker = Some(cx.waker().clone()),
            }
            let may_hold = self.timer_holder.is_none_or(|holder| holder == id);
            let Some(timer) = self
                .timer
                .as_mut()
                .filter(|_| self.deadline.is_some() && may_hold)
            else {
                break;
            };
            match R::poll_timer(timer.as_mut(), cx) {
                Poll::Pending => {
                    self.timer_holder = Some(id);
                    if self.elected == Some(id) {
                        self.elected = None;
                    }
                    return;
                }
                Poll::Ready(()) => {
                    self.timer_at = None;
                    self.timer_holder = None;
                }
            }
        }
        let has_grant = self
            .waiters
            .get(&id)
            .is_some_and(|waiter| !waiter.granted.is_empty());
        if has_grant || !self.is_waiting(id) {
            self.hand_over_timer(Some(id), to_wake);
        } else if self.timer_holder.is_none() && self.deadline.is_some() {
            // Out of rounds: try again on the next turn of the executor.
            cx.waker().wake_by_ref();
        }
    }

    /// Removes waiter `id` and every mention of it (its slot may be reused).
    fn forget_waiter(&mut self, id: WaiterId) -> Option<Waiter> {
        if self.timer_holder == Some(id) {
            self.timer_holder = None;
        }
        if self.elected == Some(id) {
            self.elected = None;
        }
        self.waiters.remove(&id)
    }

    fn add_waiter(&mut self) -> WaiterId {
        self.waiters.insert()
    }

    /// Moves waiting `shard` from the waiter that asked for it to waiter `id`, which
    /// keeps its place in line; the old waiter is woken to find it gone.
    fn take_over(&mut self, shard: ShardId, id: WaiterId, to_wake: &mut ToWake) {
        if let Some(old) = self.asked_by.insert(shard, id) {
            if let Some(waiter) = self.waiters.get_mut(&old) {
                waiter.queued -= 1;
                if let Some(waker) = waiter.waker.take() {
                    self.stats.wakeups += 1;
                    to_wake.push(waker);
                }
            }
        }
        if let Some(waiter) = self.waiters.get_mut(&id) {
            waiter.queued += 1;
        }
        if self
            .timer_holder
            .is_some_and(|holder| !self.is_waiting(holder))
        {
            self.timer_holder = None;
        }
    }

    fn queue_for(&mut self, id: WaiterId, shard: ShardId) {
        self.asked_by.insert(shard, id);
        if let Some(waiter) = self.waiters.get_mut(&id) {
            waiter.queued += 1;
        }
    }

    /// Forgets waiter `id`: its queued `shards` are cancelled, and grants it did not
    /// take count as granted (their holds are released, as a dropped permit's are).
    fn remove_waiter(&mut self, id: WaiterId, shards: &[ShardId], to_wake: &mut ToWake) {
        let Some(waiter) = self.forget_waiter(id) else {
            return;
        };
        if waiter.queued > 0 {
            for shard in shards {
                if self.asked_by.get(*shard) == Some(id) {
                    self.asked_by.remove(*shard);
                    self.scheduler.cancel(*shard);
                }
            }
        }
        for grant in waiter.granted {
            self.release(grant.shard, grant.number, to_wake);
        }
        self.settle(to_wake);
    }

    /// After an input from outside a waiter's poll.
    fn settle(&mut self, to_wake: &mut ToWake) {
        self.drive(R::now(), to_wake);
        self.hand_over_timer(None, to_wake);
    }
}

impl<R: Runtime> Queue<R> {
    /// A queue over `scheduler`.
    ///
    /// Make the scheduler with the runtime's clock ([`Queue::now`]), or use
    /// [`Queue::with_limit`]: under a paused tokio clock, `std::time::Instant::now()`
    /// is ahead of the runtime's.
    pub fn new(scheduler: Scheduler) -> Self {
        Self {
            shared: Arc::new(Mutex::new(Shared {
                scheduler,
                asked_by: ShardIndex::default(),
                waiters: Waiters::default(),
                timer: None,
                timer_at: None,
                deadline: None,
                timer_holder: None,
                elected: None,
                grants: 0,
                latest_grant: ShardIndex::default(),
                stats: QueueStats::default(),
            })),
        }
    }

    /// A queue over a new scheduler for `limit` and `config`, on the runtime's clock.
    pub fn with_limit(limit: SessionStartLimit, config: Config) -> Result<Self, Error> {
        Ok(Self::new(Scheduler::with_config(limit, config, R::now())?))
    }

    /// The runtime's clock, as the queue reads it.
    pub fn now() -> Instant {
        R::now()
    }

    fn lock(&self) -> MutexGuard<'_, Shared<R>> {
        // Nothing panics while holding the lock; if something did, the state is
        // still consistent between calls, so carry on.
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `change` under the lock, then wakes the wakers it collected, after the
    /// lock is released (a waker may poll its future at once, on this thread).
    fn change<T>(&self, change: impl FnOnce(&mut Shared<R>, &mut ToWake) -> T) -> T {
        let mut to_wake = ToWake::new();
        let result = change(&mut self.lock(), &mut to_wake);
        for waker in to_wake {
            waker.wake();
        }
        result
    }

    /// Waits until `shard` may IDENTIFY. The request is made when the future is
    /// first polled; dropping the future while it waits cancels it.
    ///
    /// Resolves to [`Error::AlreadyQueued`] if the shard already waits in this queue.
    pub fn acquire(&self, shard: ShardId) -> Acquire<R> {
        Acquire {
            queue: self.clone(),
            shard,
            state: State::Start,
            take_over: false,
        }
    }

    /// Like [`acquire`](Self::acquire), but if `shard` already waits here, this
    /// request takes over its place in line and the older one resolves to
    /// [`Error::Superseded`]. For integrations (twilight) in which asking again means
    /// the earlier request was abandoned.
    pub fn acquire_replacing(&self, shard: ShardId) -> Acquire<R> {
        Acquire {
            queue: self.clone(),
            shard,
            state: State::Start,
            take_over: true,
        }
    }

    /// Releases the hold of `shard`'s latest grant (hold mode), for integrations in
    /// which the permit was [kept](Permit::keep) rather than held by the shard's
    /// code; whether it still held its bucket.
    pub fn release(&self, shard: ShardId) -> bool {
        self.change(|shared, to_wake| match shared.latest_grant.get(shard) {
            Some(number) => shared.release(shard, number, to_wake),
            None => false,
        })
    }

    /// Requests every shard of `shards`, in order, and yields a permit for each as it
    /// is granted (or an error for a shard that already waits). Dropping the stream
    /// cancels the shards still waiting.
    pub fn acquire_all(&self, shards: impl IntoIterator<Item = ShardId>) -> Grants<R> {
        Grants {
            queue: self.clone(),
            shards: shards.into_iter().collect(),
            errors: VecDeque::new(),
            state: State::Start,
        }
    }

    /// Applies a fresh `session_start_limit` now, waking whoever it makes eligible.
    pub fn update(&self, limit: SessionStartLimit) -> Result<(), Error> {
        self.change(|shared, to_wake| {
            shared.scheduler.update(limit, R::now())?;
            shared.settle(to_wake);
            Ok(())
        })
    }

    /// Shards waiting.
    pub fn len(&self) -> usize {
        self.lock().scheduler.len()
    }

    /// Whether no shard waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Session starts left now.
    pub fn remaining(&self) -> u32 {
        self.lock().scheduler.remaining(R::now())
    }

    /// The earliest instant `shard` can be granted if nothing changes (see
    /// [`Scheduler::eta`]); `None` if it is not waiting.
    pub fn eta(&self, shard: ShardId) -> Option<Instant> {
        self.lock().scheduler.eta(shard, R::now())
    }

    /// How hard the queue has worked so far.
    pub fn stats(&self) -> QueueStats {
        self.lock().stats
    }
}

impl<R: Runtime> Clone for Queue<R> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<R: Runtime> fmt::Debug for Queue<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shared = self.lock();
        f.debug_struct("Queue")
            .field("waiting", &shared.scheduler.len())
            .field("deadline", &shared.deadline)
            .field("stats", &shared.stats)
            .finish_non_exhaustive()
    }
}

enum State {
    Start,
    Waiting(WaiterId),
    Done,
}

/// The future of [`Queue::acquire`]: resolves with a [`Permit`] when the shard may
/// IDENTIFY.
#[must_use = "a request is made only when the future is polled"]
pub struct Acquire<R: Runtime> {
    queue: Queue<R>,
    shard: ShardId,
    state: State,
    /// Take over the place of a waiting request of the same shard.
    take_over: bool,
}

impl<R: Runtime> Future for Acquire<R> {
    type Output = Result<Permit<R>, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let (shard, queue) = (this.shard, &this.queue);
        queue.change(|shared, to_wake| {
            let id = match this.state {
                State::Done => return Poll::Pending,
                State::Waiting(id) => id,
                State::Start if this.take_over && shared.asked_by.contains_key(shard) => {
                    let id = shared.add_waiter();
                    shared.take_over(shard, id, to_wake);
                    this.state = State::Waiting(id);
                    id
                }
                State::Start => match shared.scheduler.request(shard, R::now()) {
                    Err(error) => {
                        this.state = State::Done;
                        return Poll::Ready(Err(error));
                    }
                    Ok(Decision::Grant(_)) => {
                        let grant = shared.number(shard);
                        // Taking a unit can move everyone else's deadline.
                        shared.settle(to_wake);
                        this.state = State::Done;
                        return Poll::Ready(Ok(Permit::new(queue.clone(), grant)));
                    }
                    Ok(_) => {
                        let id = shared.add_waiter();
                        shared.queue_for(id, shard);
                        this.state = State::Waiting(id);
                        id
                    }
                },
            };
            shared.poll_waiter(id, cx, to_wake);
            let waiter = shared.waiters.get_mut(&id);
            let superseded = waiter
                .as_ref()
                .is_some_and(|waiter| waiter.queued == 0 && waiter.granted.is_empty());
            let granted = waiter.and_then(|waiter| waiter.granted.pop_front());
            if superseded {
                shared.remove_waiter(id, &[], to_wake);
                this.state = State::Done;
                return Poll::Ready(Err(Error::Superseded(shard)));
            }
            match granted {
                Some(grant) => {
                    shared.forget_waiter(id);
                    shared.hand_over_timer(None, to_wake);
                    this.state = State::Done;
                    Poll::Ready(Ok(Permit::new(queue.clone(), grant)))
                }
                None => Poll::Pending,
            }
        })
    }
}

impl<R: Runtime> FusedFuture for Acquire<R> {
    fn is_terminated(&self) -> bool {
        matches!(self.state, State::Done)
    }
}

impl<R: Runtime> Drop for Acquire<R> {
    fn drop(&mut self) {
        if let State::Waiting(id) = self.state {
            let shard = self.shard;
            self.queue
                .change(|shared, to_wake| shared.remove_waiter(id, &[shard], to_wake));
        }
    }
}

impl<R: Runtime> fmt::Debug for Acquire<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire")
            .field("shard", &self.shard)
            .finish_non_exhaustive()
    }
}

/// The stream of [`Queue::acquire_all`]: a permit per shard, in grant order.
#[must_use = "requests are made only when the stream is polled"]
pub struct Grants<R: Runtime> {
    queue: Queue<R>,
    shards: Vec<ShardId>,
    errors: VecDeque<Error>,
    state: State,
}

impl<R: Runtime> Stream for Grants<R> {
    type Item = Result<Permit<R>, Error>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let queue = &this.queue;
        queue.change(|shared, to_wake| {
            let id = match this.state {
                State::Done => return Poll::Ready(None),
                State::Waiting(id) => id,
                State::Start => {
                    let id = shared.add_waiter();
                    shared.scheduler.reserve(this.shards.len());
                    shared.asked_by.reserve(this.shards.len());
                    let now = R::now();
                    for &shard in &this.shards {
                        match shared.scheduler.request(shard, now) {
                            Ok(Decision::Grant(_)) => {
                                let grant = shared.number(shard);
                                if let Some(waiter) = shared.waiters.get_mut(&id) {
                                    waiter.granted.push_back(grant);
                                }
                            }
                            Ok(_) => shared.queue_for(id, shard),
                            Err(error) => this.errors.push_back(error),
                        }
                    }
                    this.state = State::Waiting(id);
                    id
                }
            };
            if let Some(error) = this.errors.pop_front() {
                // Still drive, so that this poll's grants are not left waiting.
                shared.settle(to_wake);
                return Poll::Ready(Some(Err(error)));
            }
            shared.poll_waiter(id, cx, to_wake);
            let waiter = shared.waiters.get_mut(&id);
            match waiter.map(|waiter| (waiter.granted.pop_front(), waiter.queued)) {
                Some((Some(grant), _)) => Poll::Ready(Some(Ok(Permit::new(queue.clone(), grant)))),
                Some((None, 0)) | None => {
                    shared.remove_waiter(id, &[], to_wake);
                    this.state = State::Done;
                    Poll::Ready(None)
                }
                Some((None, _)) => Poll::Pending,
            }
        })
    }
}

impl<R: Runtime> FusedStream for Grants<R> {
    fn is_terminated(&self) -> bool {
        matches!(self.state, State::Done)
    }
}

impl<R: Runtime> Drop for Grants<R> {
    fn drop(&mut self) {
        if let State::Waiting(id) = self.state {
            let shards = &self.shards;
            self.queue
                .change(|shared, to_wake| shared.remove_waiter(id, shards, to_wake));
        }
    }
}

impl<R: Runtime> fmt::Debug for Grants<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grants")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

/// Leave to IDENTIFY. In hold mode the shard's bucket stays held until
/// [`release`](Permit::release) or drop (or the hold timeout): release it when the
/// shard gets READY, or fails. In timer mode dropping it changes nothing.
#[must_use = "in hold mode, dropping the permit frees the bucket at once"]
pub struct Permit<R: Runtime> {
    queue: Queue<R>,
    grant: Grant,
}

impl<R: Runtime> Permit<R> {
    fn new(queue: Queue<R>, grant: Grant) -> Self {
        Self { queue, grant }
    }

    /// The shard this permit is for.
    pub fn shard(&self) -> ShardId {
        self.grant.shard
    }

    /// The instant (on the runtime's clock) the queue granted it: the IDENTIFY may go
    /// from then on. The task holding the permit may run a little later.
    pub fn granted_at(&self) -> Instant {
        self.grant.at
    }

    /// The shard got READY (or failed): free its bucket (hold mode). Same as drop.
    pub fn release(self) {}

    /// Lets the permit go without freeing the bucket: the hold ends with
    /// [`Queue::release`] for this shard, or at the hold timeout. For integrations
    /// that learn of READY away from the code that acquired the permit.
    pub fn keep(mut self) {
        self.grant.holds = false;
    }
}

impl<R: Runtime> Drop for Permit<R> {
    fn drop(&mut self) {
        if self.grant.holds {
            let Grant { shard, number, .. } = self.grant;
            self.queue
                .change(|shared, to_wake| shared.release(shard, number, to_wake));
        }
    }
}

impl<R: Runtime> fmt::Debug for Permit<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("shard", &self.grant.shard)
            .finish()
    }
}
