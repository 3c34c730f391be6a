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

    /// Reads `GET /gateway/bot`; the error says what failed.
    pub(super) async fn read(&self) -> Result<Word, String> {
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
            return Err(format!("GET {}: {status}", self.url));
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
                return Err(format!(
                    "GET {}: the answer is over {MAX_ANSWER} bytes",
                    self.url
                ));
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
