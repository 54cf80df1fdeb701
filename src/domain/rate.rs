//! Fixed-window rate limits, counted in the cache port (shared by replicas with Redis): one
//! atomic increment per event, refused past the limit with `RATE_LIMITED` and a `Retry-After`
//! to the end of the window.

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

impl RateLimits {
    pub fn new(cache: Arc<dyn Cache>, clock: Arc<dyn Clock>) -> Self {
        Self { cache, clock }
    }

    /// Counts one event of `subject` (a key naming who or what is limited) in the current
    /// window; `message` tells the caller what they did too often.
    pub async fn admit(&self, subject: &str, budget: Budget, message: &'static str) -> Result<()> {
        let window_seconds = i64::try_from(budget.window.as_secs().max(1)).unwrap_or(i64::MAX);
        let now = self.clock.now().timestamp();
        let window = now.div_euclid(window_seconds);
        let count = self
            .cache
            .increment(&format!("rate:{subject}:{window}"), 1, budget.window)
            .await?;
        if count <= u64::from(budget.limit) {
            return Ok(());
        }
        let seconds_left = u64::try_from((window + 1) * window_seconds - now).unwrap_or(1);
        Err(Error {
            retry_after: Some(Duration::from_secs(seconds_left.max(1))),
            ..Error::new(ErrorKind::ResourceExhausted, "RATE_LIMITED", message)
        })
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
