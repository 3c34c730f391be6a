//! A 32-shard bot on tokio: each shard asks for its IDENTIFY slot after HELLO and
//! releases it on READY (hold mode), with a short interval so it ends in seconds.
//!
//! `cargo run --example tokio --features tokio`

use std::time::Duration;

use identify_queue::{Config, SessionStartLimit};

const SHARDS: u32 = 32;
const INTERVAL: Duration = Duration::from_millis(250);

#[tokio::main]
async fn main() -> Result<(), identify_queue::Error> {
    let limit = SessionStartLimit {
        total: 1000,
        remaining: 1000,
        reset_after: Duration::from_secs(86_400),
        max_concurrency: 4,
    };
    let config = Config::default()
        .interval(INTERVAL)
        .hold_until_release(Duration::from_secs(2));
    let queue = identify_queue::tokio::Queue::with_limit(limit, config)?;
    let start = tokio::time::Instant::now();

    let shards = (0..SHARDS).map(|shard| {
        let queue = queue.clone();
        tokio::spawn(async move {
            // Connect and receive HELLO.
            tokio::time::sleep(Duration::from_millis(20 + u64::from(shard % 5) * 10)).await;
            let permit = queue.acquire(shard).await?;
            let granted_at = start.elapsed();
            println!(
                "{:>8.3}s  shard {shard:>2} (bucket {}) sends IDENTIFY",
                granted_at.as_secs_f64(),
                shard % limit.max_concurrency
            );
            // READY arrives a little later: the bucket is free again from then on
            // (but never before the interval).
            tokio::time::sleep(Duration::from_millis(100 + u64::from(shard % 3) * 150)).await;
            permit.release();
            Ok::<_, identify_queue::Error>(granted_at)
        })
    });
    let mut last_grant = Duration::ZERO;
    for shard in shards.collect::<Vec<_>>() {
        last_grant = last_grant.max(shard.await.expect("shard task panicked")?);
    }
    let stats = queue.stats();
    println!(
        "{SHARDS} shards, last IDENTIFY at {:.3}s (optimum {:.3}s in timer mode); {} wake-ups, {} timer resets",
        last_grant.as_secs_f64(),
        (INTERVAL * (SHARDS / limit.max_concurrency - 1)).as_secs_f64(),
        stats.wakeups,
        stats.timer_resets
    );
    Ok(())
}
