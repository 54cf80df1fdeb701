//! Brute-force defences on sign-in: rate limits per client address and per account, and the
//! lockout of an account after consecutive failures.
//!
//! All state lives in the cache port, keyed by a digest of the normalized email, so that an
//! unknown email is throttled and locked exactly like a real account (a lock reveals nothing
//! about existence). The one database write of a failed attempt is its audit event.

use super::AuthService;
use super::session::ClientInfo;
use crate::domain::error::{Error, Result};
use crate::domain::events::{Event, EventKind, Origin, SignInFailureData};
use crate::domain::rate::Budget;
use crate::domain::secret;
use chrono::{DateTime, Duration, Utc};
use std::future::Future;

const RATE_MESSAGE: &str = "too many attempts, try again later";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleSettings {
    /// Consecutive failures that lock an account.
    pub lockout_threshold: u32,
    pub lockout_duration: Duration,
    /// Sign-in attempts per minute, per client address and per account.
    pub attempts_per_minute: u32,
    /// Messages a stranger can have sent to one address (links, invitations), per hour.
    pub mail_per_recipient_per_hour: u32,
}

/// The throttling identity of an email: a digest, so raw addresses never sit in the cache.
pub(super) fn account_key(email: &str) -> String {
    secret::digest_hex(email.trim().to_lowercase().as_str())
}

fn lock_key(account: &str) -> String {
    format!("lock:{account}")
}

/// Attempts admitted since the last success: being checked, or checked and failed.
fn attempts_key(account: &str) -> String {
    format!("login-attempts:{account}")
}

/// Attempts checked and failed since the last success; the lock comes from these alone, so
/// attempts still being checked never lock the account early.
fn failures_key(account: &str) -> String {
    format!("login-failures:{account}")
}

fn seconds_until(moment: DateTime<Utc>, now: DateTime<Utc>) -> std::time::Duration {
    let seconds = (moment - now).num_seconds().max(1);
    std::time::Duration::from_secs(u64::try_from(seconds).unwrap_or(1))
}

/// When the attempts allowed are being checked, how soon another may be.
const IN_FLIGHT_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

fn account_locked(retry_after: std::time::Duration) -> Error {
    Error {
        retry_after: Some(retry_after),
        ..Error::unauthenticated(
            "ACCOUNT_LOCKED",
            "too many failed sign-ins: the account is locked for a while",
        )
    }
}

impl AuthService {
    /// Admits one sign-in attempt (a password, a code) for `account`, before it is checked:
    /// refused over the rate limits or on a locked account. The attempt is counted here, in one
    /// atomic increment, so that N parallel guesses get at most the configured number of
    /// checks; `record_success` clears the count, `record_failure` turns the last allowed
    /// failure into a lock, `release_attempt` takes back an attempt that was never judged.
    pub(super) async fn admit_attempt(&self, account: &str, client: &ClientInfo) -> Result<()> {
        self.admit_rate("sign-in", account, client).await?;
        self.refuse_if_locked(account).await?;
        let threshold = u64::from(self.settings.throttle.lockout_threshold);
        let admitted = self
            .cache
            .increment_below(&attempts_key(account), threshold, self.lockout_window())
            .await?;
        if admitted.is_none() {
            // The attempts allowed are under way; the last of them to fail sets the lock, a
            // success frees them all.
            return Err(account_locked(IN_FLIGHT_RETRY));
        }
        // A lock set while this attempt was counted (the count then started again from zero).
        if let Err(locked) = self.refuse_if_locked(account).await {
            self.release_attempt(account).await?;
            return Err(locked);
        }
        Ok(())
    }

    async fn refuse_if_locked(&self, account: &str) -> Result<()> {
        let now = self.clock.now();
        if let Some(until) = self.locked_until(account).await?
            && until > now
        {
            return Err(account_locked(seconds_until(until, now)));
        }
        Ok(())
    }

    fn lockout_window(&self) -> std::time::Duration {
        self.settings
            .throttle
            .lockout_duration
            .to_std()
            .unwrap_or(std::time::Duration::from_secs(900))
    }

    /// Counts a request against the per-minute budgets of `scope`, per client address and
    /// per account.
    pub(super) async fn admit_rate(
        &self,
        scope: &str,
        account: &str,
        client: &ClientInfo,
    ) -> Result<()> {
        self.rate_limits
            .admit(
                &format!("{scope}:account:{account}"),
                self.attempt_budget(),
                RATE_MESSAGE,
            )
            .await?;
        self.admit_client(scope, client).await
    }

    /// Counts a request against the per-minute budget of `scope` per client address.
    pub(super) async fn admit_client(&self, scope: &str, client: &ClientInfo) -> Result<()> {
        if let Some(ip) = &client.ip_address {
            self.rate_limits
                .admit(
                    &format!("{scope}:ip:{ip}"),
                    self.attempt_budget(),
                    RATE_MESSAGE,
                )
                .await?;
        }
        Ok(())
    }

    fn attempt_budget(&self) -> Budget {
        Budget::per_minute(self.settings.throttle.attempts_per_minute)
    }

    async fn locked_until(&self, account: &str) -> Result<Option<DateTime<Utc>>> {
        let value = self.cache.get(&lock_key(account)).await?;
        Ok(value
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|text| DateTime::parse_from_rfc3339(&text).ok())
            .map(|moment| moment.with_timezone(&Utc)))
    }

    /// Records that an admitted attempt failed; the failure that reaches the threshold locks the
    /// account for the lockout duration, and the counts start again for after the lock.
    pub(super) async fn record_failure(
        &self,
        account: &str,
        origin: &Origin,
        failure: SignInFailureData,
    ) -> Result<()> {
        let window = self.lockout_window();
        let failures = self
            .cache
            .increment(&failures_key(account), 1, window)
            .await?;
        let locks = failures >= u64::from(self.settings.throttle.lockout_threshold);
        let mut events = vec![Event::new(
            EventKind::UserLoginFailed,
            origin,
            self.clock.as_ref(),
            &failure,
        )];
        if locks {
            let locked = SignInFailureData {
                reason: "locked_out".to_owned(),
                ..failure
            };
            events.push(Event::new(
                EventKind::UserLockedOut,
                origin,
                self.clock.as_ref(),
                &locked,
            ));
        }
        self.events.append_events(&events).await?;
        if !locks {
            return Ok(());
        }
        let locked_until = self.clock.now() + self.settings.throttle.lockout_duration;
        self.cache
            .set(
                &lock_key(account),
                locked_until.to_rfc3339().as_bytes(),
                window,
            )
            .await?;
        self.forget_attempts(account).await?;
        tracing::warn!(account, %locked_until, "account locked after repeated failed sign-ins");
        Ok(())
    }

    /// Records a sign-in refused after its credentials were checked (a disabled account, an
    /// unverified address); answers `error`, the refusal the caller sees.
    pub(super) async fn refused(
        &self,
        origin: &Origin,
        failure: SignInFailureData,
        error: Error,
    ) -> Error {
        let event = Event::new(
            EventKind::UserLoginFailed,
            origin,
            self.clock.as_ref(),
            &failure,
        );
        if let Err(not_recorded) = self.events.append_events(&[event]).await {
            return not_recorded;
        }
        error
    }

    /// One more message to `email` within the per-recipient budget.
    pub(super) async fn admit_mail_to(&self, email: &str) -> Result<()> {
        let budget = Budget::per_hour(self.settings.throttle.mail_per_recipient_per_hour);
        self.rate_limits.admit_mail_to(email, budget).await
    }

    /// Runs the check of an admitted attempt; when it fails before a verdict (an error rather
    /// than a yes or no), the attempt is taken back.
    pub(super) async fn judged<T>(
        &self,
        account: &str,
        check: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        match check.await {
            Ok(verdict) => Ok(verdict),
            Err(error) => {
                self.release_attempt(account).await?;
                Err(error)
            }
        }
    }

    /// Takes back an admitted attempt that ended without a verdict (the server was busy, a
    /// backing service failed, a precondition did not hold): only a checked password or code
    /// counts towards the lockout.
    pub(super) async fn release_attempt(&self, account: &str) -> Result<()> {
        self.cache.decrement(&attempts_key(account)).await
    }

    /// Lifts a lock and its counts (after a password reset).
    pub(super) async fn clear_lockout(&self, account: &str) -> Result<()> {
        self.cache.delete(&lock_key(account)).await?;
        self.forget_attempts(account).await
    }

    /// A successful attempt clears the counts.
    pub(super) async fn record_success(&self, account: &str) -> Result<()> {
        self.forget_attempts(account).await
    }

    async fn forget_attempts(&self, account: &str) -> Result<()> {
        self.cache.delete(&attempts_key(account)).await?;
        self.cache.delete(&failures_key(account)).await
    }
}
