//! A reference model of the core's semantics (rules 3, `src/rules.rs`), written for
//! clarity, not speed.
//!
//! It shares no code with the crate: it keeps every grant and rescans everything on each
//! call (O(n) and worse), so that what it says follows from the text of the spec alone.

use std::time::{Duration, Instant};

use identify_queue::{Error, Priority, SessionStartLimit};

/// Discord's session window.
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// What the model says a call should return. `Wait(None)`: nothing can ever become
/// eligible, so the scheduler must name an instant at least a year ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    Grant(u32),
    Wait(Option<Instant>),
    Idle,
}

/// The oldest word a scheduler takes (`identify_queue::MAX_WORD_AGE`, written out).
const MAX_AGE: Duration = Duration::from_secs(60 * 60);
/// The longest grace (`identify_queue::MAX_GRACE`, written out).
const MAX_GRACE: Duration = Duration::from_secs(60 * 60);

/// What the model knows of Discord's next reset (rules 3.11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Window {
    /// Discord said it never resets.
    Never,
    /// Refill at `at` (the latest instant Discord may reset) to `total` less every
    /// delivery after `from` (`None`: all) and every undelivered grant.
    /// `maybe_unopened`: Discord's window may not be open; the next delivery may open
    /// it, and then it resets a day and a grace after that delivery at the latest.
    Refill {
        at: Instant,
        from: Option<Instant>,
        maybe_unopened: bool,
    },
    /// Discord's window is not open; the next delivery opens it.
    Closed,
}

#[derive(Clone, Debug)]
pub struct Model {
    pub interval: Duration,
    pub hold_timeout: Option<Duration>,
    pub max_concurrency: u32,
    total: u32,
    remaining: u32,
    window: Window,
    grace: Duration,
    /// Grants count as delivered only when `delivered` says so.
    deferred: bool,
    undelivered: u32,
    /// Every delivery, in order.
    pub deliveries: Vec<Instant>,
    pub clock: Instant,
    next_seq: u64,
    /// (order, shard), in request order. The order is (priority class, seq): every
    /// `Reconnect` (class 0) before every `Start` (class 1), FIFO within a class.
    queue: Vec<((u8, u64), u32)>,
    /// Every grant: (instant, shard).
    pub grants: Vec<(Instant, u32)>,
    /// Hold mode: shard -> hold end (`None`: never), for unreleased latest grants.
    holds: Vec<(u32, Option<Instant>)>,
    /// Occupations set from outside: shard -> end (`None`: until told otherwise).
    occupied: Vec<(u32, Option<Instant>)>,
}

/// A priority's class: lower goes first.
pub fn class(priority: Priority) -> u8 {
    match priority {
        Priority::Reconnect => 0,
        _ => 1,
    }
}

pub fn check_limit(limit: &SessionStartLimit) -> Result<(), Error> {
    if limit.max_concurrency == 0 {
        Err(Error::ZeroMaxConcurrency)
    } else if limit.total == 0 {
        Err(Error::ZeroTotal)
    } else if limit.remaining > limit.total {
        Err(Error::RemainingExceedsTotal {
            remaining: limit.remaining,
            total: limit.total,
        })
    } else {
        Ok(())
    }
}

fn later(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    // None is "never", later than everything.
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        _ => None,
    }
}

fn sooner(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Model {
    pub fn new(
        limit: SessionStartLimit,
        interval: Duration,
        hold_timeout: Option<Duration>,
        grace: Duration,
        deferred: bool,
        now: Instant,
    ) -> Result<Self, Error> {
        check_limit(&limit)?;
        if interval.is_zero() {
            return Err(Error::ZeroInterval);
        }
        if grace > MAX_GRACE {
            return Err(Error::GraceTooLong(grace));
        }
        let mut model = Self {
            interval,
            hold_timeout,
            max_concurrency: limit.max_concurrency,
            total: 0,
            remaining: 0,
            window: Window::Closed,
            grace,
            deferred,
            undelivered: 0,
            deliveries: Vec::new(),
            clock: now,
            next_seq: 0,
            queue: Vec::new(),
            grants: Vec::new(),
            holds: Vec::new(),
            occupied: Vec::new(),
        };
        model.word(&limit, Some(now));
        Ok(model)
    }

    /// Deliveries at or after `from` (`None`: all): one at Discord's earliest reset
    /// arrives in the new window.
    fn delivered_after(&self, from: Option<Instant>) -> u32 {
        let count = self
            .deliveries
            .iter()
            .filter(|&&at| from.is_none_or(|from| at >= from))
            .count();
        u32::try_from(count).unwrap()
    }

    /// A refill at `at` to `total`, less what may count in Discord's new window
    /// (deliveries from `from` on, undelivered grants). A delivery it counts may have
    /// opened that window; or none did, and the next delivery will.
    fn refill(&mut self, at: Instant, from: Option<Instant>) {
        self.remaining = self
            .total
            .saturating_sub(self.delivered_after(from))
            .saturating_sub(self.undelivered);
        let counted: Vec<Instant> = self
            .deliveries
            .iter()
            .copied()
            .filter(|&d| from.is_none_or(|from| d >= from))
            .collect();
        self.window = match (counted.first(), counted.last()) {
            (Some(&first), Some(&last)) => {
                // Opened by `first` at the earliest: Discord resets a day after, and
                // what is delivered a grace before that may count after it. Opened
                // by the last counted or by our next delivery at the latest.
                let latest = at.max(last).checked_add(DAY + self.grace);
                let earliest = first.checked_add(DAY);
                match (latest, earliest) {
                    (Some(latest), Some(earliest)) => Window::Refill {
                        at: latest,
                        from: earliest.checked_sub(self.grace),
                        maybe_unopened: true,
                    },
                    _ => Window::Never,
                }
            }
            _ => Window::Closed,
        };
    }

    /// Discord's word, read at `read` (`None`: before any instant), applied at the clock.
    fn word(&mut self, limit: &SessionStartLimit, read: Option<Instant>) {
        self.total = limit.total;
        let from = read.and_then(|read| read.checked_sub(self.grace));
        let uncounted = self.delivered_after(from).saturating_add(self.undelivered);
        let read_at = read.unwrap_or(self.clock);
        if limit.reset_after == Duration::MAX {
            self.remaining = limit.remaining.saturating_sub(uncounted);
            self.window = Window::Never;
        } else if limit.remaining == limit.total {
            // Discord counted nothing: its window is not open. A refill now (Discord
            // may have computed the word as late as its application).
            self.refill(self.clock, from);
        } else {
            self.remaining = limit.remaining.saturating_sub(uncounted);
            // The reset: `reset_after` from the application (the latest Discord may
            // have computed it); counting from `reset_after` after the read, less a
            // grace.
            self.window = match (
                self.clock.checked_add(limit.reset_after),
                read_at.checked_add(limit.reset_after),
            ) {
                (Some(at), Some(earliest)) => Window::Refill {
                    at,
                    from: earliest.checked_sub(self.grace),
                    maybe_unopened: false,
                },
                _ => Window::Never,
            };
        }
        self.refresh();
    }

    fn tick(&mut self, now: Instant) {
        self.clock = self.clock.max(now);
        self.refresh();
    }

    fn refresh(&mut self) {
        while let Window::Refill { at, from, .. } = self.window {
            if at > self.clock {
                break;
            }
            self.refill(at, from);
        }
    }

    /// A grant reaches its shard at the clock.
    fn deliver(&mut self) {
        let now = self.clock;
        self.deliveries.push(now);
        let latest = now.checked_add(DAY + self.grace);
        self.window = match (self.window, latest) {
            (Window::Closed, Some(latest)) => Window::Refill {
                at: latest,
                from: (now + DAY).checked_sub(self.grace),
                maybe_unopened: false,
            },
            (
                Window::Refill {
                    at,
                    from,
                    maybe_unopened: true,
                },
                Some(latest),
            ) => Window::Refill {
                at: at.max(latest),
                from,
                maybe_unopened: false,
            },
            (
                Window::Closed
                | Window::Refill {
                    maybe_unopened: true,
                    ..
                },
                None,
            ) => Window::Never,
            (window, _) => window,
        };
    }

    pub fn delivered(&mut self, now: Instant) -> bool {
        if self.undelivered == 0 {
            return false;
        }
        self.tick(now);
        self.undelivered -= 1;
        self.deliver();
        true
    }

    pub fn abandoned(&mut self, now: Instant) -> bool {
        if self.undelivered == 0 {
            return false;
        }
        self.tick(now);
        self.undelivered -= 1;
        if self.window == Window::Closed {
            // Discord has counted nothing; only the undelivered may still arrive.
            self.remaining = self
                .remaining
                .max(self.total - self.undelivered.min(self.total));
        }
        true
    }

    pub fn undelivered(&self) -> u32 {
        self.undelivered
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_queued(&self, shard: u32) -> bool {
        self.queue.iter().any(|&(_, s)| s == shard)
    }

    pub fn queued(&self) -> impl Iterator<Item = u32> + '_ {
        self.queue.iter().map(|&(_, shard)| shard)
    }

    pub fn remaining_at(&self, now: Instant) -> u32 {
        let mut model = self.clone();
        model.tick(now);
        model.remaining
    }

    fn bucket(&self, shard: u32) -> u32 {
        shard % self.max_concurrency
    }

    /// When `bucket` is free (`None`: never), not before the clock.
    fn free_at(&self, bucket: u32) -> Option<Instant> {
        let mut free = Some(self.clock);
        for &(at, shard) in &self.grants {
            if self.bucket(shard) == bucket {
                free = later(free, at.checked_add(self.interval));
            }
        }
        for &(shard, until) in self.holds.iter().chain(&self.occupied) {
            if self.bucket(shard) == bucket {
                free = later(free, until);
            }
        }
        free
    }

    /// When the budget has a unit (`None`: never): the first refill that leaves one.
    fn unit_at(&self) -> Option<Instant> {
        let mut model = self.clone();
        loop {
            if model.remaining > 0 {
                return Some(model.clock);
            }
            match model.window {
                Window::Refill { at, .. } => model.tick(at),
                Window::Never | Window::Closed => return None,
            }
        }
    }

    /// Queue entries that are first in their bucket by order: (order, shard), first
    /// in order first.
    fn heads(&self) -> Vec<((u8, u64), u32)> {
        let mut sorted = self.queue.clone();
        sorted.sort();
        let mut heads: Vec<((u8, u64), u32)> = Vec::new();
        for (order, shard) in sorted {
            if !heads
                .iter()
                .any(|&(_, s)| self.bucket(s) == self.bucket(shard))
            {
                heads.push((order, shard));
            }
        }
        heads
    }

    /// Eligible shards at the clock, first in order first, with their order.
    fn eligible(&self) -> Vec<((u8, u64), u32)> {
        if self.remaining == 0 {
            return Vec::new();
        }
        self.heads()
            .into_iter()
            .filter(|&(_, shard)| self.free_at(self.bucket(shard)) == Some(self.clock))
            .collect()
    }

    /// The earliest instant at which some queued shard is eligible.
    fn wait(&self) -> Expect {
        if self.queue.is_empty() {
            return Expect::Idle;
        }
        let unit = self.unit_at();
        let mut earliest = None;
        let mut any = false;
        for (_, shard) in self.heads() {
            let at = later(self.free_at(self.bucket(shard)), unit);
            earliest = if any { sooner(earliest, at) } else { at };
            any = true;
        }
        Expect::Wait(earliest)
    }

    fn grant(&mut self, shard: u32) {
        self.remaining -= 1;
        if self.deferred {
            self.undelivered += 1;
        } else {
            self.deliver();
        }
        self.grants.push((self.clock, shard));
        if let Some(timeout) = self.hold_timeout {
            self.holds.retain(|&(s, _)| s != shard);
            self.holds.push((shard, self.clock.checked_add(timeout)));
        }
    }

    pub fn request(
        &mut self,
        shard: u32,
        priority: Priority,
        now: Instant,
    ) -> Result<Expect, Error> {
        if self.is_queued(shard) {
            return Err(Error::AlreadyQueued(shard));
        }
        self.tick(now);
        let order = (class(priority), self.next_seq);
        let bucket = self.bucket(shard);
        // Eligible at `now`: nothing before it in its bucket, the bucket free, a unit;
        // granted if the budget also covers every eligible shard before it (3.5).
        let first = !self
            .queue
            .iter()
            .any(|&(o, s)| self.bucket(s) == bucket && o < order);
        let before = self.eligible().iter().filter(|&&(o, _)| o < order).count();
        if first && self.free_at(bucket) == Some(self.clock) && self.remaining as usize > before {
            self.grant(shard);
            return Ok(Expect::Grant(shard));
        }
        self.queue.push((order, shard));
        self.next_seq += 1;
        Ok(self.wait())
    }

    pub fn occupy(&mut self, shard: u32, until: Option<Instant>, now: Instant) {
        self.tick(now);
        self.occupied.retain(|&(s, _)| s != shard);
        self.occupied.push((shard, until));
    }

    pub fn poll(&mut self, now: Instant) -> Expect {
        self.tick(now);
        if let Some(&(_, shard)) = self.eligible().first() {
            self.queue.retain(|&(_, s)| s != shard);
            self.grant(shard);
            return Expect::Grant(shard);
        }
        self.wait()
    }

    pub fn cancel(&mut self, shard: u32) -> bool {
        let before = self.queue.len();
        self.queue.retain(|&(_, s)| s != shard);
        self.queue.len() != before
    }

    pub fn release(&mut self, shard: u32, now: Instant) -> bool {
        let at = self.clock.max(now);
        let holding = self
            .holds
            .iter()
            .position(|&(s, until)| s == shard && until.is_none_or(|until| until > at));
        match holding {
            Some(index) => {
                self.holds.remove(index);
                self.tick(now);
                true
            }
            None => false,
        }
    }

    pub fn update(
        &mut self,
        limit: SessionStartLimit,
        age: Duration,
        now: Instant,
    ) -> Result<(), Error> {
        check_limit(&limit)?;
        if age > MAX_AGE {
            return Err(Error::WordTooOld(age));
        }
        self.tick(now);
        self.max_concurrency = limit.max_concurrency;
        self.word(&limit, self.clock.checked_sub(age));
        Ok(())
    }
}
