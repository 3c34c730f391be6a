//! The Lua scripts that change the shared state, each one atomic on the server, and
//! their interface: this file is the one place that knows each script's arguments
//! ([`Call`]) and how to read its reply ([`answer`], [`Touched`], [`Synced`],
//! [`Snapshot::from_reply`], [`Notice`] for what they publish). Each script's header in
//! `lua/` states the same from the other side.
//!
//! Every script starts with `lua/prelude.lua` (the key layout, the clock, the epoch
//! fence); `redis::Script` sends `EVALSHA` and, when the server lost its script cache
//! (`SCRIPT FLUSH`, a restart, a promoted replica), loads the script and retries.

use std::time::Duration;

use redis::{Script, ScriptInvocation};

use super::status::Snapshot;
use crate::{SessionStartLimit, ShardId};

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

impl Scripts {
    /// `call` on the namespace whose keys start with `prefix` (every script's
    /// `KEYS[1]`), ready to send.
    pub(super) fn invocation(&self, prefix: &str, call: &Call<'_>) -> ScriptInvocation<'_> {
        let script = match call {
            Call::Acquire { .. } => &self.acquire,
            Call::Release { .. } => &self.release,
            Call::Touch { .. } => &self.touch,
            Call::Delivered { .. } => &self.delivered,
            Call::Leave { .. } => &self.leave,
            Call::Sync(_) => &self.sync,
            Call::Status => &self.status,
        };
        let mut invocation = script.prepare_invoke();
        invocation.key(prefix);
        for arg in call.args() {
            match arg {
                Arg::Int(value) => invocation.arg(value),
                Arg::Str(value) => invocation.arg(value),
            };
        }
        invocation
    }
}

/// One call of a script, with the arguments it reads (`ARGV`, in the order below).
#[derive(Clone, Copy, Debug)]
pub(super) enum Call<'a> {
    /// `lua/acquire.lua`: the grant of the head of `shard`'s bucket, or a wait. The
    /// deliveries Redis has not heard of ride along (as `Delivered` would send them).
    Acquire {
        client: &'a str,
        shard: ShardId,
        /// The same for a retry of a call whose answer was lost: never spends twice.
        nonce: &'a str,
        /// The shard's priority rank (0 reconnect, 1 start).
        rank: u8,
        /// The rank of the next request of this process in the bucket, -1 if none.
        next_rank: i64,
        /// This process's delivery window.
        window: Duration,
        delivered: &'a [(ShardId, Token)],
    },
    /// `lua/release.lua`: hold mode, free the bucket `token` holds.
    Release { shard: ShardId, token: Token },
    /// `lua/touch.lua`: a grant taken late keeps its bucket busy a window more.
    Touch {
        shard: ShardId,
        token: Token,
        window: Duration,
    },
    /// `lua/delivered.lua`: these permits reached their shards.
    Delivered { deliveries: &'a [(ShardId, Token)] },
    /// `lua/leave.lua`: this process has no more waiters in `bucket`.
    Leave { client: &'a str, bucket: u32 },
    /// `lua/sync.lua`: Discord's word, and the settings every process shares.
    Sync(SyncArgs),
    /// `lua/status.lua`: the state, read only.
    Status,
}

/// The sync script's arguments.
#[derive(Clone, Copy, Debug)]
pub(super) struct SyncArgs {
    /// Discord's word.
    pub(super) limit: SessionStartLimit,
    /// Read this long ago (rounded up: it moves back only where the word counts from,
    /// and earlier counts more).
    pub(super) age: Duration,
    /// What Redis keeps after a delivery window (`Settings::spacing`).
    pub(super) spacing: Duration,
    /// Hold mode's timeout.
    pub(super) hold: Option<Duration>,
    pub(super) grace: Duration,
    pub(super) reserve: u32,
    pub(super) head_grace: Duration,
    /// Only if the namespace holds no state (a limit that is not Discord's word).
    pub(super) seed: bool,
    /// This process saw the namespace's state before: a missing state was lost, and
    /// the word is quarantined (`lua/sync.lua`).
    pub(super) known: bool,
}

/// One argument as Redis receives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Arg<'a> {
    Int(i64),
    Str(&'a str),
}

impl std::fmt::Display for Arg<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Arg::Int(value) => value.fmt(f),
            Arg::Str(value) => value.fmt(f),
        }
    }
}

impl<'a> Call<'a> {
    /// Its script's name: `lua/<name>.lua`.
    pub(super) fn name(&self) -> &'static str {
        match self {
            Call::Acquire { .. } => "acquire",
            Call::Release { .. } => "release",
            Call::Touch { .. } => "touch",
            Call::Delivered { .. } => "delivered",
            Call::Leave { .. } => "leave",
            Call::Sync(_) => "sync",
            Call::Status => "status",
        }
    }

    /// Its `ARGV`, in order.
    pub(super) fn args(&self) -> Vec<Arg<'a>> {
        let int = |value: u64| Arg::Int(i64::try_from(value).unwrap_or(i64::MAX));
        let token_args = |shard: ShardId, token: Token| {
            [
                int(shard.into()),
                Arg::Int(token.epoch),
                Arg::Int(token.seq),
            ]
        };
        match *self {
            Call::Acquire {
                client,
                shard,
                nonce,
                rank,
                next_rank,
                window,
                delivered,
            } => {
                let mut args = vec![
                    Arg::Str(client),
                    int(shard.into()),
                    Arg::Str(nonce),
                    int(rank.into()),
                    Arg::Int(next_rank),
                    int(millis_down(window)),
                ];
                for &(shard, token) in delivered {
                    args.extend(token_args(shard, token));
                }
                args
            }
            Call::Release { shard, token } => token_args(shard, token).to_vec(),
            Call::Touch {
                shard,
                token,
                window,
            } => {
                let mut args = token_args(shard, token).to_vec();
                args.push(int(millis_down(window)));
                args
            }
            Call::Delivered { deliveries } => deliveries
                .iter()
                .flat_map(|&(shard, token)| token_args(shard, token))
                .collect(),
            Call::Leave { client, bucket } => vec![Arg::Str(client), int(bucket.into())],
            Call::Sync(sync) => {
                let limit = sync.limit;
                let reset_after = if limit.reset_after.as_millis() >= u128::from(NEVER_MS) {
                    Arg::Int(-1)
                } else {
                    int(millis_up(limit.reset_after))
                };
                vec![
                    int(limit.total.into()),
                    int(limit.remaining.into()),
                    reset_after,
                    int(limit.max_concurrency.into()),
                    int(millis_up(sync.spacing)),
                    // 0: timer mode; a hold is at least a millisecond.
                    int(sync.hold.map_or(0, |hold| millis_up(hold).max(1))),
                    int(millis_up(sync.grace)),
                    int(millis_up(crate::budget::DAY)),
                    int(sync.reserve.into()),
                    int(millis_up(sync.head_grace)),
                    int(millis_up(sync.age)),
                    int(sync.seed.into()),
                    int(sync.known.into()),
                ]
            }
            Call::Status => Vec::new(),
        }
    }
}

/// `duration` in whole ms of the wire, rounded up, "never" at most.
fn millis_up(duration: Duration) -> u64 {
    let millis = duration.as_nanos().div_ceil(1_000_000);
    u64::try_from(millis.min(u128::from(NEVER_MS))).unwrap_or(NEVER_MS)
}

/// `duration` in whole ms, rounded down (a window: shorter is the safe side).
fn millis_down(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
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

impl Snapshot {
    /// Reads the status script's reply (`lua/status.lua`); `None` when Redis holds no
    /// state.
    pub(super) fn from_reply(reply: &[i64]) -> Option<Self> {
        let field = |i: usize| reply.get(i).copied().unwrap_or(0);
        let millis = |v: i64| Duration::from_millis(v.max(0) as u64);
        if field(0) != 1 {
            return None;
        }
        Some(Self {
            remaining: u32::try_from(field(1)).unwrap_or(0),
            reset_in: (field(2) >= 0).then(|| millis(field(2))),
            needs_limit: match field(3) {
                0 => None,
                1 => Some(NeedLimit::StateMissing),
                _ => Some(NeedLimit::NewServer),
            },
            epoch: field(4),
            max_concurrency: u32::try_from(field(5)).unwrap_or(0),
            grants_logged: field(7).max(0) as u64,
            bucket_free_in: reply.iter().skip(8).map(|&v| millis(v)).collect(),
        })
    }
}

/// What the touch script answered (`lua/touch.lua`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Touched {
    /// The grant still stands, its bucket busy a window more (else it is void).
    pub(super) kept: bool,
    /// Its delivery may open Discord's window: Redis must hear of it at once.
    pub(super) may_open: bool,
}

impl Touched {
    /// 0: void; 1: kept; 2: kept, and its delivery may open Discord's window.
    pub(super) fn from_reply(reply: i64) -> Self {
        Self {
            kept: reply >= 1,
            may_open: reply == 2,
        }
    }
}

/// What the sync script answered (`lua/sync.lua`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Synced {
    /// The shared budget now.
    pub(super) remaining: u32,
    /// The `max_concurrency` in force (a seed may have found another one).
    pub(super) max_concurrency: Option<u32>,
}

impl Synced {
    pub(super) fn from_reply(reply: &[i64]) -> Self {
        Self {
            remaining: reply.first().map_or(0, |&r| u32::try_from(r).unwrap_or(0)),
            max_concurrency: reply.get(3).and_then(|&mc| u32::try_from(mc).ok()),
        }
    }
}

/// What the scripts publish on the namespace's channel (`lua/prelude.lua`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Notice<'a> {
    /// `n <bucket> <head> <wait> [<second> <check>]`: the bucket's next process
    /// (`head`, whose turn comes in `wait`) and the one after it (`second`, which
    /// should look at `check` whether the head came back).
    Next {
        bucket: u32,
        head: &'a str,
        wait: Duration,
        second: Option<&'a str>,
        check: Option<Duration>,
    },
    /// `s`: Discord's word was applied.
    Synced,
    /// `e <epoch>`: Redis is a new server (restart, failover, promotion).
    NewServer { epoch: &'a str },
    /// `e lost`: part of the state was lost (evicted or deleted).
    Lost,
}

impl<'a> Notice<'a> {
    /// Reads a message of the channel; `None` for one it does not know.
    pub(super) fn parse(payload: &'a str) -> Option<Self> {
        let mut words = payload.split(' ');
        let millis = |word: Option<&str>| {
            word.and_then(|w| w.parse::<u64>().ok())
                .map(|w| Duration::from_millis(w.min(NEVER_MS)))
        };
        match words.next()? {
            "n" => {
                let bucket = words.next()?.parse::<u32>().ok()?;
                let head = words.next()?;
                let wait = millis(words.next())?;
                let second = words.next();
                let check = millis(words.next());
                Some(Self::Next {
                    bucket,
                    head,
                    wait,
                    second,
                    check,
                })
            }
            "s" => Some(Self::Synced),
            "e" => Some(match words.next() {
                Some("lost") => Self::Lost,
                epoch => Self::NewServer {
                    epoch: epoch.unwrap_or(""),
                },
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::redis::link::Target;

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

    /// Each call's `ARGV` in the order its script's header (`lua/*.lua`) reads it.
    #[test]
    fn calls_carry_what_each_script_reads() {
        let token = Token { epoch: 7, seq: 3 };
        let ints = |call: Call<'_>| -> Vec<String> {
            call.args()
                .into_iter()
                .map(|arg| match arg {
                    Arg::Int(v) => v.to_string(),
                    Arg::Str(s) => s.to_owned(),
                })
                .collect()
        };
        let acquire = Call::Acquire {
            client: "c",
            shard: 5,
            nonce: "c:1",
            rank: 1,
            next_rank: -1,
            window: Duration::from_micros(12_900),
            delivered: &[(2, token)],
        };
        // client, shard, nonce, rank, next rank, window (ms, down), deliveries in threes.
        assert_eq!(
            ints(acquire),
            ["c", "5", "c:1", "1", "-1", "12", "2", "7", "3"]
        );
        assert_eq!(ints(Call::Release { shard: 4, token }), ["4", "7", "3"]);
        let touch = Call::Touch {
            shard: 4,
            token,
            window: Duration::from_millis(20),
        };
        assert_eq!(ints(touch), ["4", "7", "3", "20"]);
        let deliveries = [(1, token), (2, Token { epoch: 7, seq: 4 })];
        let delivered = Call::Delivered {
            deliveries: &deliveries,
        };
        assert_eq!(ints(delivered), ["1", "7", "3", "2", "7", "4"]);
        assert_eq!(
            ints(Call::Leave {
                client: "c",
                bucket: 9
            }),
            ["c", "9"]
        );
        let sync = SyncArgs {
            limit: SessionStartLimit {
                total: 1000,
                remaining: 990,
                reset_after: Duration::MAX,
                max_concurrency: 16,
            },
            age: Duration::from_micros(1_001),
            spacing: Duration::from_millis(5_051),
            hold: Some(Duration::from_micros(10)),
            grace: Duration::from_secs(30),
            reserve: 2,
            head_grace: Duration::from_millis(250),
            seed: true,
            known: false,
        };
        // total, remaining, reset_after (-1: never), max_concurrency, spacing, hold (at
        // least 1 ms), grace, the day, reserve, head grace, age (ms, up), seed, known.
        assert_eq!(
            ints(Call::Sync(sync)),
            [
                "1000", "990", "-1", "16", "5051", "1", "30000", "86400000", "2", "250", "2", "1",
                "0"
            ]
        );
        let timer_mode = SyncArgs { hold: None, ..sync };
        assert_eq!(ints(Call::Sync(timer_mode))[5], "0");
        assert!(ints(Call::Status).is_empty());
    }

    #[test]
    fn notices_read_as_the_scripts_publish_them() {
        assert_eq!(
            Notice::parse("n 3 a 100 b 112"),
            Some(Notice::Next {
                bucket: 3,
                head: "a",
                wait: Duration::from_millis(100),
                second: Some("b"),
                check: Some(Duration::from_millis(112)),
            })
        );
        assert_eq!(
            Notice::parse("n 3 a 100"),
            Some(Notice::Next {
                bucket: 3,
                head: "a",
                wait: Duration::from_millis(100),
                second: None,
                check: None,
            })
        );
        assert_eq!(Notice::parse("s"), Some(Notice::Synced));
        assert_eq!(Notice::parse("e lost"), Some(Notice::Lost));
        assert_eq!(
            Notice::parse("e 12"),
            Some(Notice::NewServer { epoch: "12" })
        );
        for garbage in ["", "n", "n x a 1", "n 3 a", "z 1"] {
            assert_eq!(Notice::parse(garbage), None, "{garbage:?}");
        }
    }

    proptest! {
        /// Whatever Redis (or something posing as it) answers, reading it never panics.
        #[test]
        fn any_reply_reads_without_panicking(reply in proptest::collection::vec(any::<i64>(), 0..12)) {
            let _ = answer(&reply);
            let _ = Snapshot::from_reply(&reply);
            let _ = Synced::from_reply(&reply);
            let _ = reply.first().map(|&r| Touched::from_reply(r));
        }

        /// Any message on the channel reads without panicking.
        #[test]
        fn any_notice_reads_without_panicking(payload in "[nse0-9 a-z]{0,30}") {
            let _ = Notice::parse(&payload);
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
