//! A big bot's start-up in cluster mode: several worker processes share one budget
//! and one set of buckets through Redis, each with its own slice of the shards. A
//! stand-in for Discord (this process) judges every IDENTIFY as it arrives; the
//! report gives the makespan against the optimum, Redis commands per grant, and the
//! rule check.
//!
//! ```text
//! cargo run --example cluster --features redis
//! cargo run --example cluster --features redis -- --workers 8 --shards 512 --budget 400
//! REDIS_URL=redis://127.0.0.1:6379/0 cargo run --example cluster --features redis
//! ```
//!
//! Without `--url` (or `REDIS_URL`) it starts its own `redis-server` on a free loopback
//! port in a temp dir: Debian/Ubuntu `apt-get install redis-server`, macOS
//! `brew install redis`. The interval is short (200 ms) so that the run takes seconds;
//! the queue does not care.
//!
//! `--rtt-ms 20` puts a network between the workers and Redis: a proxy on loopback
//! that delays every chunk by half of it each way (`--jitter-ms` more or less).

#[path = "../../tests/support/fake_discord.rs"]
mod fake_discord;
#[path = "../../tests/support/fault_proxy.rs"]
mod fault_proxy;
#[path = "../../tests/support/judge.rs"]
mod judge;
mod run;

use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: cluster [options]
  --workers P       worker processes (default 4)
  --shards N        shards over all workers (default 256)
  --concurrency C   max_concurrency (default 16)
  --interval-ms MS  spacing per bucket (default 200)
  --budget B        session starts left (default: the shards)
  --url URL         Redis to use (default: $REDIS_URL, else a redis-server of its own)
  --rtt-ms MS       round trip added between the workers and Redis by a proxy (default 0)
  --jitter-ms MS    jitter of each way through the proxy (default 0)
  --bars N          progress rows (default 10)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--worker") {
        return match run::worker(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("worker: {message}");
                ExitCode::FAILURE
            }
        };
    }
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    match parent(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(message) => {
            eprintln!("error: {message}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn parent(args: &[String]) -> Result<bool, String> {
    let mut plan = run::Plan {
        url: std::env::var("REDIS_URL").unwrap_or_default(),
        namespace: format!("cluster-example-{}", std::process::id()),
        workers: 4,
        shards: 256,
        max_concurrency: 16,
        interval: Duration::from_millis(200),
        budget: 0,
        idle: Duration::from_secs(1),
        round_trip: Duration::ZERO,
        jitter: Duration::ZERO,
    };
    let mut bars = 10;
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let mut value = || rest.next().ok_or(format!("{flag} needs a value"));
        let number = |text: &String| {
            text.parse::<u32>()
                .map_err(|_| format!("{flag}: not a number: {text}"))
        };
        match flag.as_str() {
            "--workers" => plan.workers = number(value()?)?,
            "--shards" => plan.shards = number(value()?)?,
            "--concurrency" => plan.max_concurrency = number(value()?)?,
            "--interval-ms" => plan.interval = Duration::from_millis(number(value()?)?.into()),
            "--budget" => plan.budget = number(value()?)?,
            "--url" => plan.url = value()?.clone(),
            "--rtt-ms" => plan.round_trip = Duration::from_millis(number(value()?)?.into()),
            "--jitter-ms" => plan.jitter = Duration::from_millis(number(value()?)?.into()),
            "--bars" => bars = number(value()?)?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if plan.workers == 0 || plan.shards == 0 || plan.max_concurrency == 0 || plan.interval.is_zero()
    {
        return Err("--workers, --shards, --concurrency and --interval-ms must be positive".into());
    }
    if plan.budget == 0 {
        plan.budget = plan.shards;
    }
    let _server = if plan.url.is_empty() {
        let (server, url) = run::start_redis()?;
        plan.url = url;
        Some(server)
    } else {
        None
    };
    println!(
        "cluster: {} shards in {} worker processes, max_concurrency {}, interval {:?}, budget {}, Redis {}{}",
        plan.shards,
        plan.workers,
        plan.max_concurrency,
        plan.interval,
        plan.budget,
        plan.url,
        if plan.round_trip.is_zero() {
            String::new()
        } else {
            format!(
                " through a proxy adding {:?} of round trip (± {:?} each way)",
                plan.round_trip, plan.jitter
            )
        }
    );
    let started = Instant::now();
    let mut shown = 0;
    let outcome = run::run(&plan, |done, total| {
        let row = done * bars / total.max(1);
        if row > shown {
            shown = row;
            let filled = (done * 30 / total.max(1)) as usize;
            println!(
                "  [{}{}] {done:>5}/{total} identified  {:>6.1}s",
                "#".repeat(filled),
                ".".repeat(30 - filled),
                started.elapsed().as_secs_f64()
            );
        }
    })?;
    let grants = u64::from(outcome.identifies.max(1));
    println!(
        "identified      {} of {} shards (budget {})",
        outcome.identifies, plan.shards, plan.budget
    );
    let over = |optimum: Duration| {
        (outcome.makespan.as_secs_f64() / optimum.as_secs_f64().max(1e-9) - 1.0) * 100.0
    };
    println!(
        "makespan        {:.3}s, optimum {:.3}s ({:+.1}%); at the spacing kept ({:?}), {:.3}s ({:+.1}%)",
        outcome.makespan.as_secs_f64(),
        outcome.optimum.as_secs_f64(),
        over(outcome.optimum),
        run::spacing(plan.interval, outcome.window),
        outcome.optimum_kept.as_secs_f64(),
        over(outcome.optimum_kept),
    );
    println!(
        "Redis commands  {} for {} grants: {:.2} per grant; {} while every worker only waited {:?}",
        outcome.commands,
        outcome.identifies,
        outcome.commands as f64 / grants as f64,
        outcome.idle_commands,
        plan.idle
    );
    println!(
        "network         round trip {:?} measured by the workers, delivery window {:?}; {} units spent without an IDENTIFY",
        outcome.measured_round_trip, outcome.window, outcome.wasted
    );
    if outcome.violations.is_empty() {
        println!(
            "rules           0 violations (judged on arrival, {:?} of loopback jitter allowed)",
            fake_discord::JITTER
        );
    } else {
        for violation in &outcome.violations {
            println!("  RULE BROKEN: {violation}");
        }
    }
    Ok(outcome.violations.is_empty() && outcome.identifies == plan.shards.min(plan.budget))
}
