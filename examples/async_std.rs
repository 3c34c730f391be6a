//! A 32-shard bot on async-std: each shard asks for its IDENTIFY slot after HELLO and
//! releases it on READY (hold mode), with a short interval so it ends in seconds.
//! (async-std is discontinued upstream; `identify_queue::async_std` is a shim over the
//! smol module, and this example runs it on async-std's own executor.)
//!
//! `cargo run --example async_std --features async-std`

mod bot;

use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let queue = identify_queue::async_std::Queue::with_limit(bot::LIMIT, bot::config())?;
    let start = Instant::now();
    let last_grant = async_std::task::block_on(async {
        let shards: Vec<_> = (0..bot::SHARDS)
            .map(|shard| {
                let run = bot::run_shard(queue.clone(), shard, start, async_std::task::sleep);
                async_std::task::spawn(run)
            })
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
