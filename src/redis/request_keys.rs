//! The server's native API keys in Redis (feature `server`): every server of a
//! namespace knows which of them holds a key's ticket, and that its grant was answered,
//! so a client whose polls land on different servers spends one unit (`lua/request_key.lua`).

use std::time::Duration;

use redis::Script;

use super::Queue;

/// An operation on a request key (see `lua/request_key.lua`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum KeyOp {
    /// Take the key if nobody holds it, or extend it if we do, for `ttl`.
    Claim { ttl: Duration },
    /// The holder answered the grant at `at_ms` (Unix ms): kept `ttl`.
    Answered { at_ms: u64, ttl: Duration },
    /// The holder dropped the ticket.
    Release,
    /// A `DELETE` at any server.
    Cancel,
}

/// Who holds a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Holder {
    /// Nobody.
    Nobody,
    /// This queue's server, waiting.
    Us,
    /// Another server, waiting.
    Other,
    /// A server answered its grant at this instant (Unix ms); whether it was us.
    Answered { at_ms: u64, us: bool },
}

impl Queue {
    /// The key `key` of the native API: `op` on it, and who held it before (after, for
    /// a claim). Errors: Redis out of reach (the error says why, without the URL's
    /// password).
    pub(crate) async fn request_key(&self, op: KeyOp, key: &str) -> Result<Holder, String> {
        let inner = &self.inner;
        let Some(mut connection) = inner.connection() else {
            return Err("Redis is not connected".to_owned());
        };
        let (name, answered_ms, ttl) = match op {
            KeyOp::Claim { ttl } => ("claim", 0, ttl),
            KeyOp::Answered { at_ms, ttl } => ("answered", at_ms, ttl),
            KeyOp::Release => ("release", 0, Duration::ZERO),
            KeyOp::Cancel => ("cancel", 0, Duration::ZERO),
        };
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let held: Option<String> = script()
            .key(self.request_key_name(key))
            .arg(name)
            .arg(&inner.client)
            .arg(ttl_ms)
            .arg(answered_ms)
            .invoke_async(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
        Ok(self.holder(held.as_deref()))
    }

    /// Who holds each of `keys` now, in one round trip.
    pub(crate) async fn request_key_holders(&self, keys: &[&str]) -> Result<Vec<Holder>, String> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let Some(mut connection) = self.inner.connection() else {
            return Err("Redis is not connected".to_owned());
        };
        let mut mget = redis::cmd("MGET");
        for key in keys {
            mget.arg(self.request_key_name(key));
        }
        let held: Vec<Option<String>> = mget
            .query_async(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
        Ok(held
            .iter()
            .map(|held| self.holder(held.as_deref()))
            .collect())
    }

    /// Keeps each of `keys` alive for at least `ttl` (its holder has a poll open on
    /// it), in one round trip; a key gone (cancelled) stays gone.
    pub(crate) async fn renew_request_keys(
        &self,
        keys: &[&str],
        ttl: Duration,
    ) -> Result<(), String> {
        if keys.is_empty() {
            return Ok(());
        }
        let Some(mut connection) = self.inner.connection() else {
            return Err("Redis is not connected".to_owned());
        };
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut pipeline = redis::pipe();
        for key in keys {
            pipeline
                .cmd("PEXPIRE")
                .arg(self.request_key_name(key))
                .arg(ttl_ms)
                .arg("GT")
                .ignore();
        }
        pipeline
            .query_async::<()>(&mut connection)
            .await
            .map_err(|e| e.to_string())
    }

    fn request_key_name(&self, key: &str) -> String {
        format!("{}key:{key}", self.inner.prefix)
    }

    fn holder(&self, held: Option<&str>) -> Holder {
        let client = self.inner.client.as_str();
        match held {
            None => Holder::Nobody,
            Some(held) => match held.split_once(' ') {
                None if held == client => Holder::Us,
                None => Holder::Other,
                Some((owner, at)) => Holder::Answered {
                    at_ms: at.parse().unwrap_or(0),
                    us: owner == client,
                },
            },
        }
    }
}

/// The script, compiled once.
fn script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(include_str!("lua/request_key.lua")))
}
