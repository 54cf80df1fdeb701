//! `QuotaStore` on SQL.

use super::{BeginWrite, SqlStore, database_error, with_pool};
use crate::domain::error::Result;
use crate::domain::tenancy::quotas::{Counter, Metric, QuotaLimits, QuotaStore, UsageLog};
use chrono::{DateTime, Utc};
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct LimitsRow {
    max_users: i64,
    max_storage_bytes: i64,
    max_api_calls_per_month: i64,
    max_file_uploads_per_day: i64,
    max_file_size_bytes: i64,
    max_llm_tokens_per_month: i64,
}

#[derive(sqlx::FromRow)]
struct UsageRow {
    id: Uuid,
    metric: String,
    window_start: DateTime<Utc>,
    window_end: DateTime<Utc>,
    count: i64,
    recorded_at: DateTime<Utc>,
}

/// An organization's usage windows, newest first, along the index `(organization_id, id)`.
pub(super) const LIST_USAGE_LOGS: &str = "SELECT id, metric, window_start, window_end, count, \
     recorded_at FROM usage_counters WHERE organization_id = $1 AND id < $2 \
     ORDER BY id DESC LIMIT $3";

#[async_trait::async_trait]
impl QuotaStore for SqlStore {
    async fn find_limits(&self, organization_id: Uuid) -> Result<Option<QuotaLimits>> {
        let row: Option<LimitsRow> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT max_users, max_storage_bytes, max_api_calls_per_month, \
                 max_file_uploads_per_day, max_file_size_bytes, max_llm_tokens_per_month \
                 FROM organization_quotas WHERE organization_id = $1",
            )
            .bind(organization_id)
            .fetch_optional(pool)
            .await
        })
        .map_err(database_error)?;
        Ok(row.map(|row| QuotaLimits {
            max_users: row.max_users,
            max_storage_bytes: row.max_storage_bytes,
            max_api_calls_per_month: row.max_api_calls_per_month,
            max_file_uploads_per_day: row.max_file_uploads_per_day,
            max_file_size_bytes: row.max_file_size_bytes,
            max_llm_tokens_per_month: row.max_llm_tokens_per_month,
        }))
    }

    async fn save_limits(
        &self,
        organization_id: Uuid,
        limits: &QuotaLimits,
        now: DateTime<Utc>,
    ) -> Result<()> {
        with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO organization_quotas (organization_id, max_users, max_storage_bytes, \
                 max_api_calls_per_month, max_file_uploads_per_day, max_file_size_bytes, \
                 max_llm_tokens_per_month, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (organization_id) DO UPDATE SET max_users = excluded.max_users, \
                 max_storage_bytes = excluded.max_storage_bytes, \
                 max_api_calls_per_month = excluded.max_api_calls_per_month, \
                 max_file_uploads_per_day = excluded.max_file_uploads_per_day, \
                 max_file_size_bytes = excluded.max_file_size_bytes, \
                 max_llm_tokens_per_month = excluded.max_llm_tokens_per_month, \
                 updated_at = excluded.updated_at",
            )
            .bind(organization_id)
            .bind(limits.max_users)
            .bind(limits.max_storage_bytes)
            .bind(limits.max_api_calls_per_month)
            .bind(limits.max_file_uploads_per_day)
            .bind(limits.max_file_size_bytes)
            .bind(limits.max_llm_tokens_per_month)
            .bind(now)
            .execute(pool)
            .await
            .map(|_| ())
        })
        .map_err(database_error)
    }

    async fn find_usage(
        &self,
        organization_id: Uuid,
        metric: Metric,
        window_start: DateTime<Utc>,
    ) -> Result<u64> {
        let count: Option<i64> = with_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT count FROM usage_counters \
                 WHERE organization_id = $1 AND metric = $2 AND window_start = $3",
            )
            .bind(organization_id)
            .bind(metric.name())
            .bind(window_start)
            .fetch_optional(pool)
            .await
        })
        .map_err(database_error)?;
        Ok(count
            .and_then(|count| u64::try_from(count).ok())
            .unwrap_or(0))
    }

    async fn storage_used(&self, owner_id: Uuid) -> Result<i64> {
        let bytes: Option<i64> = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT bytes FROM storage_usage WHERE owner_id = $1")
                .bind(owner_id)
                .fetch_optional(pool)
                .await
        })
        .map_err(database_error)?;
        Ok(bytes.unwrap_or(0))
    }

    async fn record_usage(&self, counts: &[(Counter, u64)], now: DateTime<Utc>) -> Result<()> {
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            for (counter, count) in counts {
                // Organizations deleted since are skipped by the WHERE EXISTS.
                sqlx::query(
                    "INSERT INTO usage_counters (id, organization_id, metric, window_start, \
                     window_end, count, recorded_at) \
                     SELECT $1, $2, $3, $4, $5, $6, $7 \
                     WHERE EXISTS (SELECT 1 FROM organizations WHERE id = $2) \
                     ON CONFLICT (organization_id, metric, window_start) DO UPDATE SET \
                     count = CASE WHEN excluded.count > usage_counters.count \
                     THEN excluded.count ELSE usage_counters.count END, \
                     recorded_at = excluded.recorded_at",
                )
                .bind(Uuid::now_v7())
                .bind(counter.organization_id)
                .bind(counter.metric.name())
                .bind(counter.window_start)
                .bind(counter.window_end)
                .bind(i64::try_from(*count).unwrap_or(i64::MAX))
                .bind(now)
                .execute(&mut *transaction)
                .await?;
            }
            transaction.commit().await
        }
        .await)
        .map_err(database_error)
    }

    async fn list_usage_logs(
        &self,
        organization_id: Uuid,
        before: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<UsageLog>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<UsageRow> = with_pool!(self, pool => {
            sqlx::query_as(LIST_USAGE_LOGS)
                .bind(organization_id)
                .bind(before.unwrap_or(Uuid::max()))
                .bind(limit)
            .fetch_all(pool)
            .await
        })
        .map_err(database_error)?;
        Ok(rows
            .into_iter()
            .map(|row| UsageLog {
                id: row.id,
                metric: row.metric,
                window_start: row.window_start,
                window_end: row.window_end,
                count: row.count,
                recorded_at: row.recorded_at,
            })
            .collect())
    }
}
