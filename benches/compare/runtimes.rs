//! The same start-up through each runtime adapter, a task per shard as a bot has.

use std::time::{Duration, Instant};

use identify_queue::runtime::QueueStats;
use identify_queue::{Config, SessionStartLimit};

use crate::DAY;
use crate::limit::limit;
use crate::{cpu_time, human};

const C: u32 = 16;

struct Run {
    wall: Duration,
    cpu: Duration,
    stats: QueueStats,
}

/// The start-up on tokio: `interval: None` is the paused clock with Discord's 5 s,
/// `Some` the real clock with that interval.
fn tokio(shards: u32, interval: Option<Duration>) -> Run {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(interval.is_none())
        .build()
        .expect("runtime");
    let config = interval.map_or_else(Config::default, |interval| {
        Config::default().interval(interval)
    });
    timed(|| {
        runtime.block_on(async {
            let queue =
                identify_queue::tokio::Queue::with_limit(word(shards), config).expect("valid");
            let tasks: Vec<_> = (0..shards)
                .map(|shard| {
                    let queue = queue.clone();
                    tokio::spawn(async move { drop(queue.acquire(shard).await.expect("acquire")) })
                })
                .collect();
            for task in tasks {
                task.await.expect("task");
            }
            queue.stats()
        })
    })
}

/// The word every run gets: a budget of exactly its shards, no reset within it.
fn word(shards: u32) -> SessionStartLimit {
    SessionStartLimit {
        total: shards,
        reset_after: DAY,
        ..limit(C, shards)
    }
}

fn smol(shards: u32, interval: Duration) -> Run {
    timed(|| {
        let config = Config::default().interval(interval);
        let queue = identify_queue::smol::Queue::with_limit(word(shards), config).expect("valid");
        let executor = smol::LocalExecutor::new();
        smol::block_on(executor.run(async {
            let tasks: Vec<_> = (0..shards)
                .map(|shard| {
                    let queue = queue.clone();
                    executor
                        .spawn(async move { drop(queue.acquire(shard).await.expect("acquire")) })
                })
                .collect();
            for task in tasks {
                task.await;
            }
        }));
        queue.stats()
    })
}

fn async_std(shards: u32, interval: Duration) -> Run {
    timed(|| {
        let config = Config::default().interval(interval);
        let queue =
            identify_queue::async_std::Queue::with_limit(word(shards), config).expect("valid");
        async_std::task::block_on(async {
            let tasks: Vec<_> = (0..shards)
                .map(|shard| {
                    let queue = queue.clone();
                    async_std::task::spawn(async move {
                        drop(queue.acquire(shard).await.expect("acquire"))
                    })
                })
                .collect();
            for task in tasks {
                task.await;
            }
        });
        queue.stats()
    })
}

fn timed(run: impl FnOnce() -> QueueStats) -> Run {
    let (wall, cpu) = (Instant::now(), cpu_time());
    let stats = run();
    Run {
        wall: wall.elapsed(),
        cpu: cpu_time() - cpu,
        stats,
    }
}

pub fn run(shards: u32) {
    let interval = Duration::from_millis(1);
    println!(
        "\n## Runtime adapters: {shards} shards, a task each, C = 16 (paused: 5 s interval; real time: {} interval)\n",
        human(interval)
    );
    println!("| runtime | clock | wall | CPU | CPU per grant | wake-ups | timer resets |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    let runs = [
        ("tokio", "paused", tokio(shards, None)),
        ("tokio", "real", tokio(shards, Some(interval))),
        ("smol", "real", smol(shards, interval)),
        ("async-std (smol shim)", "real", async_std(shards, interval)),
    ];
    for (runtime, clock, run) in runs {
        println!(
            "| {runtime} | {clock} | {} | {} | {} | {} | {} |",
            human(run.wall),
            human(run.cpu),
            human(run.cpu / shards),
            run.stats.wakeups,
            run.stats.timer_resets
        );
    }
}
