//! `SessionStore` on SQL.

use super::events::{execute_with_events, insert_events};
use super::{BeginWrite, SqlStore, database_error, execute, with_pool};
use crate::domain::auth::{RefreshTokenRecord, Session, SessionStore};
use crate::domain::error::Result;
use crate::domain::events::Event;
use chrono::{DateTime, Utc};
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct SessionRow {
    id: Uuid,
    user_id: Uuid,
    user_agent: Option<String>,
    ip_address: Option<String>,
    created_at: DateTime<Utc>,
    last_used_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    revoked_at: Option<DateTime<Utc>>,
}

impl From<SessionRow> for Session {
    fn from(row: SessionRow) -> Self {
        Session {
            id: row.id,
            user_id: row.user_id,
            user_agent: row.user_agent,
            ip_address: row.ip_address,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
            expires_at: row.expires_at,
            revoked_at: row.revoked_at,
        }
    }
}

const SELECT_SESSION: &str = "SELECT id, user_id, user_agent, ip_address, created_at, \
     last_used_at, expires_at, revoked_at FROM sessions";

#[async_trait::async_trait]
impl SessionStore for SqlStore {
    async fn insert_session(
        &self,
        session: &Session,
        refresh_digest: &[u8; 32],
        events: &[Event],
    ) -> Result<()> {
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            sqlx::query(
                "INSERT INTO sessions (id, user_id, user_agent, ip_address, created_at, \
                 last_used_at, expires_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(session.id)
            .bind(session.user_id)
            .bind(&session.user_agent)
            .bind(&session.ip_address)
            .bind(session.created_at)
            .bind(session.last_used_at)
            .bind(session.expires_at)
            .bind(session.revoked_at)
            .execute(&mut *transaction)
            .await?;
            sqlx::query(
                "INSERT INTO refresh_tokens (token_digest, session_id, created_at) \
                 VALUES ($1, $2, $3)",
            )
            .bind(&refresh_digest[..])
            .bind(session.id)
            .bind(session.created_at)
            .execute(&mut *transaction)
            .await?;
            insert_events!(transaction, events);
            transaction.commit().await
        }
        .await)
        .map_err(database_error)
    }

    async fn find_session(&self, id: Uuid) -> Result<Option<Session>> {
        let row: Option<SessionRow> = with_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT_SESSION} WHERE id = $1")))
            .bind(id)
            .fetch_optional(pool)
            .await
        })
        .map_err(database_error)?;
        Ok(row.map(Session::from))
    }

    async fn find_refresh_token(&self, digest: &[u8; 32]) -> Result<Option<RefreshTokenRecord>> {
        let row: Option<(Uuid, Option<DateTime<Utc>>)> = with_pool!(self, pool => {
            sqlx::query_as("SELECT session_id, spent_at FROM refresh_tokens WHERE token_digest = $1")
                .bind(&digest[..])
                .fetch_optional(pool)
                .await
        })
        .map_err(database_error)?;
        Ok(row.map(|(session_id, spent_at)| RefreshTokenRecord {
            session_id,
            spent: spent_at.is_some(),
        }))
    }

    async fn rotate_refresh_token(
        &self,
        session_id: Uuid,
        old_digest: &[u8; 32],
        new_digest: &[u8; 32],
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<bool> {
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            let spent = sqlx::query(
                "UPDATE refresh_tokens SET spent_at = $2 \
                 WHERE token_digest = $1 AND spent_at IS NULL",
            )
            .bind(&old_digest[..])
            .bind(now)
            .execute(&mut *transaction)
            .await?;
            if spent.rows_affected() != 1 {
                transaction.rollback().await?;
                return Ok(false);
            }
            sqlx::query(
                "INSERT INTO refresh_tokens (token_digest, session_id, created_at) \
                 VALUES ($1, $2, $3)",
            )
            .bind(&new_digest[..])
            .bind(session_id)
            .bind(now)
            .execute(&mut *transaction)
            .await?;
            sqlx::query("UPDATE sessions SET last_used_at = $2, expires_at = $3 WHERE id = $1")
                .bind(session_id)
                .bind(now)
                .bind(expires_at)
                .execute(&mut *transaction)
                .await?;
            transaction.commit().await.map(|()| true)
        }
        .await)
        .map_err(database_error)
    }

    async fn list_sessions(&self, user_id: Uuid) -> Result<Vec<Session>> {
        let rows: Vec<SessionRow> = with_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "{SELECT_SESSION} WHERE user_id = $1 ORDER BY created_at DESC, id DESC"
            )))
            .bind(user_id)
            .fetch_all(pool)
            .await
        })
        .map_err(database_error)?;
        Ok(rows.into_iter().map(Session::from).collect())
    }

    async fn revoke_user_sessions(
        &self,
        user_id: Uuid,
        keep: Option<Uuid>,
        now: DateTime<Utc>,
        revoked: &(dyn Fn(Uuid) -> Event + Sync),
    ) -> Result<Vec<Uuid>> {
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            let ids: Vec<Uuid> = sqlx::query_scalar(
                "UPDATE sessions SET revoked_at = $3 \
                 WHERE user_id = $1 AND revoked_at IS NULL AND ($2 IS NULL OR id <> $2) \
                 RETURNING id",
            )
            .bind(user_id)
            .bind(keep)
            .bind(now)
            .fetch_all(&mut *transaction)
            .await?;
            let events: Vec<Event> = ids.iter().map(|id| revoked(*id)).collect();
            insert_events!(transaction, &events);
            transaction.commit().await?;
            Ok(ids)
        }
        .await)
        .map_err(database_error)
    }

    async fn record_expired_sessions(
        &self,
        now: DateTime<Utc>,
        expired: &(dyn Fn(Uuid, Uuid) -> Event + Sync),
    ) -> Result<u64> {
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            let sessions: Vec<(Uuid, Uuid)> = sqlx::query_as(
                "UPDATE sessions SET expiry_recorded = $2 \
                 WHERE expires_at < $1 AND revoked_at IS NULL AND NOT expiry_recorded \
                 RETURNING id, user_id",
            )
            .bind(now)
            .bind(true)
            .fetch_all(&mut *transaction)
            .await?;
            let events: Vec<Event> = sessions
                .iter()
                .map(|(session_id, user_id)| expired(*session_id, *user_id))
                .collect();
            insert_events!(transaction, &events);
            transaction.commit().await?;
            Ok(sessions.len() as u64)
        }
        .await)
        .map_err(database_error)
    }

    async fn touch_session(&self, id: Uuid, now: DateTime<Utc>) -> Result<()> {
        execute!(
            self,
            sqlx::query(
                "UPDATE sessions SET last_used_at = $2 WHERE id = $1 AND last_used_at < $2"
            )
            .bind(id)
            .bind(now)
        )
        .map(|_| ())
    }

    async fn delete_sessions_ended_before(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        execute!(
            self,
            sqlx::query("DELETE FROM sessions WHERE expires_at < $1 OR revoked_at < $1")
                .bind(cutoff)
        )
    }

    async fn revoke_session(&self, id: Uuid, now: DateTime<Utc>, events: &[Event]) -> Result<()> {
        execute_with_events!(
            self,
            events,
            sqlx::query("UPDATE sessions SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                .bind(id)
                .bind(now)
        )
        .map(|_| ())
    }
}
