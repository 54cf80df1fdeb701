//! `DeadLetterStore` on SQL.

use super::{SqlStore, database_error, execute, with_pool};
use crate::domain::error::{Error, Result};
use crate::domain::jobs::{DeadLetter, DeadLetterQuery, DeadLetterStatus, DeadLetterStore};
use chrono::{DateTime, Utc};
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct DeadLetterRow {
    id: Uuid,
    job_type: String,
    payload: String,
    error: String,
    attempts: i32,
    failed_at: DateTime<Utc>,
    status: String,
    notes: String,
    handled_by: Option<Uuid>,
    handled_at: Option<DateTime<Utc>>,
    retry_id: Option<Uuid>,
    retry_outcome: Option<String>,
}

fn unknown_status(status: &str) -> Error {
    Error::internal(format!("dead letter with an unknown status {status:?}"))
}

impl TryFrom<DeadLetterRow> for DeadLetter {
    type Error = Error;

    fn try_from(row: DeadLetterRow) -> Result<Self> {
        Ok(DeadLetter {
            status: DeadLetterStatus::parse(&row.status)
                .ok_or_else(|| unknown_status(&row.status))?,
            id: row.id,
            job_type: row.job_type,
            payload: row.payload,
            error: row.error,
            attempts: u32::try_from(row.attempts).unwrap_or_default(),
            failed_at: row.failed_at,
            notes: row.notes,
            handled_by: row.handled_by,
            handled_at: row.handled_at,
            retry_id: row.retry_id,
            retry_succeeded: row.retry_outcome.map(|outcome| outcome == SUCCEEDED),
        })
    }
}

const SUCCEEDED: &str = "succeeded";
const FAILED: &str = "failed";

const SELECT_DEAD_LETTER: &str = "SELECT id, job_type, payload, error, attempts, failed_at, \
     status, notes, handled_by, handled_at, retry_id, retry_outcome FROM dead_letters";

#[async_trait::async_trait]
impl DeadLetterStore for SqlStore {
    async fn insert_dead_letter(&self, dead_letter: &DeadLetter) -> Result<()> {
        execute!(
            self,
            sqlx::query(
                "INSERT INTO dead_letters (id, job_type, payload, error, attempts, failed_at, \
                 status) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
            )
            .bind(dead_letter.id)
            .bind(&dead_letter.job_type)
            .bind(&dead_letter.payload)
            .bind(&dead_letter.error)
            .bind(i32::try_from(dead_letter.attempts).unwrap_or(i32::MAX))
            .bind(dead_letter.failed_at)
            .bind(dead_letter.status.as_str())
        )
        .map(|_| ())
    }

    async fn find_dead_letter(&self, id: Uuid) -> Result<Option<DeadLetter>> {
        let sql = format!("{SELECT_DEAD_LETTER} WHERE id = $1");
        let row: Option<DeadLetterRow> = with_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await
        })
        .map_err(database_error)?;
        row.map(DeadLetter::try_from).transpose()
    }

    async fn list_dead_letters(
        &self,
        query: &DeadLetterQuery,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>> {
        let sql = format!(
            "{SELECT_DEAD_LETTER} WHERE id > $1 AND ($2 IS NULL OR status = $2) \
             AND ($3 IS NULL OR job_type = $3) AND ($4 IS NULL OR failed_at >= $4) \
             AND ($5 IS NULL OR failed_at < $5) ORDER BY id LIMIT $6"
        );
        let rows: Vec<DeadLetterRow> = with_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(after.unwrap_or(Uuid::nil()))
                .bind(query.status.map(DeadLetterStatus::as_str))
                .bind(query.job_type.as_deref())
                .bind(query.failed_after)
                .bind(query.failed_before)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await
        })
        .map_err(database_error)?;
        rows.into_iter().map(DeadLetter::try_from).collect()
    }

    async fn count_dead_letters(&self) -> Result<Vec<(DeadLetterStatus, String, u64)>> {
        let rows: Vec<(String, String, i64)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT status, job_type, COUNT(*) FROM dead_letters GROUP BY status, job_type",
            )
            .fetch_all(pool)
            .await
        })
        .map_err(database_error)?;
        rows.into_iter()
            .map(|(status, job_type, count)| {
                let status =
                    DeadLetterStatus::parse(&status).ok_or_else(|| unknown_status(&status))?;
                Ok((status, job_type, u64::try_from(count).unwrap_or_default()))
            })
            .collect()
    }

    async fn update_dead_letter(
        &self,
        dead_letter: &DeadLetter,
        from: DeadLetterStatus,
    ) -> Result<bool> {
        execute!(
            self,
            sqlx::query(
                "UPDATE dead_letters SET status = $2, notes = $3, handled_by = $4, \
                 handled_at = $5, retry_id = $6 WHERE id = $1 AND status = $7",
            )
            .bind(dead_letter.id)
            .bind(dead_letter.status.as_str())
            .bind(&dead_letter.notes)
            .bind(dead_letter.handled_by)
            .bind(dead_letter.handled_at)
            .bind(dead_letter.retry_id)
            .bind(from.as_str())
        )
        .map(|updated| updated > 0)
    }

    async fn record_retry_outcome(
        &self,
        retry_id: Uuid,
        succeeded: bool,
        now: DateTime<Utc>,
    ) -> Result<()> {
        // Every finished job asks; only retries are found. A read first keeps the common case
        // from taking SQLite's write lock.
        let sql = "SELECT COUNT(*) FROM dead_letters WHERE retry_id = $1";
        let retried: i64 = with_pool!(self, pool => {
            sqlx::query_scalar(sql).bind(retry_id).fetch_one(pool).await
        })
        .map_err(database_error)?;
        if retried == 0 {
            return Ok(());
        }
        let (outcome, status) = if succeeded {
            (SUCCEEDED, DeadLetterStatus::Resolved)
        } else {
            (FAILED, DeadLetterStatus::Retried)
        };
        execute!(
            self,
            sqlx::query(
                "UPDATE dead_letters SET retry_outcome = $2, status = $3, handled_at = $4 \
                 WHERE retry_id = $1",
            )
            .bind(retry_id)
            .bind(outcome)
            .bind(status.as_str())
            .bind(now)
        )
        .map(|_| ())
    }

    async fn job_finished(&self, id: Uuid) -> Result<bool> {
        let sql = "SELECT COUNT(*) FROM finished_jobs WHERE id = $1";
        let found: i64 = with_pool!(self, pool => {
            sqlx::query_scalar(sql).bind(id).fetch_one(pool).await
        })
        .map_err(database_error)?;
        Ok(found > 0)
    }

    async fn record_job_finished(
        &self,
        id: Uuid,
        job_type: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        execute!(
            self,
            sqlx::query(
                "INSERT INTO finished_jobs (id, job_type, finished_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(id)
            .bind(job_type)
            .bind(now)
        )
        .map(|_| ())
    }

    async fn purge_finished_jobs(&self, before: DateTime<Utc>) -> Result<u64> {
        execute!(
            self,
            sqlx::query("DELETE FROM finished_jobs WHERE finished_at < $1").bind(before)
        )
    }
}
