//! Our tokio queue and twilight-gateway-queue 0.18's `InMemoryQueue`, in the same
//! process, both on tokio's paused clock, on the same workloads.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use futures_core::Stream;
use identify_queue::{Config, SessionStartLimit};
use tokio::time::{Instant, sleep};
use twilight_gateway_queue::{InMemoryQueue, Queue as _};

use crate::DAY;
use crate::limit::limit;
use crate::{cpu_time, human, rules};

const INTERVAL: Duration = Duration::from_secs(5);
const C: u32 = 16;

fn paused_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime")
}

fn ours(limit: SessionStartLimit) -> identify_queue::tokio::Queue {
    identify_queue::tokio::Queue::with_limit(limit, Config::default()).expect("valid")
}

fn theirs(limit: SessionStartLimit) -> InMemoryQueue {
    InMemoryQueue::new(
        limit.max_concurrency as u16,
        limit.remaining,
        limit.reset_after,
        limit.total,
    )
}

/// A schedule: (offset from start, shard) per grant.
type Schedule = Vec<(Duration, u32)>;

/// Ours: every shard through one `acquire_all` stream (no task per shard, so the
/// harness costs next to nothing).
async fn ours_start_up(shards: u32) -> Schedule {
    let queue = ours(SessionStartLimit {
        total: shards.max(1000),
        reset_after: DAY,
        ..limit(C, shards)
    });
    let start = Instant::now();
    let mut grants = queue.acquire_all(0..shards);
    let mut schedule = Schedule::with_capacity(shards as usize);
    while let Some(permit) = poll_fn(|cx| Pin::new(&mut grants).poll_next(cx)).await {
        let permit = permit.expect("acquire");
        schedule.push((
            Instant::from_std(permit.granted_at()) - start,
            permit.shard(),
        ));
    }
    schedule
}

/// Theirs: every shard enqueued at once, receivers awaited in order (it grants in
/// shard order, so each is read the instant it resolves).
async fn theirs_start_up(shards: u32) -> Schedule {
    let queue = theirs(SessionStartLimit {
        total: shards.max(1000),
        reset_after: DAY,
        ..limit(C, shards)
    });
    let start = Instant::now();
    let receivers: Vec<_> = (0..shards).map(|shard| queue.enqueue(shard)).collect();
    let mut schedule = Schedule::with_capacity(shards as usize);
    for (shard, receiver) in (0..).zip(receivers) {
        receiver.await.expect("granted");
        schedule.push((start.elapsed(), shard));
    }
    schedule
}

/// CPU time and schedule of one run on a fresh paused runtime.
fn measure<F: Future<Output = Schedule>>(run: impl FnOnce() -> F) -> (Duration, Schedule) {
    let runtime = paused_runtime();
    let began = cpu_time();
    let schedule = runtime.block_on(run());
    (cpu_time() - began, schedule)
}

fn makespan(schedule: &Schedule) -> Duration {
    schedule.iter().map(|&(at, _)| at).max().unwrap_or_default()
}

/// One point per size: ns of CPU per shard, ours then theirs, for the plot.
pub type Compared = Vec<(u32, f64, f64)>;

pub fn run(sizes: &[u32]) -> Compared {
    println!("\n## Side by side: N shards at t = 0, C = 16, tokio paused clock, same process\n");
    println!(
        "| N | ours CPU | theirs CPU | ours / theirs | ours makespan | theirs makespan | optimum | violations (ours, theirs) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---|");
    let mut compared = Compared::new();
    for &shards in sizes {
        let ((ours_cpu, ours_schedule), (theirs_cpu, theirs_schedule)) = best_of_pairs(
            || measure(|| ours_start_up(shards)),
            || measure(|| theirs_start_up(shards)),
        );
        let optimum = INTERVAL * (shards.div_ceil(C) - 1);
        println!(
            "| {shards} | {} | {} | {:.2} | {} | {} | {} | {}, {} |",
            human(ours_cpu),
            human(theirs_cpu),
            ours_cpu.as_secs_f64() / theirs_cpu.as_secs_f64(),
            secs(makespan(&ours_schedule)),
            secs(makespan(&theirs_schedule)),
            secs(optimum),
            rules::violations(&ours_schedule, C, INTERVAL),
            rules::violations(&theirs_schedule, C, INTERVAL),
        );
        let per_shard = |cpu: Duration| cpu.as_secs_f64() * 1e9 / f64::from(shards);
        compared.push((shards, per_shard(ours_cpu), per_shard(theirs_cpu)));
    }
    late_request_latency();
    half_cancel(10_000);
    budget_refresh();
    compared
}

/// The best of five runs of each by CPU time, the two taking turns so that the
/// machine's noise falls on both alike.
fn best_of_pairs(
    mut ours: impl FnMut() -> (Duration, Schedule),
    mut theirs: impl FnMut() -> (Duration, Schedule),
) -> ((Duration, Schedule), (Duration, Schedule)) {
    let (mut best_ours, mut best_theirs) = (ours(), theirs());
    for _ in 0..4 {
        let next = ours();
        if next.0 < best_ours.0 {
            best_ours = next;
        }
        let next = theirs();
        if next.0 < best_theirs.0 {
            best_theirs = next;
        }
    }
    (best_ours, best_theirs)
}

fn secs(duration: Duration) -> String {
    format!("{:.3} s", duration.as_secs_f64())
}

/// Bucket 0 busy with ten shards; shard 1 (bucket 1, never used) asks at an offset
/// into the run. How long does it wait?
fn late_request_latency() {
    println!(
        "\n## Latency of a late request to an idle bucket (bucket 0 busy, shard 1 asks at offsets 0..5 s in 50 ms steps)\n"
    );
    let offsets: Vec<Duration> = (0..100)
        .map(|step| Duration::from_millis(50 * step))
        .collect();
    let mut ours_latency = Vec::new();
    let mut theirs_latency = Vec::new();
    for &offset in &offsets {
        ours_latency.push(paused_runtime().block_on(async {
            let queue = ours(SessionStartLimit {
                reset_after: DAY,
                ..limit(C, 1000)
            });
            let busy = queue.acquire_all((0..10).map(|round| round * C));
            let mut busy = Box::pin(busy);
            // Ask for the busy shards (the first is granted at once).
            poll_fn(|cx| {
                let _ = busy.as_mut().poll_next(cx);
                Poll::Ready(())
            })
            .await;
            sleep(offset).await;
            let asked = Instant::now();
            let permit = queue.acquire(1).await.expect("acquire");
            Instant::from_std(permit.granted_at()) - asked
        }));
        theirs_latency.push(paused_runtime().block_on(async {
            let queue = theirs(SessionStartLimit {
                reset_after: DAY,
                ..limit(C, 1000)
            });
            let _busy: Vec<_> = (0..10).map(|round| queue.enqueue(round * C)).collect();
            tokio::task::yield_now().await;
            sleep(offset).await;
            let asked = Instant::now();
            queue.enqueue(1).await.expect("granted");
            asked.elapsed()
        }));
    }
    println!("| queue | min | median | p90 | max |");
    println!("|---|---:|---:|---:|---:|");
    for (name, mut latency) in [("ours", ours_latency), ("theirs", theirs_latency)] {
        latency.sort();
        let at = |q: f64| secs(latency[((latency.len() - 1) as f64 * q) as usize]);
        println!(
            "| {name} | {} | {} | {} | {} |",
            at(0.0),
            at(0.5),
            at(0.9),
            at(1.0)
        );
    }
}

/// N shards ask at once; every other round of each bucket gives up at once.
fn half_cancel(shards: u32) {
    println!(
        "\n## Half the waiters cancel: {shards} shards ask, every other round of each bucket drops its request\n"
    );
    let keep = |shard: u32| (shard / C) % 2 == 0;
    let kept = (0..shards).filter(|&shard| keep(shard)).count() as u32;
    let optimum = INTERVAL * (kept.div_ceil(C) - 1);
    let (ours_cpu, ours_schedule) = measure(|| async move {
        let queue = ours(SessionStartLimit {
            total: shards.max(1000),
            reset_after: DAY,
            ..limit(C, shards)
        });
        let start = Instant::now();
        let mut waiting: Vec<_> = (0..shards)
            .map(|shard| Box::pin(queue.acquire(shard)))
            .collect();
        let mut granted = vec![None; shards as usize];
        // Poll each once: every request is made, in order.
        poll_fn(|cx| {
            for (slot, future) in granted.iter_mut().zip(&mut waiting) {
                if let Poll::Ready(permit) = future.as_mut().poll(cx) {
                    *slot = Some(Instant::from_std(permit.expect("acquire").granted_at()) - start);
                }
            }
            Poll::Ready(())
        })
        .await;
        let mut schedule = Schedule::new();
        for ((shard, future), slot) in (0..).zip(waiting).zip(granted) {
            if !keep(shard) {
                continue; // dropped: cancelled
            }
            let at = match slot {
                Some(at) => at,
                None => Instant::from_std(future.await.expect("acquire").granted_at()) - start,
            };
            schedule.push((at, shard));
        }
        schedule
    });
    let (theirs_cpu, theirs_schedule) = measure(|| async move {
        let queue = theirs(SessionStartLimit {
            total: shards.max(1000),
            reset_after: DAY,
            ..limit(C, shards)
        });
        let start = Instant::now();
        let receivers: Vec<_> = (0..shards).map(|shard| queue.enqueue(shard)).collect();
        let mut schedule = Schedule::new();
        for (shard, receiver) in (0..).zip(receivers) {
            if keep(shard) {
                receiver.await.expect("granted");
                schedule.push((start.elapsed(), shard));
            }
        }
        schedule
    });
    println!("| queue | CPU | makespan of the {kept} left | optimum | violations |");
    println!("|---|---:|---:|---:|---:|");
    for (name, cpu, schedule) in [
        ("ours", ours_cpu, ours_schedule),
        ("theirs", theirs_cpu, theirs_schedule),
    ] {
        println!(
            "| {name} | {} | {} | {} | {} |",
            human(cpu),
            secs(makespan(&schedule)),
            secs(optimum),
            rules::violations(&schedule, C, INTERVAL)
        );
    }
}

/// 100 shards, a budget of 50 resetting in an hour; at 60 s a fresh limit arrives.
fn budget_refresh() {
    println!(
        "\n## Budget exhausted, then refreshed by an update at 60 s (100 shards, 50 left, reset in 1 h)\n"
    );
    let exhausted = limit(C, 50);
    let fresh = SessionStartLimit {
        reset_after: DAY,
        ..limit(C, 1000)
    };
    let resume_ours = paused_runtime().block_on(async move {
        let queue = ours(exhausted);
        let start = Instant::now();
        let mut grants = Box::pin(queue.acquire_all(0..100));
        let mut times = Vec::new();
        let updater = {
            let queue = queue.clone();
            async move {
                sleep(Duration::from_secs(60)).await;
                queue.update(fresh).expect("valid");
            }
        };
        let collect = async {
            while let Some(permit) = poll_fn(|cx| grants.as_mut().poll_next(cx)).await {
                times.push(Instant::from_std(permit.expect("acquire").granted_at()) - start);
            }
        };
        tokio::join!(updater, collect);
        times[50]
    });
    let resume_theirs = paused_runtime().block_on(async move {
        let queue = theirs(exhausted);
        let start = Instant::now();
        let receivers: Vec<_> = (0..100).map(|shard| queue.enqueue(shard)).collect();
        let updater = {
            let queue = queue.clone();
            async move {
                sleep(Duration::from_secs(60)).await;
                queue.update(C as u16, fresh.remaining, fresh.reset_after, fresh.total);
            }
        };
        let collect = async {
            let mut times = Vec::new();
            for receiver in receivers {
                receiver.await.expect("granted");
                times.push(start.elapsed());
            }
            times
        };
        let ((), times) = tokio::join!(updater, collect);
        times[50]
    });
    println!("| queue | 51st grant (first after the budget ran out) |");
    println!("|---|---:|");
    println!("| ours | {} |", secs(resume_ours));
    println!("| theirs | {} |", secs(resume_theirs));
}
