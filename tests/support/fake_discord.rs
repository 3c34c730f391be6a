//! Discord, as far as worker processes need it: it judges every IDENTIFY on its own
//! clock as it arrives (with the one judge, `judge.rs`, which its includer declares as
//! `crate::judge`), and answers
//! `session_start_limit` from its own count. The one fake Discord of the project: used
//! by the cluster tests and by the cluster example and bench, whose workers are other
//! processes, and by the server's tests, which read Discord's word over HTTP.
//!
//! A plain TCP server on loopback, one line per connection:
//! `IDENTIFY <shard> [<worker>]` records an arrival ([`identify`] sends one); `LIMIT`
//! answers `<total> <remaining> <reset_after_ms> <max_concurrency>` ([`ask_limit`]
//! reads it); any other line goes to the caller's handler, if it gave one.
//!
//! It also answers Discord's own HTTP route, `GET /api/v10/gateway/bot` (what
//! identify-queue-server reads with a token), with the same `session_start_limit`:
//! 401 without `Authorization: Bot` [`TOKEN`], 502 while made unreachable
//! ([`FakeDiscord::set_reachable`]).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use identify_queue::SessionStartLimit;

use crate::judge::{self, Event, Rules};

/// Loopback delivery between processes on a busy 2-core machine: two IDENTIFYs
/// granted exactly an interval apart may arrive closer by this much.
pub const JITTER: Duration = Duration::from_millis(40);

/// `reset_after` in every `LIMIT` answer: a day, so that no reset falls in a run.
const RESET_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// The bot token `GET /api/v10/gateway/bot` accepts.
pub const TOKEN: &str = "t0ken";

/// Discord's HTTP route for the limit.
const GATEWAY_BOT: &str = "/api/v10/gateway/bot";

#[derive(Clone, Copy, Debug)]
pub struct Arrival {
    pub at: Instant,
    pub shard: u32,
    /// The worker that sent it (0 when it did not say).
    pub worker: u32,
}

/// What a caller does with a line the fake does not know: its words.
type Handler = Box<dyn Fn(&[&str]) + Send + Sync>;

pub struct FakeDiscord {
    pub address: SocketAddr,
    pub budget: u32,
    state: Arc<Mutex<State>>,
}

struct State {
    /// The `max_concurrency` it started with, and the one in force.
    started_with: u32,
    max_concurrency: u32,
    arrivals: Vec<Arrival>,
    /// When `max_concurrency` changed, and to what.
    changes: Vec<(Instant, u32)>,
    /// Whether `GET /api/v10/gateway/bot` answers (502 when not).
    reachable: bool,
    /// `reset_after` in its answers.
    reset_after: Duration,
    /// While set, `GET /api/v10/gateway/bot` answers `429` with this `Retry-After`.
    retry_after: Option<u64>,
    /// When `GET /api/v10/gateway/bot` was asked (authorized).
    reads: Vec<Instant>,
}

impl FakeDiscord {
    /// A bot with `budget` session starts left (of 1000) and `max_concurrency`.
    pub fn start(budget: u32, max_concurrency: u32) -> Self {
        Self::start_with(budget, max_concurrency, |words| {
            panic!("fake Discord: unexpected line {words:?}")
        })
    }

    /// The same, handing every line it does not know to `other` (the cluster
    /// example's workers report their command counts this way).
    pub fn start_with(
        budget: u32,
        max_concurrency: u32,
        other: impl Fn(&[&str]) + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let address = listener.local_addr().expect("its address");
        let state = Arc::new(Mutex::new(State {
            started_with: max_concurrency,
            max_concurrency,
            arrivals: Vec::new(),
            changes: Vec::new(),
            reachable: true,
            reset_after: RESET_AFTER,
            retry_after: None,
            reads: Vec::new(),
        }));
        let other: Arc<Handler> = Arc::new(Box::new(other));
        let served = Arc::clone(&state);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (state, other) = (Arc::clone(&served), Arc::clone(&other));
                std::thread::spawn(move || serve(stream, &state, budget, &**other));
            }
        });
        Self {
            address,
            budget,
            state,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    /// Every IDENTIFY so far, by arrival.
    pub fn arrivals(&self) -> Vec<Arrival> {
        let mut arrivals = self.state().arrivals.clone();
        arrivals.sort_by_key(|a| a.at);
        arrivals
    }

    /// How many IDENTIFYs arrived so far.
    pub fn count(&self) -> usize {
        self.state().arrivals.len()
    }

    /// Discord's `max_concurrency` changes from now on (it answers `LIMIT` with it,
    /// and judges IDENTIFYs arriving from now on by it).
    pub fn set_max_concurrency(&self, max_concurrency: u32) {
        let mut state = self.state();
        state.max_concurrency = max_concurrency;
        state.changes.push((Instant::now(), max_concurrency));
    }

    /// Whether `GET /api/v10/gateway/bot` answers from now on (a Discord outage: 502).
    pub fn set_reachable(&self, reachable: bool) {
        self.state().reachable = reachable;
    }

    /// The `reset_after` its answers say from now on (a day at start).
    pub fn set_reset_after(&self, reset_after: Duration) {
        self.state().reset_after = reset_after;
    }

    /// While `Some(seconds)`, `GET /api/v10/gateway/bot` answers `429` with
    /// `Retry-After: seconds` (Discord's rate limit).
    pub fn set_rate_limited(&self, retry_after: Option<u64>) {
        self.state().retry_after = retry_after;
    }

    /// When `GET /api/v10/gateway/bot` was asked with the token, in order.
    pub fn reads(&self) -> Vec<Instant> {
        self.state().reads.clone()
    }

    /// Every rule Discord enforces, judged on arrivals by the one judge: no more than
    /// the budget, and two IDENTIFYs of one bucket (under the `max_concurrency` in
    /// force when the later one arrived) at least `interval` apart, less [`JITTER`].
    /// Returns the violations, described.
    pub fn violations(&self, interval: Duration) -> Vec<String> {
        let state = self.state();
        let rules = Rules {
            max_concurrency: state.started_with,
            interval,
            jitter: JITTER,
            remaining: Some(self.budget),
        };
        let arrivals = state
            .arrivals
            .iter()
            .map(|arrival| (arrival.at, Event::Arrival(arrival.shard)));
        let changes = state
            .changes
            .iter()
            .map(|&(at, max_concurrency)| (at, Event::MaxConcurrency(max_concurrency)));
        judge::judge(rules, arrivals.chain(changes))
    }
}

/// One connection, one line.
fn serve(
    stream: TcpStream,
    state: &Mutex<State>,
    budget: u32,
    other: &(dyn Fn(&[&str]) + Send + Sync),
) {
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let at = Instant::now();
    let words: Vec<&str> = line.split_whitespace().collect();
    let number = |word: &str| word.parse::<u32>().ok();
    match words.as_slice() {
        ["IDENTIFY", shard, worker @ ..] => {
            let worker = worker.first().map_or(Some(0), |w| number(w));
            if let (Some(shard), Some(worker)) = (number(shard), worker) {
                state
                    .lock()
                    .unwrap()
                    .arrivals
                    .push(Arrival { at, shard, worker });
            }
        }
        ["LIMIT"] => {
            let (remaining, max_concurrency) = session_start_limit(state, budget);
            let reply = format!(
                "1000 {remaining} {} {max_concurrency}\n",
                RESET_AFTER.as_millis(),
            );
            let _ = (&stream).write_all(reply.as_bytes());
        }
        ["GET", path, _version] => {
            let reply = gateway_bot(&mut reader, path, state, budget);
            let _ = (&stream).write_all(reply.as_bytes());
        }
        words => other(words),
    }
}

/// `(remaining, max_concurrency)` now: the budget less the IDENTIFYs that arrived.
fn session_start_limit(state: &Mutex<State>, budget: u32) -> (u32, u32) {
    let state = state.lock().unwrap();
    let used = u32::try_from(state.arrivals.len()).unwrap_or(u32::MAX);
    (budget.saturating_sub(used), state.max_concurrency)
}

/// The HTTP answer to a `GET` of `path` whose headers `reader` holds.
fn gateway_bot(reader: &mut impl BufRead, path: &str, state: &Mutex<State>, budget: u32) -> String {
    let mut authorized = false;
    let mut header = String::new();
    while reader.read_line(&mut header).is_ok_and(|read| read > 0) {
        let line = header.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("authorization") {
                authorized = value.trim() == format!("Bot {TOKEN}");
            }
        }
        header.clear();
    }
    let answer = |status: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        )
    };
    if path != GATEWAY_BOT {
        return answer(
            "404 Not Found",
            r#"{"message": "404: Not Found", "code": 0}"#,
        );
    }
    if !authorized {
        return answer(
            "401 Unauthorized",
            r#"{"message": "401: Unauthorized", "code": 0}"#,
        );
    }
    let (reachable, reset_after, retry_after) = {
        let mut state = state.lock().unwrap();
        state.reads.push(Instant::now());
        (state.reachable, state.reset_after, state.retry_after)
    };
    if !reachable {
        return answer("502 Bad Gateway", r#"{"message": "upstream down"}"#);
    }
    if let Some(seconds) = retry_after {
        let body = r#"{"message": "You are being rate limited.", "global": false}"#;
        return answer("429 Too Many Requests", body).replacen(
            "\r\n\r\n",
            &format!("\r\nretry-after: {seconds}\r\n\r\n"),
            1,
        );
    }
    let (remaining, max_concurrency) = session_start_limit(state, budget);
    let body = format!(
        r#"{{"url": "wss://gateway.discord.gg", "shards": 2, "session_start_limit": {{"total": 1000, "remaining": {remaining}, "reset_after": {}, "max_concurrency": {max_concurrency}}}}}"#,
        reset_after.as_millis()
    );
    answer("200 OK", &body)
}

/// Sends an IDENTIFY of `shard` from `worker` to the fake Discord at `discord`.
pub fn identify(discord: SocketAddr, shard: u32, worker: u32) -> std::io::Result<()> {
    tell(discord, &format!("IDENTIFY {shard} {worker}"))
}

/// Sends one line to the fake Discord at `discord`.
pub fn tell(discord: SocketAddr, line: &str) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(discord)?;
    writeln!(stream, "{line}")
}

/// Asks the fake Discord at `discord` for its `session_start_limit`.
pub fn ask_limit(discord: SocketAddr) -> Result<SessionStartLimit, String> {
    let mut stream = TcpStream::connect(discord).map_err(|e| e.to_string())?;
    stream.write_all(b"LIMIT\n").map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let numbers: Vec<u64> = line
        .split_whitespace()
        .filter_map(|word| word.parse().ok())
        .collect();
    match numbers.as_slice() {
        &[total, remaining, reset_after, max_concurrency] => Ok(SessionStartLimit {
            total: total as u32,
            remaining: remaining as u32,
            reset_after: Duration::from_millis(reset_after),
            max_concurrency: max_concurrency as u32,
        }),
        _ => Err(format!("a bad LIMIT answer: {line:?}")),
    }
}
