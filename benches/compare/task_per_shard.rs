//! The way bots call a queue: a task per shard, each awaiting its own grant. Ours
//! (tokio queue), twilight-gateway-queue 0.18's `InMemoryQueue`, and the runtime's own
//! floor for that pattern (the same tasks awaiting oneshots that one task fires, C per
//! tick, with no queue logic at all), on tokio's paused clock, in one process, the
//! three taking turns so that the machine's noise falls on all alike.

use std::time::Duration;

use identify_queue::{Config, SessionStartLimit};
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep};
use twilight_gateway_queue::{InMemoryQueue, Queue as _};

use crate::DAY;
use crate::limit::limit;
use crate::{alloc, cpu_time, human, rules};

const INTERVAL: Duration = Duration::from_secs(5);
const C: u32 = 16;

/// A schedule: (offset from start, shard) per grant.
type Schedule = Vec<(Duration, u32)>;

/// Runs `shards` tasks, each awaiting what `wait(shard)` gives; collects when each
/// resolved. The harness is the same for all three.
async fn a_task_per_shard<F>(shards: u32, mut wait: impl FnMut(u32) -> F) -> Schedule
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..shards)
        .map(|shard| {
            let waiting = wait(shard);
            tokio::spawn(async move {
                waiting.await;
                (start.elapsed(), shard)
            })
        })
        .collect();
    let mut schedule = Schedule::with_capacity(shards as usize);
    for task in tasks {
        schedule.push(task.await.expect("task"));
    }
    schedule
}

async fn ours(shards: u32) -> Schedule {
    let queue = identify_queue::tokio::Queue::with_limit(
        SessionStartLimit {
            total: shards.max(1000),
            reset_after: DAY,
            ..limit(C, shards)
        },
        Config::default(),
    )
    .expect("valid");
    a_task_per_shard(shards, |shard| {
        let queue = queue.clone();
        async move { drop(queue.acquire(shard).await.expect("acquire")) }
    })
    .await
}

async fn theirs(shards: u32) -> Schedule {
    let limit = SessionStartLimit {
        total: shards.max(1000),
        reset_after: DAY,
        ..limit(C, shards)
    };
    let queue = InMemoryQueue::new(C as u16, limit.remaining, limit.reset_after, limit.total);
    a_task_per_shard(shards, |shard| {
        let receiver = queue.enqueue(shard);
        async move { receiver.await.expect("granted") }
    })
    .await
}

/// No queue: one task fires the shards' oneshots C at a time, every interval.
async fn floor(shards: u32) -> Schedule {
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..shards).map(|_| oneshot::channel()).unzip();
    let firing = tokio::spawn(async move {
        let mut senders = senders.into_iter();
        loop {
            for _ in 0..C {
                let Some(sender) = senders.next() else {
                    return;
                };
                let _ = sender.send(());
            }
            sleep(INTERVAL).await;
        }
    });
    let mut receivers: Vec<_> = receivers.into_iter().map(Some).collect();
    let schedule = a_task_per_shard(shards, |shard| {
        let receiver = receivers[shard as usize].take().expect("one each");
        async move { receiver.await.expect("fired") }
    })
    .await;
    firing.await.expect("firing");
    schedule
}

/// One run's CPU time, allocations (the runtime's own included) and schedule.
fn measure<F: std::future::Future<Output = Schedule>>(run: F) -> (Duration, usize, Schedule) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    let (began, allocations) = (cpu_time(), alloc::allocations());
    let schedule = runtime.block_on(run);
    (
        cpu_time() - began,
        alloc::allocations() - allocations,
        schedule,
    )
}

/// One queue's pattern alone, `runs` times, for a profiler (`--profile <ours|twilight|
/// floor> <N> <runs>`): under `valgrind --tool=callgrind` the instructions per grant
/// are exact, where CPU time on a shared machine is not. Each run is checked as the
/// comparison's are.
pub fn profile(which: &str, shards: u32, runs: u32) -> Result<(), String> {
    for _ in 0..runs {
        let (_, _, schedule) = match which {
            "ours" => measure(ours(shards)),
            "twilight" => measure(theirs(shards)),
            "floor" => measure(floor(shards)),
            other => return Err(format!("--profile: no queue named {other:?}")),
        };
        check(which, &schedule, shards);
    }
    println!(
        "{which}: {runs} runs of {shards} shards, {} grants",
        u64::from(runs) * u64::from(shards)
    );
    Ok(())
}

fn makespan(schedule: &Schedule) -> Duration {
    schedule.iter().map(|&(at, _)| at).max().unwrap_or_default()
}

/// Every shard granted once, at the optimum makespan, with no rule broken.
fn check(name: &str, schedule: &Schedule, shards: u32) {
    let optimum = INTERVAL * (shards.div_ceil(C) - 1);
    assert_eq!(schedule.len(), shards as usize, "{name}");
    assert_eq!(makespan(schedule), optimum, "{name}: makespan");
    assert_eq!(
        rules::violations(schedule, C, INTERVAL),
        0,
        "{name}: violations"
    );
}

/// Ours, theirs and the floor: ns of CPU per grant (the best of `rounds` turns each)
/// and allocations per grant (the same in every turn).
pub fn compare(shards: u32, rounds: u32) -> ([f64; 3], [f64; 3]) {
    let mut best = [Duration::MAX; 3];
    let mut allocations = [0.0; 3];
    let mut schedules: [Schedule; 3] = Default::default();
    for _ in 0..rounds {
        let runs = [
            measure(ours(shards)),
            measure(theirs(shards)),
            measure(floor(shards)),
        ];
        for (index, (cpu, allocated, schedule)) in runs.into_iter().enumerate() {
            allocations[index] = allocated as f64 / f64::from(shards);
            if cpu < best[index] {
                best[index] = cpu;
                schedules[index] = schedule;
            }
        }
    }
    for (name, schedule) in ["ours", "theirs", "floor"].iter().zip(&schedules) {
        check(name, schedule, shards);
    }
    (
        best.map(|cpu| cpu.as_secs_f64() * 1e9 / f64::from(shards)),
        allocations,
    )
}

pub fn run(sizes: &[u32], rounds: u32) {
    println!(
        "\n## A task per shard, as bots call a queue: N shards at t = 0, C = 16, tokio paused clock\n"
    );
    println!(
        "CPU per grant, best of {rounds} interleaved runs each; the floor is the same tasks awaiting \
         oneshots fired C per tick with no queue logic. Above the floor is what the queue itself costs."
    );
    println!();
    println!(
        "| N | ours | twilight 0.18 | floor | ours above floor | twilight above floor | ours / twilight above floor | allocations per grant: ours, twilight, floor |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &shards in sizes {
        let ([ours, theirs, floor], allocations) = compare(shards, rounds);
        let ns = |value: f64| human(Duration::from_nanos(value.max(0.0) as u64));
        println!(
            "| {shards} | {} | {} | {} | {} | {} | {:.2} | {:.2}, {:.2}, {:.2} |",
            ns(ours),
            ns(theirs),
            ns(floor),
            ns(ours - floor),
            ns(theirs - floor),
            (ours - floor) / (theirs - floor),
            allocations[0],
            allocations[1],
            allocations[2],
        );
    }
    println!("\nEach run: every grant at the optimum makespan, 0 rule violations (asserted).");
}
