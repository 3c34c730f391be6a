//! One simulated cluster start-up: worker processes (this binary, run again with
//! `--worker`) share one budget through Redis; this process plays Discord (the tests'
//! fake, `tests/support/fake_discord.rs`), judging each IDENTIFY as it arrives on its
//! own clock with the tests' one judge. Shared by `examples/cluster` and
//! `benches/cluster.rs`.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use identify_queue::Config;
use identify_queue::redis::{Health, Options, Queue};

use crate::fake_discord::{self, FakeDiscord};
use crate::fault_proxy::FaultProxy;

/// The spacing the cluster queue keeps for `interval` (no margin) and a delivery
/// `window`: see `identify_queue::redis::Queue::spacing`.
pub fn spacing(interval: Duration, window: Duration) -> Duration {
    interval + window + Duration::from_millis(1)
}

/// One run's shape.
#[derive(Clone, Debug)]
pub struct Plan {
    pub url: String,
    pub namespace: String,
    pub workers: u32,
    pub shards: u32,
    pub max_concurrency: u32,
    pub interval: Duration,
    /// Session starts left; the run ends when they or the shards are used up.
    pub budget: u32,
    /// After the last grant, how long to keep every worker waiting (with shards left
    /// beyond the budget) while counting the commands they send.
    pub idle: Duration,
    /// Added between every worker and Redis by a fault proxy (half each way; zero: no
    /// proxy), with jitter of up to this much each way.
    pub round_trip: Duration,
    pub jitter: Duration,
}

/// What one run measured.
#[derive(Debug, Default)]
pub struct Outcome {
    pub identifies: u32,
    /// First IDENTIFY to last.
    pub makespan: Duration,
    /// The same for a perfect queue: `ceil(n / C) - 1` intervals.
    pub optimum: Duration,
    /// The same at the spacing the cluster keeps on purpose (the interval plus the
    /// workers' mean delivery window and a millisecond, `Queue::spacing`).
    pub optimum_kept: Duration,
    /// Redis commands the workers sent (scripts, WAIT, leases), over the grants.
    pub commands: u64,
    /// Units spent without an IDENTIFY: grants undelivered, unacknowledged or
    /// orphaned, over all workers.
    pub wasted: u64,
    /// The workers' mean delivery window and measured round trip.
    pub window: Duration,
    pub measured_round_trip: Duration,
    /// Commands every process sent while all of them only waited (`idle`).
    pub idle_commands: u64,
    pub violations: Vec<String>,
}

/// Runs the plan; `progress` sees (identifies so far, expected).
pub fn run(plan: &Plan, mut progress: impl FnMut(u32, u32)) -> Result<Outcome, String> {
    let commands: Arc<Mutex<HashMap<u32, Report>>> = Default::default();
    let discord = FakeDiscord::start_with(plan.budget, plan.max_concurrency, {
        let commands = Arc::clone(&commands);
        move |words| record(&commands, words)
    });
    let expected = plan.shards.min(plan.budget);
    // The network between the workers and Redis, if any.
    let proxy = if plan.round_trip.is_zero() {
        None
    } else {
        let proxy = FaultProxy::start_to(redis_address(&plan.url)?);
        proxy.set_delay(plan.round_trip / 2, plan.jitter);
        Some(proxy)
    };
    let url = proxy
        .as_ref()
        .map_or_else(|| plan.url.clone(), FaultProxy::url);
    let mut children: Vec<Child> = (0..plan.workers)
        .map(|worker| spawn_worker(plan, &url, worker, discord.address))
        .collect::<Result<_, _>>()?;
    let started = Instant::now();
    let deadline = started
        + plan.interval * (plan.shards / plan.max_concurrency + 20)
        + Duration::from_secs(30);
    let mut seen = 0;
    while seen < expected {
        if Instant::now() > deadline {
            kill(&mut children);
            return Err(format!(
                "only {seen} of {expected} IDENTIFYs before the deadline"
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
        let now = discord.count() as u32;
        if now != seen {
            seen = now;
            progress(seen, expected);
        }
    }
    // Every worker now only waits (the budget is spent, or nothing is left): what
    // do they send meanwhile? Each reports its count at the start and the end.
    let idle_from = poll_counts(&commands, plan.workers, 1);
    std::thread::sleep(plan.idle);
    for child in &mut children {
        // Asks each worker for its final count: a line on its stdin.
        if let Some(stdin) = child.stdin.as_mut() {
            let _ = stdin.write_all(b"report\n");
        }
    }
    let idle_to = poll_counts(&commands, plan.workers, 2);
    kill(&mut children);
    drop(proxy);
    let arrivals = discord.arrivals();
    let rounds = expected.div_ceil(plan.max_concurrency).saturating_sub(1);
    let reports: Vec<Report> = commands.lock().unwrap().values().copied().collect();
    let workers = reports.len().max(1) as u32;
    let window = reports.iter().map(|r| r.window).sum::<Duration>() / workers;
    Ok(Outcome {
        identifies: arrivals.len() as u32,
        makespan: arrivals
            .last()
            .map_or(Duration::ZERO, |l| l.at - arrivals[0].at),
        optimum: plan.interval * rounds,
        optimum_kept: spacing(plan.interval, window) * rounds,
        commands: idle_from,
        idle_commands: idle_to.saturating_sub(idle_from),
        wasted: reports.iter().map(|r| r.wasted).sum(),
        window,
        measured_round_trip: reports.iter().map(|r| r.round_trip).sum::<Duration>() / workers,
        violations: discord.violations(plan.interval),
    })
}

/// A worker's report: its command count (at `round` 1, when all it could get was
/// granted; at 2, after the idle time), units it wasted, its window and round trip.
#[derive(Clone, Copy, Debug, Default)]
struct Report {
    round: u64,
    commands: u64,
    wasted: u64,
    window: Duration,
    round_trip: Duration,
}

/// `host:port` of a `redis://host:port[/db]` URL.
fn redis_address(url: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| format!("a round trip needs a redis:// URL, not {url:?}"))?;
    let host = rest.split('/').next().unwrap_or(rest);
    let host = host.rsplit('@').next().unwrap_or(host);
    host.to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))
}

/// Waits until every worker reported its command count for `round`; their sum.
fn poll_counts(commands: &Mutex<HashMap<u32, Report>>, workers: u32, round: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        {
            let counts = commands.lock().unwrap();
            if counts.values().filter(|r| r.round >= round).count() as u32 >= workers
                || Instant::now() > deadline
            {
                return counts.values().map(|r| r.commands).sum();
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn kill(children: &mut [Child]) {
    for child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A worker's report, `COMMANDS <worker> <round> <count> <wasted> <window_us>
/// <round_trip_us>`: a line the fake Discord does not know.
fn record(commands: &Mutex<HashMap<u32, Report>>, words: &[&str]) {
    let ["COMMANDS", worker, numbers @ ..] = words else {
        return;
    };
    let numbers: Vec<u64> = numbers.iter().filter_map(|n| n.parse().ok()).collect();
    if let (Ok(worker), &[round, commands_sent, wasted, window, round_trip]) =
        (worker.parse(), numbers.as_slice())
    {
        let report = Report {
            round,
            commands: commands_sent,
            wasted,
            window: Duration::from_micros(window),
            round_trip: Duration::from_micros(round_trip),
        };
        commands.lock().unwrap().insert(worker, report);
    }
}

fn spawn_worker(plan: &Plan, url: &str, worker: u32, discord: SocketAddr) -> Result<Child, String> {
    let shards: Vec<String> = (0..plan.shards)
        .filter(|shard| shard % plan.workers == worker)
        .map(|shard| shard.to_string())
        .collect();
    Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .arg("--worker")
        .args([
            url.to_owned(),
            plan.namespace.clone(),
            worker.to_string(),
            discord.to_string(),
            plan.interval.as_millis().to_string(),
            shards.join(","),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start a worker: {e}"))
}

/// The worker process: `--worker <url> <namespace> <id> <discord> <interval_ms>
/// <shards>`. A task per shard; each permit becomes an IDENTIFY sent to the judge.
pub fn worker(args: &[String]) -> Result<(), String> {
    let [url, namespace, id, discord, interval, shards] = args else {
        return Err(format!("worker: bad arguments {args:?}"));
    };
    let id: u32 = id.parse().map_err(|_| "worker id")?;
    let discord: SocketAddr = discord.parse().map_err(|_| "judge address")?;
    let interval = Duration::from_millis(interval.parse().map_err(|_| "interval")?);
    let shards: Vec<u32> = shards.split(',').filter_map(|s| s.parse().ok()).collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async move {
        let options = Options::default()
            .limit_source(move || Box::pin(async move { fake_discord::ask_limit(discord) }));
        let limit = fake_discord::ask_limit(discord)?;
        let config = Config::default().interval(interval);
        let queue = Queue::connect_with(url, namespace, limit, config, options)
            .await
            .map_err(|e| e.to_string())?;
        for shard in shards {
            let queue = queue.clone();
            tokio::spawn(async move {
                if let Ok(_permit) = queue.acquire(shard).await {
                    let _ = fake_discord::identify(discord, shard, id);
                }
            });
        }
        // Reports its command count once everything it may get was granted (round 1,
        // when its queue is empty or the budget is spent), then when asked (round 2).
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let done = queue.is_empty() || matches!(queue.health(), Health::NoBudget { .. });
            if done {
                break;
            }
        }
        let _ = fake_discord::tell(discord, &report(id, 1, &queue));
        let stdin = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        });
        let _ = stdin.await;
        let _ = fake_discord::tell(discord, &report(id, 2, &queue));
        std::future::pending::<()>().await;
        Ok(())
    })
}

/// A worker's `COMMANDS` line.
fn report(id: u32, round: u64, queue: &Queue) -> String {
    let stats = queue.stats();
    format!(
        "COMMANDS {id} {round} {} {} {} {}",
        stats.commands,
        stats.undelivered + stats.unacknowledged + stats.orphaned,
        stats.window.as_micros(),
        stats.round_trip.as_micros()
    )
}

/// A `redis-server` of our own, on a free loopback port, in a temp dir.
pub struct OwnRedis {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn start_redis() -> Result<(OwnRedis, String), String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!("cannot start redis-server ({e}): install it (apt-get install redis-server) or pass --url / REDIS_URL")
        })?;
    let server = OwnRedis { child, _dir: dir };
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("redis-server did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((server, format!("redis://127.0.0.1:{port}/0")))
}
