//! What the three runtime examples share: a small bot whose shards connect, ask the
//! queue for their IDENTIFY slot after HELLO, and release it on READY (hold mode).
//! Each example supplies only its runtime's spawn and sleep.

use std::time::{Duration, Instant};

use identify_queue::runtime::{Queue, QueueStats, Runtime};
use identify_queue::{Config, SessionStartLimit};

pub const SHARDS: u32 = 32;
/// Short, so that the run ends in seconds.
pub const INTERVAL: Duration = Duration::from_millis(250);

pub const LIMIT: SessionStartLimit = SessionStartLimit {
    total: 1000,
    remaining: 1000,
    reset_after: Duration::from_secs(86_400),
    max_concurrency: 4,
};

/// Hold mode: a bucket waits for its shard's READY (at most 2 s), never less than
/// the interval.
pub fn config() -> Config {
    Config::default()
        .interval(INTERVAL)
        .hold_until_release(Duration::from_secs(2))
}

/// How long shard `shard` takes to connect and receive HELLO.
pub fn hello_after(shard: u32) -> Duration {
    Duration::from_millis(20 + u64::from(shard % 5) * 10)
}

/// How long after IDENTIFY its READY arrives.
pub fn ready_after(shard: u32) -> Duration {
    Duration::from_millis(100 + u64::from(shard % 3) * 150)
}

/// One shard's life up to READY: `sleep` is the runtime's. Returns when it was granted.
pub async fn run_shard<R, S, F>(
    queue: Queue<R>,
    shard: u32,
    start: Instant,
    sleep: S,
) -> Result<Duration, identify_queue::AcquireError>
where
    R: Runtime,
    S: Fn(Duration) -> F,
    F: Future<Output = ()>,
{
    sleep(hello_after(shard)).await;
    let permit = queue.acquire(shard).await?;
    let granted_at = start.elapsed();
    println!(
        "{:>8.3}s  shard {shard:>2} (bucket {}) sends IDENTIFY",
        granted_at.as_secs_f64(),
        shard % LIMIT.max_concurrency
    );
    // READY arrives a little later: the bucket is free from then on (never before the
    // interval).
    sleep(ready_after(shard)).await;
    permit.release();
    Ok(granted_at)
}

pub fn summary(last_grant: Duration, stats: QueueStats) {
    println!(
        "{SHARDS} shards, last IDENTIFY at {:.3}s (optimum {:.3}s in timer mode); \
         {} wake-ups, {} timer resets",
        last_grant.as_secs_f64(),
        (INTERVAL * (SHARDS / LIMIT.max_concurrency - 1)).as_secs_f64(),
        stats.wakeups,
        stats.timer_resets
    );
}
