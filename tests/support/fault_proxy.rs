//! A TCP proxy on loopback that plays a real network between a process and Redis:
//! delay and jitter each way, a stall (nothing passes, nothing closes: a partition, a
//! failover, a GC pause on the path) and a cut (every connection closed at once).
//!
//! It runs on a thread of its own with its own tokio runtime, on real time, so that it
//! serves in-process queues (whatever their runtime) and worker processes alike. Bytes
//! keep their order: each chunk leaves at its arrival plus the delay and a jitter
//! drawn for it, or right after the chunk before it, whichever is later. A close
//! travels behind the bytes before it, with the same delay.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What the path does now.
#[derive(Clone, Copy, Debug, Default)]
struct Path {
    /// One way.
    delay: Duration,
    /// Each chunk's delay is drawn from `delay ± jitter` (one way).
    jitter: Duration,
    /// Nothing passes before then.
    stalled_until: Option<Instant>,
}

struct Shared {
    path: Mutex<Path>,
    /// xorshift64: jitter draws, reproducible per proxy.
    seed: Mutex<u64>,
    /// Bumped by `cut`: every connection opened before closes.
    cuts: watch::Sender<u64>,
}

impl Shared {
    fn path(&self) -> Path {
        *self.path.lock().unwrap()
    }

    /// The delay of one chunk, one way.
    fn draw(&self) -> Duration {
        let path = self.path();
        if path.jitter.is_zero() {
            return path.delay;
        }
        let mut seed = self.seed.lock().unwrap();
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        let span = path.jitter.as_micros() as u64 * 2 + 1;
        let offset = Duration::from_micros(*seed % span);
        (path.delay + offset).saturating_sub(path.jitter)
    }
}

/// One proxy in front of one server.
pub struct FaultProxy {
    pub port: u16,
    shared: Arc<Shared>,
    /// Dropped with the proxy: its runtime ends, every connection with it.
    _stop: std::sync::mpsc::Sender<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `127.0.0.1:target`, with no
    /// delay until told.
    pub fn start(target: u16) -> Self {
        Self::start_to(([127, 0, 0, 1], target).into())
    }

    /// [`start`](Self::start), forwarding to `upstream`.
    pub fn start_to(upstream: SocketAddr) -> Self {
        let (cuts, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            path: Mutex::new(Path::default()),
            seed: Mutex::new(0x9E37_79B9_7F4A_7C15 ^ u64::from(upstream.port())),
            cuts,
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let port = listener.local_addr().expect("its address").port();
        listener.set_nonblocking(true).expect("non-blocking");
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let serving = shared.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("the proxy's runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("a tokio listener");
                let accept = async {
                    while let Ok((client, _)) = listener.accept().await {
                        tokio::spawn(connection(client, upstream, serving.clone()));
                    }
                };
                let stop = tokio::task::spawn_blocking(move || {
                    let _ = stopped.recv();
                });
                tokio::select! {
                    () = accept => {}
                    _ = stop => {}
                }
            });
        });
        Self {
            port,
            shared,
            _stop: stop,
        }
    }

    /// `redis://127.0.0.1:<port>/0`: the server, through this proxy.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Each chunk takes `delay ± jitter` one way (so the round trip is about twice
    /// the delay), from now on.
    pub fn set_delay(&self, delay: Duration, jitter: Duration) {
        let mut path = self.shared.path.lock().unwrap();
        path.delay = delay;
        path.jitter = jitter.min(delay);
    }

    /// Nothing passes either way for `duration` (new connections are accepted, and
    /// stall too); then everything held passes, in order. No connection closes: to
    /// both ends, a silent network.
    pub fn stall(&self, duration: Duration) {
        self.shared.path.lock().unwrap().stalled_until = Some(Instant::now() + duration);
    }

    /// Closes every open connection at once, both ways (as a process's kernel does
    /// when it dies). New connections go through.
    pub fn cut(&self) {
        self.shared.cuts.send_modify(|generation| *generation += 1);
    }
}

/// One client's connection: two pumps, one each way, until either end closes or the
/// connection is cut.
async fn connection(client: TcpStream, upstream: SocketAddr, shared: Arc<Shared>) {
    let mut cut = shared.cuts.subscribe();
    cut.borrow_and_update();
    // The upstream connection is made at once (a SYN is not delayed here); its bytes
    // wait like any other.
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let pumps = async {
        tokio::join!(
            pump(client_read, server_write, shared.clone()),
            pump(server_read, client_write, shared.clone()),
        )
    };
    tokio::select! {
        _ = pumps => {}
        _ = cut.changed() => {}
    }
}

/// Carries bytes one way: a reader that stamps each chunk with its departure, a
/// writer that sends it then (after any stall).
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    shared: Arc<Shared>,
) {
    // `None`: the other end closed (a FIN travels like the bytes before it).
    let (send, mut receive) = mpsc::unbounded_channel::<(Instant, Option<Vec<u8>>)>();
    let reader = {
        let shared = shared.clone();
        async move {
            let mut last = Instant::now();
            let mut buffer = vec![0; 64 * 1024];
            loop {
                let read = from.read(&mut buffer).await;
                let chunk = match read {
                    Ok(0) | Err(_) => None,
                    Ok(n) => Some(buffer[..n].to_vec()),
                };
                let done = chunk.is_none();
                last = last.max(Instant::now() + shared.draw());
                if send.send((last, chunk)).is_err() || done {
                    return;
                }
            }
        }
    };
    let writer = async move {
        while let Some((at, chunk)) = receive.recv().await {
            tokio::time::sleep_until(at).await;
            // A stall holds whatever is due meanwhile; it may be extended while held.
            while let Some(until) = shared.path().stalled_until {
                if Instant::now() >= until {
                    break;
                }
                tokio::time::sleep_until(until).await;
            }
            match chunk {
                Some(bytes) => {
                    if to.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
                None => {
                    let _ = to.shutdown().await;
                    return;
                }
            }
        }
    };
    tokio::join!(reader, writer);
}
