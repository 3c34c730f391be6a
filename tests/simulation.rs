//! The whole cluster, simulated and seeded (issue 28): the production process side
//! (`identify_queue::redis::sans_io`: the `Local` and the driver's rounds the real
//! queue runs) in every process, the production Lua in-process (`support/lua_redis.rs`)
//! as Redis, and a world of simulated links, faults and Discord, on a simulated clock.
//!
//! Each seed is a bot's start-up and the days after it:
//!
//! - **processes** (1 to 3) each connect with Discord's word and ask for their shards;
//!   they crash and restart (every shard of theirs starts again), and their futures
//!   take permits at once, late (a touch first), or drop them;
//! - **links**, one per process: a delay and a jitter each way (FIFO, as TCP), stalls,
//!   cuts (a call that was out may or may not have run: its answer is lost) and
//!   partitions (no reconnect until they heal);
//! - **Redis** restarts empty or from its append-only file (the last second lost), or
//!   fails over to a replica that lags (a new server either way);
//! - **shards** lose their sessions over the days and ask again (`Reconnect`); in hold
//!   mode (a fifth of the seeds) each releases its permit when READY, or never (the
//!   hold's timeout);
//! - **Discord** counts every IDENTIFY when it arrives and computes its word at the
//!   instant it is read: by the limit source, and by `update`s that come late, with
//!   any age; now and then it changes the bot's `max_concurrency`.
//!
//! The judges: the project's one judge (`support/judge.rs`) on every permit (spacing
//! per bucket, under Discord's `max_concurrency` once Redis applied a word that says
//! it), in hold mode no permit while another of its bucket holds it, Discord's counter (`support/discord_budget.rs`, the property
//! `tests/budget.rs` judges the scheduler's budget by) on the budget, and liveness:
//! once the faults heal, every request is served within a bound (with budget to
//! spare), and in any seed by the end.
//!
//! Time is counted in µs, finer than Redis's clock (whole milliseconds, as a real
//! one): the spacing's last millisecond is tested too.
//!
//! `SIM_SEEDS=N` runs N seeds (default 10,000: about 45 s here), `SIM_SEED=S` replays
//! seed S and prints its trace; a failure prints its seed. Seeded mutants of the Lua
//! (`mutants_are_caught`), each from an unchanged copy of the production scripts, must
//! each make it fail.
//!
//! Not simulated: `Options::replicas` (its `WAIT`); the wire, Sentinel and real process
//! deaths, which the real-server tests cover (`cluster*.rs`).

#[path = "support/discord_budget.rs"]
mod discord_budget;
#[path = "support/judge.rs"]
mod judge;
#[path = "support/lua_redis.rs"]
mod lua_redis;
#[path = "support/rng.rs"]
mod rng;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use discord_budget::{DAY, DiscordBudget, Window};
use identify_queue::redis::Options;
use identify_queue::redis::sans_io::{Process, Reply, Sent, Take, Transmit};
use identify_queue::{Config, Priority, SessionStartLimit};
use judge::{Judge, Rules};
use lua_redis::{Emulation, Reply as Wire, Script, Store};
use rng::Rng;

/// Simulated time: µs since the seed's start (finer than Redis's clock, which counts
/// whole milliseconds, as a real one does).
type Us = u64;

const NAMESPACE: &str = "bot";
/// Redis's clock at the start (Unix ms).
const EPOCH_MS: u64 = 1_800_000_000_000;
const MS: Us = 1000;
const SECOND: Us = 1000 * MS;
/// A process waits this long before its first reconnect; it doubles up to 2 s
/// (`driver.rs`'s backoff).
const FIRST_BACKOFF: Us = 25 * MS;
const MAX_BACKOFF: Us = 2 * SECOND;
/// The `max_concurrency` values Discord gives.
const CONCURRENCIES: [u32; 4] = [1, 2, 4, 16];
/// Events a seed may take: more is a livelock.
const MAX_EVENTS: usize = 400_000;

/// The scripts' text: production's, or a mutant's.
#[derive(Clone)]
struct Lua {
    prelude: String,
    bodies: Vec<(&'static str, String)>,
}

impl Lua {
    fn production() -> Self {
        Self {
            prelude: include_str!("../src/redis/lua/prelude.lua").to_owned(),
            bodies: vec![
                (
                    "acquire",
                    include_str!("../src/redis/lua/acquire.lua").to_owned(),
                ),
                (
                    "release",
                    include_str!("../src/redis/lua/release.lua").to_owned(),
                ),
                (
                    "touch",
                    include_str!("../src/redis/lua/touch.lua").to_owned(),
                ),
                (
                    "delivered",
                    include_str!("../src/redis/lua/delivered.lua").to_owned(),
                ),
                (
                    "leave",
                    include_str!("../src/redis/lua/leave.lua").to_owned(),
                ),
                ("sync", include_str!("../src/redis/lua/sync.lua").to_owned()),
                (
                    "status",
                    include_str!("../src/redis/lua/status.lua").to_owned(),
                ),
            ],
        }
    }

    /// These scripts with `from` replaced by `to` in `file` (`prelude` or a script's
    /// name); `None` if `from` is not there exactly once.
    fn mutant(&self, file: &str, from: &str, to: &str) -> Option<Self> {
        let mut lua = self.clone();
        let text = if file == "prelude" {
            &mut lua.prelude
        } else {
            &mut lua.bodies.iter_mut().find(|(name, _)| *name == file)?.1
        };
        if text.matches(from).count() != 1 {
            return None;
        }
        *text = text.replace(from, to);
        Some(lua)
    }
}

/// A seed's bot, drawn.
#[derive(Clone, Debug)]
struct Bot {
    processes: usize,
    shards: u32,
    /// At the start (Discord may change it: `World::max_concurrency`). Shown with a
    /// failing seed, as the next two are.
    #[allow(dead_code)]
    max_concurrency: u32,
    #[allow(dead_code)]
    total: u32,
    /// Discord's window open at the start: when (µs before it) and its count.
    #[allow(dead_code)]
    open: Option<(Us, u32)>,
    /// Per process: its link's delay and jitter to Redis and back.
    links: Vec<[(Us, Us); 2]>,
    /// The budget is far above what the seed can spend: liveness is judged by a bound.
    spare: bool,
    /// Faults happen before this instant; after it the world is healthy.
    heal: Us,
    /// Hold mode's timeout: each permit holds its bucket until its shard releases it
    /// (READY), or until then.
    hold: Option<Us>,
}

/// A link to Redis: its delays, its state, and the process's driver on it.
#[derive(Default)]
struct Link {
    /// Delay and jitter, to Redis and back.
    delays: [(Us, Us); 2],
    /// The connection's number: a message of an older one is lost.
    connection: u64,
    up: bool,
    /// Traffic either way is held until then.
    stalled_until: Us,
    /// No connection until then.
    partitioned_until: Us,
    backoff: Us,
    /// FIFO: the last arrival each way.
    last_up: Us,
    last_down: Us,
}

/// What a process's driver waits for.
enum Out {
    Idle,
    /// A batch of its round, sent at `.0`, of `.1` commands.
    Round(Us, usize),
    Source,
}

struct Node {
    process: Process,
    incarnation: u32,
    alive: bool,
    /// Connected and synced: its queue is usable.
    ready: bool,
    link: Link,
    out: Out,
    /// An input came while the driver was busy: it runs again at once after.
    woken: bool,
    /// The driver's timer: only the latest counts.
    timer: u64,
    /// Requests not served: shard → (ticket, asked at, its future).
    /// (Ordered: a seed replays exactly.)
    requests: BTreeMap<u32, (u64, Us, Future)>,
    /// Shards waiting for the queue to be ready.
    backlog: Vec<(u32, Priority)>,
}

/// Where a request's future is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Future {
    /// Waiting to be woken.
    Parked,
    /// Woken: it polls (takes) at a scheduled instant.
    Polling,
    /// It polled and found no permit: woken again by the queue's next event.
    Polled,
}

/// A batch's journey there and back: whose, on which of its connections, sent when,
/// and the word it applies if it is `connect`'s or `update`'s sync.
#[derive(Debug)]
struct Trip {
    node: usize,
    connection: u64,
    sent: Us,
    sync: Option<SessionStartLimit>,
}

#[derive(Debug)]
enum Event {
    /// A batch reaches Redis.
    Arrive {
        trip: Trip,
        batch: Vec<Sent>,
    },
    /// Replies reach their process.
    Replies {
        trip: Trip,
        replies: Vec<Result<Reply, String>>,
    },
    Notice {
        node: usize,
        connection: u64,
        payload: String,
    },
    Timer {
        node: usize,
        timer: u64,
    },
    Take {
        node: usize,
        incarnation: u32,
        shard: u32,
        ticket: u64,
    },
    Drop {
        node: usize,
        incarnation: u32,
        shard: u32,
        ticket: u64,
    },
    Source {
        node: usize,
        incarnation: u32,
        connection: u64,
    },
    Connect {
        node: usize,
        incarnation: u32,
    },
    Request {
        node: usize,
        incarnation: u32,
        shard: u32,
        priority: Priority,
    },
    Update {
        node: usize,
        age: Us,
    },
    Crash {
        node: usize,
        down: Us,
    },
    Restart {
        node: usize,
    },
    Cut {
        node: usize,
    },
    Stall {
        node: usize,
        until: Us,
    },
    Partition {
        node: usize,
        until: Us,
    },
    /// Hold mode: the shard is READY and releases its permit.
    Release {
        node: usize,
        incarnation: u32,
        shard: u32,
        epoch: i64,
        seq: i64,
    },
    /// Discord's `max_concurrency` becomes `to`, and a process brings its word.
    Concurrency {
        to: u32,
        node: usize,
    },
    /// Redis restarts: empty, or from a state `lag` µs old (an AOF, a replica).
    RedisRestart {
        empty: bool,
        lag: Us,
        down: Us,
    },
}

struct World {
    rng: Rng,
    bot: Bot,
    config: Config,
    options: Options,
    now: Us,
    origin: Instant,
    events: BinaryHeap<Reverse<(Us, u64, usize)>>,
    bodies: HashMap<usize, Event>,
    seq: u64,
    lua: Emulation,
    scripts: HashMap<&'static str, Script>,
    /// Older states of the store, for a restart from an AOF or a failover.
    history: VecDeque<(Us, Store)>,
    redis_down_until: Us,
    servers: u32,
    nodes: Vec<Node>,
    discord: DiscordBudget,
    /// Discord's `max_concurrency` now.
    max_concurrency: u32,
    /// The `max_concurrency` the judges hold a grant made now to: Discord's, once
    /// Redis applied a word that says it (no process can know of a change before).
    judged_by: u32,
    /// The `max_concurrency` each grant is held to: `judged_by` when it was made. A
    /// grant made before Redis knew of a change is spaced under the buckets of its
    /// time, even if delivered after; Redis keeps every new bucket busy until it aged.
    held_to: HashMap<(i64, i64), u32>,
    /// The smallest `max_concurrency` of the seed (the liveness bound's).
    fewest_buckets: u32,
    /// One judge per `max_concurrency` Discord may have, each told of every permit; a
    /// permit is judged by the one its grant is held to.
    judges: Vec<Judge<Duration>>,
    spacing_violations: Vec<String>,
    /// Every request's wait, to judge liveness: (asked, served or None).
    waits: Vec<(u32, Us, Option<Us>)>,
    trace: Option<Vec<String>>,
    handled: usize,
    /// Acquire answers that said to ask again at once.
    busy_loops: u32,
    /// Hold mode: the permits' holds, `(shard, delivered, released)`, judged on each
    /// permit: none of its bucket may be live (neither released nor timed out).
    holds: Vec<(u32, Us, Option<Us>)>,
    hold_violations: Vec<String>,
}

impl World {
    fn new(seed: u64, lua: &Lua) -> Self {
        let mut rng = Rng::new(seed);
        let processes = 1 + rng.below(3) as usize;
        let max_concurrency = CONCURRENCIES[rng.below(4) as usize];
        let shards = max_concurrency * (1 + rng.below(3) as u32);
        let spare = rng.chance(60);
        let total = if spare {
            1000
        } else {
            // Above `max_concurrency`: a grant never delivered nor told (its process
            // died with it) counts as spent until its bucket grants again (it could
            // still be touched and delivered), at most one per bucket; a budget they
            // could all eat would wait for Discord's word for ever.
            (shards / 2 + rng.below(u64::from(2 * shards)) as u32).max(max_concurrency + 1)
        };
        // A window Discord opened before the start, with what it counted (at least
        // the IDENTIFY that opened it: a word that says `remaining == total` means no
        // window is open).
        let open = rng.chance(50).then(|| {
            (
                rng.below(DAY.as_micros() as u64),
                1 + rng.below(u64::from(total) / 2) as u32,
            )
        });
        let links = (0..processes)
            .map(|_| {
                // Each way on its own: a permit handed over late in its window, and
                // the next grant quick to arrive, test the spacing's margin.
                [0, 1].map(|_| {
                    let delay = [0, 300, MS, 5 * MS, 20 * MS, 50 * MS][rng.below(6) as usize];
                    (delay, rng.below(delay / 2 + 1))
                })
            })
            .collect();
        let bot = Bot {
            processes,
            shards,
            max_concurrency,
            total,
            open,
            links,
            spare,
            heal: 30 * SECOND + rng.below(120 * SECOND),
            hold: rng.chance(20).then(|| 2 * SECOND + rng.below(10 * SECOND)),
        };
        let mut config = Config::default();
        if let Some(hold) = bot.hold {
            config = config.hold_until_release(Duration::from_micros(hold));
        }
        let interval = config.get_interval();
        let options = Options::default().limit_source(|| Box::pin(async { unreachable!() }));
        let origin = Instant::now();
        let discord = DiscordBudget::new(
            total,
            open.map(|(before, count)| Window {
                // Opened `before` ms before the start: the origin is moved on a day, so
                // that every instant is after it.
                opened: origin + DAY - Duration::from_micros(before),
                count,
            }),
        );
        let emulation = Emulation::new();
        let scripts = lua
            .bodies
            .iter()
            .map(|(name, body)| {
                let flags = if *name == "status" {
                    " flags=no-writes"
                } else {
                    ""
                };
                (*name, emulation.load_with(name, flags, &lua.prelude, body))
            })
            .collect();
        let judges = CONCURRENCIES
            .iter()
            .map(|&max_concurrency| Judge::new(Rules::spacing(max_concurrency, interval)))
            .collect();
        let mut world = Self {
            rng,
            bot,
            config,
            options,
            now: 0,
            origin: origin + DAY,
            events: BinaryHeap::new(),
            bodies: HashMap::new(),
            seq: 0,
            lua: emulation,
            scripts,
            history: VecDeque::new(),
            redis_down_until: 0,
            servers: 0,
            nodes: Vec::new(),
            discord,
            max_concurrency,
            judged_by: max_concurrency,
            held_to: HashMap::new(),
            fewest_buckets: max_concurrency,
            judges,
            spacing_violations: Vec::new(),
            waits: Vec::new(),
            trace: None,
            handled: 0,
            busy_loops: 0,
            holds: Vec::new(),
            hold_violations: Vec::new(),
        };
        world.lua.store.borrow_mut().set_clock_us(EPOCH_MS * MS);
        for index in 0..world.bot.processes {
            let delays = world.bot.links[index];
            let node = world.node(index, 0, delays);
            world.nodes.push(node);
            world.at(
                0,
                Event::Connect {
                    node: index,
                    incarnation: 0,
                },
            );
        }
        world.plan();
        world
    }

    fn node(&self, index: usize, incarnation: u32, delays: [(Us, Us); 2]) -> Node {
        let client = format!("p{index}.{incarnation}");
        Node {
            process: Process::new(&client, NAMESPACE, &self.config, &self.options),
            incarnation,
            alive: true,
            ready: false,
            link: Link {
                delays,
                backoff: FIRST_BACKOFF,
                ..Link::default()
            },
            out: Out::Idle,
            woken: false,
            timer: 0,
            requests: BTreeMap::new(),
            backlog: (0..self.bot.shards)
                .filter(|shard| *shard as usize % self.bot.processes == index)
                .map(|shard| (shard, Priority::Start))
                .collect(),
        }
    }

    /// The seed's faults and the days' events.
    fn plan(&mut self) {
        let heal = self.bot.heal;
        let processes = self.bot.processes;
        for _ in 0..self.rng.below(4) {
            let at = self.rng.below(heal);
            let node = self.rng.below(processes as u64) as usize;
            let event = match self.rng.below(8) {
                0 => Event::Crash {
                    node,
                    down: 100 * MS + self.rng.below(20 * SECOND),
                },
                1 => Event::Cut { node },
                2 => Event::Stall {
                    node,
                    until: at + self.rng.below(5 * SECOND),
                },
                3 => Event::Partition {
                    node,
                    until: (at + self.rng.below(20 * SECOND)).min(heal),
                },
                4 => Event::RedisRestart {
                    empty: true,
                    lag: 0,
                    down: self.rng.below(3 * SECOND),
                },
                5 => Event::RedisRestart {
                    empty: false,
                    lag: self.rng.below(SECOND),
                    down: self.rng.below(3 * SECOND),
                },
                // A failover: a replica that lags takes over.
                6 => Event::RedisRestart {
                    empty: false,
                    lag: self.rng.below(2 * SECOND),
                    down: self.rng.below(SECOND),
                },
                _ => Event::Update {
                    node,
                    age: self.rng.below(60 * SECOND),
                },
            };
            self.at(at, event);
        }
        // Discord changes the bot's `max_concurrency`, now and then.
        if self.rng.chance(20) {
            let to = CONCURRENCIES[self.rng.below(4) as usize];
            let at = self.rng.below(heal);
            let node = self.rng.below(processes as u64) as usize;
            self.at(at, Event::Concurrency { to, node });
        }
        // Over the days: sessions lost (the shard asks again), some around the
        // instants Discord's window may reset (a day after the start-up's first
        // IDENTIFYs), and Discord's word.
        let days = 1 + self.rng.below(3);
        let day = DAY.as_micros() as u64;
        for _ in 0..self.rng.below(3 * u64::from(self.bot.shards) + 1) {
            let at = if self.rng.chance(40) {
                (day * (1 + self.rng.below(days)) + self.rng.below(4 * 60 * SECOND))
                    .saturating_sub(2 * 60 * SECOND)
            } else {
                self.rng.below(days * day)
            };
            let shard = self.rng.below(u64::from(self.bot.shards)) as u32;
            let node = shard as usize % processes;
            self.at(
                at,
                Event::Request {
                    node,
                    incarnation: u32::MAX,
                    shard,
                    priority: Priority::Reconnect,
                },
            );
        }
        for _ in 0..self.rng.below(4) {
            let at = self.rng.below(days * DAY.as_micros() as u64);
            let node = self.rng.below(processes as u64) as usize;
            let age = self.rng.below(120 * SECOND);
            self.at(at, Event::Update { node, age });
        }
    }

    fn at(&mut self, at: Us, event: Event) {
        self.seq += 1;
        let id = self.seq as usize;
        self.events.push(Reverse((at.max(self.now), self.seq, id)));
        self.bodies.insert(id, event);
    }

    fn instant(&self, at: Us) -> Instant {
        self.origin + Duration::from_micros(at)
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(trace) = &mut self.trace {
            trace.push(format!("{:>10} {}", self.now, line()));
        }
    }

    /// When a message sent now on `node`'s link arrives (`up`: to Redis).
    fn travel(&mut self, node: usize, up: bool) -> Us {
        let (delay, jitter) = self.nodes[node].link.delays[usize::from(!up)];
        let jitter = self.rng.below(jitter + 1);
        let link = &mut self.nodes[node].link;
        let last = if up {
            &mut link.last_up
        } else {
            &mut link.last_down
        };
        let at = (self.now + delay + jitter)
            .max(link.stalled_until)
            .max(*last);
        *last = at;
        at
    }

    /// Discord's word read now.
    fn word(&mut self, read: Us) -> SessionStartLimit {
        let closed = Duration::from_millis(self.rng.below(DAY.as_micros() as u64));
        self.discord
            .word(self.instant(read), self.max_concurrency, closed)
    }

    fn run(&mut self) -> Result<(), String> {
        while let Some(Reverse((at, _, id))) = self.events.pop() {
            self.handled += 1;
            self.now = at;
            let event = self.bodies.remove(&id).expect("each event once");
            if self.handled > MAX_EVENTS {
                return Err(format!(
                    "no end after {MAX_EVENTS} events: a livelock (at {at} µs: {event:?})"
                ));
            }
            self.handle(event)?;
        }
        Ok(())
    }

    fn handle(&mut self, event: Event) -> Result<(), String> {
        match event {
            Event::Arrive { trip, batch } => {
                let node = trip.node;
                let live = self.nodes[node].link.connection == trip.connection
                    && self.nodes[node].link.up
                    && self.redis_down_until <= self.now;
                // A call that was out when its connection was cut may have run.
                if !live && (self.redis_down_until > self.now || !self.rng.chance(50)) {
                    return Ok(());
                }
                let replies: Vec<_> = batch.iter().map(|sent| self.redis(sent)).collect();
                self.publish();
                if live {
                    let at = self.travel(node, false);
                    self.at(at, Event::Replies { trip, replies });
                }
            }
            Event::Replies { trip, replies } => {
                let Trip {
                    node,
                    connection,
                    sent,
                    sync,
                } = trip;
                if self.nodes[node].link.connection != connection || !self.nodes[node].alive {
                    return Ok(());
                }
                let now = self.instant(self.now);
                if let Some(limit) = sync {
                    // `connect`'s or `update`'s sync.
                    match replies.first() {
                        Some(Ok(Reply::Ints(reply))) => {
                            self.nodes[node].process.synced(reply, limit, now);
                            if !self.nodes[node].ready {
                                self.nodes[node].ready = true;
                                self.asks(node);
                            }
                        }
                        other => {
                            self.log(|| format!("p{node} sync failed: {other:?}"));
                            if !self.nodes[node].ready {
                                self.cut(node);
                            }
                        }
                    }
                    self.drive(node);
                    return Ok(());
                }
                self.log(|| format!("p{node} replies {replies:?}"));
                let replies = replies.into_iter().map(|reply| (reply, now)).collect();
                let sent = self.instant(sent);
                self.nodes[node].out = Out::Idle;
                if let Err(failure) = self.nodes[node].process.replied(sent, replies) {
                    self.log(|| format!("p{node} round failed: {failure}"));
                    self.cut(node);
                }
                self.wake_polled(node);
                self.after_input(node);
            }
            Event::Notice {
                node,
                connection,
                payload,
            } => {
                if self.nodes[node].link.connection == connection && self.nodes[node].alive {
                    let now = self.instant(self.now);
                    self.nodes[node].process.noticed(&payload, now);
                    self.wake_polled(node);
                    self.after_input(node);
                }
            }
            Event::Timer { node, timer } => {
                if self.nodes[node].timer == timer {
                    self.drive(node);
                }
            }
            Event::Take {
                node,
                incarnation,
                shard,
                ticket,
            } => {
                let n = &mut self.nodes[node];
                let Some(request) = n.requests.get_mut(&shard) else {
                    return Ok(());
                };
                // A future dropped since, or its process gone.
                if n.incarnation != incarnation || !n.alive || request.0 != ticket {
                    return Ok(());
                }
                request.2 = Future::Polled;
                let now = self.instant(self.now);
                let taken = self.nodes[node].process.take(shard, ticket, now);
                self.log(|| format!("p{node} shard {shard} polls: {taken:?}"));
                match taken {
                    Take::Permit { epoch, seq } => {
                        self.identify(node, shard, epoch, seq);
                    }
                    Take::Pending => {}
                    Take::Gone => {
                        // Its grant was lost (the process side gave it up): the shard
                        // asks again, as a library would.
                        self.nodes[node].requests.remove(&shard);
                        self.ask(node, shard, Priority::Start);
                    }
                }
                self.after_input(node);
            }
            Event::Drop {
                node,
                incarnation,
                shard,
                ticket,
            } => {
                let now = self.instant(self.now);
                let n = &mut self.nodes[node];
                if n.incarnation != incarnation
                    || !n.alive
                    || n.requests.get(&shard).is_none_or(|r| r.0 != ticket)
                {
                    return Ok(());
                }
                n.process.abandon(shard, ticket, now);
                let (_, asked, _) = n.requests.remove(&shard).expect("there");
                self.served(shard, asked, None);
                self.log(|| format!("p{node} shard {shard} drops its future"));
                // It asks again a little later.
                let later = self.now + self.rng.below(10 * SECOND);
                self.at(
                    later,
                    Event::Request {
                        node,
                        incarnation,
                        shard,
                        priority: Priority::Start,
                    },
                );
                self.after_input(node);
            }
            Event::Source {
                node,
                incarnation,
                connection,
            } => {
                let n = &self.nodes[node];
                if n.incarnation != incarnation || !n.alive {
                    return Ok(());
                }
                if n.link.connection != connection {
                    // The round ended with its link.
                    self.nodes[node].process.disconnected();
                    self.nodes[node].out = Out::Idle;
                    return Ok(());
                }
                let limit = self.word(self.now);
                self.log(|| format!("p{node} limit source: {limit:?}"));
                let now = self.instant(self.now);
                self.nodes[node].out = Out::Idle;
                self.nodes[node].process.sourced(Ok(limit), now);
                self.drive(node);
            }
            Event::Connect { node, incarnation } => self.connect(node, incarnation),
            Event::Request {
                node,
                incarnation,
                shard,
                priority,
            } => {
                let n = &self.nodes[node];
                if (incarnation != u32::MAX && n.incarnation != incarnation) || !n.alive {
                    return Ok(());
                }
                if n.ready {
                    if !n.requests.contains_key(&shard) {
                        self.ask(node, shard, priority);
                        self.after_input(node);
                    }
                } else {
                    self.nodes[node].backlog.push((shard, priority));
                }
            }
            Event::Update { node, age } => {
                if !self.nodes[node].alive || !self.nodes[node].link.up {
                    return Ok(());
                }
                let read = self.now.saturating_sub(age);
                let limit = self.word(read);
                self.log(|| format!("p{node} update read at {read}: {limit:?}"));
                let sync = self.nodes[node]
                    .process
                    .sync(limit, Duration::from_micros(age));
                self.send(node, vec![sync], Some(limit));
            }
            Event::Crash { node, down } => {
                self.log(|| format!("p{node} crashes"));
                self.unsubscribe(node);
                let n = &mut self.nodes[node];
                n.alive = false;
                n.link.up = false;
                n.link.connection += 1;
                let requests = std::mem::take(&mut n.requests);
                for (shard, (_, asked, _)) in requests {
                    self.served(shard, asked, None);
                }
                self.at(self.now + down, Event::Restart { node });
            }
            Event::Restart { node } => {
                let old = &self.nodes[node];
                let (delays, connection) = (old.link.delays, old.link.connection);
                let incarnation = old.incarnation + 1;
                let mut fresh = self.node(node, incarnation, delays);
                fresh.link.connection = connection + 1;
                self.nodes[node] = fresh;
                self.log(|| format!("p{node} restarts"));
                self.at(self.now, Event::Connect { node, incarnation });
            }
            Event::Cut { node } => {
                self.log(|| format!("p{node} link cut"));
                self.cut(node);
            }
            Event::Stall { node, until } => {
                self.log(|| format!("p{node} link stalls until {until}"));
                self.nodes[node].link.stalled_until = until;
            }
            Event::Partition { node, until } => {
                self.log(|| format!("p{node} partitioned until {until}"));
                self.nodes[node].link.partitioned_until = until;
                self.cut(node);
            }
            Event::RedisRestart { empty, lag, down } => {
                self.redis_restart(empty, lag, down);
            }
            Event::Release {
                node,
                incarnation,
                shard,
                epoch,
                seq,
            } => {
                let now = self.instant(self.now);
                let n = &mut self.nodes[node];
                if n.incarnation != incarnation || !n.alive {
                    return Ok(());
                }
                n.process.release(shard, epoch, seq, now);
                let at = self.now;
                if let Some(held) = self
                    .holds
                    .iter_mut()
                    .rev()
                    .find(|(s, _, released)| *s == shard && released.is_none())
                {
                    held.2 = Some(at);
                }
                self.log(|| format!("p{node} shard {shard} releases ({epoch}:{seq})"));
                self.after_input(node);
            }
            Event::Concurrency { to, node } => {
                self.log(|| format!("Discord's max_concurrency becomes {to}"));
                self.max_concurrency = to;
                self.fewest_buckets = self.fewest_buckets.min(to);
                // The bot reads its word again (a shard was told, or a timer).
                let later = self.now + self.rng.below(5 * SECOND);
                self.at(later, Event::Update { node, age: 0 });
            }
        }
        Ok(())
    }

    /// Runs one command on the emulated Redis at the world's clock.
    fn redis(&mut self, sent: &Sent) -> Result<Reply, String> {
        self.lua
            .store
            .borrow_mut()
            .set_clock_us(EPOCH_MS * MS + self.now);
        let wire = match sent {
            Sent::Script { name, args } => {
                let script = &self.scripts[name];
                self.lua.eval(script, &[self.prefix()], args)
            }
            Sent::Command(argv) => {
                let argv: Vec<Vec<u8>> = argv.iter().map(|a| a.clone().into_bytes()).collect();
                self.lua.store.borrow_mut().command(&argv)
            }
        };
        self.remember();
        if let (Sent::Script { name, .. }, Some(reply)) = (sent, wire.ints()) {
            // The sync's reply ends with the `max_concurrency` in force: once it is
            // Discord's new one, the judge holds the cluster to it (before, no process
            // could know of the change), also if an older word brings back the old.
            if *name == "sync"
                && reply.get(3) == Some(&i64::from(self.max_concurrency))
                && self.judged_by != self.max_concurrency
            {
                self.judged_by = self.max_concurrency;
            }
            if *name == "acquire" && reply.first() == Some(&1) {
                if let (Some(&epoch), Some(&seq)) = (reply.get(1), reply.get(2)) {
                    self.held_to.entry((epoch, seq)).or_insert(self.judged_by);
                }
            }
            // An answer to ask again in 0 ms has its process ask again at once, and
            // again, until Redis's clock moves: a busy loop.
            if *name == "acquire" && reply.first() == Some(&2) && reply.get(1) == Some(&0) {
                self.busy_loops += 1;
            }
        }
        match wire {
            Wire::Int(v) => Ok(Reply::Int(v)),
            Wire::Array(_) => wire
                .ints()
                .map(Reply::Ints)
                .ok_or_else(|| format!("not integers: {wire:?}")),
            Wire::Bulk(b) => Ok(Reply::Text(Some(String::from_utf8_lossy(&b).into_owned()))),
            Wire::Status(s) => Ok(Reply::Text(Some(s))),
            Wire::Nil => Ok(Reply::Text(None)),
            Wire::Error(e) => Err(e),
        }
    }

    /// Keeps the store's state now and then, for a restart from an older one.
    fn remember(&mut self) {
        if self.now > self.bot.heal {
            return;
        }
        if self
            .history
            .back()
            .is_none_or(|(at, _)| *at + 100 * MS <= self.now)
        {
            let store = self.lua.store.borrow().clone();
            self.history.push_back((self.now, store));
            while self.history.len() > 40 {
                self.history.pop_front();
            }
        }
    }

    /// Delivers what the scripts published to every connected process.
    fn publish(&mut self) {
        let published = std::mem::take(&mut self.lua.store.borrow_mut().published);
        for (_, payload) in published {
            for node in 0..self.nodes.len() {
                let n = &self.nodes[node];
                if n.alive && n.link.up {
                    let connection = n.link.connection;
                    let at = self.travel(node, false);
                    self.at(
                        at,
                        Event::Notice {
                            node,
                            connection,
                            payload: payload.clone(),
                        },
                    );
                }
            }
        }
    }

    /// Every key's prefix, as production makes it.
    fn prefix(&self) -> &str {
        self.nodes[0].process.prefix()
    }

    /// The channel `node`'s process subscribes to while it lives (`{prefix}p:<client>`).
    fn channel_of(&self, node: usize) -> String {
        let incarnation = self.nodes[node].incarnation;
        format!("{}p:p{node}.{incarnation}", self.prefix())
    }

    /// The namespace's channel, where the scripts publish.
    fn events_channel(&self) -> String {
        format!("{}ev", self.prefix())
    }

    fn subscribe(&mut self, node: usize) {
        let (channel, events) = (self.channel_of(node), self.events_channel());
        let mut store = self.lua.store.borrow_mut();
        store.subscribers.insert(channel, 1);
        *store.subscribers.entry(events).or_default() += 1;
    }

    fn unsubscribe(&mut self, node: usize) {
        if !self.nodes[node].link.up {
            return;
        }
        let (channel, events) = (self.channel_of(node), self.events_channel());
        let mut store = self.lua.store.borrow_mut();
        store.subscribers.remove(&channel);
        if let Some(count) = store.subscribers.get_mut(&events) {
            *count -= 1;
        }
    }

    /// `node`'s connection is gone: the round's calls failed, and it reconnects after
    /// its backoff.
    fn cut(&mut self, node: usize) {
        if !self.nodes[node].alive {
            return;
        }
        self.unsubscribe(node);
        let now = self.instant(self.now);
        let n = &mut self.nodes[node];
        let was_up = n.link.up;
        n.link.up = false;
        n.link.connection += 1;
        if let Out::Round(sent, count) = n.out {
            let failed = (0..count)
                .map(|_| (Err("connection cut".to_owned()), now))
                .collect();
            let _ = n
                .process
                .replied(self.origin + Duration::from_micros(sent), failed);
            n.out = Out::Idle;
        }
        n.process.disconnected();
        if was_up || matches!(n.out, Out::Idle) {
            let backoff = n.link.backoff;
            n.link.backoff = (backoff * 2).min(MAX_BACKOFF);
            let incarnation = n.incarnation;
            self.at(self.now + backoff, Event::Connect { node, incarnation });
        }
    }

    fn connect(&mut self, node: usize, incarnation: u32) {
        let n = &self.nodes[node];
        if n.incarnation != incarnation || !n.alive || n.link.up {
            return;
        }
        if n.link.partitioned_until > self.now || self.redis_down_until > self.now {
            let n = &mut self.nodes[node];
            let backoff = n.link.backoff;
            n.link.backoff = (backoff * 2).min(MAX_BACKOFF);
            self.at(self.now + backoff, Event::Connect { node, incarnation });
            return;
        }
        // The link opens and measures its round trip (a few `PING`s).
        let sent = self.instant(self.now);
        let [(up, _), (down, _)] = self.nodes[node].link.delays;
        let round_trip = up + down;
        let now = self.instant(self.now + round_trip);
        let n = &mut self.nodes[node];
        n.link.up = true;
        n.link.backoff = FIRST_BACKOFF;
        n.link.last_up = n.link.last_up.max(self.now);
        n.process.connected(sent, now);
        self.subscribe(node);
        self.log(|| format!("p{node} connected"));
        if !self.nodes[node].ready {
            // `connect`: Discord's word, read just now, applied first.
            let limit = self.word(self.now);
            let sync = self.nodes[node].process.sync(limit, Duration::ZERO);
            self.send(node, vec![sync], Some(limit));
        } else {
            self.drive(node);
        }
    }

    /// Sends `batch` on `node`'s link.
    fn send(&mut self, node: usize, batch: Vec<Sent>, sync: Option<SessionStartLimit>) {
        let trip = Trip {
            node,
            connection: self.nodes[node].link.connection,
            sent: self.now,
            sync,
        };
        let at = self.travel(node, true);
        self.at(at, Event::Arrive { trip, batch });
    }

    /// The queue is ready: the shards waiting for it ask.
    fn asks(&mut self, node: usize) {
        let backlog = std::mem::take(&mut self.nodes[node].backlog);
        for (shard, priority) in backlog {
            self.ask(node, shard, priority);
        }
        self.after_input(node);
    }

    fn ask(&mut self, node: usize, shard: u32, priority: Priority) {
        let now = self.instant(self.now);
        let Some(ticket) = self.nodes[node].process.request(shard, priority, now) else {
            return;
        };
        self.log(|| format!("p{node} shard {shard} asks ({priority:?})"));
        self.nodes[node]
            .requests
            .insert(shard, (ticket, self.now, Future::Parked));
        // Some futures are dropped before they resolve.
        if self.now < self.bot.heal && self.rng.chance(3) {
            let later = self.now + self.rng.below(20 * SECOND);
            let incarnation = self.nodes[node].incarnation;
            self.at(
                later,
                Event::Drop {
                    node,
                    incarnation,
                    shard,
                    ticket,
                },
            );
        }
    }

    /// The shard's IDENTIFY reaches Discord now.
    fn identify(&mut self, node: usize, shard: u32, epoch: i64, seq: i64) {
        let (_, asked, _) = self.nodes[node].requests.remove(&shard).expect("asked");
        self.served(shard, asked, Some(self.now));
        self.log(|| format!("p{node} shard {shard} IDENTIFYs ({epoch}:{seq})"));
        // Spacing is judged at the permit (the margin covers the gateway's jitter);
        // Discord counts the IDENTIFY when it arrives, after the shard's handshake.
        let held_to = self.held_to.get(&(epoch, seq)).copied();
        let held_to = held_to.unwrap_or(self.judged_by);
        let at = Duration::from_micros(self.now);
        for judge in &mut self.judges {
            let kept = judge.arrive(at, shard);
            if !kept && judge.max_concurrency() == held_to {
                let violation = judge.violations().last().cloned().unwrap_or_default();
                self.spacing_violations.push(violation);
            }
        }
        if let Some(hold) = self.bot.hold {
            self.judge_hold(shard, hold, held_to);
            // READY comes, and the shard releases; or it never does (the timeout).
            if self.rng.chance(90) {
                let ready = self.now + self.rng.below(4 * SECOND);
                let incarnation = self.nodes[node].incarnation;
                self.at(
                    ready,
                    Event::Release {
                        node,
                        incarnation,
                        shard,
                        epoch,
                        seq,
                    },
                );
            }
        }
        let travel = self.rng.below(3 * SECOND);
        self.discord.arrive(self.instant(self.now + travel));
    }

    /// Hold mode: `shard`'s permit came now; no other permit of its bucket (under the
    /// `max_concurrency` judged) may still hold it. A hold times out `hold` after its
    /// permit at the earliest, less a millisecond for Redis's whole-ms clock.
    fn judge_hold(&mut self, shard: u32, hold: Us, buckets: u32) {
        let now = self.now;
        let live = self.holds.iter().find(|&&(other, delivered, released)| {
            other % buckets == shard % buckets
                && released.is_none_or(|at| at > now)
                && now + MS < delivered + hold
        });
        if let Some(&(other, delivered, _)) = live {
            self.hold_violations.push(format!(
                "shard {shard}'s permit at {now} µs while shard {other}'s (at {delivered} µs) still held the bucket"
            ));
        }
        self.holds.push((shard, now, None));
    }

    fn served(&mut self, shard: u32, asked: Us, served: Option<Us>) {
        self.waits.push((shard, asked, served));
    }

    /// The queue's state changed by an answer or a notice: the futures that polled
    /// and found nothing are woken (a spurious wake costs a poll, as in production).
    fn wake_polled(&mut self, node: usize) {
        for request in self.nodes[node].requests.values_mut() {
            if request.2 == Future::Polled {
                request.2 = Future::Parked;
            }
        }
    }

    /// An input reached `node`'s process: its futures look (the granted ones take, at
    /// once or late), and its driver runs.
    fn after_input(&mut self, node: usize) {
        let n = &self.nodes[node];
        if !n.alive {
            return;
        }
        let mut due: Vec<(u32, u64, Instant)> = n
            .requests
            .iter()
            .filter(|(_, request)| request.2 == Future::Parked)
            .filter_map(|(&shard, request)| Some((shard, request.0, n.process.granted(shard)?)))
            .collect();
        // Woken futures poll in any order (seeded).
        for i in (1..due.len()).rev() {
            due.swap(i, self.rng.below(i as u64 + 1) as usize);
        }
        for (shard, ticket, deliver_by) in due {
            // Most futures take their permit at once, some a few ms on (a busy
            // executor: in the window or after it), some at the last instant the
            // window allows, and before the faults heal some much later (a stall).
            let last = deliver_by.saturating_duration_since(self.origin).as_nanos() / 1000;
            let late = match self.rng.below(100) {
                0..=9 if self.now < self.bot.heal => self.rng.below(12 * SECOND),
                10..=29 => self.rng.below(8 * MS),
                30..=44 => (last as Us).saturating_sub(self.now),
                _ => 0,
            };
            if let Some(request) = self.nodes[node].requests.get_mut(&shard) {
                request.2 = Future::Polling;
            }
            let incarnation = self.nodes[node].incarnation;
            self.at(
                self.now + late,
                Event::Take {
                    node,
                    incarnation,
                    shard,
                    ticket,
                },
            );
        }
        if matches!(self.nodes[node].out, Out::Idle) {
            self.drive(node);
        } else {
            self.nodes[node].woken = true;
        }
    }

    /// `node`'s driver runs: the next commands of its round, or a sleep.
    fn drive(&mut self, node: usize) {
        let n = &self.nodes[node];
        if !n.alive || !n.link.up || !n.ready || !matches!(n.out, Out::Idle) {
            return;
        }
        let now = self.instant(self.now);
        match self.nodes[node].process.poll(now) {
            Transmit::Send(batch) => {
                self.log(|| format!("p{node} sends {batch:?}"));
                self.nodes[node].out = Out::Round(self.now, batch.len());
                self.send(node, batch, None);
            }
            Transmit::AskSource => {
                self.nodes[node].out = Out::Source;
                let latency = 10 * MS + self.rng.below(500 * MS);
                let n = &self.nodes[node];
                let (incarnation, connection) = (n.incarnation, n.link.connection);
                self.at(
                    self.now + latency,
                    Event::Source {
                        node,
                        incarnation,
                        connection,
                    },
                );
            }
            Transmit::Sleep(at) => {
                let n = &mut self.nodes[node];
                n.timer += 1;
                let timer = n.timer;
                let woken = std::mem::take(&mut n.woken);
                // An idle process's timer finds nothing to do: it runs again on an
                // input (a request, a notice).
                if n.process.is_empty() && !woken {
                    return;
                }
                let at = if woken {
                    self.now
                } else {
                    // The first µs at or after it.
                    at.saturating_duration_since(self.origin)
                        .as_nanos()
                        .div_ceil(1000) as Us
                };
                self.log(|| format!("p{node} sleeps until {at}"));
                self.at(at.max(self.now), Event::Timer { node, timer });
            }
        }
    }

    fn redis_restart(&mut self, empty: bool, lag: Us, down: Us) {
        self.servers += 1;
        let run_id = format!("{:040x}", self.rng.next());
        let replid = format!("{:040x}", self.rng.next());
        let restored = if empty {
            None
        } else {
            let since = self.now.saturating_sub(lag);
            self.history
                .iter()
                .rev()
                .find(|(at, _)| *at <= since)
                .map(|(_, store)| store.clone())
        };
        {
            let mut store = self.lua.store.borrow_mut();
            let subscribers = std::mem::take(&mut store.subscribers);
            match restored {
                Some(old) => *store = old,
                None => store.flush(),
            }
            store.run_id = run_id;
            store.master_replid = replid;
            store.subscribers = subscribers;
            store.published.clear();
        }
        self.log(|| format!("Redis restarts (empty: {empty}, lag {lag} µs, down {down} µs)"));
        self.redis_down_until = self.now + down;
        for node in 0..self.nodes.len() {
            if self.nodes[node].link.up {
                self.cut(node);
            }
        }
    }

    /// The judges' verdict.
    fn verdict(&self) -> Result<(), String> {
        if let Some(violation) = self.spacing_violations.first() {
            return Err(format!("spacing: {violation}"));
        }
        if let Some(violation) = self.hold_violations.first() {
            return Err(format!("hold: {violation}"));
        }
        self.discord.never_overspent()?;
        if self.busy_loops > 0 {
            return Err(format!(
                "{} acquire answers said to ask again in 0 ms",
                self.busy_loops
            ));
        }
        let config = &self.config;
        let spacing = config.get_interval().as_micros() as Us + MS;
        let per_bucket = u64::from(self.bot.shards / self.fewest_buckets) + 1;
        // Once healed: a loss's quarantine (a grace and the longest window), the word,
        // then every shard of a bucket in turn, each round trip and head grace.
        let bound = 2 * config.get_grace().as_micros() as Us
            + per_bucket * (spacing + 1500 * MS + self.bot.hold.unwrap_or(0))
            + 15 * SECOND;
        for &(shard, asked, served) in &self.waits {
            let Some(served) = served else { continue };
            let from = asked.max(self.bot.heal);
            if self.bot.spare && served > from + bound {
                return Err(format!(
                    "liveness: shard {shard} asked at {asked}, served at {served} (bound {bound} µs after {from})"
                ));
            }
        }
        for node in &self.nodes {
            if let Some((shard, (_, asked, _))) = node.requests.iter().next() {
                return Err(format!(
                    "liveness: shard {shard} asked at {asked}, never served"
                ));
            }
            if node.alive && !node.backlog.is_empty() {
                return Err(format!(
                    "liveness: a process never became ready ({} shards waiting)",
                    node.backlog.len()
                ));
            }
        }
        Ok(())
    }
}

/// One seed with `lua`: the judges' verdict, and the simulated time it spanned.
fn run(seed: u64, lua: &Lua, print: bool) -> Result<Duration, String> {
    let mut world = World::new(seed, lua);
    if print {
        world.trace = Some(Vec::new());
        eprintln!("seed {seed}: {:?}", world.bot);
    }
    let ran = world.run();
    if let Some(trace) = &world.trace {
        for line in trace {
            eprintln!("{line}");
        }
    }
    ran.and_then(|()| world.verdict())
        .map(|()| Duration::from_micros(world.now))
        .map_err(|failure| format!("seed {seed} ({:?}): {failure}", world.bot))
}

fn seeds(default: u64) -> u64 {
    std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[test]
fn the_cluster_keeps_the_rules_on_every_seed() {
    let lua = Lua::production();
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        if let Err(failure) = run(seed, &lua, true) {
            panic!("{failure}");
        }
        return;
    }
    let started = Instant::now();
    let count = seeds(10_000);
    let first: u64 = std::env::var("SIM_FIRST")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut failures = Vec::new();
    let mut simulated = Duration::ZERO;
    for seed in first..first + count {
        match run(seed, &lua, false) {
            Ok(spanned) => simulated += spanned,
            Err(failure) => {
                failures.push(failure);
                if failures.len() >= 5 {
                    break;
                }
            }
        }
    }
    eprintln!(
        "{count} seeded start-ups, {:.0} simulated days, in {:?}",
        simulated.as_secs_f64() / DAY.as_secs_f64(),
        started.elapsed()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What the simulation found, each by its seed (each fails on the code before its fix;
/// the seeds are those that fail since a seed replays exactly, with the touches of a
/// round in shard order):
///
/// - **4159: a process that missed Discord's word fetched it again, and again.** Cut
///   off (a partition) when another process applied the word, it never heard the
///   notification; its fetch found the word applied (the lease, the status script)
///   and went on, but kept waiting for the word, so its next round fetched again at
///   once: a busy loop of four commands until a notification came. Seeing the word
///   applied now ends the wait, as the notification would (`round.rs`).
/// - **3236 and 4505: after Discord changed `max_concurrency`, a process asked for
///   shards it had delivered, round after round, each grant spending a unit.** The
///   first answer of a round re-keyed the process's queues; a later answer of the
///   same round, a grant, took its shard's key out of the bucket it had been asked
///   in, which no longer held it. The key stayed, and the delivered shard was asked
///   for again and granted again, its future gone, until each day's budget was spent
///   and the queue waited for the reset. An answer now finds the key where the re-key
///   put it, and a key whose request is not waiting is never asked for (`local.rs`;
///   also a unit test in `round.rs`).
/// - **14834 and 33069: Redis told a process to ask again in 0 ms.** A head whose
///   lease ended in the very millisecond of a call was not passed yet, and the caller
///   was told to wait `lease - now = 0`: it asked again at once, and again, until
///   Redis's clock moved a millisecond (14834: 8 such answers; 33069, on links with no
///   delay, where the simulated clock never moves: a livelock). The wait is now at
///   least a millisecond (`lua/acquire.lua`).
#[test]
fn regressions_found_by_the_simulation() {
    let lua = Lua::production();
    for seed in [3236, 4159, 4505, 14834, 33069] {
        if let Err(failure) = run(seed, &lua, false) {
            panic!("{failure}");
        }
    }
}

/// The Lua's mutants the simulation must catch, each from an unchanged copy of the
/// production scripts: `(what, file, from, to)`.
const MUTANTS: [(&str, &str, &str, &str); 6] = [
    (
        "a bucket's spacing shortened by a millisecond",
        "sync",
        "'mc', mc, 'iv', iv, 'hold'",
        "'mc', mc, 'iv', iv - 1, 'hold'",
    ),
    (
        "a unit not spent",
        "acquire",
        "st.rem = st.rem - 1",
        "st.rem = st.rem - 0",
    ),
    (
        "the grace not subtracted from a word",
        "sync",
        "local recent = redis.call('ZCOUNT', LOG, read - grace, '+inf')",
        "local recent = redis.call('ZCOUNT', LOG, read, '+inf')",
    ),
    (
        "a window's reset at the earliest grant that may open it, not the latest",
        "prelude",
        "st.reset_at = math.max(st.reset_at, latest)",
        "st.reset_at = math.min(st.reset_at, latest)",
    ),
    (
        "a hold that ends with its delivery window, not its release or timeout",
        "acquire",
        "'l:' .. b, now + window + st.hold)",
        "'l:' .. b, now + window)",
    ),
    (
        "a touch that does not keep its bucket busy",
        "prelude",
        "redis.call('HSET', BKT, 'f:' .. b, math.max(free, now + st.iv + window))",
        "redis.call('HSET', BKT, 'f:' .. b, free)",
    ),
];

/// Each mutant fails within the seeds CI runs; prints the first seed that caught it.
#[test]
fn mutants_are_caught() {
    let production = Lua::production();
    let budget = seeds(10_000);
    let mut missed = Vec::new();
    for (what, file, from, to) in MUTANTS {
        let lua = production
            .mutant(file, from, to)
            .unwrap_or_else(|| panic!("the mutant \"{what}\" no longer applies to {file}.lua"));
        match (0..budget).find_map(|seed| run(seed, &lua, false).err().map(|e| (seed, e))) {
            Some((seed, failure)) => {
                eprintln!("caught \"{what}\" at seed {seed}: {failure}");
            }
            None => missed.push(what),
        }
    }
    assert!(
        missed.is_empty(),
        "mutants not caught in {budget} seeds: {missed:?}"
    );
}
