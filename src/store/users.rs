//! `UserStore` on SQL.

use super::events::{execute_with_events, insert_events};
use super::{BeginWrite, SqlStore, database_error, unique_or, with_pool};
use crate::domain::error::Result;
use crate::domain::events::Event;
use crate::domain::user::{EmailAddress, User, UserCredentials, UserQuery, UserStore, email_taken};
use chrono::{DateTime, Utc};
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct UserRow {
    id: Uuid,
    email: String,
    full_name: String,
    email_verified: bool,
    is_superuser: bool,
    is_active: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    password_hash: String,
}

impl From<UserRow> for UserCredentials {
    fn from(row: UserRow) -> Self {
        UserCredentials {
            user: User {
                id: row.id,
                email: row.email,
                full_name: row.full_name,
                email_verified: row.email_verified,
                is_superuser: row.is_superuser,
                is_active: row.is_active,
                created_at: row.created_at,
                updated_at: row.updated_at,
            },
            password_hash: row.password_hash,
        }
    }
}

const SELECT_USER: &str = "SELECT id, email, full_name, email_verified, is_superuser, is_active, \
     created_at, updated_at, password_hash FROM users";

/// The row of a new account; `password_set` is false for one made by a provider sign-in.
macro_rules! insert_user_row {
    ($user:expr, $password_hash:expr, $password_set:expr) => {
        sqlx::query(
            "INSERT INTO users (id, email, password_hash, full_name, email_verified, \
             is_superuser, is_active, created_at, updated_at, password_set) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind($user.id)
        .bind(&$user.email)
        .bind($password_hash)
        .bind(&$user.full_name)
        .bind($user.email_verified)
        .bind($user.is_superuser)
        .bind($user.is_active)
        .bind($user.created_at)
        .bind($user.updated_at)
        .bind($password_set)
    };
}
pub(super) use insert_user_row;

/// Users matching a search, a page at a time, along the primary key (the search filters the
/// walk; an empty one stops at the page size).
pub(super) fn list_users_sql() -> String {
    format!(
        "{SELECT_USER} WHERE id > $1 \
         AND (LOWER(email) LIKE $2 ESCAPE '\\' OR LOWER(full_name) LIKE $2 ESCAPE '\\') \
         AND ($3 IS NULL OR is_active = $3) AND ($4 IS NULL OR is_superuser = $4) \
         ORDER BY id LIMIT $5"
    )
}

#[async_trait::async_trait]
impl UserStore for SqlStore {
    async fn insert_user(&self, user: &User, password_hash: &str, events: &[Event]) -> Result<()> {
        let inserted = with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            insert_user_row!(user, password_hash, true)
                .execute(&mut *transaction)
                .await?;
            insert_events!(transaction, events);
            transaction.commit().await
        }
        .await);
        inserted.map_err(unique_or(email_taken))
    }

    async fn find_user(&self, id: Uuid) -> Result<Option<User>> {
        let row: Option<UserRow> = with_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT_USER} WHERE id = $1")))
                .bind(id)
                .fetch_optional(pool)
                .await
        })
        .map_err(database_error)?;
        Ok(row.map(|row| UserCredentials::from(row).user))
    }

    async fn find_password_hash(&self, id: Uuid) -> Result<Option<String>> {
        with_pool!(self, pool => {
            sqlx::query_scalar("SELECT password_hash FROM users WHERE id = $1")
                .bind(id)
                .fetch_optional(pool)
                .await
        })
        .map_err(database_error)
    }

    async fn find_credentials_by_email(
        &self,
        email: &EmailAddress,
    ) -> Result<Option<UserCredentials>> {
        let row: Option<UserRow> = with_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT_USER} WHERE email = $1")))
                .bind(email.as_str())
                .fetch_optional(pool)
                .await
        })
        .map_err(database_error)?;
        Ok(row.map(UserCredentials::from))
    }

    async fn mark_email_verified(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
        events: &[Event],
    ) -> Result<()> {
        execute_with_events!(
            self,
            events,
            sqlx::query("UPDATE users SET email_verified = $2, updated_at = $3 WHERE id = $1")
                .bind(id)
                .bind(true)
                .bind(now)
        )
        .map(|_| ())
    }

    async fn update_password_hash(
        &self,
        id: Uuid,
        password_hash: &str,
        now: DateTime<Utc>,
        events: &[Event],
    ) -> Result<()> {
        execute_with_events!(
            self,
            events,
            sqlx::query("UPDATE users SET password_hash = $2, password_set = TRUE, updated_at = $3 WHERE id = $1")
                .bind(id)
                .bind(password_hash)
                .bind(now)
        )
        .map(|_| ())
    }

    async fn list_users(
        &self,
        query: &UserQuery,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<User>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let escaped = query
            .text
            .trim()
            .to_lowercase()
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        let pattern = format!("%{escaped}%");
        let rows: Vec<UserRow> = with_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(list_users_sql()))
            .bind(after.unwrap_or(Uuid::nil()))
            .bind(&pattern)
            .bind(query.is_active)
            .bind(query.is_superuser)
            .bind(limit)
            .fetch_all(pool)
            .await
        })
        .map_err(database_error)?;
        Ok(rows
            .into_iter()
            .map(|row| UserCredentials::from(row).user)
            .collect())
    }

    async fn update_full_name(
        &self,
        id: Uuid,
        full_name: &str,
        now: DateTime<Utc>,
        events: &[Event],
    ) -> Result<()> {
        execute_with_events!(
            self,
            events,
            sqlx::query("UPDATE users SET full_name = $2, updated_at = $3 WHERE id = $1")
                .bind(id)
                .bind(full_name)
                .bind(now)
        )
        .map(|_| ())
    }

    async fn set_superuser(
        &self,
        id: Uuid,
        is_superuser: bool,
        now: DateTime<Utc>,
        events: &[Event],
    ) -> Result<()> {
        execute_with_events!(
            self,
            events,
            sqlx::query("UPDATE users SET is_superuser = $2, updated_at = $3 WHERE id = $1")
                .bind(id)
                .bind(is_superuser)
                .bind(now)
        )
        .map(|_| ())
    }

    async fn deactivate_user(&self, id: Uuid, now: DateTime<Utc>, events: &[Event]) -> Result<()> {
        execute_with_events!(
            self,
            events,
            sqlx::query("UPDATE users SET is_active = $2, updated_at = $3 WHERE id = $1")
                .bind(id)
                .bind(false)
                .bind(now)
        )
        .map(|_| ())
    }
}
