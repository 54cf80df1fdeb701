//! File benchmark: upload and download throughput through Keel against the storage's own
//! floor, and the server's resident memory while a large upload streams through.
//!
//! ```sh
//! cargo build --release
//! cargo bench --bench files -- --mib 1024
//! cargo bench --bench files -- --mib 1024 --s3s-fs ~/.cache/keel-ci/s3s-fs-0.14.1/bin/s3s-fs
//! ```
//! It starts `target/release/keel` (`--keel` names another binary) with a data directory under
//! `--dir` (default: the system's temporary directory), uploads `--mib` MiB of text over REST
//! (multipart) and again over gRPC (`UploadFile`), both streamed from memory by the client, and
//! downloads the first through its URL. RSS is sampled from /proc every 20 ms during each
//! upload. Files go to local disk, whose floors are `cp` + `sync` and `cat` of a file of the
//! same size in the same directory; or, with `--s3s-fs`, to that S3 server started on
//! loopback, whose floors are a PUT and a GET of the same bytes by the same S3 client library
//! (`minio`) straight to it.

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
    s3s_fs: Option<String>,
}

fn options() -> Options {
    let mut options = Options {
        keel: "target/release/keel".into(),
        mib: 1024,
        dir: std::env::temp_dir(),
        s3s_fs: None,
    };
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let mut pairs = arguments.iter();
    while let Some(flag) = pairs.next() {
        let mut value = || pairs.next().cloned().unwrap_or_default();
        match flag.as_str() {
            "--keel" => options.keel = value(),
            "--mib" => options.mib = value().parse().expect("--mib N"),
            "--dir" => options.dir = value().into(),
            "--s3s-fs" => options.s3s_fs = Some(value()),
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap()
}

/// `size` bytes of text, streamed in `CHUNK`s.
fn text(size: u64) -> impl futures_util::Stream<Item = bytes::Bytes> + Send + 'static {
    let chunk = bytes::Bytes::from(vec![b'k'; CHUNK]);
    futures_util::stream::iter(0..size.div_ceil(CHUNK as u64)).map(move |_| chunk.clone())
}

/// Runs `upload` while sampling the server's RSS: how long it took and the peak RSS in KiB.
async fn measured<T>(pid: u32, upload: impl std::future::Future<Output = T>) -> (T, Duration, u64) {
    let peak = Arc::new(AtomicU64::new(rss_kib(pid)));
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
    let started = Instant::now();
    let answer = upload.await;
    let elapsed = started.elapsed();
    sampling.store(false, Ordering::Relaxed);
    let _ = sampler.await;
    (answer, elapsed, peak.load(Ordering::Relaxed))
}

async fn rest_upload(http: &reqwest::Client, url: &str, token: &str, size: u64) -> Value {
    let body = text(size).map(Ok::<_, std::io::Error>);
    let part = reqwest::multipart::Part::stream_with_length(reqwest::Body::wrap_stream(body), size)
        .file_name("big.txt")
        .mime_str("text/plain")
        .unwrap();
    let response = http
        .post(format!("{url}/api/v1/files/upload"))
        .bearer_auth(token)
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let file: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{status}: {file}");
    file
}

async fn grpc_upload(url: &str, token: &str, size: u64) {
    use keel::api::pb::keel::file::v1::file_service_client::FileServiceClient;
    use keel::api::pb::keel::file::v1::{UploadFileRequest, UploadHeader, upload_file_request};
    let header = UploadFileRequest {
        part: Some(upload_file_request::Part::Header(UploadHeader {
            filename: "big.txt".into(),
            ..Default::default()
        })),
    };
    let chunks = text(size).map(|chunk| UploadFileRequest {
        part: Some(upload_file_request::Part::Chunk(chunk)),
    });
    let mut request = tonic::Request::new(futures_util::stream::iter([header]).chain(chunks));
    let bearer = format!("Bearer {token}").parse().unwrap();
    request.metadata_mut().insert("authorization", bearer);
    let channel = tonic::transport::Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    FileServiceClient::new(channel)
        .upload_file(request)
        .await
        .expect("the gRPC upload");
}

/// The S3 server and the bucket's floors: a PUT and a GET of `size` bytes, straight to it.
struct S3Floor {
    server: std::process::Child,
    settings: keel::objects::S3Settings,
}

impl S3Floor {
    fn start(binary: &str, directory: &std::path::Path) -> Self {
        let port = free_port();
        let data = directory.join("s3");
        std::fs::create_dir_all(&data).unwrap();
        let server = Command::new(binary)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", "bench", "--secret-key", "bench-secret-key"])
            .arg(&data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("--s3s-fs names the s3s-fs binary");
        std::thread::sleep(Duration::from_millis(300));
        Self {
            server,
            settings: keel::objects::S3Settings {
                endpoint: format!("http://127.0.0.1:{port}"),
                bucket: "keel".into(),
                access_key: "bench".into(),
                secret_key: "bench-secret-key".into(),
                region: "us-east-1".into(),
            },
        }
    }

    /// How long a PUT and a GET of `size` bytes take through the same client library.
    async fn floors(&self, size: u64) -> (Duration, Duration) {
        use keel::domain::files::ObjectStore;
        let objects = keel::objects::S3Objects::connect(&self.settings)
            .await
            .unwrap();
        let started = Instant::now();
        objects
            .put("floor/object", text(size).map(Ok).boxed())
            .await
            .unwrap();
        let put = started.elapsed();
        let started = Instant::now();
        let mut bytes = objects.get("floor/object", 0, None).await.unwrap();
        while let Some(chunk) = bytes.next().await {
            chunk.unwrap();
        }
        (put, started.elapsed())
    }
}

#[tokio::main]
async fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let options = options();
    let size = options.mib * 1024 * 1024;
    let work = tempfile::tempdir_in(&options.dir).expect("a work directory");
    let mut s3 = options
        .s3s_fs
        .as_deref()
        .map(|binary| S3Floor::start(binary, work.path()));
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut keel = Command::new(&options.keel);
    keel.arg("serve")
        .env("KEEL_LISTEN", format!("127.0.0.1:{port}"))
        .env("KEEL_PUBLIC_URL", &url)
        .env("KEEL_DATA_DIR", work.path().join("data"))
        .env("KEEL_DEPENDENCY_REGISTRY_URL", "off")
        .env("KEEL_MAX_FILE_SIZE_MB", (options.mib + 1).to_string())
        .env(
            "KEEL_MAX_USER_STORAGE_MB",
            (2 * options.mib + 2).to_string(),
        )
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    if let Some(s3) = &s3 {
        keel.env("KEEL_S3_ENDPOINT", &s3.settings.endpoint)
            .env("KEEL_S3_ACCESS_KEY", &s3.settings.access_key)
            .env("KEEL_S3_SECRET_KEY", &s3.settings.secret_key);
    }
    let mut child = keel
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
    let (file, rest_in, rest_peak) = measured(pid, rest_upload(&http, &url, &token, size)).await;
    let stored = file["size"].as_str().unwrap().parse::<u64>().unwrap();
    let ((), grpc_in, grpc_peak) = measured(pid, grpc_upload(&url, &token, size)).await;

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

    let (storage, written_in, read_in) = match &s3 {
        Some(s3) => {
            let (put, get) = s3.floors(stored).await;
            ("raw S3 PUT / GET", put, get)
        }
        None => {
            // The same bytes copied and read on the same disk.
            let source = work.path().join("floor.txt");
            let copy = work.path().join("floor-copy.txt");
            std::fs::write(&source, vec![b'k'; stored as usize]).unwrap();
            let copied_in = timed(&format!(
                "cp {} {} && sync",
                source.display(),
                copy.display()
            ));
            let read_in = timed(&format!("cat {} > /dev/null", copy.display()));
            ("cp + sync / cat", copied_in, read_in)
        }
    };
    if let Some(s3) = s3.as_mut() {
        let _ = s3.server.kill();
        let _ = s3.server.wait();
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "{} MiB to {}; floor ({storage}) {:.0} / {:.0} MiB/s; server RSS {:.1} MiB before",
        stored / 1024 / 1024,
        if s3.is_some() { "S3" } else { "local disk" },
        mib_per_second(stored, written_in),
        mib_per_second(stored, read_in),
        mib(before),
    );
    for (door, elapsed, peak) in [("REST", rest_in, rest_peak), ("gRPC", grpc_in, grpc_peak)] {
        println!(
            "upload over {door}: {:.0} MiB/s ({:.2}× the floor); RSS peak {:.1} MiB (+{:.1} MiB)",
            mib_per_second(stored, elapsed),
            written_in.as_secs_f64() / elapsed.as_secs_f64(),
            mib(peak),
            mib(peak.saturating_sub(before)),
        );
    }
    println!(
        "download: {:.0} MiB/s ({:.2}× the floor)",
        mib_per_second(stored, downloaded_in),
        read_in.as_secs_f64() / downloaded_in.as_secs_f64(),
    );
}
