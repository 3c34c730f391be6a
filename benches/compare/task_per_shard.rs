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
use crate::spread::spread;
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

/// The three queues, in the order of the comparison's columns.
const QUEUES: [&str; 3] = ["ours", "twilight", "floor"];

/// One start-up of `QUEUES[queue]`, checked: its CPU time and allocations.
fn start_up(queue: usize, shards: u32) -> (Duration, usize) {
    let (time, allocated, schedule) = match queue {
        0 => measure(ours(shards)),
        1 => measure(theirs(shards)),
        _ => measure(floor(shards)),
    };
    check(QUEUES[queue], &schedule, shards);
    (time, allocated)
}

/// One queue's pattern alone, `runs` times, for a profiler (`--profile <ours|twilight|
/// floor> <N> <runs>`): under `valgrind --tool=callgrind` the instructions per grant
/// are exact, where CPU time on a shared machine is not. Each run is checked as the
/// comparison's are.
pub fn profile(which: &str, shards: u32, runs: u32) -> Result<(), String> {
    let queue = QUEUES
        .iter()
        .position(|&name| name == which)
        .ok_or_else(|| format!("--profile: no queue named {which:?}"))?;
    for _ in 0..runs {
        start_up(queue, shards);
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

/// One size's result: per round, CPU ns per grant of ours, theirs and the floor.
struct Rounds {
    cpu: Vec<[f64; 3]>,
    /// Allocations per grant (the same in every round).
    allocations: [f64; 3],
}

impl Rounds {
    /// Median and range of `column` over the rounds.
    fn column(&self, column: impl Fn(&[f64; 3]) -> f64) -> (f64, f64, f64) {
        spread(self.cpu.iter().map(column))
    }
}

/// Grants a round covers at least, per queue: a start-up of fewer shards is run
/// again, so that a round lasts long enough (about a third of a second per queue) for
/// the clock to be exact against it.
const GRANTS_PER_ROUND: u32 = 300_000;

/// Ours, theirs and the floor, `rounds` times, after one round that warms the allocator
/// and is not counted. A round runs the three in turn, one start-up each, again and
/// again until each has made [`GRANTS_PER_ROUND`] grants, and sums each one's CPU time:
/// this machine's speed changes from one tenth of a second to the next, and taking
/// turns this finely puts its changes on all three alike. Every start-up is checked.
fn compare(shards: u32, rounds: u32) -> Rounds {
    let repeats = GRANTS_PER_ROUND.div_ceil(shards).max(1);
    let grants = f64::from(shards) * f64::from(repeats);
    let round = |index: usize| {
        let mut cpu = [Duration::ZERO; 3];
        let mut allocations = [0; 3];
        for repeat in 0..repeats as usize {
            for turn in 0..3 {
                // Each start-up of the round begins with the next of the three, so
                // that none always runs first.
                let which = (index + repeat + turn) % 3;
                let (time, allocated) = start_up(which, shards);
                cpu[which] += time;
                allocations[which] += allocated;
            }
        }
        (
            cpu.map(|time| time.as_secs_f64() * 1e9 / grants),
            allocations.map(|count| count as f64 / grants),
        )
    };
    round(0);
    let mut cpu = Vec::with_capacity(rounds as usize);
    let mut allocations = [0.0; 3];
    for index in 0..rounds as usize {
        let this;
        (this, allocations) = round(index);
        cpu.push(this);
    }
    Rounds { cpu, allocations }
}

pub fn run(sizes: &[u32], rounds: u32) {
    println!(
        "\n## A task per shard, as bots call a queue: N shards at t = 0, C = 16, tokio paused clock\n"
    );
    println!(
        "CPU per grant: the median of {rounds} interleaved rounds, [lowest..highest], a \
         round runs the three in turn, a start-up each, until each made {GRANTS_PER_ROUND} grants; the \
         floor is the same tasks awaiting oneshots fired C per tick with no queue logic. Above the \
         floor is what the queue itself costs; the ratio is taken in each round, then its median."
    );
    println!();
    println!(
        "| N | ours | twilight 0.18 | floor | ours above floor | twilight above floor | ours / twilight above floor | allocations per grant: ours, twilight, floor |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for &shards in sizes {
        let rounds = compare(shards, rounds);
        let ns = |value: f64| human(Duration::from_nanos(value.max(0.0) as u64));
        let time = |(median, low, high): (f64, f64, f64)| {
            format!("{} [{}..{}]", ns(median), ns(low), ns(high))
        };
        let (ratio, low, high) =
            rounds.column(|&[ours, theirs, floor]| (ours - floor) / (theirs - floor));
        let allocations = rounds.allocations;
        println!(
            "| {shards} | {} | {} | {} | {} | {} | {ratio:.2} [{low:.2}..{high:.2}] | {:.2}, {:.2}, {:.2} |",
            time(rounds.column(|cpu| cpu[0])),
            time(rounds.column(|cpu| cpu[1])),
            time(rounds.column(|cpu| cpu[2])),
            time(rounds.column(|cpu| cpu[0] - cpu[2])),
            time(rounds.column(|cpu| cpu[1] - cpu[2])),
            allocations[0],
            allocations[1],
            allocations[2],
        );
    }
    println!("\nEach run: every grant at the optimum makespan, 0 rule violations (asserted).");
}
