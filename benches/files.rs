//! File benchmark: upload and download throughput through Keel against copying the same bytes
//! on the same disk, and the server's resident memory while a large upload streams through.
//!
//! ```sh
//! cargo build --release
//! cargo bench --bench files -- --mib 1024
//! ```
//! It starts `target/release/keel` (`--keel` names another binary) on the embedded defaults
//! with a data directory under `--dir` (default: the system's temporary directory), uploads
//! `--mib` MiB of text over REST (multipart, streamed from memory by the client), downloads it
//! through its signed URL, and times `cp` and `cat` of a file of the same size in the same
//! directory as the floors. RSS is sampled from /proc every 20 ms during the upload.

use futures_util::StreamExt;
use serde_json::{Value, json};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const PASSWORD: &str = "Str0ng!Passw0rd";
const CHUNK: usize = 256 * 1024;

struct Options {
    keel: String,
    mib: u64,
    dir: std::path::PathBuf,
}

fn options() -> Options {
    let mut options = Options {
        keel: "target/release/keel".into(),
        mib: 1024,
        dir: std::env::temp_dir(),
    };
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let mut pairs = arguments.iter();
    while let Some(flag) = pairs.next() {
        let mut value = || pairs.next().cloned().unwrap_or_default();
        match flag.as_str() {
            "--keel" => options.keel = value(),
            "--mib" => options.mib = value().parse().expect("--mib N"),
            "--dir" => options.dir = value().into(),
            // cargo bench passes --bench.
            _ => {}
        }
    }
    options
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

async fn call(http: &reqwest::Client, url: String, token: Option<&str>, body: Value) -> Value {
    let mut request = http.post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("a request");
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{status}: {answer}");
    answer
}

fn mib_per_second(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1024.0 / 1024.0 / elapsed.as_secs_f64()
}

/// Runs a shell command, answering how long it took.
fn timed(command: &str) -> Duration {
    let started = Instant::now();
    let status = Command::new("sh").arg("-c").arg(command).status().unwrap();
    assert!(status.success(), "{command}");
    started.elapsed()
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let options = options();
    let size = options.mib * 1024 * 1024;
    let work = tempfile::tempdir_in(&options.dir).expect("a work directory");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let mut child = Command::new(&options.keel)
        .arg("serve")
        .env("KEEL_LISTEN", format!("127.0.0.1:{port}"))
        .env("KEEL_PUBLIC_URL", &url)
        .env("KEEL_DATA_DIR", work.path().join("data"))
        .env("KEEL_DEPENDENCY_REGISTRY_URL", "off")
        .env("KEEL_MAX_FILE_SIZE_MB", (options.mib + 1).to_string())
        .env("KEEL_MAX_USER_STORAGE_MB", (options.mib + 1).to_string())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("target/release/keel; cargo build --release first");
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if http.get(format!("{url}/health")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let email = "bench@example.com";
    let register = json!({ "email": email, "password": PASSWORD, "full_name": "Bench" });
    call(&http, format!("{url}/api/v1/auth/register"), None, register).await;
    let login = json!({ "email": email, "password": PASSWORD });
    let tokens = call(&http, format!("{url}/api/v1/auth/login"), None, login).await;
    let token = tokens["access_token"].as_str().unwrap().to_owned();

    // Past the hashing threads' idle release, so that RSS is the server's own.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let pid = child.id();
    let before = rss_kib(pid);
    let peak = Arc::new(AtomicU64::new(before));
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let chunk = bytes::Bytes::from(vec![b'k'; CHUNK]);
    let chunks = size.div_ceil(CHUNK as u64);
    let body =
        futures_util::stream::iter(0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone()));
    let part = reqwest::multipart::Part::stream_with_length(
        reqwest::Body::wrap_stream(body),
        chunks * CHUNK as u64,
    )
    .file_name("big.txt")
    .mime_str("text/plain")
    .unwrap();
    let form = reqwest::multipart::Form::new().part("file", part);
    let started = Instant::now();
    let response = http
        .post(format!("{url}/api/v1/files/upload"))
        .bearer_auth(&token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let uploaded_in = started.elapsed();
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    let status = response.status();
    let file: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{status}: {file}");
    let stored = file["size"].as_str().unwrap().parse::<u64>().unwrap();

    let id = file["id"].as_str().unwrap();
    let link = http
        .get(format!("{url}/api/v1/files/{id}/download"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let started = Instant::now();
    let mut download = http
        .get(link["download_url"].as_str().unwrap())
        .send()
        .await
        .unwrap()
        .bytes_stream();
    let mut received = 0u64;
    while let Some(chunk) = download.next().await {
        received += chunk.unwrap().len() as u64;
    }
    let downloaded_in = started.elapsed();
    assert_eq!(received, stored);
    let _ = child.kill();
    let _ = child.wait();

    // Floors: the same bytes copied and read on the same disk.
    let source = work.path().join("floor.txt");
    let copy = work.path().join("floor-copy.txt");
    std::fs::write(&source, vec![b'k'; stored as usize]).unwrap();
    let copied_in = timed(&format!(
        "cp {} {} && sync",
        source.display(),
        copy.display()
    ));
    let read_in = timed(&format!("cat {} > /dev/null", copy.display()));

    println!(
        "upload {} MiB: {:.0} MiB/s (cp + sync {:.0} MiB/s: {:.2}×); server RSS {:.1} MiB before, peak {:.1} MiB during (+{:.1} MiB)",
        stored / 1024 / 1024,
        mib_per_second(stored, uploaded_in),
        mib_per_second(stored, copied_in),
        copied_in.as_secs_f64() / uploaded_in.as_secs_f64(),
        before as f64 / 1024.0,
        peak.load(Ordering::Relaxed) as f64 / 1024.0,
        (peak.load(Ordering::Relaxed) - before) as f64 / 1024.0,
    );
    println!(
        "download: {:.0} MiB/s (cat {:.0} MiB/s: {:.2}×)",
        mib_per_second(stored, downloaded_in),
        mib_per_second(stored, read_in),
        read_in.as_secs_f64() / downloaded_in.as_secs_f64(),
    );
}
