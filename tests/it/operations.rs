//! What operators meet: Redis and PostgreSQL restarts under a running Keel, `/health` and
//! gRPC health telling the same, a token on `/metrics`, HSTS behind https, and data files for
//! Keel's user alone.

use crate::harness::{Backend, TestApp, services_available, test_settings};
use serde_json::Value;
use std::time::Duration;
use tokio::process::{Child, Command};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// A Redis server this test owns, on its own port, so stopping it disturbs no other test.
struct PrivateRedis {
    port: u16,
    process: Option<Child>,
}

impl PrivateRedis {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Self {
            port,
            process: None,
        };
        redis.restart().await;
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn restart(&mut self) {
        let process = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--port", &self.port.to_string()])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server (Debian's redis-server package) on the PATH");
        self.process = Some(process);
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server did not start on port {}", self.port);
    }

    async fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill().await.unwrap();
        }
    }
}

/// A PostgreSQL cluster this test owns (Debian's binaries, `initdb` + `pg_ctl` in a temporary
/// directory, on its own port), so restarting it disturbs no other test.
struct PrivatePostgres {
    directory: tempfile::TempDir,
    port: u16,
}

impl PrivatePostgres {
    async fn start() -> Self {
        let directory = tempfile::tempdir().unwrap();
        // PostgreSQL will not run as root: the cluster belongs to the postgres user then.
        std::fs::set_permissions(
            directory.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Self { directory, port };
        cluster
            .run(
                "initdb",
                &["-U", "postgres", "--auth=trust", "--no-sync", "-D"],
            )
            .await;
        cluster.pg_ctl(&["start"]).await;
        cluster
    }

    fn data(&self) -> String {
        self.directory.path().join("data").display().to_string()
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    async fn pg_ctl(&self, action: &[&str]) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.directory.path().display()
        );
        let log = self.directory.path().join("log").display().to_string();
        let mut arguments = vec!["-w", "-m", "fast", "-l", &log, "-o", &options];
        arguments.extend_from_slice(action);
        arguments.push("-D");
        self.run("pg_ctl", &arguments).await;
    }

    /// Runs a PostgreSQL program with `arguments` and the data directory last.
    async fn run(&self, program: &str, arguments: &[&str]) {
        let binary = postgres_binary(program);
        let data = self.data();
        let mut command = if is_root().await {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(&binary);
            command
        } else {
            Command::new(&binary)
        };
        let output = command
            .args(arguments)
            .arg(&data)
            .output()
            .await
            .unwrap_or_else(|error| panic!("{}: {error}", binary.display()));
        assert!(
            output.status.success(),
            "{program} {arguments:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let binary = postgres_binary("pg_ctl");
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(&binary)
            .args(["stop", "-m", "immediate", "-D", &self.data()])
            .output()
            .or_else(|_| {
                std::process::Command::new(&binary)
                    .args(["stop", "-m", "immediate", "-D", &self.data()])
                    .output()
            });
    }
}

/// Debian's PostgreSQL program `name`, of the newest installed version.
fn postgres_binary(name: &str) -> std::path::PathBuf {
    let mut versions: Vec<_> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("Debian's PostgreSQL under /usr/lib/postgresql")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .collect();
    versions.sort();
    versions
        .last()
        .expect("a PostgreSQL version")
        .join("bin")
        .join(name)
}

async fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .await
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

async fn grpc_health(app: &TestApp) -> i32 {
    HealthClient::new(app.channel().await)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

/// Readiness (`/health/ready`).
async fn health(app: &TestApp) -> u16 {
    app.http
        .get(app.url("/health/ready"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keel_rides_out_a_redis_restart() {
    if !services_available() {
        return;
    }
    let mut redis = PrivateRedis::start().await;
    let url = redis.url();
    let app = TestApp::spawn_with(Backend::Embedded, |settings| {
        settings.redis_url = Some(url);
    })
    .await;
    let kept = app.signed_in("steady@example.com").await;
    let revoked = app.login("steady@example.com").await;
    let (status, _) = app
        .rest(
            reqwest::Method::POST,
            "/api/v1/auth/logout",
            &revoked.access,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(health(&app).await, 200);
    assert_eq!(grpc_health(&app).await, ServingStatus::Serving as i32);

    // Redis goes away: requests fail soon with 503 and Retry-After, never hang; both health
    // doors say so.
    redis.stop().await;
    let response = tokio::time::timeout(
        Duration::from_secs(15),
        app.get_with_token("/api/v1/auth/me", &kept.access),
    )
    .await
    .expect("a request during the outage answers instead of hanging");
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "CACHE_UNAVAILABLE");
    assert_eq!(health(&app).await, 503);
    assert_eq!(grpc_health(&app).await, ServingStatus::NotServing as i32);
    // Alive all the same: liveness restarts nothing for an outage of a backing service.
    let live = app.http.get(app.url("/health")).send().await.unwrap();
    assert_eq!(live.status(), 200);

    // Redis comes back empty: Keel reconnects by itself and revocations still hold, since the
    // database is their source of truth.
    redis.restart().await;
    let mut recovered = false;
    for _ in 0..100 {
        if health(&app).await == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(recovered, "Keel did not reconnect to Redis");
    assert_eq!(grpc_health(&app).await, ServingStatus::Serving as i32);
    assert_eq!(
        app.get_with_token("/api/v1/auth/me", &kept.access)
            .await
            .status(),
        200
    );
    let body: Value = app
        .get_with_token("/api/v1/auth/me", &revoked.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["reason"], "SESSION_REVOKED");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keel_rides_out_a_postgres_restart() {
    if !services_available() {
        return;
    }
    let postgres = PrivatePostgres::start().await;
    let url = postgres.url();
    let app = TestApp::spawn_with(Backend::Embedded, |settings| {
        settings.database_url = Some(url);
    })
    .await;
    let tokens = app.signed_in("durable@example.com").await;
    // Listing sessions reads the database on every call; a burst fills the pool.
    let sessions = || app.get_with_token("/api/v1/sessions", &tokens.access);
    let burst = futures_util::future::join_all((0..6).map(|_| sessions())).await;
    assert!(burst.iter().all(|response| response.status() == 200));

    // A restart kills every pooled connection; the next requests never see it.
    postgres.pg_ctl(&["restart"]).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let after = futures_util::future::join_all((0..12).map(|_| sessions())).await;
    let statuses: Vec<u16> = after
        .iter()
        .map(|response| response.status().as_u16())
        .collect();
    assert!(statuses.iter().all(|status| *status == 200), "{statuses:?}");

    // While it is down: 503 with Retry-After, never 500; health says so on both doors.
    postgres.pg_ctl(&["stop"]).await;
    let response = sessions().await;
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "DATABASE_UNAVAILABLE");
    assert_eq!(health(&app).await, 503);
    assert_eq!(grpc_health(&app).await, ServingStatus::NotServing as i32);

    postgres.pg_ctl(&["start"]).await;
    let mut recovered = false;
    for _ in 0..50 {
        if health(&app).await == 200 {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(recovered, "Keel did not reconnect to PostgreSQL");
    assert_eq!(sessions().await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_is_shed_at_the_door() {
    let app = TestApp::spawn_with(Backend::Embedded, |settings| {
        settings.max_concurrent_requests = Some("2".into());
        settings.hash_concurrency = Some("1".into());
        settings.hash_queue_limit = Some("64".into());
        settings.argon2_memory_kib = Some("16384".into());
        settings.argon2_iterations = Some("4".into());
    })
    .await;
    let registrations = (0..12).map(|index| {
        let app = &app;
        async move {
            let response = app
                .post_json(
                    "/api/v1/auth/register",
                    serde_json::json!({ "email": format!("shed{index}@example.com"), "password": crate::harness::PASSWORD, "full_name": "S" }),
                )
                .await;
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            (status, body["reason"].as_str().unwrap_or_default().to_owned())
        }
    });
    let outcomes = futures_util::future::join_all(registrations).await;
    assert!(
        outcomes.iter().any(|(status, _)| *status == 201),
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .any(|outcome| *outcome == (503, "SERVER_BUSY".to_owned())),
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .all(|(status, _)| *status == 201 || *status == 503),
        "{outcomes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_call_times_out_but_still_completes() {
    let app = TestApp::spawn_with(Backend::Embedded, |settings| {
        settings.request_timeout_seconds = Some("1".into());
        // A hash of several seconds.
        settings.argon2_memory_kib = Some("65536".into());
        settings.argon2_iterations = Some("64".into());
    })
    .await;
    let response = app
        .post_json(
            "/api/v1/auth/register",
            serde_json::json!({ "email": "slow@example.com", "password": crate::harness::PASSWORD, "full_name": "S" }),
        )
        .await;
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "REQUEST_TIMEOUT");

    // The registration was not cut off half way: it finishes after the answer.
    use keel::domain::user::{EmailAddress, UserStore};
    let store = keel::store::SqlStore::connect(&app.config.database_url)
        .await
        .unwrap();
    let email = EmailAddress::parse("slow@example.com").unwrap();
    let mut registered = false;
    for _ in 0..300 {
        if store
            .find_credentials_by_email(&email)
            .await
            .unwrap()
            .is_some()
        {
            registered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(registered, "the timed-out registration never completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_log_stays_bounded() {
    let app = TestApp::spawn_with(Backend::Embedded, |settings| {
        settings.sqlite_wal_max_bytes = Some("131072".into());
    })
    .await;
    let tokens = app.signed_in("writer@example.com").await;
    for index in 0..200 {
        let (status, _) = app
            .rest(
                reqwest::Method::PUT,
                "/api/v1/users/me",
                &tokens.access,
                Some(serde_json::json!({ "full_name": format!("Writer {index}") })),
            )
            .await;
        assert_eq!(status, 200);
    }
    let wal = app.config.data_dir.join("keel.db-wal");
    let size = || std::fs::metadata(&wal).map_or(0, |metadata| metadata.len());
    let grown = size();
    let mut bounded = false;
    for _ in 0..100 {
        if size() <= 131_072 {
            bounded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        bounded,
        "the log stayed at {} bytes (grew to {grown})",
        size()
    );
}

#[tokio::test]
async fn metrics_can_require_a_token() {
    let app = TestApp::spawn_with(Backend::Embedded, |settings| {
        settings.metrics_token = Some("scrape-me-0123456789".into());
    })
    .await;
    let open = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(open.status(), 401);
    assert_eq!(open.headers()["www-authenticate"], "Bearer");
    let wrong = app.get_with_token("/metrics", "scrape-me-wrong").await;
    assert_eq!(wrong.status(), 401);
    let scraped = app.get_with_token("/metrics", "scrape-me-0123456789").await;
    assert_eq!(scraped.status(), 200);
    assert!(scraped.text().await.unwrap().contains("# TYPE"));
}

#[tokio::test]
async fn https_deployments_send_hsts() {
    let plain = TestApp::spawn(Backend::Embedded).await;
    let response = plain.http.get(plain.url("/health")).send().await.unwrap();
    assert!(!response.headers().contains_key("strict-transport-security"));

    let secure = TestApp::spawn_with(Backend::Embedded, |settings| {
        settings.public_url = Some("https://keel.example.com".into());
    })
    .await;
    let response = secure.http.get(secure.url("/health")).send().await.unwrap();
    assert_eq!(
        response.headers()["strict-transport-security"],
        "max-age=31536000; includeSubDomains"
    );
}

#[tokio::test]
async fn data_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let data_dir = parent.path().join("data");
    let mut settings = test_settings(Backend::Embedded, &data_dir);
    settings.data_dir = Some(data_dir.display().to_string());
    let app = TestApp::spawn_settings(settings, parent).await;
    app.signed_in("files@example.com").await;
    let mode = |path: std::path::PathBuf| {
        std::fs::metadata(&path)
            .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(data_dir.clone()), 0o700);
    assert_eq!(mode(data_dir.join("keys")), 0o700);
    assert_eq!(mode(data_dir.join("keel.db")), 0o600);
    assert_eq!(mode(data_dir.join("keel.db-wal")), 0o600);
}
