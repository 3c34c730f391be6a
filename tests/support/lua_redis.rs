//! Redis as the cluster's scripts see it, in-process: the scripts' own text
//! (`src/redis/lua/*.lua`, composed as production composes it) run by Lua 5.1 (mlua,
//! vendored: the version Redis embeds) over an in-memory store of exactly the commands
//! they call, with Redis's conversions between Lua and replies and its script
//! semantics: atomic (one script runs at a time, to its end), `KEYS` and `ARGV`, a
//! clock frozen for the script (`TIME`, key expiry), errors as error replies, writes
//! made before an error kept.
//!
//! The clock is the caller's (`set_clock`): a simulation moves it. `tests/lua_redis.rs`
//! shows that the emulation answers as a real `redis-server` does, call for call.
#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;

use mlua::{Function, Lua, Table, Value, Variadic};

/// A reply as Redis sends it (RESP2).
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Reply>),
    Status(String),
    Error(String),
}

impl Reply {
    /// The reply as integers (a script's usual answer), if it is one.
    pub fn ints(&self) -> Option<Vec<i64>> {
        match self {
            Reply::Array(items) => items
                .iter()
                .map(|item| match item {
                    Reply::Int(v) => Some(*v),
                    Reply::Bulk(b) => std::str::from_utf8(b).ok()?.parse().ok(),
                    _ => None,
                })
                .collect(),
            Reply::Int(v) => Some(vec![*v]),
            _ => None,
        }
    }
}

/// A score of a sorted set, ordered as Redis orders them (scores are never NaN).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Score(f64);

impl Eq for Score {}

impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Score {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
struct ZSet {
    scores: HashMap<Vec<u8>, f64>,
    /// By score, then member: Redis's order.
    order: BTreeSet<(Score, Vec<u8>)>,
}

impl ZSet {
    fn insert(&mut self, member: Vec<u8>, score: f64) {
        if let Some(old) = self.scores.insert(member.clone(), score) {
            self.order.remove(&(Score(old), member.clone()));
        }
        self.order.insert((Score(score), member));
    }

    fn remove(&mut self, member: &[u8]) -> bool {
        match self.scores.remove(member) {
            Some(old) => {
                self.order.remove(&(Score(old), member.to_vec()));
                true
            }
            None => false,
        }
    }

    fn in_range<'a>(
        &'a self,
        min: &'a Bound,
        max: &'a Bound,
    ) -> impl Iterator<Item = &'a (Score, Vec<u8>)> {
        self.order
            .iter()
            .filter(move |(score, _)| min.below(score.0) && max.above(score.0))
    }
}

/// A bound of `ZCOUNT`, `ZRANGEBYSCORE`, `ZREMRANGEBYSCORE`: `-inf`, `+inf`, `x`, `(x`.
#[derive(Clone, Copy, Debug)]
struct Bound {
    value: f64,
    exclusive: bool,
}

impl Bound {
    fn parse(arg: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(arg).map_err(|_| "ERR min or max is not a float")?;
        let (exclusive, number) = match text.strip_prefix('(') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let value = match number {
            "-inf" => f64::NEG_INFINITY,
            "+inf" | "inf" => f64::INFINITY,
            other => other
                .parse::<f64>()
                .map_err(|_| "ERR min or max is not a float".to_owned())?,
        };
        Ok(Self { value, exclusive })
    }

    /// `score` is at or above this lower bound.
    fn below(&self, score: f64) -> bool {
        if self.exclusive {
            score > self.value
        } else {
            score >= self.value
        }
    }

    /// `score` is at or below this upper bound.
    fn above(&self, score: f64) -> bool {
        if self.exclusive {
            score < self.value
        } else {
            score <= self.value
        }
    }
}

/// A hash's fields, in insertion order (as Redis keeps a small hash).
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

#[derive(Clone, Debug, PartialEq)]
enum Data {
    Str(Vec<u8>),
    Hash(Fields),
    ZSet(ZSet),
}

#[derive(Clone, Debug, PartialEq)]
struct Entry {
    data: Data,
    /// Unix ms at which the key is gone.
    expires_at: Option<u64>,
}

/// The keys, the clock and the world the scripts can see.
#[derive(Clone, Debug, Default)]
pub struct Store {
    keys: HashMap<Vec<u8>, Entry>,
    /// Unix time in µs: `TIME`, and the expiry of keys.
    now_us: u64,
    /// What `INFO` says of the server.
    pub run_id: String,
    pub master_replid: String,
    pub maxmemory_policy: String,
    /// Subscribers per channel (`PUBSUB NUMSUB`, `PUBLISH`'s count).
    pub subscribers: HashMap<String, i64>,
    /// Every message published, in order.
    pub published: Vec<(String, String)>,
}

const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";

fn text(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).into_owned()
}

fn int_arg(arg: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "ERR value is not an integer or out of range".to_owned())
}

fn float_arg(arg: &[u8]) -> Result<f64, String> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|v| !v.is_nan())
        .ok_or_else(|| "ERR value is not a valid float".to_owned())
}

/// A score as Redis writes it: an integral value as an integer, else the shortest
/// text that reads back the same.
fn score_text(score: f64) -> Vec<u8> {
    if score.fract() == 0.0 && score.abs() < 1e17 {
        format!("{}", score as i64).into_bytes()
    } else if score.is_infinite() {
        (if score > 0.0 { "inf" } else { "-inf" }).into()
    } else {
        format!("{score}").into_bytes()
    }
}

impl Store {
    pub fn new() -> Self {
        Self {
            run_id: "0".repeat(40),
            master_replid: "1".repeat(40),
            maxmemory_policy: "noeviction".to_owned(),
            ..Self::default()
        }
    }

    /// Moves the clock to `unix_ms` (Redis's own `TIME`).
    pub fn set_clock(&mut self, unix_ms: u64) {
        self.now_us = unix_ms * 1000;
    }

    /// Moves the clock to `unix_us`.
    pub fn set_clock_us(&mut self, unix_us: u64) {
        self.now_us = unix_us;
    }

    pub fn now_ms(&self) -> u64 {
        self.now_us / 1000
    }

    /// Every live key, sorted, with its content in a canonical form: for comparing two
    /// stores.
    pub fn dump(&self) -> Vec<(String, String)> {
        let now = self.now_ms();
        let mut out: Vec<(String, String)> = self
            .keys
            .iter()
            .filter(|(_, e)| e.expires_at.is_none_or(|at| at > now))
            .map(|(k, e)| {
                let content = match &e.data {
                    Data::Str(v) => format!("string {}", text(v)),
                    Data::Hash(fields) => {
                        let mut fields: Vec<_> = fields
                            .iter()
                            .map(|(f, v)| format!("{}={}", text(f), text(v)))
                            .collect();
                        fields.sort();
                        format!("hash {}", fields.join(" "))
                    }
                    Data::ZSet(z) => {
                        let members: Vec<_> = z
                            .order
                            .iter()
                            .map(|(s, m)| format!("{}@{}", text(m), text(&score_text(s.0))))
                            .collect();
                        format!("zset {}", members.join(" "))
                    }
                };
                (text(k), content)
            })
            .collect();
        out.sort();
        out
    }

    /// Deletes `key` (an eviction, an operator's `DEL`).
    pub fn delete(&mut self, key: &str) {
        self.keys.remove(key.as_bytes());
    }

    /// Empties the store (a server restarted without its data).
    pub fn flush(&mut self) {
        self.keys.clear();
    }

    fn live(&mut self, key: &[u8]) -> Option<&mut Entry> {
        let now = self.now_ms();
        if self
            .keys
            .get(key)
            .is_some_and(|e| e.expires_at.is_some_and(|at| at <= now))
        {
            self.keys.remove(key);
        }
        self.keys.get_mut(key)
    }

    fn hash(&mut self, key: &[u8]) -> Result<Option<&mut Fields>, String> {
        match self.live(key) {
            None => Ok(None),
            Some(Entry {
                data: Data::Hash(fields),
                ..
            }) => Ok(Some(fields)),
            Some(_) => Err(WRONGTYPE.to_owned()),
        }
    }

    fn zset(&mut self, key: &[u8]) -> Result<Option<&mut ZSet>, String> {
        match self.live(key) {
            None => Ok(None),
            Some(Entry {
                data: Data::ZSet(z),
                ..
            }) => Ok(Some(z)),
            Some(_) => Err(WRONGTYPE.to_owned()),
        }
    }

    /// The collection at `key`, made as `empty` if absent: a write's target. An existing
    /// key of another type is `WRONGTYPE`.
    fn made(&mut self, key: &[u8], empty: Data) -> Result<&mut Data, String> {
        // Expired keys go first.
        self.live(key);
        let entry = self.keys.entry(key.to_vec()).or_insert(Entry {
            data: empty.clone(),
            expires_at: None,
        });
        if std::mem::discriminant(&entry.data) != std::mem::discriminant(&empty) {
            return Err(WRONGTYPE.to_owned());
        }
        Ok(&mut entry.data)
    }

    /// Drops `key` if it is an empty collection (Redis deletes empty hashes and sets).
    fn prune(&mut self, key: &[u8]) {
        let empty = match self.keys.get(key).map(|e| &e.data) {
            Some(Data::Hash(fields)) => fields.is_empty(),
            Some(Data::ZSet(z)) => z.scores.is_empty(),
            _ => false,
        };
        if empty {
            self.keys.remove(key);
        }
    }

    /// Runs one command (`argv[0]` is its name), as a script's `redis.call` does.
    pub fn command(&mut self, argv: &[Vec<u8>]) -> Reply {
        match self.run(argv) {
            Ok(reply) => reply,
            Err(error) => Reply::Error(error),
        }
    }

    fn run(&mut self, argv: &[Vec<u8>]) -> Result<Reply, String> {
        let Some(name) = argv.first() else {
            return Err("ERR wrong number of arguments".to_owned());
        };
        let name = text(name).to_ascii_uppercase();
        let args = &argv[1..];
        let arity = |n: usize| {
            if args.len() < n {
                Err(format!(
                    "ERR wrong number of arguments for '{}' command",
                    name.to_lowercase()
                ))
            } else {
                Ok(())
            }
        };
        match name.as_str() {
            "TIME" => Ok(Reply::Array(vec![
                Reply::Bulk((self.now_us / 1_000_000).to_string().into_bytes()),
                Reply::Bulk((self.now_us % 1_000_000).to_string().into_bytes()),
            ])),
            "INFO" => Ok(Reply::Bulk(
                format!(
                    concat!(
                        "# Server\r\nrun_id:{}\r\n\r\n",
                        "# Replication\r\nrole:master\r\nmaster_replid:{}\r\n\r\n",
                        "# Memory\r\nmaxmemory_policy:{}\r\n",
                    ),
                    self.run_id, self.master_replid, self.maxmemory_policy
                )
                .into_bytes(),
            )),
            "GET" => {
                arity(1)?;
                match self.live(&args[0]) {
                    None => Ok(Reply::Nil),
                    Some(Entry {
                        data: Data::Str(v), ..
                    }) => Ok(Reply::Bulk(v.clone())),
                    Some(_) => Err(WRONGTYPE.to_owned()),
                }
            }
            "SET" => {
                arity(2)?;
                let (mut nx, mut px) = (false, None);
                let mut rest = args[2..].iter();
                while let Some(option) = rest.next() {
                    match text(option).to_ascii_uppercase().as_str() {
                        "NX" => nx = true,
                        "PX" => {
                            let ms = int_arg(rest.next().ok_or("ERR syntax error")?)?;
                            if ms <= 0 {
                                return Err("ERR invalid expire time in 'set' command".to_owned());
                            }
                            px = Some(self.now_ms() + ms as u64);
                        }
                        _ => return Err("ERR syntax error".to_owned()),
                    }
                }
                if nx && self.live(&args[0]).is_some() {
                    return Ok(Reply::Nil);
                }
                self.keys.insert(
                    args[0].clone(),
                    Entry {
                        data: Data::Str(args[1].clone()),
                        expires_at: px,
                    },
                );
                Ok(Reply::Status("OK".to_owned()))
            }
            "DEL" => {
                arity(1)?;
                let mut n = 0;
                for key in args {
                    if self.live(key).is_some() {
                        self.keys.remove(key);
                        n += 1;
                    }
                }
                Ok(Reply::Int(n))
            }
            "PEXPIRE" => {
                arity(2)?;
                let ms = int_arg(&args[1])?;
                let at = (self.now_ms() as i64 + ms).max(0) as u64;
                match self.live(&args[0]) {
                    None => Ok(Reply::Int(0)),
                    Some(entry) => {
                        entry.expires_at = Some(at);
                        Ok(Reply::Int(1))
                    }
                }
            }
            "HSET" => {
                if args.len() < 3 || args.len() % 2 == 0 {
                    return Err("ERR wrong number of arguments for 'hset' command".to_owned());
                }
                let Data::Hash(fields) = self.made(&args[0], Data::Hash(Vec::new()))? else {
                    unreachable!("`made` checks the type");
                };
                let mut added = 0;
                for pair in args[1..].chunks(2) {
                    match fields.iter_mut().find(|(f, _)| *f == pair[0]) {
                        Some((_, value)) => *value = pair[1].clone(),
                        None => {
                            fields.push((pair[0].clone(), pair[1].clone()));
                            added += 1;
                        }
                    }
                }
                Ok(Reply::Int(added))
            }
            "HGET" => {
                arity(2)?;
                Ok(match self.hash(&args[0])? {
                    Some(fields) => fields
                        .iter()
                        .find(|(f, _)| *f == args[1])
                        .map_or(Reply::Nil, |(_, v)| Reply::Bulk(v.clone())),
                    None => Reply::Nil,
                })
            }
            "HEXISTS" => {
                arity(2)?;
                let found = self
                    .hash(&args[0])?
                    .is_some_and(|fields| fields.iter().any(|(f, _)| *f == args[1]));
                Ok(Reply::Int(i64::from(found)))
            }
            "HDEL" => {
                arity(2)?;
                let mut n = 0;
                if let Some(fields) = self.hash(&args[0])? {
                    for field in &args[1..] {
                        if let Some(at) = fields.iter().position(|(f, _)| f == field) {
                            fields.remove(at);
                            n += 1;
                        }
                    }
                }
                self.prune(&args[0]);
                Ok(Reply::Int(n))
            }
            "HGETALL" => {
                arity(1)?;
                Ok(Reply::Array(match self.hash(&args[0])? {
                    Some(fields) => fields
                        .iter()
                        .flat_map(|(f, v)| [Reply::Bulk(f.clone()), Reply::Bulk(v.clone())])
                        .collect(),
                    None => Vec::new(),
                }))
            }
            "ZADD" => {
                arity(3)?;
                let mut at = 1;
                let mut gt = false;
                while at < args.len() {
                    match text(&args[at]).to_ascii_uppercase().as_str() {
                        "GT" => gt = true,
                        _ => break,
                    }
                    at += 1;
                }
                let pairs = &args[at..];
                if pairs.is_empty() || pairs.len() % 2 != 0 {
                    return Err("ERR syntax error".to_owned());
                }
                let parsed: Vec<(f64, Vec<u8>)> = pairs
                    .chunks(2)
                    .map(|pair| Ok((float_arg(&pair[0])?, pair[1].clone())))
                    .collect::<Result<_, String>>()?;
                let Data::ZSet(z) = self.made(&args[0], Data::ZSet(ZSet::default()))? else {
                    unreachable!("`made` checks the type");
                };
                let mut added = 0;
                for (score, member) in parsed {
                    match z.scores.get(&member).copied() {
                        None => {
                            z.insert(member, score);
                            added += 1;
                        }
                        Some(old) if !gt || score > old => z.insert(member, score),
                        Some(_) => {}
                    }
                }
                Ok(Reply::Int(added))
            }
            "ZSCORE" => {
                arity(2)?;
                Ok(match self.zset(&args[0])? {
                    Some(z) => z
                        .scores
                        .get(&args[1])
                        .map_or(Reply::Nil, |&s| Reply::Bulk(score_text(s))),
                    None => Reply::Nil,
                })
            }
            "ZCARD" => {
                arity(1)?;
                Ok(Reply::Int(
                    self.zset(&args[0])?.map_or(0, |z| z.scores.len() as i64),
                ))
            }
            "ZREM" => {
                arity(2)?;
                let mut n = 0;
                if let Some(z) = self.zset(&args[0])? {
                    for member in &args[1..] {
                        n += i64::from(z.remove(member));
                    }
                }
                self.prune(&args[0]);
                Ok(Reply::Int(n))
            }
            "ZRANGE" => {
                arity(3)?;
                let (start, stop) = (int_arg(&args[1])?, int_arg(&args[2])?);
                let scores = args[3..]
                    .iter()
                    .any(|a| text(a).eq_ignore_ascii_case("WITHSCORES"));
                let items: Vec<(Score, Vec<u8>)> = self
                    .zset(&args[0])?
                    .map(|z| z.order.iter().cloned().collect())
                    .unwrap_or_default();
                let len = items.len() as i64;
                let start = if start < 0 {
                    (len + start).max(0)
                } else {
                    start
                };
                let stop = if stop < 0 {
                    len + stop
                } else {
                    stop.min(len - 1)
                };
                let mut out = Vec::new();
                if start <= stop && start < len {
                    for (score, member) in &items[start as usize..=stop as usize] {
                        out.push(Reply::Bulk(member.clone()));
                        if scores {
                            out.push(Reply::Bulk(score_text(score.0)));
                        }
                    }
                }
                Ok(Reply::Array(out))
            }
            "ZRANGEBYSCORE" | "ZCOUNT" | "ZREMRANGEBYSCORE" => {
                arity(3)?;
                let (min, max) = (Bound::parse(&args[1])?, Bound::parse(&args[2])?);
                let scores = args[3..]
                    .iter()
                    .any(|a| text(a).eq_ignore_ascii_case("WITHSCORES"));
                let Some(z) = self.zset(&args[0])? else {
                    return Ok(match name.as_str() {
                        "ZRANGEBYSCORE" => Reply::Array(Vec::new()),
                        _ => Reply::Int(0),
                    });
                };
                let found: Vec<(Score, Vec<u8>)> = z.in_range(&min, &max).cloned().collect();
                Ok(match name.as_str() {
                    "ZCOUNT" => Reply::Int(found.len() as i64),
                    "ZREMRANGEBYSCORE" => {
                        for (_, member) in &found {
                            z.remove(member);
                        }
                        self.prune(&args[0]);
                        Reply::Int(found.len() as i64)
                    }
                    _ => Reply::Array(
                        found
                            .into_iter()
                            .flat_map(|(score, member)| {
                                let mut pair = vec![Reply::Bulk(member)];
                                if scores {
                                    pair.push(Reply::Bulk(score_text(score.0)));
                                }
                                pair
                            })
                            .collect(),
                    ),
                })
            }
            "PUBLISH" => {
                arity(2)?;
                let channel = text(&args[0]);
                let count = self.subscribers.get(&channel).copied().unwrap_or(0);
                self.published.push((channel, text(&args[1])));
                Ok(Reply::Int(count))
            }
            "PUBSUB" => {
                arity(1)?;
                if !text(&args[0]).eq_ignore_ascii_case("NUMSUB") {
                    return Err("ERR unknown PUBSUB subcommand".to_owned());
                }
                Ok(Reply::Array(
                    args[1..]
                        .iter()
                        .flat_map(|channel| {
                            let count = self.subscribers.get(&text(channel)).copied().unwrap_or(0);
                            [Reply::Bulk(channel.clone()), Reply::Int(count)]
                        })
                        .collect(),
                ))
            }
            other => Err(format!("ERR unknown command '{other}' (not emulated)")),
        }
    }
}

/// One of the scripts, loaded.
#[derive(Clone)]
pub struct Script {
    function: Function,
}

/// The scripts' Lua, over a [`Store`].
pub struct Emulation {
    lua: Lua,
    pub store: Rc<RefCell<Store>>,
}

/// A Lua value as a `redis.call` argument: Redis turns numbers into text itself.
fn arg_bytes(value: &Value) -> mlua::Result<Vec<u8>> {
    match value {
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        Value::Integer(i) => Ok(i.to_string().into_bytes()),
        Value::Number(n) => Ok(number_text(*n).into_bytes()),
        _ => Err(mlua::Error::RuntimeError(
            "Lua redis lib command arguments must be strings or integers".to_owned(),
        )),
    }
}

/// A number as Redis 7 writes a script's numeric argument (`%.17g`).
fn number_text(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e17 {
        format!("{}", n as i64)
    } else {
        format!("{n}")
    }
}

/// A reply as the script sees it (Redis's RESP2 → Lua conversion).
fn to_lua(lua: &Lua, reply: Reply) -> mlua::Result<Value> {
    Ok(match reply {
        Reply::Int(v) => Value::Number(v as f64),
        Reply::Bulk(b) => Value::String(lua.create_string(&b)?),
        Reply::Nil => Value::Boolean(false),
        Reply::Array(items) => {
            let table = lua.create_table()?;
            for (i, item) in items.into_iter().enumerate() {
                table.raw_set(i + 1, to_lua(lua, item)?)?;
            }
            Value::Table(table)
        }
        Reply::Status(s) => {
            let table = lua.create_table()?;
            table.raw_set("ok", s)?;
            Value::Table(table)
        }
        Reply::Error(e) => {
            let table = lua.create_table()?;
            table.raw_set("err", e)?;
            Value::Table(table)
        }
    })
}

/// A script's return value as a reply (Lua → RESP2): numbers truncated to integers,
/// `false` nil, `true` 1, tables arrays up to their first nil, `{ok=}` and `{err=}`.
fn from_lua(value: Value) -> Reply {
    match value {
        Value::Nil | Value::Boolean(false) => Reply::Nil,
        Value::Boolean(true) => Reply::Int(1),
        Value::Integer(i) => Reply::Int(i),
        Value::Number(n) => Reply::Int(n as i64),
        Value::String(s) => Reply::Bulk(s.as_bytes().to_vec()),
        Value::Table(table) => table_reply(&table),
        _ => Reply::Nil,
    }
}

fn table_reply(table: &Table) -> Reply {
    if let Ok(Value::String(e)) = table.raw_get::<Value>("err") {
        return Reply::Error(e.to_string_lossy().to_string());
    }
    if let Ok(Value::String(s)) = table.raw_get::<Value>("ok") {
        return Reply::Status(s.to_string_lossy().to_string());
    }
    let mut items = Vec::new();
    for i in 1.. {
        match table.raw_get::<Value>(i) {
            Ok(Value::Nil) | Err(_) => break,
            Ok(value) => items.push(from_lua(value)),
        }
    }
    Reply::Array(items)
}

impl Emulation {
    /// Lua with Redis's `redis` and `cjson` libraries over an empty store.
    pub fn new() -> Self {
        let lua = Lua::new();
        let store = Rc::new(RefCell::new(Store::new()));
        let redis = lua.create_table().expect("a table");
        for (name, raises) in [("call", true), ("pcall", false)] {
            let store = Rc::clone(&store);
            let function = lua
                .create_function(move |lua, args: Variadic<Value>| {
                    let argv = args
                        .iter()
                        .map(arg_bytes)
                        .collect::<mlua::Result<Vec<_>>>()?;
                    if argv.is_empty() {
                        return Err(mlua::Error::RuntimeError(
                            "Please specify at least one argument for this redis lib call"
                                .to_owned(),
                        ));
                    }
                    match store.borrow_mut().command(&argv) {
                        Reply::Error(e) if raises => Err(mlua::Error::RuntimeError(e)),
                        reply => to_lua(lua, reply),
                    }
                })
                .expect("a function");
            redis.raw_set(name, function).expect("set");
        }
        lua.globals().raw_set("redis", redis).expect("set");
        let cjson = lua.create_table().expect("a table");
        cjson
            .raw_set(
                "encode",
                lua.create_function(|_, value: Value| encode_json(&value))
                    .expect("a function"),
            )
            .expect("set");
        cjson
            .raw_set(
                "decode",
                lua.create_function(|lua, text: mlua::String| decode_json(lua, &text.to_str()?))
                    .expect("a function"),
            )
            .expect("set");
        lua.globals().raw_set("cjson", cjson).expect("set");
        Self { lua, store }
    }

    /// Loads a script as production composes it (`src/redis/scripts.rs`: the shebang
    /// line with its flags, the prelude, the body). Redis strips the shebang; so does
    /// this (an empty line keeps the line numbers).
    pub fn load(&self, name: &str, flags: &str, body: &str) -> Script {
        self.load_with(
            name,
            flags,
            include_str!("../../src/redis/lua/prelude.lua"),
            body,
        )
    }

    /// [`load`](Self::load) with another prelude (a mutant's).
    pub fn load_with(&self, name: &str, flags: &str, prelude: &str, body: &str) -> Script {
        let source = format!("#!lua{flags}\n{prelude}\n{body}");
        let source = match source.split_once('\n') {
            Some((first, rest)) if first.starts_with("#!") => format!("\n{rest}"),
            _ => source,
        };
        let function = self
            .lua
            .load(source)
            .set_name(name)
            .into_function()
            .unwrap_or_else(|e| panic!("{name} does not compile: {e}"));
        Script { function }
    }

    /// Runs `script` with `keys` and `args`, atomically, at the store's clock.
    pub fn eval(&self, script: &Script, keys: &[&str], args: &[String]) -> Reply {
        let globals = self.lua.globals();
        let table = |items: Vec<&str>| {
            let t = self.lua.create_table().expect("a table");
            for (i, item) in items.into_iter().enumerate() {
                t.raw_set(i + 1, item).expect("set");
            }
            t
        };
        globals.raw_set("KEYS", table(keys.to_vec())).expect("set");
        globals
            .raw_set("ARGV", table(args.iter().map(String::as_str).collect()))
            .expect("set");
        match script.function.call::<Value>(()) {
            Ok(value) => from_lua(value),
            Err(error) => Reply::Error(error.to_string()),
        }
    }
}

/// `cjson.encode` for what the scripts encode: arrays of numbers, strings and booleans
/// (numbers as cjson writes them: 14 significant digits).
fn encode_json(value: &Value) -> mlua::Result<String> {
    Ok(match value {
        Value::Nil => "null".to_owned(),
        Value::Boolean(b) => b.to_string(),
        Value::Integer(i) => i.to_string(),
        Value::Number(n) => g14(*n),
        Value::String(s) => format!("{:?}", s.to_str()?.to_string()),
        Value::Table(t) => {
            let mut items = Vec::new();
            for i in 1.. {
                match t.raw_get::<Value>(i)? {
                    Value::Nil => break,
                    item => items.push(encode_json(&item)?),
                }
            }
            format!("[{}]", items.join(","))
        }
        _ => return Err(mlua::Error::RuntimeError("Cannot serialise".to_owned())),
    })
}

/// `%.14g`, cjson's default number precision.
fn g14(n: f64) -> String {
    if n.fract() == 0.0 && n.abs() < 1e14 {
        return format!("{}", n as i64);
    }
    // Fourteen significant digits, in exponent form as C's %g would choose.
    let formatted = format!("{n:.13e}");
    let (mantissa, exponent) = formatted.split_once('e').expect("an exponent");
    let exponent: i32 = exponent.parse().expect("a number");
    if (-5..14).contains(&exponent) {
        let decimals = (13 - exponent).max(0) as usize;
        let fixed = format!("{n:.decimals$}");
        let fixed = if fixed.contains('.') {
            fixed.trim_end_matches('0').trim_end_matches('.').to_owned()
        } else {
            fixed
        };
        return fixed;
    }
    let mantissa = if mantissa.contains('.') {
        mantissa.trim_end_matches('0').trim_end_matches('.')
    } else {
        mantissa
    };
    format!(
        "{mantissa}e{}{:02}",
        if exponent < 0 { '-' } else { '+' },
        exponent.abs()
    )
}

/// `cjson.decode` for what `encode_json` writes: a flat array of numbers, strings and
/// booleans.
fn decode_json(lua: &Lua, text: &str) -> mlua::Result<Value> {
    let inner = text
        .trim()
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .ok_or_else(|| mlua::Error::RuntimeError(format!("cjson.decode: not an array: {text}")))?;
    let table = lua.create_table()?;
    if inner.trim().is_empty() {
        return Ok(Value::Table(table));
    }
    for (i, item) in inner.split(',').enumerate() {
        let item = item.trim();
        let value = match item {
            "true" => Value::Boolean(true),
            "false" => Value::Boolean(false),
            "null" => Value::Nil,
            quoted if quoted.starts_with('"') => {
                Value::String(lua.create_string(quoted.trim_matches('"'))?)
            }
            number => Value::Number(number.parse::<f64>().map_err(|_| {
                mlua::Error::RuntimeError(format!("cjson.decode: bad number {number}"))
            })?),
        };
        table.raw_set(i + 1, value)?;
    }
    Ok(Value::Table(table))
}
