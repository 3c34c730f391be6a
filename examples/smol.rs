//! A 32-shard bot on smol: each shard asks for its IDENTIFY slot after HELLO and
//! releases it on READY (hold mode), with a short interval so it ends in seconds.
//!
//! `cargo run --example smol --features smol`

mod bot;

use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let queue = identify_queue::smol::Queue::with_limit(bot::LIMIT, bot::config())?;
    let start = Instant::now();
    let sleep = |duration| async move {
        smol::Timer::after(duration).await;
    };
    let last_grant = smol::block_on(async {
        let shards: Vec<_> = (0..bot::SHARDS)
            .map(|shard| smol::spawn(bot::run_shard(queue.clone(), shard, start, sleep)))
            .collect();
        let mut last_grant = Duration::ZERO;
        for shard in shards {
            last_grant = last_grant.max(shard.await?);
        }
        Ok::<_, identify_queue::AcquireError>(last_grant)
    })?;
    bot::summary(last_grant, queue.stats());
    Ok(())
}
