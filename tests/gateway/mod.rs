//! A fake Discord gateway on loopback, enough of one for real twilight shards: HELLO,
//! heartbeat ACKs, IDENTIFY answered with READY, or with INVALID_SESSION when the
//! IDENTIFY breaks Discord's rules. It checks those rules on its own clock, knowing
//! nothing of the queue under test, with the one judge (`tests/support/judge.rs`, which
//! its includer declares as `crate::judge`), and
//! records every IDENTIFY.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::judge::{self, Judge};

/// Discord's rules as this gateway enforces them.
#[derive(Clone, Copy, Debug)]
pub struct Rules {
    pub max_concurrency: u32,
    pub interval: Duration,
    /// A grant at `t` reaches the gateway at `t + d` with `d` varying by a few
    /// milliseconds between connections, so two IDENTIFYs granted exactly one interval
    /// apart may arrive a little closer. This much is let pass; anything closer is a
    /// violation.
    pub jitter: Duration,
    /// Session starts left.
    pub remaining: u32,
    /// READY is sent this long after IDENTIFY.
    pub ready_after: Duration,
}

/// One IDENTIFY as the gateway saw it.
#[derive(Clone, Debug)]
pub struct Identify {
    pub at: Instant,
    pub shard: u32,
    /// It kept the rules (it may still have been answered with a fault on purpose).
    pub accepted: bool,
}

struct State {
    judge: Judge<Instant>,
    identifies: Vec<Identify>,
    /// Sessions by shard, to push messages to.
    sessions: HashMap<u32, mpsc::UnboundedSender<Message>>,
    /// Answer this many IDENTIFYs with INVALID_SESSION though they keep the rules.
    reject_next: u32,
    /// Close this many connections right after their IDENTIFY, without READY.
    drop_next: u32,
    sessions_started: u64,
}

pub struct Gateway {
    pub url: String,
    state: Arc<Mutex<State>>,
    server: JoinHandle<()>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Gateway {
    pub async fn start(rules: Rules) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let address: SocketAddr = listener.local_addr().expect("address");
        let state = Arc::new(Mutex::new(State {
            judge: Judge::new(judge::Rules {
                max_concurrency: rules.max_concurrency,
                interval: rules.interval,
                jitter: rules.jitter,
                remaining: Some(rules.remaining),
            }),
            identifies: Vec::new(),
            sessions: HashMap::new(),
            reject_next: 0,
            drop_next: 0,
            sessions_started: 0,
        }));
        let url = format!("ws://{address}");
        let server = tokio::spawn({
            let (state, url) = (Arc::clone(&state), url.clone());
            async move {
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(stream, rules, Arc::clone(&state), url.clone()));
                }
            }
        });
        Self { url, state, server }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }

    pub fn identifies(&self) -> Vec<Identify> {
        self.state().identifies.clone()
    }

    pub fn accepted(&self) -> usize {
        self.state()
            .identifies
            .iter()
            .filter(|i| i.accepted)
            .count()
    }

    pub fn violations(&self) -> Vec<String> {
        self.state().judge.violations().to_vec()
    }

    pub fn remaining(&self) -> u32 {
        self.state().judge.remaining().unwrap_or(0)
    }

    /// Discord's daily reset: the budget is back.
    pub fn refill(&self, remaining: u32) {
        self.state().judge.refill(remaining);
    }

    /// Ends `shard`'s session (op 9, not resumable): it must IDENTIFY again.
    pub fn invalidate(&self, shard: u32) -> bool {
        let state = self.state();
        state
            .sessions
            .get(&shard)
            .is_some_and(|session| session.send(invalid_session()).is_ok())
    }

    /// The next `count` IDENTIFYs are answered with INVALID_SESSION (and counted, as
    /// Discord counts them): the shard must identify again, later.
    pub fn reject_next_identifies(&self, count: u32) {
        self.state().reject_next = count;
    }

    /// The next `count` IDENTIFYs get their connection dropped instead of READY.
    pub fn drop_next_identifies(&self, count: u32) {
        self.state().drop_next = count;
    }
}

fn invalid_session() -> Message {
    Message::text(json!({ "op": 9, "d": false }).to_string())
}

/// What the gateway does with an IDENTIFY.
enum Answer {
    Ready,
    Invalid,
    Drop,
}

/// Judges an IDENTIFY of `shard` arriving `now` and picks the answer.
fn answer(state: &mut State, shard: u32, now: Instant) -> Answer {
    let accepted = state.judge.arrive(now, shard);
    state.identifies.push(Identify {
        at: now,
        shard,
        accepted,
    });
    if !accepted {
        return Answer::Invalid;
    }
    if state.reject_next > 0 {
        state.reject_next -= 1;
        return Answer::Invalid;
    }
    if state.drop_next > 0 {
        state.drop_next -= 1;
        return Answer::Drop;
    }
    Answer::Ready
}

async fn serve(stream: TcpStream, rules: Rules, state: Arc<Mutex<State>>, url: String) {
    let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let hello = json!({ "op": 10, "d": { "heartbeat_interval": 41_250 } });
    if socket.send(Message::text(hello.to_string())).await.is_err() {
        return;
    }
    let (outbox, mut inbox) = mpsc::unbounded_channel::<Message>();
    let mut sequence = 0u64;
    loop {
        let incoming = tokio::select! {
            incoming = socket.next() => incoming,
            Some(pushed) = inbox.recv() => {
                if socket.send(pushed).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let text = match incoming {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            _ => return, // closed, binary or broken: the session is over
        };
        let Ok(payload) = serde_json::from_str::<Value>(&text) else {
            return;
        };
        match payload["op"].as_u64() {
            Some(1) => {
                let ack = json!({ "op": 11 });
                if socket.send(Message::text(ack.to_string())).await.is_err() {
                    return;
                }
            }
            Some(2) => {
                let Some(shard) = payload["d"]["shard"][0].as_u64() else {
                    return;
                };
                let shard = shard as u32;
                let total = payload["d"]["shard"][1].as_u64().unwrap_or(1);
                let (answer, session) = {
                    let mut state = state.lock().unwrap();
                    let answer = answer(&mut state, shard, Instant::now());
                    state.sessions_started += 1;
                    state.sessions.insert(shard, outbox.clone());
                    (answer, state.sessions_started)
                };
                match answer {
                    Answer::Drop => return,
                    Answer::Invalid => {
                        if socket.send(invalid_session()).await.is_err() {
                            return;
                        }
                    }
                    Answer::Ready => {
                        tokio::time::sleep(rules.ready_after).await;
                        sequence += 1;
                        let ready = ready(shard, total, session, sequence, &url);
                        if socket.send(Message::text(ready.to_string())).await.is_err() {
                            return;
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// A READY dispatch that twilight's model accepts.
fn ready(shard: u32, total: u64, session: u64, sequence: u64, url: &str) -> Value {
    json!({
        "op": 0,
        "s": sequence,
        "t": "READY",
        "d": {
            "v": 10,
            "user": {
                "id": "100000000000000001",
                "username": "identify-queue-test",
                "discriminator": "0",
                "avatar": null,
                "accent_color": null,
                "banner": null,
                "bot": true,
                "mfa_enabled": false
            },
            "guilds": [],
            "session_id": format!("session-{session}"),
            "resume_gateway_url": url,
            "shard": [shard, total],
            "application": { "id": "100000000000000002", "flags": 0 }
        }
    })
}
