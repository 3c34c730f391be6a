//! The accept loop: what `axum::serve` leaves to the operator, for a server that waits
//! on thousands of connections from clients it does not control.
//!
//! - **Heads and idle connections time out.** hyper's header-read timer (it needs a
//!   timer, which `axum::serve` does not give it) runs from the moment a connection
//!   waits for a request head, so it bounds both a head sent slowly (slowloris) and a
//!   kept-alive connection that asks nothing; a request being served (a long poll, a
//!   twilight request waiting for its turn) is not under it.
//! - **A head fits a small buffer.** A request here is under 200 bytes; hyper's default
//!   buffer takes 400 KB of unfinished head per connection.
//! - **Connections are capped**, in all and per client address, below the process's
//!   file-descriptor limit (its soft limit is raised to the hard one at start). Past a
//!   cap a connection is closed without an answer (on twilight's route any answer would
//!   read as "go"), counted and logged. A few connections past the total cap are still
//!   taken for the health routes only (`/livez`, `/readyz`), so that a probe sees a full
//!   server as alive rather than restarting it; any other request on them is closed
//!   unanswered.
//! - **A long listen queue** (4,096, as the kernel allows), for a start-up's burst.
//! - **Accept errors are logged** (at most once a second), and the loop goes on.
//! - **TCP keepalive** on every connection: a client host that vanishes without a word
//!   has its waiting requests cancelled (nothing spent) within about a minute, instead
//!   of being granted to nobody.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use tokio::net::{TcpListener, TcpStream};

use super::lock;

/// How long a connection may take to send a request head, and may sit idle between
/// requests.
pub(super) const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection in the health room may take to send its request head.
const HEALTH_HEAD_TIMEOUT: Duration = Duration::from_secs(1);

/// The largest request head read (hyper's smallest buffer is 8 KiB).
const MAX_HEAD: usize = 16 * 1024;

/// Connections taken past the total cap, for the health routes only.
const HEALTH_ROOM: usize = 32;

/// File descriptors left for everything but clients' connections (Redis, Discord,
/// logs, the health room).
const RESERVED_FDS: u64 = 256;

/// The listen queue asked of the kernel (it caps it at `net.core.somaxconn`): a big
/// bot's shards connect at once, and a short queue drops their handshakes, which
/// clients retry only after seconds.
const BACKLOG: u32 = 4096;

/// A listener on `address` with a listen queue of [`BACKLOG`].
pub(super) fn bind(address: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(BACKLOG)
}

/// The connection caps.
#[derive(Clone, Copy, Debug)]
pub(super) struct Caps {
    /// Connections at once, in all.
    pub(super) total: usize,
    /// Connections at once from one client address.
    pub(super) per_client: usize,
}

impl Caps {
    /// The caps of the flags, or the defaults: the total below the file-descriptor
    /// limit (raised first), and three quarters of it for one client address, so that
    /// one client alone never takes every connection while a bot whose shards all run
    /// behind one address (a task per shard on twilight's route) still has most.
    pub(super) fn of(total: Option<usize>, per_client: Option<usize>) -> Self {
        let fds = raise_fd_limit();
        let room = fds
            .saturating_sub(RESERVED_FDS + HEALTH_ROOM as u64)
            .max(16);
        let total = total.unwrap_or(usize::try_from(room).unwrap_or(usize::MAX));
        let per_client = per_client.unwrap_or((total - total / 4).max(1)).min(total);
        Self { total, per_client }
    }
}

/// Raises the soft limit of open files to the hard one (as Go's runtime does at
/// start: the soft limit is often 1,024, a thousand-shard start-up on twilight's route
/// alone), and returns the soft limit in force.
fn raise_fd_limit() -> u64 {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let limit = getrlimit(Resource::Nofile);
        if limit.current < limit.maximum {
            let raised = rustix::process::Rlimit {
                current: limit.maximum,
                maximum: limit.maximum,
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => tracing::info!(
                    from = ?limit.current,
                    to = ?limit.maximum,
                    "raised the open-files limit"
                ),
                Err(error) => tracing::warn!(%error, "cannot raise the open-files limit"),
            }
        }
        getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
    }
    #[cfg(not(unix))]
    {
        u64::MAX
    }
}

/// What the loop counts, for `/metrics`.
#[derive(Clone)]
pub(super) struct Counters {
    /// Connections past a cap: closed at once, or served the health routes only.
    pub(super) refused: Counter,
    /// Failed accepts (the fd limit, mostly).
    pub(super) accept_errors: Counter,
}

/// Open connections, in all and per client address, and in the health room.
#[derive(Default)]
struct Open {
    total: usize,
    by_client: HashMap<IpAddr, usize>,
    health: usize,
}

/// A connection's place, given back when it closes.
struct Slot {
    open: Arc<Mutex<Open>>,
    /// Under the caps, from this client; `None`: in the health room.
    client: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = lock(&self.open);
        let Some(client) = self.client else {
            open.health -= 1;
            return;
        };
        open.total -= 1;
        if let Some(count) = open.by_client.get_mut(&client) {
            *count -= 1;
            if *count == 0 {
                open.by_client.remove(&client);
            }
        }
    }
}

/// Where a new connection from `client` stands: a slot under the caps (served), one
/// in the health room (health routes only: the caps are reached), or none (closed at
/// once, the reason).
fn admit(open: &Arc<Mutex<Open>>, caps: Caps, client: IpAddr) -> Result<Slot, &'static str> {
    let mut state = lock(open);
    let from_client = state.by_client.get(&client).copied().unwrap_or(0);
    let under_caps = state.total < caps.total && from_client < caps.per_client;
    let client = if under_caps {
        state.total += 1;
        *state.by_client.entry(client).or_default() += 1;
        Some(client)
    } else if state.health < HEALTH_ROOM {
        state.health += 1;
        None
    } else if state.total >= caps.total {
        return Err("the connection cap (--max-connections)");
    } else {
        return Err("a client's share (--max-connections-per-client)");
    };
    Ok(Slot {
        open: Arc::clone(open),
        client,
    })
}

/// Serves `app` on `listener` until `shutdown` resolves.
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    caps: Caps,
    counters: Counters,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let open = Arc::new(Mutex::new(Open::default()));
    let mut last_logged: Option<Instant> = None;
    let mut log_at_most_once_a_second = |message: &str, detail: &str| {
        let now = Instant::now();
        if last_logged.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1)) {
            last_logged = Some(now);
            tracing::warn!(detail, "{message}");
        }
    };
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => return,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                counters.accept_errors.inc();
                log_at_most_once_a_second(
                    "cannot accept a connection (the open-files limit?)",
                    &error.to_string(),
                );
                // Out of descriptors: give the others a moment to close.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let slot = match admit(&open, caps, peer.ip()) {
            Ok(slot) => slot,
            Err(cap) => {
                counters.refused.inc();
                log_at_most_once_a_second("a connection closed unanswered", cap);
                drop(stream);
                continue;
            }
        };
        if slot.client.is_none() {
            counters.refused.inc();
            log_at_most_once_a_second(
                "a connection past the caps: served /livez and /readyz only",
                &peer.ip().to_string(),
            );
        }
        keep_alive(&stream);
        tokio::spawn(connection(stream, peer, app.clone(), slot));
    }
}

/// TCP keepalive: probes after 30 s of silence, every 10 s.
fn keep_alive(stream: &TcpStream) {
    let params = socket2::TcpKeepalive::new().with_time(Duration::from_secs(30));
    #[cfg(any(target_os = "linux", target_os = "macos", target_os = "freebsd"))]
    let params = params
        .with_interval(Duration::from_secs(10))
        .with_retries(3);
    let _ = socket2::SockRef::from(stream).set_tcp_keepalive(&params);
    let _ = stream.set_nodelay(true);
}

/// Serves one connection; a health-only one answers `/livez` and `/readyz` and closes
/// on anything else without an answer.
async fn connection(stream: TcpStream, peer: SocketAddr, app: Router, slot: Slot) {
    let health_only = slot.client.is_none();
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        let mut app = app.clone();
        // The client's address, for its caps on the routes (axum's `ConnectInfo`).
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        async move {
            if health_only && !matches!(request.uri().path(), "/livez" | "/readyz") {
                // An error of the service: hyper closes the connection unanswered.
                return Err(HealthOnly);
            }
            // The router is always ready and never fails.
            match tower_service::Service::call(&mut app, request).await {
                Ok(response) => Ok(response),
                Err(never) => match never {},
            }
        }
    });
    // A connection in the health room has a second for its one request: a probe
    // sends it at once, and the room must not be held by idle connections.
    let (head_timeout, keep_alive) = if health_only {
        (HEALTH_HEAD_TIMEOUT, false)
    } else {
        (HEAD_TIMEOUT, true)
    };
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .keep_alive(keep_alive)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(error) = served {
        tracing::debug!(%peer, %error, "connection ended");
    }
    drop(slot);
}

/// A request on a health-only connection that is not a health check: closes the
/// connection without an answer.
#[derive(Debug)]
pub(super) struct HealthOnly;

impl std::fmt::Display for HealthOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("past the connection cap: only /livez and /readyz are served")
    }
}

impl std::error::Error for HealthOnly {}
