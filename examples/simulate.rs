//! A big bot's start-up, simulated: every shard asks to IDENTIFY at once and the
//! scheduler decides when each may, on a simulated clock that jumps from deadline to
//! deadline (no sleeping). Prints progress, then the makespan next to the theoretical
//! minimum, and checks every grant against Discord's rules on its own.
//!
//! ```text
//! cargo run --example simulate
//! cargo run --example simulate -- --shards 4096 --concurrency 16 --total 5000 --remaining 5000
//! cargo run --example simulate -- --hold 30 --ready-ms 1500
//! cargo run --example simulate -- --reconnects 16 --reconnect-at 120
//! ```
//!
//! With `--reconnects K`, the first K shards to have been granted lose their sessions
//! at `--reconnect-at` seconds, in the middle of the start-up, and ask again as
//! `Priority::Reconnect`; the report says how long they were down, next to what the
//! same run with every request a `Start` (FIFO alone) would have cost them.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use identify_queue::{Config, Decision, Priority, Scheduler, SessionStartLimit, ShardId};

const USAGE: &str = "\
usage: simulate [options]
  --shards N          shards to start (default 1024)
  --concurrency C     max_concurrency (default 16)
  --total T           session starts per day (default 1000)
  --remaining R       session starts left now (default: total)
  --reset-after S     seconds until the budget resets (default 86400)
  --interval-ms MS    spacing per bucket (default 5000)
  --hold S            hold mode: buckets wait for READY, at most S seconds
  --ready-ms MS       hold mode: READY arrives MS after IDENTIFY, ±50% (default 1500)
  --reconnects K      the first K shards granted lose their sessions mid-start-up
  --reconnect-at S    when they do, in seconds (default: half the start-up)
  --bars N            progress rows (default 20)";

struct Options {
    shards: u32,
    limit: SessionStartLimit,
    interval: Duration,
    hold: Option<Duration>,
    ready: Duration,
    reconnects: u32,
    reconnect_at: Option<Duration>,
    bars: u32,
}

fn parse() -> Result<Options, String> {
    let mut options = Options {
        shards: 1024,
        limit: SessionStartLimit {
            total: 1000,
            remaining: u32::MAX,
            reset_after: Duration::from_secs(86_400),
            max_concurrency: 16,
        },
        interval: Duration::from_secs(5),
        hold: None,
        ready: Duration::from_millis(1500),
        reconnects: 0,
        reconnect_at: None,
        bars: 20,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let number = |what: &str| -> Result<u64, String> {
            value
                .parse::<u64>()
                .map_err(|_| format!("{what}: `{value}` is not a whole number"))
        };
        let small = |what: &str| -> Result<u32, String> {
            u32::try_from(number(what)?).map_err(|_| format!("{what}: `{value}` is too large"))
        };
        match flag.as_str() {
            "--shards" => options.shards = small("--shards")?,
            "--concurrency" => options.limit.max_concurrency = small("--concurrency")?,
            "--total" => options.limit.total = small("--total")?,
            "--remaining" => options.limit.remaining = small("--remaining")?,
            "--reset-after" => options.limit.reset_after = Duration::from_secs(number(&flag)?),
            "--interval-ms" => options.interval = Duration::from_millis(number(&flag)?),
            "--hold" => options.hold = Some(Duration::from_secs(number(&flag)?)),
            "--ready-ms" => options.ready = Duration::from_millis(number(&flag)?),
            "--reconnects" => options.reconnects = small("--reconnects")?,
            "--reconnect-at" => {
                options.reconnect_at = Some(Duration::from_secs(number(&flag)?));
            }
            "--bars" => options.bars = small("--bars")?.max(1),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if options.limit.remaining == u32::MAX {
        options.limit.remaining = options.limit.total;
    }
    if options.reconnects > options.shards {
        return Err(format!(
            "--reconnects: {} is more than the {} shards",
            options.reconnects, options.shards
        ));
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match parse() {
        Ok(options) => options,
        Err(message) => {
            if !message.is_empty() {
                eprintln!("error: {message}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut config = Config::default().interval(options.interval);
    if let Some(timeout) = options.hold {
        config = config.hold_until_release(timeout);
    }
    let start = Instant::now();
    let scheduler = match Scheduler::with_config(options.limit, config, start) {
        Ok(scheduler) => scheduler,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let report = simulate(
        scheduler.clone(),
        &options,
        start,
        Priority::Reconnect,
        true,
    );
    if options.reconnects > 0 {
        // The same run with every request a `Start`: what FIFO alone costs them.
        let fifo = simulate(scheduler, &options, start, Priority::Start, false);
        println!(
            "reconnects      {} shards lost their sessions at {}; down until granted again:",
            options.reconnects,
            human(report.lost_at.unwrap_or_default())
        );
        for (name, report) in [("with priority", &report), ("FIFO alone", &fifo)] {
            let (average, longest) = report.downtime();
            println!(
                "                {name:<14} average {}, longest {}",
                human(average),
                human(longest)
            );
        }
    }
    let expected = options.shards + options.reconnects;
    if report.violations == 0 && report.granted == expected {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

struct Report {
    granted: u32,
    violations: usize,
    /// When the reconnecting shards lost their sessions, from the start.
    lost_at: Option<Duration>,
    /// Each reconnecting shard's time without a session.
    down: Vec<Duration>,
}

impl Report {
    /// Average and longest downtime of the reconnecting shards.
    fn downtime(&self) -> (Duration, Duration) {
        let total: Duration = self.down.iter().sum();
        let count = u32::try_from(self.down.len()).unwrap_or(u32::MAX).max(1);
        (
            total / count,
            self.down.iter().copied().max().unwrap_or_default(),
        )
    }
}

/// Runs the start-up; `priority` is how the reconnecting shards ask, `loud` prints the
/// progress and the report.
fn simulate(
    mut scheduler: Scheduler,
    options: &Options,
    start: Instant,
    priority: Priority,
    loud: bool,
) -> Report {
    macro_rules! say {
        ($($arg:tt)*) => {
            if loud {
                println!($($arg)*);
            }
        };
    }
    let limit = options.limit;
    let mode = match options.hold {
        Some(timeout) => format!(
            "hold mode (READY after ~{}, timeout {})",
            human(options.ready),
            human(timeout)
        ),
        None => "timer mode".to_owned(),
    };
    say!(
        "identify-queue simulation: {} shards, max_concurrency {}, budget {} of {} \
         (resets in {}), interval {}, {mode}",
        options.shards,
        limit.max_concurrency,
        limit.remaining,
        limit.total,
        human(limit.reset_after),
        human(options.interval),
    );
    say!();
    say!(
        "  {:>12}  {:<32}  {:>13}  {:>6}",
        "time",
        "progress",
        "granted",
        "budget"
    );

    let mut run = Run {
        options,
        start,
        checker: RuleChecker::new(options, start),
        granted: 0,
        last_grant: start,
        releases: BinaryHeap::new(),
        next_bar: 1,
        loud,
        granted_order: Vec::new(),
        lost: HashMap::new(),
        down: Vec::new(),
    };
    // The reconnecting shards lose their sessions half-way through the start-up.
    let rounds = options
        .shards
        .div_ceil(limit.max_concurrency)
        .saturating_sub(1);
    let half_way = options.interval.saturating_mul(rounds) / 2;
    let mut loss =
        (options.reconnects > 0).then(|| start + options.reconnect_at.unwrap_or(half_way));
    let mut now = start;
    for shard in 0..options.shards {
        match scheduler.request(shard, now) {
            Ok(Decision::Grant(shard)) => run.granted(shard, now, &scheduler),
            Ok(_) => {}
            Err(error) => say!("request of shard {shard} refused: {error}"),
        }
    }
    let mut reported_budget_wait = false;
    let stalled = loop {
        let wait = match scheduler.poll(now) {
            Decision::Grant(shard) => {
                run.granted(shard, now, &scheduler);
                continue;
            }
            Decision::Wait(until) => Some(until),
            Decision::Idle => None,
        };
        // Shards losing their sessions, if that comes before anything else.
        if let Some(at) = loss {
            let next_release = run.releases.peek().map(|&Reverse((at, _))| at);
            if wait.is_none_or(|wait| at <= wait) && next_release.is_none_or(|r| at <= r) {
                loss = None;
                now = now.max(at);
                let lost: Vec<ShardId> = run
                    .granted_order
                    .iter()
                    .copied()
                    .take(options.reconnects as usize)
                    .collect();
                say!(
                    "  {:>12}  {} serving shards lost their sessions and ask again ({priority:?})",
                    human(now - start),
                    lost.len()
                );
                for shard in lost {
                    run.lost.insert(shard, now);
                    match scheduler.request_with(shard, priority, now) {
                        Ok(Decision::Grant(shard)) => run.granted(shard, now, &scheduler),
                        Ok(_) => {}
                        Err(error) => say!("request of shard {shard} refused: {error}"),
                    }
                }
                continue;
            }
        }
        // The next event: a READY (hold mode) or the scheduler's deadline.
        match (run.releases.peek().copied(), wait) {
            (Some(Reverse((at, shard))), wait) if wait.is_none_or(|wait| at <= wait) => {
                run.releases.pop();
                now = now.max(at);
                run.checker.release(shard);
                let _ = scheduler.release(shard, now);
            }
            (_, Some(until)) => {
                if until - now >= Duration::from_secs(365 * 86_400) {
                    break true;
                }
                if scheduler.remaining(now) == 0 && !reported_budget_wait {
                    reported_budget_wait = true;
                    say!(
                        "  {:>12}  budget spent: {} shards wait for the reset at {}",
                        human(now - start),
                        scheduler.len(),
                        human(until - start)
                    );
                }
                now = until;
            }
            (_, None) => break false,
        }
    };

    let granted = run.granted;
    let makespan = run.last_grant - start;
    let grants = options.shards + options.reconnects;
    let rounds = grants.div_ceil(limit.max_concurrency).saturating_sub(1);
    let minimum = options.interval.saturating_mul(rounds);
    say!();
    if stalled {
        say!(
            "stalled: {} shards can never be granted (the budget never resets)",
            scheduler.len()
        );
    }
    if options.reconnects > 0 {
        say!(
            "granted         {granted} of {} ({} shards, {} of them twice)",
            options.shards + options.reconnects,
            options.shards,
            options.reconnects
        );
    } else {
        say!("granted         {granted} of {} shards", options.shards);
    }
    say!("makespan        {}", human(makespan));
    say!(
        "minimum         {} = (ceil({} / {}) - 1) × {}",
        human(minimum),
        grants,
        limit.max_concurrency,
        human(options.interval)
    );
    if options.hold.is_some() {
        say!("                (hold mode: a bucket also waits for its shard's READY)");
    }
    if options.shards > limit.remaining && !stalled {
        say!(
            "                the budget had {} starts for {} shards: the rest waited for its reset",
            limit.remaining,
            options.shards
        );
    }
    say!(
        "budget left     {} of {}",
        scheduler.remaining(now),
        scheduler.total()
    );
    say!(
        "rule check      {} grants checked independently, {} violations",
        run.checker.checked,
        run.checker.violations
    );
    Report {
        granted,
        violations: run.checker.violations,
        lost_at: options
            .reconnects
            .gt(&0)
            .then(|| options.reconnect_at.unwrap_or(half_way)),
        down: run.down,
    }
}

/// The bookkeeping of one simulated start-up.
struct Run<'a> {
    options: &'a Options,
    start: Instant,
    checker: RuleChecker,
    granted: u32,
    last_grant: Instant,
    /// Hold mode: READYs to come, soonest first.
    releases: BinaryHeap<Reverse<(Instant, ShardId)>>,
    next_bar: u64,
    loud: bool,
    /// Shards in the order they were first granted.
    granted_order: Vec<ShardId>,
    /// Shards that lost their session, and when.
    lost: HashMap<ShardId, Instant>,
    /// Time without a session, per shard granted again.
    down: Vec<Duration>,
}

impl Run<'_> {
    fn granted(&mut self, shard: ShardId, now: Instant, scheduler: &Scheduler) {
        self.granted += 1;
        match self.lost.remove(&shard) {
            Some(lost) => self.down.push(now - lost),
            None => self.granted_order.push(shard),
        }
        self.last_grant = now;
        self.checker.grant(shard, now);
        if self.options.hold.is_some() {
            // READY after `ready`, spread ±50% by shard so that buckets drift apart.
            let spread = (u64::from(shard).wrapping_mul(2_654_435_761) % 1000) as u32;
            let latency = self.options.ready / 2 + self.options.ready * spread / 1000;
            self.releases.push(Reverse((now + latency, shard)));
        }
        let total = self.options.shards + self.options.reconnects;
        let (done, total) = (u64::from(self.granted), u64::from(total));
        let bars = u64::from(self.options.bars);
        if self.loud && (done * bars >= self.next_bar * total || done == total) {
            self.next_bar = done * bars / total + 1;
            println!(
                "  {:>12}  {}  {:>6}/{:<6}  {:>6}",
                human(now - self.start),
                bar(done, total),
                done,
                total,
                scheduler.remaining(now)
            );
        }
    }
}

/// Checks grants against Discord's rules with no help from the scheduler: per-bucket
/// spacing, holds, and the budget with its 24 h window.
struct RuleChecker {
    max_concurrency: u32,
    interval: Duration,
    hold: Option<Duration>,
    last_in_bucket: HashMap<u32, Instant>,
    /// Hold mode: bucket -> (holder, hold end).
    holder: HashMap<u32, (ShardId, Instant)>,
    budget: u32,
    total: u32,
    reset: Option<Instant>,
    checked: usize,
    violations: usize,
}

impl RuleChecker {
    fn new(options: &Options, start: Instant) -> Self {
        Self {
            max_concurrency: options.limit.max_concurrency,
            interval: options.interval,
            hold: options.hold,
            last_in_bucket: HashMap::new(),
            holder: HashMap::new(),
            budget: options.limit.remaining,
            total: options.limit.total,
            reset: start.checked_add(options.limit.reset_after),
            checked: 0,
            violations: 0,
        }
    }

    fn grant(&mut self, shard: ShardId, now: Instant) {
        self.checked += 1;
        let bucket = shard % self.max_concurrency;
        if let Some(&last) = self.last_in_bucket.get(&bucket) {
            if now - last < self.interval {
                self.violation(format!(
                    "shard {shard}: bucket {bucket} again after {:?}",
                    now - last
                ));
            }
        }
        self.last_in_bucket.insert(bucket, now);
        if let Some(&(holder, until)) = self.holder.get(&bucket) {
            if now < until {
                self.violation(format!(
                    "shard {shard}: bucket {bucket} still held by {holder}"
                ));
            }
        }
        if let Some(timeout) = self.hold {
            let until = now
                .checked_add(timeout)
                .unwrap_or(now + Duration::from_secs(1 << 40));
            self.holder.insert(bucket, (shard, until));
        }
        if self.reset.is_some_and(|reset| reset <= now) {
            // Refilled; Discord's next window opens with this grant.
            self.budget = self.total;
            self.reset = now.checked_add(Duration::from_secs(86_400));
        }
        match self.budget.checked_sub(1) {
            Some(left) => self.budget = left,
            None => self.violation(format!("shard {shard}: granted with no budget left")),
        }
    }

    fn release(&mut self, shard: ShardId) {
        let bucket = shard % self.max_concurrency;
        if self
            .holder
            .get(&bucket)
            .is_some_and(|&(holder, _)| holder == shard)
        {
            self.holder.remove(&bucket);
        }
    }

    fn violation(&mut self, what: String) {
        self.violations += 1;
        println!("  RULE BROKEN: {what}");
    }
}

fn bar(done: u64, total: u64) -> String {
    const WIDTH: u64 = 30;
    let filled = (done * WIDTH / total.max(1)) as usize;
    format!(
        "[{}{}]",
        "#".repeat(filled),
        ".".repeat(WIDTH as usize - filled)
    )
}

/// `1h 02m 03s`, `5m 15s`, `4.500s`.
fn human(duration: Duration) -> String {
    if duration >= Duration::from_secs(100 * 365 * 86_400) {
        return "never".to_owned();
    }
    let seconds = duration.as_secs();
    let (hours, minutes, secs) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if hours > 0 {
        format!("{hours}h {minutes:02}m {secs:02}s")
    } else if minutes > 0 {
        format!("{minutes}m {secs:02}s")
    } else {
        format!("{}.{:03}s", secs, duration.subsec_millis())
    }
}
