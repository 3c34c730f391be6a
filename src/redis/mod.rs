//! Cluster mode: one budget and one set of buckets for every process of a bot, on
//! Redis (7.0 or later: one server, or a master with replicas under Sentinel).
//!
//! Discord's buckets and daily budget belong to the bot, however many processes and
//! machines run its shards. Each process connects a [`Queue`] with the same
//! `namespace`; Redis holds what they share, each process keeps its own waiting shards
//! in order and asks Redis for one bucket head at a time.
//!
//! ```no_run
//! use std::time::Duration;
//! use identify_queue::{Config, SessionStartLimit};
//! use identify_queue::redis::Queue;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // From GET /gateway/bot, read just now:
//! let limit = SessionStartLimit {
//!     total: 1000,
//!     remaining: 998,
//!     reset_after: Duration::from_millis(14_336_000),
//!     max_concurrency: 16,
//! };
//! let queue = Queue::connect("redis://127.0.0.1:6379/0", "my-bot", limit, Config::default()).await?;
//! let permit = queue.acquire(42).await?; // shard 42 may IDENTIFY now
//! # drop(permit);
//! # Ok(())
//! # }
//! ```
//!
//! With Sentinel: `redis+sentinel://host:26379,host:26380/master-name` (and
//! [`Options::replicas`]); the master is looked up again after any failure.
//!
//! # What it promises, over all processes together
//!
//! - **Safety.** Per bucket, deliveries at least the interval (plus
//!   [`Options::margin`]) apart on any one clock, whatever the distances, and in hold
//!   mode after the previous holder's release or hold timeout; never more grants than
//!   the budget. A permit reaches its shard only after its grant is recorded in Redis
//!   (and acknowledged by [`Options::replicas`] replicas): a grant not acknowledged is
//!   not acted on, its unit counts as spent, and no grant follows until the replicas
//!   catch up. Spacing counts from delivery: every grant request carries its
//!   process's *delivery window* (the round trip it measures, with room for jitter:
//!   [`ClusterStats::window`], never below [`DELIVERY_WINDOW`]); the permit is handed
//!   over within that window of the request being sent, and Redis keeps the bucket's
//!   next grant an interval after the window ends ([`Queue::spacing`]). A permit taken
//!   later first keeps its bucket busy again (a *touch*, with a new window).
//! - **One clock**, Redis's (`TIME` in the scripts); processes receive durations.
//! - **The budget comes from Discord's word only**: `connect`'s and `update`'s limit,
//!   the [`Options::limit_source`], or the reset instant Discord announced (it refills
//!   to `total` less the grants near it). See [the budget's
//!   accounting](#the-budgets-accounting). When Redis lost the state or part of it, or
//!   may have lost writes (restarted, failed over, demoted and promoted again: a new
//!   *epoch*), no process grants until Discord's word comes again, and no bucket frees
//!   for an interval.
//! - **A process that dies** loses nothing for the others: its waiting requests vanish
//!   with it, its holds end at their timeout, its spent units stay spent. Each process
//!   subscribes to a channel of its own while it lives; a head of line whose channel
//!   has no subscriber (its process was killed: its kernel closed its sockets) is
//!   passed by the next in line, who looks once the head should have come back (a
//!   window after the bucket freed). A silent loss (host down, partition) is passed
//!   after [`Options::head_grace`].
//! - **Distance.** A far process pays for its own distance: its window lengthens the
//!   rounds of its own grants, nobody else's. A round of a bucket costs about the
//!   interval, the asking process's window and its round trip (the wait it is told
//!   arrives half a round trip late, its request arrives half a round trip after it is
//!   sent): at a 100 ms interval, 4 processes, `max_concurrency` 16, the bench measures
//!   rounds of about the interval plus 2.5 round trips (see `benches/README.md`). No
//!   round trip stalls a bucket. A grant that cannot be delivered in time (a stall
//!   longer than the interval, a partition) is spent, counted
//!   ([`ClusterStats::undelivered`]), and its shard asks again by itself: its `acquire`
//!   keeps waiting. [`Health::SlowLink`] says when a process's round trip is longer
//!   than the spacing.
//! - **No polling.** A process asks for a bucket when Redis said it frees, or when a
//!   notification says its turn came; the timer is a fallback for lost notifications.
//!   Each bucket serves its waiting processes in turn (a process with a reconnect
//!   first), so no process starves; within a process, priority then FIFO.
//! - **Fail closed.** Redis unreachable or without state: no grants; waiting
//!   `acquire`s keep waiting and are served after recovery; [`Queue::health`] says what
//!   they wait for. A call retried after a lost answer never spends twice.
//!
//! # The budget's accounting
//!
//! The core's budget ([rules 3.11](crate::rules), argued in `budget.rs`) counts a
//! grant from its *delivery*, the instant its permit reaches its shard; Discord counts
//! the IDENTIFY when it *arrives*, at most [`Config::grace`](crate::Config::grace)
//! (`G`, the same setting as in one process) later, and a word may be up to `G` old.
//! The cluster keeps the same rules on what Redis can know of a delivery:
//!
//! - **A delivery is an interval.** Each grant is logged with its instant (no delivery
//!   is earlier) and scored by the end of its delivery window (none is later; a touch
//!   or a retried answer moves the end on). The process says when the permit was
//!   handed over (one call for all its deliveries, pipelined with its asks); until
//!   then the grant is *undelivered*. Only a bucket's latest grant can still be
//!   delivered late (touched, or its answer retried): a later grant of the bucket, or
//!   a new epoch, voids the one before.
//! - **A word** read at `r` (applied now; `r` = now less its age, see
//!   [`Queue::update_with_age`]) sets the budget to its `remaining` less every grant
//!   whose window ends after `r - G` and every undelivered grant, however old: those
//!   Discord may not have counted when it answered. A grant counted by Discord and
//!   subtracted too costs one unit until the next word: the safe side.
//! - **A reset** is at `r + reset_after` (a word's), or a day and `G` after the
//!   delivery window of the grant that opened Discord's window. Redis refills at that
//!   latest instant, to `total` less the grants whose window ends at or after Discord's
//!   earliest reset less `G` (they may count in the new window) and less the
//!   undelivered. It never refills earlier, nor subtracts less. A word that counts
//!   nothing (`remaining` = `total`) says Discord's window is not open: a refill at
//!   its read.
//! - **A window that may not be open yet.** After such a refill, the next delivery
//!   opens Discord's window; but a grant may never be delivered (its future dropped,
//!   its process gone), so until a process confirms a delivery, every grant (and every
//!   touch or retried answer) may be the one: each pushes the reset to a day and `G`
//!   after its window, and the refill counts from a day less `G` after the first of
//!   them. When a refill subtracted grants near Discord's reset, one of them may have
//!   opened the next window, or none did and the next delivery will: the next refill
//!   comes a day and `G` after the later of the two openings and counts from a day
//!   less `G` after the earliest grant instant it counted.
//! - **The state is whole or missing.** A server that may evict keys without a TTL
//!   (`maxmemory-policy allkeys-*`) is refused; a state whose buckets or log went
//!   missing on their own (a generation and a count that must match) is treated as
//!   missing; a server whose process or replication history changed is a new epoch
//!   (and epochs never repeat). Then nothing is granted until Discord's word.
//! - **A loss is quarantined.** The grants made before a loss are unknown, and a
//!   permit inside its window is still handed over after it: Discord may count them up
//!   to the longest window (10 s) and `G` after the loss was noticed: by the first
//!   script that finds the state missing, a process's sync included once it synced
//!   before (only the sync of a process that connects takes a missing state as new).
//!   A word read before then is applied less the most the buckets can have granted in
//!   that time (one per bucket and interval; a window it says is not open may have
//!   been opened by one of them), until a word read after it; with
//!   [`Options::limit_source`], the process that fetches the word waits for the end of
//!   the quarantine (10 s and `G`, 40 s by default) rather than lose those units.
//!
//! So at any instant, the units Redis may still grant in a Discord window are at most
//! what Discord's latest word left, less every grant Discord may not have counted: no
//! unit is counted as available twice, in one process or across all of them. What
//! the safe side costs: up to `G` of grants held back at each word, and `G` added to
//! each reset (30 s by default); a unit per permit dropped before delivery (Redis does
//! not hear of the drop); after a loss, the quarantine. The scripts count whole
//! milliseconds: instants are floored and ages rounded down, an error under a
//! millisecond that the inclusive counts absorb. Redis is the one clock: a forward step of its clock
//! would refill early (run it with NTP slewing, not stepping); a backward step is
//! absorbed (time waits at its high-water mark).
//!
//! # Beside the tokio queue
//!
//! This queue and [`tokio::Queue`](crate::tokio::Queue) (feature `tokio`) share their
//! futures and permit ([`crate::queue`]) and keep one contract (`tests/contract.rs`
//! runs the same tests on both): a request is made when
//! its future is first polled; a second `acquire` of a shard that waits resolves to
//! [`AcquireError::Refused`](crate::AcquireError::Refused) (`AlreadyQueued`), and `acquire_replacing`
//! takes the waiting one's place (the older future resolves to
//! [`AcquireError::Superseded`](crate::AcquireError::Superseded)); futures and streams are fused;
//! `acquire_all` costs O(1) per grant; `len` counts the requests not resolved (waiting,
//! or granted and not yet taken), `eta` those still waiting for a grant; `release`
//! frees a hold and says whether the shard held its bucket; `granted_at` and `eta` are
//! `std` instants on tokio's clock. What differs, and must:
//!
//! - `connect`, `update` and `snapshot` are async (they talk to Redis), and a cluster
//!   has faults to report: [`Queue::health`], [`ClusterStats`], connection errors.
//! - `remaining()` is the shared budget as of this process's last answer from Redis
//!   (other processes spend it too); the tokio queue knows its budget exactly.
//! - `eta` is a lower bound from this process's view: other processes may go first.
//! - A replacing request also takes over a grant on its way to the older future (one
//!   request per shard and process); in the tokio queue that grant stays with the
//!   older future and the new request waits for its own.
//!
//! Monitoring: [`Queue::snapshot`] (budget, reset, each bucket's next free instant,
//! the epoch), [`Queue::health`], [`Queue::stats`] (commands, touches, undelivered
//! grants, the round trip and the window). Logs go through `tracing` (reconnects,
//! epoch changes, Discord's word applied or failing, health changes, undelivered
//! grants, a widened window): install any subscriber to see them.

mod authority;
mod driver;
mod error;
mod link;
mod local;
mod options;
mod queue;
#[cfg(feature = "server")]
pub(crate) mod request_keys;
mod round;
mod round_trip;
#[doc(hidden)]
pub mod sans_io;
mod scripts;
mod shared;
mod status;

pub use error::{ConnectError, Unreachable};
pub use options::{LimitFuture, Options};
pub use queue::Queue;
#[cfg(feature = "server")]
pub(crate) use queue::check_target;
pub use round_trip::DELIVERY_WINDOW;
pub use status::{ClusterStats, Health, NeedLimit, Snapshot};

/// The future of [`Queue::acquire`]: resolves with the permit once Redis granted the
/// shard (the process side all queues share; see its `# Cancel safety`).
pub type Acquire = crate::queue::Acquire<Queue>;
/// The stream of [`Queue::acquire_all`]: permits in the order Redis grants them.
pub type Grants = crate::queue::Grants<Queue>;
/// Leave to IDENTIFY, granted by Redis for the whole cluster. In hold mode the queue's
/// driver sends its release; one it cannot send (Redis out of reach until the hold
/// timeout) ends at the timeout instead.
pub type Permit = crate::queue::Permit<Queue>;
