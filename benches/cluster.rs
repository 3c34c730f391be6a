//! Cluster mode at P = 1, 2, 4 and 8 worker processes sharing one budget through a
//! real `redis-server` (started on loopback): makespan over the optimum, Redis
//! commands per grant, and commands sent while every process only waits.
//!
//! ```text
//! cargo bench --bench cluster --features redis
//! cargo bench --bench cluster --features redis -- --quick     # P = 1 and 4, fewer shards
//! ```
//!
//! Each run: 512 shards (a task per shard, spread over the workers), max_concurrency
//! 16, a 100 ms interval, a budget of 448: the last 64 shards wait for a reset that
//! does not come, and for one second after the last grant every worker only waits.
//! Discord is played by this process, judging every IDENTIFY as it arrives.

#[path = "../examples/cluster/run.rs"]
mod run;

use std::time::Duration;

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
    let (server, url) = run::start_redis().expect("a redis-server on loopback");
    let shards = if quick { 256 } else { 512 };
    let budget = shards - 64;
    let processes: &[u32] = if quick { &[1, 4] } else { &[1, 2, 4, 8] };
    println!(
        "cluster: {shards} shards, max_concurrency 16, interval 100 ms, budget {budget}; one redis-server on loopback"
    );
    println!(
        " P | makespan | optimum | over   | over the spacing kept ({:?}) | commands/grant | commands while all wait (1 s) | violations",
        run::spacing(Duration::from_millis(100))
    );
    for (run, &workers) in processes.iter().enumerate() {
        let plan = run::Plan {
            url: url.clone(),
            namespace: format!("bench-{run}"),
            workers,
            shards,
            max_concurrency: 16,
            interval: Duration::from_millis(100),
            budget,
            idle: Duration::from_secs(1),
        };
        match run::run(&plan, |_, _| {}) {
            Ok(outcome) => println!(
                "{workers:>2} | {:>7.3}s | {:>6.3}s | {:>+5.1}% | {:>+30.1}% | {:>14.2} | {:>29} | {}",
                outcome.makespan.as_secs_f64(),
                outcome.optimum.as_secs_f64(),
                (outcome.makespan.as_secs_f64() / outcome.optimum.as_secs_f64() - 1.0) * 100.0,
                (outcome.makespan.as_secs_f64() / outcome.optimum_kept.as_secs_f64() - 1.0) * 100.0,
                outcome.commands as f64 / f64::from(outcome.identifies.max(1)),
                outcome.idle_commands,
                outcome.violations.len()
            ),
            Err(message) => println!("{workers:>2} | failed: {message}"),
        }
    }
    drop(server);
}
