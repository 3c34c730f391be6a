//! The connection to the current Redis master: found directly or through Sentinel,
//! opened again (and the master found again) after any failure.

use std::time::Duration;

use redis::aio::{MultiplexedConnection, PubSubStream};
use redis::{AsyncConnectionConfig, Client};

use super::error::Failure;
use crate::Error;

/// How long opening a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// Where the master is: a URL, or Sentinels that know it.
#[derive(Clone, Debug)]
pub(super) enum Target {
    /// `redis://host:port/db` (or `rediss://`, `unix://`): the master itself.
    Direct(String),
    /// `redis+sentinel://host:port,host:port/master-name[/db]`.
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        db: u32,
    },
}

/// `url` as errors and logs show it: without the password (or the user and password)
/// before the host, which would leak into every log line and health answer.
pub(crate) fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
    match authority.rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

impl Target {
    /// Reads a URL; the error names what is wrong with it (without a password).
    pub(super) fn parse(url: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::InvalidUrl {
            url: redacted(url),
            reason: reason.to_owned(),
        };
        if let Some(rest) = url.strip_prefix("redis+sentinel://") {
            let (hosts, path) = rest
                .split_once('/')
                .ok_or_else(|| bad("no master name: redis+sentinel://host:port/master-name"))?;
            let sentinels: Vec<String> = hosts
                .split(',')
                .filter(|host| !host.is_empty())
                .map(|host| format!("redis://{host}"))
                .collect();
            if sentinels.is_empty() {
                return Err(bad("no Sentinel address before the master name"));
            }
            let (master, db) = match path.split_once('/') {
                Some((master, db)) => (
                    master,
                    db.parse()
                        .map_err(|_| bad("the database after the master name is not a number"))?,
                ),
                None => (path, 0),
            };
            if master.is_empty() {
                return Err(bad("empty master name"));
            }
            for sentinel in &sentinels {
                Client::open(sentinel.as_str())
                    .map_err(|e| bad(&format!("Sentinel address {}: {e}", redacted(sentinel))))?;
            }
            return Ok(Self::Sentinel {
                sentinels,
                master: master.to_owned(),
                db,
            });
        }
        Client::open(url).map_err(|e| bad(&e.to_string()))?;
        Ok(Self::Direct(url.to_owned()))
    }
}

/// An open connection to the master, and its notifications.
pub(super) struct Link {
    pub(super) connection: MultiplexedConnection,
    pub(super) events: PubSubStream,
}

impl Link {
    /// Finds the master and connects; `response_timeout` bounds every call on it
    /// (longer than a `WAIT` for replicas).
    pub(super) async fn open(
        target: &Target,
        channels: &[&str],
        response_timeout: Duration,
    ) -> Result<Self, Failure> {
        let url = match target {
            Target::Direct(url) => url.clone(),
            Target::Sentinel {
                sentinels,
                master,
                db,
            } => find_master(sentinels, master, *db).await?,
        };
        let client = Client::open(url.as_str()).map_err(|e| Failure::redis(redacted(&url), e))?;
        // What the errors below say of it.
        let url = redacted(&url);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(response_timeout));
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| Failure::redis(&url, e))?;
        // A replica (or a master just demoted by Sentinel) must not take grants.
        let role: Vec<redis::Value> = redis::cmd("ROLE")
            .query_async(&mut connection)
            .await
            .map_err(|e| Failure::redis(&url, e))?;
        match role.first() {
            Some(redis::Value::BulkString(kind)) if kind == b"master" => {}
            _ => return Err(format!("{url} is not a master").into()),
        }
        let mut pubsub = ::tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
            .await
            .map_err(|_| Failure::from(format!("{url}: timed out subscribing")))?
            .map_err(|e| Failure::redis(&url, e))?;
        for channel in channels {
            pubsub
                .subscribe(*channel)
                .await
                .map_err(|e| Failure::redis(&url, e))?;
        }
        Ok(Self {
            connection,
            events: pubsub.into_on_message(),
        })
    }
}

/// Asks each Sentinel in turn for the master's address.
async fn find_master(sentinels: &[String], master: &str, db: u32) -> Result<String, String> {
    let mut failures = Vec::new();
    for sentinel in sentinels {
        match ask_sentinel(sentinel, master).await {
            Ok((host, port)) => return Ok(format!("redis://{host}:{port}/{db}")),
            Err(e) => failures.push(format!("{}: {e}", redacted(sentinel))),
        }
    }
    Err(format!(
        "no Sentinel knows master {master:?} ({})",
        failures.join("; ")
    ))
}

async fn ask_sentinel(sentinel: &str, master: &str) -> Result<(String, u16), String> {
    let client = Client::open(sentinel).map_err(|e| e.to_string())?;
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(CONNECT_TIMEOUT));
    let mut connection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| e.to_string())?;
    let address: Option<(String, u16)> = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg(master)
        .query_async(&mut connection)
        .await
        .map_err(|e| e.to_string())?;
    address.ok_or_else(|| "unknown master name".to_owned())
}
