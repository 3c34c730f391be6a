//! One round of the driver, sans IO: what this process sends Redis next, in which
//! order, and what each answer means. The driver (`driver.rs`) only sends what a
//! [`Round`] asks for and hands back what came; the simulation of the whole cluster
//! (`tests/simulation.rs`, through `sans_io.rs`) drives the same rounds over its
//! simulated network, so both run the same decisions.
//!
//! # Implementation details
//!
//! 1. **The round's order is the budget's.** Hold releases and leaves first (they
//!    free buckets), then touches of late grants (a permit waits for them), then
//!    Discord's word if the shared state needs it (no grant comes before), then the
//!    replicas' catch-up, then every due head at once (oldest first), then the
//!    deliveries no grant call carried.
//! 2. **A round stops at the first failure.** The link is dropped and the next round,
//!    on a new link, decides afresh; what must not be lost is put back first
//!    (releases and leaves not sent, deliveries Redis may not have heard of). A lost
//!    acquire answer is retried with its nonce, which its bucket keeps (`Local::ask`).
//! 3. **Discord's word is fetched by one process at a time**, the one holding a lease
//!    in Redis; it looks at the state before it asks the limit source, since another
//!    may have applied the word between the answer that said it was needed and the
//!    lease.

use std::time::Duration;

use tokio::time::Instant;

use super::local::{Local, Outgoing, Settings};
use super::scripts::{Answer, Call, SyncArgs, Synced, Token, Touched, answer};
use super::status::{Health, Snapshot};
use crate::{SessionStartLimit, ShardId};

/// How long the process that fetches Discord's word may take before another tries.
pub(super) const SYNC_LEASE: Duration = Duration::from_secs(30);
/// A process waiting for another one's fetch of Discord's word looks again this often.
const SYNC_FALLBACK: Duration = Duration::from_secs(1);

/// One command for Redis, borrowed from the round that asks for it.
#[derive(Clone, Copy, Debug)]
pub(super) enum Command<'a> {
    /// A script call on the namespace, sent by its hash.
    Script(Call<'a>),
    /// A plain command.
    Plain(Plain),
}

/// The plain commands a round sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Plain {
    /// `SET <prefix>syncing <client> NX PX <SYNC_LEASE>`: the lease to fetch
    /// Discord's word. Answers `Text(Some("OK"))` when taken, `Text(None)` if held.
    TakeLease,
    /// `GET <prefix>syncing`: who holds the lease (`Text`).
    LeaseOwner,
    /// `DEL <prefix>syncing`.
    DropLease,
    /// `WAIT <replicas> <replica_timeout>`: how many replicas have this connection's
    /// writes (`Int`).
    Wait,
}

/// What Redis answered to one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// An integer (`release`, `touch`, `delivered`, `leave`, `DEL`, `WAIT`).
    Int(i64),
    /// An array of integers (`acquire`, `sync`, `status`).
    Ints(Vec<i64>),
    /// A bulk string or nil (`SET NX`, `GET`).
    Text(Option<String>),
}

impl Command<'_> {
    /// The shape of its reply.
    pub(super) fn reply_shape(&self) -> Shape {
        match self {
            Command::Script(Call::Acquire { .. } | Call::Sync(_) | Call::Status) => Shape::Ints,
            Command::Script(_) | Command::Plain(Plain::DropLease | Plain::Wait) => Shape::Int,
            Command::Plain(Plain::TakeLease | Plain::LeaseOwner) => Shape::Text,
        }
    }
}

impl Plain {
    /// Its words, on the namespace whose keys start with `prefix`.
    pub(super) fn argv(self, prefix: &str, settings: &Settings) -> Vec<String> {
        let lease = format!("{prefix}syncing");
        match self {
            Plain::TakeLease => vec![
                "SET".to_owned(),
                lease,
                settings.client.clone(),
                "NX".to_owned(),
                "PX".to_owned(),
                SYNC_LEASE.as_millis().to_string(),
            ],
            Plain::LeaseOwner => vec!["GET".to_owned(), lease],
            Plain::DropLease => vec!["DEL".to_owned(), lease],
            Plain::Wait => vec![
                "WAIT".to_owned(),
                settings.replicas.to_string(),
                settings.replica_timeout.as_millis().to_string(),
            ],
        }
    }
}

/// The shape of a [`Reply`], which the driver reads the wire's value as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Shape {
    Int,
    Ints,
    Text,
}

/// One reply, or why it did not come, with the instant it came.
pub(super) type Replied = (Result<Reply, String>, Instant);

/// What the round needs done next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// Send [`Round::commands`], pipelined in their order, then [`Round::replied`].
    Send,
    /// Ask the limit source for Discord's word (within [`SYNC_LEASE`]), then
    /// [`Round::sourced`].
    AskSource,
}

/// A request of this process for the head of a bucket.
struct Ask {
    shard: ShardId,
    rank: u8,
    nonce: String,
    next_rank: i64,
}

/// Deliveries Redis has not heard of, and whether one may open Discord's window.
type Deliveries = (Vec<(ShardId, Token)>, bool);

/// The work whose commands are out.
enum Work {
    Outbox(Vec<Outgoing>),
    Touches {
        due: Vec<(ShardId, Token)>,
        window: Duration,
    },
    Fetch(Fetch),
    CatchUp,
    Heads {
        asks: Vec<Ask>,
        window: Duration,
        delivered: Deliveries,
        /// The acquire answers, once they came, while the `WAIT` for them is out.
        answered: Option<Answered>,
    },
    Deliveries(Deliveries),
}

/// A round's acquire answers: each with its ask's shard and its arrival.
struct Answered {
    sent: Instant,
    first: Option<Instant>,
    answers: Vec<(ShardId, Answer, Instant)>,
    /// A call that failed: the round ends once the others are applied.
    failure: Option<String>,
}

/// The steps of fetching Discord's word.
#[derive(Clone, Copy, Debug)]
enum Fetch {
    TakeLease,
    LeaseOwner,
    /// The status script: was the word applied meanwhile?
    Look,
    AskSource,
    Apply(SessionStartLimit),
    /// The word is applied (by this process or another): the round goes on.
    DropLease,
}

/// Where a round is, in the order of implementation detail 1.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Stage {
    #[default]
    Outbox,
    Touches,
    Limit,
    CatchUp,
    Heads,
    Deliveries,
    Over,
}

/// One pass of the driver over what this process must send (implementation detail 1).
#[derive(Default)]
pub(super) struct Round {
    stage: Stage,
    out: Option<Work>,
    /// Run the next round at once rather than at the process's next deadline.
    again: bool,
}

impl Round {
    /// What to do next at `now`; `None`: the round is over, and the next one runs at
    /// [`deadline`](Self::deadline). `nonce` makes a fresh acquire nonce.
    pub(super) fn next(
        &mut self,
        local: &mut Local,
        now: Instant,
        nonce: &mut dyn FnMut() -> String,
    ) -> Option<Next> {
        if let Some(next) = self.pending() {
            return Some(next);
        }
        while self.stage != Stage::Over {
            let stage = self.stage;
            self.stage = match stage {
                Stage::Outbox => Stage::Touches,
                Stage::Touches => Stage::Limit,
                Stage::Limit => Stage::CatchUp,
                Stage::CatchUp => Stage::Heads,
                Stage::Heads => Stage::Deliveries,
                Stage::Deliveries | Stage::Over => Stage::Over,
            };
            self.out = match stage {
                Stage::Outbox => outbox(local, now).map(Work::Outbox),
                Stage::Touches => {
                    let due = local.due_touches(now);
                    (!due.is_empty()).then(|| Work::Touches {
                        due,
                        window: local.window(),
                    })
                }
                Stage::Limit => self.limit(local, now),
                Stage::CatchUp => local.replicas_behind.then_some(Work::CatchUp),
                Stage::Heads => heads(local, now, nonce),
                Stage::Deliveries => local
                    .deliveries_due(now)
                    .then(|| Work::Deliveries(local.take_deliveries())),
                Stage::Over => None,
            };
            if let Some(next) = self.pending() {
                return Some(next);
            }
        }
        None
    }

    /// What the work that is out needs, if any is.
    fn pending(&self) -> Option<Next> {
        Some(match self.out.as_ref()? {
            Work::Fetch(Fetch::AskSource) => Next::AskSource,
            _ => Next::Send,
        })
    }

    /// Discord's word, if the shared state needs it: fetched now, or the round stops.
    fn limit(&mut self, local: &mut Local, now: Instant) -> Option<Work> {
        let need = local.need?;
        if local.fetch_after.is_some_and(|t| now < t) {
            // Not yet (a quarantine after a loss, or another process's fetch).
            self.stage = Stage::Over;
            return None;
        }
        if !local.settings.limit_source {
            local.set_health(Health::NeedsLimit(need));
            self.wait_for_word(local, now);
            return None;
        }
        local.set_health(Health::FetchingLimit(need));
        Some(Work::Fetch(Fetch::TakeLease))
    }

    /// No word this round: the round stops, and looks again after a while (or when a
    /// process's sync notification comes).
    fn wait_for_word(&mut self, local: &mut Local, now: Instant) {
        local.fetch_after = Some(now + SYNC_FALLBACK);
        self.stage = Stage::Over;
    }

    /// The commands of the work that is out, in their order.
    pub(super) fn commands<'a>(&'a self, local: &'a Local) -> Vec<Command<'a>> {
        let client = local.settings.client.as_str();
        match &self.out {
            None => Vec::new(),
            Some(Work::Outbox(items)) => items
                .iter()
                .map(|item| {
                    Command::Script(match *item {
                        Outgoing::Release { shard, token, .. } => Call::Release { shard, token },
                        Outgoing::Leave { bucket } => Call::Leave { client, bucket },
                    })
                })
                .collect(),
            Some(Work::Touches { due, window }) => due
                .iter()
                .map(|&(shard, token)| {
                    Command::Script(Call::Touch {
                        shard,
                        token,
                        window: *window,
                    })
                })
                .collect(),
            Some(Work::Fetch(step)) => match *step {
                Fetch::TakeLease => vec![Command::Plain(Plain::TakeLease)],
                Fetch::LeaseOwner => vec![Command::Plain(Plain::LeaseOwner)],
                Fetch::Look => vec![Command::Script(Call::Status)],
                Fetch::AskSource => Vec::new(),
                Fetch::Apply(limit) => vec![Command::Script(Call::Sync(local.sync_args(
                    limit,
                    Duration::ZERO,
                    false,
                )))],
                Fetch::DropLease => vec![Command::Plain(Plain::DropLease)],
            },
            Some(Work::CatchUp) => vec![Command::Plain(Plain::Wait)],
            Some(Work::Heads {
                answered: Some(_), ..
            }) => vec![Command::Plain(Plain::Wait)],
            Some(Work::Heads {
                asks,
                window,
                delivered,
                answered: None,
            }) => asks
                .iter()
                .enumerate()
                .map(|(i, ask)| {
                    Command::Script(Call::Acquire {
                        client,
                        shard: ask.shard,
                        nonce: &ask.nonce,
                        rank: ask.rank,
                        next_rank: ask.next_rank,
                        window: *window,
                        // The round's first call carries the deliveries Redis has not
                        // heard of.
                        delivered: if i == 0 { &delivered.0 } else { &[] },
                    })
                })
                .collect(),
            Some(Work::Deliveries((deliveries, _))) => {
                vec![Command::Script(Call::Delivered { deliveries })]
            }
        }
    }

    /// The replies to [`commands`](Self::commands) sent at `sent`, one per command in
    /// their order, each with the instant it came. An `Err` ends the round: the link
    /// is to be dropped (implementation detail 2).
    pub(super) fn replied(
        &mut self,
        local: &mut Local,
        sent: Instant,
        replies: Vec<Replied>,
    ) -> Result<(), String> {
        let Some(work) = self.out.take() else {
            return Ok(());
        };
        let result = match work {
            Work::Outbox(items) => outbox_sent(local, items, replies),
            Work::Touches { due, window } => touched(local, &due, window, sent, replies),
            Work::Fetch(step) => self.fetch_replied(local, step, sent, replies),
            Work::CatchUp => {
                let (caught_up, _) = acknowledged(local, replies)?;
                if caught_up {
                    local.replicas_behind = false;
                    local.set_health(Health::Ready);
                } else {
                    // Asked again at once: `WAIT` itself paces it.
                    self.again = true;
                    self.stage = Stage::Over;
                }
                Ok(())
            }
            Work::Heads {
                asks,
                window,
                delivered,
                answered: None,
            } => {
                let answered = read_answers(local, &asks, delivered, sent, replies);
                let granted = answered
                    .answers
                    .iter()
                    .any(|(_, answer, _)| matches!(answer, Answer::Grant { .. }));
                if granted && local.settings.replicas > 0 {
                    // With replicas, permits are handed over only after a `WAIT` for
                    // every grant of this batch (one covers them all).
                    self.out = Some(Work::Heads {
                        asks,
                        window,
                        delivered: (Vec::new(), false),
                        answered: Some(answered),
                    });
                    return Ok(());
                }
                apply_answers(local, answered, window, None)
            }
            Work::Heads {
                window,
                answered: Some(answered),
                ..
            } => {
                // The permits are handed over after the `WAIT`'s answer.
                let acknowledged = acknowledged(local, replies)?;
                apply_answers(local, answered, window, Some(acknowledged))
            }
            Work::Deliveries(delivered) => {
                let reply = replies.into_iter().next();
                match reply {
                    Some((Ok(_), _)) => {
                        local.stats.commands += 1;
                        Ok(())
                    }
                    Some((Err(e), at)) => {
                        local.return_deliveries(delivered, at);
                        Err(e)
                    }
                    None => {
                        local.return_deliveries(delivered, sent);
                        Err("no reply".into())
                    }
                }
            }
        };
        if result.is_err() {
            self.stage = Stage::Over;
        }
        result
    }

    /// One step of fetching Discord's word was answered.
    fn fetch_replied(
        &mut self,
        local: &mut Local,
        step: Fetch,
        sent: Instant,
        replies: Vec<Replied>,
    ) -> Result<(), String> {
        let (reply, at) = replies
            .into_iter()
            .next()
            .unwrap_or_else(|| (Err("no reply".into()), sent));
        if let Fetch::DropLease = step {
            // Dropped or not, the word is applied: the lease lapses by itself.
            local.stats.commands += 1;
            return Ok(());
        }
        let reply = reply?;
        local.stats.commands += 1;
        let text = match &reply {
            Reply::Text(text) => text.as_deref(),
            _ => None,
        };
        let next = match step {
            Fetch::TakeLease if text.is_some() => Fetch::Look,
            // Ours from an earlier attempt (the call failed after winning), or
            // another process fetches it: its sync notification wakes us, or the
            // fallback asks again.
            Fetch::TakeLease => Fetch::LeaseOwner,
            Fetch::LeaseOwner if text == Some(local.settings.client.as_str()) => Fetch::Look,
            Fetch::LeaseOwner => {
                self.wait_for_word(local, at);
                return Ok(());
            }
            Fetch::Look => match &reply {
                Reply::Ints(reply)
                    if Snapshot::from_reply(reply)
                        .is_some_and(|state| state.needs_limit.is_none()) =>
                {
                    // Applied meanwhile: Discord is asked once. As its notification
                    // would (which this process may have missed, cut off when it was
                    // sent), it ends the wait: else the next round would fetch again,
                    // and again.
                    local.synced(at);
                    Fetch::DropLease
                }
                _ => Fetch::AskSource,
            },
            Fetch::Apply(limit) => {
                let Reply::Ints(reply) = &reply else {
                    return Err(format!("unexpected reply from the sync script: {reply:?}"));
                };
                local.applied(Synced::from_reply(reply), limit, at);
                Fetch::DropLease
            }
            Fetch::AskSource | Fetch::DropLease => return Ok(()),
        };
        self.out = Some(Work::Fetch(next));
        Ok(())
    }

    /// The limit source answered (`Err`: it failed, or took longer than the lease).
    pub(super) fn sourced(
        &mut self,
        local: &mut Local,
        limit: Result<SessionStartLimit, String>,
        now: Instant,
    ) {
        if !matches!(self.out, Some(Work::Fetch(Fetch::AskSource))) {
            return;
        }
        let limit = limit.and_then(|limit| {
            limit
                .validate()
                .map(|()| limit)
                .map_err(|e| format!("it returned a bad limit: {e}"))
        });
        match limit {
            Ok(limit) => self.out = Some(Work::Fetch(Fetch::Apply(limit))),
            Err(reason) => {
                local.set_health(Health::LimitSourceFailed { reason });
                // The lease lapses by itself; another process (or this one, after
                // the fallback) tries again.
                self.out = None;
                self.wait_for_word(local, now);
            }
        }
    }

    /// When the next round runs at the latest.
    pub(super) fn deadline(&self, local: &Local, now: Instant) -> Instant {
        if self.again {
            now
        } else {
            local.next_deadline(now)
        }
    }
}

/// The outbox's items still worth sending: a release after its lease ended frees
/// nothing, and a bucket whose waiters came back meanwhile is not left.
fn outbox(local: &mut Local, now: Instant) -> Option<Vec<Outgoing>> {
    let items: Vec<Outgoing> = std::mem::take(&mut local.outbox)
        .into_iter()
        .filter(|item| match item {
            Outgoing::Release { until, .. } => now < *until,
            Outgoing::Leave { bucket } => {
                local.buckets.get(bucket).is_none_or(|b| b.queue.is_empty())
            }
        })
        .collect();
    (!items.is_empty()).then_some(items)
}

/// The outbox's calls were answered: the ones that failed go back to its front.
fn outbox_sent(
    local: &mut Local,
    items: Vec<Outgoing>,
    replies: Vec<Replied>,
) -> Result<(), String> {
    let mut failure = None;
    let mut unsent = Vec::new();
    let mut replies = replies.into_iter();
    for item in items {
        match replies.next() {
            Some((Ok(_), _)) => local.stats.commands += 1,
            Some((Err(e), _)) => {
                failure = failure.or(Some(e));
                unsent.push(item);
            }
            None => unsent.push(item),
        }
    }
    for item in unsent.into_iter().rev() {
        local.outbox.push_front(item);
    }
    failure.map_or(Ok(()), Err)
}

/// When a round of pipelined calls was first answered: its one round trip sample.
fn first_answer(replies: &[Replied]) -> Option<Instant> {
    replies
        .iter()
        .filter(|(reply, _)| reply.is_ok())
        .map(|&(_, at)| at)
        .min()
}

/// Spacing counts from delivery: a grant not taken within its window keeps its bucket
/// busy until it is (a touch, carrying this process's window); one whose touch Redis
/// refuses is void, and its shard asks again.
fn touched(
    local: &mut Local,
    due: &[(ShardId, Token)],
    window: Duration,
    sent: Instant,
    replies: Vec<Replied>,
) -> Result<(), String> {
    if let Some(first) = first_answer(&replies) {
        local.measured(sent, first);
    }
    let mut failure = None;
    for (&(shard, token), (reply, arrived)) in due.iter().zip(replies) {
        match reply {
            Ok(Reply::Int(reply)) => {
                local.stats.commands += 1;
                let touched = Touched::from_reply(reply);
                local.touched(shard, token, touched.kept, sent, window, arrived);
                if touched.may_open {
                    local.may_open(shard, token);
                }
            }
            Ok(other) => {
                failure = failure.or(Some(format!(
                    "unexpected reply from the touch script: {other:?}"
                )))
            }
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    failure.map_or(Ok(()), Err)
}

/// The heads whose time came, asked all at once (one round trip, however many
/// buckets), oldest first: Redis runs them in that order, so the budget goes to the
/// oldest of this process.
fn heads(local: &mut Local, now: Instant, nonce: &mut dyn FnMut() -> String) -> Option<Work> {
    let window = local.window();
    let asks: Vec<Ask> = local
        .due_heads(now)
        .into_iter()
        .filter_map(|((rank, _, shard), index)| {
            let (nonce, next_rank) = local.ask(index, shard, &mut *nonce)?;
            Some(Ask {
                shard,
                rank,
                nonce,
                next_rank,
            })
        })
        .collect();
    if asks.is_empty() {
        return None;
    }
    Some(Work::Heads {
        asks,
        window,
        delivered: local.take_deliveries(),
        answered: None,
    })
}

/// Reads the acquire answers of a round. A failed first call gives its deliveries
/// back (not heard, perhaps: told again, and twice is the same); a failed call's
/// bucket keeps its nonce, so that asked again, a grant it made comes back.
fn read_answers(
    local: &mut Local,
    asks: &[Ask],
    delivered: Deliveries,
    sent: Instant,
    replies: Vec<Replied>,
) -> Answered {
    if replies.first().is_none_or(|(reply, _)| reply.is_err()) {
        local.return_deliveries(delivered, replies.first().map_or(sent, |&(_, at)| at));
    }
    let first = first_answer(&replies);
    let mut answers = Vec::with_capacity(asks.len());
    let mut failure = None;
    let mut replies = replies.into_iter();
    for ask in asks {
        let (reply, arrived) = replies.next().unwrap_or((Err("no reply".into()), sent));
        let reply = match reply {
            Ok(Reply::Ints(reply)) => reply,
            Ok(other) => {
                failure = failure.or(Some(format!(
                    "unexpected reply from the acquire script: {other:?}"
                )));
                continue;
            }
            Err(e) => {
                failure = failure.or(Some(e));
                continue;
            }
        };
        local.stats.commands += 1;
        match answer(&reply) {
            Some(answer) => answers.push((ask.shard, answer, arrived)),
            None => {
                failure = failure.or(Some(format!(
                    "unexpected reply from the acquire script: {reply:?}"
                )))
            }
        }
    }
    Answered {
        sent,
        first,
        answers,
        failure,
    }
}

/// Applies a round's acquire answers; `acknowledged`: with replicas, whether the
/// `WAIT` after them found every replica caught up, and when it answered. Then the
/// round ends if one of its calls failed.
fn apply_answers(
    local: &mut Local,
    answered: Answered,
    window: Duration,
    acknowledged: Option<(bool, Instant)>,
) -> Result<(), String> {
    let Answered {
        sent,
        first,
        answers,
        failure,
    } = answered;
    // One sample for the round: to its first answer, or with replicas to the `WAIT`'s
    // (the permits are handed over after it, so the window must cover both).
    if let Some(answered) = acknowledged.map(|(_, at)| at).or(first) {
        local.measured(sent, answered);
    }
    for (shard, answer, arrived) in answers {
        let arrived = match (&answer, acknowledged) {
            (Answer::Grant { .. }, Some((false, at))) => {
                // Not on enough replicas: a failover could forget it. Never acted on;
                // its unit counts as spent. No more grants until the replicas catch
                // up (each one would be spent the same way).
                tracing::warn!(
                    shard,
                    "a grant was not acknowledged by the replicas: not acted on, its unit spent",
                );
                local.unacknowledged(shard, at);
                continue;
            }
            (Answer::Grant { .. }, Some((true, at))) => at,
            _ => arrived,
        };
        // Every answer is applied, also those after a refusal for the budget or
        // Discord's word (a grant among them spent a unit).
        local.answered(shard, answer, sent, window, arrived);
    }
    failure.map_or(Ok(()), Err)
}

/// A `WAIT`'s reply: did every configured replica get this connection's writes, and
/// when did it say so?
fn acknowledged(local: &mut Local, replies: Vec<Replied>) -> Result<(bool, Instant), String> {
    match replies.into_iter().next() {
        Some((Ok(Reply::Int(acks)), at)) => {
            local.stats.commands += 1;
            Ok((acks >= i64::from(local.settings.replicas), at))
        }
        Some((Ok(other), _)) => Err(format!("unexpected reply to WAIT: {other:?}")),
        Some((Err(e), _)) => Err(e),
        None => Err("no reply to WAIT".into()),
    }
}

impl Local {
    /// The sync script's arguments for `limit`, read `age` ago; `seed`: only if the
    /// namespace holds no state (a limit that is not Discord's word).
    pub(super) fn sync_args(
        &self,
        limit: SessionStartLimit,
        age: Duration,
        seed: bool,
    ) -> SyncArgs {
        let settings = &self.settings;
        SyncArgs {
            limit,
            age,
            spacing: settings.spacing,
            hold: settings.hold,
            grace: settings.grace,
            reserve: settings.reserve,
            head_grace: settings.head_grace,
            seed,
            // Every process syncs when it connects: one that synced before saw the
            // namespace's state, and a missing state is a loss to it.
            known: self.stats.syncs > 0,
        }
    }

    /// The sync script applied `limit` (answering `synced`) at `now`: grants may go on.
    pub(super) fn applied(&mut self, synced: Synced, limit: SessionStartLimit, now: Instant) {
        self.stats.syncs += 1;
        self.remaining = synced.remaining;
        self.set_health(Health::Ready);
        // The state's `max_concurrency` (a seed may have found another in force).
        self.rekey(synced.max_concurrency.unwrap_or(limit.max_concurrency), now);
        self.synced(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::scripts::NeedLimit;

    fn local() -> Local {
        let settings = Settings {
            client: "me".to_owned(),
            spacing: Duration::from_millis(5001),
            head_grace: Duration::from_secs(1),
            hold: None,
            limit_source: true,
            grace: Duration::from_secs(30),
            reserve: 0,
            replicas: 0,
            replica_timeout: Duration::from_millis(500),
        };
        Local::new(settings, 1, 10)
    }

    /// Runs `round` at `now`, answering each batch with `answer`; the commands sent.
    fn run(
        round: &mut Round,
        local: &mut Local,
        now: Instant,
        answer: impl Fn(&Command<'_>) -> Reply,
    ) -> Vec<String> {
        let mut sent = Vec::new();
        while let Some(next) = round.next(local, now, &mut || "n".to_owned()) {
            assert_eq!(next, Next::Send, "no limit source is asked here");
            let replies: Vec<Replied> = round
                .commands(local)
                .iter()
                .map(|command| {
                    sent.push(format!("{command:?}"));
                    (Ok(answer(command)), now)
                })
                .collect();
            round.replied(local, now, replies).expect("answered");
        }
        sent
    }

    /// Seeds 3236 and 4505 of `tests/simulation.rs`, by hand: the first answer of a
    /// round re-keys the queues (Discord's new `max_concurrency`), and a later answer
    /// of the same round grants a shard asked for in its old bucket. Once delivered,
    /// the shard is not asked for again (it was, round after round, each grant
    /// spending a unit, until the budget was gone every day).
    #[test]
    fn a_grant_after_a_re_key_in_its_round_leaves_no_key_behind() {
        use crate::redis::local::{Owner, Taken};
        use crate::{OnConflict, Priority};
        let mut local = local();
        local.rekey(16, Instant::now());
        let now = Instant::now();
        let mut tickets = Vec::new();
        for shard in [5, 6] {
            let owner = Owner::Future(None);
            let ticket = local.enqueue(shard, Priority::Start, OnConflict::Refuse, owner, now);
            tickets.push(ticket.expect("queued"));
        }
        let answers = |command: &Command<'_>| match command {
            // Shard 5 waits, and Redis says the buckets are 4 now.
            Command::Script(Call::Acquire { shard: 5, .. }) => Reply::Ints(vec![2, 5000, 1, 0, 4]),
            // Shard 6 (bucket 6 of 16, 2 of 4) is granted.
            Command::Script(Call::Acquire { shard: 6, .. }) => {
                Reply::Ints(vec![1, 1, 1, 9, 4, 5006, 0])
            }
            _ => Reply::Int(1),
        };
        let sent = run(&mut Round::default(), &mut local, now, answers);
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert!(matches!(local.take(6, tickets[1], now), Taken::Permit(_)));
        let later = now + Duration::from_secs(10);
        let again = run(&mut Round::default(), &mut local, later, answers);
        assert!(
            again.iter().all(|command| !command.contains("shard: 6")),
            "shard 6 asked for again: {again:?}"
        );
    }

    /// Seed 4159 of `tests/simulation.rs`, by hand: a process that missed the
    /// notification that another applied Discord's word finds it applied when it
    /// looks, and stops waiting for it: its next round does not fetch it again.
    #[test]
    fn a_word_found_applied_ends_the_wait_for_it() {
        let mut local = local();
        let now = Instant::now();
        local.need = Some(NeedLimit::NewServer);
        let applied = |command: &Command<'_>| match command {
            Command::Plain(Plain::TakeLease) => Reply::Text(Some("OK".to_owned())),
            // The state holds the word: `needs_limit` (field 3) is 0.
            Command::Script(Call::Status) => Reply::Ints(vec![1, 9, 1000, 0, 7, 1, 0, 0]),
            _ => Reply::Int(1),
        };
        let sent = run(&mut Round::default(), &mut local, now, applied);
        assert_eq!(
            sent,
            ["Plain(TakeLease)", "Script(Status)", "Plain(DropLease)"]
        );
        assert_eq!(local.need, None);
        let again = run(&mut Round::default(), &mut local, now, applied);
        assert!(again.is_empty(), "fetched again: {again:?}");
    }
}
