//! The benchmark: cost and scale of the core, memory per queued shard, the tokio queue
//! side by side with twilight-gateway-queue's `InMemoryQueue` in the same process, and
//! the runtime adapters' overhead. Prints tables and ratios; writes `benches/scale.svg`.
//!
//! `cargo bench --bench compare --all-features` (add `-- --quick` for a shorter run,
//! `-- --core` for the core scheduler's tables alone, `-- --tasks` for the task-per-shard
//! comparison alone, `-- --profile <ours|twilight|floor> <N> <runs>` for one queue's
//! task-per-shard runs alone, to run under a profiler)

mod alloc;
mod core;
#[path = "../../tests/support/limit.rs"]
mod limit;
mod plot;
mod rules;
mod runtimes;
mod side_by_side;
#[path = "../support/spread.rs"]
mod spread;
mod task_per_shard;

use std::time::Duration;

/// A reset no run reaches.
pub const DAY: Duration = Duration::from_secs(86_400);

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

fn main() {
    // `cargo bench` passes `--bench`; anything else we ignore but our flags.
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|arg| arg == "--profile") {
        let number = |index: usize| args.get(index).and_then(|arg| arg.parse::<u32>().ok());
        let (Some(which), Some(shards), Some(runs)) =
            (args.get(at + 1), number(at + 2), number(at + 3))
        else {
            eprintln!("usage: --profile <ours|twilight|floor> <N> <runs>");
            std::process::exit(2);
        };
        if let Err(error) = task_per_shard::profile(which, shards, runs) {
            eprintln!("{error}");
            std::process::exit(2);
        }
        return;
    }
    let has = |flag: &str| args.iter().any(|arg| arg == flag);
    let quick = has("--quick");
    println!(
        "identify-queue benchmark{}",
        if quick { " (quick)" } else { "" }
    );
    println!("machine: {}", machine());

    let sizes: &[u32] = if quick {
        &[1_000, 10_000, 100_000]
    } else {
        &[1_000, 10_000, 100_000, 1_000_000]
    };
    if !has("--core") {
        let sizes: &[u32] = if quick {
            &[1_000, 10_000]
        } else {
            &[1_000, 10_000, 100_000]
        };
        task_per_shard::run(sizes, if quick { 7 } else { 15 });
        if has("--tasks") {
            return;
        }
    }
    let core = core::run(sizes);
    core::memory(if quick { 100_000 } else { 1_000_000 });
    if has("--core") {
        return;
    }
    let compared = side_by_side::run(if quick {
        &[1_000, 10_000]
    } else {
        &[1_000, 10_000, 100_000]
    });
    runtimes::run(if quick { 2_000 } else { 10_000 });
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/scale.svg");
    match std::fs::write(path, plot::svg(&core, &compared)) {
        Ok(()) => println!("\nplot: {path}"),
        Err(error) => println!("\nplot not written: {error}"),
    }
}

/// CPU time of this process so far (user + system, all threads).
pub fn cpu_time() -> Duration {
    let mut spec = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the pointer it is given.
    let result = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut spec) };
    if result != 0 {
        return Duration::ZERO;
    }
    Duration::new(spec.tv_sec as u64, spec.tv_nsec as u32)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|name| name.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{cpu}, {cores} cores, {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// `1.234 ms`, `56.7 ns`.
pub fn human(duration: Duration) -> String {
    let nanos = duration.as_secs_f64() * 1e9;
    if nanos >= 1e9 {
        format!("{:.3} s", nanos / 1e9)
    } else if nanos >= 1e6 {
        format!("{:.3} ms", nanos / 1e6)
    } else if nanos >= 1e3 {
        format!("{:.2} µs", nanos / 1e3)
    } else {
        format!("{nanos:.1} ns")
    }
}
