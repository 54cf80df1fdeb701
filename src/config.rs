//! Configuration: defaults < config file (TOML) < `KEEL_*` environment variables < flags.
//! Everything is validated at start; an invalid value fails with a message naming the setting.

use crate::domain::password::PasswordPolicy;
use crate::security::password::Argon2Settings;
use anyhow::{Context, bail};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The raw settings, as given by flags, the environment or the config file. Every field is
/// text until validated so that errors can name the setting.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address to listen on [default: 127.0.0.1:8000]
    #[arg(long, global = true, env = "KEEL_LISTEN")]
    pub listen: Option<String>,
    /// Directory for the SQLite database and signing keys [default: ./data]
    #[arg(long, global = true, env = "KEEL_DATA_DIR")]
    pub data_dir: Option<String>,
    /// sqlite:… or postgres://… [default: sqlite://<data dir>/keel.db]
    #[arg(long, global = true, env = "KEEL_DATABASE_URL")]
    pub database_url: Option<String>,
    /// redis://… for a shared cache [default: in-process memory]
    #[arg(long, global = true, env = "KEEL_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Bound on the in-process cache (without Redis), in bytes [default: 67108864]
    #[arg(long, global = true, env = "KEEL_MEMORY_CACHE_MAX_BYTES")]
    pub memory_cache_max_bytes: Option<String>,
    /// Prefix of every Redis key [default: keel:]
    #[arg(long, global = true, env = "KEEL_REDIS_PREFIX")]
    pub redis_prefix: Option<String>,
    /// The URL clients reach Keel at; the token issuer and the base of links [default: http://<listen>]
    #[arg(long, global = true, env = "KEEL_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// The `aud` claim of access tokens [default: keel]
    #[arg(long, global = true, env = "KEEL_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Base64 instance secret (at least 32 bytes) for keyed digests; share it between replicas
    /// [default: generated in the data dir]
    #[arg(long, global = true, env = "KEEL_SECRET_KEY", hide_env_values = true)]
    pub secret_key: Option<String>,
    /// Sign access tokens with HS256 and this secret (at least 32 bytes) instead of EdDSA
    #[arg(
        long,
        global = true,
        env = "KEEL_JWT_HS256_SECRET",
        hide_env_values = true
    )]
    pub jwt_hs256_secret: Option<String>,
    /// An Ed25519 PKCS#8 PEM file to sign with [default: generated under <data dir>/keys]
    #[arg(long, global = true, env = "KEEL_JWT_PRIVATE_KEY_FILE")]
    pub jwt_private_key_file: Option<String>,
    /// Access token lifetime in seconds [default: 900]
    #[arg(long, global = true, env = "KEEL_ACCESS_TOKEN_TTL_SECONDS")]
    pub access_token_ttl_seconds: Option<String>,
    /// Session lifetime without a refresh, in seconds [default: 604800, 7 days]
    #[arg(long, global = true, env = "KEEL_REFRESH_TOKEN_TTL_SECONDS")]
    pub refresh_token_ttl_seconds: Option<String>,
    /// Longest a session lives, however often it is refreshed, in seconds [default: 2592000,
    /// 30 days]
    #[arg(long, global = true, env = "KEEL_SESSION_MAX_LIFETIME_SECONDS")]
    pub session_max_lifetime_seconds: Option<String>,
    /// argon2id memory in KiB [default: 19456]
    #[arg(long, global = true, env = "KEEL_ARGON2_MEMORY_KIB")]
    pub argon2_memory_kib: Option<String>,
    /// argon2id iterations [default: 2]
    #[arg(long, global = true, env = "KEEL_ARGON2_ITERATIONS")]
    pub argon2_iterations: Option<String>,
    /// argon2id parallelism [default: 1]
    #[arg(long, global = true, env = "KEEL_ARGON2_PARALLELISM")]
    pub argon2_parallelism: Option<String>,
    /// Password hashes computed at once [default: number of cores]
    #[arg(long, global = true, env = "KEEL_HASH_CONCURRENCY")]
    pub hash_concurrency: Option<String>,
    /// Password hashes allowed to wait for a hashing thread; past it, calls that need one are
    /// refused at once with 503 / RESOURCE_EXHAUSTED [default: 4 × KEEL_HASH_CONCURRENCY]
    #[arg(long, global = true, env = "KEEL_HASH_QUEUE_LIMIT")]
    pub hash_queue_limit: Option<String>,
    /// Minimum password length [default: 12]
    #[arg(long, global = true, env = "KEEL_PASSWORD_MIN_LENGTH")]
    pub password_min_length: Option<String>,
    /// Require a lower-case letter [default: false]
    #[arg(long, global = true, env = "KEEL_PASSWORD_REQUIRE_LOWERCASE")]
    pub password_require_lowercase: Option<String>,
    /// Require an upper-case letter [default: false]
    #[arg(long, global = true, env = "KEEL_PASSWORD_REQUIRE_UPPERCASE")]
    pub password_require_uppercase: Option<String>,
    /// Require a digit [default: false]
    #[arg(long, global = true, env = "KEEL_PASSWORD_REQUIRE_DIGIT")]
    pub password_require_digit: Option<String>,
    /// Require a symbol [default: false]
    #[arg(long, global = true, env = "KEEL_PASSWORD_REQUIRE_SYMBOL")]
    pub password_require_symbol: Option<String>,
    /// A directory of Have I Been Pwned range files (`21BD1.txt`…); new passwords found there
    /// are refused [default: none]
    #[arg(long, global = true, env = "KEEL_BREACHED_PASSWORDS_DIR")]
    pub breached_passwords_dir: Option<String>,
    /// smtp://host:port or smtps://user:password@host:port [default: dev outbox, logged]
    #[arg(long, global = true, env = "KEEL_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,
    /// Sender of Keel's mail [default: Keel <no-reply@localhost>]
    #[arg(long, global = true, env = "KEEL_MAIL_FROM")]
    pub mail_from: Option<String>,
    /// Refuse sign-in until the email address is verified [default: false]
    #[arg(long, global = true, env = "KEEL_REQUIRE_VERIFIED_EMAIL")]
    pub require_verified_email: Option<String>,
    /// Consecutive failed sign-ins that lock an account [default: 5]
    #[arg(long, global = true, env = "KEEL_LOCKOUT_THRESHOLD")]
    pub lockout_threshold: Option<String>,
    /// How long a locked account stays locked, in minutes [default: 15]
    #[arg(long, global = true, env = "KEEL_LOCKOUT_MINUTES")]
    pub lockout_minutes: Option<String>,
    /// Seconds between writes of the usage counters (API calls) from the cache to the
    /// database [default: 10]
    #[arg(long, global = true, env = "KEEL_USAGE_FLUSH_SECONDS")]
    pub usage_flush_seconds: Option<String>,
    /// Sign-in attempts per minute, per client address and per account [default: 20]
    #[arg(long, global = true, env = "KEEL_RATE_LIMIT_AUTH_PER_MINUTE")]
    pub rate_limit_auth_per_minute: Option<String>,
    /// Messages strangers can have sent to one address per hour: verification, reset and
    /// magic links, invitations [default: 10]
    #[arg(
        long,
        global = true,
        env = "KEEL_RATE_LIMIT_MAIL_PER_RECIPIENT_PER_HOUR"
    )]
    pub rate_limit_mail_per_recipient_per_hour: Option<String>,
    /// Invitations (new or resent) each organization may send per hour [default: 100]
    #[arg(long, global = true, env = "KEEL_RATE_LIMIT_INVITATIONS_PER_HOUR")]
    pub rate_limit_invitations_per_hour: Option<String>,
    /// Calls per minute each member (and each API key) may make in one organization
    /// [default: 1200]
    #[arg(long, global = true, env = "KEEL_RATE_LIMIT_MEMBER_PER_MINUTE")]
    pub rate_limit_member_per_minute: Option<String>,
    /// Comma-separated proxy addresses or CIDR blocks whose X-Forwarded-For is believed
    /// [default: none]
    #[arg(long, global = true, env = "KEEL_TRUSTED_PROXIES")]
    pub trusted_proxies: Option<String>,
    /// Comma-separated browser origins allowed by CORS (https://app.example.com) [default: none]
    #[arg(long, global = true, env = "KEEL_CORS_ALLOWED_ORIGINS")]
    pub cors_allowed_origins: Option<String>,
    /// RPCs served at once; past it, calls are refused at once with 503 / RESOURCE_EXHAUSTED
    /// `SERVER_BUSY` [default: 1024]
    #[arg(long, global = true, env = "KEEL_MAX_CONCURRENT_REQUESTS")]
    pub max_concurrent_requests: Option<String>,
    /// Seconds an RPC may take before its caller is answered 503 / UNAVAILABLE
    /// `REQUEST_TIMEOUT` (the work itself still completes) [default: 30]
    #[arg(long, global = true, env = "KEEL_REQUEST_TIMEOUT_SECONDS")]
    pub request_timeout_seconds: Option<String>,
    /// Largest accepted REST request body in bytes [default: 1048576]
    #[arg(long, global = true, env = "KEEL_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<String>,
    /// Bound on SQLite's write-ahead log in bytes: past it, the log is checkpointed and emptied
    /// (checked every 5 s) [default: 67108864]
    #[arg(long, global = true, env = "KEEL_SQLITE_WAL_MAX_BYTES")]
    pub sqlite_wal_max_bytes: Option<String>,
    /// Apply pending database migrations at start [default: true]
    #[arg(long, global = true, env = "KEEL_MIGRATE_ON_START")]
    pub migrate_on_start: Option<String>,
    /// Bearer token that `/metrics` requires; unset, `/metrics` is open [default: none]
    #[arg(
        long,
        global = true,
        env = "KEEL_METRICS_TOKEN",
        hide_env_values = true
    )]
    pub metrics_token: Option<String>,
    /// Log format: text or json [default: text]
    #[arg(long, global = true, env = "KEEL_LOG_FORMAT")]
    pub log_format: Option<String>,
}

impl Settings {
    /// Reads a TOML config file whose keys are the settings' names (`listen`, `database_url`…).
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
    }

    /// `self`'s values where given, `lower`'s otherwise.
    pub fn over(self, lower: Settings) -> Settings {
        macro_rules! pick {
            ($($field:ident),* $(,)?) => {
                Settings { $($field: self.$field.or(lower.$field)),* }
            };
        }
        pick!(
            listen,
            data_dir,
            database_url,
            redis_url,
            memory_cache_max_bytes,
            redis_prefix,
            public_url,
            jwt_audience,
            secret_key,
            jwt_hs256_secret,
            jwt_private_key_file,
            access_token_ttl_seconds,
            refresh_token_ttl_seconds,
            session_max_lifetime_seconds,
            argon2_memory_kib,
            argon2_iterations,
            argon2_parallelism,
            hash_concurrency,
            hash_queue_limit,
            password_min_length,
            password_require_lowercase,
            password_require_uppercase,
            password_require_digit,
            password_require_symbol,
            breached_passwords_dir,
            smtp_url,
            mail_from,
            require_verified_email,
            lockout_threshold,
            lockout_minutes,
            usage_flush_seconds,
            rate_limit_auth_per_minute,
            rate_limit_member_per_minute,
            rate_limit_mail_per_recipient_per_hour,
            rate_limit_invitations_per_hour,
            trusted_proxies,
            cors_allowed_origins,
            max_concurrent_requests,
            request_timeout_seconds,
            max_body_bytes,
            sqlite_wal_max_bytes,
            migrate_on_start,
            metrics_token,
            log_format,
        )
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
    pub rate_limit_member_per_minute: u32,
    pub rate_limit_mail_per_recipient_per_hour: u32,
    pub rate_limit_invitations_per_hour: u32,
    pub trusted_proxies: Vec<String>,
    pub cors_allowed_origins: Vec<String>,
    pub max_concurrent_requests: usize,
    pub request_timeout_seconds: u32,
    pub max_body_bytes: usize,
    pub sqlite_wal_max_bytes: u64,
    pub migrate_on_start: bool,
    pub metrics_token: Option<String>,
    pub log_format: LogFormat,
}

fn parse<T: FromStr>(value: Option<&str>, env: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    match value {
        None => Ok(default),
        Some(raw) => raw
            .trim()
            .parse()
            .map_err(|error| anyhow::anyhow!("{env}: invalid value {raw:?}: {error}")),
    }
}

fn parse_positive<T: FromStr + PartialOrd + Default>(
    value: Option<&str>,
    env: &str,
    default: T,
) -> anyhow::Result<T>
where
    T::Err: std::fmt::Display,
{
    let parsed = parse(value, env, default)?;
    if parsed <= T::default() {
        bail!("{env}: must be greater than zero");
    }
    Ok(parsed)
}

/// The non-blank items of a comma-separated setting.
fn comma_list(value: &Option<String>) -> Vec<String> {
    text(value)
        .map(|list| {
            list.split(',')
                .map(|item| item.trim().to_owned())
                .filter(|item| !item.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// A setting's text, with blank values counting as unset.
fn text(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|raw| !raw.trim().is_empty())
}

impl Config {
    pub fn from_settings(settings: &Settings) -> anyhow::Result<Self> {
        let listen: SocketAddr = parse(
            text(&settings.listen),
            "KEEL_LISTEN",
            SocketAddr::from(([127, 0, 0, 1], 8000)),
        )?;
        let data_dir = PathBuf::from(text(&settings.data_dir).unwrap_or("./data"));
        let database_url = match text(&settings.database_url) {
            Some(url) => url.to_owned(),
            None => format!("sqlite://{}", data_dir.join("keel.db").display()),
        };
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            bail!("KEEL_DATABASE_URL: must start with sqlite: or postgres://");
        }
        let redis_url = text(&settings.redis_url).map(str::to_owned);
        if let Some(url) = &redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            bail!("KEEL_REDIS_URL: must start with redis:// or rediss://");
        }
        let public_url = text(&settings.public_url)
            .map(|url| url.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| format!("http://{listen}"));
        if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
            bail!("KEEL_PUBLIC_URL: must start with http:// or https://");
        }
        let defaults = PasswordPolicy::default();
        let password_policy = PasswordPolicy {
            min_length: parse_positive(
                text(&settings.password_min_length),
                "KEEL_PASSWORD_MIN_LENGTH",
                defaults.min_length,
            )?,
            max_length: defaults.max_length,
            require_lowercase: parse(
                text(&settings.password_require_lowercase),
                "KEEL_PASSWORD_REQUIRE_LOWERCASE",
                defaults.require_lowercase,
            )?,
            require_uppercase: parse(
                text(&settings.password_require_uppercase),
                "KEEL_PASSWORD_REQUIRE_UPPERCASE",
                defaults.require_uppercase,
            )?,
            require_digit: parse(
                text(&settings.password_require_digit),
                "KEEL_PASSWORD_REQUIRE_DIGIT",
                defaults.require_digit,
            )?,
            require_symbol: parse(
                text(&settings.password_require_symbol),
                "KEEL_PASSWORD_REQUIRE_SYMBOL",
                defaults.require_symbol,
            )?,
        };
        if password_policy.min_length > password_policy.max_length {
            bail!(
                "KEEL_PASSWORD_MIN_LENGTH: must be at most {}",
                password_policy.max_length
            );
        }
        let argon2_defaults = Argon2Settings::default();
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let jwt_hs256_secret = text(&settings.jwt_hs256_secret).map(str::to_owned);
        if jwt_hs256_secret
            .as_ref()
            .is_some_and(|secret| secret.len() < 32)
        {
            bail!("KEEL_JWT_HS256_SECRET: must be at least 32 bytes");
        }
        let cors_allowed_origins = comma_list(&settings.cors_allowed_origins);
        for origin in &cors_allowed_origins {
            let scheme_ok = origin.starts_with("http://") || origin.starts_with("https://");
            let path_free = origin.splitn(4, '/').nth(3).is_none();
            if !scheme_ok || !path_free {
                bail!(
                    "KEEL_CORS_ALLOWED_ORIGINS: {origin:?} is not an origin like https://app.example.com"
                );
            }
        }
        let smtp_url = text(&settings.smtp_url).map(str::to_owned);
        if let Some(url) = &smtp_url
            && !(url.starts_with("smtp://") || url.starts_with("smtps://"))
        {
            bail!("KEEL_SMTP_URL: must start with smtp:// or smtps://");
        }
        let hash_concurrency = parse_positive(
            text(&settings.hash_concurrency),
            "KEEL_HASH_CONCURRENCY",
            cores,
        )?;
        let metrics_token = text(&settings.metrics_token).map(str::to_owned);
        if metrics_token.as_ref().is_some_and(|token| token.len() < 16) {
            bail!("KEEL_METRICS_TOKEN: must be at least 16 characters");
        }
        let log_format = match text(&settings.log_format).unwrap_or("text") {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => bail!("KEEL_LOG_FORMAT: must be text or json, not {other:?}"),
        };
        Ok(Self {
            listen,
            database_url,
            redis_url,
            memory_cache_max_bytes: parse_positive(
                text(&settings.memory_cache_max_bytes),
                "KEEL_MEMORY_CACHE_MAX_BYTES",
                64 * 1024 * 1024,
            )?,
            redis_prefix: text(&settings.redis_prefix).unwrap_or("keel:").to_owned(),
            public_url,
            jwt_audience: text(&settings.jwt_audience).unwrap_or("keel").to_owned(),
            secret_key: text(&settings.secret_key).map(str::to_owned),
            jwt_hs256_secret,
            jwt_private_key_file: text(&settings.jwt_private_key_file).map(PathBuf::from),
            access_token_ttl_seconds: parse_positive(
                text(&settings.access_token_ttl_seconds),
                "KEEL_ACCESS_TOKEN_TTL_SECONDS",
                900,
            )?,
            refresh_token_ttl_seconds: parse_positive(
                text(&settings.refresh_token_ttl_seconds),
                "KEEL_REFRESH_TOKEN_TTL_SECONDS",
                7 * 24 * 3600,
            )?,
            session_max_lifetime_seconds: parse_positive(
                text(&settings.session_max_lifetime_seconds),
                "KEEL_SESSION_MAX_LIFETIME_SECONDS",
                30 * 24 * 3600,
            )?,
            argon2: Argon2Settings {
                memory_kib: parse_positive(
                    text(&settings.argon2_memory_kib),
                    "KEEL_ARGON2_MEMORY_KIB",
                    argon2_defaults.memory_kib,
                )?,
                iterations: parse_positive(
                    text(&settings.argon2_iterations),
                    "KEEL_ARGON2_ITERATIONS",
                    argon2_defaults.iterations,
                )?,
                parallelism: parse_positive(
                    text(&settings.argon2_parallelism),
                    "KEEL_ARGON2_PARALLELISM",
                    argon2_defaults.parallelism,
                )?,
            },
            hash_concurrency,
            hash_queue_limit: parse_positive(
                text(&settings.hash_queue_limit),
                "KEEL_HASH_QUEUE_LIMIT",
                4 * hash_concurrency,
            )?,
            password_policy,
            breached_passwords_dir: text(&settings.breached_passwords_dir).map(PathBuf::from),
            smtp_url,
            mail_from: text(&settings.mail_from)
                .unwrap_or("Keel <no-reply@localhost>")
                .to_owned(),
            require_verified_email: parse(
                text(&settings.require_verified_email),
                "KEEL_REQUIRE_VERIFIED_EMAIL",
                false,
            )?,
            lockout_threshold: parse_positive(
                text(&settings.lockout_threshold),
                "KEEL_LOCKOUT_THRESHOLD",
                5,
            )?,
            lockout_minutes: parse_positive(
                text(&settings.lockout_minutes),
                "KEEL_LOCKOUT_MINUTES",
                15,
            )?,
            usage_flush_seconds: parse_positive(
                text(&settings.usage_flush_seconds),
                "KEEL_USAGE_FLUSH_SECONDS",
                10,
            )?,
            rate_limit_auth_per_minute: parse_positive(
                text(&settings.rate_limit_auth_per_minute),
                "KEEL_RATE_LIMIT_AUTH_PER_MINUTE",
                20,
            )?,
            rate_limit_member_per_minute: parse_positive(
                text(&settings.rate_limit_member_per_minute),
                "KEEL_RATE_LIMIT_MEMBER_PER_MINUTE",
                1200,
            )?,
            rate_limit_mail_per_recipient_per_hour: parse_positive(
                text(&settings.rate_limit_mail_per_recipient_per_hour),
                "KEEL_RATE_LIMIT_MAIL_PER_RECIPIENT_PER_HOUR",
                10,
            )?,
            rate_limit_invitations_per_hour: parse_positive(
                text(&settings.rate_limit_invitations_per_hour),
                "KEEL_RATE_LIMIT_INVITATIONS_PER_HOUR",
                100,
            )?,
            trusted_proxies: comma_list(&settings.trusted_proxies),
            cors_allowed_origins,
            max_concurrent_requests: parse_positive(
                text(&settings.max_concurrent_requests),
                "KEEL_MAX_CONCURRENT_REQUESTS",
                1024,
            )?,
            request_timeout_seconds: parse_positive(
                text(&settings.request_timeout_seconds),
                "KEEL_REQUEST_TIMEOUT_SECONDS",
                30,
            )?,
            max_body_bytes: parse_positive(
                text(&settings.max_body_bytes),
                "KEEL_MAX_BODY_BYTES",
                1024 * 1024,
            )?,
            sqlite_wal_max_bytes: parse_positive(
                text(&settings.sqlite_wal_max_bytes),
                "KEEL_SQLITE_WAL_MAX_BYTES",
                64 * 1024 * 1024,
            )?,
            migrate_on_start: parse(
                text(&settings.migrate_on_start),
                "KEEL_MIGRATE_ON_START",
                true,
            )?,
            metrics_token,
            log_format,
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
}
