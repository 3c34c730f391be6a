//! A 32-shard bot on tokio: each shard asks for its IDENTIFY slot after HELLO and
//! releases it on READY (hold mode), with a short interval so it ends in seconds.
//!
//! `cargo run --example tokio --features tokio`

mod bot;

use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let queue = identify_queue::tokio::Queue::with_limit(bot::LIMIT, bot::config())?;
    let start = Instant::now();
    let shards: Vec<_> = (0..bot::SHARDS)
        .map(|shard| {
            tokio::spawn(bot::run_shard(
                queue.clone(),
                shard,
                start,
                tokio::time::sleep,
            ))
        })
        .collect();
    let mut last_grant = Duration::ZERO;
    for shard in shards {
        last_grant = last_grant.max(shard.await.expect("shard task panicked")?);
    }
    bot::summary(last_grant, queue.stats());
    Ok(())
}
