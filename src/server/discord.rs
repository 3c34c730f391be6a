//! Discord's word: `GET /gateway/bot`'s `session_start_limit`, read with the bot's
//! token.

use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::SessionStartLimit;

/// How often the word is read again while nothing else asks for it (Discord: "should
/// not be cached for extended periods").
pub(super) const REFRESH: Duration = Duration::from_secs(5 * 60);

/// How long one read may take.
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
struct GatewayBot {
    session_start_limit: Limit,
}

#[derive(Deserialize)]
struct Limit {
    total: u32,
    remaining: u32,
    reset_after: u64,
    max_concurrency: u32,
}

/// The most of an answer read (`/gateway/bot` answers a few hundred bytes).
const MAX_ANSWER: usize = 64 * 1024;

/// Reads Discord's word.
pub(super) struct Discord {
    client: reqwest::Client,
    url: String,
    token: String,
}

/// Why a read failed.
#[derive(Debug)]
pub(super) struct Failed {
    pub(super) reason: String,
    /// How long Discord said to wait before asking again.
    pub(super) retry_after: Option<Duration>,
}

impl From<String> for Failed {
    fn from(reason: String) -> Self {
        Self {
            reason,
            retry_after: None,
        }
    }
}

/// A word and when it was read.
pub(super) struct Word {
    pub(super) limit: SessionStartLimit,
    /// When the request was sent: Discord answered after it, so the word is at most
    /// this old.
    pub(super) sent: Instant,
}

impl Discord {
    pub(super) fn new(api: &str, token: &str) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .user_agent(concat!(
                "DiscordBot (https://github.com/identify-queue, ",
                env!("CARGO_PKG_VERSION"),
                ")"
            ))
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self {
            client,
            url: format!("{}/gateway/bot", api.trim_end_matches('/')),
            token: token.to_owned(),
        })
    }

    /// Reads `GET /gateway/bot`; the error says what failed, and when Discord said to
    /// ask again (its `Retry-After`, on a `429`).
    pub(super) async fn read(&self) -> Result<Word, Failed> {
        let sent = Instant::now();
        let mut response = self
            .client
            .get(&self.url)
            .header("Authorization", format!("Bot {}", self.token))
            .send()
            .await
            .map_err(|e| format!("GET {}: {e}", self.url))?;
        let status = response.status();
        if !status.is_success() {
            // Seconds, possibly with a fraction (Discord sends both forms).
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.trim().parse::<f64>().ok())
                .filter(|secs| secs.is_finite() && *secs >= 0.0)
                .map(|secs| Duration::from_secs_f64(secs.min(3600.0)));
            return Err(Failed {
                reason: format!("GET {}: {status}", self.url),
                retry_after,
            });
        }
        // Read with a cap: an answer of Discord's is a few hundred bytes, and a proxy
        // or a fake answering without end must not fill the memory.
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("GET {}: {e}", self.url))?
        {
            if body.len() + chunk.len() > MAX_ANSWER {
                return Err(
                    format!("GET {}: the answer is over {MAX_ANSWER} bytes", self.url).into(),
                );
            }
            body.extend_from_slice(&chunk);
        }
        let body: GatewayBot =
            serde_json::from_slice(&body).map_err(|e| format!("GET {}: {e}", self.url))?;
        let limit = body.session_start_limit;
        let limit = SessionStartLimit {
            total: limit.total,
            remaining: limit.remaining,
            reset_after: Duration::from_millis(limit.reset_after),
            max_concurrency: limit.max_concurrency,
        };
        limit
            .validate()
            .map_err(|e| format!("GET {}: {e}", self.url))?;
        Ok(Word { limit, sent })
    }
}
