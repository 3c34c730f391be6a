//! The in-process Redis of `tests/support/lua_redis.rs` against a real `redis-server`:
//! the same script calls, on both, give the same replies, publish the same messages
//! and leave the same keys. The calls below are recorded from the cluster's life: a
//! sync, grants and waits in two buckets from two processes, a retried answer, touches,
//! deliveries, a leave, a re-key, hold mode and its release, a seed on a state that
//! exists, a word that never resets and one that counts nothing, a lost state and its
//! quarantine, and a restart (a new server: a new epoch).
//!
//! Redis keeps its own clock, so the emulation takes it from each call: a write call
//! leaves its instant in the state (`hwm`); the read-only status call is bracketed by
//! `TIME` in one transaction, asked again until both read the same millisecond.

#[path = "support/judge.rs"]
mod judge;
#[path = "support/lua_redis.rs"]
mod lua_redis;
#[path = "support/redis_server.rs"]
mod redis_server;

use std::time::Duration;

use lua_redis::{Emulation, Reply};
use redis_server::Server;

const PREFIX: &str = "iq:{bot}:";
const PRELUDE: &str = include_str!("../src/redis/lua/prelude.lua");

/// The scripts, as `src/redis/scripts.rs` composes them: (name, shebang flags, body).
const SCRIPTS: [(&str, &str, &str); 7] = [
    ("acquire", "", include_str!("../src/redis/lua/acquire.lua")),
    ("release", "", include_str!("../src/redis/lua/release.lua")),
    ("touch", "", include_str!("../src/redis/lua/touch.lua")),
    (
        "delivered",
        "",
        include_str!("../src/redis/lua/delivered.lua"),
    ),
    ("leave", "", include_str!("../src/redis/lua/leave.lua")),
    ("sync", "", include_str!("../src/redis/lua/sync.lua")),
    (
        "status",
        " flags=no-writes",
        include_str!("../src/redis/lua/status.lua"),
    ),
];

/// A real server and the emulation, called alike.
struct Both {
    server: Server,
    real: redis::Connection,
    /// The namespace's messages, as a subscriber hears them.
    events: std::sync::mpsc::Receiver<String>,
    emulation: Emulation,
    scripts: Vec<(&'static str, redis::Script, lua_redis::Script)>,
    calls: usize,
}

/// A real reply in the emulation's terms.
fn reply_of(value: redis::Value) -> Reply {
    match value {
        redis::Value::Nil => Reply::Nil,
        redis::Value::Int(v) => Reply::Int(v),
        redis::Value::BulkString(b) => Reply::Bulk(b),
        redis::Value::Array(items) => Reply::Array(items.into_iter().map(reply_of).collect()),
        redis::Value::SimpleString(s) => Reply::Status(s),
        redis::Value::Okay => Reply::Status("OK".to_owned()),
        redis::Value::ServerError(e) => Reply::Error(format!("{e:?}")),
        other => panic!("a reply RESP2 does not send: {other:?}"),
    }
}

impl Both {
    fn start() -> Self {
        let server = Server::start(true);
        let client = redis::Client::open(server.url()).unwrap();
        let mut real = client.get_connection().unwrap();
        // Every write on disk before the next: the restart below (SIGKILL) loses none.
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("appendfsync")
            .arg("always")
            .exec(&mut real)
            .unwrap();
        // A subscriber on the namespace's channel, and a live process `A` (its own
        // channel): `PUBLISH` counts one, `alive` finds `A` and not `B`.
        let events = listen(&server);
        let emulation = Emulation::new();
        let scripts = SCRIPTS
            .iter()
            .map(|&(name, flags, body)| {
                let source = format!("#!lua{flags}\n{PRELUDE}\n{body}");
                (
                    name,
                    redis::Script::new(&source),
                    emulation.load(name, flags, body),
                )
            })
            .collect();
        let mut both = Self {
            server,
            real,
            events,
            emulation,
            scripts,
            calls: 0,
        };
        both.learn_server();
        {
            let mut store = both.emulation.store.borrow_mut();
            store.subscribers.insert(format!("{PREFIX}ev"), 1);
            store.subscribers.insert(format!("{PREFIX}p:A"), 1);
        }
        both
    }

    /// The emulation takes the real server's identity (what `INFO` says).
    fn learn_server(&mut self) {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .arg("replication")
            .query(&mut self.real)
            .unwrap();
        let field = |name: &str| {
            info.lines()
                .find_map(|line| line.strip_prefix(&format!("{name}:")))
                .unwrap_or_default()
                .trim()
                .to_owned()
        };
        let mut store = self.emulation.store.borrow_mut();
        store.run_id = field("run_id");
        store.master_replid = field("master_replid");
    }

    fn script(&self, name: &str) -> (redis::Script, lua_redis::Script) {
        let (_, real, emulated) = self
            .scripts
            .iter()
            .find(|(n, ..)| *n == name)
            .expect("a script of the list");
        (real.clone(), emulated.clone())
    }

    /// Calls script `name` with `args` on both at one instant; asserts the same reply,
    /// the same messages and the same keys. Returns the reply.
    fn call(&mut self, name: &str, args: &[i64]) -> Reply {
        let args: Vec<String> = args.iter().map(i64::to_string).collect();
        self.call_text(name, &args)
    }

    fn call_text(&mut self, name: &str, args: &[String]) -> Reply {
        self.calls += 1;
        let (real_script, emulated) = self.script(name);
        let mut invocation = real_script.prepare_invoke();
        invocation.key(PREFIX);
        for arg in args {
            invocation.arg(arg);
        }
        // Redis's instant for the call: bracketed by `TIME` in one transaction. A call
        // that writes leaves its instant in the state (`hwm`, or `lost` when it found no
        // state) for when the bracket spans two milliseconds; one that writes nothing
        // (the status, a seed on a state that exists) is asked again until it does not.
        invocation.load(&mut self.real).unwrap();
        let writes_nothing = name == "status" || (name == "sync" && args[11] == "1");
        let real = loop {
            let (before, value, after): ((u64, u64), redis::Value, (u64, u64)) = redis::pipe()
                .atomic()
                .cmd("TIME")
                .invoke_script(&invocation)
                .cmd("TIME")
                .query(&mut self.real)
                .unwrap();
            let ms = |(s, us): (u64, u64)| s * 1000 + us / 1000;
            let now = if ms(before) == ms(after) {
                Some(ms(before))
            } else if writes_nothing {
                None
            } else {
                let hwm: Option<u64> = redis::cmd("HGET")
                    .arg(format!("{PREFIX}state"))
                    .arg("hwm")
                    .query(&mut self.real)
                    .unwrap();
                let lost: Option<u64> = redis::cmd("GET")
                    .arg(format!("{PREFIX}lost"))
                    .query(&mut self.real)
                    .unwrap();
                Some(hwm.or(lost).expect("the call's instant in the state"))
            };
            if let Some(now) = now {
                self.emulation.store.borrow_mut().set_clock(now);
                break reply_of(value);
            }
        };
        let emulated = self.emulation.eval(&emulated, &[PREFIX], args);
        match (&real, &emulated) {
            (Reply::Error(_), Reply::Error(_)) => {}
            _ => assert_eq!(
                emulated, real,
                "call {} ({name} {args:?}): the reply",
                self.calls
            ),
        }
        let emulated_keys = self.emulation.store.borrow().dump();
        let real_keys = self.real_dump();
        assert_eq!(
            emulated_keys, real_keys,
            "call {} ({name} {args:?}): the keys",
            self.calls
        );
        let heard = self.heard();
        let published: Vec<String> =
            std::mem::take(&mut self.emulation.store.borrow_mut().published)
                .into_iter()
                .map(|(_, message)| message)
                .collect();
        assert_eq!(
            published, heard,
            "call {} ({name} {args:?}): the messages",
            self.calls
        );
        real
    }

    /// The namespace's messages published since the last call.
    fn heard(&mut self) -> Vec<String> {
        let mut heard = Vec::new();
        while let Ok(message) = self.events.recv_timeout(Duration::from_millis(30)) {
            heard.push(message);
        }
        heard
    }

    /// Every key of the namespace on the real server, as `Store::dump` writes them.
    fn real_dump(&mut self) -> Vec<(String, String)> {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{PREFIX}*"))
            .query(&mut self.real)
            .unwrap();
        let mut out = Vec::new();
        for key in keys {
            let kind: String = redis::cmd("TYPE").arg(&key).query(&mut self.real).unwrap();
            let content = match kind.as_str() {
                "string" => {
                    let value: String = redis::cmd("GET").arg(&key).query(&mut self.real).unwrap();
                    format!("string {value}")
                }
                "hash" => {
                    let pairs: Vec<(String, String)> = redis::cmd("HGETALL")
                        .arg(&key)
                        .query(&mut self.real)
                        .unwrap();
                    let mut fields: Vec<String> =
                        pairs.into_iter().map(|(f, v)| format!("{f}={v}")).collect();
                    fields.sort();
                    format!("hash {}", fields.join(" "))
                }
                "zset" => {
                    let members: Vec<(String, String)> = redis::cmd("ZRANGE")
                        .arg(&key)
                        .arg(0)
                        .arg(-1)
                        .arg("WITHSCORES")
                        .query(&mut self.real)
                        .unwrap();
                    let members: Vec<String> = members
                        .into_iter()
                        .map(|(m, s)| format!("{m}@{s}"))
                        .collect();
                    format!("zset {}", members.join(" "))
                }
                other => panic!("a key of a type the scripts do not write: {other}"),
            };
            out.push((key, content));
        }
        out.sort();
        out
    }

    /// Lets Redis's clock move on.
    fn sleep(&self, ms: u64) {
        std::thread::sleep(Duration::from_millis(ms));
    }
}

/// The buckets' spacing (ms): longer than a call of this test takes (each waits a
/// little for the messages it published).
const SPACING: i64 = 1000;

/// A subscriber to the namespace's channel and to process `A`'s, on a thread of its
/// own: the messages of the namespace's channel, as heard.
fn listen(server: &Server) -> std::sync::mpsc::Receiver<String> {
    let (heard, events) = std::sync::mpsc::channel();
    let (subscribed, ready) = std::sync::mpsc::channel();
    let url = server.url();
    std::thread::spawn(move || {
        let client = redis::Client::open(url).unwrap();
        let mut connection = client.get_connection().unwrap();
        let mut pubsub = connection.as_pubsub();
        pubsub.subscribe(format!("{PREFIX}ev")).unwrap();
        pubsub.subscribe(format!("{PREFIX}p:A")).unwrap();
        subscribed.send(()).unwrap();
        while let Ok(message) = pubsub.get_message() {
            let Ok(payload) = message.get_payload::<String>() else {
                break;
            };
            if message.get_channel_name() == format!("{PREFIX}ev") && heard.send(payload).is_err() {
                break;
            }
        }
    });
    ready.recv().unwrap();
    events
}

/// The sync script's arguments: total, remaining, reset_after (-1: never),
/// max_concurrency, spacing, hold, grace, day, reserve, head grace, age, seed.
fn sync_args(remaining: i64, reset_after: i64, mc: i64, hold: i64, seed: bool) -> Vec<i64> {
    vec![
        100,
        remaining,
        reset_after,
        mc,
        SPACING,
        hold,
        300,
        86_400_000,
        0,
        200,
        5,
        i64::from(seed),
    ]
}

/// The acquire script's arguments (`client` and `nonce` are text).
fn acquire(
    both: &mut Both,
    client: &str,
    shard: i64,
    nonce: &str,
    next_rank: i64,
    delivered: &[i64],
) -> Vec<i64> {
    let mut args = vec![
        client.to_owned(),
        shard.to_string(),
        nonce.to_owned(),
        "1".to_owned(),
        next_rank.to_string(),
        "20".to_owned(),
    ];
    args.extend(delivered.iter().map(i64::to_string));
    both.call_text("acquire", &args)
        .ints()
        .expect("the acquire script answers integers")
}

#[test]
fn the_emulation_answers_as_redis_does() {
    let mut both = Both::start();
    both.call("sync", &sync_args(90, 3_600_000, 2, 0, false));
    both.call("status", &[]);
    // A fresh state is quiet for an interval.
    let quiet = acquire(&mut both, "A", 0, "A:0", -1, &[]);
    assert_eq!(quiet[0], 2, "{quiet:?}");
    both.sleep(SPACING as u64 + 100);
    // Two buckets, two processes.
    let first = acquire(&mut both, "A", 0, "A:1", -1, &[]);
    assert_eq!(first[0], 1, "granted: {first:?}");
    let (epoch, seq) = (first[1], first[2]);
    let waits = acquire(&mut both, "B", 2, "B:1", -1, &[]);
    assert_eq!(waits[0], 2, "waits behind the busy bucket: {waits:?}");
    // A grant in the other bucket carries the first one's delivery.
    let other = acquire(&mut both, "A", 1, "A:2", 1, &[0, epoch, seq]);
    assert_eq!(other[0], 1, "{other:?}");
    both.call("touch", &[0, epoch, seq, 20]);
    // The retried call of the first grant: the same grant.
    let retried = acquire(&mut both, "A", 0, "A:1", -1, &[]);
    assert_eq!(retried[..3], first[..3]);
    both.sleep(SPACING as u64 + 100);
    let second = acquire(&mut both, "B", 2, "B:2", -1, &[]);
    assert_eq!(second[0], 1, "the bucket freed: {second:?}");
    both.call(
        "delivered",
        &[2, second[1], second[2], 1, other[1], other[2]],
    );
    both.call_text("leave", &["A".to_owned(), "1".to_owned()]);
    both.call("status", &[]);
    // A re-key: three buckets.
    both.sleep(SPACING as u64 + 100);
    both.call("sync", &sync_args(80, 3_000_000, 3, 0, false));
    both.sleep(SPACING as u64 + 100);
    let rekeyed = acquire(&mut both, "B", 4, "B:3", -1, &[]);
    both.call("touch", &[4, rekeyed[1], rekeyed[2], 20]);
    // Hold mode: a grant holds its bucket until released.
    both.call("sync", &sync_args(80, 3_000_000, 3, 500, false));
    both.sleep(SPACING as u64 + 100);
    let held = acquire(&mut both, "A", 3, "A:3", -1, &[]);
    assert_eq!(held[0], 1, "{held:?}");
    let behind = acquire(&mut both, "B", 6, "B:4", -1, &[]);
    assert_eq!(behind[0], 2, "held: {behind:?}");
    both.call("release", &[3, held[1], held[2]]);
    both.call("release", &[3, held[1], held[2]]);
    // A seed finds the state and changes nothing.
    both.call("sync", &sync_args(100, -1, 3, 0, true));
    // A word that never resets, and one that counts nothing.
    both.call("sync", &sync_args(70, -1, 3, 0, false));
    both.call("sync", &sync_args(100, 3_000_000, 3, 0, false));
    both.sleep(SPACING as u64 + 100);
    acquire(&mut both, "A", 0, "A:4", -1, &[]);
    both.call("status", &[]);
    // Part of the state lost: nothing granted until a word, which is quarantined.
    redis::cmd("DEL")
        .arg(format!("{PREFIX}log"))
        .exec(&mut both.real)
        .unwrap();
    both.emulation
        .store
        .borrow_mut()
        .delete(&format!("{PREFIX}log"));
    let lost = acquire(&mut both, "A", 1, "A:5", -1, &[]);
    assert_eq!(lost[0], 4, "{lost:?}");
    both.call("sync", &sync_args(60, 3_000_000, 3, 0, false));
    both.call("status", &[]);
    // A restart from the append-only file: a new server, a new epoch.
    both.server.restart();
    let client = redis::Client::open(both.server.url()).unwrap();
    both.real = client.get_connection().unwrap();
    both.events = listen(&both.server);
    both.learn_server();
    let after = acquire(&mut both, "A", 2, "A:6", -1, &[]);
    assert_eq!(after[0], 4, "a new server needs Discord's word: {after:?}");
    let synced = both.call("sync", &sync_args(50, 3_000_000, 3, 0, false));
    let synced = synced.ints().expect("integers");
    assert!(synced[2] > epoch, "a new epoch: {synced:?}");
    both.call("status", &[]);
    both.sleep(SPACING as u64 + 100);
    // The quarantine of the loss holds the budget back: the answer says so, alike.
    acquire(&mut both, "A", 2, "A:7", -1, &[]);
    eprintln!("{} calls, each answered alike", both.calls);
}
