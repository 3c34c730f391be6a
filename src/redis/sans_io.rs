//! The cluster queue's process side without its I/O: the same `Local` and the same
//! rounds (`round.rs`) the driver runs, for the deterministic simulation of the whole
//! cluster (`tests/simulation.rs`), which carries the commands over a simulated
//! network to the production scripts run in-process.
//!
//! Not part of the API: hidden from the docs, and it may change in any release. The
//! I/O side is the simulation's: it sends what [`Process::poll`] asks for, pipelined in
//! order, and hands the replies back, as `driver.rs` does on a connection.

use std::time::{Duration, Instant};

use tokio::time::Instant as Clock;

use super::local::{Local, Owner, Settings, Taken};
use super::options::Options;
pub use super::round::Reply;
use super::round::{Command, Next, Round};
use super::scripts::{Call, Synced, Token};
use crate::{Config, OnConflict, Priority, SessionStartLimit, ShardId};

/// One process of the cluster, sans IO.
pub struct Process {
    local: Local,
    /// The round in progress: its commands are out, or it asks the limit source.
    round: Option<Round>,
    nonces: u64,
    prefix: String,
}

/// What a [`Process`] needs done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transmit {
    /// Send these, pipelined in their order; then [`Process::replied`].
    Send(Vec<Sent>),
    /// Ask the limit source for Discord's word; then [`Process::sourced`].
    AskSource,
    /// Nothing until then, or until an input (a request, a take, a notice).
    Sleep(Instant),
}

/// One command, as Redis receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sent {
    /// A script (`src/redis/lua/<name>.lua`) with `KEYS[1]` the namespace's prefix.
    Script {
        name: &'static str,
        args: Vec<String>,
    },
    /// A plain command, its argv.
    Command(Vec<String>),
}

/// What a request's poll found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// The permit: the shard may IDENTIFY now. Its grant's epoch and sequence.
    Permit { epoch: i64, seq: i64 },
    /// Not yet.
    Pending,
    /// The request is not here (done, taken over, or never made).
    Gone,
}

impl Process {
    /// A process that connected as `client` to `namespace` with `config` and
    /// `options` (`options.limit_source` only says whether one is given).
    pub fn new(client: &str, namespace: &str, config: &Config, options: &Options) -> Self {
        Self {
            local: Local::new(Settings::new(client.to_owned(), config, options), 1, 0),
            round: None,
            nonces: 0,
            prefix: super::queue::key_prefix(namespace),
        }
    }

    /// Every key's prefix: the scripts' `KEYS[1]`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The sync script's call for Discord's word `limit`, read `age` ago: `connect`'s
    /// and `update`'s. Its reply goes to [`synced`](Self::synced).
    pub fn sync(&self, limit: SessionStartLimit, age: Duration) -> Sent {
        let call = Call::Sync(self.local.sync_args(limit, age, false));
        sent(Command::Script(call), &self.prefix, &self.local.settings)
    }

    /// The sync script answered `reply` for `limit` at `now`.
    pub fn synced(&mut self, reply: &[i64], limit: SessionStartLimit, now: Instant) {
        self.local.stats.commands += 1;
        self.local
            .applied(Synced::from_reply(reply), limit, Clock::from_std(now));
    }

    /// A new link is up (the driver's connect): its round trip measured from `sent`
    /// to `now`, and every bucket asks again.
    pub fn connected(&mut self, sent: Instant, now: Instant) {
        self.local
            .measured(Clock::from_std(sent), Clock::from_std(now));
        self.local.connected(Clock::from_std(now));
    }

    /// The link failed: the round in progress ends. Hand its commands that were out
    /// back as failed first ([`replied`](Self::replied)), as the driver's calls fail:
    /// that puts back what must not be lost, and lost acquire answers are asked
    /// again with their nonces on the next link.
    pub fn disconnected(&mut self) {
        self.round = None;
    }

    /// `shard` asks with `priority` (an `acquire`): its ticket, or `None` if it waits
    /// here already.
    pub fn request(&mut self, shard: ShardId, priority: Priority, now: Instant) -> Option<u64> {
        self.local
            .enqueue(
                shard,
                priority,
                OnConflict::Refuse,
                Owner::Future(None),
                Clock::from_std(now),
            )
            .ok()
    }

    /// Request `ticket` of `shard` polls at `now` (its future is woken, or polls late).
    pub fn take(&mut self, shard: ShardId, ticket: u64, now: Instant) -> Take {
        let now = Clock::from_std(now);
        match self.local.take(shard, ticket, now) {
            Taken::Permit(token) => {
                let hold = self.local.settings.hold;
                super::authority::delivered(&mut self.local, hold, shard, token, now);
                Take::Permit {
                    epoch: token.epoch,
                    seq: token.seq,
                }
            }
            Taken::Pending { .. } => Take::Pending,
            Taken::Gone | Taken::Superseded => Take::Gone,
        }
    }

    /// The future of request `ticket` of `shard` is dropped at `now`.
    pub fn abandon(&mut self, shard: ShardId, ticket: u64, now: Instant) {
        self.local.abandon(shard, ticket, Clock::from_std(now));
    }

    /// Hold mode: the permit of grant `epoch:seq` of `shard` is released at `now`.
    pub fn release(&mut self, shard: ShardId, epoch: i64, seq: i64, now: Instant) {
        self.local.holds.remove(&shard);
        self.local
            .release(shard, Token { epoch, seq }, Clock::from_std(now));
    }

    /// A message of the namespace's channel came at `now`.
    pub fn noticed(&mut self, payload: &str, now: Instant) {
        self.local.noticed(payload, Clock::from_std(now));
    }

    /// If `shard`'s request has been granted and waits for its future: until when its
    /// future may take the permit without a touch (the end of its delivery window).
    pub fn granted(&self, shard: ShardId) -> Option<Instant> {
        match &self.local.waiters.get(&shard)?.phase {
            super::local::Phase::Granted(granted) => Some(granted.fresh_until.into_std()),
            super::local::Phase::Waiting => None,
        }
    }

    /// Whether no request waits here.
    pub fn is_empty(&self) -> bool {
        self.local.len() == 0
    }

    /// What to do at `now`: the next commands of the round in progress (a new round
    /// if none is), or how long to sleep.
    pub fn poll(&mut self, now: Instant) -> Transmit {
        let Self {
            local,
            round,
            nonces,
            prefix,
        } = self;
        let now = Clock::from_std(now);
        let client = local.settings.client.clone();
        let current = round.get_or_insert_with(Round::default);
        let mut fresh = || {
            *nonces += 1;
            format!("{client}:{nonces}")
        };
        match current.next(local, now, &mut fresh) {
            None => {
                let at = current.deadline(local, now);
                *round = None;
                Transmit::Sleep(at.into_std())
            }
            Some(Next::AskSource) => Transmit::AskSource,
            Some(Next::Send) => {
                let commands = current.commands(local);
                let sent = |c| sent(c, prefix, &local.settings);
                Transmit::Send(commands.into_iter().map(sent).collect())
            }
        }
    }

    /// The replies to the commands sent at `sent`, each with the instant it came; an
    /// `Err` ends the round, and the link is to be dropped.
    pub fn replied(
        &mut self,
        sent: Instant,
        replies: Vec<(Result<Reply, String>, Instant)>,
    ) -> Result<(), String> {
        let Some(round) = self.round.as_mut() else {
            return Ok(());
        };
        let replies = replies
            .into_iter()
            .map(|(reply, at)| (reply, Clock::from_std(at)))
            .collect();
        let result = round.replied(&mut self.local, Clock::from_std(sent), replies);
        if result.is_err() {
            self.round = None;
        }
        result
    }

    /// The limit source answered at `now`.
    pub fn sourced(&mut self, limit: Result<SessionStartLimit, String>, now: Instant) {
        if let Some(round) = self.round.as_mut() {
            round.sourced(&mut self.local, limit, Clock::from_std(now));
        }
    }
}

/// `command` on the namespace whose keys start with `prefix`, as Redis receives it.
fn sent(command: Command<'_>, prefix: &str, settings: &Settings) -> Sent {
    match command {
        Command::Script(call) => Sent::Script {
            name: call.name(),
            args: call.args().iter().map(ToString::to_string).collect(),
        },
        Command::Plain(plain) => Sent::Command(plain.argv(prefix, settings)),
    }
}
