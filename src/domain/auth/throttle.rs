//! Brute-force defences on sign-in: rate limits per client address and per account, and the
//! lockout of an account after consecutive failures.
//!
//! All state lives in the cache port, keyed by a digest of the normalized email, so that an
//! unknown email is throttled and locked exactly like a real account (a lock reveals nothing
//! about existence) and a brute-force attempt costs no database write.

use super::AuthService;
use super::session::ClientInfo;
use crate::domain::error::{Error, ErrorKind, Result};
use crate::domain::secret;
use chrono::{DateTime, Duration, Utc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleSettings {
    /// Consecutive failures that lock an account.
    pub lockout_threshold: u32,
    pub lockout_duration: Duration,
    /// Sign-in attempts per minute, per client address and per account.
    pub attempts_per_minute: u32,
}

/// The throttling identity of an email: a digest, so raw addresses never sit in the cache.
pub(super) fn account_key(email: &str) -> String {
    secret::digest_hex(email.trim().to_lowercase().as_str())
}

fn lock_key(account: &str) -> String {
    format!("lock:{account}")
}

fn failures_key(account: &str) -> String {
    format!("login-failures:{account}")
}

fn seconds_until(moment: DateTime<Utc>, now: DateTime<Utc>) -> std::time::Duration {
    let seconds = (moment - now).num_seconds().max(1);
    std::time::Duration::from_secs(u64::try_from(seconds).unwrap_or(1))
}

impl AuthService {
    /// Refuses a sign-in attempt over the rate limits or on a locked account, before any
    /// password is checked.
    pub(super) async fn admit_attempt(&self, account: &str, client: &ClientInfo) -> Result<()> {
        self.admit_rate("sign-in", account, client).await?;
        let now = self.clock.now();
        if let Some(locked_until) = self.locked_until(account).await?
            && locked_until > now
        {
            return Err(Error {
                retry_after: Some(seconds_until(locked_until, now)),
                ..Error::unauthenticated(
                    "ACCOUNT_LOCKED",
                    "too many failed sign-ins: the account is locked for a while",
                )
            });
        }
        Ok(())
    }

    /// Counts a request against the per-minute budgets of `scope`, per client address and
    /// per account.
    pub(super) async fn admit_rate(
        &self,
        scope: &str,
        account: &str,
        client: &ClientInfo,
    ) -> Result<()> {
        let now = self.clock.now();
        let window = now.timestamp() / 60;
        let window_end = DateTime::<Utc>::from_timestamp((window + 1) * 60, 0).unwrap_or(now);
        let mut subjects = vec![format!("rate:{scope}:account:{account}:{window}")];
        if let Some(ip) = &client.ip_address {
            subjects.push(format!("rate:{scope}:ip:{ip}:{window}"));
        }
        for key in subjects {
            let attempts = self
                .cache
                .increment(&key, 1, std::time::Duration::from_secs(60))
                .await?;
            if attempts > u64::from(self.settings.throttle.attempts_per_minute) {
                return Err(Error {
                    retry_after: Some(seconds_until(window_end, now)),
                    ..Error::new(
                        ErrorKind::ResourceExhausted,
                        "RATE_LIMITED",
                        "too many attempts, try again later",
                    )
                });
            }
        }
        Ok(())
    }

    async fn locked_until(&self, account: &str) -> Result<Option<DateTime<Utc>>> {
        let value = self.cache.get(&lock_key(account)).await?;
        Ok(value
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| DateTime::parse_from_rfc3339(&text).ok())
            .map(|moment| moment.with_timezone(&Utc)))
    }

    /// Counts a failed attempt; the one that reaches the threshold locks the account.
    pub(super) async fn record_failure(&self, account: &str) -> Result<()> {
        let duration = self.settings.throttle.lockout_duration;
        let window = duration
            .to_std()
            .unwrap_or(std::time::Duration::from_secs(900));
        let failures = self
            .cache
            .increment(&failures_key(account), 1, window)
            .await?;
        if failures < u64::from(self.settings.throttle.lockout_threshold) {
            return Ok(());
        }
        let locked_until = self.clock.now() + duration;
        self.cache
            .set(
                &lock_key(account),
                locked_until.to_rfc3339().as_bytes(),
                window,
            )
            .await?;
        self.cache.delete(&failures_key(account)).await?;
        tracing::warn!(account, %locked_until, "account locked after repeated failed sign-ins");
        Ok(())
    }

    /// Lifts a lock and its failure count (after a password reset).
    pub(super) async fn clear_lockout(&self, account: &str) -> Result<()> {
        self.cache.delete(&lock_key(account)).await?;
        self.cache.delete(&failures_key(account)).await
    }

    /// A successful sign-in clears the failure count.
    pub(super) async fn record_success(&self, account: &str) -> Result<()> {
        self.cache.delete(&failures_key(account)).await
    }
}
