//! The sans-IO scheduler: request / poll / cancel / release / update.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::Error;
use crate::bucket_index::BucketIndex;
use crate::bucket_table::BucketTable;
use crate::buckets::{Bucket, BucketId, Entry, Hold, Standing};
use crate::budget::{Budget, DAY, MAX_WORD_AGE};
use crate::limit::{Config, SessionStartLimit, ShardId};
use crate::priority::Priority;
use crate::shard_map::{Seq, ShardMap};
use crate::time::{Moment, wake_at};

/// When a hold ends: at an instant, or never (a hold without a timeout, ended only by
/// its release). The crate's one "instant or never", [`Moment`], under the name
/// [`Scheduler::hold_end`] answers with.
pub type HoldEnd = Moment;

/// What the scheduler tells its driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Decision {
    /// This shard may send IDENTIFY now.
    Grant(ShardId),
    /// Shards are queued; call `poll` again at (not before) this instant.
    Wait(Instant),
    /// Nothing is queued.
    Idle,
}

/// What a request did, for a driver that keeps the scheduler's last answer
/// ([`Scheduler::request_queueing`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Requested {
    /// The shard may identify now.
    Granted,
    /// Queued.
    Queued(Answer),
}

/// The scheduler's answer after a request that queued its shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// What [`Scheduler::poll`] would answer now (a `Wait` or, only with cancelled or
    /// spent entries around, `Idle`).
    New(Decision),
    /// The last answer stands: nothing came due since, and the shard queued behind
    /// another. A last answer of `Wait` a year away (nothing eligible ever, by itself)
    /// would now be a little later: waking at the old one only polls once in vain.
    Stands,
}

/// What booking a grant touches besides its bucket: borrowed apart from the bucket
/// table, so that the grant path books into the bucket it already holds.
struct Booking<'a> {
    budget: &'a mut Budget,
    recent_grants: &'a mut VecDeque<(Moment, ShardId)>,
    config: &'a Config,
}

impl Booking<'_> {
    /// Books a grant of `shard` in `bucket` at `clock`: a unit spent, the grant
    /// logged for a re-key, the bucket cooling down (and held, in hold mode).
    #[inline(always)]
    fn book(self, bucket: &mut Bucket, shard: ShardId, clock: Instant) {
        self.budget.spend(clock);
        let cooldown = Moment::after(clock, self.config.interval);
        self.recent_grants.push_back((cooldown, shard));
        bucket.extend_cooldown(cooldown);
        if let Some(timeout) = self.config.hold_timeout {
            bucket.hold(shard, Moment::after(clock, timeout), clock);
        }
    }
}

/// Decides when each shard may IDENTIFY: one grant per `interval` per bucket
/// (`shard % max_concurrency`), never more grants than the daily budget, FIFO within a
/// bucket and the oldest first across buckets, reconnecting shards before starting
/// ones ([`Priority`]).
///
/// It does no I/O and reads no clock: every time-dependent call takes `now`, and the
/// same calls with the same instants give the same decisions.
///
/// # Driving it
///
/// After any input (`request`, `cancel`, `release`, `occupy`, `update`), call [`poll`] until it
/// returns [`Decision::Wait`] or [`Decision::Idle`], letting each granted shard
/// IDENTIFY; then sleep until the `Wait` instant (or the next input) and poll again.
/// `request` itself may grant at once, which saves a round trip for an idle bucket.
///
/// ```
/// use std::time::{Duration, Instant};
/// use identify_queue::{Decision, Scheduler, SessionStartLimit};
///
/// let limit = SessionStartLimit {
///     total: 1000,
///     remaining: 1000,
///     reset_after: Duration::from_secs(3600),
///     max_concurrency: 2,
/// };
/// let start = Instant::now();
/// let mut scheduler = Scheduler::new(limit, start)?;
/// for shard in 0..4 {
///     let _ = scheduler.request(shard, start)?; // shards 0 and 1 are granted here
/// }
/// // Shards 2 and 3 share buckets with 0 and 1: they may go 5 s later.
/// assert_eq!(scheduler.poll(start), Decision::Wait(start + Duration::from_secs(5)));
/// let later = start + Duration::from_secs(5);
/// assert_eq!(scheduler.poll(later), Decision::Grant(2));
/// assert_eq!(scheduler.poll(later), Decision::Grant(3));
/// assert_eq!(scheduler.poll(later), Decision::Idle);
/// # Ok::<(), identify_queue::Error>(())
/// ```
///
/// [`poll`]: Scheduler::poll
#[derive(Clone, Debug)]
pub struct Scheduler {
    config: Config,
    max_concurrency: u32,
    /// The latest instant seen: earlier ones are read as this one.
    clock: Instant,
    budget: Budget,
    queued: ShardMap,
    next_seq: Seq,
    /// Buckets that have anything queued, cooling down or held (and idle ones, until
    /// a sweep or forever in the small dense table).
    buckets: BucketTable,
    /// Where each bucket of `buckets` stands: the ready ones in order, the waiting
    /// ones by the instant they free.
    index: BucketIndex,
    /// Grants within the last interval, oldest first, with the end of their
    /// cooldown: an update that changes `max_concurrency` needs them to know which
    /// new bucket each one cools down.
    recent_grants: VecDeque<(Moment, ShardId)>,
}

// # Construction
impl Scheduler {
    /// A scheduler in timer mode with Discord's 5 s interval.
    pub fn new(limit: SessionStartLimit, now: Instant) -> Result<Self, Error> {
        Self::with_config(limit, Config::default(), now)
    }

    /// A scheduler with `config` (interval, hold mode).
    pub fn with_config(
        limit: SessionStartLimit,
        config: Config,
        now: Instant,
    ) -> Result<Self, Error> {
        limit.validate()?;
        config.validate()?;
        Ok(Self {
            max_concurrency: limit.max_concurrency,
            budget: Budget::new(&limit, config.grace, now),
            config,
            clock: now,
            queued: ShardMap::default(),
            next_seq: 0,
            buckets: BucketTable::new(limit.max_concurrency),
            index: BucketIndex::new(),
            recent_grants: VecDeque::new(),
        })
    }
}

// # Inputs
//
// A time-dependent one takes `now`, the caller's clock (the scheduler reads none). One
// that errs changes nothing. After any of them, `poll`.
impl Scheduler {
    /// Queue `shard`; `Grant(shard)` if it may identify right now, else `Wait(t)`.
    /// The same as [`request_with`](Self::request_with) and [`Priority::Start`].
    ///
    /// It is granted at once exactly when its bucket is free with nothing queued, and
    /// the budget left covers it and every eligible shard queued before it. Otherwise
    /// it is queued and `Wait(t)` says when to [`poll`](Self::poll) (`t` is `now` when
    /// other shards are eligible already).
    ///
    /// Errors with [`Error::AlreadyQueued`] if `shard` is queued already.
    #[must_use = "a Grant means the shard may identify now; a Wait says when to poll"]
    pub fn request(&mut self, shard: ShardId, now: Instant) -> Result<Decision, Error> {
        self.request_with(shard, Priority::Start, now)
    }

    /// Queue `shard` with `priority`; `Grant(shard)` if it may identify right now,
    /// else `Wait(t)`.
    ///
    /// A [`Priority::Reconnect`] goes before every `Start` of its bucket, and before
    /// them for the budget; within a priority, first come first served. It is granted
    /// at once exactly when nothing of its priority or higher is queued in its bucket,
    /// the bucket is free, and the budget left covers it and every eligible shard
    /// ahead of it.
    ///
    /// Errors with [`Error::AlreadyQueued`] if `shard` is queued already.
    #[must_use = "a Grant means the shard may identify now; a Wait says when to poll"]
    pub fn request_with(
        &mut self,
        shard: ShardId,
        priority: Priority,
        now: Instant,
    ) -> Result<Decision, Error> {
        Ok(match self.request_queueing(shard, priority, now)? {
            Requested::Granted => Decision::Grant(shard),
            Requested::Queued(_) => self.wait_decision(),
        })
    }

    /// Remove a queued shard; true if it was queued. Never consumes budget, and the
    /// shards behind it move up at once.
    pub fn cancel(&mut self, shard: ShardId) -> bool {
        let Some(seq) = self.queued.remove(shard) else {
            return false;
        };
        let id = self.bucket_of(shard);
        if let Some(bucket) = self.buckets.get_mut(id) {
            let was_head = bucket.head().is_some_and(|head| head.seq == seq);
            bucket.cancelled(seq, &self.queued);
            if was_head {
                self.reindex(id);
            }
        }
        true
    }

    /// Hold mode: the granted shard got READY (or failed); its bucket may free.
    /// Timer mode: no effect. Returns whether `shard` was holding a bucket (a hold
    /// that timed out is not held any more); when it returns false nothing changed.
    pub fn release(&mut self, shard: ShardId, now: Instant) -> bool {
        if self.config.hold_timeout.is_none() {
            return false;
        }
        let at = self.clock.max(now);
        let id = self.bucket_of(shard);
        let holds = self
            .buckets
            .get(id)
            .is_some_and(|bucket| bucket.live_hold(shard, at).is_some());
        if !holds {
            return false;
        }
        self.advance(now);
        let clock = self.clock;
        if let Some(bucket) = self.buckets.get_mut(id) {
            bucket.release(shard, clock);
        }
        self.reindex(id);
        true
    }

    /// Keeps `shard`'s bucket busy until `until` (`None`: until a later call ends it),
    /// replacing any earlier occupation by `shard`; an `until` at or before `now` ends
    /// it. This adds to the rules, never subtracts: the bucket is free only once its
    /// cooldown, its holds and every occupation of it have ended.
    ///
    /// It is for what the scheduler cannot see: a grant that is not yet delivered to
    /// its shard (the async queue keeps its bucket busy until the permit is taken, then
    /// for an interval from then), or an IDENTIFY made by another process. Like a hold,
    /// an occupation belongs to the shard and follows it to its new bucket when an
    /// update changes `max_concurrency`.
    pub fn occupy(&mut self, shard: ShardId, until: Option<Instant>, now: Instant) {
        self.advance(now);
        let clock = self.clock;
        let until = until.map_or(Moment::Never, Moment::At);
        let id = self.bucket_of(shard);
        let known = self
            .buckets
            .get(id)
            .is_some_and(|bucket| bucket.occupants().iter().any(|busy| busy.shard == shard));
        if !known && until.has_passed(clock) {
            // Nothing to end: leave the bucket table as it is.
            return;
        }
        self.bucket_mut(id).occupy(shard, until, clock);
        self.reindex(id);
    }

    /// Fresh `session_start_limit` (e.g. after re-reading /gateway/bot).
    ///
    /// The budget becomes `limit.remaining` less the grants Discord may not have
    /// counted yet (delivered within [`grace`](Config::grace) before `now`, or not
    /// delivered at all), resetting at `now + reset_after` (at once if that is zero); a
    /// word that counts nothing (`remaining == total`) says Discord's window is not
    /// open, and the next grant opens it ([rules 3.11](crate::rules)). A new
    /// `max_concurrency` re-keys the queued shards, keeping their order, and the
    /// buckets: a new bucket is free only once every grant of the last interval whose
    /// shard maps to it has aged the interval (and, in hold mode, every hold on it has
    /// ended).
    pub fn update(&mut self, limit: SessionStartLimit, now: Instant) -> Result<(), Error> {
        self.update_with_age(limit, Duration::ZERO, now)
    }

    /// [`update`](Self::update) with a word read `age` before `now` (a limit read at
    /// start-up and applied after a retry loop, say): its `reset_after` counts from the
    /// read, and the grants delivered within [`grace`](Config::grace) before the read
    /// are subtracted from its `remaining` ([rules 3.11](crate::rules)). With `update`,
    /// the age is taken as zero and the grace must cover it.
    ///
    /// Errors, changing nothing: a bad limit, or an `age` above [`MAX_WORD_AGE`].
    pub fn update_with_age(
        &mut self,
        limit: SessionStartLimit,
        age: Duration,
        now: Instant,
    ) -> Result<(), Error> {
        limit.validate()?;
        if age > MAX_WORD_AGE {
            return Err(Error::WordTooOld(age));
        }
        self.advance(now);
        let read = self.clock.checked_sub(age);
        self.budget.apply_word(&limit, read, self.clock);
        if limit.max_concurrency != self.max_concurrency {
            self.rekey(limit.max_concurrency);
        }
        Ok(())
    }

    /// Makes room for `additional` more queued shards, so that queueing a big bot's
    /// shards at once does not grow the index step by step.
    pub fn reserve(&mut self, additional: usize) {
        self.queued.reserve(additional);
    }
}

// # Decisions
impl Scheduler {
    /// The next shard allowed to identify now, or when to ask again, or `Idle`.
    ///
    /// Eligible shards come out oldest request first. After anything but `Grant`, no
    /// queued shard is eligible at `now`, and `Wait(t)` names the earliest instant at
    /// which one becomes eligible (at least a year ahead when none ever can).
    #[must_use = "a Grant means the shard may identify now; a Wait says when to poll"]
    pub fn poll(&mut self, now: Instant) -> Decision {
        self.advance(now);
        if self.budget.remaining() > 0 {
            while let Some((order, id)) = self.index.pop_ready() {
                let Some(bucket) = self.buckets.get_mut(id) else {
                    continue;
                };
                if bucket.standing != Standing::Ready(order) {
                    continue;
                }
                let Some(entry) = bucket.pop_head(&self.queued) else {
                    continue;
                };
                self.queued.remove(entry.shard);
                // `record_grant` and `reindex`, with the bucket in hand.
                let clock = self.clock;
                Booking {
                    budget: &mut self.budget,
                    recent_grants: &mut self.recent_grants,
                    config: &self.config,
                }
                .book(bucket, entry.shard, clock);
                let standing = bucket.standing_at(clock);
                let old = std::mem::replace(&mut bucket.standing, standing);
                self.index.refile(id, old, standing, &self.buckets);
                return Decision::Grant(entry.shard);
            }
        }
        self.wait_decision()
    }
}

// # The adapters' delivery protocol
//
// A runtime queue grants in its driver but delivers at the poll of the waiting
// future, and Discord counts arrivals: these calls let the scheduler count a grant's
// spacing from its delivery (rules 5), and the queue's hot path skip
// what a request behind another shard of its bucket cannot change.
impl Scheduler {
    /// From now on, a grant counts as delivered (its IDENTIFY on its way to Discord)
    /// only when [`delivered`](Self::delivered) says so, and a word or a reset
    /// subtracts the grants not delivered yet ([rules 3.11](crate::rules)). For
    /// adapters that hand grants over later than they are made; without it, a grant is
    /// delivered at its own instant.
    pub fn defer_deliveries(&mut self) {
        self.budget.defer_deliveries();
    }

    /// With [`defer_deliveries`](Self::defer_deliveries): a grant reached its shard at
    /// `now` (which grant does not matter to the budget). Returns whether a grant was
    /// undelivered; when it returns false nothing changed.
    #[inline]
    pub fn delivered(&mut self, now: Instant) -> bool {
        if self.budget.undelivered() == 0 {
            return false;
        }
        self.advance(now);
        self.budget.delivered(self.clock)
    }

    /// With [`defer_deliveries`](Self::defer_deliveries): a grant will never reach its
    /// shard (its future was dropped). Its unit stays spent; while Discord's window is
    /// surely not open, a unit held back for it comes back. Returns whether a grant
    /// was undelivered; when it returns false nothing changed.
    pub fn abandoned(&mut self, now: Instant) -> bool {
        if self.budget.undelivered() == 0 {
            return false;
        }
        self.advance(now);
        self.budget.abandoned()
    }

    /// Grants made and not yet [`delivered`](Self::delivered) or
    /// [`abandoned`](Self::abandoned) (always 0 without
    /// [`defer_deliveries`](Self::defer_deliveries)).
    pub fn undelivered(&self) -> u32 {
        self.budget.undelivered()
    }

    /// Hold mode: when `shard`'s hold of its bucket ends if it is not released
    /// ([`HoldEnd::Never`] without a timeout); `None` if it holds nothing at `now`.
    pub fn hold_end(&self, shard: ShardId, now: Instant) -> Option<HoldEnd> {
        let at = self.clock.max(now);
        let bucket = self.buckets.get(self.bucket_of(shard))?;
        let index = bucket.live_hold(shard, at)?;
        Some(bucket.holders()[index].until)
    }

    /// [`request_with`](Self::request_with) for a driver that keeps the scheduler's
    /// last answer: a shard queued behind another of its bucket, with nothing come due
    /// since that answer, leaves it standing ([`Requested::Queued`]`(`[`Answer::Stands`]`)`),
    /// and the work of answering again is saved. In a start-up that is nearly every
    /// request.
    pub(crate) fn request_queueing(
        &mut self,
        shard: ShardId,
        priority: Priority,
        now: Instant,
    ) -> Result<Requested, Error> {
        // A lookup before any change: even an insert undone would rehash the map.
        if self.queued.contains_key(shard) {
            return Err(Error::AlreadyQueued(shard));
        }
        if self.next_seq == Seq::MAX {
            self.renumber();
            if self.next_seq == Seq::MAX {
                return Err(Error::QueueFull);
            }
        }
        let came_due = self.advance(now);
        let rank = usize::from(priority.rank());
        let id = self.bucket_of(shard);
        let clock = self.clock;
        // Eligible shards ahead of this one: the ready heads of its class and above.
        let ahead = self.index.ready_through(rank);
        let budget_covers = self.budget.remaining() as usize > ahead;
        let bucket = self.buckets.get_or_insert(id, clock);
        let goes_first = bucket.is_clear_for(rank);
        // The cheap tests first: in a start-up the bucket has a line.
        if goes_first && budget_covers && bucket.free_at().is_none_or(|free| free.has_passed(clock))
        {
            let behind = !bucket.is_empty();
            self.record_grant(id, shard);
            if behind {
                // Lower-priority shards were ready here: the grant made them wait.
                self.reindex(id);
            }
            return Ok(Requested::Granted);
        }
        let seq = self.next_seq;
        bucket.push(rank, Entry { seq, shard });
        self.next_seq += 1;
        self.queued.insert(shard, seq);
        if goes_first {
            self.reindex(id);
        }
        // Behind another shard, it changed no bucket's standing (nor the budget): the
        // answer is what it was, unless the clock brought something due.
        Ok(Requested::Queued(if goes_first || came_due {
            Answer::New(self.wait_decision())
        } else {
            Answer::Stands
        }))
    }

    /// A request that queues `shard` behind another shard of its bucket, made at the
    /// scheduler's own clock: such a request is not granted, and where it goes does not
    /// depend on its instant, so the caller need not read a clock. `None`, changing
    /// nothing, when `shard` would not go behind another (make the request at its
    /// instant then); else what [`request_queueing`](Self::request_queueing) at the
    /// clock answers: [`Answer::Stands`], or an error.
    // Used by the async adapters only.
    #[cfg_attr(
        not(any(feature = "tokio", feature = "smol", feature = "async-std")),
        allow(dead_code)
    )]
    #[inline(always)]
    pub(crate) fn request_behind(
        &mut self,
        shard: ShardId,
        priority: Priority,
    ) -> Option<Result<Requested, Error>> {
        let rank = usize::from(priority.rank());
        let id = self.bucket_of(shard);
        if self
            .buckets
            .get(id)
            .is_none_or(|bucket| bucket.is_clear_for(rank))
        {
            return None;
        }
        if self.queued.contains_key(shard) || self.next_seq == Seq::MAX {
            // An error, or numbers to renumber first: the general path.
            return Some(self.request_queueing(shard, priority, self.clock));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(bucket) = self.buckets.get_mut(id) {
            bucket.push(rank, Entry { seq, shard });
        }
        self.queued.insert(shard, seq);
        Some(Ok(Requested::Queued(Answer::Stands)))
    }
}

// # Getters
impl Scheduler {
    /// Number of queued (not yet granted) shards.
    pub fn len(&self) -> usize {
        self.queued.len()
    }

    /// Whether no shard is queued.
    pub fn is_empty(&self) -> bool {
        self.queued.is_empty()
    }

    /// Whether `shard` is queued.
    pub fn is_queued(&self, shard: ShardId) -> bool {
        self.queued.contains_key(shard)
    }

    /// The earliest instant at which a queued `shard` can be granted if nothing else
    /// changes: when its bucket is free, plus one interval per shard ahead of it in
    /// the bucket, and not before the budget resets if it is spent. A lower bound for
    /// progress reports: a hold that is not released early, or a budget that runs out
    /// on the way, makes the grant later. `None` if `shard` is not queued.
    ///
    /// Costs O(log n), or O(shards ahead in its bucket) while cancelled shards wait
    /// there to be cleaned up.
    pub fn eta(&self, shard: ShardId, now: Instant) -> Option<Instant> {
        let seq = self.queued.get(shard)?;
        let at = self.clock.max(now);
        let bucket = self.buckets.get(self.bucket_of(shard))?;
        let free = bucket
            .free_at()
            .map_or(Moment::At(at), |free| free.max(Moment::At(at)));
        let ahead = u32::try_from(bucket.ahead_of(seq, &self.queued)).unwrap_or(u32::MAX);
        let mut eta = match (free, self.config.interval.checked_mul(ahead)) {
            (Moment::At(free), Some(spacing)) => Moment::after(free, spacing),
            _ => Moment::Never,
        };
        if let Some(unit) = self.budget.unit_available_at(at) {
            eta = eta.max(unit);
        }
        Some(wake_at(eta, at))
    }

    /// When `bucket` is next free to grant, as of `now`: `now` itself if it is free,
    /// the end of its cooldown or of the holds on it otherwise, whether or not shards
    /// wait there (the budget aside). `None` when no such bucket exists under the
    /// current `max_concurrency`, or while a hold without an end occupies it (only its
    /// release frees it). For status pages: O(holds on the bucket).
    pub fn bucket_free_at(&self, bucket: u32, now: Instant) -> Option<Instant> {
        if bucket >= self.max_concurrency {
            return None;
        }
        let at = self.clock.max(now);
        match self.buckets.get(bucket).and_then(|b| b.free_at()) {
            None => Some(at),
            Some(Moment::At(free)) => Some(free.max(at)),
            Some(Moment::Never) => None,
        }
    }

    /// The bucket `shard` is in under the current `max_concurrency`.
    pub fn bucket_of(&self, shard: ShardId) -> u32 {
        crate::buckets::bucket_of(shard, self.max_concurrency)
    }

    /// The `max_concurrency` in force.
    pub fn max_concurrency(&self) -> u32 {
        self.max_concurrency
    }

    /// Session starts per window, from the last `new`/`update`.
    pub fn total(&self) -> u32 {
        self.budget.total()
    }

    /// Session starts left at `now` (a reset due by then counted in), without changing
    /// anything.
    #[inline]
    pub fn remaining(&self, now: Instant) -> u32 {
        self.budget.remaining_at(self.clock.max(now))
    }

    /// When the budget goes back to `total`, as of the latest instant seen: `None`
    /// when it never does, or when it has just been refilled and the next 24 h window
    /// opens with the next grant.
    pub fn resets_at(&self) -> Option<Instant> {
        match self.budget.resets_at(self.clock) {
            Some(Moment::At(at)) => Some(at),
            _ => None,
        }
    }

    /// The limit in force at `now`, as Discord would report it: `remaining` with any
    /// reset due by then counted in, and `reset_after` the time left until the next
    /// reset (24 h when the budget is full and the next window opens with the next
    /// grant; `Duration::MAX` when it never resets).
    pub fn limit(&self, now: Instant) -> SessionStartLimit {
        let at = self.clock.max(now);
        let reset_after = match self.budget.resets_at(at) {
            Some(Moment::At(reset)) => reset.saturating_duration_since(at),
            Some(Moment::Never) => Duration::MAX,
            None => DAY,
        };
        SessionStartLimit {
            total: self.budget.total(),
            remaining: self.budget.remaining_at(at),
            reset_after,
            max_concurrency: self.max_concurrency,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The latest instant seen.
    pub fn now(&self) -> Instant {
        self.clock
    }
}

// # Internals: the clock, the bucket index and the ready queues
impl Scheduler {
    /// Moves the clock to `now` (never back) and applies what comes due by then: the
    /// budget reset and the buckets that free up. Whether anything came due (a bucket
    /// became ready, the budget changed): if not, the answer of [`wait_decision`]
    /// stands as it was, but for one a year away, which moves with the clock.
    ///
    /// [`wait_decision`]: Self::wait_decision
    #[inline]
    fn advance(&mut self, now: Instant) -> bool {
        // Every input leaves nothing due at the clock (a bucket that frees at once is
        // filed as ready, a reset at once is applied), so only a later instant can
        // bring anything due. Most calls find the clock there already: that test is
        // inlined, the rest is not.
        now > self.clock && self.advance_to(now)
    }

    /// [`advance`](Self::advance) to an instant after the clock.
    #[inline(never)]
    fn advance_to(&mut self, now: Instant) -> bool {
        self.clock = now;
        let clock = now;
        let mut came_due = self.budget.refresh(clock);
        came_due |= self.index.promote_due(clock, &mut self.buckets);
        while let Some(&(cooldown, _)) = self.recent_grants.front() {
            if !cooldown.has_passed(clock) {
                break;
            }
            self.recent_grants.pop_front();
        }
        came_due
    }

    /// Books a grant of `shard` in bucket `id` at the clock.
    fn record_grant(&mut self, id: BucketId, shard: ShardId) {
        let clock = self.clock;
        let bucket = self.buckets.get_or_insert(id, clock);
        Booking {
            budget: &mut self.budget,
            recent_grants: &mut self.recent_grants,
            config: &self.config,
        }
        .book(bucket, shard, clock);
    }

    /// The decision when nothing is granted now.
    fn wait_decision(&mut self) -> Decision {
        if self.queued.is_empty() {
            return Decision::Idle;
        }
        let bucket_free = if self.index.any_ready() {
            Moment::At(self.clock)
        } else {
            self.index.earliest_waiting(&self.buckets)
        };
        let eligible = match self.budget.unit_available_at(self.clock) {
            Some(unit) => bucket_free.max(unit),
            None => bucket_free,
        };
        Decision::Wait(wake_at(eligible, self.clock))
    }

    /// Files bucket `id` under where it stands now, after its head or its free time
    /// changed.
    fn reindex(&mut self, id: BucketId) {
        let clock = self.clock;
        let Some(bucket) = self.buckets.get_mut(id) else {
            return;
        };
        let standing = bucket.standing_at(clock);
        let old = std::mem::replace(&mut bucket.standing, standing);
        self.index.refile(id, old, standing, &self.buckets);
    }

    /// Bucket `id`, made if absent.
    fn bucket_mut(&mut self, id: BucketId) -> &mut Bucket {
        self.buckets.get_or_insert(id, self.clock)
    }

    /// Re-files every queued shard, grant, hold and occupation under `max_concurrency`.
    fn rekey(&mut self, max_concurrency: u32) {
        let clock = self.clock;
        let mut entries = Vec::with_capacity(self.queued.len());
        let mut holds = Vec::new();
        let mut occupants = Vec::new();
        let queued = &self.queued;
        self.buckets.for_each_mut(|_, bucket| {
            bucket.drain_live(queued, &mut entries);
            let live = |hold: &&Hold| !hold.until.has_passed(clock);
            holds.extend(bucket.holders().iter().filter(live).copied());
            occupants.extend(bucket.occupants().iter().filter(live).copied());
        });
        // Each old bucket was in order; merged, the order is (class, sequence number).
        entries.sort_unstable_by_key(|&(rank, entry)| (rank, entry.seq));
        self.buckets = BucketTable::new(max_concurrency);
        self.index.clear();
        self.max_concurrency = max_concurrency;
        for index in 0..self.recent_grants.len() {
            let (cooldown, shard) = self.recent_grants[index];
            let id = self.bucket_of(shard);
            self.bucket_mut(id).extend_cooldown(cooldown);
        }
        for hold in holds {
            let id = self.bucket_of(hold.shard);
            self.bucket_mut(id).hold(hold.shard, hold.until, clock);
        }
        for busy in occupants {
            let id = self.bucket_of(busy.shard);
            self.bucket_mut(id).occupy(busy.shard, busy.until, clock);
        }
        for (rank, entry) in entries {
            let id = self.bucket_of(entry.shard);
            self.bucket_mut(id).push(rank, entry);
        }
        let mut ids = Vec::new();
        self.buckets.for_each_mut(|id, _| ids.push(id));
        for id in ids {
            self.reindex(id);
        }
    }

    /// Gives the queued shards the sequence numbers 0, 1, … in their order, so that
    /// numbering can go on. Runs once per 2^32 requests.
    fn renumber(&mut self) {
        let queued = &self.queued;
        self.buckets
            .for_each_mut(|_, bucket| bucket.purge_dead(queued));
        let mut order: Vec<(Seq, ShardId)> = self
            .queued
            .iter()
            .map(|(shard, seq)| (seq, shard))
            .collect();
        order.sort_unstable();
        for (new_seq, &(_, shard)) in order.iter().enumerate() {
            self.queued
                .insert(shard, Seq::try_from(new_seq).unwrap_or(Seq::MAX));
        }
        self.next_seq = Seq::try_from(order.len()).unwrap_or(Seq::MAX);
        let (queued, buckets) = (&self.queued, &mut self.buckets);
        self.index.relist_ready(|list| {
            buckets.for_each_mut(|id, bucket| {
                bucket.relabel(queued);
                if let (Standing::Ready(_), Some(head)) = (bucket.standing, bucket.head_order()) {
                    bucket.standing = Standing::Ready(head);
                    list(head, id);
                }
            });
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(max_concurrency: u32) -> SessionStartLimit {
        SessionStartLimit {
            total: 1000,
            remaining: 1000,
            reset_after: Duration::from_secs(3600),
            max_concurrency,
        }
    }

    #[test]
    fn renumbering_keeps_order_across_buckets() {
        let start = Instant::now();
        let mut scheduler = Scheduler::new(limit(2), start).unwrap();
        // Shards 0 and 1 take both buckets; then numbers run out mid-queue.
        assert_eq!(scheduler.request(0, start), Ok(Decision::Grant(0)));
        assert_eq!(scheduler.request(1, start), Ok(Decision::Grant(1)));
        scheduler.next_seq = Seq::MAX - 4;
        for shard in [5, 2, 7, 4] {
            assert!(matches!(
                scheduler.request(shard, start),
                Ok(Decision::Wait(_))
            ));
        }
        assert!(scheduler.cancel(7));
        assert_eq!(scheduler.next_seq, Seq::MAX);
        assert!(matches!(scheduler.request(9, start), Ok(Decision::Wait(_))));
        // 5, 2, 4 renumbered to 0, 1, 2, then 9 took 3.
        assert_eq!(scheduler.next_seq, 4);
        let later = start + Duration::from_secs(5);
        assert_eq!(scheduler.poll(later), Decision::Grant(5));
        assert_eq!(scheduler.poll(later), Decision::Grant(2));
        let later = later + Duration::from_secs(5);
        assert_eq!(scheduler.poll(later), Decision::Grant(4));
        assert_eq!(scheduler.poll(later), Decision::Grant(9));
        assert_eq!(scheduler.poll(later), Decision::Idle);
    }

    #[test]
    fn idle_buckets_are_forgotten() {
        let start = Instant::now();
        let limit = SessionStartLimit {
            total: 100_000,
            remaining: 100_000,
            ..limit(u32::MAX)
        };
        let config = Config::default().interval(Duration::from_nanos(1));
        let mut scheduler = Scheduler::with_config(limit, config, start).unwrap();
        // 10,000 buckets busy at once...
        for shard in 0..10_000 {
            assert_eq!(scheduler.request(shard, start), Ok(Decision::Grant(shard)));
        }
        assert_eq!(scheduler.buckets.len(), 10_000);
        // ...then 40,000 more, one at a time: never more than twice the peak in use.
        let mut peak = 0;
        for (step, shard) in (10_000..50_000).enumerate() {
            let now = start + Duration::from_nanos(10 * (step as u64 + 1));
            assert_eq!(scheduler.request(shard, now), Ok(Decision::Grant(shard)));
            peak = peak.max(scheduler.buckets.len());
        }
        assert!(peak <= 20_000, "{peak} buckets kept");
        assert!(scheduler.buckets.len() < 20_000);
    }

    /// Drives like the async queue does: polls until the answer is a wait, which it
    /// returns.
    fn drain(scheduler: &mut Scheduler, now: Instant) -> Decision {
        loop {
            match scheduler.poll(now) {
                Decision::Grant(_) => continue,
                answer => return answer,
            }
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Request {
            shard: ShardId,
            reconnect: bool,
            after_ms: u64,
        },
        Cancel(ShardId),
        Release(ShardId),
        Drive {
            after_ms: u64,
        },
        Word {
            remaining: u32,
            max_concurrency: u32,
        },
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0u32..12, any::<bool>(), prop_oneof![Just(0u64), 0u64..12_000])
                .prop_map(|(shard, reconnect, after_ms)| Op::Request { shard, reconnect, after_ms }),
            1 => (0u32..12).prop_map(Op::Cancel),
            1 => (0u32..12).prop_map(Op::Release),
            2 => (0u64..12_000).prop_map(|after_ms| Op::Drive { after_ms }),
            1 => (0u32..4, 1u32..4).prop_map(|(remaining, max_concurrency)| Op::Word { remaining, max_concurrency }),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 1000, ..Default::default() })]

        /// `request_queueing` answers what `request_with` answers, and when it says
        /// the last answer holds, polling now answers just that (or, for a wait a
        /// year away, a later one): nothing is granted that the driver would miss.
        #[test]
        fn a_request_behind_keeps_the_last_answer(
            ops in proptest::collection::vec(op(), 1..100),
            max_concurrency in 1u32..4,
            remaining in 0u32..8,
            hold in proptest::prelude::any::<bool>(),
        ) {
            let start = Instant::now();
            let config = if hold {
                Config::default().hold_until_release(Duration::from_secs(20))
            } else {
                Config::default()
            };
            let first = SessionStartLimit { total: 8, remaining, ..limit(max_concurrency) };
            let mut scheduler = Scheduler::with_config(first, config, start).unwrap();
            let mut now = start;
            let mut last = drain(&mut scheduler, now);
            for op in ops {
                match op {
                    Op::Request { shard, reconnect, after_ms } => {
                        now += Duration::from_millis(after_ms);
                        let priority = if reconnect { Priority::Reconnect } else { Priority::Start };
                        // Behind another shard, a request at the scheduler's own clock
                        // (the async queue's saving) answers what `request_queueing`
                        // at the clock answers, and that always leaves the answer
                        // standing; otherwise it changes nothing.
                        let mut at_clock = scheduler.clone();
                        let clock = at_clock.now();
                        let mut twin = scheduler.clone();
                        match at_clock.request_behind(shard, priority) {
                            Some(answer) => {
                                proptest::prop_assert!(
                                    matches!(answer, Ok(Requested::Queued(Answer::Stands)) | Err(_)),
                                    "{answer:?}"
                                );
                                proptest::prop_assert_eq!(
                                    answer,
                                    twin.request_queueing(shard, priority, clock)
                                );
                                proptest::prop_assert_eq!(at_clock.len(), twin.len());
                                proptest::prop_assert_eq!(at_clock.eta(shard, clock), twin.eta(shard, clock));
                            }
                            None => proptest::prop_assert_eq!(format!("{at_clock:?}"), format!("{scheduler:?}")),
                        }
                        let mut twin = scheduler.clone();
                        let expected = twin.request_with(shard, priority, now);
                        let got = scheduler.request_queueing(shard, priority, now);
                        match got {
                            Ok(Requested::Granted) => {
                                proptest::prop_assert_eq!(expected, Ok(Decision::Grant(shard)));
                            }
                            Ok(Requested::Queued(Answer::New(answer))) => {
                                proptest::prop_assert_eq!(expected, Ok(answer));
                            }
                            Ok(Requested::Queued(Answer::Stands)) => {
                                let fresh = scheduler.clone().poll(now);
                                proptest::prop_assert_eq!(expected, Ok(fresh));
                                let drifted = matches!(
                                    (last, fresh),
                                    (Decision::Wait(old), Decision::Wait(new))
                                        if new >= old && old >= now + Duration::from_secs(300 * 86_400)
                                );
                                proptest::prop_assert!(fresh == last || drifted, "held {last:?}, now {fresh:?}");
                            }
                            Err(error) => proptest::prop_assert_eq!(expected, Err(error)),
                        }
                    }
                    Op::Cancel(shard) => {
                        scheduler.cancel(shard);
                    }
                    Op::Release(shard) => {
                        scheduler.release(shard, now);
                    }
                    Op::Drive { after_ms } => now += Duration::from_millis(after_ms),
                    Op::Word { remaining, max_concurrency } => {
                        let word = SessionStartLimit { total: 8, remaining, ..limit(max_concurrency) };
                        scheduler.update(word, now).unwrap();
                    }
                }
                last = drain(&mut scheduler, now);
            }
        }
    }
}
