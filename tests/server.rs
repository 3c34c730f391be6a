//! identify-queue-server, the real binary on free loopback ports: twilight's protocol
//! from raw HTTP clients and from python3's standard library, every answer judged on
//! arrival (spacing per bucket, FIFO, the budget); cancels by closing; bad input; the
//! token; Discord's word from the one fake Discord's `/gateway/bot`; the operations routes; SIGTERM;
//! two servers on one Redis namespace; hold mode; the cap on request keys.
//!
//! Real time, short intervals: the tests assert order and lower bounds, never tight
//! upper bounds.

#[path = "support/fake_discord.rs"]
mod fake_discord;
#[path = "support/fault_proxy.rs"]
mod fault_proxy;
#[path = "support/judge.rs"]
mod judge;
#[path = "support/redis_server.rs"]
mod redis_server;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout};

use fake_discord::FakeDiscord;

const GRANTED: &str = r#"{"message": "You're free to connect now! :)"}"#;

/// The server binary, stopped on drop.
struct ServerProcess {
    child: Child,
    address: SocketAddr,
}

impl ServerProcess {
    /// Starts the binary on a free loopback port with `args`, once it listens.
    fn start(args: &[&str]) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_identify-queue-server"))
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the server binary");
        Self::listening(child)
    }

    /// `child` (its standard output piped), once it says where it listens.
    fn listening(mut child: Child) -> Self {
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("the listening line");
        let address = identify_queue::server::parse_listening_line(&line)
            .unwrap_or_else(|| panic!("not a listening line: {line:?}"));
        Self { child, address }
    }

    fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Sends SIGTERM.
    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP/1.1 answer: status and body.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    body: String,
}

/// Sends `GET path` with `headers` and reads the answer (`None`: the connection
/// closed without one).
async fn get(address: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Option<Answer> {
    send(address, "GET", path, headers).await
}

/// Sends `method path` with `headers` (and no body) and reads the answer.
async fn send(
    address: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<Answer> {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: 0\r\n"
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    read_answer(&mut stream).await
}

async fn read_answer(stream: &mut TcpStream) -> Option<Answer> {
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw).await;
    if raw.is_empty() {
        return None;
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("headers");
    let status = head.split(' ').nth(1).expect("status").parse().unwrap();
    // Bodies here are short: chunked ones carry a size line first.
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if size == 0 {
                break;
            }
            out.push_str(&tail[..size]);
            rest = &tail[size + 2..];
        }
        out
    } else {
        body.to_owned()
    };
    Some(Answer { status, body })
}

/// twilight's request for `shard`, answered when it may IDENTIFY: the answer's instant.
async fn identify(address: SocketAddr, shard: u32) -> Instant {
    let answer = get(address, &format!("/?shard={shard}"), &[]).await;
    let at = Instant::now();
    assert_eq!(
        answer,
        Some(Answer {
            status: 200,
            body: GRANTED.to_owned()
        })
    );
    at
}

/// Shards 0 and 1 asked on twilight's route one after the other: the time between
/// their grants (one bucket, `max_concurrency` 1).
async fn gap_between_two_grants(server: &ServerProcess) -> Duration {
    let first = identify(server.address, 0).await;
    let second = identify(server.address, 1).await;
    second - first
}

async fn status(server: &ServerProcess) -> serde_json::Value {
    let answer = get(server.address, "/v1/status", &[])
        .await
        .expect("status");
    assert_eq!(answer.status, 200, "{answer:?}");
    serde_json::from_str(&answer.body).expect("JSON")
}

/// Waits until `/readyz` says ready.
async fn ready(server: &ServerProcess) {
    for _ in 0..200 {
        if get(server.address, "/readyz", &[]).await.map(|a| a.status) == Some(200) {
            return;
        }
        sleep(Duration::from_millis(25)).await;
    }
    panic!("never ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilights_route_spaces_each_bucket_and_keeps_fifo() {
    let interval = Duration::from_millis(200);
    let server = ServerProcess::start(&["--max-concurrency", "2", "--interval-ms", "200"]);
    ready(&server).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    // Bucket 0: 0, 2, 4, 6; bucket 1: 1, 3, 5. Asked 10 ms apart, in this order.
    for shard in [0, 1, 2, 3, 4, 5, 6] {
        let address = server.address;
        tasks.push((shard, tokio::spawn(identify(address, shard))));
        sleep(Duration::from_millis(10)).await;
    }
    let mut answers = Vec::new();
    for (shard, task) in tasks {
        answers.push((shard, task.await.unwrap()));
    }
    for bucket in 0..2 {
        let mut times: Vec<(u32, Instant)> = answers
            .iter()
            .copied()
            .filter(|(shard, _)| shard % 2 == bucket)
            .collect();
        // FIFO: answered in the order asked.
        let asked: Vec<u32> = times.iter().map(|&(s, _)| s).collect();
        times.sort_by_key(|&(_, at)| at);
        let served: Vec<u32> = times.iter().map(|&(s, _)| s).collect();
        assert_eq!(served, asked, "bucket {bucket}");
        for pair in times.windows(2) {
            let gap = pair[1].1 - pair[0].1;
            // The answers' arrivals, a loopback hop after the grants: a millisecond
            // of slack for the two hops' difference.
            assert!(
                gap + Duration::from_millis(1) >= interval,
                "bucket {bucket}: {gap:?}"
            );
        }
    }
    // Both buckets went at once: four rounds for bucket 0.
    assert!(started.elapsed() >= 3 * interval);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_budget_leaves_the_rest_waiting_without_an_answer() {
    let server = ServerProcess::start(&[
        "--max-concurrency",
        "4",
        "--total",
        "10",
        "--remaining",
        "2",
        "--interval-ms",
        "100",
    ]);
    ready(&server).await;
    identify(server.address, 0).await;
    identify(server.address, 1).await;
    let third = get(server.address, "/?shard=2", &[]);
    assert!(
        timeout(Duration::from_millis(800), third).await.is_err(),
        "answered without a unit"
    );
    let status = status(&server).await;
    assert_eq!(status["remaining"], 0);
    assert_eq!(status["granted"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_closed_while_waiting_spends_nothing() {
    // A budget of exactly the shards served: 0 and 2.
    let server =
        ServerProcess::start(&["--total", "10", "--remaining", "2", "--interval-ms", "300"]);
    ready(&server).await;
    identify(server.address, 0).await;
    // Shard 1 waits for the bucket, then its client goes away.
    let address = server.address;
    let gone = tokio::spawn(async move {
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"GET /?shard=1 HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        sleep(Duration::from_millis(100)).await;
        drop(stream);
    });
    gone.await.unwrap();
    sleep(Duration::from_millis(50)).await;
    let status1 = status(&server).await;
    assert_eq!(status1["waiting"].as_array().unwrap().len(), 0, "{status1}");
    assert_eq!(status1["cancelled"], 1);
    // Shard 2 gets the unit shard 1 did not spend.
    identify(server.address, 2).await;
    assert_eq!(status(&server).await["remaining"], 0);
}

/// Whether `GET path` gets no answer within `within` (held, or closed without one).
async fn no_answer_within(address: SocketAddr, path: &str, within: Duration) -> bool {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut byte = [0u8; 1];
    match timeout(within, stream.read(&mut byte)).await {
        Err(_) | Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
    }
}

/// The counter `name` of `/metrics`.
async fn metric(server: &ServerProcess, name: &str) -> f64 {
    let text = get(server.address, "/metrics", &[]).await.unwrap().body;
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("identify_queue_{name} ")))
        .unwrap_or_else(|| panic!("no {name} in {text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Review 8, what twilight's route answers: a request that can never be served got
/// `400` at once, and clients in the wild read any answer as "go" (16 shards answered
/// within 4 ms). Now no answer at all: held until the client leaves, and counted. The
/// native API keeps its JSON errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_8_a_request_that_can_never_be_served_gets_no_answer() {
    let server = ServerProcess::start(&["--max-concurrency", "2"]);
    ready(&server).await;
    // No shard with two buckets: which one would be a guess.
    for path in ["/?shard=x", "/?shard=4294967296", "/?shard=-1", "/"] {
        assert!(
            no_answer_within(server.address, path, Duration::from_millis(500)).await,
            "{path} was answered"
        );
    }
    assert_eq!(metric(&server, "bad_requests_total").await, 4.0);
    let answer = send(server.address, "POST", "/v1/identify?shard=x&key=k", &[])
        .await
        .unwrap();
    assert_eq!(answer.status, 400);
    let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("`shard`"),
        "{body}"
    );
}

/// Review 9: with `max_concurrency` 1 every stray request (a health check, a
/// browser's `/favicon.ico`, a scanner, a mistyped method) was an anonymous IDENTIFY
/// that spent a unit: 10 of them took a budget of 10 to 0. Now only `GET /` without a
/// shard is served, and counted; the rest spends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_9_stray_requests_spend_nothing() {
    let server = ServerProcess::start(&["--total", "10", "--interval-ms", "50"]);
    ready(&server).await;
    for (method, path) in [
        ("GET", "/favicon.ico"),
        ("GET", "/robots.txt"),
        ("GET", "/anything/else"),
        ("HEAD", "/"),
        ("POST", "/"),
        ("PUT", "/x"),
        ("OPTIONS", "/"),
        ("DELETE", "/"),
        ("DELETE", "/v1/identify"),
        ("GET", "/v1/identify"),
    ] {
        let answer = send(server.address, method, path, &[]).await.unwrap();
        assert!(
            answer.status == 404 || answer.status == 405,
            "{method} {path}: {answer:?}"
        );
    }
    assert_eq!(status(&server).await["remaining"], 10);
    assert_eq!(get(server.address, "/", &[]).await.unwrap().body, GRANTED);
    assert_eq!(status(&server).await["remaining"], 9);
    assert_eq!(metric(&server, "anonymous_grants_total").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_token_guards_every_route_but_the_health_checks() {
    let server = ServerProcess::start(&["--auth-token", "s3cret"]);
    ready(&server).await;
    for path in ["/?shard=0", "/metrics", "/v1/status", "/status"] {
        let answer = get(server.address, path, &[]).await.unwrap();
        assert_eq!(answer.status, 401, "{path}");
        let answer = get(server.address, path, &[("Authorization", "Bearer wrong")])
            .await
            .unwrap();
        assert_eq!(answer.status, 401, "{path}");
    }
    for (method, path) in [
        ("POST", "/v1/identify?shard=0&key=k"),
        ("DELETE", "/v1/identify/k"),
    ] {
        let answer = send(server.address, method, path, &[]).await.unwrap();
        assert_eq!(answer.status, 401, "{method} {path}");
    }
    for path in ["/livez", "/readyz"] {
        assert_eq!(get(server.address, path, &[]).await.unwrap().status, 200);
    }
    let answer = get(
        server.address,
        "/?shard=0",
        &[("Authorization", "Bearer s3cret")],
    )
    .await
    .unwrap();
    assert_eq!(answer.body, GRANTED);
}

/// python3's standard library as a client: what a bot in another language does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_client_gets_twilights_answer() {
    let server = ServerProcess::start(&["--max-concurrency", "2", "--interval-ms", "100"]);
    ready(&server).await;
    let script = format!(
        "import urllib.request, time\n\
         t = []\n\
         for shard in (0, 2):\n\
         \x20   body = urllib.request.urlopen('{}/?shard=%d' % shard).read().decode()\n\
         \x20   t.append(time.monotonic())\n\
         \x20   print(body)\n\
         print(int((t[1] - t[0]) * 1000))\n",
        server.url()
    );
    let output =
        tokio::task::spawn_blocking(move || Command::new("python3").args(["-c", &script]).output())
            .await
            .unwrap()
            .expect("python3");
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(&lines[..2], &[GRANTED, GRANTED]);
    // Shards 0 and 2 share bucket 0: at least the interval apart (less a millisecond
    // for the hops).
    let gap: u64 = lines[2].parse().unwrap();
    assert!(gap >= 99, "{gap} ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discords_word_comes_from_gateway_bot_and_nothing_is_granted_before_it() {
    // Discord with one session start left, down at first.
    let discord = FakeDiscord::start(1, 2);
    discord.set_reachable(false);
    let api = format!("http://{}/api/v10", discord.address);
    let server = ServerProcess::start(&[
        "--discord-token",
        fake_discord::TOKEN,
        "--discord-api",
        &api,
    ]);
    // Discord fails: not ready, and a request waits.
    sleep(Duration::from_millis(200)).await;
    let answer = get(server.address, "/readyz", &[]).await.unwrap();
    assert_eq!(answer.status, 503);
    assert!(answer.body.contains("gateway/bot"), "{}", answer.body);
    let address = server.address;
    let waiting = tokio::spawn(async move { identify(address, 1).await });
    sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "granted without Discord's word");
    // Discord answers (the server retries after a second): granted, ready; its
    // budget of one is spent.
    discord.set_reachable(true);
    timeout(Duration::from_secs(10), waiting)
        .await
        .expect("granted once Discord answered")
        .unwrap();
    ready(&server).await;
    let status = status(&server).await;
    assert_eq!(status["max_concurrency"], 2);
    assert_eq!(status["remaining"], 0);
    assert!(
        timeout(
            Duration::from_millis(500),
            get(server.address, "/?shard=0", &[])
        )
        .await
        .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_status_and_the_page_read_back() {
    let server = ServerProcess::start(&[
        "--max-concurrency",
        "2",
        "--total",
        "50",
        "--interval-ms",
        "1000",
    ]);
    ready(&server).await;
    identify(server.address, 0).await;
    identify(server.address, 1).await;
    let metrics = get(server.address, "/metrics", &[]).await.unwrap();
    assert_eq!(metrics.status, 200);
    for line in [
        "identify_queue_grants_total 2",
        "identify_queue_session_remaining 48",
        "identify_queue_max_concurrency 2",
        "identify_queue_ready 1",
        "identify_queue_wait_seconds_count 2",
        "identify_queue_request_duration_seconds_count{route=\"twilight\"} 2",
    ] {
        assert!(metrics.body.contains(line), "{line} in\n{}", metrics.body);
    }
    let status = status(&server).await;
    assert_eq!(status["ready"], true);
    assert_eq!(status["mode"], "memory");
    assert_eq!(status["total"], 50);
    assert_eq!(status["granted"], 2);
    // Both buckets granted just now: each free again within the interval and margin.
    let free = status["bucket_free_in_ms"].as_array().expect("buckets");
    assert_eq!(free.len(), 2, "{status}");
    for bucket in free {
        let ms = bucket.as_u64().expect("a number of ms");
        assert!(ms > 0 && ms <= 1250, "{status}");
    }
    let page = get(server.address, "/status", &[]).await.unwrap();
    assert_eq!(page.status, 200);
    assert!(page.body.contains("48 of 50"), "{}", page.body);
    assert!(page.body.contains("<h2>Buckets</h2>"), "{}", page.body);
    assert!(!page.body.contains("<script"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_waiting_requests_at_once() {
    let mut server = ServerProcess::start(&["--remaining", "0"]);
    ready(&server).await;
    let address = server.address;
    let waiting = tokio::spawn(async move { get(address, "/?shard=0", &[]).await });
    sleep(Duration::from_millis(200)).await;
    let terminated = Instant::now();
    server.terminate();
    let answer = timeout(Duration::from_secs(5), waiting)
        .await
        .expect("closed at once")
        .unwrap();
    assert_eq!(
        answer, None,
        "closed without an answer (any answer is a grant)"
    );
    let code = server.child.wait().expect("exits");
    assert!(code.success(), "{code:?}");
    eprintln!("closed {:?} after SIGTERM", terminated.elapsed());
}

/// A server in cluster mode on `redis` (namespace `bot`, one bucket, a total of 100),
/// with `remaining` left and `interval_ms` between grants.
fn on_redis(redis: &redis_server::Server, remaining: u32, interval_ms: u64) -> ServerProcess {
    let (url, remaining, interval) = (redis.url(), remaining.to_string(), interval_ms.to_string());
    ServerProcess::start(&[
        "--redis",
        &url,
        "--namespace",
        "bot",
        "--max-concurrency",
        "1",
        "--total",
        "100",
        "--remaining",
        &remaining,
        "--interval-ms",
        &interval,
    ])
}

/// Two servers on one Redis namespace serve one bot: spacing and the budget hold
/// across them, whichever a shard asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_namespace_share_buckets_and_budget() {
    let redis = redis_server::Server::start(false);
    let a = on_redis(&redis, 3, 200);
    let b = on_redis(&redis, 3, 200);
    ready(&a).await;
    ready(&b).await;
    // One bucket: four shards over two servers, alternately.
    let mut tasks = Vec::new();
    for shard in 0..4u32 {
        let address = if shard % 2 == 0 { a.address } else { b.address };
        tasks.push(tokio::spawn(async move {
            let answer = get(address, &format!("/?shard={shard}"), &[]).await;
            (Instant::now(), answer)
        }));
        sleep(Duration::from_millis(10)).await;
    }
    sleep(Duration::from_millis(1500)).await;
    let mut granted = Vec::new();
    for task in tasks {
        if task.is_finished() {
            let (at, answer) = task.await.unwrap();
            assert_eq!(answer.map(|a| a.body), Some(GRANTED.to_owned()));
            granted.push(at);
        }
    }
    // A budget of three: three answers, the fourth waits.
    assert_eq!(granted.len(), 3);
    granted.sort();
    for pair in granted.windows(2) {
        assert!(
            pair[1] - pair[0] + Duration::from_millis(1) >= Duration::from_millis(200),
            "{:?}",
            pair[1] - pair[0]
        );
    }
    assert_eq!(status(&a).await["mode"], "cluster");
}

// The client: identify_queue::http::Queue.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_moves_on_from_a_dead_server_and_stops_at_a_refusal() {
    let server = ServerProcess::start(&["--max-concurrency", "2", "--interval-ms", "100"]);
    ready(&server).await;
    // A port nobody listens on first: the client retries on the next URL.
    let dead = format!("http://127.0.0.1:{}", redis_server::free_port());
    let queue = identify_queue::http::Queue::new([dead, server.url()]).unwrap();
    timeout(Duration::from_secs(5), queue.acquire(0))
        .await
        .expect("granted through the live server")
        .unwrap();
    assert_eq!(status(&server).await["granted"], 1);
    // A refusal (401 without the token) cannot be helped by asking again.
    let guarded = ServerProcess::start(&["--auth-token", "s3cret"]);
    ready(&guarded).await;
    let queue = identify_queue::http::Queue::new([guarded.url()]).unwrap();
    match queue.acquire(0).await {
        Err(identify_queue::AcquireError::Server { status: 401, .. }) => {}
        other => panic!("{other:?}"),
    }
    let queue = queue.with_token("s3cret");
    queue.acquire(0).await.unwrap();
    assert!(identify_queue::http::Queue::new(Vec::<String>::new()).is_err());
    assert!(identify_queue::http::Queue::new(["ftp://x"]).is_err());
}

/// One bucket at a 1 s interval (no margin), a fault proxy in front of it, and a client
/// that reaches the server directly, whose shard 9 was just granted: the bucket is busy
/// for a second.
async fn one_busy_bucket_behind_a_proxy() -> (
    ServerProcess,
    fault_proxy::FaultProxy,
    identify_queue::http::Queue,
) {
    let server = ServerProcess::start(&[
        "--max-concurrency",
        "1",
        "--interval-ms",
        "1000",
        "--margin-ms",
        "0",
    ]);
    ready(&server).await;
    let proxy = fault_proxy::FaultProxy::start(server.address.port());
    let direct = identify_queue::http::Queue::new([server.url()]).unwrap();
    direct.acquire(9).await.unwrap();
    (server, proxy, direct)
}

/// The client asks under one key per attempt: a poll cut by the network is asked again
/// under the same key, and the shard keeps its place (before, on twilight's route, the
/// cut cancelled the request and the retry went to the back of its bucket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_keeps_its_place_across_a_cut() {
    let (server, proxy, direct) = one_busy_bucket_behind_a_proxy().await;
    let through_proxy = format!("http://127.0.0.1:{}", proxy.port);
    let client = identify_queue::http::Queue::new([through_proxy]).unwrap();
    let first = tokio::spawn(async move {
        client.acquire(1).await.unwrap();
        Instant::now()
    });
    sleep(Duration::from_millis(100)).await;
    let second = tokio::spawn(async move {
        direct.acquire(2).await.unwrap();
        Instant::now()
    });
    sleep(Duration::from_millis(100)).await;
    proxy.cut(); // shard 1's poll is closed under it
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert!(first < second, "shard 1 kept its place ahead of shard 2");
    assert_eq!(status(&server).await["granted"], 3);
}

/// A grant whose answer the network lost is not used: the client's next poll of that key
/// gets `410`, and it asks again under a new key, an interval after the lost grant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_asks_again_when_a_grant_is_lost_on_the_way() {
    let (server, proxy, _direct) = one_busy_bucket_behind_a_proxy().await;
    let occupied = Instant::now(); // the next grant comes about a second after this
    let client =
        identify_queue::http::Queue::new([format!("http://127.0.0.1:{}", proxy.port)]).unwrap();
    let asked = tokio::spawn(async move {
        client.acquire(1).await.unwrap();
        Instant::now()
    });
    sleep(Duration::from_millis(500)).await;
    // The grant (about 500 ms from now) is held in the proxy, then the connection cut.
    proxy.stall(Duration::from_millis(1000));
    sleep(Duration::from_millis(800)).await;
    assert_eq!(
        status(&server).await["granted"],
        2,
        "shard 1's first grant was made"
    );
    proxy.cut();
    let granted_at = asked.await.unwrap();
    assert!(
        granted_at >= occupied + Duration::from_millis(1950),
        "granted {:?} after the bucket's first grant: the lost grant's turn was not used",
        granted_at - occupied
    );
    assert_eq!(
        status(&server).await["granted"],
        3,
        "the lost grant and a new one"
    );
}

/// A shard the client granted before asks as a reconnect: ahead of its bucket's
/// start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_asks_as_a_reconnect_after_a_grant() {
    let server = ServerProcess::start(&[
        "--max-concurrency",
        "1",
        "--interval-ms",
        "500",
        "--margin-ms",
        "0",
    ]);
    ready(&server).await;
    let client = identify_queue::http::Queue::new([server.url()]).unwrap();
    client.acquire(0).await.unwrap();
    let others = identify_queue::http::Queue::new([server.url()]).unwrap();
    let mut start_ups = Vec::new();
    for shard in 1..=3 {
        let others = others.clone();
        start_ups.push(tokio::spawn(async move {
            others.acquire(shard).await.unwrap();
            Instant::now()
        }));
        sleep(Duration::from_millis(20)).await;
    }
    client.acquire(0).await.unwrap();
    let reconnected = Instant::now();
    for start_up in start_ups {
        assert!(
            start_up.await.unwrap() > reconnected,
            "the reconnect went first"
        );
    }
}

/// twilight's contract through the client: `()` when granted; a receiver dropped while
/// waiting cancels the server's request.
#[cfg(feature = "twilight")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_is_a_twilight_queue() {
    use twilight_gateway_queue::Queue as _;
    let server =
        ServerProcess::start(&["--total", "10", "--remaining", "1", "--interval-ms", "100"]);
    ready(&server).await;
    let queue = identify_queue::http::Queue::new([server.url()]).unwrap();
    timeout(Duration::from_secs(5), queue.enqueue(0))
        .await
        .expect("granted")
        .expect("()");
    // The budget is spent: shard 1 waits; its shard gives up.
    let receiver = queue.enqueue(1);
    sleep(Duration::from_millis(300)).await;
    assert_eq!(
        status(&server).await["waiting"].as_array().unwrap().len(),
        1
    );
    drop(receiver);
    for _ in 0..100 {
        if status(&server).await["cancelled"] == 1 {
            return;
        }
        sleep(Duration::from_millis(20)).await;
    }
    panic!("the server never saw the request go");
}

/// Review 20: as a twilight queue the client never closes a shard's channel on a
/// refusal (a stale token): it asks again with backoff, and the channel stays open
/// (before: closed at once, so twilight's shard enqueued again at once, a tight loop).
#[cfg(feature = "twilight")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_20_the_twilight_client_backs_off_on_a_refusal() {
    use twilight_gateway_queue::Queue as _;
    let server = ServerProcess::start(&["--auth-token", "t0ken", "--interval-ms", "100"]);
    ready(&server).await;
    let queue = identify_queue::http::Queue::new([server.url()]).unwrap();
    let receiver = queue.enqueue(0);
    let waited = timeout(Duration::from_millis(1500), receiver).await;
    assert!(waited.is_err(), "the channel stays open: {waited:?}");
}

#[cfg(feature = "twilight")]
#[allow(dead_code)]
#[path = "gateway/mod.rs"]
mod gateway;

/// Real twilight shards through the client and the server binary, judged by the fake
/// gateway on arrival (its per-bucket spacing and budget, 40 ms of loopback jitter
/// allowed, as in `tests/twilight.rs`); then sessions invalidated and shards
/// restarted.
#[cfg(feature = "twilight")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilight_shards_identify_through_the_server() {
    use twilight_gateway::{
        ConfigBuilder, Event, EventTypeFlags, Intents, Shard, ShardId, StreamExt,
    };
    let interval = Duration::from_millis(200);
    let gateway = gateway::Gateway::start(gateway::Rules {
        max_concurrency: 4,
        interval,
        jitter: Duration::from_millis(40),
        remaining: 100,
        ready_after: Duration::ZERO,
    })
    .await;
    let server = ServerProcess::start(&["--max-concurrency", "4", "--interval-ms", "200"]);
    ready(&server).await;
    let queue = identify_queue::http::Queue::new([server.url()]).unwrap();
    let config = ConfigBuilder::new("test-token".to_owned(), Intents::empty())
        .proxy_url(gateway.url.clone())
        .queue(queue)
        .build();
    let (readies_tx, mut readies) = tokio::sync::mpsc::unbounded_channel();
    let shards = 16;
    let start = |id: u32| {
        let mut shard = Shard::with_config(ShardId::new(id, shards), config.clone());
        let readies = readies_tx.clone();
        tokio::spawn(async move {
            while let Some(event) = shard.next_event(EventTypeFlags::READY).await {
                if let Ok(Event::Ready(_)) = event {
                    let _ = readies.send(id);
                }
            }
        })
    };
    let mut tasks: Vec<_> = (0..shards).map(start).collect();
    let mut wait_for = async |count: usize| {
        for seen in 0..count {
            let next = timeout(Duration::from_secs(30), readies.recv()).await;
            assert!(matches!(next, Ok(Some(_))), "{seen} of {count} READY");
        }
    };
    wait_for(shards as usize).await;
    let times: Vec<Instant> = gateway.identifies().iter().map(|i| i.at).collect();
    // 16 shards in 4 buckets: four rounds, at least three intervals.
    let span = *times.iter().max().unwrap() - *times.iter().min().unwrap();
    assert!(span + Duration::from_millis(40) >= 3 * interval, "{span:?}");
    // Four sessions invalidated (they identify again), four shards restarted (a new
    // process's shards): eight more IDENTIFYs, all within the rules.
    for id in [0, 5, 10, 15] {
        assert!(gateway.invalidate(id), "shard {id} has a session");
    }
    for id in [1, 2, 3, 4] {
        tasks[id as usize].abort();
        tasks[id as usize] = start(id);
    }
    wait_for(8).await;
    for task in tasks {
        task.abort();
    }
    let violations = gateway.violations();
    assert!(violations.is_empty(), "{violations:#?}");
    assert_eq!(gateway.accepted(), shards as usize + 8);
    assert_eq!(status(&server).await["granted"], shards + 8);
}

// The native API: /v1/identify.

async fn v1(address: SocketAddr, method: &str, path: &str) -> (u16, serde_json::Value) {
    let answer = send(address, method, path, &[]).await.expect("an answer");
    let body = if answer.body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&answer.body).expect("JSON")
    };
    (answer.status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_native_api_long_polls_keeps_places_and_never_spends_twice() {
    let server =
        ServerProcess::start(&["--total", "10", "--remaining", "3", "--interval-ms", "300"]);
    ready(&server).await;
    let at = server.address;
    let (code, body) = v1(at, "POST", "/v1/identify?shard=0&key=a").await;
    assert_eq!(
        (code, body["granted"].clone()),
        (200, true.into()),
        "{body}"
    );
    // The bucket is busy: a short poll says where the shard stands.
    let (code, body) = v1(at, "POST", "/v1/identify?shard=1&key=b&wait_ms=50").await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["place"], 0);
    assert!(body["eta_ms"].as_u64().unwrap() <= 550, "{body}");
    let (code, body) = v1(at, "POST", "/v1/identify?shard=2&key=c&wait_ms=50").await;
    assert_eq!((code, body["place"].clone()), (202, 1.into()), "{body}");
    // A reconnect goes ahead of both.
    let (code, body) = v1(
        at,
        "POST",
        "/v1/identify?shard=4&key=e&priority=reconnect&wait_ms=50",
    )
    .await;
    assert_eq!((code, body["place"].clone()), (202, 0.into()), "{body}");
    assert_eq!(v1(at, "DELETE", "/v1/identify/e").await.0, 204);
    // Polling again with the same key keeps the place: shard 1 goes next.
    let (code, body) = v1(at, "POST", "/v1/identify?shard=1&key=b&wait_ms=2000").await;
    assert_eq!(
        (code, body["granted"].clone()),
        (200, true.into()),
        "{body}"
    );
    // A retry finds the same grant, answered already: never spent twice.
    let (code, _) = v1(at, "POST", "/v1/identify?shard=1&key=b&wait_ms=0").await;
    assert_eq!(code, 410);
    // A key is one shard's.
    assert_eq!(v1(at, "POST", "/v1/identify?shard=5&key=b").await.0, 409);
    // Shard 2 gives up: nothing spent, even after its turn would have come.
    assert_eq!(v1(at, "DELETE", "/v1/identify/c").await.0, 204);
    assert_eq!(v1(at, "DELETE", "/v1/identify/zzz").await.0, 404);
    sleep(Duration::from_millis(700)).await;
    let seen = status(&server).await;
    assert_eq!(seen["remaining"], 1, "{seen}");
    assert_eq!(seen["granted"], 2, "{seen}");
    // Bad input says what is wrong.
    for path in [
        "/v1/identify?shard=1",
        "/v1/identify?key=k",
        "/v1/identify?shard=1&key=k&priority=urgent",
        "/v1/identify?shard=1&key=k&wait_ms=soon",
    ] {
        let (code, body) = v1(at, "POST", path).await;
        assert_eq!(code, 400, "{path}");
        assert!(body["error"].as_str().unwrap().contains('`'), "{body}");
    }
}

/// Three servers on one namespace, the client spread over them; one is killed while
/// requests wait on it: its clients ask again on another, every shard is served once,
/// the spacing holds, and the budget counts each grant once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_run_loses_nobody_and_spends_nothing_twice() {
    let redis = redis_server::Server::start(false);
    let servers: Vec<ServerProcess> = (0..3).map(|_| on_redis(&redis, 100, 150)).collect();
    for server in &servers {
        ready(server).await;
    }
    let urls: Vec<String> = servers.iter().map(ServerProcess::url).collect();
    let queue = identify_queue::http::Queue::new(urls).unwrap();
    let shards = 9u32;
    let mut tasks = Vec::new();
    for shard in 0..shards {
        let queue = queue.clone();
        tasks.push(tokio::spawn(async move {
            queue.acquire(shard).await.unwrap();
            (shard, Instant::now())
        }));
        sleep(Duration::from_millis(5)).await;
    }
    // A few grants in, one server dies with requests waiting on it.
    sleep(Duration::from_millis(400)).await;
    let mut servers = servers;
    let mut killed = servers.remove(1);
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let mut granted = Vec::new();
    for task in tasks {
        let done = timeout(Duration::from_secs(20), task).await;
        granted.push(done.expect("served after the kill").unwrap());
    }
    granted.sort_by_key(|&(_, at)| at);
    let mut served: Vec<u32> = granted.iter().map(|&(shard, _)| shard).collect();
    served.sort_unstable();
    assert_eq!(served, (0..shards).collect::<Vec<_>>());
    for pair in granted.windows(2) {
        let gap = pair[1].1 - pair[0].1;
        assert!(
            gap + Duration::from_millis(1) >= Duration::from_millis(150),
            "{gap:?}"
        );
    }
    // Each grant counted once in the shared budget, whichever server made it (a
    // request cut by the kill may have spent a unit without its answer: the safe side).
    let remaining = status(&servers[0]).await["remaining"].as_u64().unwrap();
    assert!(remaining <= 100 - u64::from(shards), "{remaining}");
    assert!(remaining >= 100 - u64::from(shards) - 3, "{remaining}");
}

/// Review 1: a native grant is delivered by the poll that answers it, and once. A
/// client that polls every 2.5 s with `wait_ms=0` (or whose long poll was cut) is told
/// "go" at its poll, and the next shard of its bucket goes an interval after that, not
/// an interval after the queue's grant (before: 0.5 s after the stale "go", at an
/// interval of 1 s). A later poll of the answered key gets `410` with the instant,
/// never a second "go" (before: `200` again, one unit for four "go"s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_1_a_native_grant_is_delivered_by_its_answer_and_only_once() {
    let server = ServerProcess::start(&[
        "--total",
        "10",
        "--interval-ms",
        "1000",
        "--ticket-lease-ms",
        "10000",
    ]);
    ready(&server).await;
    let at = server.address;
    identify(at, 9).await;
    let (code, body) = v1(at, "POST", "/v1/identify?shard=0&key=a&wait_ms=0").await;
    assert_eq!(code, 202, "{body}");
    // Shard 1 on twilight's route waits behind it.
    let next = tokio::spawn(async move { identify(at, 1).await });
    sleep(Duration::from_millis(2500)).await;
    let (code, body) = v1(at, "POST", "/v1/identify?shard=0&key=a&wait_ms=0").await;
    let go = Instant::now();
    assert_eq!(
        (code, body["granted"].clone()),
        (200, true.into()),
        "{body}"
    );
    let next = next.await.unwrap();
    let gap = next.saturating_duration_since(go);
    assert!(
        gap + Duration::from_millis(5) >= Duration::from_millis(1000),
        "shard 1 went {gap:?} after shard 0's \"go\""
    );
    let granted_at = body["granted_at"].as_u64().expect("granted_at");
    for _ in 0..3 {
        let (code, body) = v1(at, "POST", "/v1/identify?shard=0&key=a&wait_ms=0").await;
        assert_eq!(code, 410, "{body}");
        assert_eq!(body["granted_at"], granted_at, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("new key"),
            "{body}"
        );
    }
    let seen = status(&server).await;
    assert_eq!(seen["remaining"], 7, "three grants, three units: {seen}");
    assert_eq!(seen["granted"], 3, "{seen}");
}

/// Real-clients F8: a native key whose poll was cut (its client killed) and that no poll
/// takes up within the lease (seconds) is dropped with nothing spent, its place given
/// back before its turn (before: kept for a 30 s lease, granted to nobody, the unit
/// spent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f8_a_key_whose_client_went_is_dropped_within_its_lease() {
    let server = ServerProcess::start(&[
        "--total",
        "10",
        "--interval-ms",
        "1500",
        "--ticket-lease-ms",
        "300",
    ]);
    ready(&server).await;
    let at = server.address;
    identify(at, 9).await;
    // Shard 0's client long-polls and is killed 100 ms in: its connection closes.
    let cut =
        tokio::spawn(
            async move { v1(at, "POST", "/v1/identify?shard=0&key=a&wait_ms=20000").await },
        );
    sleep(Duration::from_millis(100)).await;
    cut.abort();
    let _ = cut.await;
    sleep(Duration::from_millis(800)).await;
    let seen = status(&server).await;
    assert_eq!(seen["waiting"].as_array().unwrap().len(), 0, "{seen}");
    assert_eq!(seen["remaining"], 9, "nothing spent on the key: {seen}");
    assert_eq!(seen["cancelled"], 1, "{seen}");
    // The shard asks again with a new key and is served at once.
    let (code, body) = v1(at, "POST", "/v1/identify?shard=0&key=b&wait_ms=2000").await;
    assert_eq!(
        (code, body["granted"].clone()),
        (200, true.into()),
        "{body}"
    );
}

/// Review 11, real-clients F2: a server killed and started again at once forgets what
/// it granted, yet never brings two IDENTIFYs of a bucket closer than the interval: a
/// fresh server treats every bucket as granted at its start (before: shard 1 granted
/// 10 ms after shard 0 of the same bucket, at an interval of 1 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_11_a_restarted_server_keeps_each_bucket_an_interval() {
    let flags = [
        "--max-concurrency",
        "2",
        "--interval-ms",
        "1000",
        "--margin-ms",
        "0",
    ];
    let server = ServerProcess::start(&flags);
    let started = Instant::now();
    ready(&server).await;
    let first = identify(server.address, 0).await;
    assert!(
        first - started >= Duration::from_millis(1000),
        "a fresh server's first grant of a bucket waits an interval: {:?}",
        first - started
    );
    drop(server);
    let server = ServerProcess::start(&flags);
    ready(&server).await;
    let (again, other) = tokio::join!(identify(server.address, 2), identify(server.address, 1));
    assert!(
        again - first >= Duration::from_millis(1000),
        "{:?}",
        again - first
    );
    assert!(
        other - first >= Duration::from_millis(1000),
        "{:?}",
        other - first
    );
}

/// Real-clients F3: the server spaces a bucket's grants at the interval and the margin
/// (`--margin-ms`, 250 ms by default), so that an IDENTIFY late on its way after its
/// grant still arrives an interval after the one before (before: exactly the
/// interval, 923 ms between arrivals at 1 s in a cold start of @discordjs/ws).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f3_grants_are_spaced_at_the_interval_and_the_margin() {
    let server = ServerProcess::start(&["--interval-ms", "400"]);
    ready(&server).await;
    let gap = gap_between_two_grants(&server).await;
    assert!(gap >= Duration::from_millis(645), "{gap:?}");
    let server = ServerProcess::start(&["--interval-ms", "400", "--margin-ms", "100"]);
    ready(&server).await;
    let gap = gap_between_two_grants(&server).await;
    assert!(gap >= Duration::from_millis(495), "{gap:?}");
    // The margin is a duration like the others: at most an hour.
    let out = Command::new(env!("CARGO_BIN_EXE_identify-queue-server"))
        .args(["--port", "0", "--margin-ms", "3600001"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`--margin-ms`"));
}

/// Review 3: after Redis restarts empty (a new epoch), a server with `--discord-token`
/// hands the cluster its reader of Discord's word, so grants resume once the loss's
/// quarantine is over (10 s and `--grace-ms`), not at the next five-minute refresh
/// (before: the first waiting shard served 297 s after Redis came back).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_3_after_redis_restarts_empty_grants_resume_from_discords_word() {
    let mut redis = redis_server::Server::start(false);
    let discord = FakeDiscord::start(50, 1);
    let api = format!("http://{}/api/v10", discord.address);
    let url = redis.url();
    let server = ServerProcess::start(&[
        "--redis",
        &url,
        "--namespace",
        "bot",
        "--discord-token",
        fake_discord::TOKEN,
        "--discord-api",
        &api,
        "--interval-ms",
        "300",
        "--grace-ms",
        "500",
    ]);
    ready(&server).await;
    identify(server.address, 0).await;
    redis.kill();
    redis.restart();
    let back = Instant::now();
    let at = server.address;
    let served = timeout(Duration::from_secs(40), identify(at, 1)).await;
    assert!(served.is_ok(), "not served 40 s after Redis came back");
    assert!(
        back.elapsed() >= Duration::from_millis(500),
        "{:?}",
        back.elapsed()
    );
}

/// Review 3, a static limit: after Redis restarts empty nothing may be granted (the
/// day's spending is gone, and the flags are not Discord's word), and the server says
/// so where an operator looks: `/readyz` names the remedy, the log has an ERROR, and
/// `identify_queue_unready_seconds_total` counts the time without grants (before: 503
/// `cluster: NeedsLimit(StateMissing)` and a WARN).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_3_a_static_limit_after_redis_lost_its_state_calls_an_operator() {
    let mut redis = redis_server::Server::start(false);
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let server = ServerProcess::listening(spawn_logged(
        &[
            "--port",
            "0",
            "--redis",
            &url,
            "--namespace",
            "bot",
            "--interval-ms",
            "300",
        ],
        &log,
    ));
    ready(&server).await;
    identify(server.address, 0).await;
    redis.kill();
    redis.restart();
    let at = server.address;
    let waiting = tokio::spawn(async move { get(at, "/?shard=1", &[]).await });
    let mut reason = String::new();
    for _ in 0..100 {
        let answer = get(at, "/readyz", &[]).await.unwrap();
        if answer.status == 503 && answer.body.contains("--remaining") {
            reason = answer.body;
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    assert!(reason.contains("--discord-token"), "{reason:?}");
    sleep(Duration::from_millis(2100)).await;
    assert!(metric(&server, "unready_seconds_total").await >= 1.0);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged
            .lines()
            .any(|line| line.contains("ERROR") && line.contains("--remaining")),
        "{logged}"
    );
    assert!(!waiting.is_finished(), "nothing granted");
    waiting.abort();
}

/// Review 13: a shard asked again on twilight's route while its earlier request waits
/// takes that one's place (a client asks again only once it gave up the earlier one):
/// one grant, no timer spinning for the duplicate, and the earlier connection never
/// answered (before: both answered, an interval apart, two units spent, each
/// duplicate retrying every 50 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_13_a_shard_asked_again_on_twilights_route_replaces_its_request() {
    let server = ServerProcess::start(&["--total", "10", "--interval-ms", "600"]);
    ready(&server).await;
    let at = server.address;
    let older = tokio::spawn(async move { get(at, "/?shard=0", &[]).await });
    sleep(Duration::from_millis(100)).await;
    let newer = tokio::spawn(async move { identify(at, 0).await });
    newer.await.unwrap();
    let seen = status(&server).await;
    assert_eq!(seen["remaining"], 9, "one unit: {seen}");
    let older = timeout(Duration::from_millis(1500), older).await;
    assert!(matches!(older, Err(_) | Ok(Ok(None))), "{older:?}");
    assert_eq!(status(&server).await["remaining"], 9);
}

/// Review 13, the native API: a key of a shard that waits on twilight's route waits
/// behind it, woken by its end, and is granted an interval after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_13_a_native_key_waits_behind_its_shards_other_request() {
    let server =
        ServerProcess::start(&["--total", "10", "--interval-ms", "400", "--margin-ms", "0"]);
    ready(&server).await;
    let at = server.address;
    let twilight = tokio::spawn(async move { identify(at, 0).await });
    sleep(Duration::from_millis(100)).await;
    let (code, body) = v1(at, "POST", "/v1/identify?shard=0&key=k&wait_ms=10000").await;
    let native = Instant::now();
    assert_eq!(
        (code, body["granted"].clone()),
        (200, true.into()),
        "{body}"
    );
    let twilight = twilight.await.unwrap();
    assert!(
        native - twilight >= Duration::from_millis(395),
        "{:?}",
        native - twilight
    );
    assert_eq!(status(&server).await["remaining"], 8);
}

/// Review 15: a refresh of Discord's word that fails leaves the limit in force: grants
/// flow and `/readyz` stays 200, while the status shows the word's age and the error
/// and a gauge its age (before: 503 with grants flowing, every replica out of its
/// load balancer at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_15_a_failed_refresh_leaves_the_server_ready() {
    let discord = FakeDiscord::start(50, 1);
    discord.set_reset_after(Duration::from_millis(1000));
    let api = format!("http://{}/api/v10", discord.address);
    let server = ServerProcess::start(&[
        "--discord-token",
        fake_discord::TOKEN,
        "--discord-api",
        &api,
        "--interval-ms",
        "200",
    ]);
    ready(&server).await;
    discord.set_reachable(false);
    // The refresh after the reset (a second later) fails.
    sleep(Duration::from_millis(2800)).await;
    let seen = status(&server).await;
    assert!(
        seen["word"]["refresh_error"]
            .as_str()
            .unwrap_or("")
            .contains("502"),
        "{seen}"
    );
    assert!(seen["word"]["age_ms"].as_u64().unwrap() >= 2000, "{seen}");
    assert_eq!(
        get(server.address, "/readyz", &[]).await.unwrap().status,
        200
    );
    assert_eq!(seen["ready"], true, "{seen}");
    assert!(metric(&server, "word_age_seconds").await >= 2.0);
    identify(server.address, 0).await;
}

/// Review 20: Discord's `Retry-After` on a `429` is honoured (before: asked again at
/// 1, 3, 7 s whatever it said).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_20_discords_retry_after_is_honoured() {
    let discord = FakeDiscord::start(50, 1);
    discord.set_rate_limited(Some(3));
    let api = format!("http://{}/api/v10", discord.address);
    let _server = ServerProcess::start(&[
        "--discord-token",
        fake_discord::TOKEN,
        "--discord-api",
        &api,
    ]);
    sleep(Duration::from_millis(4500)).await;
    let reads = discord.reads();
    assert!(reads.len() >= 2, "{reads:?}");
    for pair in reads.windows(2) {
        assert!(
            pair[1] - pair[0] >= Duration::from_millis(2900),
            "{:?}",
            pair[1] - pair[0]
        );
    }
}

/// Reads from `stream` until it closes (or `within` passes): what came, and whether
/// it closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> (String, bool) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (String::from_utf8_lossy(&seen).into(), true),
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&seen).into(), false),
        }
    }
}

/// Review 5: a head sent a byte at a time, an idle kept-alive connection, and a head
/// that never ends are each closed (before: 2,000 slowloris connections still open
/// after 45 s, and 390 KB of unfinished head held per connection for good): the head
/// and idle timeout is 10 s, the head buffer 16 KiB. None of them is answered "go".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_5_slow_idle_and_endless_heads_are_closed() {
    let server = ServerProcess::start(&["--interval-ms", "100"]);
    ready(&server).await;
    let at = server.address;
    let started = Instant::now();
    let slow = tokio::spawn(async move {
        let mut stream = TcpStream::connect(at).await.unwrap();
        for byte in b"GET /?shard=0 HTTP/1.1\r\nHost: x\r\n" {
            if stream.write_all(&[*byte]).await.is_err() {
                break;
            }
            sleep(Duration::from_millis(500)).await;
        }
        read_until_closed(&mut stream, Duration::from_secs(20)).await
    });
    let idle = tokio::spawn(async move {
        let mut stream = TcpStream::connect(at).await.unwrap();
        let request = format!("GET /livez HTTP/1.1\r\nHost: {at}\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        read_until_closed(&mut stream, Duration::from_secs(20)).await
    });
    let mut endless = TcpStream::connect(at).await.unwrap();
    let head = format!("GET /?shard=1 HTTP/1.1\r\nX-Pad: {}", "a".repeat(40_000));
    let _ = endless.write_all(head.as_bytes()).await;
    let (said, closed) = read_until_closed(&mut endless, Duration::from_secs(3)).await;
    assert!(closed, "an endless head is cut within 3 s");
    assert!(!said.contains("200"), "{said}");
    let (said, closed) = slow.await.unwrap();
    assert!(closed && !said.contains("200"), "{said:?}");
    let slow_closed = started.elapsed();
    assert!(slow_closed >= Duration::from_secs(9), "{slow_closed:?}");
    let (said, closed) = idle.await.unwrap();
    assert!(said.starts_with("HTTP/1.1 200") && closed, "{said:?}");
}

/// Review 6: one client fills the connections and the server still answers its health
/// checks, says so in the log and the metrics, and raised its soft open-files limit to
/// the hard one (before: at the limit `/livez` answered nothing in 5 s and nothing was
/// logged; the soft limit it was given stayed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_6_a_client_filling_the_connections_leaves_the_health_checks() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let binary = env!("CARGO_BIN_EXE_identify-queue-server");
    let child = Command::new("sh")
        .args([
            "-c",
            &format!("ulimit -Sn 128 && ulimit -Hn 512 && exec {binary} --port 0"),
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let server = ServerProcess::listening(child);
    ready(&server).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.child.id())).unwrap();
    let files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert_eq!(files.split_whitespace().nth(3), Some("512"), "{files}");
    // 512 less 288: 224 connections, 168 from one address. The hog opens 300.
    let mut hog = Vec::new();
    for _ in 0..300 {
        match TcpStream::connect(server.address).await {
            Ok(stream) => hog.push(stream),
            Err(_) => break,
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut answered = false;
    while Instant::now() < deadline {
        if let Ok(Some(answer)) = timeout(
            Duration::from_millis(500),
            get(server.address, "/livez", &[]),
        )
        .await
        {
            answered = answer.status == 200;
            break;
        }
        sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "/livez answered with the connections full");
    // A request past the client's share is closed unanswered, never a "go".
    let answer = timeout(
        Duration::from_secs(3),
        get(server.address, "/?shard=0", &[]),
    )
    .await;
    assert!(matches!(answer, Ok(None) | Err(_)), "{answer:?}");
    drop(hog);
    sleep(Duration::from_millis(200)).await;
    assert!(metric(&server, "refused_connections_total").await >= 1.0);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("raised the open-files limit"), "{logged}");
    assert!(
        logged.contains("closed unanswered") || logged.contains("past the caps"),
        "{logged}"
    );
}

/// `POST path` from the loopback address `from` (Linux routes all of 127/8 to `lo`).
async fn post_from(from: [u8; 4], address: SocketAddr, path: &str) -> Answer {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::from((from, 0)))
        .expect("a loopback source address");
    let mut stream = socket.connect(address).await.expect("connect");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    read_answer(&mut stream).await.expect("an answer")
}

/// Review 12: the native API's keys are capped per client address (before: one
/// client's keys took the global cap, then every other client got `429`); a shard
/// waits under one key (a second: `409`); its place counts every waiter of its bucket,
/// twilight's route's too (review 20: before, `place` 0 with 5,000 ahead); the status
/// lists the oldest waiters and counts them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_12_keys_are_capped_per_client_and_places_count_every_waiter() {
    let server = ServerProcess::start(&[
        "--interval-ms",
        "1000",
        "--margin-ms",
        "0",
        "--max-tickets-per-client",
        "3",
    ]);
    ready(&server).await;
    let at = server.address;
    // Three waiters on twilight's route, in the busy bucket.
    let mut twilight = Vec::new();
    for shard in 10..13 {
        twilight.push(tokio::spawn(async move {
            get(at, &format!("/?shard={shard}"), &[]).await
        }));
        sleep(Duration::from_millis(20)).await;
    }
    for (key, shard) in [("a", 1), ("b", 2), ("c", 3)] {
        let path = format!("/v1/identify?shard={shard}&key={key}&wait_ms=0");
        let answer = post_from([127, 0, 0, 1], at, &path).await;
        assert_eq!(answer.status, 202, "{answer:?}");
    }
    let answer = post_from([127, 0, 0, 1], at, "/v1/identify?shard=4&key=d&wait_ms=0").await;
    assert_eq!(answer.status, 429, "{answer:?}");
    assert!(
        answer.body.contains("--max-tickets-per-client"),
        "{answer:?}"
    );
    // Another client still gets its key.
    let answer = post_from([127, 0, 0, 2], at, "/v1/identify?shard=5&key=e&wait_ms=0").await;
    assert_eq!(answer.status, 202, "{answer:?}");
    // Its place: the three on twilight's route and the three keys before it.
    let body: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert!(body["place"].as_u64().unwrap() >= 6, "{body}");
    // A shard waits under one key.
    let answer = post_from([127, 0, 0, 2], at, "/v1/identify?shard=5&key=f&wait_ms=0").await;
    assert_eq!(answer.status, 409, "{answer:?}");
    assert!(answer.body.contains("DELETE /v1/identify/e"), "{answer:?}");
    let seen = status(&server).await;
    assert_eq!(seen["waiting_count"], 7, "{seen}");
    for task in twilight {
        task.abort();
    }
}

/// Review 4: two servers on one namespace, each shard's client polling its key on
/// them in turn (a load balancer without sticky sessions): every shard is granted once,
/// one unit each (before: 8 units for 4 shards), a retry anywhere learns its key was
/// answered, and a `DELETE` at the server not holding a key cancels it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_4_a_key_spends_once_across_the_servers_of_a_namespace() {
    let redis = redis_server::Server::start(false);
    let servers = [on_redis(&redis, 99, 200), on_redis(&redis, 99, 200)];
    for server in &servers {
        ready(server).await;
    }
    let at = [servers[0].address, servers[1].address];
    let mut tasks = Vec::new();
    for shard in 0..4u32 {
        tasks.push(tokio::spawn(async move {
            for poll in 0usize.. {
                let path = format!("/v1/identify?shard={shard}&key=s{shard}&wait_ms=300");
                let (code, body) = v1(at[(poll + shard as usize) % 2], "POST", &path).await;
                if code == 200 {
                    return (shard, body["granted_at"].as_u64().unwrap());
                }
                assert_eq!(code, 202, "{body}");
                assert!(poll < 200, "never granted");
            }
            unreachable!()
        }));
    }
    let mut granted = Vec::new();
    for task in tasks {
        granted.push(task.await.unwrap());
    }
    // Long enough for any second ticket of a key to be granted.
    sleep(Duration::from_millis(1500)).await;
    let remaining = status(&servers[0]).await["remaining"].as_u64().unwrap();
    assert_eq!(remaining, 95, "one unit per shard: {granted:?}");
    // A retry of an answered key, at either server: 410 with its instant.
    for server in at {
        let (code, body) = v1(server, "POST", "/v1/identify?shard=0&key=s0&wait_ms=0").await;
        assert_eq!(code, 410, "{body}");
        assert_eq!(body["granted_at"], granted[0].1, "{body}");
    }
    // A key waiting on one server (the bucket busy) is cancelled by a DELETE at the
    // other.
    identify(at[0], 6).await;
    let (code, _) = v1(at[0], "POST", "/v1/identify?shard=7&key=late&wait_ms=0").await;
    assert_eq!(code, 202);
    assert_eq!(v1(at[1], "DELETE", "/v1/identify/late").await.0, 204);
    sleep(Duration::from_millis(1500)).await;
    let seen = status(&servers[0]).await;
    let waiting: Vec<u64> = seen["waiting"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["shard"].as_u64().unwrap())
        .collect();
    assert!(!waiting.contains(&7), "{seen}");
}

/// Review 4, a server's death: a key held by a server that is killed is taken over by
/// another server of the namespace within seconds (the holder renews its keys in Redis
/// while their polls are open, and they lapse shortly after it stops), and the shard
/// is served there once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_4_a_key_held_by_a_killed_server_is_taken_over_within_seconds() {
    let redis = redis_server::Server::start(false);
    let mut a = on_redis(&redis, 50, 3000);
    let b = on_redis(&redis, 50, 3000);
    ready(&a).await;
    ready(&b).await;
    identify(a.address, 9).await;
    // Shard 0 long-polls its key on A, behind the busy bucket; A is killed.
    let at_a = a.address;
    let polled = tokio::spawn(async move {
        send(
            at_a,
            "POST",
            "/v1/identify?shard=0&key=k&wait_ms=20000",
            &[],
        )
        .await
    });
    sleep(Duration::from_millis(300)).await;
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    assert_eq!(polled.await.unwrap(), None, "A died before its answer");
    // Its client asks B with the same key until served.
    let asked = Instant::now();
    loop {
        let (code, body) = v1(b.address, "POST", "/v1/identify?shard=0&key=k&wait_ms=2000").await;
        if code == 200 {
            break;
        }
        assert_eq!(code, 202, "{body}");
        assert!(
            asked.elapsed() < Duration::from_secs(12),
            "still not served: {body}"
        );
    }
    sleep(Duration::from_millis(500)).await;
    let remaining = status(&b).await["remaining"].as_u64().unwrap();
    assert!(
        remaining >= 47,
        "shard 9, shard 0, and at most A's void grant: {remaining}"
    );
}

/// A ticket nobody polls for within its lease is cancelled: nothing spent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_ticket_is_cancelled_after_its_lease() {
    let server = ServerProcess::start(&[
        "--total",
        "10",
        "--remaining",
        "2",
        "--interval-ms",
        "400",
        "--ticket-lease-ms",
        "100",
    ]);
    ready(&server).await;
    let at = server.address;
    assert_eq!(v1(at, "POST", "/v1/identify?shard=0&key=a").await.0, 200);
    // Shard 1 waits for the bucket; its client polls once and goes.
    assert_eq!(
        v1(at, "POST", "/v1/identify?shard=1&key=b&wait_ms=10")
            .await
            .0,
        202
    );
    sleep(Duration::from_millis(600)).await;
    let seen = status(&server).await;
    assert_eq!(seen["waiting"].as_array().unwrap().len(), 0, "{seen}");
    assert_eq!(
        seen["remaining"], 1,
        "its turn came and went: nothing spent"
    );
}

/// Hold mode over HTTP: a grant holds its bucket until the native API releases it
/// (`DELETE` of its key) or, on twilight's route (which has no release), until the
/// hold's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_mode_frees_a_bucket_at_its_release_or_its_timeout() {
    let server = ServerProcess::start(&["--interval-ms", "100", "--hold-timeout-ms", "60000"]);
    ready(&server).await;
    let at = server.address;
    assert_eq!(v1(at, "POST", "/v1/identify?shard=0&key=a").await.0, 200);
    // Held far past the interval: shard 1 waits, the status says the bucket is held.
    let (code, body) = v1(at, "POST", "/v1/identify?shard=1&key=b&wait_ms=400").await;
    assert_eq!(code, 202, "{body}");
    let free = status(&server).await["bucket_free_in_ms"][0]
        .as_u64()
        .unwrap();
    assert!(free > 50_000, "held for the timeout: {free} ms");
    // The release frees the bucket: shard 1 is granted after it, long before 60 s.
    let released = Instant::now();
    assert_eq!(v1(at, "DELETE", "/v1/identify/a").await.0, 204);
    let (code, body) = v1(at, "POST", "/v1/identify?shard=1&key=b&wait_ms=10000").await;
    assert_eq!(
        (code, body["granted"].clone()),
        (200, true.into()),
        "{body}"
    );
    assert!(released.elapsed() < Duration::from_secs(10));
    assert_eq!(v1(at, "DELETE", "/v1/identify/b").await.0, 204);

    // twilight's route cannot release: its hold runs to the timeout.
    let server = ServerProcess::start(&["--interval-ms", "100", "--hold-timeout-ms", "700"]);
    ready(&server).await;
    let gap = gap_between_two_grants(&server).await;
    assert!(gap >= Duration::from_millis(690), "{gap:?}");
}

/// An open server cannot be made to keep request keys without bound: a new key past
/// `--max-tickets` gets `429` and changes nothing; a key it holds is still served, and
/// a freed place takes a new key again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_keys_past_the_cap_get_429_and_change_nothing() {
    let server = ServerProcess::start(&[
        "--interval-ms",
        "60000",
        "--max-tickets",
        "2",
        "--max-tickets-per-client",
        "2",
    ]);
    ready(&server).await;
    let at = server.address;
    // The bucket is busy for a minute (a fresh server's first interval).
    assert_eq!(
        v1(at, "POST", "/v1/identify?shard=0&key=a&wait_ms=0")
            .await
            .0,
        202
    );
    assert_eq!(
        v1(at, "POST", "/v1/identify?shard=1&key=b&wait_ms=0")
            .await
            .0,
        202
    );
    let answer = send(at, "POST", "/v1/identify?shard=2&key=c&wait_ms=0", &[])
        .await
        .unwrap();
    assert_eq!(answer.status, 429, "{answer:?}");
    assert!(answer.body.contains("--max-tickets"), "{}", answer.body);
    let seen = status(&server).await;
    assert_eq!(seen["waiting"].as_array().unwrap().len(), 2, "{seen}");
    // Keys it holds are polled as before.
    assert_eq!(
        v1(at, "POST", "/v1/identify?shard=1&key=b&wait_ms=0")
            .await
            .0,
        202
    );
    assert_eq!(
        v1(at, "POST", "/v1/identify?shard=0&key=a&wait_ms=0")
            .await
            .0,
        202
    );
    // A cancel makes room.
    assert_eq!(v1(at, "DELETE", "/v1/identify/b").await.0, 204);
    assert_eq!(
        v1(at, "POST", "/v1/identify?shard=2&key=c&wait_ms=0")
            .await
            .0,
        202
    );
    // A cap of zero is refused at start.
    let out = Command::new(env!("CARGO_BIN_EXE_identify-queue-server"))
        .args(["--port", "0", "--max-tickets", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("`--max-tickets`"));
}

// The server review's findings (`server-review.md`), each as its scenario against the
// real binary.

/// The binary with `args` exactly (no `--host` or `--port` added), its standard error
/// written to `log`.
fn spawn_logged(args: &[&str], log: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_identify-queue-server"))
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).expect("a log file"))
        .spawn()
        .expect("the server binary")
}

/// Runs the binary with `args`, which must make it refuse to start: its exit status
/// (within 5 s) and what it said.
fn refused_at_start(args: &[&str]) -> (std::process::ExitStatus, String) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let mut child = spawn_logged(args, &log);
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "started with {args:?}: {}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, std::fs::read_to_string(&log).unwrap())
}

/// Review 7: `/readyz` (open even with `--auth-token`) and the log quoted the Redis URL
/// with its password. Now URLs show `***@` for their user information.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_7_no_secret_in_readyz_or_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let nowhere = redis_server::free_port();
    let url = format!("redis://default:hunter2-secret@127.0.0.1:{nowhere}/0");
    let server = ServerProcess::listening(spawn_logged(
        &["--port", "0", "--redis", &url, "--auth-token", "s3cret"],
        &log,
    ));
    // Redis is out of reach: not ready, and the reason names the server tried.
    let deadline = Instant::now() + Duration::from_secs(10);
    let readyz = loop {
        let answer = get(server.address, "/readyz", &[]).await.unwrap();
        if answer.body.contains("Redis") || Instant::now() > deadline {
            break answer;
        }
        sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(readyz.status, 503, "{readyz:?}");
    assert!(readyz.body.contains("***@127.0.0.1"), "{readyz:?}");
    assert!(!readyz.body.contains("hunter2"), "{readyz:?}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("***@127.0.0.1"), "{logged}");
    assert!(!logged.contains("hunter2"), "{logged}");
}

/// Review 10: `--hold-timeout-ms 0` was accepted, and then nothing could ever be
/// delivered (each request retried every 50 ms, for ever). A hold timeout below the
/// interval is refused at start, naming the flag.
#[test]
fn review_10_a_hold_timeout_below_the_interval_is_refused_at_start() {
    for hold in ["0", "4999"] {
        let (status, said) = refused_at_start(&["--port", "0", "--hold-timeout-ms", hold]);
        assert!(!status.success());
        assert!(said.contains("--hold-timeout-ms"), "{said}");
    }
}

/// Review 8, the token: tokens no client can send (empty, a space, a control
/// character) were accepted, and the server ran "ready" with every client refused. Now
/// refused at start; a trailing newline (a token read from a file) is trimmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_8_a_token_no_client_can_send_is_refused_at_start() {
    for token in ["", "two words", "bell\u{7}", "tab\there"] {
        let (status, said) = refused_at_start(&["--port", "0", "--auth-token", token]);
        assert!(!status.success(), "{token:?}");
        assert!(said.contains("--auth-token"), "{token:?}: {said}");
    }
    let server = ServerProcess::start(&["--auth-token", "s3cret\n"]);
    let status = |auth: &'static str| async move {
        get(server.address, "/v1/status", &[("Authorization", auth)])
            .await
            .unwrap()
            .status
    };
    assert_eq!(status("Bearer s3cret").await, 200);
}

/// Review 18: the scheme `bearer` (RFC 9110: case-insensitive) was refused; the token
/// is compared in constant time (by code: a timing test would only measure noise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_18_the_bearer_scheme_is_case_insensitive() {
    let server = ServerProcess::start(&["--auth-token", "s3cret"]);
    for (auth, expected) in [
        ("bearer s3cret", 200),
        ("BEARER s3cret", 200),
        ("Bearer s3cret", 200),
        ("Bearer s3cre", 401),
        ("Bearer s3cret2", 401),
        ("Basic s3cret", 401),
        ("s3cret", 401),
    ] {
        let answer = get(server.address, "/v1/status", &[("Authorization", auth)])
            .await
            .unwrap();
        assert_eq!(answer.status, expected, "{auth}");
    }
}

/// Issue 25, the default address: the server listened on every interface by default,
/// and anyone who reached it could spend the budget. Now loopback by default, and
/// another address without a token says so in the log.
#[test]
fn the_default_address_is_loopback_and_an_open_one_warns() {
    let dir = tempfile::tempdir().unwrap();
    for (args, loopback) in [
        (&["--port", "0"][..], true),
        (&["--port", "0", "--host", "0.0.0.0"][..], false),
    ] {
        let log = dir.path().join("stderr");
        let address = ServerProcess::listening(spawn_logged(args, &log)).address;
        assert_eq!(address.ip().is_loopback(), loopback, "{address}");
        let logged = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            logged.contains("without `--auth-token`"),
            !loopback,
            "{logged}"
        );
    }
}

/// Review 16: Discord's answer was read whole, however large: a proxy or a fake that
/// answers without end (here up to 64 MiB, then it stops) grew the server to 3.6 GiB
/// in 10 s. Now it reads at most 64 KiB, and says why it gave up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_16_discords_answer_is_read_with_a_cap() {
    let endless = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = format!("http://{}", endless.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = endless.accept().await {
            tokio::spawn(async move {
                let mut head = [0u8; 1024];
                let _ = stream.read(&mut head).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n[")
                    .await;
                let chunk = vec![b' '; 64 * 1024];
                for _ in 0..1024 {
                    if stream.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let server = ServerProcess::start(&["--discord-token", "t", "--discord-api", &api]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let readyz = loop {
        let answer = get(server.address, "/readyz", &[]).await.unwrap();
        if answer.body.contains("bytes") || Instant::now() > deadline {
            break answer;
        }
        sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(readyz.status, 503);
    assert!(readyz.body.contains("over 65536 bytes"), "{readyz:?}");
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|kib| kib.trim().trim_end_matches(" kB").parse().ok())
        .unwrap();
    assert!(
        rss_kib < 48 * 1024,
        "the server's memory peaked at {rss_kib} KiB"
    );
}

/// Review 17: a percent-encoded key could not be cancelled (`POST` kept it raw,
/// `DELETE` decoded the path): `key=a%20b` then `DELETE` got `404`, and the request
/// waited on. Now a key is decoded alike in both, and only `A-Z a-z 0-9 - . _ ~` is
/// taken (`400` otherwise, in both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_17_a_key_reads_alike_in_post_and_delete() {
    let server = ServerProcess::start(&["--interval-ms", "60000"]);
    ready(&server).await;
    let at = server.address;
    // The bucket is busy for a minute (a fresh server's first interval); shard 1 waits
    // under an encoded key.
    let (code, _) = v1(at, "POST", "/v1/identify?shard=1&key=a%2Db.c_d~e&wait_ms=0").await;
    assert_eq!(code, 202);
    assert_eq!(v1(at, "DELETE", "/v1/identify/a-b.c_d~e").await.0, 204);
    assert_eq!(
        status(&server).await["waiting"].as_array().unwrap().len(),
        0
    );
    for key in ["a%20b", "a+b", "%C3%A9", "a%2Fb", "%zz", &"k".repeat(129)] {
        let path = format!("/v1/identify?shard=1&key={key}&wait_ms=0");
        let (code, body) = v1(at, "POST", &path).await;
        assert_eq!(code, 400, "{key}: {body}");
    }
    assert_eq!(v1(at, "DELETE", "/v1/identify/a%20b").await.0, 400);
}

/// Review 19: flags that can never work ran for ever, unready, retrying an error that
/// cannot go away, or were taken without a word (an interval of 2^64-1 ms: one grant,
/// then the bucket blocked for good). Each now stops the server at start, naming the
/// flag.
#[test]
fn review_19_flags_that_cannot_work_stop_the_server_at_start() {
    let max = u64::MAX.to_string();
    for (args, flag) in [
        (&["--redis", "garbage"][..], "--redis"),
        (
            &["--redis", "redis://127.0.0.1:1/0", "--namespace", ""][..],
            "--namespace",
        ),
        (
            &["--redis", "redis://127.0.0.1:1/0", "--namespace", "a}b"][..],
            "--namespace",
        ),
        (
            &["--discord-api", "not a url", "--discord-token", "t"][..],
            "--discord-api",
        ),
        (&["--discord-token", ""][..], "--discord-token"),
        (&["--interval-ms", &max][..], "--interval-ms"),
        (&["--ticket-lease-ms", &max][..], "--ticket-lease-ms"),
        (&["--ticket-lease-ms", "0"][..], "--ticket-lease-ms"),
    ] {
        let mut all = vec!["--port", "0"];
        all.extend_from_slice(args);
        let (status, said) = refused_at_start(&all);
        assert!(!status.success(), "{args:?}");
        assert!(said.contains(flag), "{args:?}: {said}");
    }
}

/// Review 2: in cluster mode a server (re)started more than the grace (30 s) after the
/// grants of the day re-asserted its static `--remaining` on the shared namespace: 8
/// IDENTIFYs allowed in a day of 5. Now static flags seed only a namespace without
/// state; a server joining one with state takes it as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_2_a_static_limit_never_overwrites_a_shared_budget() {
    let redis = redis_server::Server::start(false);
    let first = on_redis(&redis, 5, 50);
    ready(&first).await;
    for shard in 0..3u32 {
        let answer = get(first.address, &format!("/?shard={shard}"), &[]).await;
        assert_eq!(answer.map(|a| a.body), Some(GRANTED.to_owned()));
    }
    assert_eq!(status(&first).await["remaining"], 2);
    // Past the grace, a second server joins with the same flags (or the first one
    // restarts: the same).
    sleep(Duration::from_secs(31)).await;
    let second = on_redis(&redis, 5, 50);
    ready(&second).await;
    assert_eq!(status(&second).await["remaining"], 2);
    let mut granted = 0;
    for shard in 3..8u32 {
        let path = format!("/?shard={shard}");
        let asked = timeout(Duration::from_millis(1000), get(second.address, &path, &[]));
        if asked.await.is_ok() {
            granted += 1;
        }
    }
    assert_eq!(granted, 2, "a day of 5 allowed {}", 3 + granted);
}

/// Review 14: a native poll waited for the server to be ready, whatever its
/// `wait_ms`: `wait_ms=1000` was still open after 65 s (past proxies' 60 s). Now it is
/// answered within its wait, with what the server waits for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn review_14_a_native_poll_is_answered_within_its_wait_ready_or_not() {
    let nowhere = format!("http://127.0.0.1:{}", redis_server::free_port());
    let server = ServerProcess::start(&["--discord-token", "t", "--discord-api", &nowhere]);
    let asked = Instant::now();
    let answered = timeout(
        Duration::from_secs(5),
        v1(
            server.address,
            "POST",
            "/v1/identify?shard=0&key=k&wait_ms=300",
        ),
    )
    .await
    .expect("answered within its wait");
    assert!(asked.elapsed() >= Duration::from_millis(300));
    let (code, body) = answered;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["granted"], false);
    assert_eq!(body["ready"], false);
    assert!(
        body["reason"].as_str().unwrap().contains("gateway/bot"),
        "{body}"
    );
}
