//! `WebhookStore` on SQL. Deliveries are claimed with a lease (`locked_until`); on PostgreSQL
//! the claim skips rows another worker is claiming at that moment.

use super::events::execute_with_events;
use super::{BeginWrite, SqlStore, database_error, with_pool};
use crate::domain::error::{Error, Result};
use crate::domain::events::Event;
use crate::domain::webhooks::{
    Delivery, DeliveryAttempt, DeliveryStatus, StoredSecrets, Webhook, WebhookStore,
};
use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct WebhookRow {
    id: Uuid,
    organization_id: Uuid,
    url: String,
    description: String,
    event_types: String,
    is_active: bool,
    rate_limit_per_second: i32,
    consecutive_failures: i32,
    disabled_reason: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<WebhookRow> for Webhook {
    fn from(row: WebhookRow) -> Self {
        Webhook {
            id: row.id,
            organization_id: row.organization_id,
            url: row.url,
            description: row.description,
            event_types: row
                .event_types
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            is_active: row.is_active,
            rate_limit_per_second: u32::try_from(row.rate_limit_per_second).unwrap_or_default(),
            consecutive_failures: u32::try_from(row.consecutive_failures).unwrap_or_default(),
            disabled_reason: row.disabled_reason,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

const SELECT_WEBHOOK: &str = "SELECT id, organization_id, url, description, event_types, \
     is_active, rate_limit_per_second, consecutive_failures, disabled_reason, created_at, \
     updated_at FROM webhooks";

#[derive(sqlx::FromRow)]
struct DeliveryRow {
    id: Uuid,
    webhook_id: Uuid,
    organization_id: Uuid,
    event_id: Uuid,
    event_type: String,
    payload: String,
    status: String,
    attempts: i32,
    next_attempt_at: Option<DateTime<Utc>>,
    response_status: Option<i32>,
    response_excerpt: Option<String>,
    latency_ms: Option<i32>,
    error: Option<String>,
    created_at: DateTime<Utc>,
    last_attempt_at: Option<DateTime<Utc>>,
    request_id: Option<String>,
}

impl TryFrom<DeliveryRow> for Delivery {
    type Error = Error;

    fn try_from(row: DeliveryRow) -> Result<Self> {
        Ok(Delivery {
            status: DeliveryStatus::parse(&row.status).ok_or_else(|| {
                Error::internal(format!("delivery with an unknown status {:?}", row.status))
            })?,
            id: row.id,
            webhook_id: row.webhook_id,
            organization_id: row.organization_id,
            event_id: row.event_id,
            event_type: row.event_type,
            payload: row.payload,
            attempts: u32::try_from(row.attempts).unwrap_or_default(),
            next_attempt_at: row.next_attempt_at,
            response_status: row
                .response_status
                .and_then(|code| u16::try_from(code).ok()),
            response_excerpt: row.response_excerpt,
            latency_ms: row.latency_ms.and_then(|ms| u32::try_from(ms).ok()),
            error: row.error,
            created_at: row.created_at,
            last_attempt_at: row.last_attempt_at,
            request_id: row.request_id,
        })
    }
}

const DELIVERY_COLUMNS: &str = "id, webhook_id, organization_id, event_id, event_type, payload, \
     status, attempts, next_attempt_at, response_status, response_excerpt, latency_ms, error, \
     created_at, last_attempt_at, request_id";

fn deliveries(rows: Vec<DeliveryRow>) -> Result<Vec<Delivery>> {
    rows.into_iter().map(Delivery::try_from).collect()
}

fn count(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// Inserts `$deliveries` inside `$transaction`, on either backend.
macro_rules! insert_deliveries {
    ($transaction:expr, $deliveries:expr) => {
        for delivery in $deliveries {
            sqlx::query(
                "INSERT INTO webhook_deliveries (id, webhook_id, organization_id, event_id, \
                 event_type, payload, status, attempts, next_attempt_at, created_at, request_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(delivery.id)
            .bind(delivery.webhook_id)
            .bind(delivery.organization_id)
            .bind(delivery.event_id)
            .bind(&delivery.event_type)
            .bind(&delivery.payload)
            .bind(delivery.status.as_str())
            .bind(i32::try_from(delivery.attempts).unwrap_or(i32::MAX))
            .bind(delivery.next_attempt_at)
            .bind(delivery.created_at)
            .bind(delivery.request_id.as_deref())
            .execute(&mut *$transaction)
            .await?;
        }
    };
}
pub(super) use insert_deliveries;

/// The claim: the due deliveries no worker holds, oldest due first. PostgreSQL skips rows
/// another claim is locking; SQLite has one writer at a time.
trait ClaimSql {
    const CLAIM: &'static str;
}

impl ClaimSql for sqlx::Sqlite {
    const CLAIM: &'static str = "SELECT id FROM webhook_deliveries \
         WHERE status = 'pending' AND next_attempt_at <= $1 \
         AND (locked_until IS NULL OR locked_until < $1) \
         ORDER BY next_attempt_at LIMIT $2";
}

impl ClaimSql for sqlx::Postgres {
    const CLAIM: &'static str = "SELECT id FROM webhook_deliveries \
         WHERE status = 'pending' AND next_attempt_at <= $1 \
         AND (locked_until IS NULL OR locked_until < $1) \
         ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED";
}

fn claim_sql<DB: ClaimSql + sqlx::Database>(_: &sqlx::Transaction<'_, DB>) -> &'static str {
    DB::CLAIM
}

#[async_trait::async_trait]
impl WebhookStore for SqlStore {
    async fn insert_webhook(
        &self,
        webhook: &Webhook,
        secret: &[u8],
        events: &[Event],
    ) -> Result<()> {
        execute_with_events!(
            self,
            events,
            sqlx::query(
                "INSERT INTO webhooks (id, organization_id, url, description, event_types, \
                 secret, is_active, rate_limit_per_second, consecutive_failures, created_at, \
                 updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(webhook.id)
            .bind(webhook.organization_id)
            .bind(&webhook.url)
            .bind(&webhook.description)
            .bind(webhook.event_types.join(" "))
            .bind(secret)
            .bind(webhook.is_active)
            .bind(count(webhook.rate_limit_per_second))
            .bind(count(webhook.consecutive_failures))
            .bind(webhook.created_at)
            .bind(webhook.updated_at)
        )
        .map(|_| ())
    }

    async fn find_webhook(&self, organization_id: Uuid, id: Uuid) -> Result<Option<Webhook>> {
        let sql = format!("{SELECT_WEBHOOK} WHERE id = $1 AND organization_id = $2");
        let row: Option<WebhookRow> = with_pool!(self, pool => {
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(id)
                .bind(organization_id)
                .fetch_optional(pool)
                .await
        })
        .map_err(database_error)?;
        Ok(row.map(Webhook::from))
    }

    async fn find_webhook_secrets(&self, id: Uuid) -> Result<Option<StoredSecrets>> {
        type Row = (Vec<u8>, Option<Vec<u8>>, Option<DateTime<Utc>>);
        let row: Option<Row> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT secret, previous_secret, previous_secret_expires_at FROM webhooks \
                 WHERE id = $1",
            )
            .bind(id)
            .fetch_optional(pool)
            .await
        })
        .map_err(database_error)?;
        Ok(row.map(|(current, previous, expires_at)| StoredSecrets {
            current,
            previous: previous.zip(expires_at),
        }))
    }

    async fn list_webhooks(
        &self,
        organization_id: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<Webhook>> {
        let sql =
            format!("{SELECT_WEBHOOK} WHERE organization_id = $1 AND id > $2 ORDER BY id LIMIT $3");
        let rows: Vec<WebhookRow> = with_pool!(self, pool => {
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(organization_id)
                .bind(after.unwrap_or(Uuid::nil()))
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await
        })
        .map_err(database_error)?;
        Ok(rows.into_iter().map(Webhook::from).collect())
    }

    async fn update_webhook(&self, webhook: &Webhook, events: &[Event]) -> Result<()> {
        execute_with_events!(
            self,
            events,
            sqlx::query(
                "UPDATE webhooks SET url = $3, description = $4, event_types = $5, \
                 is_active = $6, rate_limit_per_second = $7, consecutive_failures = $8, \
                 disabled_reason = $9, updated_at = $10 WHERE id = $1 AND organization_id = $2",
            )
            .bind(webhook.id)
            .bind(webhook.organization_id)
            .bind(&webhook.url)
            .bind(&webhook.description)
            .bind(webhook.event_types.join(" "))
            .bind(webhook.is_active)
            .bind(count(webhook.rate_limit_per_second))
            .bind(count(webhook.consecutive_failures))
            .bind(&webhook.disabled_reason)
            .bind(webhook.updated_at)
        )
        .map(|_| ())
    }

    async fn delete_webhook(
        &self,
        organization_id: Uuid,
        id: Uuid,
        events: &[Event],
    ) -> Result<()> {
        execute_with_events!(
            self,
            events,
            sqlx::query("DELETE FROM webhooks WHERE id = $1 AND organization_id = $2")
                .bind(id)
                .bind(organization_id)
        )
        .map(|_| ())
    }

    async fn rotate_webhook_secret(
        &self,
        id: Uuid,
        secret: &[u8],
        previous: &[u8],
        previous_expires_at: DateTime<Utc>,
        events: &[Event],
    ) -> Result<()> {
        execute_with_events!(
            self,
            events,
            sqlx::query(
                "UPDATE webhooks SET secret = $2, previous_secret = $3, \
                 previous_secret_expires_at = $4 WHERE id = $1",
            )
            .bind(id)
            .bind(secret)
            .bind(previous)
            .bind(previous_expires_at)
        )
        .map(|_| ())
    }

    async fn active_webhooks(&self, organization_ids: &[Uuid]) -> Result<Vec<Webhook>> {
        let mut found = Vec::new();
        let sql = format!("{SELECT_WEBHOOK} WHERE organization_id = $1 AND is_active = $2");
        for organization_id in organization_ids {
            let rows: Vec<WebhookRow> = with_pool!(self, pool => {
                sqlx::query_as(AssertSqlSafe(sql.as_str()))
                    .bind(organization_id)
                    .bind(true)
                    .fetch_all(pool)
                    .await
            })
            .map_err(database_error)?;
            found.extend(rows.into_iter().map(Webhook::from));
        }
        Ok(found)
    }

    async fn insert_deliveries(&self, deliveries: &[Delivery]) -> Result<()> {
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            insert_deliveries!(transaction, deliveries);
            transaction.commit().await
        }
        .await)
        .map_err(database_error)
    }

    async fn find_delivery(&self, id: Uuid) -> Result<Option<Delivery>> {
        let sql = format!("SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1");
        let row: Option<DeliveryRow> = with_pool!(self, pool => {
            sqlx::query_as(AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await
        })
        .map_err(database_error)?;
        row.map(Delivery::try_from).transpose()
    }

    async fn list_deliveries(
        &self,
        webhook_id: Uuid,
        before: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<Delivery>> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries \
             WHERE webhook_id = $1 AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
        );
        let rows: Vec<DeliveryRow> = with_pool!(self, pool => {
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(webhook_id)
                .bind(before)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await
        })
        .map_err(database_error)?;
        deliveries(rows)
    }

    async fn failed_deliveries_since(
        &self,
        webhook_id: Uuid,
        since: DateTime<Utc>,
    ) -> Result<Vec<Delivery>> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries \
             WHERE webhook_id = $1 AND status = 'failed' AND created_at >= $2 ORDER BY id"
        );
        let rows: Vec<DeliveryRow> = with_pool!(self, pool => {
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(webhook_id)
                .bind(since)
                .fetch_all(pool)
                .await
        })
        .map_err(database_error)?;
        deliveries(rows)
    }

    async fn claim_due_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Delivery>> {
        let select = format!("SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1");
        let rows: Vec<DeliveryRow> = with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            let ids: Vec<Uuid> = sqlx::query_scalar(claim_sql(&transaction))
                .bind(now)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&mut *transaction)
                .await?;
            let mut rows = Vec::with_capacity(ids.len());
            for id in ids {
                sqlx::query("UPDATE webhook_deliveries SET locked_until = $2 WHERE id = $1")
                    .bind(id)
                    .bind(lease_until)
                    .execute(&mut *transaction)
                    .await?;
                let row: DeliveryRow = sqlx::query_as(AssertSqlSafe(select.as_str()))
                    .bind(id)
                    .fetch_one(&mut *transaction)
                    .await?;
                rows.push(row);
            }
            transaction.commit().await?;
            Ok::<_, sqlx::Error>(rows)
        }
        .await)
        .map_err(database_error)?;
        deliveries(rows)
    }

    async fn record_attempt(&self, delivery: &Delivery) -> Result<()> {
        let response_status = delivery.response_status.map(i32::from);
        let latency_ms = delivery.latency_ms.map(count);
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            sqlx::query(
                "UPDATE webhook_deliveries SET status = $2, attempts = $3, next_attempt_at = $4, \
                 response_status = $5, response_excerpt = $6, latency_ms = $7, error = $8, \
                 last_attempt_at = $9, locked_until = NULL WHERE id = $1",
            )
            .bind(delivery.id)
            .bind(delivery.status.as_str())
            .bind(count(delivery.attempts))
            .bind(delivery.next_attempt_at)
            .bind(response_status)
            .bind(&delivery.response_excerpt)
            .bind(latency_ms)
            .bind(&delivery.error)
            .bind(delivery.last_attempt_at)
            .execute(&mut *transaction)
            .await?;
            // Saved without an attempt (held, or over its rate), it adds none to the history.
            if let Some(attempted_at) = delivery.last_attempt_at {
            sqlx::query(
                "INSERT INTO webhook_delivery_attempts (delivery_id, attempt, attempted_at, \
                 response_status, response_excerpt, latency_ms, error) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            )
            .bind(delivery.id)
            .bind(count(delivery.attempts))
            .bind(attempted_at)
            .bind(response_status)
            .bind(&delivery.response_excerpt)
            .bind(latency_ms)
            .bind(&delivery.error)
            .execute(&mut *transaction)
            .await?;
            }
            transaction.commit().await
        }
        .await)
        .map_err(database_error)
    }

    async fn list_delivery_attempts(&self, delivery_id: Uuid) -> Result<Vec<DeliveryAttempt>> {
        type Row = (
            i32,
            DateTime<Utc>,
            Option<i32>,
            Option<String>,
            Option<i32>,
            Option<String>,
        );
        let sql = "SELECT attempt, attempted_at, response_status, response_excerpt, latency_ms, \
             error FROM webhook_delivery_attempts WHERE delivery_id = $1 ORDER BY attempt";
        let rows: Vec<Row> = with_pool!(self, pool => {
            sqlx::query_as(sql).bind(delivery_id).fetch_all(pool).await
        })
        .map_err(database_error)?;
        Ok(rows
            .into_iter()
            .map(
                |(attempt, attempted_at, status, excerpt, latency_ms, error)| DeliveryAttempt {
                    attempt: u32::try_from(attempt).unwrap_or_default(),
                    attempted_at,
                    response_status: status.and_then(|code| u16::try_from(code).ok()),
                    response_excerpt: excerpt,
                    latency_ms: latency_ms.and_then(|ms| u32::try_from(ms).ok()),
                    error,
                },
            )
            .collect())
    }

    async fn delivery_counts(&self) -> Result<Vec<(String, u64)>> {
        let rows: Vec<(String, i64)> = with_pool!(self, pool => {
            sqlx::query_as("SELECT status, COUNT(*) FROM webhook_deliveries GROUP BY status")
                .fetch_all(pool)
                .await
        })
        .map_err(database_error)?;
        Ok(rows
            .into_iter()
            .map(|(status, count)| (status, u64::try_from(count).unwrap_or_default()))
            .collect())
    }

    async fn delete_deliveries_finished_before(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        super::execute!(
            self,
            sqlx::query(
                "DELETE FROM webhook_deliveries \
                 WHERE status IN ('succeeded', 'failed') AND created_at < $1",
            )
            .bind(cutoff)
        )
    }

    async fn release_held_deliveries(&self, webhook_id: Uuid, now: DateTime<Utc>) -> Result<u64> {
        super::execute!(
            self,
            sqlx::query(
                "UPDATE webhook_deliveries SET next_attempt_at = $2 \
                 WHERE webhook_id = $1 AND status = 'pending' AND next_attempt_at IS NULL",
            )
            .bind(webhook_id)
            .bind(now)
        )
    }

    async fn count_webhook_outcome(&self, id: Uuid, succeeded: bool) -> Result<u32> {
        let run: Option<i32> = with_pool!(self, pool => {
            sqlx::query_scalar(
                "UPDATE webhooks SET consecutive_failures = \
                 CASE WHEN $2 THEN 0 ELSE consecutive_failures + 1 END \
                 WHERE id = $1 RETURNING consecutive_failures",
            )
            .bind(id)
            .bind(succeeded)
            .fetch_optional(pool)
            .await
        })
        .map_err(database_error)?;
        Ok(run.map_or(0, |run| u32::try_from(run).unwrap_or_default()))
    }
}
