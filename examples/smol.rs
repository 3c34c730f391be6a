//! A 32-shard bot on smol: each shard asks for its IDENTIFY slot after HELLO and
//! releases it on READY (hold mode), with a short interval so it ends in seconds.
//!
//! `cargo run --example smol --features smol`

use std::time::{Duration, Instant};

use identify_queue::{Config, SessionStartLimit};

const SHARDS: u32 = 32;
const INTERVAL: Duration = Duration::from_millis(250);

fn main() -> Result<(), identify_queue::Error> {
    let limit = SessionStartLimit {
        total: 1000,
        remaining: 1000,
        reset_after: Duration::from_secs(86_400),
        max_concurrency: 4,
    };
    let config = Config::default()
        .interval(INTERVAL)
        .hold_until_release(Duration::from_secs(2));
    let queue = identify_queue::smol::Queue::with_limit(limit, config)?;
    let start = Instant::now();

    let last_grant = smol::block_on(async {
        let shards: Vec<_> = (0..SHARDS)
            .map(|shard| {
                let queue = queue.clone();
                smol::spawn(async move {
                    // Connect and receive HELLO.
                    smol::Timer::after(Duration::from_millis(20 + u64::from(shard % 5) * 10)).await;
                    let permit = queue.acquire(shard).await?;
                    let granted_at = start.elapsed();
                    println!(
                        "{:>8.3}s  shard {shard:>2} (bucket {}) sends IDENTIFY",
                        granted_at.as_secs_f64(),
                        shard % limit.max_concurrency
                    );
                    // READY arrives a little later: the bucket is free from then on.
                    smol::Timer::after(Duration::from_millis(100 + u64::from(shard % 3) * 150))
                        .await;
                    permit.release();
                    Ok::<_, identify_queue::Error>(granted_at)
                })
            })
            .collect();
        let mut last_grant = Duration::ZERO;
        for shard in shards {
            last_grant = last_grant.max(shard.await?);
        }
        Ok::<_, identify_queue::Error>(last_grant)
    })?;
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
