//! Real Redis servers for the cluster tests: `redis-server` and `redis-sentinel`
//! processes on free loopback ports, each in its own temp dir, stopped on drop.
//! `.ci/run` installs Debian's packages when they are missing. Redis's grant log is
//! judged by the one judge, `judge.rs`, which the includer declares as `crate::judge`.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::judge;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// One `redis-server` (or `redis-sentinel`) process.
pub struct Server {
    pub port: u16,
    dir: tempfile::TempDir,
    args: Vec<String>,
    program: &'static str,
    child: Option<Child>,
}

impl Server {
    /// A master: `aof` keeps an append-only file (fsync every second), so that a
    /// restart comes back with the data.
    pub fn start(aof: bool) -> Self {
        Self::start_with(aof, &[])
    }

    pub fn start_with(aof: bool, extra: &[&str]) -> Self {
        let port = free_port();
        let mut args: Vec<String> = vec![
            "--port".into(),
            port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            String::new(),
            "--appendonly".into(),
            if aof { "yes" } else { "no" }.into(),
            "--protected-mode".into(),
            "no".into(),
        ];
        args.extend(extra.iter().map(|arg| arg.to_string()));
        let mut server = Self {
            port,
            dir: tempfile::tempdir().expect("a temp dir"),
            args,
            program: "redis-server",
            child: None,
        };
        server.run();
        server
    }

    /// A Sentinel watching `master` (named `name`) with quorum 2.
    pub fn sentinel(name: &str, master_port: u16) -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().expect("a temp dir");
        let config = dir.path().join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\n\
                 sentinel monitor {name} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {name} 1000\n\
                 sentinel failover-timeout {name} 5000\n\
                 sentinel parallel-syncs {name} 2\n"
            ),
        )
        .expect("sentinel.conf");
        let mut server = Self {
            port,
            args: vec![config.display().to_string()],
            dir,
            program: "redis-sentinel",
            child: None,
        };
        server.run();
        server
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn run(&mut self) {
        let log: PathBuf = self.dir.path().join("server.log");
        let child = Command::new(self.program)
            .args(&self.args)
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {}: {e} (apt-get install redis-server redis-sentinel)",
                    self.program
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.cli(&["PING"]).is_some_and(|out| out.trim() == "PONG") {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "{} on port {} did not answer: {}",
            self.program,
            self.port,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// Runs `redis-cli` against this server; `None` if it could not connect.
    pub fn cli(&self, args: &[&str]) -> Option<String> {
        let output = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        (output.status.success() && !text.starts_with("Could not connect")).then_some(text)
    }

    /// Redis's own record of the grants of `namespace`, on its own clock: an exact
    /// oracle for the Lua, with no jitter allowance (`None` if the state is gone).
    pub fn grant_log(&self, namespace: &str) -> Option<GrantLog> {
        let prefix = format!("iq:{{{namespace}}}:");
        let state = self.cli(&["HMGET", &format!("{prefix}state"), "mc", "iv"])?;
        let mut fields = state.lines().map(|line| line.trim().parse::<u64>().ok());
        let (Some(Some(max_concurrency)), Some(Some(spacing_ms))) = (fields.next(), fields.next())
        else {
            return None;
        };
        let log = self.cli(&["ZRANGE", &format!("{prefix}log"), "0", "-1", "WITHSCORES"])?;
        let lines: Vec<&str> = log.lines().collect();
        let grants = lines
            .chunks(2)
            .filter_map(|pair| {
                // member `epoch:seq:shard:granted-at`, score the latest instant of its
                // delivery (ms)
                let shard = pair.first()?.trim().split(':').nth(2)?.parse().ok()?;
                let at = pair.get(1)?.trim().parse::<f64>().ok()? as u64;
                Some((at, shard))
            })
            .collect();
        Some(GrantLog {
            max_concurrency: u32::try_from(max_concurrency).ok()?,
            spacing_ms,
            grants,
        })
    }

    /// SIGKILL: no goodbye, no final write.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the same server again, on the same port and dir (with its AOF, if any).
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn signal(&self, signal: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The grants Redis logged for one namespace (see [`Server::grant_log`]).
#[derive(Debug)]
pub struct GrantLog {
    pub max_concurrency: u32,
    /// What Redis keeps between the end of a grant's delivery window and the next grant
    /// of its bucket (`iv`: the interval, the margin and a millisecond).
    pub spacing_ms: u64,
    /// (the latest instant of its delivery, ms of Redis's clock; shard), by instant.
    pub grants: Vec<(u64, u32)>,
}

impl GrantLog {
    /// The rule the Lua keeps, judged on Redis's clock: within a bucket, each grant
    /// comes at least the spacing after the end of the previous grant's delivery
    /// window, so the ends of two windows are at least the spacing apart. (Valid while
    /// `max_concurrency` did not change: a re-key may bring the grants made before it
    /// under one bucket.)
    pub fn assert_spaced(&self) {
        // Redis's own clock, no delivery after it: judged exactly, with no jitter.
        let rules =
            judge::Rules::spacing(self.max_concurrency, Duration::from_millis(self.spacing_ms));
        let grants = self
            .grants
            .iter()
            .map(|&(at, shard)| (Duration::from_millis(at), shard));
        let violations = judge::judge_arrivals(rules, grants);
        assert!(
            violations.is_empty(),
            "Redis's log breaks the spacing: {violations:?}\n{self:?}"
        );
    }
}
