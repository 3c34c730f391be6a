//! Discord, as far as the cluster tests need it: it judges every IDENTIFY on its own
//! clock as it arrives, and answers `session_start_limit` from its own count.
//!
//! A plain TCP server on loopback, one line per connection:
//! `IDENTIFY <shard> <worker>` records an arrival; `LIMIT` answers
//! `<total> <remaining> <reset_after_ms> <max_concurrency>`.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Loopback delivery between processes on a busy 2-core machine: two IDENTIFYs
/// granted exactly an interval apart may arrive closer by this much.
pub const JITTER: Duration = Duration::from_millis(40);

#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    pub at: Instant,
    pub shard: u32,
    pub worker: u32,
}

pub struct FakeDiscord {
    pub address: SocketAddr,
    pub budget: u32,
    pub max_concurrency: Arc<Mutex<u32>>,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    /// When `max_concurrency` changed, and to what.
    changes: Mutex<Vec<(Instant, u32)>>,
}

impl FakeDiscord {
    /// A bot with `budget` session starts left (of 1000) and `max_concurrency`.
    pub fn start(budget: u32, max_concurrency: u32) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let address = listener.local_addr().expect("its address");
        let arrivals: Arc<Mutex<Vec<Arrival>>> = Default::default();
        let max_concurrency = Arc::new(Mutex::new(max_concurrency));
        let (log, concurrency) = (arrivals.clone(), max_concurrency.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (log, concurrency) = (log.clone(), concurrency.clone());
                std::thread::spawn(move || {
                    let mut line = String::new();
                    if BufReader::new(&stream).read_line(&mut line).is_err() {
                        return;
                    }
                    let at = Instant::now();
                    let words: Vec<&str> = line.split_whitespace().collect();
                    match words.as_slice() {
                        ["IDENTIFY", shard, worker] => log.lock().unwrap().push(Arrival {
                            at,
                            shard: shard.parse().unwrap(),
                            worker: worker.parse().unwrap(),
                        }),
                        ["LIMIT"] => {
                            let used = log.lock().unwrap().len() as u32;
                            let reply = format!(
                                "1000 {} 3600000 {}\n",
                                budget.saturating_sub(used),
                                concurrency.lock().unwrap()
                            );
                            let _ = stream.write_all(reply.as_bytes());
                        }
                        _ => panic!("fake Discord: unexpected line {line:?}"),
                    }
                });
            }
        });
        Self {
            address,
            budget,
            max_concurrency,
            arrivals,
            changes: Mutex::new(Vec::new()),
        }
    }

    pub fn arrivals(&self) -> Vec<Arrival> {
        let mut arrivals = self.arrivals.lock().unwrap().clone();
        arrivals.sort_by_key(|a| a.at);
        arrivals
    }

    /// Discord's `max_concurrency` changes from now on (it answers `LIMIT` with it,
    /// and judges IDENTIFYs arriving from now on by it).
    pub fn set_max_concurrency(&self, max_concurrency: u32) {
        *self.max_concurrency.lock().unwrap() = max_concurrency;
        self.changes
            .lock()
            .unwrap()
            .push((Instant::now(), max_concurrency));
    }

    /// Every rule Discord enforces, judged on arrivals: no more than the budget, and
    /// two IDENTIFYs of one bucket (under the `max_concurrency` in force when the
    /// later one arrived: `max_concurrency` until a change) at least `interval` apart
    /// (less the loopback jitter). Returns the violations, described.
    pub fn violations(&self, max_concurrency: u32, interval: Duration) -> Vec<String> {
        let arrivals = self.arrivals();
        let changes = self.changes.lock().unwrap().clone();
        let in_force = |at: Instant| {
            changes
                .iter()
                .rev()
                .find(|(since, _)| *since <= at)
                .map_or(max_concurrency, |&(_, mc)| mc)
        };
        let mut violations = Vec::new();
        if arrivals.len() as u32 > self.budget {
            violations.push(format!(
                "{} IDENTIFYs for a budget of {}",
                arrivals.len(),
                self.budget
            ));
        }
        for (i, later) in arrivals.iter().enumerate() {
            let mc = in_force(later.at);
            for earlier in &arrivals[..i] {
                let gap = later.at - earlier.at;
                if earlier.shard % mc == later.shard % mc && gap + JITTER < interval {
                    violations.push(format!(
                        "bucket {} of {mc}: shard {} (worker {}) {gap:?} after shard {} (worker {})",
                        later.shard % mc,
                        later.shard,
                        later.worker,
                        earlier.shard,
                        earlier.worker
                    ));
                }
            }
        }
        violations
    }
}
