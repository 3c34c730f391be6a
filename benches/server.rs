//! `cargo bench --bench server --features server [-- --shards N --runs R]`: N waiting
//! long polls on one server, then all granted at once (a budget that resets with every
//! shard in its own bucket). Side by side, taking turns: `identify-queue-server` (the
//! real binary) and twilight's gateway-queue server design (twilight-gateway-queue's
//! `InMemoryQueue` behind the same HTTP stack, axum, built here: this bench runs
//! itself as that server in a child process). Each server is a process of its own,
//! measured from `/proc`: CPU per grant (user + system, from start to the last answer,
//! accepting and answering included) and memory per waiting request (resident set
//! with N requests waiting, less before). Prints the median of the runs and the
//! spread.

#[path = "support/spread.rs"]
mod spread;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use spread::spread;

const ROLE: &str = "IQ_BENCH_ROLE";
const RESET_AFTER: Duration = Duration::from_secs(6);

fn main() {
    if std::env::var(ROLE).as_deref() == Ok("twilight") {
        return twilight_server();
    }
    let arg = |name: &str, default: u32| {
        let args: Vec<String> = std::env::args().collect();
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let shards = arg("--shards", 10_000);
    let runs = arg("--runs", 3);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for run in 0..runs {
        for design in [Design::Ours, Design::Twilight] {
            let measured = runtime.block_on(measure(design, shards));
            eprintln!("run {run} {design:?}: {measured:?}");
            match design {
                Design::Ours => ours.push(measured),
                Design::Twilight => theirs.push(measured),
            }
        }
    }
    println!(
        "\n## {shards} waiting long polls, then all granted at once (median of {runs} interleaved runs, [lowest..highest])\n"
    );
    println!(
        "| server | CPU per grant | memory per waiting request | last answer after the reset | requests asked again |"
    );
    println!("|---|---:|---:|---:|---:|");
    for (name, results) in [
        ("identify-queue-server", &ours),
        ("twilight's design (InMemoryQueue + axum)", &theirs),
    ] {
        let cpu: Vec<f64> = results.iter().map(|m| m.cpu_per_grant_us).collect();
        let mem: Vec<f64> = results.iter().map(|m| m.bytes_per_waiting).collect();
        let last: Vec<f64> = results.iter().map(|m| m.drain_ms).collect();
        let retries: u32 = results.iter().map(|m| m.retries).sum();
        println!(
            "| {name} | {} µs | {} B | {} ms | {retries} |",
            summary(&cpu),
            summary(&mem),
            summary(&last)
        );
    }
}

#[derive(Clone, Copy, Debug)]
enum Design {
    Ours,
    Twilight,
}

#[derive(Debug)]
struct Measured {
    cpu_per_grant_us: f64,
    bytes_per_waiting: f64,
    drain_ms: f64,
    /// Requests asked again after their connection failed.
    retries: u32,
}

fn summary(values: &[f64]) -> String {
    let (median, lowest, highest) = spread(values.iter().copied());
    format!("{median:.1} [{lowest:.1}..{highest:.1}]")
}

/// A server process, killed on drop.
struct Server {
    child: Child,
    address: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(design: Design, shards: u32) -> Server {
    let mut command = match design {
        Design::Ours => {
            let mut command = Command::new(env!("CARGO_BIN_EXE_identify-queue-server"));
            command.args([
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--max-concurrency",
                &shards.to_string(),
                "--total",
                &(shards * 2).to_string(),
                "--remaining",
                "0",
                "--reset-after-ms",
                &RESET_AFTER.as_millis().to_string(),
            ]);
            command.env("RUST_LOG", "error");
            command
        }
        Design::Twilight => {
            let mut command = Command::new(std::env::current_exe().unwrap());
            command
                .env(ROLE, "twilight")
                .env("SHARDS", shards.to_string());
            command
        }
    };
    let mut child = command.stdout(Stdio::piped()).spawn().expect("server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line
        .trim()
        .rsplit(' ')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    Server { child, address }
}

/// (user + system CPU, resident bytes) of process `pid`.
fn usage(pid: u32) -> (Duration, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    // After the command: state is field 3; utime and stime are fields 14 and 15.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as u64;
    let cpu = Duration::from_micros(ticks * 1_000_000 / per_second);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (cpu, rss_kb * 1024)
}

async fn measure(design: Design, shards: u32) -> Measured {
    let server = start(design, shards);
    let started = Instant::now();
    let pid = server.child.id();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (cpu_before, rss_before) = usage(pid);
    let mut tasks = Vec::new();
    for shard in 0..shards {
        let address = server.address;
        tasks.push(tokio::spawn(async move {
            // As twilight's clients do, a request whose connection failed (a burst of
            // 10,000 connects can overflow a listen queue on a small machine) is
            // asked again; the retries are counted.
            let mut retries = 0u32;
            loop {
                let request =
                    format!("GET /?shard={shard} HTTP/1.1\r\nHost: q\r\nConnection: close\r\n\r\n");
                let mut answer = Vec::new();
                let asked = async {
                    let mut stream = TcpStream::connect(address).await?;
                    stream.write_all(request.as_bytes()).await?;
                    stream.read_to_end(&mut answer).await
                };
                match asked.await {
                    Ok(_) if answer.starts_with(b"HTTP/1.1 200") => {
                        return (Instant::now(), retries);
                    }
                    Ok(_) if !answer.is_empty() => {
                        panic!("{:?}", String::from_utf8_lossy(&answer))
                    }
                    _ => {
                        retries += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }));
    }
    // Every request is in and waits well before the reset.
    let reset = started + RESET_AFTER;
    tokio::time::sleep_until((reset - Duration::from_millis(500)).into()).await;
    let (_, rss_waiting) = usage(pid);
    let mut last = reset;
    let mut retries = 0;
    for task in tasks {
        let (answered, retried) = task.await.unwrap();
        last = last.max(answered);
        retries += retried;
    }
    let (cpu_after, _) = usage(pid);
    Measured {
        cpu_per_grant_us: (cpu_after - cpu_before).as_secs_f64() * 1e6 / f64::from(shards),
        bytes_per_waiting: rss_waiting.saturating_sub(rss_before) as f64 / f64::from(shards),
        drain_ms: (last - reset).as_secs_f64() * 1e3,
        retries,
    }
}

/// twilight's gateway-queue server design: every path, `?shard=N`, the
/// `InMemoryQueue`'s receiver awaited, then twilight's answer.
fn twilight_server() {
    use twilight_gateway_queue::{InMemoryQueue, Queue};
    let shards: u32 = std::env::var("SHARDS").unwrap().parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let queue = InMemoryQueue::new(shards as u16, 0, RESET_AFTER, shards * 2);
        let app = axum::Router::new().fallback(
            move |axum::extract::RawQuery(query): axum::extract::RawQuery| {
                let queue = queue.clone();
                async move {
                    let shard = query
                        .as_deref()
                        .and_then(|q| q.strip_prefix("shard="))
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    let _ = queue.enqueue(shard).await;
                    r#"{"message": "You're free to connect now! :)"}"#
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("twilight listening on {}", listener.local_addr().unwrap());
        axum::serve(listener, app).await.unwrap();
    });
}
