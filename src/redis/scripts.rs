//! The Lua scripts that change the shared state, each one atomic on the server.
//!
//! Every script starts with `lua/prelude.lua` (the key layout, the clock, the epoch
//! fence); `redis::Script` sends `EVALSHA` and, when the server lost its script cache
//! (`SCRIPT FLUSH`, a restart, a promoted replica), loads the script and retries.

use redis::Script;

/// The scripts' "never", in ms: 2^50 (35,000 years; `FAR` in `lua/prelude.lua`).
/// Waits and resets beyond it are read and written as it.
pub(super) const NEVER_MS: u64 = 1 << 50;

/// The source of one script: the shebang (Redis 7 flags), the prelude, the body.
fn source(flags: &str, body: &str) -> String {
    format!("#!lua{flags}\n{}\n{body}", include_str!("lua/prelude.lua"))
}

/// The compiled set, one per queue.
pub(super) struct Scripts {
    pub(super) acquire: Script,
    pub(super) release: Script,
    pub(super) touch: Script,
    pub(super) delivered: Script,
    pub(super) leave: Script,
    pub(super) sync: Script,
    pub(super) status: Script,
    /// Every script's source, to load them all in one round trip.
    sources: Vec<String>,
}

impl Scripts {
    pub(super) fn new() -> Self {
        let sources = [
            source("", include_str!("lua/acquire.lua")),
            source("", include_str!("lua/release.lua")),
            source("", include_str!("lua/touch.lua")),
            source("", include_str!("lua/delivered.lua")),
            source("", include_str!("lua/leave.lua")),
            source("", include_str!("lua/sync.lua")),
            // Read only: runs on a master that refuses writes (no replica in reach).
            source(" flags=no-writes", include_str!("lua/status.lua")),
        ];
        let [acquire, release, touch, delivered, leave, sync, status] =
            sources.clone().map(|s| Script::new(&s));
        Self {
            acquire,
            release,
            touch,
            delivered,
            leave,
            sync,
            status,
            sources: sources.into(),
        }
    }

    /// Loads every script into the server's cache in one round trip, so that the
    /// calls that follow are one round trip each (a missing script costs three: the
    /// refusal, the load, the call), and the round trips they measure are true.
    pub(super) async fn load(
        &self,
        connection: &mut redis::aio::MultiplexedConnection,
    ) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        for source in &self.sources {
            pipe.cmd("SCRIPT").arg("LOAD").arg(source).ignore();
        }
        pipe.query_async(connection).await
    }
}

/// What the acquire script answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Answer {
    /// Granted: the token `epoch:seq`, budget left, bucket busy for `next_wait` ms;
    /// `opens`: its delivery may open Discord's window (Redis must hear of it at once).
    Grant {
        token: Token,
        remaining: u32,
        max_concurrency: u32,
        next_wait: u64,
        opens: bool,
    },
    /// Ask again after `wait` ms: when the bucket frees if this process is next in
    /// it, else when the next one's turn lapses (the script's third field says which;
    /// the driver needs only the wait).
    Wait { wait: u64, max_concurrency: u32 },
    /// No budget until the reset (`None`: until Discord's word).
    Budget {
        wait: Option<u64>,
        remaining: u32,
        max_concurrency: u32,
    },
    /// No grants until Discord's word: the state is missing (`StateMissing`) or a new
    /// server process may have lost writes (`NewServer`). `lost`: when the loss was
    /// noticed, if it was, as ms from now until the longest window after it (negative:
    /// since); a word read before a grace after that is quarantined (`lua/sync.lua`).
    NeedLimit { need: NeedLimit, lost: Option<i64> },
}

/// Why the shared state needs Discord's word before anything is granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NeedLimit {
    /// Redis holds no state for the namespace (restarted empty, or flushed).
    StateMissing,
    /// Redis is a new server process (restarted, or a replica promoted): writes of the
    /// old one may be lost.
    NewServer,
}

/// A grant's identity: the epoch it was made in and its sequence number there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Token {
    pub(super) epoch: i64,
    pub(super) seq: i64,
}

/// Reads the acquire script's reply (see `lua/acquire.lua`).
pub(super) fn answer(reply: &[i64]) -> Option<Answer> {
    let field = |i: usize| reply.get(i).copied();
    let count = |i: usize| field(i).and_then(|v| u32::try_from(v).ok());
    // Waits beyond the scripts' "never" are read as it.
    let millis = |i: usize| field(i).map(|v| v.clamp(0, NEVER_MS as i64) as u64);
    Some(match field(0)? {
        1 => Answer::Grant {
            token: Token {
                epoch: field(1)?,
                seq: field(2)?,
            },
            remaining: count(3)?,
            max_concurrency: count(4)?,
            next_wait: millis(5)?,
            opens: field(6) == Some(1),
        },
        2 => Answer::Wait {
            wait: millis(1)?,
            max_concurrency: count(4)?,
        },
        3 => Answer::Budget {
            wait: (field(1)? >= 0).then(|| millis(1).unwrap_or(0)),
            remaining: count(2)?,
            max_concurrency: count(4)?,
        },
        4 => Answer::NeedLimit {
            need: if field(1)? == 1 {
                NeedLimit::StateMissing
            } else {
                NeedLimit::NewServer
            },
            lost: (field(2) == Some(1)).then(|| field(3)).flatten(),
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::redis::link::Target;
    use crate::redis::status::Snapshot;

    #[test]
    fn answers_read_as_the_scripts_write_them() {
        let token = Token { epoch: 7, seq: 3 };
        assert_eq!(
            answer(&[1, 7, 3, 10, 16, 5006, 0]),
            Some(Answer::Grant {
                token,
                remaining: 10,
                max_concurrency: 16,
                next_wait: 5006,
                opens: false,
            })
        );
        assert_eq!(
            answer(&[1, 7, 3, 10, 16, 5006, 1]),
            Some(Answer::Grant {
                token,
                remaining: 10,
                max_concurrency: 16,
                next_wait: 5006,
                opens: true,
            })
        );
        assert_eq!(
            answer(&[3, -1, 0, 0, 16]),
            Some(Answer::Budget {
                wait: None,
                remaining: 0,
                max_concurrency: 16
            })
        );
        assert_eq!(
            answer(&[4, 2, 0, 0, 16]),
            Some(Answer::NeedLimit {
                need: NeedLimit::NewServer,
                lost: None
            })
        );
        assert_eq!(
            answer(&[4, 1, 1, -250, 0]),
            Some(Answer::NeedLimit {
                need: NeedLimit::StateMissing,
                lost: Some(-250)
            })
        );
        // Short, unknown or out-of-range replies are refused, not guessed.
        assert_eq!(answer(&[1, 7, 3]), None);
        assert_eq!(answer(&[9, 0, 0, 0, 0]), None);
        assert_eq!(answer(&[1, 7, 3, -1, 16, 0]), None);
    }

    #[test]
    fn urls_are_shown_without_their_password() {
        use crate::redis::link::redacted;
        let shown = [
            (
                "redis://default:pw@127.0.0.1:6379/0",
                "redis://***@127.0.0.1:6379/0",
            ),
            ("redis://:pw@h:1", "redis://***@h:1"),
            (
                "redis+sentinel://u:pw@h1:1,h2:2/m",
                "redis+sentinel://***@h1:1,h2:2/m",
            ),
            ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
            // An `@` after the host is not user information.
            ("redis://h:1/0?x=a@b", "redis://h:1/0?x=a@b"),
            ("garbage", "garbage"),
        ];
        for (url, expected) in shown {
            assert_eq!(redacted(url), expected, "{url}");
        }
        let error = Target::parse("redis://u:hunter2@h:port/0")
            .err()
            .map(|e| e.to_string());
        assert!(error.is_some_and(|e| !e.contains("hunter2")));
    }

    proptest! {
        /// Whatever Redis (or something posing as it) answers, reading it never panics.
        #[test]
        fn any_reply_reads_without_panicking(reply in proptest::collection::vec(any::<i64>(), 0..12)) {
            let _ = answer(&reply);
            let _ = Snapshot::from_reply(&reply);
        }

        /// Any URL gets a parse or a clear error, never a panic.
        #[test]
        fn any_url_parses_or_errs(url in "(redis(\\+sentinel)?://)?[ -~]{0,40}") {
            if let Err(error) = Target::parse(&url) {
                prop_assert!(error.to_string().contains("invalid URL"));
            }
        }
    }
}
