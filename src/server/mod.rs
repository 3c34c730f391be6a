//! `identify-queue-server`: the queues over HTTP, so that bots in any language share
//! one identify queue.
//!
//! The binary serves the tokio queue in memory, or the cluster queue with `--redis`
//! (then any number of servers on one `--namespace` serve one bot, spread by a load
//! balancer or by the client's list of URLs). `--help` lists every flag; each is also
//! read from its environment variable in capitals.
//!
//! # Routes
//!
//! - **twilight's protocol**, as twilight's gateway-queue server speaks it: any method
//!   and any path not taken below, with `?shard=N`, answers `200` with
//!   `{"message": "You're free to connect now! :)"}` at the instant shard N may
//!   IDENTIFY. Clients in the wild read *any* answer as permission, so this route
//!   answers nothing else while a request can still be served: waiting for Discord's
//!   word, for Redis or for the budget's reset is a wait. A client that closes its
//!   connection while waiting cancels its request: nothing is spent. A request that can
//!   never be served (a `shard` that is not a number in `0..2^32`, or none while
//!   `max_concurrency` is above 1) gets no answer at all: it is held until its client
//!   leaves, and counted. Without a shard only `GET /` is served (one bucket, counted
//!   as an anonymous grant); other methods and paths get `404` and spend nothing. The
//!   same shard asked again takes its earlier request's place (a client asks again only
//!   once it gave the earlier one up), which is never answered.
//! - `GET /livez`: `200` while the process runs.
//! - `GET /readyz`: `200` while grants can flow (a limit in force, even a stale one),
//!   else `503` with the reason (the limit not read from Discord yet, Redis out of
//!   reach, an operator needed, requests meeting an error).
//! - `GET /metrics`: Prometheus's text format (grants, cancels, waiting requests, the
//!   budget left, seconds to the reset, wait durations, seconds without grants, the
//!   word's age, connections refused and accept errors).
//! - **The native API**, for clients that want more than "go":
//!   `POST /v1/identify?shard=N&key=K[&priority=reconnect][&wait_ms=M]` asks for shard
//!   N under an idempotency key K of the client's choosing (1 to 128 characters of
//!   `A-Z a-z 0-9 - . _ ~`, read alike here and in `DELETE`'s path; `400` otherwise).
//!   A key is one *attempt* to IDENTIFY, not a shard's name. It answers `200`
//!   `{"granted": true, "granted_at": T, ...}` (T in Unix milliseconds) when the shard
//!   may IDENTIFY, or, after `wait_ms` (25 000 at most and by default, below the 60 s
//!   proxies allow an idle request), `202` `{"granted": false, "place": P, "eta_ms": E}`:
//!   the client asks again with the same key and keeps its place. Before the first
//!   limit is known it is answered within its wait too: `202` `{"granted": false,
//!   "ready": false, "reason": R}`. **The answer is the delivery**: the queue grants a
//!   key only inside a poll of it, so a grant is never stale, and the bucket's next
//!   grant comes an interval after that answer. A key's grant is answered once: a later
//!   poll gets `410` with its `granted_at` (ask with a new key to IDENTIFY again). A key
//!   with no poll open, and none within its lease (`--ticket-lease-ms`, 5 s) is
//!   dropped: cancelled with nothing spent, or, if its turn came while nobody polled,
//!   its grant void (the unit spent, the bucket free again). One shard waits under one
//!   key: a new key for a shard that waits under another gets `409`.
//!   `priority=reconnect` goes before the shards still starting up in its bucket.
//!   `DELETE /v1/identify/K` cancels a waiting request, or releases a granted one's
//!   hold (hold mode); `204`, or `404` for an unknown key. A key used for another shard
//!   gets `409`; a new key while `--max-tickets` keys are kept (65 536 by default), or
//!   `--max-tickets-per-client` from its client's address, gets `429` with
//!   `Retry-After`. `place` is read off `eta_ms` (the grants of its bucket before it,
//!   every route's waiters counted). In cluster mode each key is claimed in Redis, so
//!   every server of the namespace knows it: a poll at a server that does not hold it
//!   gets `202` with `"held_by_another_server": true` (its next poll may reach the
//!   holder), one that was answered gets `410` anywhere, and `DELETE` works anywhere.
//! - `GET /v1/status`: the budget, its reset, Discord's word (its age and the last
//!   refresh's error), each bucket's next free instant and the oldest 1,000 waiting
//!   shards with their estimated waits (`waiting_count`: all of them), as JSON.
//! - `GET /status`: the same as a small HTML page that refreshes itself, for a person
//!   watching a start-up (no JavaScript).
//!
//! With `--auth-token`, every route but `/livez` and `/readyz` wants
//! `Authorization: Bearer <token>` (`401` otherwise; the scheme in any case, the token
//! compared in constant time). A token no client can send (empty, a space, a control
//! character) stops the server at start; a trailing newline is trimmed.
//!
//! The server listens on `127.0.0.1` by default (`--host`): anyone who reaches it can
//! spend the bot's budget, so listening beyond loopback without a token logs a
//! warning. Redis URLs appear in answers and logs without their password. The first
//! line of standard output is `identify-queue-server listening on ADDRESS:PORT`
//! (`--port 0` picks a free port). Connections are served by an accept loop with a
//! head and idle timeout, a small head buffer, caps in all and per client address, and
//! TCP keepalive (`listen.rs`).
//!
//! # Clients
//!
//! Each speaks the native API (a key per attempt, polls of at most 20 s, `DELETE` on
//! cancel) and never lets its library IDENTIFY without a grant: the Rust client
//! [`http::Queue`](crate::http::Queue) (a twilight queue with feature `twilight`), the
//! npm package `identify-queue` for @discordjs/ws and discord.js (`clients/js`), and
//! the PyPI package `identify-queue` for discord.py (`clients/python`). twilight's
//! own HTTP client speaks twilight's route.
//!
//! # Spacing
//!
//! A bucket's grants are `--interval-ms` plus `--margin-ms` apart (250 ms by default:
//! Discord counts an IDENTIFY on arrival, up to 75 ms after its grant in a cold start
//! of @discordjs/ws, and the network adds its jitter). A fresh in-memory server treats
//! every bucket as granted at its start, so its first grants come an interval and the
//! margin after it starts: a restart (a crash, a liveness probe) never brings two
//! IDENTIFYs of a bucket closer. Cluster mode keeps the last grants in Redis.
//!
//! # The limit
//!
//! With `--discord-token` the server reads `GET /gateway/bot` at start, every five
//! minutes and just after each reset (honouring Discord's `Retry-After`), and applies
//! it with its age (the time since the request was sent): the grants within the grace
//! before the send are subtracted, and its reset counts from its application, the
//! latest instant Discord can have computed it ([rules 3.11](crate::rules)). Until the
//! first read succeeds nothing is granted and `/readyz` says why; requests wait. A
//! refresh that fails later keeps the limit in force. In cluster mode the reader is
//! also the queue's limit source: after Redis loses its state, grants resume once the
//! loss's quarantine is over (10 s and `--grace-ms`). Without a token, the static limit
//! of the flags; in cluster mode it only seeds a namespace that holds no state: a
//! server joining a namespace with state (other servers', or its own before a restart)
//! takes it as it is, since the static flags are not Discord's word and the budget
//! there was spent; and after Redis loses the state nothing is granted until an
//! operator seeds it again (`/readyz` and an ERROR log say how).
//!
//! # Shutdown
//!
//! SIGTERM (or Ctrl-C): the server stops accepting, cancels every waiting request at
//! once (its connection is closed without an answer, so twilight's client asks again
//! elsewhere), and exits. A grant is spent only once its answer is being written.

mod args;
mod backend;
mod boot;
mod discord;
mod listen;
mod metrics;
mod page;
mod routes;
mod state;
mod supervisor;
mod tickets;

pub use args::{Args, DISCORD_API};
pub use boot::{main, parse_listening_line, run};
use state::{ServerState, Waiting};

use crate::lock;
