//! The limit's supervisor: reads Discord's word (or takes the static limit), starts
//! the queue with it and keeps it fresh, and watches whether grants can flow.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::backend::{self, Backend};
use super::discord::{self, Discord};
use super::{ServerState, lock};
use crate::SessionStartLimit;

/// Reads Discord's word (or takes the static limit), starts the queue with it, and
/// keeps it fresh. Until a limit is known nothing is granted; once one is, a refresh
/// that fails leaves it in force (`/readyz` stays 200; the status shows the word's age
/// and the error).
pub(super) async fn supervise_limit(state: Arc<ServerState>) {
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
    state: &ServerState,
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
pub(super) async fn watch_health(state: Arc<ServerState>) {
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
pub(super) const NEEDS_AN_OPERATOR: &str = "Redis lost the namespace's state and this server has \
    no `--discord-token` to read Discord's word: restart one server of the namespace \
    with `--remaining` set to the session starts Discord says are left (`GET \
    /gateway/bot`), or run the servers with `--discord-token`";

/// Discord's word in force: when it was read, and why the last refresh failed.
#[derive(Clone, Default)]
pub(super) struct Word {
    /// When the word in force was asked for (`None`: a static limit, or none yet).
    pub(super) read: Option<Instant>,
    /// Why the last refresh failed, while it is the last.
    pub(super) error: Option<String>,
}
