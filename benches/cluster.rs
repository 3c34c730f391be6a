//! Cluster mode: worker processes sharing one budget through a real `redis-server`
//! (started on loopback), at P = 1, 4 and 8 processes next to Redis, and at P = 4
//! behind a network of 1, 5, 20 and 50 ms of round trip (a fault proxy on loopback
//! delaying every chunk by half of it each way). Makespan over the optimum, Redis
//! commands per grant, units spent without an IDENTIFY, commands while every process
//! only waits.
//!
//! ```text
//! cargo bench --bench cluster --features redis                 # 3 interleaved runs
//! cargo bench --bench cluster --features redis -- --runs 5
//! cargo bench --bench cluster --features redis -- --quick      # one run, fewer rows
//! ```
//!
//! Each run: 512 shards (a task per shard, spread over the workers), max_concurrency
//! 16, a 100 ms interval, a budget of 448: the last 64 shards wait for a reset that
//! does not come, and for one second after the last grant every worker only waits.
//! Discord is played by this process, judging every IDENTIFY as it arrives. Each row
//! is the median of the runs, with the spread (lowest to highest) in brackets; the
//! rows run interleaved (row 1, 2, ..., then again), so that the machine's noise
//! spreads over all of them.

#[path = "../tests/support/fake_discord.rs"]
mod fake_discord;
#[path = "../tests/support/fault_proxy.rs"]
mod fault_proxy;
#[path = "../tests/support/judge.rs"]
mod judge;
#[path = "../examples/cluster/run.rs"]
mod run;
#[path = "support/spread.rs"]
mod spread;

use std::time::Duration;

use spread::spread;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--worker") {
        if let Err(message) = run::worker(&args[1..]) {
            eprintln!("worker: {message}");
            std::process::exit(1);
        }
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let runs: usize = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(if quick { 1 } else { 3 });
    let (server, url) = run::start_redis().expect("a redis-server on loopback");
    let shards = if quick { 256 } else { 512 };
    let budget = shards - 64;
    let interval = Duration::from_millis(100);
    // (processes, round trip in ms)
    let rows: &[(u32, u64)] = if quick {
        &[(4, 0), (4, 20)]
    } else {
        &[(1, 0), (4, 0), (8, 0), (4, 1), (4, 5), (4, 20), (4, 50)]
    };
    println!(
        "cluster: {shards} shards, max_concurrency 16, interval 100 ms, budget {budget}; one redis-server on loopback; median of {runs} interleaved runs [lowest .. highest]"
    );
    let mut outcomes: Vec<Vec<run::Outcome>> = rows.iter().map(|_| Vec::new()).collect();
    for repetition in 0..runs {
        for (row, &(workers, round_trip)) in rows.iter().enumerate() {
            let plan = run::Plan {
                url: url.clone(),
                namespace: format!("bench-{repetition}-{row}"),
                workers,
                shards,
                max_concurrency: 16,
                interval,
                budget,
                idle: Duration::from_secs(1),
                round_trip: Duration::from_millis(round_trip),
                jitter: Duration::ZERO,
            };
            match run::run(&plan, |_, _| {}) {
                Ok(outcome) => outcomes[row].push(outcome),
                Err(message) => {
                    println!("P = {workers}, round trip {round_trip} ms: failed: {message}")
                }
            }
        }
    }
    println!(
        " P | round trip (measured) | window | makespan           | over the optimum      | over the spacing kept | commands/grant     | wasted | while all wait | violations"
    );
    for (row, &(workers, round_trip)) in rows.iter().enumerate() {
        let outcomes = &outcomes[row];
        if outcomes.is_empty() {
            continue;
        }
        let over = |o: &run::Outcome, optimum: Duration| {
            (o.makespan.as_secs_f64() / optimum.as_secs_f64() - 1.0) * 100.0
        };
        let makespan = spread(outcomes.iter().map(|o| o.makespan.as_secs_f64()));
        let optimum = spread(outcomes.iter().map(|o| over(o, o.optimum)));
        let kept = spread(outcomes.iter().map(|o| over(o, o.optimum_kept)));
        let per_grant = spread(
            outcomes
                .iter()
                .map(|o| o.commands as f64 / f64::from(o.identifies.max(1))),
        );
        let measured = spread(
            outcomes
                .iter()
                .map(|o| o.measured_round_trip.as_secs_f64() * 1000.0),
        );
        let window = spread(outcomes.iter().map(|o| o.window.as_secs_f64() * 1000.0));
        println!(
            "{workers:>2} | {round_trip:>3} ms ({:>5.1} ms)      | {:>3.0} ms | {:.3}s [{:.3}..{:.3}] | {:+5.1}% [{:+.1}..{:+.1}] | {:+5.1}% [{:+.1}..{:+.1}] | {:.2} [{:.2}..{:.2}] | {:>6} | {:>14} | {}",
            measured.0,
            window.0,
            makespan.0,
            makespan.1,
            makespan.2,
            optimum.0,
            optimum.1,
            optimum.2,
            kept.0,
            kept.1,
            kept.2,
            per_grant.0,
            per_grant.1,
            per_grant.2,
            outcomes.iter().map(|o| o.wasted).max().unwrap_or(0),
            outcomes.iter().map(|o| o.idle_commands).max().unwrap_or(0),
            outcomes.iter().map(|o| o.violations.len()).sum::<usize>(),
        );
    }
    drop(server);
}
