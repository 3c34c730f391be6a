//! The cluster's budget (the production Lua, in-process: `support/lua_redis.rs`) on
//! random days, judged by Discord's counter (`support/discord_budget.rs`, the judge
//! of `tests/budget.rs` and `tests/cluster_budget_day.rs`): no Discord window ever
//! counts more than `total`.
//!
//! Each seed is a bot on a scaled day. Its processes ask for grants with random
//! delivery windows, and each permit meets a random fate:
//!
//! - delivered within its window, or late after a touch (void if Redis refuses it);
//! - delivered after a retried answer (the same nonce);
//! - never delivered (the future dropped, the process gone);
//! - delivered, but Redis told late or never.
//!
//! Discord's word is read at random instants, with random ages and any `reset_after`
//! while no window is open, and applied late. Redis restarts, empty or from its
//! append-only file (a new server: a new epoch). The clock is simulated: a seed's days
//! take milliseconds.
//!
//! `SIM_SEEDS=N` runs N seeds (default 300); `SIM_SEED=S` runs seed S and prints its
//! trace. A failure prints its seed.

#[path = "support/discord_budget.rs"]
mod discord_budget;
#[path = "support/lua_redis.rs"]
mod lua_redis;
#[path = "support/rng.rs"]
mod rng;

use std::time::{Duration, Instant};

use discord_budget::DiscordBudget;
use lua_redis::{Emulation, Script};
use rng::Rng;

const KEYS: &str = "iq:{bot}:";
/// Redis's clock at the start (Unix ms).
const EPOCH_MS: i64 = 1_800_000_000_000;

/// The bot's settings (ms), drawn per seed.
#[derive(Clone, Copy, Debug)]
struct Settings {
    total: u32,
    max_concurrency: u32,
    interval: i64,
    grace: i64,
    day: i64,
    shards: u32,
}

/// What becomes of a grant's permit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Handed over at `at`, within its window; Redis told (or not).
    Deliver { tell: bool },
    /// Taken after its window: a touch first, then handed over if Redis kept it.
    Late,
    /// Its answer was lost: the call retried with its nonce, then handed over.
    Retry,
    /// Never handed over.
    Dropped,
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    shard: u32,
    epoch: i64,
    seq: i64,
    nonce: u64,
    window: i64,
    at: i64,
    fate: Fate,
}

struct World {
    lua: Emulation,
    acquire: Script,
    touch: Script,
    delivered: Script,
    sync: Script,
    settings: Settings,
    discord: DiscordBudget,
    origin: Instant,
    /// Redis's (and Discord's) clock, ms since the start.
    now: i64,
    nonces: u64,
    pending: Vec<Pending>,
    /// Deliveries Redis has not been told of yet, to tell at `at`.
    untold: Vec<(i64, u32, i64, i64)>,
    restarts: u32,
    /// Words applied so far.
    words: u32,
    trace: Vec<String>,
}

impl World {
    fn new(settings: Settings) -> Self {
        let lua = Emulation::new();
        let load = |name: &str, body: &str| lua.load(name, "", body);
        let acquire = load("acquire", include_str!("../src/redis/lua/acquire.lua"));
        let touch = load("touch", include_str!("../src/redis/lua/touch.lua"));
        let delivered = load("delivered", include_str!("../src/redis/lua/delivered.lua"));
        let sync = load("sync", include_str!("../src/redis/lua/sync.lua"));
        {
            let mut store = lua.store.borrow_mut();
            store.set_clock(EPOCH_MS as u64);
            for client in 0..3 {
                store.subscribers.insert(format!("{KEYS}p:p{client}"), 1);
            }
        }
        Self {
            lua,
            acquire,
            touch,
            delivered,
            sync,
            settings,
            discord: DiscordBudget::scaled(
                settings.total,
                None,
                Duration::from_millis(settings.day as u64),
            ),
            origin: Instant::now(),
            now: 0,
            nonces: 0,
            pending: Vec::new(),
            untold: Vec::new(),
            restarts: 0,
            words: 0,
            trace: Vec::new(),
        }
    }

    fn instant(&self, at: i64) -> Instant {
        self.origin + Duration::from_millis(at as u64)
    }

    fn advance(&mut self, by: i64) {
        self.now += by;
        self.lua
            .store
            .borrow_mut()
            .set_clock((EPOCH_MS + self.now) as u64);
    }

    fn eval(&self, script: &Script, args: &[String]) -> Vec<i64> {
        let reply = self.lua.eval(script, &[KEYS], args);
        reply
            .ints()
            .unwrap_or_else(|| panic!("a script's reply: {reply:?}"))
    }

    /// Discord's word, read `age` ms ago, applied now.
    fn word(&mut self, age: i64, closed_reset: i64) {
        let read = (self.now - age).max(0);
        let limit = self.discord.word(
            self.instant(read),
            self.settings.max_concurrency,
            Duration::from_millis(closed_reset as u64),
        );
        let reset_after = limit.reset_after.as_nanos().div_ceil(1_000_000) as i64;
        let s = self.settings;
        let args: Vec<String> = [
            i64::from(s.total),
            i64::from(limit.remaining),
            reset_after,
            i64::from(s.max_concurrency),
            s.interval,
            0,
            s.grace,
            s.day,
            0,
            200,
            self.now - read,
            0,
            // Every process here saw the state (the first word made it).
            i64::from(self.words > 0),
        ]
        .iter()
        .map(i64::to_string)
        .collect();
        let reply = self.eval(&self.sync, &args);
        self.words += 1;
        self.trace.push(format!(
            "{:>8} word read at {read} (remaining {}, reset_after {reset_after}): {reply:?}",
            self.now, limit.remaining
        ));
    }

    /// Shard `shard`'s process asks (nonce `nonce`), with delivery window `window`.
    fn ask(&mut self, shard: u32, nonce: u64, window: i64) -> Vec<i64> {
        let client = format!("p{}", shard % 3);
        let args = vec![
            client,
            shard.to_string(),
            format!("n{nonce}"),
            "1".to_owned(),
            "-1".to_owned(),
            window.to_string(),
        ];
        self.eval(&self.acquire, &args)
    }

    /// The IDENTIFY of `grant` arrives at Discord now; its process tells Redis now, or
    /// later, or never.
    /// (A permit handed over within its window arrives at its instant, `grant.at`,
    /// which this step passed; the others arrive now, after their touch or retry.)
    fn hand_over(&mut self, grant: Pending, tell: bool, rng: &mut Rng) {
        let at = match grant.fate {
            Fate::Deliver { .. } => grant.at.min(self.now),
            _ => self.now,
        };
        self.discord.arrive(self.instant(at));
        self.trace.push(format!(
            "{:>8} shard {} IDENTIFYs at {at} ({}:{}), told: {tell}",
            self.now, grant.shard, grant.epoch, grant.seq
        ));
        if tell {
            let later = self.now + rng.below(3 * self.settings.grace as u64) as i64;
            self.untold
                .push((later, grant.shard, grant.epoch, grant.seq));
        }
    }

    fn step(&mut self, rng: &mut Rng) {
        let s = self.settings;
        // Time moves on by up to two intervals.
        self.advance(1 + rng.below(2 * s.interval as u64) as i64);
        // Deliveries come due.
        let due: Vec<Pending> = self
            .pending
            .iter()
            .copied()
            .filter(|p| p.at <= self.now)
            .collect();
        self.pending.retain(|p| p.at > self.now);
        for grant in due {
            match grant.fate {
                Fate::Deliver { tell } => self.hand_over(grant, tell, rng),
                Fate::Late => {
                    let window = 1 + rng.below(200) as i64;
                    let args: Vec<String> =
                        [i64::from(grant.shard), grant.epoch, grant.seq, window]
                            .iter()
                            .map(i64::to_string)
                            .collect();
                    let kept = self.eval(&self.touch, &args)[0];
                    self.trace.push(format!(
                        "{:>8} shard {} touches late ({}:{}): {kept}",
                        self.now, grant.shard, grant.epoch, grant.seq
                    ));
                    if kept >= 1 {
                        let tell = rng.chance(80);
                        self.hand_over(grant, tell, rng);
                    }
                }
                Fate::Retry => {
                    let reply = self.ask(grant.shard, grant.nonce, grant.window);
                    self.trace.push(format!(
                        "{:>8} shard {} retries n{}: {reply:?}",
                        self.now, grant.shard, grant.nonce
                    ));
                    if reply[0] == 1 && reply[1] == grant.epoch && reply[2] == grant.seq {
                        let tell = rng.chance(80);
                        self.hand_over(grant, tell, rng);
                    } else if reply[0] == 1 {
                        // Asked afresh and granted anew.
                        let fresh = Pending {
                            epoch: reply[1],
                            seq: reply[2],
                            at: self.now,
                            fate: Fate::Deliver { tell: true },
                            ..grant
                        };
                        self.hand_over(fresh, true, rng);
                    }
                }
                Fate::Dropped => {}
            }
        }
        // Processes tell Redis of deliveries.
        let told: Vec<_> = self
            .untold
            .iter()
            .copied()
            .filter(|t| t.0 <= self.now)
            .collect();
        self.untold.retain(|t| t.0 > self.now);
        if !told.is_empty() {
            let args: Vec<String> = told
                .iter()
                .flat_map(|&(_, shard, epoch, seq)| [i64::from(shard), epoch, seq])
                .map(|v| v.to_string())
                .collect();
            self.eval(&self.delivered, &args);
        }
        // A shard asks.
        let shard = rng.below(u64::from(s.shards)) as u32;
        if !self.pending.iter().any(|p| p.shard == shard) {
            self.nonces += 1;
            let nonce = self.nonces;
            let window = 1 + rng.below(300) as i64;
            let reply = self.ask(shard, nonce, window);
            if reply[0] == 1 {
                let fate = match rng.below(100) {
                    0..=69 => Fate::Deliver {
                        tell: rng.chance(85),
                    },
                    70..=79 => Fate::Late,
                    80..=89 => Fate::Retry,
                    _ => Fate::Dropped,
                };
                let at = match fate {
                    Fate::Deliver { .. } => self.now + rng.below(window as u64 + 1) as i64,
                    _ => self.now + window + 1 + rng.below(3 * s.grace as u64) as i64,
                };
                self.trace.push(format!(
                    "{:>8} shard {shard} granted ({}:{}) window {window}: {fate:?} at {at}",
                    self.now, reply[1], reply[2]
                ));
                self.pending.push(Pending {
                    shard,
                    epoch: reply[1],
                    seq: reply[2],
                    nonce,
                    window,
                    at,
                    fate,
                });
            } else if reply[0] == 4 && rng.chance(50) {
                // Redis needs Discord's word: a process fetches it.
                let age = rng.below(2 * s.grace as u64) as i64;
                self.word(age, rng.below(2 * s.day as u64) as i64);
            }
        }
        // Discord's word, now and then, of any age (the cluster takes any).
        if rng.chance(3) {
            let age = match rng.below(4) {
                0 => 0,
                1 => rng.below(s.grace as u64) as i64,
                2 => rng.below(s.day as u64) as i64,
                _ => rng.below(3 * s.grace as u64) as i64,
            };
            self.word(age, rng.below(2 * s.day as u64) as i64);
        }
        // Redis restarts, now and then.
        if rng.chance(1) && self.restarts < 3 {
            self.restarts += 1;
            let mut store = self.lua.store.borrow_mut();
            let aof = rng.chance(50);
            if !aof {
                store.flush();
            }
            store.run_id = format!("{:040x}", rng.next());
            drop(store);
            self.trace
                .push(format!("{:>8} Redis restarts (aof: {aof})", self.now));
        }
    }
}

fn settings(rng: &mut Rng) -> Settings {
    let max_concurrency = [1, 2, 4, 16][rng.below(4) as usize];
    let interval = [20, 50, 100][rng.below(3) as usize];
    Settings {
        total: 5 + rng.below(40) as u32,
        max_concurrency,
        interval,
        grace: [50, 300, 1000][rng.below(3) as usize],
        day: interval * (50 + rng.below(200) as i64),
        shards: max_concurrency * (1 + rng.below(4) as u32),
    }
}

/// One seed: a bot's days; whether Discord counted more than `total` in a window.
fn run(seed: u64, print: bool) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let settings = settings(&mut rng);
    let mut world = World::new(settings);
    world.word(0, rng.below(settings.day as u64) as i64);
    let end = 4 * settings.day;
    while world.now < end {
        world.step(&mut rng);
    }
    if print {
        for line in &world.trace {
            eprintln!("{line}");
        }
    }
    world
        .discord
        .never_overspent()
        .map_err(|overspent| format!("seed {seed} ({settings:?}): {overspent}"))
}

/// What the simulation found, each by its seed. A process's sync was the first script
/// to see a state Redis lost (restarted empty): it took the state for new and applied
/// a word read before the loss in full, though the grants delivered between its read
/// and the loss were lost with the log. Discord counted 15 of 12 (seeds 1572 and 5291)
/// and 15 of 10 (seed 3268). Fixed: a process that synced before tells the sync script
/// so (`known`), and a missing state is then a loss, its word quarantined.
#[test]
fn regressions_found_by_the_simulation() {
    for seed in [1572, 3268, 5291] {
        if let Err(failure) = run(seed, false) {
            panic!("{failure}");
        }
    }
}

#[test]
fn no_discord_window_counts_more_than_the_budget() {
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        if let Err(failure) = run(seed, true) {
            panic!("{failure}");
        }
        return;
    }
    let seeds: u64 = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let failures: Vec<String> = (0..seeds)
        .filter_map(|seed| run(seed, false).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds overspent (replay one with SIM_SEED=<seed>):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
