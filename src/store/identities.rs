//! `IdentityStore` on SQL.

use super::events::insert_events;
use super::users::insert_user_row;
use super::{BeginWrite, SqlStore, database_error, execute, unique_or, with_pool};
use crate::domain::auth::{IDENTITY_TAKEN, Identity, IdentityStore, LAST_SIGN_IN_METHOD};
use crate::domain::error::{Error, ErrorKind, Result};
use crate::domain::events::Event;
use crate::domain::user::{User, email_taken};
use chrono::{DateTime, Utc};
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct IdentityRow {
    id: Uuid,
    user_id: Uuid,
    provider: String,
    subject: String,
    email: String,
    created_at: DateTime<Utc>,
    last_used_at: DateTime<Utc>,
}

impl From<IdentityRow> for Identity {
    fn from(row: IdentityRow) -> Self {
        Identity {
            id: row.id,
            user_id: row.user_id,
            provider: row.provider,
            subject: row.subject,
            email: row.email,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
        }
    }
}

const SELECT_IDENTITY: &str = "SELECT id, user_id, provider, subject, email, created_at, \
     last_used_at FROM user_identities";

fn identity_taken() -> Error {
    Error::already_exists(
        IDENTITY_TAKEN,
        "this identity is already linked to an account",
    )
}

macro_rules! insert_identity_row {
    ($identity:expr) => {
        sqlx::query(
            "INSERT INTO user_identities (id, user_id, provider, subject, email, created_at, \
             last_used_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind($identity.id)
        .bind($identity.user_id)
        .bind(&$identity.provider)
        .bind(&$identity.subject)
        .bind(&$identity.email)
        .bind($identity.created_at)
        .bind($identity.last_used_at)
    };
}

#[async_trait::async_trait]
impl IdentityStore for SqlStore {
    async fn find_identity(&self, provider: &str, subject: &str) -> Result<Option<Identity>> {
        let row: Option<IdentityRow> = with_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "{SELECT_IDENTITY} WHERE provider = $1 AND subject = $2"
            )))
            .bind(provider)
            .bind(subject)
            .fetch_optional(pool)
            .await
        })
        .map_err(database_error)?;
        Ok(row.map(Identity::from))
    }

    async fn insert_identity(&self, identity: &Identity, events: &[Event]) -> Result<()> {
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            insert_identity_row!(identity).execute(&mut *transaction).await?;
            insert_events!(transaction, events);
            transaction.commit().await
        }
        .await)
        .map_err(unique_or(identity_taken))
    }

    async fn insert_user_with_identity(
        &self,
        user: &User,
        unusable_password_hash: &str,
        identity: &Identity,
        events: &[Event],
    ) -> Result<()> {
        let inserted = with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            insert_user_row!(user, unusable_password_hash, false)
                .execute(&mut *transaction)
                .await?;
            insert_identity_row!(identity).execute(&mut *transaction).await?;
            insert_events!(transaction, events);
            transaction.commit().await
        }
        .await);
        // Two first sign-ins racing: one made the account, the other may sign in again.
        inserted.map_err(unique_or(email_taken))
    }

    async fn record_identity_use(&self, id: Uuid, email: &str, now: DateTime<Utc>) -> Result<()> {
        execute!(
            self,
            sqlx::query("UPDATE user_identities SET email = $2, last_used_at = $3 WHERE id = $1")
                .bind(id)
                .bind(email)
                .bind(now)
        )
        .map(|_| ())
    }

    async fn list_identities(&self, user_id: Uuid) -> Result<Vec<Identity>> {
        let rows: Vec<IdentityRow> = with_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "{SELECT_IDENTITY} WHERE user_id = $1 ORDER BY created_at, id"
            )))
            .bind(user_id)
            .fetch_all(pool)
            .await
        })
        .map_err(database_error)?;
        Ok(rows.into_iter().map(Identity::from).collect())
    }

    async fn delete_identity(&self, user_id: Uuid, id: Uuid, events: &[Event]) -> Result<bool> {
        self.delete_way_in("user_identities", user_id, id, events)
            .await?
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::FailedPrecondition,
                    LAST_SIGN_IN_METHOD,
                    "this identity is your account's only way to sign in: set a password first \
                     (with a password reset), or link another identity or add a passkey",
                )
            })
    }
}

impl SqlStore {
    /// Deletes the row `id` of the user's ways to sign in (`table`: identities or passkeys)
    /// with its events, unless the account would be left without one: no password and no other
    /// identity or passkey (`None` then). False when the user has no such row.
    pub(super) async fn delete_way_in(
        &self,
        table: &'static str,
        user_id: Uuid,
        id: Uuid,
        events: &[Event],
    ) -> Result<Option<bool>> {
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            // Locks the account's row, so two removals cannot each leave the other's last.
            let password_set: Option<bool> = sqlx::query_scalar(
                "UPDATE users SET updated_at = updated_at WHERE id = $1 RETURNING password_set",
            )
            .bind(user_id)
            .fetch_optional(&mut *transaction)
            .await?;
            let others: i64 = sqlx::query_scalar(
                "SELECT (SELECT COUNT(*) FROM user_identities WHERE user_id = $1 AND id <> $2) \
                 + (SELECT COUNT(*) FROM passkeys WHERE user_id = $1 AND id <> $2)",
            )
            .bind(user_id)
            .bind(id)
            .fetch_one(&mut *transaction)
            .await?;
            if password_set != Some(true) && others == 0 {
                return Ok(None);
            }
            let deleted = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE id = $1 AND user_id = $2"
            )))
            .bind(id)
            .bind(user_id)
            .execute(&mut *transaction)
            .await?
            .rows_affected()
                > 0;
            if deleted {
                insert_events!(transaction, events);
            }
            transaction.commit().await?;
            Ok(Some(deleted))
        }
        .await)
        .map_err(database_error)
    }
}
