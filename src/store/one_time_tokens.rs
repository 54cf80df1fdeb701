//! `OneTimeTokenStore` on SQL.

use super::{BeginWrite, SqlStore, database_error, execute, with_pool};
use crate::domain::auth::OneTimeTokenStore;
use crate::domain::error::Result;
use chrono::{DateTime, Utc};
use uuid::Uuid;

#[async_trait::async_trait]
impl OneTimeTokenStore for SqlStore {
    async fn delete_tokens_expired_before(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        execute!(
            self,
            sqlx::query("DELETE FROM one_time_tokens WHERE expires_at < $1").bind(cutoff)
        )
    }

    async fn issue_token(
        &self,
        digest: &[u8; 32],
        user_id: Uuid,
        purpose: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            sqlx::query(
                "UPDATE one_time_tokens SET used_at = $3 \
                 WHERE user_id = $1 AND purpose = $2 AND used_at IS NULL",
            )
            .bind(user_id)
            .bind(purpose)
            .bind(now)
            .execute(&mut *transaction)
            .await?;
            sqlx::query(
                "INSERT INTO one_time_tokens (token_digest, user_id, purpose, created_at, \
                 expires_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&digest[..])
            .bind(user_id)
            .bind(purpose)
            .bind(now)
            .bind(expires_at)
            .execute(&mut *transaction)
            .await?;
            transaction.commit().await
        }
        .await)
        .map_err(database_error)
    }

    async fn consume_token(
        &self,
        digest: &[u8; 32],
        purpose: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Uuid>> {
        with_pool!(self, pool => {
            sqlx::query_scalar(
                "UPDATE one_time_tokens SET used_at = $3 \
                 WHERE token_digest = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > $3 \
                 RETURNING user_id",
            )
            .bind(&digest[..])
            .bind(purpose)
            .bind(now)
            .fetch_optional(pool)
            .await
        })
        .map_err(database_error)
    }
}
