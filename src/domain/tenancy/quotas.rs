//! Per-organization quotas: limits, usage and metering. API calls are counted in the cache
//! port (memory or Redis: one atomic increment per call, no row lock) and written to the
//! database in batches by `flush`; a counter missing from the cache (a restart of the memory
//! cache) is seeded from the last flushed value. With the memory cache a crash loses at most
//! the calls since the last flush; with Redis nothing is lost, the database only lags.

use super::OrganizationStore;
use super::access::Access;
use crate::domain::cache::Cache;
use crate::domain::clock::{Clock, truncate_to_micros};
use crate::domain::error::{Error, ErrorKind, FieldViolation, Missing, Result};
use crate::domain::events::{Event, EventKind, EventLog, Origin, QuotaData};
use crate::domain::page::{Page, PageTokens};
use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

const LIMITS_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(300);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaLimits {
    pub max_users: i64,
    pub max_storage_bytes: i64,
    pub max_api_calls_per_month: i64,
    pub max_file_uploads_per_day: i64,
    pub max_file_size_bytes: i64,
    /// Prompt and completion tokens of the LLM gateway, per month.
    pub max_llm_tokens_per_month: i64,
}

impl Default for QuotaLimits {
    fn default() -> Self {
        Self {
            max_users: 10,
            max_storage_bytes: 1024 * 1024 * 1024,
            max_api_calls_per_month: 10_000,
            max_file_uploads_per_day: 100,
            max_file_size_bytes: 10 * 1024 * 1024,
            max_llm_tokens_per_month: 1_000_000,
        }
    }
}

/// A partial update of the limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitChanges {
    pub max_users: Option<i64>,
    pub max_storage_bytes: Option<i64>,
    pub max_api_calls_per_month: Option<i64>,
    pub max_file_uploads_per_day: Option<i64>,
    pub max_file_size_bytes: Option<i64>,
    pub max_llm_tokens_per_month: Option<i64>,
}

/// A resource counted per calendar window (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Calls in the organization's scope, per month.
    ApiCalls,
    /// Files uploaded, per day.
    FileUploads,
    /// Prompt and completion tokens of the LLM gateway, per month.
    LlmTokens,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Self::ApiCalls => "api_calls",
            Self::FileUploads => "file_uploads",
            Self::LlmTokens => "llm_tokens",
        }
    }

    /// The window holding `now`: [start, end).
    pub fn window(self, now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        let day = |year, month, day| {
            Utc.with_ymd_and_hms(year, month, day, 0, 0, 0)
                .single()
                .unwrap_or(now)
        };
        match self {
            Self::ApiCalls | Self::LlmTokens => {
                let start = day(now.year(), now.month(), 1);
                let end = if now.month() == 12 {
                    day(now.year() + 1, 1, 1)
                } else {
                    day(now.year(), now.month() + 1, 1)
                };
                (start, end)
            }
            Self::FileUploads => {
                let start = day(now.year(), now.month(), now.day());
                (start, start + Duration::days(1))
            }
        }
    }
}

/// One flushed counting window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageLog {
    pub id: Uuid,
    pub metric: String,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub count: i64,
    pub recorded_at: DateTime<Utc>,
}

/// The usage of one resource against its limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Usage {
    pub metric: &'static str,
    pub used: i64,
    pub limit: i64,
    pub resets_at: Option<DateTime<Utc>>,
}

impl Usage {
    pub fn percent(&self) -> f64 {
        match (self.used, self.limit) {
            (0, _) => 0.0,
            (_, 0) => 100.0,
            (used, limit) => used as f64 * 100.0 / limit as f64,
        }
    }
}

pub struct QuotaStatus {
    pub limits: QuotaLimits,
    pub usage: Vec<Usage>,
}

#[async_trait::async_trait]
pub trait QuotaStore: Send + Sync {
    /// `None` for an organization on the default limits.
    async fn find_limits(&self, organization_id: Uuid) -> Result<Option<QuotaLimits>>;
    async fn save_limits(
        &self,
        organization_id: Uuid,
        limits: &QuotaLimits,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// The last flushed count of a window (0 when none).
    async fn find_usage(
        &self,
        organization_id: Uuid,
        metric: Metric,
        window_start: DateTime<Utc>,
    ) -> Result<u64>;
    /// Bytes of live files counted against an owner (an organization, or a user's personal
    /// files).
    async fn storage_used(&self, owner_id: Uuid) -> Result<i64>;
    /// Writes counts in one transaction, never lowering a stored count.
    async fn record_usage(&self, counts: &[(Counter, u64)], now: DateTime<Utc>) -> Result<()>;
    /// Windows newest first, before `before` (by id).
    async fn list_usage_logs(
        &self,
        organization_id: Uuid,
        before: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<UsageLog>>;
}

/// One counting window of one organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Counter {
    pub organization_id: Uuid,
    pub metric: Metric,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
}

impl Counter {
    fn key(&self) -> String {
        format!(
            "usage:{}:{}:{}",
            self.organization_id,
            self.metric.name(),
            self.window_start.timestamp()
        )
    }

    /// Counters outlive their window by a day, so a late flush still finds them.
    fn ttl(&self, now: DateTime<Utc>) -> std::time::Duration {
        (self.window_end - now + Duration::days(1))
            .to_std()
            .unwrap_or(std::time::Duration::from_secs(86_400))
    }
}

fn limits_key(organization_id: Uuid) -> String {
    format!("quota:limits:{organization_id}")
}

const QUOTA_EXCEEDED: &str = "QUOTA_EXCEEDED";

pub fn quota_exceeded(message: String) -> Error {
    Error::new(ErrorKind::ResourceExhausted, QUOTA_EXCEEDED, message)
}

pub struct QuotaService {
    store: Arc<dyn QuotaStore>,
    organizations: Arc<dyn OrganizationStore>,
    cache: Arc<dyn Cache>,
    pages: Arc<PageTokens>,
    clock: Arc<dyn Clock>,
    events: Arc<dyn EventLog>,
    /// Counters changed since the last flush.
    touched: Mutex<HashSet<Counter>>,
}

/// Refuses a new member when the organization is full (the store checks it in the
/// transaction that adds the member).
pub fn members_full(limit: i64) -> Error {
    quota_exceeded(format!(
        "the organization has reached its limit of {limit} members"
    ))
}

/// What `QuotaService` works through.
pub struct QuotaPorts {
    pub store: Arc<dyn QuotaStore>,
    pub organizations: Arc<dyn OrganizationStore>,
    pub cache: Arc<dyn Cache>,
    pub pages: Arc<PageTokens>,
    pub clock: Arc<dyn Clock>,
    /// Where refusals (`quota.exceeded`) are recorded.
    pub events: Arc<dyn EventLog>,
}

impl QuotaService {
    pub fn new(ports: QuotaPorts) -> Self {
        Self {
            store: ports.store,
            organizations: ports.organizations,
            cache: ports.cache,
            pages: ports.pages,
            clock: ports.clock,
            events: ports.events,
            touched: Mutex::new(HashSet::new()),
        }
    }

    fn touched(&self) -> std::sync::MutexGuard<'_, HashSet<Counter>> {
        self.touched
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The organization's limits, cached.
    pub async fn limits(&self, organization_id: Uuid) -> Result<QuotaLimits> {
        let key = limits_key(organization_id);
        if let Some(limits) = self
            .cache
            .get(&key)
            .await?
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        {
            return Ok(limits);
        }
        let limits = self
            .store
            .find_limits(organization_id)
            .await?
            .unwrap_or_default();
        let encoded = serde_json::to_vec(&limits).map_err(Error::internal)?;
        self.cache.set(&key, &encoded, LIMITS_CACHE_TTL).await?;
        Ok(limits)
    }

    /// Adds `by` to a counter (0 reads it), seeding a counter the cache lost from the
    /// database; only the first caller to find it fresh seeds it.
    async fn count(&self, counter: Counter, by: u64) -> Result<u64> {
        let now = self.clock.now();
        let key = counter.key();
        let ttl = counter.ttl(now);
        let mut count = self.cache.increment(&key, by, ttl).await?;
        if count <= by
            && self
                .cache
                .increment(&format!("{key}:seeded"), 1, ttl)
                .await?
                == 1
        {
            let stored = self
                .store
                .find_usage(
                    counter.organization_id,
                    counter.metric,
                    counter.window_start,
                )
                .await?;
            if stored > 0 {
                count = self.cache.increment(&key, stored, ttl).await?;
            }
        }
        if by > 0 {
            self.touched().insert(counter);
        }
        Ok(count)
    }

    fn counter(&self, organization_id: Uuid, metric: Metric) -> Counter {
        let (window_start, window_end) = metric.window(self.clock.now());
        Counter {
            organization_id,
            metric,
            window_start,
            window_end,
        }
    }

    /// Counts one call in the organization's scope; refuses it when the month's calls are
    /// over the limit. The first refusal of the month is recorded (`quota.exceeded`), not
    /// every one after it.
    pub async fn meter_api_call(&self, access: &Access) -> Result<()> {
        let limit = self
            .limits(access.organization_id)
            .await?
            .max_api_calls_per_month;
        self.count_within(access, Metric::ApiCalls, limit, |limit| {
            format!(
                "the organization used its {limit} API calls of this month; the count resets on the 1st (UTC)"
            )
        })
        .await
    }

    /// Counts one upload into the organization; refuses it past the day's limit (the first
    /// refusal of the day is recorded).
    pub async fn count_upload(&self, access: &Access) -> Result<()> {
        let limit = (self.limits(access.organization_id).await?).max_file_uploads_per_day;
        self.count_within(access, Metric::FileUploads, limit, |limit| {
            format!(
                "the organization uploaded its {limit} files of today; the count resets at midnight (UTC)"
            )
        })
        .await
    }

    /// Counts one more of `metric` in the window; refuses past `limit`, recording the
    /// window's first refusal (`quota.exceeded`).
    async fn count_within(
        &self,
        access: &Access,
        metric: Metric,
        limit: i64,
        refusal: impl FnOnce(i64) -> String,
    ) -> Result<()> {
        let organization_id = access.organization_id;
        let counter = self.counter(organization_id, metric);
        let count = i64::try_from(self.count(counter, 1).await?).unwrap_or(i64::MAX);
        if count == limit.saturating_add(1) {
            self.record_exceeded(&access.origin(), organization_id, metric.name(), limit)
                .await?;
        }
        if count > limit {
            let wait = (counter.window_end - self.clock.now()).to_std().ok();
            return Err(Error {
                retry_after: wait,
                ..quota_exceeded(refusal(limit))
            });
        }
        Ok(())
    }

    /// Refuses an LLM call when the organization has used its month's tokens (a call's
    /// tokens are known only after it, so the last call of a month may go past the limit).
    pub async fn check_llm_tokens(&self, access: &Access) -> Result<()> {
        let limit = (self.limits(access.organization_id).await?).max_llm_tokens_per_month;
        let counter = self.counter(access.organization_id, Metric::LlmTokens);
        let used = i64::try_from(self.count(counter, 0).await?).unwrap_or(i64::MAX);
        if used < limit {
            return Ok(());
        }
        if used == limit {
            self.record_exceeded(
                &access.origin(),
                access.organization_id,
                "llm_tokens",
                limit,
            )
            .await?;
        }
        Err(Error {
            retry_after: (counter.window_end - self.clock.now()).to_std().ok(),
            ..quota_exceeded(format!(
                "the organization used its {limit} LLM tokens of this month; the count resets on the 1st (UTC)"
            ))
        })
    }

    /// Counts the tokens an LLM call used.
    pub async fn count_llm_tokens(&self, access: &Access, tokens: u64) -> Result<()> {
        let counter = self.counter(access.organization_id, Metric::LlmTokens);
        self.count(counter, tokens).await.map(|_| ())
    }

    /// Bytes of live files counted against an owner.
    pub async fn storage_used(&self, owner_id: Uuid) -> Result<i64> {
        self.store.storage_used(owner_id).await
    }

    /// Records a refusal for a quota (`quota.exceeded`).
    async fn record_exceeded(
        &self,
        origin: &Origin,
        organization_id: Uuid,
        resource: &str,
        limit: i64,
    ) -> Result<()> {
        let data = QuotaData {
            organization_id,
            resource: resource.to_owned(),
            limit,
        };
        let event = Event::new(EventKind::QuotaExceeded, origin, self.clock.as_ref(), &data);
        self.events.append_events(&[event]).await
    }

    /// Passes on the outcome of adding a member to the organization, recording a refusal for
    /// its member limit.
    pub async fn watch_members<T>(
        &self,
        origin: &Origin,
        organization_id: Uuid,
        limit: i64,
        outcome: Result<T>,
    ) -> Result<T> {
        if let Err(error) = &outcome
            && error.reason == QUOTA_EXCEEDED
        {
            self.record_exceeded(origin, organization_id, "members", limit)
                .await?;
        }
        outcome
    }

    pub async fn status(&self, access: &Access) -> Result<QuotaStatus> {
        let organization_id = access.organization_id;
        let limits = self.limits(organization_id).await?;
        let members = self.organizations.count_members(organization_id).await?;
        let mut usage = vec![
            Usage {
                metric: "members",
                used: i64::try_from(members).unwrap_or(i64::MAX),
                limit: limits.max_users,
                resets_at: None,
            },
            Usage {
                metric: "storage_bytes",
                used: self.store.storage_used(organization_id).await?,
                limit: limits.max_storage_bytes,
                resets_at: None,
            },
        ];
        for (metric, limit) in [
            (Metric::ApiCalls, limits.max_api_calls_per_month),
            (Metric::FileUploads, limits.max_file_uploads_per_day),
            (Metric::LlmTokens, limits.max_llm_tokens_per_month),
        ] {
            let counter = self.counter(organization_id, metric);
            let used = self.count(counter, 0).await?;
            usage.push(Usage {
                metric: metric.name(),
                used: i64::try_from(used).unwrap_or(i64::MAX),
                limit,
                resets_at: Some(counter.window_end),
            });
        }
        Ok(QuotaStatus { limits, usage })
    }

    /// Changes limits (the caller was admitted as a platform superuser).
    pub async fn update_limits(
        &self,
        organization_id: Uuid,
        changes: LimitChanges,
    ) -> Result<QuotaLimits> {
        self.organizations
            .find_organization(organization_id)
            .await?
            .ok_or(Missing::Organization)?;
        let mut limits = self.limits(organization_id).await?;
        let mut violations = Vec::new();
        for (field, change, slot) in [
            ("max_users", changes.max_users, &mut limits.max_users),
            (
                "max_storage_bytes",
                changes.max_storage_bytes,
                &mut limits.max_storage_bytes,
            ),
            (
                "max_api_calls_per_month",
                changes.max_api_calls_per_month,
                &mut limits.max_api_calls_per_month,
            ),
            (
                "max_file_uploads_per_day",
                changes.max_file_uploads_per_day,
                &mut limits.max_file_uploads_per_day,
            ),
            (
                "max_file_size_bytes",
                changes.max_file_size_bytes,
                &mut limits.max_file_size_bytes,
            ),
            (
                "max_llm_tokens_per_month",
                changes.max_llm_tokens_per_month,
                &mut limits.max_llm_tokens_per_month,
            ),
        ] {
            match change {
                Some(value) if value < 0 => violations.push(FieldViolation::new(
                    field,
                    "INVALID_LIMIT",
                    "must not be negative",
                )),
                Some(value) => *slot = value,
                None => {}
            }
        }
        if !violations.is_empty() {
            return Err(Error::invalid_fields(violations));
        }
        self.store
            .save_limits(
                organization_id,
                &limits,
                truncate_to_micros(self.clock.now()),
            )
            .await?;
        self.cache.delete(&limits_key(organization_id)).await?;
        tracing::info!(organization_id = %organization_id, "quota limits changed");
        Ok(limits)
    }

    pub async fn usage_logs(
        &self,
        access: &Access,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<UsageLog>> {
        let list = format!("usage-logs:{}", access.organization_id);
        let request = self.pages.request(&list, page_size, page_token)?;
        let rows = self
            .store
            .list_usage_logs(access.organization_id, request.after, request.fetch_limit())
            .await?;
        Ok(self.pages.page(&list, request, rows, |log| log.id))
    }

    /// Writes the counters changed since the last flush to the database in one batch;
    /// answers how many. On failure they stay queued for the next flush.
    pub async fn flush(&self) -> Result<usize> {
        let pending: Vec<Counter> = self.touched().drain().collect();
        if pending.is_empty() {
            return Ok(0);
        }
        let now = self.clock.now();
        let mut counts = Vec::with_capacity(pending.len());
        for counter in &pending {
            let count = self
                .cache
                .increment(&counter.key(), 0, counter.ttl(now))
                .await;
            match count {
                Ok(count) => counts.push((*counter, count)),
                Err(error) => {
                    self.touched().extend(pending);
                    return Err(error);
                }
            }
        }
        if let Err(error) = self
            .store
            .record_usage(&counts, truncate_to_micros(now))
            .await
        {
            self.touched().extend(pending);
            return Err(error);
        }
        Ok(counts.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn windows_follow_calendar_boundaries_in_utc() {
        assert_eq!(
            Metric::ApiCalls.window(at("2026-12-31T23:59:59Z")),
            (at("2026-12-01T00:00:00Z"), at("2027-01-01T00:00:00Z"))
        );
        assert_eq!(
            Metric::ApiCalls.window(at("2026-02-01T00:00:00Z")),
            (at("2026-02-01T00:00:00Z"), at("2026-03-01T00:00:00Z"))
        );
        assert_eq!(
            Metric::FileUploads.window(at("2026-03-15T12:30:00+05:00")),
            (at("2026-03-15T00:00:00Z"), at("2026-03-16T00:00:00Z"))
        );
    }

    #[test]
    fn percentages_handle_zero_limits() {
        let usage = |used, limit| Usage {
            metric: "members",
            used,
            limit,
            resets_at: None,
        };
        assert!((usage(5, 10).percent() - 50.0).abs() < f64::EPSILON);
        assert!((usage(0, 0).percent()).abs() < f64::EPSILON);
        assert!((usage(3, 0).percent() - 100.0).abs() < f64::EPSILON);
    }
}
