//! Discord's rules, judged on what arrived: the one checker that the fake gateway, the
//! fake Discord of the worker processes, Redis's grant log, the adapter's property
//! test, the cluster example and the benches all use. It shares nothing with the crate.
//!
//! The rules (`identify_queue::rules` section 1): two IDENTIFYs of one bucket
//! (`shard % max_concurrency`, under the `max_concurrency` in force when the later one
//! arrives) at least `interval` apart, and no IDENTIFY once the session starts left are
//! spent. (No more than `max_concurrency` IDENTIFYs in any interval follows from the
//! first: `max_concurrency + 1` of them would put two of one bucket within it.)
//!
//! Instants are anything that subtracts to a `Duration`: a std or tokio `Instant`, or
//! an offset from a start (`Duration`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::fmt::Debug;
use std::ops::Sub;
use std::time::Duration;

/// The rules a judge applies.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    pub max_concurrency: u32,
    pub interval: Duration,
    /// How much closer than `interval` two arrivals of one bucket may come and still
    /// pass: an IDENTIFY granted at `t` arrives at `t + d`, `d` varying by a few
    /// milliseconds between connections and processes. Zero where the instants judged
    /// are the grants themselves (a paused clock, Redis's log).
    pub jitter: Duration,
    /// Session starts left; `None`: the budget is not judged.
    pub remaining: Option<u32>,
}

impl Rules {
    /// Spacing only, judged exactly: no jitter, no budget.
    pub fn spacing(max_concurrency: u32, interval: Duration) -> Self {
        Self {
            max_concurrency,
            interval,
            jitter: Duration::ZERO,
            remaining: None,
        }
    }
}

/// Judges arrivals one at a time, in the order they arrive.
#[derive(Clone, Debug)]
pub struct Judge<T> {
    rules: Rules,
    remaining: Option<u32>,
    /// Every arrival so far, `(at, shard)`: a change of `max_concurrency` re-keys the
    /// buckets, and the last arrival of each new bucket is found among them.
    arrivals: Vec<(T, u32)>,
    /// The last arrival of each bucket under the `max_concurrency` in force.
    last_in_bucket: HashMap<u32, (T, u32)>,
    violations: Vec<String>,
}

impl<T> Judge<T>
where
    T: Copy + Ord + Debug + Sub<Output = Duration>,
{
    pub fn new(rules: Rules) -> Self {
        Self {
            remaining: rules.remaining,
            rules,
            arrivals: Vec::new(),
            last_in_bucket: HashMap::new(),
            violations: Vec::new(),
        }
    }

    /// An IDENTIFY of `shard` arrives at `at` (no earlier than the one before). Returns
    /// whether it kept the rules; what it broke is added to [`Judge::violations`]. A
    /// broken IDENTIFY spends a session start all the same, as Discord counts it.
    pub fn arrive(&mut self, at: T, shard: u32) -> bool {
        let Rules {
            max_concurrency,
            interval,
            jitter,
            ..
        } = self.rules;
        let bucket = shard % max_concurrency;
        let before = self.violations.len();
        if let Some(&(previous, other)) = self.arrivals.last() {
            if at < previous {
                self.violations.push(format!(
                    "shard {shard} judged at {at:?}, before the last arrival (shard {other} \
                     at {previous:?}): arrivals must be judged in order"
                ));
            }
        }
        if let Some(&(previous, other)) = self.last_in_bucket.get(&bucket) {
            let gap = gap(previous, at);
            if gap + jitter < interval {
                self.violations.push(format!(
                    "bucket {bucket} of {max_concurrency}: shard {shard} at {at:?}, only \
                     {gap:?} after shard {other} (interval {interval:?}, jitter {jitter:?})"
                ));
            }
        }
        match &mut self.remaining {
            Some(0) => self.violations.push(format!(
                "shard {shard} at {at:?}: an IDENTIFY with no session starts left"
            )),
            Some(remaining) => *remaining -= 1,
            None => {}
        }
        self.arrivals.push((at, shard));
        self.last_in_bucket.insert(bucket, (at, shard));
        self.violations.len() == before
    }

    /// Discord's `max_concurrency` is `max_concurrency` from now on: later arrivals
    /// are bucketed by it, and spaced from the earlier arrivals of their new bucket.
    pub fn set_max_concurrency(&mut self, max_concurrency: u32) {
        self.rules.max_concurrency = max_concurrency;
        self.last_in_bucket.clear();
        for &(at, shard) in &self.arrivals {
            self.last_in_bucket
                .insert(shard % max_concurrency, (at, shard));
        }
    }

    /// Discord's daily reset: `remaining` session starts from now on.
    pub fn refill(&mut self, remaining: u32) {
        self.remaining = Some(remaining);
    }

    pub fn max_concurrency(&self) -> u32 {
        self.rules.max_concurrency
    }

    /// Session starts left (`None`: the budget is not judged).
    pub fn remaining(&self) -> Option<u32> {
        self.remaining
    }

    /// Every arrival, `(at, shard)`, in order.
    pub fn arrivals(&self) -> &[(T, u32)] {
        &self.arrivals
    }

    /// Every broken rule, described, in the order it happened.
    pub fn violations(&self) -> &[String] {
        &self.violations
    }
}

/// What happened at an instant, for [`judge`].
#[derive(Clone, Copy, Debug)]
pub enum Event {
    /// An IDENTIFY of this shard arrived.
    Arrival(u32),
    /// Discord's `max_concurrency` became this.
    MaxConcurrency(u32),
}

/// Judges `events` given in any order (as threads that each take their own instant
/// record them): sorted by instant, a change of `max_concurrency` before an arrival of
/// the same instant. Returns the violations, described.
pub fn judge<T>(rules: Rules, events: impl IntoIterator<Item = (T, Event)>) -> Vec<String>
where
    T: Copy + Ord + Debug + Sub<Output = Duration>,
{
    let mut events: Vec<(T, Event)> = events.into_iter().collect();
    events.sort_by_key(|&(at, event)| (at, matches!(event, Event::Arrival(_))));
    let mut judge = Judge::new(rules);
    for (at, event) in events {
        match event {
            Event::Arrival(shard) => {
                judge.arrive(at, shard);
            }
            Event::MaxConcurrency(max_concurrency) => judge.set_max_concurrency(max_concurrency),
        }
    }
    judge.violations
}

/// Judges arrivals `(at, shard)` given in any order, under fixed rules.
pub fn judge_arrivals<T>(rules: Rules, arrivals: impl IntoIterator<Item = (T, u32)>) -> Vec<String>
where
    T: Copy + Ord + Debug + Sub<Output = Duration>,
{
    judge(
        rules,
        arrivals
            .into_iter()
            .map(|(at, shard)| (at, Event::Arrival(shard))),
    )
}

/// The time between two instants, whichever is first.
fn gap<T: Ord + Sub<Output = Duration>>(a: T, b: T) -> Duration {
    if a <= b { b - a } else { a - b }
}
