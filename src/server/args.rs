//! The server's flags, each also read from its environment variable in capitals (as
//! twilight's gateway-queue server reads `HOST`, `PORT` and `DISCORD_TOKEN`).

use std::net::IpAddr;
use std::time::Duration;

use clap::Parser;

use crate::{Config, SessionStartLimit};

/// Discord's API, version 10.
pub const DISCORD_API: &str = "https://discord.com/api/v10";

/// The longest duration a flag takes (ms): an hour.
const MAX_DURATION_MS: u64 = 60 * 60 * 1000;

/// identify-queue-server: one identify queue for every process of a Discord bot, in
/// any language. A drop-in for twilight's gateway-queue server: `GET /?shard=N`
/// answers when shard N may IDENTIFY.
#[derive(Parser, Clone, Debug)]
#[command(name = "identify-queue-server", version, about, long_about = None)]
pub struct Args {
    /// The address to listen on. Loopback by default: anyone who reaches the server
    /// can spend the bot's budget, so another address without `--auth-token` logs a
    /// warning (use `0.0.0.0` in a container, behind its network).
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// The port to listen on (80, as twilight's server; 0 picks a free one, printed on
    /// the first line of output).
    #[arg(long, env = "PORT", default_value_t = 80)]
    pub port: u16,
    /// The bot's token: the limit is read from Discord's `GET /gateway/bot` at start,
    /// before each reset and every few minutes. Without it, the static limit below.
    #[arg(long, env = "DISCORD_TOKEN", hide_env_values = true)]
    pub discord_token: Option<String>,
    /// Discord's API base URL (tests point it at a fake).
    #[arg(long, env = "DISCORD_API", default_value = DISCORD_API)]
    pub discord_api: String,
    /// Static limit (no token): `max_concurrency`.
    #[arg(long, env = "MAX_CONCURRENCY", default_value_t = 1)]
    pub max_concurrency: u32,
    /// Static limit (no token): session starts per 24 h.
    #[arg(long, env = "TOTAL", default_value_t = 1000)]
    pub total: u32,
    /// Static limit (no token): session starts left now (default: `total`).
    #[arg(long, env = "REMAINING")]
    pub remaining: Option<u32>,
    /// Static limit (no token): milliseconds until the budget resets (default: a day).
    #[arg(long, env = "RESET_AFTER_MS", default_value_t = 86_400_000)]
    pub reset_after_ms: u64,
    /// Milliseconds between two IDENTIFYs of one bucket (Discord's 5 s). In memory a
    /// fresh server treats every bucket as granted at its start, so its first grants
    /// come an interval (and the margin) after it starts: a restart never brings two
    /// IDENTIFYs of a bucket closer (in cluster mode Redis keeps the last grants).
    #[arg(long, env = "INTERVAL_MS", default_value_t = 5000)]
    pub interval_ms: u64,
    /// Milliseconds added to `--interval-ms` between two grants of one bucket. Discord
    /// counts an IDENTIFY when it arrives, not when it was granted: a shard takes up to
    /// 75 ms from its grant to its IDENTIFY in a cold start of @discordjs/ws (measured on
    /// loopback), and the network between bot and Discord adds its jitter; 250 ms covers
    /// both, at 5 % of Discord's 5 s (twilight's own server spaces at 6 s: 20 %).
    #[arg(long, env = "MARGIN_MS", default_value_t = 250)]
    pub margin_ms: u64,
    /// Milliseconds of doubt about Discord's word: how long before its read it may
    /// have been computed, and how late an IDENTIFY may reach Discord after its grant
    /// (`Config::grace`, rules 3.11). Deliveries within it of a word or a reset are
    /// held back from the budget; in cluster mode, after Redis lost its state, the word
    /// is read again 10 s and this long after the loss was noticed.
    #[arg(long, env = "GRACE_MS", default_value_t = 30_000)]
    pub grace_ms: u64,
    /// Hold mode: a granted shard holds its bucket until released (`/v1`) or for this
    /// many milliseconds (at least `--interval-ms`: a bucket is held that long anyway).
    #[arg(long, env = "HOLD_TIMEOUT_MS")]
    pub hold_timeout_ms: Option<u64>,
    /// Cluster mode: the Redis URL (`redis://host:port/db`, or
    /// `redis+sentinel://host:port,host:port/master`); every server on one namespace
    /// serves one bot.
    #[arg(long, env = "REDIS")]
    pub redis: Option<String>,
    /// Cluster mode: the bot's namespace in Redis (its application id, say).
    #[arg(long, env = "NAMESPACE", default_value = "identify-queue")]
    pub namespace: String,
    /// The native API: how long a request key lives with no poll open (from the end
    /// of its last poll, answered or cut) before it is dropped: a request not granted
    /// yet is cancelled, nothing spent; a grant no poll took is void (its unit spent,
    /// its bucket free again). Seconds: a client asks again at once after an answer.
    #[arg(long, env = "TICKET_LEASE_MS", default_value_t = 5_000)]
    pub ticket_lease_ms: u64,
    /// The native API: the most request keys kept at once (waiting, or granted and
    /// kept for their lease); a new key beyond it gets `429`, so that an open server
    /// cannot be made to hold memory without bound.
    #[arg(long, env = "MAX_TICKETS", default_value_t = 65_536)]
    pub max_tickets: usize,
    /// The native API: the most request keys one client address keeps at once
    /// (default: a quarter of `--max-tickets`), so that one client cannot take them
    /// all. Clients behind one proxy share an address.
    #[arg(long, env = "MAX_TICKETS_PER_CLIENT")]
    pub max_tickets_per_client: Option<usize>,
    /// The most connections served at once (default: the open-files limit, raised to
    /// its hard limit at start, less 288 for Redis, Discord and the health checks).
    /// Past it a connection is closed unanswered; a few more are kept for `/livez` and
    /// `/readyz` only.
    #[arg(long, env = "MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// The most connections served at once from one client address (default: three
    /// quarters of `--max-connections`), so that one client cannot take them all.
    #[arg(long, env = "MAX_CONNECTIONS_PER_CLIENT")]
    pub max_connections_per_client: Option<usize>,
    /// When set, every route but `/livez` and `/readyz` wants
    /// `Authorization: Bearer <token>`. It must be visible ASCII (what a client can
    /// send in a header); a trailing newline (a token read from a file) is trimmed.
    #[arg(long, env = "AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
}

impl Args {
    /// Checks what the flags cannot say alone, before the server listens: the error
    /// names the flag and the problem. A trailing newline of `--auth-token` is
    /// trimmed (and said so in the log).
    pub fn checked(mut self) -> Result<Self, String> {
        if let Some(token) = self.auth_token.as_mut() {
            let trimmed = token.trim_end_matches(['\n', '\r']).len();
            if trimmed < token.len() {
                token.truncate(trimmed);
                tracing::info!("`--auth-token`: its trailing newline was trimmed");
            }
            if token.is_empty() {
                return Err("`--auth-token` is empty: no client could send it".to_owned());
            }
            if let Some(bad) = token.chars().find(|c| !c.is_ascii_graphic()) {
                return Err(format!(
                    "`--auth-token` holds {bad:?}: a client can send only visible ASCII \
                     (no spaces or control characters) in `Authorization: Bearer <token>`"
                ));
            }
        }
        if let Some(token) = &self.discord_token {
            if token.is_empty() || !token.chars().all(|c| c.is_ascii_graphic()) {
                return Err(
                    "`--discord-token` must be the bot's token: visible ASCII, not empty"
                        .to_owned(),
                );
            }
        }
        reqwest::Url::parse(&self.discord_api)
            .map_err(|e| format!("`--discord-api` {:?} is not a URL: {e}", self.discord_api))?;
        if let Some(url) = &self.redis {
            crate::redis::check_target(url, &self.namespace)
                .map_err(|e| format!("`--redis` or `--namespace`: {e}"))?;
        }
        // Durations past an hour are no setting of Discord's nor of a client's: a typo
        // that would block a bucket, or keep every key, for good.
        for (flag, ms) in [
            ("--interval-ms", Some(self.interval_ms)),
            ("--margin-ms", Some(self.margin_ms)),
            ("--grace-ms", Some(self.grace_ms)),
            ("--ticket-lease-ms", Some(self.ticket_lease_ms)),
            ("--hold-timeout-ms", self.hold_timeout_ms),
        ] {
            if ms.is_some_and(|ms| ms > MAX_DURATION_MS) {
                return Err(format!(
                    "`{flag}` must be at most {MAX_DURATION_MS} (an hour)"
                ));
            }
        }
        if self.max_tickets_per_client == Some(0) {
            return Err("`--max-tickets-per-client` must be at least 1".to_owned());
        }
        if self.max_connections == Some(0) || self.max_connections_per_client == Some(0) {
            return Err(
                "`--max-connections` and `--max-connections-per-client` must be at least 1"
                    .to_owned(),
            );
        }
        if self.ticket_lease_ms == 0 {
            return Err("`--ticket-lease-ms` must be at least 1".to_owned());
        }
        if let Some(hold) = self.hold_timeout_ms {
            if hold < self.interval_ms + self.margin_ms {
                return Err(format!(
                    "`--hold-timeout-ms` {hold} is below `--interval-ms` {} and \
                     `--margin-ms` {}: a bucket is held at least that long, so no grant \
                     could ever be delivered",
                    self.interval_ms, self.margin_ms
                ));
            }
        }
        Ok(self)
    }

    /// The native API's key cap per client address.
    pub fn max_tickets_per_client(&self) -> usize {
        self.max_tickets_per_client
            .unwrap_or((self.max_tickets / 4).max(1))
            .min(self.max_tickets)
    }

    /// The queue's configuration: a bucket's grants are `--interval-ms` and
    /// `--margin-ms` apart.
    pub fn config(&self) -> Config {
        let spacing = self.interval_ms.saturating_add(self.margin_ms);
        let config = Config::default()
            .interval(Duration::from_millis(spacing))
            .grace(Duration::from_millis(self.grace_ms));
        match self.hold_timeout_ms {
            Some(timeout) => config.hold_until_release(Duration::from_millis(timeout)),
            None => config,
        }
    }

    /// The static limit given by flags.
    pub fn static_limit(&self) -> SessionStartLimit {
        SessionStartLimit {
            total: self.total,
            remaining: self.remaining.unwrap_or(self.total),
            reset_after: Duration::from_millis(self.reset_after_ms),
            max_concurrency: self.max_concurrency,
        }
    }
}
