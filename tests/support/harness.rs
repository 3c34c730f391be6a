//! Replays operations against the scheduler and checks every answer twice: against the
//! reference model (exact decisions, instants, budget, `len`), and against invariants
//! read off the observed grants alone (spacing per bucket, holds, FIFO, errors change
//! nothing). Any disagreement panics with the step that caused it.
//!
//! Shared by the property tests and the fuzz target `ops`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use identify_queue::{Config, Decision, Error, Priority, Scheduler, SessionStartLimit};

use super::model::{Expect, Model, class};

/// At least this far ahead for "never" (rules 3.4: a year).
const YEAR: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// How the driver's clock moves before a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Stay,
    Forward(Duration),
    /// To the instant of the last `Wait`.
    ToDeadline,
    /// 1 ns before it.
    BeforeDeadline,
    /// 1 ns after it.
    AfterDeadline,
    /// Backwards: the scheduler must read it as the latest instant seen.
    Back(Duration),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Request(u32, Priority, Step),
    Poll(Step),
    /// Poll until it says anything but `Grant`.
    Drain(Step),
    Cancel(u32),
    Release(u32, Step),
    /// Discord's word, read this long before the driver's clock.
    Update(SessionStartLimit, Duration, Step),
    /// An undelivered grant reaches its shard (deferred deliveries).
    Deliver(Step),
    /// An undelivered grant will never reach its shard.
    Abandon(Step),
    /// Keep the shard's bucket busy until this long after the driver's clock (`None`:
    /// until a later `Occupy` of the shard).
    Occupy(u32, Option<Duration>, Step),
}

/// What a scheduler is built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setup {
    pub limit: SessionStartLimit,
    pub interval: Duration,
    pub hold_timeout: Option<Duration>,
    /// `Config::grace` (rules 3.11).
    pub grace: Duration,
    /// Grants wait for `delivered` (`Scheduler::defer_deliveries`).
    pub deferred: bool,
}

impl Setup {
    /// A setup with no grace and deliveries at the grant: rules 3.1's budget.
    pub fn plain(
        limit: SessionStartLimit,
        interval: Duration,
        hold_timeout: Option<Duration>,
    ) -> Self {
        Self {
            limit,
            interval,
            hold_timeout,
            grace: Duration::ZERO,
            deferred: false,
        }
    }

    pub fn config(&self) -> Config {
        let config = Config::default().interval(self.interval).grace(self.grace);
        match self.hold_timeout {
            Some(timeout) => config.hold_until_release(timeout),
            None => config,
        }
    }
}

/// One answer, for comparing runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Decision(Decision),
    Flag(bool),
    Failed(Error),
    Updated,
}

pub struct Harness {
    scheduler: Scheduler,
    model: Model,
    interval: Duration,
    hold_timeout: Option<Duration>,
    /// The driver's clock, which may go backwards.
    now: Instant,
    /// The latest instant of an accepted call: the scheduler's clock.
    seen: Instant,
    deadline: Option<Instant>,
    /// Queued shards in request order with their priority class, as the answers say.
    queued: VecDeque<(u32, u8)>,
    /// Grants within the last interval: (instant, shard).
    recent: VecDeque<(Instant, u32)>,
    /// Hold mode: unreleased latest grants (shard, instant).
    holders: Vec<(u32, Instant)>,
    /// Occupations as set: shard -> end (`None`: never).
    occupied: Vec<(u32, Option<Instant>)>,
    max_concurrency: u32,
    pub trace: Vec<Outcome>,
    pub grants: usize,
    step: usize,
}

impl Harness {
    /// Both the scheduler and the model must accept or refuse `setup` alike.
    pub fn new(setup: Setup, start: Instant) -> Result<Self, Error> {
        let built = Scheduler::with_config(setup.limit, setup.config(), start).map(|mut s| {
            if setup.deferred {
                s.defer_deliveries();
            }
            s
        });
        let modelled = Model::new(
            setup.limit,
            setup.interval,
            setup.hold_timeout,
            setup.grace,
            setup.deferred,
            start,
        );
        let (scheduler, model) = match (built, modelled) {
            (Ok(scheduler), Ok(model)) => (scheduler, model),
            (Err(error), Err(expected)) => {
                assert_eq!(error, expected, "{setup:?}");
                assert!(!error.to_string().is_empty());
                return Err(error);
            }
            (built, modelled) => panic!(
                "setup {setup:?}: scheduler says {:?}, model says {:?}",
                built.err(),
                modelled.err()
            ),
        };
        Ok(Self {
            scheduler,
            model,
            interval: setup.interval,
            hold_timeout: setup.hold_timeout,
            now: start,
            seen: start,
            deadline: None,
            queued: VecDeque::new(),
            recent: VecDeque::new(),
            holders: Vec::new(),
            occupied: Vec::new(),
            max_concurrency: setup.limit.max_concurrency,
            trace: Vec::new(),
            grants: 0,
            step: 0,
        })
    }

    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    pub fn run(&mut self, ops: &[Op]) {
        for &op in ops {
            self.apply(op);
        }
    }

    fn move_clock(&mut self, step: Step) {
        let moved = match (step, self.deadline) {
            (Step::Stay, _) => None,
            (Step::Forward(by), _) => self.now.checked_add(by),
            (Step::ToDeadline, deadline) => deadline,
            (Step::BeforeDeadline, deadline) => {
                deadline.and_then(|d| d.checked_sub(Duration::from_nanos(1)))
            }
            (Step::AfterDeadline, deadline) => {
                deadline.and_then(|d| d.checked_add(Duration::from_nanos(1)))
            }
            (Step::Back(by), _) => self.now.checked_sub(by),
        };
        if let Some(now) = moved {
            self.now = now;
        }
    }

    pub fn apply(&mut self, op: Op) {
        self.step += 1;
        let context = format!("step {} {op:?} at driver clock {:?}", self.step, self.now);
        match op {
            Op::Request(shard, priority, step) => {
                self.move_clock(step);
                let before = format!("{:?}", self.scheduler);
                // `request` is `request_with(.., Start, ..)`: both forms are exercised.
                let actual = match priority {
                    Priority::Start => self.scheduler.request(shard, self.now),
                    _ => self.scheduler.request_with(shard, priority, self.now),
                };
                let expected = self.model.request(shard, priority, self.now);
                match (actual, expected) {
                    (Ok(decision), Ok(expect)) => {
                        self.seen = self.seen.max(self.now);
                        self.check_decision(decision, expect, &context);
                        match decision {
                            Decision::Grant(granted) => {
                                assert_eq!(granted, shard, "{context}");
                                self.check_grant(shard, Some(class(priority)), &context);
                            }
                            _ => self.queued.push_back((shard, class(priority))),
                        }
                        self.trace.push(Outcome::Decision(decision));
                    }
                    (Err(error), Err(expected)) => {
                        assert_eq!(error, expected, "{context}");
                        self.check_unchanged(&before, &context);
                        self.trace.push(Outcome::Failed(error));
                    }
                    (actual, expected) => {
                        panic!("{context}: scheduler {actual:?}, model {expected:?}")
                    }
                }
            }
            Op::Poll(step) => {
                self.move_clock(step);
                let _ = self.poll_once(&context);
            }
            Op::Drain(step) => {
                self.move_clock(step);
                let most = self.queued.len();
                let mut rounds = 0;
                while let Decision::Grant(_) = self.poll_once(&context) {
                    rounds += 1;
                    assert!(
                        rounds <= most,
                        "{context}: drain granted more than was queued"
                    );
                }
            }
            Op::Cancel(shard) => {
                let was = self.scheduler.cancel(shard);
                assert_eq!(was, self.model.cancel(shard), "{context}: cancel");
                let position = self.queued.iter().position(|&(s, _)| s == shard);
                assert_eq!(
                    was,
                    position.is_some(),
                    "{context}: cancel of a shard not queued"
                );
                if let Some(position) = position {
                    self.queued.remove(position);
                }
                self.trace.push(Outcome::Flag(was));
            }
            Op::Release(shard, step) => {
                self.move_clock(step);
                let before = format!("{:?}", self.scheduler);
                let released = self.scheduler.release(shard, self.now);
                assert_eq!(
                    released,
                    self.model.release(shard, self.now),
                    "{context}: release"
                );
                if released {
                    self.seen = self.seen.max(self.now);
                    self.holders.retain(|&(s, _)| s != shard);
                } else {
                    self.check_unchanged(&before, &context);
                }
                self.trace.push(Outcome::Flag(released));
            }
            Op::Occupy(shard, delay, step) => {
                self.move_clock(step);
                // An end that does not fit in an `Instant` is never, like `None`.
                let until = delay.and_then(|delay| self.now.checked_add(delay));
                self.scheduler.occupy(shard, until, self.now);
                self.model.occupy(shard, until, self.now);
                self.seen = self.seen.max(self.now);
                self.occupied.retain(|&(s, _)| s != shard);
                self.occupied.push((shard, until));
                self.trace.push(Outcome::Updated);
            }
            Op::Deliver(step) | Op::Abandon(step) => {
                self.move_clock(step);
                let before = format!("{:?}", self.scheduler);
                let (actual, expected) = if matches!(op, Op::Deliver(_)) {
                    (
                        self.scheduler.delivered(self.now),
                        self.model.delivered(self.now),
                    )
                } else {
                    (
                        self.scheduler.abandoned(self.now),
                        self.model.abandoned(self.now),
                    )
                };
                assert_eq!(actual, expected, "{context}");
                if actual {
                    self.seen = self.seen.max(self.now);
                } else {
                    self.check_unchanged(&before, &context);
                }
                self.trace.push(Outcome::Flag(actual));
            }
            Op::Update(limit, age, step) => {
                self.move_clock(step);
                let before = format!("{:?}", self.scheduler);
                // `update` is `update_with_age(.., ZERO, ..)`: both forms are exercised.
                let actual = if age.is_zero() {
                    self.scheduler.update(limit, self.now)
                } else {
                    self.scheduler.update_with_age(limit, age, self.now)
                };
                let expected = self.model.update(limit, age, self.now);
                assert_eq!(actual, expected, "{context}: update");
                match actual {
                    Ok(()) => {
                        self.seen = self.seen.max(self.now);
                        self.max_concurrency = limit.max_concurrency;
                        self.trace.push(Outcome::Updated);
                    }
                    Err(error) => {
                        assert!(error.to_string().contains('`'), "{context}: {error}");
                        self.check_unchanged(&before, &context);
                        self.trace.push(Outcome::Failed(error));
                    }
                }
            }
        }
        self.check_state(&context);
    }

    fn poll_once(&mut self, context: &str) -> Decision {
        let decision = self.scheduler.poll(self.now);
        let expect = self.model.poll(self.now);
        self.seen = self.seen.max(self.now);
        self.check_decision(decision, expect, context);
        if let Decision::Grant(shard) = decision {
            self.check_grant(shard, None, context);
        }
        self.trace.push(Outcome::Decision(decision));
        decision
    }

    fn check_decision(&mut self, actual: Decision, expected: Expect, context: &str) {
        match (actual, expected) {
            (Decision::Grant(a), Expect::Grant(e)) if a == e => {}
            (Decision::Idle, Expect::Idle) => {}
            (Decision::Wait(at), Expect::Wait(Some(e))) if at == e => {}
            (Decision::Wait(at), Expect::Wait(None)) => {
                let year_ahead = self.seen.checked_add(YEAR).unwrap_or(at);
                assert!(
                    at >= year_ahead,
                    "{context}: a stall must wait a year, got {at:?}"
                );
            }
            _ => panic!("{context}: scheduler {actual:?}, model {expected:?}"),
        }
        if let Decision::Wait(at) = actual {
            assert!(at >= self.seen, "{context}: Wait({at:?}) is in the past");
            self.deadline = Some(at);
        }
    }

    /// Checks a grant against what the answers so far allow, independently of the model.
    /// `asked`: the class of a request granted at once; `None` for a grant from the queue.
    fn check_grant(&mut self, shard: u32, asked: Option<u8>, context: &str) {
        let at = self.seen;
        let bucket = shard % self.max_concurrency;
        let same_bucket = |&&(s, _): &&(u32, u8)| s % self.max_concurrency == bucket;
        match asked {
            None => {
                let position = self.queued.iter().position(|&(s, _)| s == shard);
                let position = position.unwrap_or_else(|| panic!("{context}: {shard} not queued"));
                let (_, own) = self.queued[position];
                // Nobody of a higher class anywhere in the bucket, nobody of its own
                // class before it: FIFO within a priority, reconnects first.
                let jumped = self.queued.iter().enumerate().find(|&(index, entry)| {
                    same_bucket(&entry) && (entry.1 < own || (entry.1 == own && index < position))
                });
                assert!(
                    jumped.is_none(),
                    "{context}: {shard} jumped {jumped:?} in its bucket"
                );
                self.queued.remove(position);
            }
            Some(own) => {
                let waiting = self
                    .queued
                    .iter()
                    .find(|entry| same_bucket(entry) && entry.1 <= own);
                assert!(
                    waiting.is_none(),
                    "{context}: {shard} jumped {waiting:?} in its bucket"
                );
            }
        }
        for &(other, until) in &self.occupied {
            let busy = until.is_none_or(|until| until > at);
            assert!(
                !(busy && other % self.max_concurrency == bucket),
                "{context}: {shard} granted at {at:?} while {other} occupies its bucket until {until:?}"
            );
        }
        let interval = self.interval;
        while let Some(&(granted, _)) = self.recent.front() {
            match granted.checked_add(interval) {
                Some(free) if free <= at => {
                    self.recent.pop_front();
                }
                _ => break,
            }
        }
        for &(granted, other) in &self.recent {
            assert!(
                other % self.max_concurrency != bucket,
                "{context}: {shard} granted at {at:?}, {other} of the same bucket at {granted:?}"
            );
        }
        self.recent.push_back((at, shard));
        if let Some(timeout) = self.hold_timeout {
            for &(other, granted) in &self.holders {
                let holds = granted.checked_add(timeout).is_none_or(|end| end > at);
                assert!(
                    !(holds && other % self.max_concurrency == bucket),
                    "{context}: {shard} granted while {other} holds its bucket since {granted:?}"
                );
            }
            self.holders.retain(|&(s, _)| s != shard);
            self.holders.push((shard, at));
        }
        self.grants += 1;
    }

    fn check_unchanged(&self, before: &str, context: &str) {
        assert_eq!(
            before,
            format!("{:?}", self.scheduler),
            "{context}: error changed state"
        );
    }

    fn check_state(&self, context: &str) {
        assert_eq!(self.scheduler.len(), self.queued.len(), "{context}: len");
        assert_eq!(
            self.scheduler.len(),
            self.model.len(),
            "{context}: len vs model"
        );
        assert_eq!(
            self.scheduler.is_empty(),
            self.queued.is_empty(),
            "{context}"
        );
        assert_eq!(self.scheduler.now(), self.seen, "{context}: clock");
        assert_eq!(
            self.scheduler.undelivered(),
            self.model.undelivered(),
            "{context}: undelivered"
        );
        assert_eq!(
            self.scheduler.remaining(self.now),
            self.model.remaining_at(self.now),
            "{context}: remaining budget"
        );
        for (shard, _) in &self.queued {
            assert!(self.scheduler.is_queued(*shard), "{context}: {shard} lost");
            let eta = self.scheduler.eta(*shard, self.now);
            assert!(
                eta.is_some_and(|eta| eta >= self.seen),
                "{context}: eta {eta:?}"
            );
        }
    }
}
