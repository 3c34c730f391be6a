//! Boot: the binary's `main`, the server's start and its shutdown.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::supervisor::{supervise_limit, watch_health};
use super::{Args, ServerState, listen, routes};

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
    let state = Arc::new(ServerState::new(args, shutdown));
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

/// The address a server listens on, read from its first line of output.
pub fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    line.strip_prefix("identify-queue-server listening on ")?
        .trim()
        .parse()
        .ok()
}
