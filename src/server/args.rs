//! The server's flags, each also read from its environment variable in capitals (as
//! twilight's gateway-queue server reads `HOST`, `PORT` and `DISCORD_TOKEN`).

use std::net::IpAddr;
use std::time::Duration;

use clap::Parser;

use crate::{Config, SessionStartLimit};

/// Discord's API, version 10.
pub const DISCORD_API: &str = "https://discord.com/api/v10";

/// identify-queue-server: one identify queue for every process of a Discord bot, in
/// any language. A drop-in for twilight's gateway-queue server: `GET /?shard=N`
/// answers when shard N may IDENTIFY.
#[derive(Parser, Clone, Debug)]
#[command(name = "identify-queue-server", version, about, long_about = None)]
pub struct Args {
    /// The address to listen on.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
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
    /// Milliseconds between two IDENTIFYs of one bucket (Discord's 5 s).
    #[arg(long, env = "INTERVAL_MS", default_value_t = 5000)]
    pub interval_ms: u64,
    /// Hold mode: a granted shard holds its bucket until released (`/v1`) or for this
    /// many milliseconds.
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
    /// The native API: how long a request key lives without a poll (after its last
    /// poll's wait) before it is cancelled, nothing spent.
    #[arg(long, env = "TICKET_LEASE_MS", default_value_t = 30_000)]
    pub ticket_lease_ms: u64,
    /// The native API: the most request keys kept at once (waiting, or granted and
    /// kept for their lease); a new key beyond it gets `429`, so that an open server
    /// cannot be made to hold memory without bound.
    #[arg(long, env = "MAX_TICKETS", default_value_t = 65_536)]
    pub max_tickets: usize,
    /// When set, every route but `/livez` and `/readyz` wants
    /// `Authorization: Bearer <token>`.
    #[arg(long, env = "AUTH_TOKEN", hide_env_values = true)]
    pub auth_token: Option<String>,
}

impl Args {
    /// The queue's configuration.
    pub fn config(&self) -> Config {
        let config = Config::default().interval(Duration::from_millis(self.interval_ms));
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
