//! `TestApp::spawn`: the real server on an ephemeral port, on the embedded defaults (SQLite,
//! memory cache, files on disk) or on the services named by `KEEL_TEST_DATABASE_URL`,
//! `KEEL_TEST_REDIS_URL` and `KEEL_TEST_S3_*` (a fresh PostgreSQL database, Redis key prefix
//! and S3 bucket per test), with real clients.

use crate::smtp::Mailbox;
use keel::api::pb::keel::auth::v1::auth_service_client::AuthServiceClient;
use keel::app::Keel;
use keel::config::{Config, Settings};
use keel::domain::clock::{ShiftedClock, SystemClock};
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::oneshot;
use tonic::transport::Channel;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite in a temporary directory, memory cache.
    Embedded,
    /// PostgreSQL, Redis and S3 from `KEEL_TEST_DATABASE_URL`, `KEEL_TEST_REDIS_URL` and
    /// `KEEL_TEST_S3_ENDPOINT` / `_ACCESS_KEY` / `_SECRET_KEY`.
    Services,
}

/// Runs each named `async fn(Backend)` once per backend: `embedded::name` and `services::name`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::harness::Backend::Embedded).await
                }
            )*
        }
        mod services {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if $crate::harness::services_available() {
                        super::$name($crate::harness::Backend::Services).await
                    }
                }
            )*
        }
    };
}

const SERVICE_VARIABLES: [&str; 5] = [
    "KEEL_TEST_DATABASE_URL",
    "KEEL_TEST_REDIS_URL",
    "KEEL_TEST_S3_ENDPOINT",
    "KEEL_TEST_S3_ACCESS_KEY",
    "KEEL_TEST_S3_SECRET_KEY",
];

/// Whether the service-backed variant runs: skipped (with a note) when the services are not
/// configured, unless `KEEL_TEST_REQUIRE_SERVICES=1`, which turns the skip into a failure.
pub fn services_available() -> bool {
    let missing: Vec<_> = SERVICE_VARIABLES
        .iter()
        .filter(|variable| std::env::var(variable).is_err())
        .collect();
    let required = std::env::var("KEEL_TEST_REQUIRE_SERVICES").is_ok_and(|value| value == "1");
    assert!(
        missing.is_empty() || !required,
        "KEEL_TEST_REQUIRE_SERVICES=1 but {missing:?} unset"
    );
    if !missing.is_empty() {
        eprintln!("skipped: set {SERVICE_VARIABLES:?} to run on PostgreSQL, Redis and S3");
    }
    missing.is_empty()
}

/// A tool a test drives (a fuzzer, a client generator), from the environment variable `variable`
/// that `.ci/run` sets. Skipped (with a note) when unset, unless CI requires every dependency.
pub fn tool(variable: &str, name: &str) -> Option<std::path::PathBuf> {
    match std::env::var_os(variable) {
        Some(path) => Some(path.into()),
        None => {
            let required =
                std::env::var("KEEL_TEST_REQUIRE_SERVICES").is_ok_and(|value| value == "1");
            assert!(
                !required,
                "KEEL_TEST_REQUIRE_SERVICES=1 but {variable} ({name}) is unset"
            );
            eprintln!("skipped: set {variable} to the {name} that .ci/run installs");
            None
        }
    }
}

pub struct TestApp {
    pub base_url: String,
    /// Every message the server mailed, through real SMTP.
    pub mailbox: Mailbox,
    pub http: reqwest::Client,
    pub clock: Arc<ShiftedClock>,
    pub config: Config,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    data_dir: Option<tempfile::TempDir>,
}

/// Cheap argon2 parameters keep the suite fast; the OWASP defaults are exercised by the
/// benchmark and by the CLI test.
pub fn test_settings(backend: Backend, data_dir: &std::path::Path) -> Settings {
    let mut settings = Settings {
        listen: Some("127.0.0.1:0".into()),
        data_dir: Some(data_dir.display().to_string()),
        argon2_memory_kib: Some("1024".into()),
        argon2_iterations: Some("1".into()),
        public_url: Some("http://keel.test".into()),
        // Every test signs in from 127.0.0.1; the throttling tests set their own limit.
        rate_limit_auth_per_minute: Some("100000".into()),
        rate_limit_anonymous_per_minute: Some("100000".into()),
        rate_limit_user_per_minute: Some("100000".into()),
        rate_limit_api_key_per_minute: Some("100000".into()),
        rate_limit_organization_per_minute: Some("100000".into()),
        rate_limit_mail_per_recipient_per_hour: Some("100000".into()),
        rate_limit_invitations_per_hour: Some("100000".into()),
        job_poll_milliseconds: Some("20".into()),
        job_retry_base_seconds: Some("1".into()),
        // Receivers run on loopback; the SSRF test turns the guard back on.
        webhook_allow_private_targets: Some("true".into()),
        webhook_retry_schedule: Some("1,1".into()),
        // No test asks a registry off this machine; the update check's own test starts one.
        dependency_registry_url: Some("off".into()),
        ..Settings::default()
    };
    if backend == Backend::Services {
        settings.database_url = Some(fresh_postgres_database());
        settings.redis_url = std::env::var("KEEL_TEST_REDIS_URL").ok();
        settings.redis_prefix = Some(format!("keel-test:{}:", uuid::Uuid::now_v7().simple()));
        settings.s3_endpoint = std::env::var("KEEL_TEST_S3_ENDPOINT").ok();
        settings.s3_access_key = std::env::var("KEEL_TEST_S3_ACCESS_KEY").ok();
        settings.s3_secret_key = std::env::var("KEEL_TEST_S3_SECRET_KEY").ok();
        // Created by the server as it starts.
        settings.s3_bucket = Some(format!("keel-test-{}", uuid::Uuid::now_v7().simple()));
    }
    settings
}

/// Creates an empty database next to the one `KEEL_TEST_DATABASE_URL` names and answers its URL.
fn fresh_postgres_database() -> String {
    let admin_url = std::env::var("KEEL_TEST_DATABASE_URL").expect("KEEL_TEST_DATABASE_URL");
    let name = format!("keel_test_{}", uuid::Uuid::now_v7().simple());
    let statement = format!("CREATE DATABASE {name}");
    let admin = admin_url.clone();
    // A private runtime: the caller may be inside a runtime that must not block.
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            use sqlx::Executor;
            let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
                .await
                .expect("connecting to KEEL_TEST_DATABASE_URL");
            connection
                .execute(sqlx::AssertSqlSafe(statement))
                .await
                .expect("creating a test database");
        });
    })
    .join()
    .expect("creating the test database");
    let (base, _) = admin_url
        .rsplit_once('/')
        .expect("KEEL_TEST_DATABASE_URL ends with /<database>");
    format!("{base}/{name}")
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> Self {
        Self::spawn_with(backend, |_| {}).await
    }

    /// Spawns with settings adjusted by `adjust` (after the test defaults).
    pub async fn spawn_with(backend: Backend, adjust: impl FnOnce(&mut Settings)) -> Self {
        let data_dir = tempfile::tempdir().expect("temporary data dir");
        let mut settings = test_settings(backend, data_dir.path());
        adjust(&mut settings);
        Self::spawn_settings(settings, data_dir).await
    }

    /// Two replicas of one deployment on PostgreSQL and Redis, sharing their secrets: `adjust`
    /// sets both, `adjust_second` the second only.
    pub async fn two_replicas(
        adjust: impl FnOnce(&mut Settings),
        adjust_second: impl FnOnce(&mut Settings),
    ) -> (Self, Self) {
        let first_dir = tempfile::tempdir().expect("temporary data dir");
        let mut settings = test_settings(Backend::Services, first_dir.path());
        settings.jwt_hs256_secret = Some("a-test-secret-shared-by-both-replicas".into());
        settings.secret_key = Some("c2hhcmVkIGJ5IGJvdGggcmVwbGljYXMgaW4gdGhpcyB0ZXN0IQ==".into());
        adjust(&mut settings);
        let second_dir = tempfile::tempdir().expect("temporary data dir");
        let mut second_settings = settings.clone();
        second_settings.data_dir = Some(second_dir.path().display().to_string());
        adjust_second(&mut second_settings);
        (
            Self::spawn_settings(settings, first_dir).await,
            Self::spawn_settings(second_settings, second_dir).await,
        )
    }

    pub async fn spawn_settings(mut settings: Settings, data_dir: tempfile::TempDir) -> Self {
        // Mail goes to the harness's SMTP server unless the test chose (`Some("")`: the outbox).
        let (smtp_url, mailbox) = Mailbox::start().await;
        settings.smtp_url.get_or_insert(smtp_url);
        // `KEEL_TEST_LOG=<filter>`: the servers' logs, shown with a failing test's output.
        if let Ok(filter) = std::env::var("KEEL_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let config = Config::from_settings(&settings).expect("valid test config");
        let clock = Arc::new(ShiftedClock::default());
        let keel = Keel::build(&config, clock.clone())
            .await
            .expect("keel starts");
        let address = keel.local_addr().expect("bound address");
        let (shutdown, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let stop = async move {
                let _ = stopped.await;
            };
            if let Err(error) = keel.serve(stop).await {
                eprintln!("server failed: {error:#}");
            }
        });
        // reqwest is built without a default TLS provider: the process uses aws-lc-rs throughout.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        Self {
            mailbox,
            base_url: format!("http://{address}"),
            http: reqwest::Client::new(),
            clock,
            config,
            shutdown: Some(shutdown),
            server: Some(server),
            data_dir: Some(data_dir),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.base_url.clone())
            .expect("uri")
            .connect()
            .await
            .expect("gRPC connection")
    }

    pub async fn grpc(&self) -> AuthServiceClient<Channel> {
        AuthServiceClient::new(self.channel().await)
    }

    pub fn grpc_web(&self) -> AuthServiceClient<GrpcWebChannel> {
        let (transport, origin) = self.grpc_web_transport();
        AuthServiceClient::with_origin(transport, origin)
    }

    /// A gRPC-web transport to this server and its origin, for any service's
    /// `Client::with_origin`.
    pub fn grpc_web_transport(&self) -> (GrpcWebChannel, http::Uri) {
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let service = tower::ServiceBuilder::new()
            .layer(tonic_web::GrpcWebClientLayer::new())
            .service(http);
        (service, self.base_url.parse().expect("uri"))
    }

    pub async fn post_json(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("REST request")
    }

    pub async fn get_with_token(&self, path: &str, token: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("REST request")
    }

    /// A REST call with a bearer token (and a JSON body for `Some`); answers status and JSON
    /// (`null` for an empty body).
    pub async fn rest(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (reqwest::StatusCode, Value) {
        let mut request = self.http.request(method, self.url(path)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("REST request");
        let status = response.status();
        let text = response.text().await.expect("REST body");
        let json = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).expect("JSON body")
        };
        (status, json)
    }

    /// A REST call's status and error reason (empty on success).
    pub async fn status_and_reason(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, String) {
        let (status, answer) = self.rest(method, path, token, body).await;
        (
            status.as_u16(),
            answer["reason"].as_str().unwrap_or_default().to_owned(),
        )
    }

    /// Registers `email` with a strong password and answers the user JSON.
    pub async fn register(&self, email: &str) -> Value {
        let response = self
            .post_json(
                "/api/v1/auth/register",
                serde_json::json!({ "email": email, "password": PASSWORD, "full_name": "Test User" }),
            )
            .await;
        assert_eq!(response.status(), 201, "registering {email}");
        response.json().await.expect("user JSON")
    }

    /// Registers and signs in over REST; answers the token pair JSON.
    pub async fn signed_in(&self, email: &str) -> Tokens {
        self.register(email).await;
        self.login(email).await
    }

    /// Registers, proves the address with the mailed link (message number 1 to it), then signs
    /// in: the sessions opened before the first proof would not survive it.
    pub async fn verified(&self, email: &str) -> Tokens {
        self.register(email).await;
        self.verify_email(email).await;
        self.login(email).await
    }

    /// Follows the verification link mailed at registration.
    pub async fn verify_email(&self, email: &str) {
        let token = self.mailbox.token(email, 1).await;
        let response = self
            .post_json(
                "/api/v1/auth/verify-email",
                serde_json::json!({ "token": token }),
            )
            .await;
        assert_eq!(response.status(), 200, "verifying {email}");
    }

    pub async fn login(&self, email: &str) -> Tokens {
        let response = self
            .post_json(
                "/api/v1/auth/login",
                serde_json::json!({ "email": email, "password": PASSWORD }),
            )
            .await;
        assert_eq!(response.status(), 200, "signing in {email}");
        let body: Value = response.json().await.expect("token JSON");
        Tokens {
            access: body["access_token"]
                .as_str()
                .expect("access_token")
                .to_owned(),
            refresh: body["refresh_token"]
                .as_str()
                .expect("refresh_token")
                .to_owned(),
        }
    }
}

impl TestApp {
    /// A platform superuser, made as `keel admin create-superuser` does (verified address).
    pub async fn create_superuser(&self, email: &str) {
        let services = keel::app::Services::build(&self.config, Arc::new(SystemClock))
            .await
            .unwrap();
        services
            .auth
            .create_superuser(keel::domain::auth::Registration {
                email,
                password: PASSWORD,
                full_name: "Root",
            })
            .await
            .unwrap();
        services.close().await;
    }

    /// Shuts the server down as an operator would and waits until it has exited; answers its
    /// data directory, kept for a next server.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.expect("the server task ends");
        }
        self.data_dir.take().expect("the data directory")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

pub type GrpcWebChannel = tonic_web::GrpcWebClientService<
    hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        tonic_web::GrpcWebCall<tonic::body::Body>,
    >,
>;

pub const PASSWORD: &str = "Str0ng!Passw0rd";

/// Waits for the next minute when this one ends within 15 s, so that a test counting against
/// a per-minute budget (fixed windows) stays inside one window.
pub async fn inside_one_minute() {
    use chrono::Timelike;
    let second = chrono::Utc::now().second();
    if second >= 45 {
        tokio::time::sleep(std::time::Duration::from_secs(u64::from(61 - second))).await;
    }
}

pub struct Tokens {
    pub access: String,
    pub refresh: String,
}

/// Adds `authorization: Bearer <token>` to a gRPC request.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata value"),
    );
    request
}

/// The `reason` of a gRPC error, from its `google.rpc.ErrorInfo` detail.
pub fn grpc_reason(status: &tonic::Status) -> String {
    use keel::api::pb::google::rpc;
    use prost::Message;
    let decoded = rpc::Status::decode(status.details()).expect("google.rpc.Status details");
    decoded
        .details
        .iter()
        .find(|detail| detail.type_url.ends_with("google.rpc.ErrorInfo"))
        .map(|detail| {
            rpc::ErrorInfo::decode(detail.value.as_slice())
                .expect("ErrorInfo")
                .reason
        })
        .unwrap_or_default()
}

/// The field violations of a gRPC error, as `(field, reason, description)`.
pub fn grpc_violations(status: &tonic::Status) -> Vec<(String, String, String)> {
    use keel::api::pb::google::rpc;
    use prost::Message;
    let decoded = rpc::Status::decode(status.details()).expect("google.rpc.Status details");
    decoded
        .details
        .iter()
        .filter(|detail| detail.type_url.ends_with("google.rpc.BadRequest"))
        .flat_map(|detail| {
            rpc::BadRequest::decode(detail.value.as_slice())
                .expect("BadRequest")
                .field_violations
        })
        .map(|violation| (violation.field, violation.reason, violation.description))
        .collect()
}

/// The field violations of a REST error body, as `(field, reason, description)`.
pub fn rest_violations(body: &Value) -> Vec<(String, String, String)> {
    body["details"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|detail| detail["field_violations"].as_array())
        .flatten()
        .map(|violation| {
            let text = |key: &str| violation[key].as_str().unwrap_or_default().to_owned();
            (text("field"), text("reason"), text("description"))
        })
        .collect()
}
