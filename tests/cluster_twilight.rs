//! The cluster queue as twilight's queue: real `twilight_gateway::Shard`s of two
//! processes' queues (two connections, two drivers, one namespace) identify against
//! the fake gateway in `gateway/`, which checks Discord's rules on its own clock.

#[allow(dead_code)] // the gateway serves tests/twilight.rs too, with more to check
mod gateway;
#[path = "support/judge.rs"]
mod judge;
#[path = "support/redis_server.rs"]
mod redis_server;

use std::time::Duration;

use gateway::{Gateway, Rules};
use identify_queue::redis::Queue;
use identify_queue::{Config, SessionStartLimit};
use redis_server::Server;
use tokio::sync::mpsc;
use twilight_gateway::{ConfigBuilder, Event, EventTypeFlags, Intents, Shard, ShardId, StreamExt};

const INTERVAL: Duration = Duration::from_millis(200);
const C: u32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilight_shards_of_two_processes_share_one_budget() {
    let server = Server::start(false);
    let gateway = Gateway::start(Rules {
        max_concurrency: C,
        interval: INTERVAL,
        jitter: Duration::from_millis(40),
        remaining: 100,
        ready_after: Duration::ZERO,
    })
    .await;
    let limit = SessionStartLimit {
        total: 1000,
        remaining: 100,
        reset_after: Duration::from_secs(3600),
        max_concurrency: C,
    };
    let config = Config::default().interval(INTERVAL);
    let queues = [
        Queue::connect(&server.url(), "bot", limit, config.clone())
            .await
            .unwrap(),
        Queue::connect(&server.url(), "bot", limit, config)
            .await
            .unwrap(),
    ];
    let (ready_sender, mut readies) = mpsc::unbounded_channel();
    for id in 0..32u32 {
        let queue = &queues[(id % 2) as usize];
        let config = ConfigBuilder::new("test-token".to_owned(), Intents::empty())
            .proxy_url(gateway.url.clone())
            .queue(queue.clone()) // <- the one line
            .build();
        let mut shard = Shard::with_config(ShardId::new(id, 32), config);
        let readies = ready_sender.clone();
        tokio::spawn(async move {
            while let Some(event) = shard.next_event(EventTypeFlags::READY).await {
                if let Ok(Event::Ready(_)) = event {
                    let _ = readies.send(id);
                }
            }
        });
    }
    wait_for_readies(&mut readies, 32).await;
    // Sessions lost: those shards ask again, as reconnects, and come back.
    for shard in [1, 2, 5, 6] {
        assert!(gateway.invalidate(shard));
    }
    wait_for_readies(&mut readies, 4).await;
    tokio::time::sleep(INTERVAL).await;
    let violations = gateway.violations();
    assert!(violations.is_empty(), "the gateway saw: {violations:#?}");
    assert_eq!(gateway.accepted(), 36);
    let snapshot = queues[0].snapshot().await.unwrap().unwrap();
    assert_eq!(
        snapshot.remaining,
        100 - 36,
        "Redis counted what the gateway counted"
    );
    assert!(queues.iter().all(Queue::is_empty));
}

/// Waits for `count` READYs (at most a minute each: a hang fails instead of hanging).
async fn wait_for_readies(readies: &mut mpsc::UnboundedReceiver<u32>, count: usize) {
    for _ in 0..count {
        let next = tokio::time::timeout(Duration::from_secs(60), readies.recv()).await;
        next.expect("READY in time").expect("shards alive");
    }
}
