//! The daily budget of session starts, its 24 h window, and what we cannot know of
//! Discord's count ([rules 3.11](crate::rules)).
//!
//! # The accounting
//!
//! Discord counts an IDENTIFY when it *arrives*, opens its 24 h window with the first
//! arrival after a reset, and tells us its count (a *word*: `remaining`,
//! `reset_after`) some time after reading it. `grace` bounds what we cannot see: how
//! old a word may be when it is applied (unless its age is given) plus how long an
//! IDENTIFY may take from its delivery to its arrival. So a grant is counted from its
//! *delivery* (the instant its shard may send IDENTIFY), and:
//!
//! - **a word** read at `r` (its application less its age, `update_with_age`) sets
//!   the budget to its `remaining`, less the deliveries after `r - grace`, less the
//!   grants not delivered yet (either may arrive after the read). A word that counts
//!   nothing (`remaining == total`) says Discord's window is not open: the next
//!   delivery opens it;
//! - **a reset** is taken at the latest instant it may be (a word's *application*
//!   plus its `reset_after`, since Discord computed the word at some instant between
//!   its read and now; a day and a grace after the delivery that opened the window), and
//!   refills to `total` less every delivery that may arrive at or after Discord's
//!   earliest reset (from `count_from` on, that instant included: an IDENTIFY that
//!   arrives at the reset counts in the new window) and less the undelivered grants;
//! - **a window that may be open already**: when such a refill subtracted deliveries,
//!   one of them may have opened Discord's next window (it arrived after Discord's
//!   reset), or none did and our next delivery will. Both stay possible: the next
//!   refill is a day and a grace after the later of the two openings, and counts from
//!   a day less a grace after the earlier one. Deliveries are logged for as long as a
//!   refill or a word may count them.
//!
//! Every rule errs on Discord's side: our `remaining` is never above what Discord may
//! have left, whichever of the possible arrivals and resets happened, so at every
//! instant the units we may still grant in a Discord window are at most what
//! Discord's word left, less every grant Discord may not have counted: none is counted
//! as available twice. The cost is units held back (up to `grace` of deliveries per
//! word and per reset) and resets taken up to `grace` late.
//!
//! This is the argument; the rules are stated in [rules 3.11](crate::rules), the
//! crate's docs summarise them, and the cluster's version (what Redis can know of a
//! delivery) is argued in the `redis` module's docs. `tests/budget.rs` judges random
//! traces against an independent model of Discord's counter.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::limit::SessionStartLimit;
use crate::time::Moment;

/// Length of Discord's session start window.
pub(crate) const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// The oldest word a scheduler applies (an hour): deliveries are kept this long, and
/// a grace, so that every word taken subtracts exactly the deliveries after its read
/// less a grace. An older word is refused: read it from Discord again.
pub const MAX_WORD_AGE: Duration = Duration::from_secs(60 * 60);

/// Session starts left, when they come back, and the deliveries that may still count.
#[derive(Clone, Debug)]
pub(crate) struct Budget {
    total: u32,
    remaining: u32,
    grace: Duration,
    next: Next,
    /// Whether grants wait for [`delivered`](Self::delivered) to count as delivered
    /// (an adapter that hands permits over later); otherwise a grant is delivered at
    /// its own instant.
    deferred: bool,
    /// Grants made but not delivered yet: every word and refill subtracts them.
    undelivered: u32,
    deliveries: Deliveries,
}

/// What comes next for the budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// Discord said it never resets.
    Never,
    /// Refill at `at`, the latest instant Discord's reset may be, to `total` less the
    /// deliveries from `count_from` on (`None`: all of them) and the undelivered grants.
    Reset {
        at: Instant,
        count_from: Option<Instant>,
        /// Discord's window may not be open yet: then the next delivery opens it, and
        /// its reset comes a day (and a grace) after that delivery at the latest.
        unopened: bool,
    },
    /// Discord's window is not open: nothing delivered since counts in it. The next
    /// delivery opens it.
    Unopened,
}

impl Budget {
    /// The budget `limit` describes, read and applied at `now` (a limit that must have
    /// been validated), with `grace` for what cannot be seen of Discord's count.
    pub(crate) fn new(limit: &SessionStartLimit, grace: Duration, now: Instant) -> Self {
        let mut budget = Self {
            total: limit.total,
            remaining: limit.remaining,
            grace,
            next: Next::Unopened,
            deferred: false,
            undelivered: 0,
            deliveries: Deliveries::default(),
        };
        budget.apply_word(limit, Some(now), now);
        budget
    }

    /// Applies Discord's word `limit`, read at `read` (`None`: longer ago than any
    /// instant), at `now`: [rules 3.11](crate::rules)'s first rule.
    pub(crate) fn apply_word(
        &mut self,
        limit: &SessionStartLimit,
        read: Option<Instant>,
        now: Instant,
    ) {
        self.total = limit.total;
        let count_from = read.and_then(|read| read.checked_sub(self.grace));
        if limit.reset_after == Duration::MAX {
            self.remaining = self.less_uncounted(limit.remaining, count_from);
            self.next = Next::Never;
        } else if limit.remaining >= limit.total {
            // Nothing counted: Discord's window is not open, its `reset_after` says
            // nothing. That is a refill now (the latest instant Discord may have
            // computed the word), counting from the read.
            self.refill(count_from, now);
        } else {
            self.remaining = self.less_uncounted(limit.remaining, count_from);
            // Discord computed `reset_after` at some instant between the read and now:
            // its reset is at most `reset_after` after now, so that is where ours goes.
            // The deliveries that may count in its next window are those from its
            // earliest reset on (`reset_after` after the read), less a grace.
            let at = Moment::after(now, limit.reset_after);
            let earliest = Moment::after(read.unwrap_or(now), limit.reset_after);
            self.next = reset_at(at, earliest, self.grace, false);
        }
        self.refresh(now);
    }

    /// `units` less the deliveries from `count_from` on and the undelivered grants.
    fn less_uncounted(&self, units: u32, count_from: Option<Instant>) -> u32 {
        units
            .saturating_sub(self.deliveries.count_after(count_from))
            .saturating_sub(self.undelivered)
    }

    /// Refills at `at`, the latest instant of a reset from which the deliveries from
    /// `count_from` on may count in Discord's new window.
    fn refill(&mut self, count_from: Option<Instant>, at: Instant) {
        let (remaining, next) = self.refilled(count_from, at);
        self.remaining = remaining;
        self.next = next;
    }

    /// What a refill at `at` counting from `count_from` leaves: the units and what
    /// comes next.
    fn refilled(&self, count_from: Option<Instant>, at: Instant) -> (u32, Next) {
        let remaining = self.less_uncounted(self.total, count_from);
        let next = match self.deliveries.span_after(count_from) {
            // Nothing delivered may count in Discord's new window: it opens with our
            // next delivery. (An undelivered grant opens it when it is delivered.)
            None => Next::Unopened,
            // One of them may have opened it, at the earliest at `first`; or none did.
            Some((first, last)) => reset_at(
                Moment::after(at.max(last), self.grace.saturating_add(DAY)),
                Moment::after(first, DAY),
                self.grace,
                true,
            ),
        };
        (remaining, next)
    }

    /// The units and what comes next at `now`, every reset due by then applied.
    fn projected(&self, now: Instant) -> (u32, Next) {
        let (mut remaining, mut next) = (self.remaining, self.next);
        // Each refill that counts a delivery counts from a day after the first it
        // counted: it ends when no delivery is left to count.
        while let Next::Reset { at, count_from, .. } = next {
            if at > now {
                break;
            }
            (remaining, next) = self.refilled(count_from, at);
        }
        (remaining, next)
    }

    /// Applies the resets that have come by `now`, and forgets the deliveries that no
    /// word or refill can count any more. Whether the units or the next reset changed.
    pub(crate) fn refresh(&mut self, now: Instant) -> bool {
        let before = (self.remaining, self.next);
        (self.remaining, self.next) = self.projected(now);
        let changed = before != (self.remaining, self.next);
        let oldest_word = now
            .checked_sub(MAX_WORD_AGE)
            .and_then(|read| read.checked_sub(self.grace));
        let keep_after = match self.next {
            Next::Reset { count_from, .. } => count_from.min(oldest_word),
            Next::Never | Next::Unopened => oldest_word,
        };
        if let Some(keep_after) = keep_after {
            self.deliveries.forget_until(keep_after);
        }
        changed
    }

    /// Units left, as of the last `refresh`.
    pub(crate) fn remaining(&self) -> u32 {
        self.remaining
    }

    /// Units left at `now`, without changing this budget. Inlined, and without a
    /// reset due by `now` (after a `refresh` at `now`, always) a field read: a
    /// delivery asks it every time.
    #[inline]
    pub(crate) fn remaining_at(&self, now: Instant) -> u32 {
        match self.next {
            Next::Reset { at, .. } if at <= now => self.projected(now).0,
            _ => self.remaining,
        }
    }

    /// The total per window.
    pub(crate) fn total(&self) -> u32 {
        self.total
    }

    /// When the budget refills next as of `now`: `None` while Discord's window is not
    /// open (nothing to wait for), `Some(Never)` when it never does.
    pub(crate) fn resets_at(&self, now: Instant) -> Option<Moment> {
        match self.projected(now).1 {
            Next::Never => Some(Moment::Never),
            Next::Reset { at, .. } => Some(Moment::At(at)),
            Next::Unopened => None,
        }
    }

    /// When at least one unit is there, as of `now`: `None` at once, else the first
    /// refill that leaves one (`Never`: none will without new input).
    pub(crate) fn unit_available_at(&self, now: Instant) -> Option<Moment> {
        let (remaining, mut next) = self.projected(now);
        if remaining > 0 {
            return None;
        }
        loop {
            match next {
                Next::Reset { at, count_from, .. } => {
                    let (remaining, after) = self.refilled(count_from, at);
                    if remaining > 0 {
                        return Some(Moment::At(at));
                    }
                    next = after;
                }
                // Spent, and nothing refills it without a delivery, an abandoned
                // grant or a word.
                _ => return Some(Moment::Never),
            }
        }
    }

    /// Makes grants wait for [`delivered`](Self::delivered) or
    /// [`abandoned`](Self::abandoned).
    pub(crate) fn defer_deliveries(&mut self) {
        self.deferred = true;
    }

    /// Grants made and not yet delivered or abandoned.
    pub(crate) fn undelivered(&self) -> u32 {
        self.undelivered
    }

    /// Spends one unit for a grant at `now`. The caller checked `remaining() > 0`.
    #[inline]
    pub(crate) fn spend(&mut self, now: Instant) {
        self.remaining = self.remaining.saturating_sub(1);
        if self.deferred {
            self.undelivered = self.undelivered.saturating_add(1);
        } else {
            self.deliver(now);
        }
    }

    /// An undelivered grant reached its shard at `now`: whether there was one.
    #[inline]
    pub(crate) fn delivered(&mut self, now: Instant) -> bool {
        if self.undelivered == 0 {
            return false;
        }
        self.undelivered -= 1;
        self.deliver(now);
        true
    }

    /// An undelivered grant will never reach its shard: its unit stays spent, but a
    /// budget refilled while Discord's window is not open no longer holds a unit back
    /// for it. Whether there was one.
    pub(crate) fn abandoned(&mut self) -> bool {
        if self.undelivered == 0 {
            return false;
        }
        self.undelivered -= 1;
        if self.next == Next::Unopened {
            // Nothing was delivered since Discord's reset: Discord has counted nothing,
            // and only the undelivered grants may still arrive.
            self.remaining = self
                .remaining
                .max(self.total.saturating_sub(self.undelivered));
        }
        true
    }

    /// Logs a delivery at `now`; the first one after a refill may open Discord's window.
    #[inline]
    fn deliver(&mut self, now: Instant) {
        self.deliveries.push(now);
        // Discord's reset comes a day after the arrival that opened its window (worked
        // out only while the window may not be open: most deliveries find it open).
        let opened_at_latest = || Moment::after(now, self.grace.saturating_add(DAY));
        self.next = match self.next {
            Next::Unopened => reset_at(
                opened_at_latest(),
                Moment::after(now, DAY),
                self.grace,
                false,
            ),
            Next::Reset {
                at,
                count_from,
                unopened: true,
            } => match opened_at_latest() {
                // Either an earlier delivery opened it (`count_from` covers that) or
                // this one does: the later reset of the two.
                Moment::At(latest) => Next::Reset {
                    at: at.max(latest),
                    count_from,
                    unopened: false,
                },
                Moment::Never => Next::Never,
            },
            // Opened already: nothing to write.
            _ => return,
        };
    }
}

/// A refill at `at` counting from `count_from`, or `Never` when `at` does not fit in
/// an instant.
fn reset_at(at: Moment, count_from: Moment, grace: Duration, unopened: bool) -> Next {
    match (at, count_from) {
        (Moment::At(at), Moment::At(from)) => Next::Reset {
            at,
            count_from: from.checked_sub(grace),
            unopened,
        },
        // A reset that never comes counts nothing (and `count_from` never passes `at`).
        _ => Next::Never,
    }
}

/// Deliveries in time order, with a running count, so that the number after an
/// instant costs a binary search.
#[derive(Clone, Debug, Default)]
struct Deliveries {
    /// (instant, deliveries up to and including it since the log began).
    log: VecDeque<(Instant, u64)>,
    /// Deliveries forgotten (the running count before the first entry kept).
    forgotten: u64,
}

impl Deliveries {
    #[inline]
    fn push(&mut self, at: Instant) {
        match self.log.back_mut() {
            Some((last, count)) if *last >= at => *count += 1,
            Some(&mut (_, count)) => self.log.push_back((at, count + 1)),
            None => self.log.push_back((at, self.forgotten + 1)),
        }
    }

    /// The number delivered at or after `from` (`None`: all kept).
    fn count_after(&self, from: Option<Instant>) -> u32 {
        let Some(&(_, total)) = self.log.back() else {
            return 0;
        };
        // From `from` on, `from` itself included: a delivery at the earliest instant
        // Discord's reset may be arrives at or after it, in the new window.
        let index = from.map_or(0, |from| self.log.partition_point(|&(at, _)| at < from));
        let before = match index {
            0 => self.forgotten,
            index => self.log[index - 1].1,
        };
        u32::try_from(total - before).unwrap_or(u32::MAX)
    }

    /// The first and last delivery at or after `from`, if any.
    fn span_after(&self, from: Option<Instant>) -> Option<(Instant, Instant)> {
        let index = from.map_or(0, |from| self.log.partition_point(|&(at, _)| at < from));
        let first = self.log.get(index)?.0;
        Some((first, self.log.back()?.0))
    }

    /// Forgets the deliveries before `until` (one at `until` may still be counted).
    fn forget_until(&mut self, until: Instant) {
        while let Some(&(at, count)) = self.log.front() {
            if at >= until {
                break;
            }
            self.forgotten = count;
            self.log.pop_front();
        }
    }
}
