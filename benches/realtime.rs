//! Realtime benchmark: how much memory idle WebSocket connections cost the server, and how long
//! one organization event takes from its change to each of many subscribers.
//!
//! ```sh
//! cargo build --release
//! cargo bench --bench realtime -- --connections 10000 --subscribers 1000 --events 20
//! ```
//! It starts `target/release/keel` (`--keel` names another binary) on the embedded defaults,
//! or on PostgreSQL and Redis when `KEEL_BENCH_DATABASE_URL` / `KEEL_BENCH_REDIS_URL` are set;
//! with `--replicas 2` (which needs both) the subscribers sit on a second process and the
//! changes are made on the first, so every event crosses Redis. The server's resident memory
//! is read from /proc before and after the idle connections open. Latency runs from sending
//! the change (so it includes the change's own request) to each subscriber's receipt.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const PASSWORD: &str = "Str0ng!Passw0rd";

struct Options {
    keel: String,
    connections: usize,
    subscribers: usize,
    events: usize,
    replicas: usize,
}

fn options() -> Options {
    let mut options = Options {
        keel: "target/release/keel".into(),
        connections: 10_000,
        subscribers: 1_000,
        events: 20,
        replicas: 1,
    };
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let mut pairs = arguments.iter();
    while let Some(flag) = pairs.next() {
        let mut value = || pairs.next().cloned().unwrap_or_default();
        match flag.as_str() {
            "--keel" => options.keel = value(),
            "--connections" => options.connections = value().parse().expect("--connections N"),
            "--subscribers" => options.subscribers = value().parse().expect("--subscribers N"),
            "--events" => options.events = value().parse().expect("--events N"),
            "--replicas" => options.replicas = value().parse().expect("--replicas 1|2"),
            // cargo bench passes --bench.
            _ => {}
        }
    }
    options.subscribers = options.subscribers.min(options.connections);
    options
}

/// A Keel process, stopped when dropped.
struct Server {
    child: Child,
    url: String,
    _data: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

async fn start(options: &Options, shared: &[(&str, String)]) -> Server {
    let data = tempfile::tempdir().expect("a data directory");
    let port = free_port();
    let mut command = Command::new(&options.keel);
    command
        .arg("serve")
        .env("KEEL_LISTEN", format!("127.0.0.1:{port}"))
        .env("KEEL_DATA_DIR", data.path())
        .env("KEEL_DEPENDENCY_REGISTRY_URL", "off")
        .env("KEEL_RATE_LIMIT_AUTH_PER_MINUTE", "1000000")
        .env("KEEL_RATE_LIMIT_ANONYMOUS_PER_MINUTE", "1000000")
        .env("KEEL_RATE_LIMIT_USER_PER_MINUTE", "1000000")
        .env("KEEL_RATE_LIMIT_ORGANIZATION_PER_MINUTE", "1000000")
        .env("KEEL_REALTIME_MAX_CONNECTIONS_PER_USER", "1000000")
        .env("KEEL_REALTIME_MAX_CONNECTIONS_PER_IP", "1000000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    for (name, value) in shared {
        command.env(name, value);
    }
    let child = command.spawn().unwrap_or_else(|error| {
        panic!(
            "starting {} ({error}); cargo build --release first",
            options.keel
        )
    });
    let url = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if http.get(format!("{url}/health")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Server {
        child,
        url,
        _data: data,
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: Option<&str>,
    body: Value,
) -> Value {
    let mut request = http.request(method, url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("a request");
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{status}: {answer}");
    answer
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(url: &str, token: &str, channel: &str) -> Socket {
    let mut request = format!("{}/api/v1/ws", url.replacen("http://", "ws://", 1))
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut socket, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("a WebSocket");
    let subscribe = json!({ "type": "subscribe", "channel": channel });
    socket
        .send(Message::Text(subscribe.to_string().into()))
        .await
        .unwrap();
    // `connected`, then `subscribed`.
    for _ in 0..2 {
        socket.next().await.expect("open").expect("a frame");
    }
    socket
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted[index]
}

#[tokio::main]
async fn main() {
    // reqwest is built without a default TLS provider: the process uses aws-lc-rs throughout.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let options = options();
    let mut shared = vec![(
        "KEEL_JWT_HS256_SECRET",
        "a-benchmark-secret-shared-by-the-replicas".to_owned(),
    )];
    // Tokens name their issuer: the replicas must be one Keel to the client.
    shared.push(("KEEL_PUBLIC_URL", "http://keel.bench".to_owned()));
    shared.push((
        "KEEL_SECRET_KEY",
        "YmVuY2htYXJrIHNlY3JldCBzaGFyZWQgYnkgdGhlIHJlcGxpY2Fz".to_owned(),
    ));
    let services = [
        ("KEEL_DATABASE_URL", "KEEL_BENCH_DATABASE_URL"),
        ("KEEL_REDIS_URL", "KEEL_BENCH_REDIS_URL"),
    ];
    for (setting, variable) in services {
        if let Ok(value) = std::env::var(variable) {
            shared.push((setting, value));
        }
    }
    assert!(
        options.replicas == 1 || shared.len() == 5,
        "--replicas 2 needs KEEL_BENCH_DATABASE_URL and KEEL_BENCH_REDIS_URL"
    );
    let writer = start(&options, &shared).await;
    let reader = if options.replicas > 1 {
        Some(start(&options, &shared).await)
    } else {
        None
    };
    let subscribed_to = reader.as_ref().unwrap_or(&writer);
    println!(
        "backend: {}, replicas: {}",
        if shared.len() == 5 {
            "PostgreSQL + Redis"
        } else {
            "SQLite + memory"
        },
        options.replicas
    );

    let http = reqwest::Client::new();
    let email = format!("bench-{}@example.com", uuid::Uuid::now_v7().simple());
    call(
        &http,
        reqwest::Method::POST,
        format!("{}/api/v1/auth/register", writer.url),
        None,
        json!({ "email": email, "password": PASSWORD, "full_name": "Bench" }),
    )
    .await;
    let tokens = call(
        &http,
        reqwest::Method::POST,
        format!("{}/api/v1/auth/login", writer.url),
        None,
        json!({ "email": email, "password": PASSWORD }),
    )
    .await;
    let token = tokens["access_token"].as_str().unwrap().to_owned();
    let organization = call(
        &http,
        reqwest::Method::POST,
        format!("{}/api/v1/organizations", writer.url),
        Some(&token),
        json!({ "name": "Bench", "slug": format!("bench-{}", uuid::Uuid::now_v7().simple()) }),
    )
    .await;
    let organization_id = organization["id"].as_str().unwrap().to_owned();
    let channel = format!("organization:{organization_id}");

    // Idle connections: all but the subscribers listen to their user channel only. Measured
    // from an idle server: past the 5 s after which hashing threads return their memory.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let pid = subscribed_to.child.id();
    let before = rss_kib(pid);
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(options.connections);
    let url = subscribed_to.url.clone();
    let mut opening = futures_util::stream::iter(0..options.connections)
        .map(|index| {
            let (url, token) = (url.clone(), token.clone());
            let channel = if index < options.subscribers {
                channel.clone()
            } else {
                "user".to_owned()
            };
            async move { open(&url, &token, &channel).await }
        })
        // In order: the first `subscribers` sockets are the organization's subscribers.
        .buffered(64);
    while let Some(socket) = opening.next().await {
        sockets.push(socket);
    }
    let opened_in = started.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = rss_kib(pid);
    println!(
        "idle connections: {} opened in {:.1} s; server RSS {:.1} MiB before, {:.1} MiB after: {:.1} KiB per connection",
        sockets.len(),
        opened_in.as_secs_f64(),
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        after.saturating_sub(before) as f64 / sockets.len().max(1) as f64,
    );

    // Fan-out: each change of the organization reaches every subscriber.
    let latencies: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let sent_at: Arc<Mutex<Instant>> = Arc::new(Mutex::new(Instant::now()));
    let mut listeners = Vec::new();
    let mut idle = sockets.split_off(options.subscribers);
    for mut socket in sockets {
        let (latencies, sent_at) = (latencies.clone(), sent_at.clone());
        listeners.push(tokio::spawn(async move {
            while let Some(Ok(frame)) = socket.next().await {
                if let Message::Text(text) = frame
                    && text.as_str().contains("\"organization.updated\"")
                {
                    let elapsed = sent_at.lock().unwrap().elapsed();
                    latencies.lock().unwrap().push(elapsed);
                }
            }
        }));
    }
    for round in 0..options.events {
        *sent_at.lock().unwrap() = Instant::now();
        call(
            &http,
            reqwest::Method::PUT,
            format!("{}/api/v1/organizations/{organization_id}", writer.url),
            Some(&token),
            json!({ "name": format!("Bench {round}") }),
        )
        .await;
        let wanted = (round + 1) * options.subscribers;
        let deadline = Instant::now() + Duration::from_secs(10);
        while latencies.lock().unwrap().len() < wanted && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut measured = latencies.lock().unwrap().clone();
    measured.sort();
    println!(
        "fan-out: {} events × {} subscribers: {} receipts (expected {}); change to receipt p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        options.events,
        options.subscribers,
        measured.len(),
        options.events * options.subscribers,
        percentile(&measured, 0.50).as_secs_f64() * 1e3,
        percentile(&measured, 0.99).as_secs_f64() * 1e3,
        measured.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    for listener in listeners {
        listener.abort();
    }
    for socket in &mut idle {
        let _ = socket.close(None).await;
    }
}
