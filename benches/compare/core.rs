//! The sans-IO core alone: request + grant of N shards on a simulated clock.

use std::hint::black_box;
use std::time::{Duration, Instant};

use identify_queue::{Decision, Scheduler, SessionStartLimit};

use crate::DAY;
use crate::limit::limit;
use crate::{alloc, human};

const INTERVAL: Duration = Duration::from_secs(5);

/// How a run treats its shards.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Workload {
    /// Every shard requested at once, all granted.
    StartUp,
    /// Every shard requested, then every other round of each bucket cancelled.
    HalfCancel,
    /// Every shard asks again the moment it is granted (one reconnect each).
    Reconnect,
}

struct Outcome {
    elapsed: Duration,
    grants: u64,
    polls: u64,
    makespan: Duration,
    drain_allocations: usize,
}

fn simulate(shards: u32, max_concurrency: u32, workload: Workload) -> Outcome {
    let start = Instant::now();
    let mut now = start;
    let began = Instant::now();
    let mut scheduler = Scheduler::new(word(shards, max_concurrency), now).expect("valid");
    let mut grants = 0u64;
    let mut reconnected = vec![
        false;
        if workload == Workload::Reconnect {
            shards as usize
        } else {
            0
        }
    ];
    for shard in 0..shards {
        if let Ok(Decision::Grant(_)) = scheduler.request(shard, now) {
            grants += 1;
        }
    }
    if workload == Workload::HalfCancel {
        for shard in 0..shards {
            if (shard / max_concurrency) % 2 == 1 {
                black_box(scheduler.cancel(shard));
            }
        }
    }
    let allocations_before = alloc::allocations();
    let mut polls = 0u64;
    let mut last_grant = now;
    loop {
        polls += 1;
        match scheduler.poll(now) {
            Decision::Grant(shard) => {
                grants += 1;
                last_grant = now;
                if let Some(done) = reconnected.get_mut(shard as usize) {
                    if !*done {
                        *done = true;
                        let _ = black_box(scheduler.request(shard, now));
                    }
                }
            }
            Decision::Wait(until) => now = until,
            Decision::Idle => break,
        }
    }
    Outcome {
        elapsed: began.elapsed(),
        grants,
        polls,
        makespan: last_grant - start,
        drain_allocations: alloc::allocations() - allocations_before,
    }
}

fn best_of(runs: u32, shards: u32, max_concurrency: u32, workload: Workload) -> Outcome {
    let mut best = simulate(shards, max_concurrency, workload);
    for _ in 1..runs {
        let next = simulate(shards, max_concurrency, workload);
        if next.elapsed < best.elapsed {
            best = next;
        }
    }
    best
}

/// One point per size: ns per shard with `max_concurrency` 16, for the plot.
pub type Series = Vec<(u32, f64)>;

pub fn run(sizes: &[u32]) -> Series {
    println!("\n## Core scheduler: N shards requested at once, drained on a simulated clock");
    println!(
        "ns per shard (request + grant), best of 3; makespan checked against (ceil(N/C) - 1) x 5 s\n"
    );
    println!(
        "| N | C = 1 | C = 16 | C = 64 | polls to drain (C = 16) | allocations while draining (C = 16) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    let mut series = Series::new();
    for &shards in sizes {
        let mut cells = Vec::new();
        let (mut drain_allocations, mut polls) = (0, 0);
        for max_concurrency in [1, 16, 64] {
            let runs = if shards >= 1_000_000 { 2 } else { 3 };
            let outcome = best_of(runs, shards, max_concurrency, Workload::StartUp);
            let optimum = INTERVAL * (shards.div_ceil(max_concurrency) - 1);
            assert_eq!(outcome.makespan, optimum, "N {shards} C {max_concurrency}");
            assert_eq!(outcome.grants, u64::from(shards));
            let per_shard = outcome.elapsed.as_secs_f64() * 1e9 / f64::from(shards);
            if max_concurrency == 16 {
                series.push((shards, per_shard));
                drain_allocations = outcome.drain_allocations;
                polls = outcome.polls;
            }
            cells.push(format!("{per_shard:.1}"));
        }
        println!(
            "| {shards} | {} | {polls} | {drain_allocations} |",
            cells.join(" | ")
        );
    }
    if let (Some(first), Some(last)) = (series.first(), series.last()) {
        println!(
            "\ngrowth from N = {} to N = {} (C = 16): {:.2}x per shard",
            first.0,
            last.0,
            last.1 / first.1
        );
    }

    println!("\n## Core scheduler: cancel-heavy and reconnect-storm runs (C = 16)\n");
    println!("| N | workload | grants | polls | time | ns per grant |");
    println!("|---:|---|---:|---:|---:|---:|");
    for &shards in sizes {
        for (name, workload) in [
            ("half cancel", Workload::HalfCancel),
            ("reconnect storm", Workload::Reconnect),
        ] {
            let outcome = best_of(2, shards, 16, workload);
            let per_grant = outcome.elapsed.as_secs_f64() * 1e9 / outcome.grants as f64;
            println!(
                "| {shards} | {name} | {} | {} | {} | {per_grant:.1} |",
                outcome.grants,
                outcome.polls,
                human(outcome.elapsed)
            );
        }
    }
    series
}

/// Bytes per queued shard, measured by the counting allocator.
pub fn memory(shards: u32) {
    println!("\n## Memory: {shards} shards queued at once\n");
    println!("| C | bytes in use | bytes per queued shard | target |");
    println!("|---:|---:|---:|---:|");
    for max_concurrency in [1, 16, 64] {
        let now = Instant::now();
        let before = alloc::in_use();
        let mut scheduler = Scheduler::new(word(shards, max_concurrency), now).expect("valid");
        for shard in 0..shards {
            let _ = scheduler.request(shard, now);
        }
        let used = alloc::in_use() - before;
        let per_shard = used as f64 / scheduler.len() as f64;
        println!("| {max_concurrency} | {used} | {per_shard:.1} | 32 |");
        black_box(&scheduler);
    }
}

/// The word every run gets: a budget of twice its shards (reconnects ask again), no
/// reset within it.
fn word(shards: u32, max_concurrency: u32) -> SessionStartLimit {
    SessionStartLimit {
        total: shards.saturating_mul(2),
        reset_after: DAY,
        ..limit(max_concurrency, shards.saturating_mul(2))
    }
}
