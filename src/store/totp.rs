//! `TotpStore` on SQL.

use super::events::{execute_with_events, insert_events};
use super::{BeginWrite, SqlStore, database_error, execute, with_pool};
use crate::domain::error::Result;
use crate::domain::events::Event;
use crate::domain::totp::{TotpCredential, TotpStore};
use chrono::{DateTime, Utc};
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct TotpRow {
    user_id: Uuid,
    secret_sealed: Vec<u8>,
    created_at: DateTime<Utc>,
    enabled_at: Option<DateTime<Utc>>,
}

#[async_trait::async_trait]
impl TotpStore for SqlStore {
    async fn put_pending_totp(
        &self,
        credential: &TotpCredential,
        backup_code_digests: &[[u8; 32]],
    ) -> Result<()> {
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            sqlx::query("DELETE FROM totp_credentials WHERE user_id = $1 AND enabled_at IS NULL")
                .bind(credential.user_id)
                .execute(&mut *transaction)
                .await?;
            sqlx::query(
                "INSERT INTO totp_credentials (user_id, secret_sealed, created_at, enabled_at, \
                 last_used_step) VALUES ($1, $2, $3, NULL, 0)",
            )
            .bind(credential.user_id)
            .bind(&credential.secret_sealed)
            .bind(credential.created_at)
            .execute(&mut *transaction)
            .await?;
            sqlx::query("DELETE FROM totp_backup_codes WHERE user_id = $1")
                .bind(credential.user_id)
                .execute(&mut *transaction)
                .await?;
            for digest in backup_code_digests {
                sqlx::query("INSERT INTO totp_backup_codes (user_id, code_digest) VALUES ($1, $2)")
                    .bind(credential.user_id)
                    .bind(&digest[..])
                    .execute(&mut *transaction)
                    .await?;
            }
            transaction.commit().await
        }
        .await)
        .map_err(database_error)
    }

    async fn find_totp(&self, user_id: Uuid) -> Result<Option<TotpCredential>> {
        let row: Option<TotpRow> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT user_id, secret_sealed, created_at, enabled_at FROM totp_credentials \
                 WHERE user_id = $1",
            )
            .bind(user_id)
            .fetch_optional(pool)
            .await
        })
        .map_err(database_error)?;
        Ok(row.map(|row| TotpCredential {
            user_id: row.user_id,
            secret_sealed: row.secret_sealed,
            created_at: row.created_at,
            enabled_at: row.enabled_at,
        }))
    }

    async fn enable_totp(&self, user_id: Uuid, now: DateTime<Utc>, events: &[Event]) -> Result<()> {
        execute_with_events!(
            self,
            events,
            sqlx::query("UPDATE totp_credentials SET enabled_at = $2 WHERE user_id = $1")
                .bind(user_id)
                .bind(now)
        )
        .map(|_| ())
    }

    async fn delete_totp(&self, user_id: Uuid, events: &[Event]) -> Result<()> {
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            sqlx::query("DELETE FROM totp_backup_codes WHERE user_id = $1")
                .bind(user_id)
                .execute(&mut *transaction)
                .await?;
            sqlx::query("DELETE FROM totp_credentials WHERE user_id = $1")
                .bind(user_id)
                .execute(&mut *transaction)
                .await?;
            insert_events!(transaction, events);
            transaction.commit().await
        }
        .await)
        .map_err(database_error)
    }

    async fn claim_totp_step(&self, user_id: Uuid, step: i64) -> Result<bool> {
        execute!(
            self,
            sqlx::query(
                "UPDATE totp_credentials SET last_used_step = $2 \
                 WHERE user_id = $1 AND last_used_step < $2",
            )
            .bind(user_id)
            .bind(step)
        )
        .map(|claimed| claimed == 1)
    }

    async fn replace_backup_codes(&self, user_id: Uuid, digests: &[[u8; 32]]) -> Result<()> {
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            sqlx::query("DELETE FROM totp_backup_codes WHERE user_id = $1")
                .bind(user_id)
                .execute(&mut *transaction)
                .await?;
            for digest in digests {
                sqlx::query("INSERT INTO totp_backup_codes (user_id, code_digest) VALUES ($1, $2)")
                    .bind(user_id)
                    .bind(&digest[..])
                    .execute(&mut *transaction)
                    .await?;
            }
            transaction.commit().await
        }
        .await)
        .map_err(database_error)
    }

    async fn use_backup_code(
        &self,
        user_id: Uuid,
        digest: &[u8; 32],
        now: DateTime<Utc>,
    ) -> Result<bool> {
        execute!(
            self,
            sqlx::query(
                "UPDATE totp_backup_codes SET used_at = $3 \
                 WHERE user_id = $1 AND code_digest = $2 AND used_at IS NULL",
            )
            .bind(user_id)
            .bind(&digest[..])
            .bind(now)
        )
        .map(|used| used == 1)
    }

    async fn count_unused_backup_codes(&self, user_id: Uuid) -> Result<u64> {
        let count: i64 = with_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT COUNT(*) AS unused FROM totp_backup_codes \
                 WHERE user_id = $1 AND used_at IS NULL",
            )
            .bind(user_id)
            .fetch_one(pool)
            .await
        })
        .map_err(database_error)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }
}
