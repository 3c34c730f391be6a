//! Cluster mode across a network: each queue (a process, as Redis sees it: its own
//! connections and name) reaches a real `redis-server` through a fault proxy of its
//! own (`support/fault_proxy.rs`: delay and jitter each way, stalls). Every IDENTIFY
//! is judged as it arrives at a fake Discord, and every delivery instant on this
//! process's one clock, with no allowance.
//!
//! Each run: 4 queues, 12 shards each (a task per shard), `max_concurrency` 4, a
//! 200 ms interval: 12 rounds. The bound on the makespan is the issue's:
//! `rounds × (interval + 4 × round trip) + 1 s` (plus the length of a fault).

#[path = "support/fake_discord.rs"]
mod fake_discord;
#[path = "support/fault_proxy.rs"]
mod fault_proxy;
#[path = "support/judge.rs"]
mod judge;
#[path = "support/redis_server.rs"]
mod redis_server;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fake_discord::FakeDiscord;
use fault_proxy::FaultProxy;
use identify_queue::redis::{ClusterStats, Options, Queue};
use identify_queue::{Config, SessionStartLimit, ShardId};
use redis_server::Server;
use std::time::Instant;

const INTERVAL: Duration = Duration::from_millis(200);
const MAX_CONCURRENCY: u32 = 4;
const PROCESSES: u32 = 4;
const PER_PROCESS: u32 = 12;
const SHARDS: u32 = PROCESSES * PER_PROCESS;
const ROUNDS: u32 = SHARDS / MAX_CONCURRENCY;

/// The tests run several queues, proxies and a server each: one at a time, so that
/// the machine's two cores are not shared between runs.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One test's world: a server, a fake Discord, and the processes; one at a time.
struct Network {
    processes: Vec<Process>,
    discord: FakeDiscord,
    _server: Server,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

impl Network {
    /// A server, a fake Discord, and a process per path (one-way delay, jitter).
    async fn start(paths: &[(Duration, Duration)]) -> Self {
        let serial = SERIAL.lock().await;
        let server = Server::start(false);
        let discord = FakeDiscord::start(SHARDS + 32, MAX_CONCURRENCY);
        Self {
            processes: processes(&server, paths).await,
            discord,
            _server: server,
            _serial: serial,
        }
    }
}

/// One process: its queue, behind its own path to Redis.
struct Process {
    queue: Queue,
    proxy: FaultProxy,
}

/// What a run saw.
struct Outcome {
    /// Delivery instants (`Permit::granted_at`), per shard, with the process.
    deliveries: Vec<(Instant, ShardId, u32)>,
    /// From the first `acquire` to the last IDENTIFY's arrival.
    makespan: Duration,
    stats: Vec<ClusterStats>,
}

/// `PROCESSES` queues of one bot, each through a proxy with `paths[p]` (one-way delay,
/// jitter).
async fn processes(server: &Server, paths: &[(Duration, Duration)]) -> Vec<Process> {
    let mut processes = Vec::new();
    for &(delay, jitter) in paths {
        let proxy = FaultProxy::start(server.port);
        proxy.set_delay(delay, jitter);
        let limit = SessionStartLimit {
            total: 1000,
            // Room for units spent by faults (undelivered grants are asked again).
            remaining: SHARDS + 32,
            reset_after: Duration::from_secs(3600),
            max_concurrency: MAX_CONCURRENCY,
        };
        let queue = Queue::connect_with(
            proxy.url(),
            "bot",
            limit,
            Config::default().interval(INTERVAL),
            Options::default(),
        )
        .await
        .expect("connect through the proxy");
        processes.push(Process { queue, proxy });
    }
    processes
}

/// Runs every shard of every process, a task per shard, each sending its IDENTIFY to
/// `discord` with its permit; `during` runs alongside (a fault). Panics on any
/// `acquire` error.
async fn run<F: std::future::Future<Output = ()>>(
    processes: &[Process],
    discord: &FakeDiscord,
    during: F,
) -> Outcome {
    let start = Instant::now();
    let deliveries = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (p, process) in processes.iter().enumerate() {
        let p = p as u32;
        for shard in p * PER_PROCESS..(p + 1) * PER_PROCESS {
            let (queue, deliveries) = (process.queue.clone(), deliveries.clone());
            let address = discord.address;
            tasks.push(tokio::spawn(async move {
                let permit = queue
                    .acquire(shard)
                    .await
                    .unwrap_or_else(|e| panic!("process {p}, shard {shard}: {e}"));
                fake_discord::identify(address, shard, p).unwrap();
                deliveries
                    .lock()
                    .unwrap()
                    .push((permit.granted_at(), shard, p));
            }));
        }
    }
    let all = async {
        for task in tasks {
            task.await.expect("a shard's task");
        }
    };
    let ((), ()) =
        tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(all, during) })
            .await
            .expect("every shard served within a minute");
    let arrived = wait_for_arrivals(discord, SHARDS as usize).await;
    let mut deliveries = deliveries.lock().unwrap().clone();
    deliveries.sort();
    Outcome {
        deliveries,
        makespan: arrived.saturating_duration_since(start),
        stats: processes.iter().map(|p| p.queue.stats()).collect(),
    }
}

/// Waits for `count` arrivals; returns when the last one arrived (on tokio's clock).
async fn wait_for_arrivals(discord: &FakeDiscord, count: usize) -> Instant {
    let deadline = Instant::now() + Duration::from_secs(5);
    while discord.arrivals().len() < count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    discord.arrivals().last().map(|a| a.at).expect("arrivals")
}

/// The judgement of a run whose longest round trip is `round_trip`, with
/// `fault` added to the makespan's bound.
fn judge(
    name: &str,
    discord: &FakeDiscord,
    outcome: &Outcome,
    round_trip: Duration,
    fault: Duration,
) {
    let commands: u64 = outcome.stats.iter().map(|s| s.commands).sum();
    let undelivered: u64 = outcome.stats.iter().map(|s| s.undelivered).sum();
    let touches: u64 = outcome.stats.iter().map(|s| s.touches).sum();
    let windows: Vec<Duration> = outcome.stats.iter().map(|s| s.window).collect();
    let each: Vec<u64> = outcome.stats.iter().map(|s| s.commands).collect();
    let per_grant = commands as f64 / f64::from(SHARDS);
    let bound = (INTERVAL + round_trip * 4) * ROUNDS + Duration::from_secs(1) + fault;
    eprintln!(
        "{name}: makespan {:?} (bound {bound:?}, optimum {:?}), {per_grant:.2} commands/grant, \
         {touches} touches, {undelivered} undelivered, windows {windows:?}, commands {each:?}",
        outcome.makespan,
        INTERVAL * (ROUNDS - 1),
    );
    // Every shard once, on arrival.
    let mut shards: Vec<u32> = discord.arrivals().iter().map(|a| a.shard).collect();
    shards.sort_unstable();
    assert_eq!(shards, (0..SHARDS).collect::<Vec<_>>(), "every shard once");
    assert_eq!(discord.violations(INTERVAL), Vec::<String>::new());
    // Deliveries on this process's one clock: an interval apart per bucket, exactly
    // (less Redis's whole millisecond).
    let mut last: BTreeMap<u32, Instant> = BTreeMap::new();
    for &(at, shard, _) in &outcome.deliveries {
        if let Some(&before) = last.get(&(shard % MAX_CONCURRENCY)) {
            assert!(
                at - before + Duration::from_millis(1) >= INTERVAL,
                "bucket {}: deliveries {:?} apart",
                shard % MAX_CONCURRENCY,
                at - before
            );
        }
        last.insert(shard % MAX_CONCURRENCY, at);
    }
    assert!(
        outcome.makespan <= bound,
        "makespan {:?} over {bound:?}",
        outcome.makespan
    );
    assert!(per_grant <= 3.0, "{per_grant:.2} commands per grant");
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_trip_of_10_ms_stalls_nothing() {
    let Network {
        processes, discord, ..
    } = &Network::start(&[(ms(5), ms(0)); 4]).await;
    let outcome = run(processes, discord, async {}).await;
    judge(
        "round trip 10 ms",
        discord,
        &outcome,
        ms(10),
        Duration::ZERO,
    );
    for stats in &outcome.stats {
        assert!(stats.round_trip >= ms(10), "{stats:?}");
        assert!(stats.window > stats.round_trip, "{stats:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_trip_of_60_ms_with_jitter_stalls_nothing() {
    // 30 ± 5 ms each way: 60 ± 10 ms round trips.
    let Network {
        processes, discord, ..
    } = &Network::start(&[(ms(30), ms(5)); 4]).await;
    let outcome = run(processes, discord, async {}).await;
    judge(
        "round trip 60 ms ± 10 ms",
        discord,
        &outcome,
        ms(70),
        Duration::ZERO,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_and_far_processes_are_all_served_in_turn() {
    // Two next to Redis, two 20 ms away each way.
    let paths = [
        (ms(0), ms(0)),
        (ms(0), ms(0)),
        (ms(20), ms(0)),
        (ms(20), ms(0)),
    ];
    let Network {
        processes, discord, ..
    } = &Network::start(&paths).await;
    let outcome = run(processes, discord, async {}).await;
    judge(
        "two near, two 40 ms away",
        discord,
        &outcome,
        ms(40),
        Duration::ZERO,
    );
    // Taking turns: in the first half of the run, every process got a fair part of
    // its shards (the near ones do not starve the far ones, nor the far ones the near).
    let half = outcome.deliveries[SHARDS as usize / 2 - 1].0;
    for p in 0..PROCESSES {
        let early = outcome
            .deliveries
            .iter()
            .filter(|&&(at, _, process)| process == p && at <= half)
            .count();
        assert!(
            early >= 3,
            "process {p}: {early} of its shards in the first half"
        );
    }
    // The far ones pay for their own distance; the near ones do not.
    for (near, far) in [(0, 2), (1, 3)] {
        let (near, far) = (&outcome.stats[near], &outcome.stats[far]);
        assert!(far.window >= ms(40), "{far:?}");
        assert!(near.window < ms(20), "{near:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_of_every_link_mid_run_loses_no_shard() {
    let Network {
        processes, discord, ..
    } = &Network::start(&[(ms(1), ms(0)); 4]).await;
    let stall = ms(1500);
    let fault = async {
        while discord.arrivals().len() < 16 {
            tokio::time::sleep(ms(5)).await;
        }
        for process in processes {
            process.proxy.stall(stall);
        }
    };
    let outcome = run(processes, discord, fault).await;
    judge("a 1.5 s stall mid-run", discord, &outcome, ms(2), stall);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_partitioned_mid_run_the_others_go_on() {
    let Network {
        processes, discord, ..
    } = &Network::start(&[(ms(1), ms(0)); 4]).await;
    let partition = ms(3000);
    let window = Arc::new(Mutex::new(None));
    let fault = async {
        while discord.arrivals().len() < 12 {
            tokio::time::sleep(ms(5)).await;
        }
        processes[0].proxy.stall(partition);
        let from = std::time::Instant::now();
        *window.lock().unwrap() = Some((from, from + partition));
    };
    let outcome = run(processes, discord, fault).await;
    judge(
        "one process partitioned for 3 s",
        discord,
        &outcome,
        ms(2),
        partition,
    );
    // The others went on meanwhile: once the partitioned head's lease lapsed (1 s),
    // their buckets turned.
    let (from, to) = window.lock().unwrap().expect("partitioned");
    let others_meanwhile = discord
        .arrivals()
        .iter()
        .filter(|a| a.worker != 0 && a.at > from + Duration::from_millis(1200) && a.at < to)
        .count();
    assert!(
        others_meanwhile >= 4,
        "{others_meanwhile} IDENTIFYs of the others during the partition"
    );
}

/// A grant whose touch a stall holds back until another process's grant followed in
/// its bucket: Redis refuses the touch, the unit is spent (counted), and the shard's
/// `acquire` asks again by itself and resolves with a permit, never an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_undelivered_through_a_stall_is_asked_again() {
    let _serial = SERIAL.lock().await;
    let server = Server::start(false);
    let limit = SessionStartLimit {
        total: 1000,
        remaining: 10,
        reset_after: Duration::from_secs(3600),
        max_concurrency: 1,
    };
    let config = Config::default().interval(INTERVAL);
    let proxy = FaultProxy::start(server.port);
    proxy.set_delay(ms(1), ms(0));
    let far = Queue::connect(proxy.url(), "bot", limit, config.clone())
        .await
        .unwrap();
    let near = Queue::connect(server.url(), "bot", limit, config)
        .await
        .unwrap();
    tokio::time::sleep(ms(250)).await; // a fresh state's quiet interval
    // Asked (its first poll makes the request), granted in Redis, and not taken: the
    // future is not polled again.
    let mut parked = far.acquire(0);
    assert!(futures_util::FutureExt::now_or_never(&mut parked).is_none());
    while far.stats().grants == 0 {
        tokio::time::sleep(ms(1)).await;
    }
    // Its touch (due half an interval after the grant) is held by the stall, so the
    // bucket frees in Redis and the near process takes it.
    proxy.stall(ms(1000));
    let other = near.acquire(1).await.unwrap();
    let permit = tokio::time::timeout(Duration::from_secs(10), parked)
        .await
        .expect("served after the stall")
        .expect("a permit, not an error");
    let stats = far.stats();
    eprintln!("undelivered through a stall: {stats:?}");
    assert_eq!(stats.undelivered, 1, "{stats:?}");
    assert_eq!(stats.grants, 2, "{stats:?}");
    assert!(permit.granted_at() >= other.granted_at() + INTERVAL);
    // Three units spent: the undelivered grant, the near one, the second grant.
    let snapshot = near.snapshot().await.unwrap().unwrap();
    assert_eq!(snapshot.remaining, 7);
}

/// A process whose round trip is longer than the spacing says so, and is still served
/// (its own grants pay for its distance).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_slower_than_the_spacing_says_so_and_is_still_served() {
    let _serial = SERIAL.lock().await;
    let server = Server::start(false);
    let proxy = FaultProxy::start(server.port);
    proxy.set_delay(ms(150), ms(0));
    let interval = ms(100);
    let limit = SessionStartLimit {
        total: 1000,
        remaining: 10,
        reset_after: Duration::from_secs(3600),
        max_concurrency: 1,
    };
    let queue = Queue::connect(
        proxy.url(),
        "bot",
        limit,
        Config::default().interval(interval),
    )
    .await
    .unwrap();
    match queue.health() {
        identify_queue::redis::Health::SlowLink { round_trip, window } => {
            assert!(round_trip >= ms(300), "{round_trip:?}");
            assert!(window > round_trip, "{window:?}");
        }
        other => panic!("health {other:?}"),
    }
    let first = queue.acquire(0).await.unwrap().granted_at();
    let second = queue.acquire(1).await.unwrap().granted_at();
    assert!(second - first >= interval);
    assert_eq!(queue.stats().undelivered, 0);
}

/// Every connection of one process cut mid-run (both ends see them close, as when a
/// middlebox resets them): Redis passes it if it was next in line, it reconnects, a
/// call whose answer was lost is asked again with its nonce, and every shard is
/// served once, with no `acquire` error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_cut_off_mid_run_reconnects_and_loses_nothing() {
    let Network {
        processes, discord, ..
    } = &Network::start(&[(ms(1), ms(0)); 4]).await;
    let fault = async {
        while discord.arrivals().len() < 12 {
            tokio::time::sleep(ms(5)).await;
        }
        processes[0].proxy.cut();
    };
    let outcome = run(processes, discord, fault).await;
    judge(
        "one process's links cut",
        discord,
        &outcome,
        ms(2),
        Duration::ZERO,
    );
    assert!(outcome.stats[0].connections >= 2, "{:?}", outcome.stats[0]);
}
