//! Rate limits, kept in the cache port (shared by replicas with Redis) by the generic cell rate
//! algorithm: a budget of `limit` events per `window` admits a burst of `limit`, then one
//! event every `window / limit`; one atomic round trip per event. Refused past the limit with
//! `RATE_LIMITED` and a `Retry-After` to the moment the next event fits.

use super::cache::Cache;
use super::clock::Clock;
use super::error::{Error, ErrorKind, Result};
use super::secret;
use std::sync::Arc;
use std::time::Duration;

pub struct RateLimits {
    cache: Arc<dyn Cache>,
    clock: Arc<dyn Clock>,
}

/// A budget: at most `limit` events per `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub limit: u32,
    pub window: Duration,
}

impl Budget {
    pub fn per_minute(limit: u32) -> Self {
        Self {
            limit,
            window: Duration::from_secs(60),
        }
    }

    pub fn per_hour(limit: u32) -> Self {
        Self {
            limit,
            window: Duration::from_secs(3600),
        }
    }
}

/// The budgets of the API's callers by class (every call spends its caller's), with further
/// budgets per group of RPCs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerBudgets {
    /// Per client address, for calls without valid credentials.
    pub anonymous: Budget,
    /// Per signed-in user.
    pub user: Budget,
    /// Per API key.
    pub api_key: Budget,
    /// Per organization, for the calls admitted to it, all callers together.
    pub organization: Budget,
    /// A budget per caller for the RPCs whose name (`keel.file.v1.FileService/UploadFile`)
    /// starts with the prefix.
    pub groups: Vec<(String, Budget)>,
}

/// Where a caller stands in a budget after one event (the `RateLimit-*` headers' figures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    pub budget: Budget,
    pub remaining: u32,
    /// Until the budget is whole again.
    pub reset: Duration,
    /// Set when the event was refused: when the next one would be admitted.
    pub retry_after: Option<Duration>,
}

impl Allowance {
    /// Refused, as the caller sees it.
    pub fn refusal(&self, message: &'static str) -> Error {
        Error {
            retry_after: self.retry_after,
            ..Error::new(ErrorKind::ResourceExhausted, "RATE_LIMITED", message)
        }
    }
}

impl RateLimits {
    pub fn new(cache: Arc<dyn Cache>, clock: Arc<dyn Clock>) -> Self {
        Self { cache, clock }
    }

    /// Counts one event of `subject` (a key naming who or what is limited) when the budget
    /// has room, and says where the subject stands. A refused event costs nothing.
    pub async fn spend(&self, subject: &str, budget: Budget) -> Result<Allowance> {
        let window_ms = i64::try_from(budget.window.as_millis()).unwrap_or(i64::MAX);
        let interval_ms = (window_ms / i64::from(budget.limit.max(1))).max(1);
        let period_ms = interval_ms * i64::from(budget.limit);
        let spent = self
            .cache
            .spend(
                &format!("rate:{subject}"),
                self.clock.now().timestamp_millis(),
                interval_ms,
                period_ms,
            )
            .await?;
        let millis = |ms: i64| Duration::from_millis(u64::try_from(ms).unwrap_or(0));
        Ok(if spent.admitted {
            Allowance {
                budget,
                remaining: u32::try_from((period_ms - spent.backlog_ms) / interval_ms).unwrap_or(0),
                reset: millis(spent.backlog_ms),
                retry_after: None,
            }
        } else {
            Allowance {
                budget,
                remaining: 0,
                reset: millis(spent.backlog_ms - interval_ms),
                retry_after: Some(millis(spent.backlog_ms - period_ms)),
            }
        })
    }

    /// As `spend`, refusing past the budget with `RATE_LIMITED`; `message` tells the caller
    /// what they did too often.
    pub async fn admit(&self, subject: &str, budget: Budget, message: &'static str) -> Result<()> {
        let allowance = self.spend(subject, budget).await?;
        match allowance.retry_after {
            None => Ok(()),
            Some(_) => Err(allowance.refusal(message)),
        }
    }

    /// One more message to `email`, of any kind and whoever asked for it: the bound on the
    /// mail a stranger can make Keel send to one address. Keyed by a digest of the address,
    /// existing account or not, so a refusal reveals nothing.
    pub async fn admit_mail_to(&self, email: &str, budget: Budget) -> Result<()> {
        let recipient = secret::digest_hex(email.trim().to_lowercase().as_str());
        self.admit(
            &format!("mail-to:{recipient}"),
            budget,
            "too many messages went to this address lately, try again later",
        )
        .await
    }
}
