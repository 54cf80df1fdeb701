//! Configuration: defaults < config file (TOML) < `KEEL_*` environment variables < flags.
//! Every setting is declared once, in `settings!` below: its key, environment variable,
//! default and doc. Everything is validated at start; an invalid value fails with a message
//! naming the setting.

use crate::domain::files::ImageSettings;
use crate::domain::password::PasswordPolicy;
use crate::domain::rate::{Budget, CallerBudgets};
use crate::domain::realtime::RealtimeSettings;
use crate::domain::tenancy::ip_rules::AddressBlock;
use crate::domain::webhooks::WebhookSettings;
use crate::jobs::JobSettings;
use crate::oauth::{ProviderConfig, ProviderSettings};
use crate::objects::S3Settings;
use crate::security::password::Argon2Settings;
use anyhow::{Context, anyhow};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// A setting as declared: what the README's table and `keel --help` show.
#[derive(Debug, Clone, Copy)]
pub struct Declared {
    pub env: &'static str,
    /// The value used when the setting is not given, or how Keel derives one.
    pub default: DeclaredDefault,
}

#[derive(Debug, Clone, Copy)]
pub enum DeclaredDefault {
    Value(&'static str),
    Described(&'static str),
}

/// Declares the settings. Each is `key, env` then `= "value"` (a default Keel parses like
/// given text) or `~ "description"` (a default derived from other settings, or none), then
/// `secret` for values `--help` must not echo from the environment.
macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])+
        $key:ident, $env:literal $(= $value:literal)? $(~ $described:literal)? $(, $secret:ident)?;
    )*) => {
        /// The raw settings, as given by flags, the environment or the config file. Every
        /// value is text until validated so that errors can name the setting.
        #[derive(Debug, Default, Clone, clap::Args, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Settings {
            $(
                #[arg(
                    long,
                    global = true,
                    env = $env,
                    hide_env_values = settings!(@secret $($secret)?),
                    help = concat!($($doc),+, " [default: ", $($value)? $($described)?, "]").trim_start(),
                )]
                pub $key: Option<String>,
            )*
            /// Sign-in providers by name: `KEEL_OAUTH_<NAME>_*`, or `[oauth.<name>]` in the
            /// config file.
            #[arg(skip)]
            #[serde(default)]
            pub oauth: BTreeMap<String, ProviderSettings>,
        }

        impl Settings {
            pub const DECLARED: &[Declared] = &[$(Declared {
                env: $env,
                default: settings!(@default $($value)? $(~ $described)?),
            }),*];

            /// `self`'s values where given, `lower`'s otherwise.
            pub fn over(self, lower: Settings) -> Settings {
                let mut oauth = lower.oauth;
                for (name, settings) in self.oauth {
                    let lower = oauth.remove(&name).unwrap_or_default();
                    oauth.insert(name, settings.over(lower));
                }
                Settings { $($key: self.$key.or(lower.$key),)* oauth }
            }

            $(
                fn $key(&self) -> Setting<'_> {
                    Setting {
                        env: $env,
                        given: self.$key.as_deref().filter(|raw| !raw.trim().is_empty()),
                        default: settings!(@value $($value)?),
                    }
                }
            )*
        }
    };
    (@secret) => { false };
    (@secret secret) => { true };
    (@default $value:literal) => { DeclaredDefault::Value($value) };
    (@default ~ $described:literal) => { DeclaredDefault::Described($described) };
    (@value) => { None };
    (@value $value:literal) => { Some($value) };
}

settings! {
    /// Address to listen on
    listen, "KEEL_LISTEN" = "127.0.0.1:8000";
    /// Directory for the SQLite database and signing keys
    data_dir, "KEEL_DATA_DIR" = "./data";
    /// sqlite:… or postgres://…
    database_url, "KEEL_DATABASE_URL" ~ "sqlite://<data dir>/keel.db";
    /// redis://… for a shared cache
    redis_url, "KEEL_REDIS_URL" ~ "in-process memory";
    /// Bound on the in-process cache (without Redis), in bytes
    memory_cache_max_bytes, "KEEL_MEMORY_CACHE_MAX_BYTES" = "67108864";
    /// Prefix of every Redis key
    redis_prefix, "KEEL_REDIS_PREFIX" = "keel:";
    /// The URL clients reach Keel at; the token issuer and the base of links
    public_url, "KEEL_PUBLIC_URL" ~ "http://<listen>";
    /// The `aud` claim of access tokens
    jwt_audience, "KEEL_JWT_AUDIENCE" = "keel";
    /// Base64 instance secret (at least 32 bytes) for keyed digests; share it between replicas
    secret_key, "KEEL_SECRET_KEY" ~ "generated in the data dir", secret;
    /// Sign access tokens with HS256 and this secret (at least 32 bytes) instead of EdDSA
    jwt_hs256_secret, "KEEL_JWT_HS256_SECRET" ~ "none", secret;
    /// An Ed25519 PKCS#8 PEM file to sign with
    jwt_private_key_file, "KEEL_JWT_PRIVATE_KEY_FILE" ~ "generated under <data dir>/keys";
    /// Access token lifetime in seconds
    access_token_ttl_seconds, "KEEL_ACCESS_TOKEN_TTL_SECONDS" = "900";
    /// Session lifetime without a refresh, in seconds (7 days)
    refresh_token_ttl_seconds, "KEEL_REFRESH_TOKEN_TTL_SECONDS" = "604800";
    /// Longest a session lives, however often it is refreshed, in seconds (30 days)
    session_max_lifetime_seconds, "KEEL_SESSION_MAX_LIFETIME_SECONDS" = "2592000";
    /// argon2id memory in KiB (OWASP's recommendation, like the next two)
    argon2_memory_kib, "KEEL_ARGON2_MEMORY_KIB" = "19456";
    /// argon2id iterations
    argon2_iterations, "KEEL_ARGON2_ITERATIONS" = "2";
    /// argon2id parallelism
    argon2_parallelism, "KEEL_ARGON2_PARALLELISM" = "1";
    /// Password hashes computed at once
    hash_concurrency, "KEEL_HASH_CONCURRENCY" ~ "number of cores";
    /// Password hashes allowed to wait for a hashing thread; past it, calls that need one are
    /// refused at once with 503 / RESOURCE_EXHAUSTED
    hash_queue_limit, "KEEL_HASH_QUEUE_LIMIT" ~ "4 × KEEL_HASH_CONCURRENCY";
    /// Minimum password length (ASVS 2.1.1: length, no composition rules, up to 128)
    password_min_length, "KEEL_PASSWORD_MIN_LENGTH" = "12";
    /// Require a lower-case letter
    password_require_lowercase, "KEEL_PASSWORD_REQUIRE_LOWERCASE" = "false";
    /// Require an upper-case letter
    password_require_uppercase, "KEEL_PASSWORD_REQUIRE_UPPERCASE" = "false";
    /// Require a digit
    password_require_digit, "KEEL_PASSWORD_REQUIRE_DIGIT" = "false";
    /// Require a symbol
    password_require_symbol, "KEEL_PASSWORD_REQUIRE_SYMBOL" = "false";
    /// A directory of Have I Been Pwned range files (`21BD1.txt`…); new passwords found there
    /// are refused
    breached_passwords_dir, "KEEL_BREACHED_PASSWORDS_DIR" ~ "none";
    /// smtp://host:port or smtps://user:password@host:port
    smtp_url, "KEEL_SMTP_URL" ~ "dev outbox, logged", secret;
    /// Sender of Keel's mail
    mail_from, "KEEL_MAIL_FROM" = "Keel <no-reply@localhost>";
    /// Refuse sign-in until the email address is verified
    require_verified_email, "KEEL_REQUIRE_VERIFIED_EMAIL" = "false";
    /// Consecutive failed sign-ins that lock an account
    lockout_threshold, "KEEL_LOCKOUT_THRESHOLD" = "5";
    /// How long a locked account stays locked, in minutes
    lockout_minutes, "KEEL_LOCKOUT_MINUTES" = "15";
    /// Seconds between writes of the usage counters (API calls) from the cache to the database
    usage_flush_seconds, "KEEL_USAGE_FLUSH_SECONDS" = "10";
    /// Sign-in attempts per minute, per client address and per account
    rate_limit_auth_per_minute, "KEEL_RATE_LIMIT_AUTH_PER_MINUTE" = "20";
    /// Messages strangers can have sent to one address per hour: verification, reset and
    /// magic links, invitations
    rate_limit_mail_per_recipient_per_hour, "KEEL_RATE_LIMIT_MAIL_PER_RECIPIENT_PER_HOUR" = "10";
    /// Invitations (new or resent) each organization may send per hour
    rate_limit_invitations_per_hour, "KEEL_RATE_LIMIT_INVITATIONS_PER_HOUR" = "100";
    /// Calls per minute from one client address without (valid) credentials
    rate_limit_anonymous_per_minute, "KEEL_RATE_LIMIT_ANONYMOUS_PER_MINUTE" = "600";
    /// Calls per minute each signed-in user may make
    rate_limit_user_per_minute, "KEEL_RATE_LIMIT_USER_PER_MINUTE" = "1200";
    /// Calls per minute each API key may make
    rate_limit_api_key_per_minute, "KEEL_RATE_LIMIT_API_KEY_PER_MINUTE" = "1200";
    /// Calls per minute into one organization, all its callers together
    rate_limit_organization_per_minute, "KEEL_RATE_LIMIT_ORGANIZATION_PER_MINUTE" = "6000";
    /// Comma-separated `<service or RPC>=<calls per minute>` (`keel.file.v1.FileService=120`,
    /// `keel.auth.v1.AuthService/Register=10`): a further budget per caller for those RPCs
    rate_limit_groups, "KEEL_RATE_LIMIT_GROUPS" ~ "none";
    /// Comma-separated addresses or CIDR blocks refused on every call, whatever the caller
    ip_deny, "KEEL_IP_DENY" ~ "none";
    /// Comma-separated proxy addresses or CIDR blocks whose X-Forwarded-For is believed
    trusted_proxies, "KEEL_TRUSTED_PROXIES" ~ "none";
    /// Comma-separated browser origins allowed by CORS (https://app.example.com)
    cors_allowed_origins, "KEEL_CORS_ALLOWED_ORIGINS" ~ "none";
    /// Comma-separated exact URLs sign-in providers may send browsers back to (`redirect_uri`)
    oauth_redirect_allowlist, "KEEL_OAUTH_REDIRECT_ALLOWLIST" ~ "none";
    /// host:port of the DNS server asked for domain-verification TXT records
    dns_nameserver, "KEEL_DNS_NAMESERVER" ~ "the system's resolvers";
    /// Let organizations' sign-in providers be loopback or private addresses (development only)
    sso_allow_private_issuers, "KEEL_SSO_ALLOW_PRIVATE_ISSUERS" = "false";
    /// The passkeys' relying party: the domain (or a parent domain) of the pages that use them
    passkey_rp_id, "KEEL_PASSKEY_RP_ID" ~ "the host of KEEL_PUBLIC_URL (localhost for a loopback address)";
    /// Comma-separated origins of the pages that register and use passkeys
    passkey_origins, "KEEL_PASSKEY_ORIGINS" ~ "the origin of KEEL_PUBLIC_URL";
    /// RPCs served at once; past it, calls are refused at once with 503 / RESOURCE_EXHAUSTED
    /// `SERVER_BUSY`
    max_concurrent_requests, "KEEL_MAX_CONCURRENT_REQUESTS" = "1024";
    /// Seconds an RPC may take before its caller is answered 503 / UNAVAILABLE
    /// `REQUEST_TIMEOUT` (the work itself still completes)
    request_timeout_seconds, "KEEL_REQUEST_TIMEOUT_SECONDS" = "30";
    /// Seconds a stopping server (SIGTERM, SIGINT) gives requests, streams and running jobs to
    /// finish; readiness answers 503 from the signal on
    shutdown_timeout_seconds, "KEEL_SHUTDOWN_TIMEOUT_SECONDS" = "30";
    /// Largest accepted REST request body in bytes
    max_body_bytes, "KEEL_MAX_BODY_BYTES" = "1048576";
    /// Bound on SQLite's write-ahead log in bytes: past it, the log is checkpointed and emptied
    /// (checked every 5 s)
    sqlite_wal_max_bytes, "KEEL_SQLITE_WAL_MAX_BYTES" = "67108864";
    /// Wait before a failed job's second attempt, in seconds; each later wait doubles (plus up
    /// to half again of jitter), up to an hour
    job_retry_base_seconds, "KEEL_JOB_RETRY_BASE_SECONDS" = "10";
    /// Attempts of a job before it is given up (left in the job store as failed)
    job_max_attempts, "KEEL_JOB_MAX_ATTEMPTS" = "8";
    /// How often an idle job worker looks for new jobs, in milliseconds
    job_poll_milliseconds, "KEEL_JOB_POLL_MILLISECONDS" = "200";
    /// When the cleanup job deletes what has outlived its use (ended sessions, expired links
    /// and invitations, finished jobs): a cron schedule with seconds, in UTC
    cleanup_schedule, "KEEL_CLEANUP_SCHEDULE" = "0 17 * * * *";
    /// Cargo sparse index the dependency update check asks for each dependency's newest
    /// release; `off` turns the check off
    dependency_registry_url, "KEEL_DEPENDENCY_REGISTRY_URL" = "https://index.crates.io";
    /// When the dependency update check runs: a cron schedule with seconds, in UTC
    dependency_check_schedule, "KEEL_DEPENDENCY_CHECK_SCHEDULE" = "0 0 4 * * *";
    /// Days audit log entries are kept; older ones are exported (JSON lines, to
    /// `<data dir>/audit-exports`) and then deleted by the cleanup job. 0 keeps them forever
    audit_retention_days, "KEEL_AUDIT_RETENTION_DAYS" = "365";
    /// Seconds between a failed webhook delivery's attempts, comma-separated: one attempt more
    /// than waits, then the delivery is given up to the dead-letter queue
    webhook_retry_schedule, "KEEL_WEBHOOK_RETRY_SCHEDULE" = "5,300,1800,7200,18000,36000";
    /// Seconds a webhook endpoint has to answer
    webhook_timeout_seconds, "KEEL_WEBHOOK_TIMEOUT_SECONDS" = "10";
    /// Failed deliveries in a row that turn a webhook off (`webhook.disabled`)
    webhook_disable_after_failures, "KEEL_WEBHOOK_DISABLE_AFTER_FAILURES" = "100";
    /// Hours a rotated-out webhook secret still signs, beside the new one
    webhook_secret_grace_hours, "KEEL_WEBHOOK_SECRET_GRACE_HOURS" = "24";
    /// The largest message an integration may send (`POST /api/v1/integrations/{id}/events`,
    /// `POST /api/v1/webhooks/{type}`), in KiB, at most 3072
    integration_max_payload_kib, "KEEL_INTEGRATION_MAX_PAYLOAD_KIB" = "1024";
    /// Deliver webhooks to loopback and private addresses too (development and tests only:
    /// an endpoint could otherwise reach services inside your network)
    webhook_allow_private_targets, "KEEL_WEBHOOK_ALLOW_PRIVATE_TARGETS" = "false";
    /// How often an idle dispatcher looks for new events, in milliseconds: the most a
    /// committed event waits before webhooks, notifications and realtime clients get it
    event_poll_milliseconds, "KEEL_EVENT_POLL_MILLISECONDS" = "25";
    /// Events of one realtime channel a reconnecting client can recover
    realtime_history_events, "KEEL_REALTIME_HISTORY_EVENTS" = "1000";
    /// How old, in seconds, the last event a reconnecting client saw may be for it to recover
    /// what followed
    realtime_history_seconds, "KEEL_REALTIME_HISTORY_SECONDS" = "600";
    /// Messages waiting for one realtime connection before it is closed as too slow
    realtime_queue, "KEEL_REALTIME_QUEUE" = "256";
    /// Realtime connections one user may hold open in one process
    realtime_max_connections_per_user, "KEEL_REALTIME_MAX_CONNECTIONS_PER_USER" = "50";
    /// Realtime connections one client address may hold open in one process
    realtime_max_connections_per_ip, "KEEL_REALTIME_MAX_CONNECTIONS_PER_IP" = "1000";
    /// Seconds between the server's pings on an idle realtime connection
    realtime_heartbeat_seconds, "KEEL_REALTIME_HEARTBEAT_SECONDS" = "25";
    /// Seconds a realtime connection may stay silent (not even a pong) before it is closed
    realtime_idle_timeout_seconds, "KEEL_REALTIME_IDLE_TIMEOUT_SECONDS" = "60";
    /// The largest file anyone may upload, in MiB (an organization's quota may allow less)
    max_file_size_mb, "KEEL_MAX_FILE_SIZE_MB" = "50";
    /// Storage for each user's personal files, in MiB
    max_user_storage_mb, "KEEL_MAX_USER_STORAGE_MB" = "1024";
    /// Content types accepted for upload, comma-separated, as detected from the bytes
    file_allowed_types, "KEEL_FILE_ALLOWED_TYPES" ~ "images, PDF, Office documents, text, CSV, JSON, Markdown";
    /// Days a deleted file's bytes are kept (out of reach) before the cleanup removes them
    file_retention_days, "KEEL_FILE_RETENTION_DAYS" = "7";
    /// Uploaded images wider or taller than this many pixels are shrunk to fit
    image_max_dimension, "KEEL_IMAGE_MAX_DIMENSION" = "1920";
    /// Quality (1–100) of re-encoded JPEG images
    image_jpeg_quality, "KEEL_IMAGE_JPEG_QUALITY" = "85";
    /// Thumbnail boxes images may be downloaded in (`?thumb=WxH`), comma-separated
    image_thumbnail_sizes, "KEEL_IMAGE_THUMBNAIL_SIZES" = "100x100,300x300,600x600";
    /// http(s)://… of an S3-compatible server for uploaded files (path-style unless AWS)
    s3_endpoint, "KEEL_S3_ENDPOINT" ~ "none: files under <data dir>/files";
    /// The bucket files go to; created if missing
    s3_bucket, "KEEL_S3_BUCKET" = "keel";
    /// Access key of the S3 server
    s3_access_key, "KEEL_S3_ACCESS_KEY" ~ "none";
    /// Secret key of the S3 server
    s3_secret_key, "KEEL_S3_SECRET_KEY" ~ "none", secret;
    /// Region signed into S3 requests
    s3_region, "KEEL_S3_REGION" = "us-east-1";
    /// http(s)://… of the instance's OpenAI-compatible API (`https://api.openai.com/v1`, a
    /// vLLM or Ollama server): the LLM gateway's provider for organizations without their own
    llm_openai_base_url, "KEEL_LLM_OPENAI_BASE_URL" ~ "none: organizations configure their own";
    /// The API key sent to `KEEL_LLM_OPENAI_BASE_URL`
    llm_openai_api_key, "KEEL_LLM_OPENAI_API_KEY" ~ "none", secret;
    /// The model of `KEEL_LLM_OPENAI_BASE_URL` used when a request names none
    llm_openai_model, "KEEL_LLM_OPENAI_MODEL" ~ "none: requests name their model";
    /// Seconds an LLM provider may take to answer (a whole completion; for a stream, between
    /// two chunks)
    llm_timeout_seconds, "KEEL_LLM_TIMEOUT_SECONDS" = "120";
    /// Let organizations' LLM providers be on loopback and private addresses (development and
    /// tests only: a provider URL could otherwise reach services inside your network)
    llm_allow_private_endpoints, "KEEL_LLM_ALLOW_PRIVATE_ENDPOINTS" = "false";
    /// Apply pending database migrations at start
    migrate_on_start, "KEEL_MIGRATE_ON_START" = "true";
    /// Bearer token that `/metrics` requires; unset, `/metrics` is open
    metrics_token, "KEEL_METRICS_TOKEN" ~ "none", secret;
    /// Log format: text or json
    log_format, "KEEL_LOG_FORMAT" = "text";
    /// http(s)://… of an OpenTelemetry collector's OTLP/gRPC endpoint (port 4317): spans of
    /// every RPC, database statement, cache call and job are exported there
    otlp_endpoint, "KEEL_OTLP_ENDPOINT" ~ "none: no traces are exported";
}

impl Settings {
    /// Reads a TOML config file whose keys are the settings' names (`listen`, `database_url`…).
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
    }
}

/// One setting's given text (blank counts as unset) and declared default.
struct Setting<'a> {
    env: &'static str,
    given: Option<&'a str>,
    default: Option<&'static str>,
}

impl<'a> Setting<'a> {
    /// The given text, else the declared default.
    fn text(&self) -> Option<&'a str> {
        self.given.or(self.default)
    }

    /// An error naming the setting.
    fn invalid(&self, why: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("{}: {why}", self.env)
    }

    /// The value, or `derived` where the declaration describes its default instead of stating it.
    fn value<T: FromStr>(&self, derived: Option<T>) -> anyhow::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match (self.text(), derived) {
            (Some(raw), _) => raw
                .trim()
                .parse()
                .map_err(|error| self.invalid(format!("invalid value {raw:?}: {error}"))),
            (None, Some(derived)) => Ok(derived),
            (None, None) => Err(self.invalid("not set")),
        }
    }

    fn parse<T: FromStr>(&self) -> anyhow::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        self.value(None)
    }

    fn positive<T: FromStr + PartialOrd + Default>(&self) -> anyhow::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        self.above_zero(self.value(None)?)
    }

    fn positive_or<T: FromStr + PartialOrd + Default>(&self, derived: T) -> anyhow::Result<T>
    where
        T::Err: std::fmt::Display,
    {
        self.above_zero(self.value(Some(derived))?)
    }

    fn above_zero<T: PartialOrd + Default>(&self, value: T) -> anyhow::Result<T> {
        if value <= T::default() {
            return Err(self.invalid("must be greater than zero"));
        }
        Ok(value)
    }

    /// `<RPC prefix>=<calls per minute>` items.
    fn rate_groups(&self) -> anyhow::Result<Vec<(String, Budget)>> {
        self.list()
            .iter()
            .map(|item| {
                let (prefix, limit) = item
                    .split_once('=')
                    .ok_or_else(|| self.invalid(format!("`{item}` is not `<RPC>=<per minute>`")))?;
                let limit = limit
                    .trim()
                    .parse::<u32>()
                    .ok()
                    .filter(|limit| *limit > 0)
                    .ok_or_else(|| {
                        self.invalid(format!("`{item}`: the budget must be a positive number"))
                    })?;
                Ok((
                    prefix.trim().trim_start_matches('/').to_owned(),
                    Budget::per_minute(limit),
                ))
            })
            .collect()
    }

    fn address_blocks(&self) -> anyhow::Result<Vec<AddressBlock>> {
        self.list()
            .iter()
            .map(|item| {
                item.parse()
                    .map_err(|error: crate::domain::tenancy::ip_rules::InvalidBlock| {
                        self.invalid(error.to_string())
                    })
            })
            .collect()
    }

    /// The non-blank items of a comma-separated setting.
    fn list(&self) -> Vec<String> {
        self.text()
            .map(|list| {
                list.split(',')
                    .map(|item| item.trim().to_owned())
                    .filter(|item| !item.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The text as a validated URL with one of `schemes` (`"https://"`…).
    fn url(&self, schemes: &[&str]) -> anyhow::Result<Option<String>> {
        match self.text() {
            Some(url) if !schemes.iter().any(|scheme| url.starts_with(scheme)) => {
                Err(self.invalid(format!("must start with {}", schemes.join(" or "))))
            }
            url => Ok(url.map(str::to_owned)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub redis_url: Option<String>,
    pub memory_cache_max_bytes: u64,
    pub redis_prefix: String,
    pub public_url: String,
    pub jwt_audience: String,
    pub secret_key: Option<String>,
    pub jwt_hs256_secret: Option<String>,
    pub jwt_private_key_file: Option<PathBuf>,
    pub access_token_ttl_seconds: u32,
    pub refresh_token_ttl_seconds: u32,
    pub session_max_lifetime_seconds: u32,
    pub argon2: Argon2Settings,
    pub hash_concurrency: usize,
    pub hash_queue_limit: usize,
    pub password_policy: PasswordPolicy,
    pub breached_passwords_dir: Option<PathBuf>,
    pub smtp_url: Option<String>,
    pub mail_from: String,
    pub require_verified_email: bool,
    pub lockout_threshold: u32,
    pub lockout_minutes: u32,
    pub usage_flush_seconds: u32,
    pub rate_limit_auth_per_minute: u32,
    pub caller_budgets: CallerBudgets,
    pub ip_deny: Vec<AddressBlock>,
    pub rate_limit_mail_per_recipient_per_hour: u32,
    pub rate_limit_invitations_per_hour: u32,
    pub trusted_proxies: Vec<AddressBlock>,
    pub cors_allowed_origins: Vec<String>,
    pub oauth_redirect_allowlist: Vec<String>,
    pub oauth_providers: Vec<(String, ProviderConfig)>,
    pub sso_allow_private_issuers: bool,
    /// None when the relying party cannot be worked out (a public URL on an IP address).
    pub passkeys: Option<PasskeySettings>,
    /// `None`: the system's resolvers.
    pub dns_nameserver: Option<SocketAddr>,
    pub max_concurrent_requests: usize,
    pub request_timeout_seconds: u32,
    pub max_body_bytes: usize,
    pub sqlite_wal_max_bytes: u64,
    pub jobs: JobSettings,
    /// `None` keeps the audit log forever.
    pub audit_retention: Option<chrono::Duration>,
    /// `None` turns the dependency update check off.
    pub dependency_registry_url: Option<String>,
    pub webhooks: WebhookSettings,
    pub realtime: RealtimeSettings,
    pub max_file_bytes: i64,
    pub max_user_storage_bytes: i64,
    pub file_allowed_types: Vec<String>,
    pub images: ImageSettings,
    /// `WxH` each.
    pub thumbnail_sizes: Vec<String>,
    pub file_retention: chrono::Duration,
    /// `None` keeps files on local disk.
    pub s3: Option<S3Settings>,
    pub webhook_timeout: Duration,
    pub webhook_allow_private_targets: bool,
    pub integration_max_payload_bytes: usize,
    /// The instance's LLM provider; `None` leaves organizations to configure their own.
    pub llm_instance: Option<crate::domain::llm::InstanceProvider>,
    pub llm_timeout: Duration,
    pub llm_allow_private_endpoints: bool,
    pub migrate_on_start: bool,
    pub metrics_token: Option<String>,
    pub log_format: LogFormat,
    /// Where traces go; `None` exports none.
    pub otlp_endpoint: Option<String>,
}

/// Who passkeys are for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasskeySettings {
    pub rp_id: String,
    pub origins: Vec<url::Url>,
}

/// The relying party and the pages' origins: by default the public URL's, with `localhost`
/// for a loopback address (browsers refuse IP addresses as relying parties). Every origin must
/// be the relying party's domain or below it, over https (http only for localhost); a public
/// URL that cannot be one (an IP address, plain http) leaves passkeys off unless they are
/// configured.
fn passkey_settings(
    settings: &Settings,
    public_url: &str,
) -> anyhow::Result<Option<PasskeySettings>> {
    let public = url::Url::parse(public_url)?;
    let loopback = match public.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        _ => false,
    };
    let rp_id = match (settings.passkey_rp_id().text(), public.domain()) {
        (Some(rp_id), _) => rp_id.to_ascii_lowercase(),
        (None, Some(domain)) => domain.to_owned(),
        (None, None) if loopback => "localhost".to_owned(),
        (None, None) => return Ok(None),
    };
    let given = settings.passkey_origins().list();
    let origins = if !given.is_empty() {
        given
            .iter()
            .map(|origin| {
                url::Url::parse(origin).map_err(|error| {
                    settings
                        .passkey_origins()
                        .invalid(format!("{origin:?}: {error}"))
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    } else if loopback && public.domain().is_none() {
        let mut origin = public.clone();
        origin.set_host(Some("localhost"))?;
        vec![origin]
    } else {
        vec![public]
    };
    for origin in &origins {
        let host = origin.domain().unwrap_or_default();
        let under_rp = host == rp_id || host.ends_with(&format!(".{rp_id}"));
        let secure =
            origin.scheme() == "https" || (origin.scheme() == "http" && host == "localhost");
        if under_rp && secure {
            continue;
        }
        if given.is_empty() && settings.passkey_rp_id().text().is_none() {
            // Browsers would refuse the public URL's own origin: passkeys stay off.
            return Ok(None);
        }
        return Err(settings.passkey_origins().invalid(format!(
            "{} must be https:// (http:// only for localhost) on {rp_id} or below it \
             (KEEL_PASSKEY_RP_ID)",
            origin.origin().ascii_serialization()
        )));
    }
    Ok(Some(PasskeySettings { rp_id, origins }))
}

/// ASVS 2.1.2: passwords of up to 128 characters are accepted (not a setting).
const PASSWORD_MAX_LENGTH: usize = 128;
const MIB: i64 = 1024 * 1024;

impl Config {
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let listen: SocketAddr = settings.listen().parse()?;
        let data_dir = PathBuf::from(settings.data_dir().parse::<String>()?);
        let database_url = settings
            .database_url()
            .url(&["sqlite:", "postgres://", "postgresql://"])?
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("keel.db").display()));
        let public_url = settings
            .public_url()
            .url(&["http://", "https://"])?
            .map(|url| url.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| format!("http://{listen}"));
        let password_policy = PasswordPolicy {
            min_length: settings.password_min_length().positive()?,
            max_length: PASSWORD_MAX_LENGTH,
            require_lowercase: settings.password_require_lowercase().parse()?,
            require_uppercase: settings.password_require_uppercase().parse()?,
            require_digit: settings.password_require_digit().parse()?,
            require_symbol: settings.password_require_symbol().parse()?,
        };
        if password_policy.min_length > PASSWORD_MAX_LENGTH {
            return Err(settings
                .password_min_length()
                .invalid(format!("must be at most {PASSWORD_MAX_LENGTH}")));
        }
        let jwt_hs256_secret = settings.jwt_hs256_secret().text().map(str::to_owned);
        if jwt_hs256_secret
            .as_ref()
            .is_some_and(|secret| secret.len() < 32)
        {
            return Err(settings
                .jwt_hs256_secret()
                .invalid("must be at least 32 bytes"));
        }
        let cors_allowed_origins = settings.cors_allowed_origins().list();
        for origin in &cors_allowed_origins {
            let scheme_ok = origin.starts_with("http://") || origin.starts_with("https://");
            let path_free = origin.splitn(4, '/').nth(3).is_none();
            if !scheme_ok || !path_free {
                return Err(settings.cors_allowed_origins().invalid(format!(
                    "{origin:?} is not an origin like https://app.example.com"
                )));
            }
        }
        let passkeys = passkey_settings(settings, &public_url)?;
        let oauth_redirect_allowlist = settings.oauth_redirect_allowlist().list();
        for uri in &oauth_redirect_allowlist {
            if !(uri.starts_with("https://") || uri.starts_with("http://")) {
                return Err(settings
                    .oauth_redirect_allowlist()
                    .invalid(format!("{uri:?} is not an http(s):// URL")));
            }
        }
        let oauth_providers = settings
            .oauth
            .iter()
            .map(|(name, provider)| Ok((name.clone(), ProviderConfig::resolve(name, provider)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let hash_concurrency = settings.hash_concurrency().positive_or(cores)?;
        let metrics_token = settings.metrics_token().text().map(str::to_owned);
        if metrics_token.as_ref().is_some_and(|token| token.len() < 16) {
            return Err(settings
                .metrics_token()
                .invalid("must be at least 16 characters"));
        }
        let log_format = match settings.log_format().parse::<String>()?.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(settings
                    .log_format()
                    .invalid(format!("must be text or json, not {other:?}")));
            }
        };
        Ok(Self {
            listen,
            database_url,
            redis_url: settings.redis_url().url(&["redis://", "rediss://"])?,
            memory_cache_max_bytes: settings.memory_cache_max_bytes().positive()?,
            redis_prefix: settings.redis_prefix().parse()?,
            public_url,
            jwt_audience: settings.jwt_audience().parse()?,
            secret_key: settings.secret_key().text().map(str::to_owned),
            jwt_hs256_secret,
            jwt_private_key_file: settings.jwt_private_key_file().text().map(PathBuf::from),
            access_token_ttl_seconds: settings.access_token_ttl_seconds().positive()?,
            refresh_token_ttl_seconds: settings.refresh_token_ttl_seconds().positive()?,
            session_max_lifetime_seconds: settings.session_max_lifetime_seconds().positive()?,
            argon2: Argon2Settings {
                memory_kib: settings.argon2_memory_kib().positive()?,
                iterations: settings.argon2_iterations().positive()?,
                parallelism: settings.argon2_parallelism().positive()?,
            },
            hash_concurrency,
            hash_queue_limit: settings
                .hash_queue_limit()
                .positive_or(4 * hash_concurrency)?,
            password_policy,
            breached_passwords_dir: settings.breached_passwords_dir().text().map(PathBuf::from),
            smtp_url: settings.smtp_url().url(&["smtp://", "smtps://"])?,
            mail_from: settings.mail_from().parse()?,
            require_verified_email: settings.require_verified_email().parse()?,
            lockout_threshold: settings.lockout_threshold().positive()?,
            lockout_minutes: settings.lockout_minutes().positive()?,
            usage_flush_seconds: settings.usage_flush_seconds().positive()?,
            rate_limit_auth_per_minute: settings.rate_limit_auth_per_minute().positive()?,
            caller_budgets: CallerBudgets {
                anonymous: Budget::per_minute(
                    settings.rate_limit_anonymous_per_minute().positive()?,
                ),
                user: Budget::per_minute(settings.rate_limit_user_per_minute().positive()?),
                api_key: Budget::per_minute(settings.rate_limit_api_key_per_minute().positive()?),
                organization: Budget::per_minute(
                    settings.rate_limit_organization_per_minute().positive()?,
                ),
                groups: settings.rate_limit_groups().rate_groups()?,
            },
            ip_deny: settings.ip_deny().address_blocks()?,
            rate_limit_mail_per_recipient_per_hour: settings
                .rate_limit_mail_per_recipient_per_hour()
                .positive()?,
            rate_limit_invitations_per_hour: settings
                .rate_limit_invitations_per_hour()
                .positive()?,
            trusted_proxies: settings.trusted_proxies().address_blocks()?,
            cors_allowed_origins,
            oauth_redirect_allowlist,
            oauth_providers,
            sso_allow_private_issuers: settings.sso_allow_private_issuers().parse()?,
            passkeys,
            dns_nameserver: settings
                .dns_nameserver()
                .text()
                .map(|_| settings.dns_nameserver().parse())
                .transpose()?,
            max_concurrent_requests: settings.max_concurrent_requests().positive()?,
            request_timeout_seconds: settings.request_timeout_seconds().positive()?,
            max_body_bytes: settings.max_body_bytes().positive()?,
            sqlite_wal_max_bytes: settings.sqlite_wal_max_bytes().positive()?,
            jobs: JobSettings {
                retry_base: Duration::from_secs(settings.job_retry_base_seconds().positive()?),
                max_attempts: settings.job_max_attempts().positive()?,
                poll_interval: Duration::from_millis(settings.job_poll_milliseconds().positive()?),
                dispatch_poll_interval: Duration::from_millis(
                    settings.event_poll_milliseconds().positive()?,
                ),
                cleanup_schedule: settings.cleanup_schedule().parse()?,
                dependency_check_schedule: settings.dependency_check_schedule().parse()?,
                shutdown_timeout: Duration::from_secs(settings.shutdown_timeout_seconds().parse()?),
            },
            dependency_registry_url: match settings.dependency_registry_url().text() {
                Some(url) if url.trim() == "off" => None,
                _ => settings
                    .dependency_registry_url()
                    .url(&["http://", "https://"])?,
            },
            audit_retention: match settings.audit_retention_days().parse::<u32>()? {
                0 => None,
                days => Some(chrono::Duration::days(days.into())),
            },
            webhooks: WebhookSettings {
                retry_schedule: settings
                    .webhook_retry_schedule()
                    .list()
                    .iter()
                    .map(|seconds| {
                        seconds
                            .parse::<u64>()
                            .map(Duration::from_secs)
                            .map_err(|_| {
                                settings
                                    .webhook_retry_schedule()
                                    .invalid("must be comma-separated whole seconds")
                            })
                    })
                    .collect::<anyhow::Result<_>>()?,
                disable_after_failures: settings.webhook_disable_after_failures().positive()?,
                secret_grace: chrono::Duration::hours(
                    settings.webhook_secret_grace_hours().positive()?,
                ),
                lease: chrono::Duration::seconds(
                    i64::from(settings.webhook_timeout_seconds().positive::<u32>()?) + 30,
                ),
            },
            webhook_timeout: Duration::from_secs(settings.webhook_timeout_seconds().positive()?),
            webhook_allow_private_targets: settings.webhook_allow_private_targets().parse()?,
            integration_max_payload_bytes: match settings
                .integration_max_payload_kib()
                .positive::<usize>()?
            {
                // A gRPC message is at most 4 MiB with the request's other fields.
                kib @ 1..=3072 => kib * 1024,
                _ => {
                    return Err(settings
                        .integration_max_payload_kib()
                        .invalid("must be 1 to 3072"));
                }
            },
            realtime: RealtimeSettings {
                history_events: settings.realtime_history_events().positive()?,
                history_age: chrono::Duration::seconds(
                    settings.realtime_history_seconds().positive()?,
                ),
                queue: settings.realtime_queue().positive()?,
                max_connections_per_user: settings
                    .realtime_max_connections_per_user()
                    .positive()?,
                max_connections_per_ip: settings.realtime_max_connections_per_ip().positive()?,
                heartbeat: Duration::from_secs(settings.realtime_heartbeat_seconds().positive()?),
                idle_timeout: Duration::from_secs(
                    settings.realtime_idle_timeout_seconds().positive()?,
                ),
            },
            max_file_bytes: settings
                .max_file_size_mb()
                .positive::<i64>()?
                .saturating_mul(MIB),
            max_user_storage_bytes: settings
                .max_user_storage_mb()
                .positive::<i64>()?
                .saturating_mul(MIB),
            file_allowed_types: match settings.file_allowed_types().list() {
                types if types.is_empty() => crate::domain::files::DEFAULT_ALLOWED_TYPES
                    .split(',')
                    .map(str::to_owned)
                    .collect(),
                types => types.iter().map(|kind| kind.to_ascii_lowercase()).collect(),
            },
            images: ImageSettings {
                max_dimension: settings.image_max_dimension().positive()?,
                jpeg_quality: match settings.image_jpeg_quality().positive()? {
                    quality @ 1..=100 => quality,
                    _ => return Err(settings.image_jpeg_quality().invalid("must be 1 to 100")),
                },
            },
            file_retention: chrono::Duration::days(settings.file_retention_days().parse()?),
            thumbnail_sizes: {
                let sizes = settings.image_thumbnail_sizes().list();
                let valid = |size: &String| {
                    size.split_once('x').is_some_and(|(width, height)| {
                        [width, height].iter().all(|side| {
                            side.parse::<u32>()
                                .is_ok_and(|side| (1..=4096).contains(&side))
                        })
                    })
                };
                if let Some(invalid) = sizes.iter().find(|size| !valid(size)) {
                    return Err(settings.image_thumbnail_sizes().invalid(format!(
                        "{invalid:?} is not WIDTHxHEIGHT with sides of 1 to 4096"
                    )));
                }
                sizes
            },
            llm_instance: (settings.llm_openai_base_url())
                .url(&["http://", "https://"])?
                .map(|base_url| crate::domain::llm::InstanceProvider {
                    base_url,
                    api_key: (settings.llm_openai_api_key().text())
                        .unwrap_or_default()
                        .to_owned(),
                    default_model: (settings.llm_openai_model().text())
                        .unwrap_or_default()
                        .to_owned(),
                }),
            llm_timeout: Duration::from_secs(settings.llm_timeout_seconds().positive()?),
            llm_allow_private_endpoints: settings.llm_allow_private_endpoints().parse()?,
            s3: match settings.s3_endpoint().url(&["http://", "https://"])? {
                None => None,
                Some(endpoint) => Some(S3Settings {
                    endpoint,
                    bucket: settings.s3_bucket().parse()?,
                    access_key: settings.s3_access_key().parse()?,
                    secret_key: settings.s3_secret_key().parse()?,
                    region: settings.s3_region().parse()?,
                }),
            },
            migrate_on_start: settings.migrate_on_start().parse()?,
            metrics_token,
            log_format,
            otlp_endpoint: settings.otlp_endpoint().url(&["http://", "https://"])?,
            data_dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_embedded_ones() -> anyhow::Result<()> {
        let config = Config::from_settings(&Settings::default())?;
        assert_eq!(config.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(config.database_url, "sqlite://./data/keel.db");
        assert_eq!(config.public_url, "http://127.0.0.1:8000");
        assert!(config.redis_url.is_none());
        Ok(())
    }

    #[test]
    fn passkeys_follow_the_public_url_or_their_own_settings() -> anyhow::Result<()> {
        let passkeys = |public_url: &str, rp_id: Option<&str>, origins: Option<&str>| {
            let settings = Settings {
                public_url: Some(public_url.into()),
                passkey_rp_id: rp_id.map(Into::into),
                passkey_origins: origins.map(Into::into),
                ..Settings::default()
            };
            Config::from_settings(&settings).map(|config| {
                config.passkeys.map(|passkeys| {
                    let origins: Vec<String> =
                        passkeys.origins.iter().map(ToString::to_string).collect();
                    (passkeys.rp_id, origins.join(","))
                })
            })
        };
        let set = |rp_id: &str, origins: &str| Some((rp_id.to_owned(), origins.to_owned()));
        // A loopback address is localhost to a browser; an IP or plain http elsewhere is off.
        assert_eq!(
            passkeys("http://127.0.0.1:8000", None, None)?,
            set("localhost", "http://localhost:8000/")
        );
        assert_eq!(
            passkeys("https://id.example.com", None, None)?,
            set("id.example.com", "https://id.example.com/")
        );
        assert_eq!(passkeys("http://10.0.0.5:8000", None, None)?, None);
        assert_eq!(passkeys("http://keel.test", None, None)?, None);
        // Pages on other hosts under a parent domain.
        assert_eq!(
            passkeys(
                "https://api.example.com",
                Some("example.com"),
                Some("https://app.example.com,https://example.com")
            )?,
            set(
                "example.com",
                "https://app.example.com/,https://example.com/"
            )
        );
        for (rp_id, origins) in [
            ("example.com", "https://evil.com"),
            ("example.com", "http://app.example.com"),
            ("example.com", "not a url"),
        ] {
            let error = passkeys("https://api.example.com", Some(rp_id), Some(origins))
                .expect_err(origins)
                .to_string();
            assert!(error.starts_with("KEEL_PASSKEY_ORIGINS"), "{error}");
        }
        Ok(())
    }

    #[test]
    fn invalid_values_name_the_setting() {
        let settings = Settings {
            listen: Some("not an address".into()),
            ..Settings::default()
        };
        let error = Config::from_settings(&settings)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("KEEL_LISTEN:"), "{error}");

        let settings = Settings {
            access_token_ttl_seconds: Some("0".into()),
            ..Settings::default()
        };
        let error = Config::from_settings(&settings)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("KEEL_ACCESS_TOKEN_TTL_SECONDS:"),
            "{error}"
        );
    }

    #[test]
    fn flags_and_environment_win_over_the_file() {
        let file = Settings {
            listen: Some("127.0.0.1:1".into()),
            data_dir: Some("/from/file".into()),
            ..Settings::default()
        };
        let environment = Settings {
            listen: Some("127.0.0.1:2".into()),
            ..Settings::default()
        };
        let merged = environment.over(file);
        assert_eq!(merged.listen.as_deref(), Some("127.0.0.1:2"));
        assert_eq!(merged.data_dir.as_deref(), Some("/from/file"));
    }

    #[test]
    fn a_provider_from_the_file_takes_its_secret_from_the_environment() -> anyhow::Result<()> {
        let file: Settings = toml::from_str(
            "[oauth.keycloak]\nissuer = \"https://sso.example/realms/keel\"\n\
             client_id = \"keel\"\nclient_secret = \"from-the-file\"\n",
        )?;
        let environment = Settings {
            oauth: crate::oauth::providers_from_env(
                [
                    ("KEEL_OAUTH_KEYCLOAK_CLIENT_ID", "keel"),
                    ("KEEL_OAUTH_KEYCLOAK_CLIENT_SECRET", "from-the-environment"),
                ]
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value.to_owned())),
            ),
            ..Settings::default()
        };
        let config = Config::from_settings(&environment.over(file))?;
        let [(name, ProviderConfig::Oidc(keycloak))] = config.oauth_providers.as_slice() else {
            anyhow::bail!("one OIDC provider expected: {:?}", config.oauth_providers);
        };
        assert_eq!(name, "keycloak");
        assert_eq!(keycloak.issuer, "https://sso.example/realms/keel");
        assert_eq!(keycloak.client_secret, "from-the-environment");
        assert!(toml::from_str::<Settings>("[oauth.x]\nclient_key = \"typo\"\n").is_err());
        Ok(())
    }
}
