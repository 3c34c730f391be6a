//! `identify-queue-server`: the queues over HTTP, so that bots in any language share
//! one identify queue.
//!
//! The binary serves the tokio queue in memory, or the cluster queue with `--redis`
//! (then any number of servers on one `--namespace` serve one bot, spread by a load
//! balancer or by the client's list of URLs). `--help` lists every flag; each is also
//! read from its environment variable in capitals.
//!
//! # Routes
//!
//! - **twilight's protocol**, as twilight's gateway-queue server speaks it: any method
//!   and any path not taken below, with `?shard=N`, answers `200` with
//!   `{"message": "You're free to connect now! :)"}` at the instant shard N may
//!   IDENTIFY. Clients in the wild read *any* answer as permission, so this route
//!   answers nothing else while a request can still be served: waiting for Discord's
//!   word, for Redis or for the budget's reset is a wait. A client that closes its
//!   connection while waiting cancels its request: nothing is spent. A request that can
//!   never be served (a `shard` that is not a number in `0..2^32`, or none while
//!   `max_concurrency` is above 1) gets no answer at all: it is held until its client
//!   leaves, and counted. Without a shard only `GET /` is served (one bucket, counted
//!   as an anonymous grant); other methods and paths get `404` and spend nothing. The
//!   same shard asked again takes its earlier request's place (a client asks again only
//!   once it gave the earlier one up), which is never answered.
//! - `GET /livez`: `200` while the process runs.
//! - `GET /readyz`: `200` while grants can flow (a limit in force, even a stale one),
//!   else `503` with the reason (the limit not read from Discord yet, Redis out of
//!   reach, an operator needed, requests meeting an error).
//! - `GET /metrics`: Prometheus's text format (grants, cancels, waiting requests, the
//!   budget left, seconds to the reset, wait durations, seconds without grants, the
//!   word's age, connections refused and accept errors).
//! - **The native API**, for clients that want more than "go":
//!   `POST /v1/identify?shard=N&key=K[&priority=reconnect][&wait_ms=M]` asks for shard
//!   N under an idempotency key K of the client's choosing (1 to 128 characters of
//!   `A-Z a-z 0-9 - . _ ~`, read alike here and in `DELETE`'s path; `400` otherwise).
//!   A key is one *attempt* to IDENTIFY, not a shard's name. It answers `200`
//!   `{"granted": true, "granted_at": T, ...}` (T in Unix milliseconds) when the shard
//!   may IDENTIFY, or, after `wait_ms` (25 000 at most and by default, below the 60 s
//!   proxies allow an idle request), `202` `{"granted": false, "place": P, "eta_ms": E}`:
//!   the client asks again with the same key and keeps its place. Before the first
//!   limit is known it is answered within its wait too: `202` `{"granted": false,
//!   "ready": false, "reason": R}`. **The answer is the delivery**: the queue grants a
//!   key only inside a poll of it, so a grant is never stale, and the bucket's next
//!   grant comes an interval after that answer. A key's grant is answered once: a later
//!   poll gets `410` with its `granted_at` (ask with a new key to IDENTIFY again). A key
//!   with no poll open, and none within its lease (`--ticket-lease-ms`, 5 s) is
//!   dropped: cancelled with nothing spent, or, if its turn came while nobody polled,
//!   its grant void (the unit spent, the bucket free again). One shard waits under one
//!   key: a new key for a shard that waits under another gets `409`.
//!   `priority=reconnect` goes before the shards still starting up in its bucket.
//!   `DELETE /v1/identify/K` cancels a waiting request, or releases a granted one's
//!   hold (hold mode); `204`, or `404` for an unknown key. A key used for another shard
//!   gets `409`; a new key while `--max-tickets` keys are kept (65 536 by default), or
//!   `--max-tickets-per-client` from its client's address, gets `429` with
//!   `Retry-After`. `place` is read off `eta_ms` (the grants of its bucket before it,
//!   every route's waiters counted). In cluster mode each key is claimed in Redis, so
//!   every server of the namespace knows it: a poll at a server that does not hold it
//!   gets `202` with `"held_by_another_server": true` (its next poll may reach the
//!   holder), one that was answered gets `410` anywhere, and `DELETE` works anywhere.
//! - `GET /v1/status`: the budget, its reset, Discord's word (its age and the last
//!   refresh's error), each bucket's next free instant and the oldest 1,000 waiting
//!   shards with their estimated waits (`waiting_count`: all of them), as JSON.
//! - `GET /status`: the same as a small HTML page that refreshes itself, for a person
//!   watching a start-up (no JavaScript).
//!
//! With `--auth-token`, every route but `/livez` and `/readyz` wants
//! `Authorization: Bearer <token>` (`401` otherwise; the scheme in any case, the token
//! compared in constant time). A token no client can send (empty, a space, a control
//! character) stops the server at start; a trailing newline is trimmed.
//!
//! The server listens on `127.0.0.1` by default (`--host`): anyone who reaches it can
//! spend the bot's budget, so listening beyond loopback without a token logs a
//! warning. Redis URLs appear in answers and logs without their password. The first
//! line of standard output is `identify-queue-server listening on ADDRESS:PORT`
//! (`--port 0` picks a free port). Connections are served by an accept loop with a
//! head and idle timeout, a small head buffer, caps in all and per client address, and
//! TCP keepalive (`listen.rs`).
//!
//! # Clients
//!
//! Each speaks the native API (a key per attempt, polls of at most 20 s, `DELETE` on
//! cancel) and never lets its library IDENTIFY without a grant: the Rust client
//! [`http::Queue`](crate::http::Queue) (a twilight queue with feature `twilight`), the
//! npm package `identify-queue` for @discordjs/ws and discord.js (`clients/js`), and
//! the PyPI package `identify-queue` for discord.py (`clients/python`). twilight's
//! own HTTP client speaks twilight's route.
//!
//! # Spacing
//!
//! A bucket's grants are `--interval-ms` plus `--margin-ms` apart (250 ms by default:
//! Discord counts an IDENTIFY on arrival, up to 75 ms after its grant in a cold start
//! of @discordjs/ws, and the network adds its jitter). A fresh in-memory server treats
//! every bucket as granted at its start, so its first grants come an interval and the
//! margin after it starts: a restart (a crash, a liveness probe) never brings two
//! IDENTIFYs of a bucket closer. Cluster mode keeps the last grants in Redis.
//!
//! # The limit
//!
//! With `--discord-token` the server reads `GET /gateway/bot` at start, every five
//! minutes and just after each reset (honouring Discord's `Retry-After`), and applies
//! it with its age (the time since the request was sent): the grants within the grace
//! before the send are subtracted, and its reset counts from its application, the
//! latest instant Discord can have computed it ([rules 3.11](crate::rules)). Until the
//! first read succeeds nothing is granted and `/readyz` says why; requests wait. A
//! refresh that fails later keeps the limit in force. In cluster mode the reader is
//! also the queue's limit source: after Redis loses its state, grants resume once the
//! loss's quarantine is over (10 s and `--grace-ms`). Without a token, the static limit
//! of the flags; in cluster mode it only seeds a namespace that holds no state: a
//! server joining a namespace with state (other servers', or its own before a restart)
//! takes it as it is, since the static flags are not Discord's word and the budget
//! there was spent; and after Redis loses the state nothing is granted until an
//! operator seeds it again (`/readyz` and an ERROR log say how).
//!
//! # Shutdown
//!
//! SIGTERM (or Ctrl-C): the server stops accepting, cancels every waiting request at
//! once (its connection is closed without an answer, so twilight's client asks again
//! elsewhere), and exits. A grant is spent only once its answer is being written.

mod args;
mod backend;
mod discord;
mod listen;
mod metrics;
mod page;
mod routes;
mod tickets;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

pub use args::{Args, DISCORD_API};
use backend::Backend;
use discord::Discord;
use metrics::Metrics;

use crate::{SessionStartLimit, ShardId, lock};

/// Runs the server with `args` until SIGTERM or Ctrl-C: the binary's `main`.
pub fn main(args: Args) -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("identify-queue-server: cannot start a runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(args));
    // Whatever still waits is dropped here: its connection closes without an answer.
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("identify-queue-server: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Serves until SIGTERM or Ctrl-C. Errors, before serving: bad flags, or the address
/// taken.
pub async fn run(args: Args) -> Result<(), String> {
    let args = args.checked()?;
    let config = args.config();
    config.validate().map_err(|e| e.to_string())?;
    if args.discord_token.is_none() {
        args.static_limit().validate().map_err(|e| e.to_string())?;
    }
    if args.max_tickets == 0 {
        return Err("`--max-tickets` must be at least 1".to_owned());
    }
    let listener = listen::bind(SocketAddr::new(args.host, args.port))
        .map_err(|e| format!("cannot listen on {}:{}: {e}", args.host, args.port))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    if !address.ip().is_loopback() && args.auth_token.is_none() {
        tracing::warn!(
            %address,
            "listening beyond loopback without `--auth-token`: anyone who reaches this \
             address can spend the bot's session starts",
        );
    }
    let (shutdown_tx, shutdown) = watch::channel(false);
    let state = Arc::new(Shared::new(args, shutdown));
    tokio::spawn(supervise_limit(Arc::clone(&state)));
    tokio::spawn(watch_health(Arc::clone(&state)));
    let sweeper = Arc::clone(&state);
    let every = Duration::from_millis(state.args.ticket_lease_ms.clamp(10, 1000));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let backend = sweeper.backend.borrow().clone();
            sweeper.tickets.sweep(backend.as_ref()).await;
        }
    });
    let app = routes::router(Arc::clone(&state));
    // Tests and scripts read the address from this line (with `--port 0`).
    println!("identify-queue-server listening on {address}");
    tracing::info!(%address, "listening");
    let caps = listen::Caps::of(
        state.args.max_connections,
        state.args.max_connections_per_client,
    );
    tracing::info!(
        total = caps.total,
        per_client = caps.per_client,
        "connection caps"
    );
    let counters = listen::Counters {
        refused: state.metrics.refused_connections.clone(),
        accept_errors: state.metrics.accept_errors.clone(),
    };
    listen::serve(listener, app, caps, counters, signal()).await;
    tracing::info!("shutting down: cancelling every waiting request");
    state.set_not_ready("shutting down");
    let _ = shutdown_tx.send(true);
    // Each waiting handler drops its request (nothing spent), then waits forever: the
    // runtime's shutdown closes its connection without an answer.
    let deadline = Instant::now() + Duration::from_secs(2);
    while state.waiting_count() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// Reads Discord's word (or takes the static limit), starts the queue with it, and
/// keeps it fresh. Until a limit is known nothing is granted; once one is, a refresh
/// that fails leaves it in force (`/readyz` stays 200; the status shows the word's age
/// and the error).
async fn supervise_limit(state: Arc<Shared>) {
    let args = state.args.clone();
    let redis = args
        .redis
        .as_deref()
        .map(|url| (url, args.namespace.as_str()));
    let discord = match &args.discord_token {
        Some(token) => match Discord::new(&args.discord_api, token) {
            Ok(discord) => Some(Arc::new(discord)),
            Err(error) => {
                state.set_not_ready(&format!("cannot make an HTTP client: {error}"));
                return;
            }
        },
        None => None,
    };
    let mut backoff = Duration::from_secs(1);
    loop {
        let word = match &discord {
            Some(discord) => discord.read().await.map(|word| (word.limit, word.sent)),
            None => Ok((args.static_limit(), Instant::now())),
        };
        let applied = match word {
            Ok((limit, sent)) => match apply(&state, limit, sent, discord.clone(), redis).await {
                Ok(()) => Ok(limit),
                Err(error) => Err((format!("cannot apply the limit: {error}"), None)),
            },
            Err(failed) => Err((
                format!("cannot read Discord's /gateway/bot: {}", failed.reason),
                failed.retry_after,
            )),
        };
        let limit = match applied {
            Ok(limit) => limit,
            Err((reason, retry_after)) => {
                tracing::warn!(%reason, "no fresh limit");
                if state.backend.borrow().is_none() {
                    state.set_not_ready(&reason);
                } else {
                    // The limit in force stays: grants flow on it.
                    lock(&state.word).error = Some(reason);
                }
                // Discord's `Retry-After`, when it said one, else a backoff.
                tokio::time::sleep(backoff.max(retry_after.unwrap_or_default())).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        backoff = Duration::from_secs(1);
        if discord.is_none() {
            return;
        }
        // Again every few minutes, and just after the reset.
        let after_reset = limit.reset_after.saturating_add(Duration::from_secs(1));
        tokio::time::sleep(discord::REFRESH.min(after_reset)).await;
    }
}

/// Applies a limit read at `sent`: starts the queue with it, or updates the queue.
async fn apply(
    state: &Shared,
    limit: SessionStartLimit,
    sent: Instant,
    discord: Option<Arc<Discord>>,
    redis: Option<(&str, &str)>,
) -> Result<(), backend::Failure> {
    let from_discord = discord.is_some();
    let backend = state.backend.borrow().clone();
    match backend {
        Some(backend) => backend.update(limit, sent.elapsed()).await?,
        None => {
            let backend = Backend::start(limit, discord, state.args.config(), redis).await?;
            state.backend_tx.send_replace(Some(Arc::new(backend)));
        }
    }
    tracing::info!(?limit, "limit applied");
    *lock(&state.limit) = Some(limit);
    *lock(&state.word) = Word {
        read: from_discord.then_some(sent),
        error: None,
    };
    state.clear_not_ready();
    Ok(())
}

/// Watches whether grants can flow, every second: counts the seconds they cannot
/// (`identify_queue_unready_seconds_total`) and logs each change, an ERROR when only
/// an operator can help (a static limit in cluster mode after Redis lost the state).
async fn watch_health(state: Arc<Shared>) {
    const EVERY: Duration = Duration::from_secs(1);
    let mut was: Option<String> = None;
    loop {
        tokio::time::sleep(EVERY).await;
        let reason = state.not_ready();
        if reason.is_some() {
            state.metrics.unready_seconds.inc_by(EVERY.as_secs_f64());
        }
        if reason == was {
            continue;
        }
        match &reason {
            Some(reason) if reason.contains(NEEDS_AN_OPERATOR) => {
                tracing::error!(%reason, "no grants until an operator acts");
            }
            Some(reason) => tracing::warn!(%reason, "not ready: no grants"),
            None => tracing::info!("ready: grants flow"),
        }
        was = reason;
    }
}

/// What `/readyz` and the log say when a static limit cannot go on: Redis lost the
/// namespace's state, and only Discord's word (or an operator's) may seed it again.
const NEEDS_AN_OPERATOR: &str = "Redis lost the namespace's state and this server has \
    no `--discord-token` to read Discord's word: restart one server of the namespace \
    with `--remaining` set to the session starts Discord says are left (`GET \
    /gateway/bot`), or run the servers with `--discord-token`";

/// Discord's word in force: when it was read, and why the last refresh failed.
#[derive(Clone, Default)]
struct Word {
    /// When the word in force was asked for (`None`: a static limit, or none yet).
    read: Option<Instant>,
    /// Why the last refresh failed, while it is the last.
    error: Option<String>,
}

/// A request waiting for its grant, for the status routes.
#[derive(Clone, Copy)]
struct Waiting {
    shard: ShardId,
    since: Instant,
}

/// What the routes share.
struct Shared {
    args: Args,
    backend: watch::Receiver<Option<Arc<Backend>>>,
    backend_tx: watch::Sender<Option<Arc<Backend>>>,
    /// The last limit applied (its `max_concurrency` decides what a shard-less request
    /// gets).
    limit: Mutex<Option<SessionStartLimit>>,
    /// Why grants cannot flow, while they cannot (besides the queue's own health).
    not_ready: Mutex<Option<String>>,
    /// Discord's word in force.
    word: Mutex<Word>,
    metrics: Metrics,
    /// The native API's requests, by idempotency key.
    tickets: tickets::Tickets,
    waiting: Mutex<BTreeMap<u64, Waiting>>,
    requests: AtomicU64,
    /// Ids for requests without a shard (`max_concurrency` 1), from the top down.
    anonymous: AtomicU32,
    started: Instant,
    shutdown: watch::Receiver<bool>,
}

impl Shared {
    fn new(args: Args, shutdown: watch::Receiver<bool>) -> Self {
        let (backend_tx, backend) = watch::channel(None);
        let metrics = Metrics::new();
        let lease = Duration::from_millis(args.ticket_lease_ms);
        let tickets = tickets::Tickets::new(
            lease,
            (args.max_tickets, args.max_tickets_per_client()),
            metrics.grants.clone(),
            metrics.cancelled.clone(),
        );
        Self {
            args,
            backend,
            backend_tx,
            limit: Mutex::new(None),
            not_ready: Mutex::new(Some("reading the limit".to_owned())),
            word: Mutex::new(Word::default()),
            metrics,
            tickets,
            waiting: Mutex::new(BTreeMap::new()),
            requests: AtomicU64::new(0),
            anonymous: AtomicU32::new(u32::MAX),
            started: Instant::now(),
            shutdown,
        }
    }

    /// The queue, once a limit is known.
    async fn backend(&self) -> Arc<Backend> {
        let mut backend = self.backend.clone();
        let found = backend
            .wait_for(Option::is_some)
            .await
            .map(|backend| backend.clone())
            .ok()
            .flatten();
        match found {
            Some(backend) => backend,
            // The sender lives as long as `self`.
            None => std::future::pending().await,
        }
    }

    fn set_not_ready(&self, reason: &str) {
        *lock(&self.not_ready) = Some(reason.to_owned());
    }

    fn clear_not_ready(&self) {
        *lock(&self.not_ready) = None;
    }

    /// Why grants cannot flow now, if they cannot.
    fn not_ready(&self) -> Option<String> {
        if let Some(reason) = lock(&self.not_ready).clone() {
            return Some(reason);
        }
        let backend = self.backend.borrow().clone()?;
        let reason = backend.not_ready()?;
        if self.args.discord_token.is_none() && backend.needs_an_operator() {
            return Some(format!("{reason}: {NEEDS_AN_OPERATOR}"));
        }
        Some(reason)
    }

    /// Discord's word in force.
    fn word(&self) -> Word {
        lock(&self.word).clone()
    }

    fn max_concurrency(&self) -> Option<u32> {
        lock(&self.limit).map(|limit| limit.max_concurrency)
    }

    /// A fresh id for a request without a shard.
    fn anonymous_shard(&self) -> ShardId {
        self.anonymous.fetch_sub(1, Ordering::Relaxed)
    }

    fn waiting_count(&self) -> usize {
        lock(&self.waiting).len()
    }

    /// Registers a waiting request until the guard goes.
    fn enter(self: &Arc<Self>, shard: ShardId) -> WaitGuard {
        let id = self.requests.fetch_add(1, Ordering::Relaxed);
        let since = Instant::now();
        lock(&self.waiting).insert(id, Waiting { shard, since });
        self.metrics.waiting.inc();
        WaitGuard {
            shared: Arc::clone(self),
            id,
            since,
            granted: false,
        }
    }
}

/// A waiting request: counted as cancelled if it goes without its grant.
struct WaitGuard {
    shared: Arc<Shared>,
    id: u64,
    since: Instant,
    granted: bool,
}

impl WaitGuard {
    fn granted(mut self) {
        self.granted = true;
        self.shared.metrics.grants.inc();
        self.shared
            .metrics
            .wait_seconds
            .observe(self.since.elapsed().as_secs_f64());
    }
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        lock(&self.shared.waiting).remove(&self.id);
        self.shared.metrics.waiting.dec();
        if !self.granted {
            self.shared.metrics.cancelled.inc();
        }
    }
}

/// The address a server listens on, read from its first line of output.
pub fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    line.strip_prefix("identify-queue-server listening on ")?
        .trim()
        .parse()
        .ok()
}
