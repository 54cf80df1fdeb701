//! `ApiKeyStore` on SQL.

use super::events::{execute_with_events, insert_events};
use super::{BeginWrite, SqlStore, database_error, execute, with_pool};
use crate::domain::apikey::{ApiKey, ApiKeyStore, StoredApiKey};
use crate::domain::error::Result;
use crate::domain::events::Event;
use chrono::{DateTime, Utc};
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct ApiKeyRow {
    id: Uuid,
    user_id: Uuid,
    name: String,
    prefix: String,
    key_digest: Vec<u8>,
    scopes: String,
    organization_id: Option<Uuid>,
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

impl From<ApiKeyRow> for StoredApiKey {
    fn from(row: ApiKeyRow) -> Self {
        StoredApiKey {
            key: ApiKey {
                id: row.id,
                user_id: row.user_id,
                name: row.name,
                prefix: row.prefix,
                scopes: row.scopes.split_whitespace().map(str::to_owned).collect(),
                organization_id: row.organization_id,
                created_at: row.created_at,
                last_used_at: row.last_used_at,
                expires_at: row.expires_at,
                revoked_at: row.revoked_at,
            },
            digest: row.key_digest,
        }
    }
}

const SELECT_API_KEY: &str = "SELECT id, user_id, name, prefix, key_digest, scopes, organization_id, \
     created_at, last_used_at, expires_at, revoked_at FROM api_keys";

#[async_trait::async_trait]
impl ApiKeyStore for SqlStore {
    async fn insert_api_key(
        &self,
        key: &ApiKey,
        digest: &[u8; 32],
        events: &[Event],
    ) -> Result<()> {
        execute_with_events!(
            self,
            events,
            sqlx::query(
                "INSERT INTO api_keys (id, user_id, name, prefix, key_digest, scopes, \
                 organization_id, created_at, last_used_at, expires_at, revoked_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
            )
            .bind(key.id)
            .bind(key.user_id)
            .bind(&key.name)
            .bind(&key.prefix)
            .bind(&digest[..])
            .bind(key.scopes.join(" "))
            .bind(key.organization_id)
            .bind(key.created_at)
            .bind(key.last_used_at)
            .bind(key.expires_at)
            .bind(key.revoked_at)
        )
        .map(|_| ())
    }

    async fn list_active_api_keys(&self, user_id: Uuid, now: DateTime<Utc>) -> Result<Vec<ApiKey>> {
        let rows: Vec<ApiKeyRow> = with_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "{SELECT_API_KEY} WHERE user_id = $1 AND revoked_at IS NULL \
                 AND (expires_at IS NULL OR expires_at > $2) ORDER BY created_at DESC, id DESC"
            )))
            .bind(user_id)
            .bind(now)
            .fetch_all(pool)
            .await
        })
        .map_err(database_error)?;
        Ok(rows
            .into_iter()
            .map(|row| StoredApiKey::from(row).key)
            .collect())
    }

    async fn find_api_key(&self, id: Uuid) -> Result<Option<ApiKey>> {
        let row: Option<ApiKeyRow> = with_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT_API_KEY} WHERE id = $1")))
                .bind(id)
                .fetch_optional(pool)
                .await
        })
        .map_err(database_error)?;
        Ok(row.map(|row| StoredApiKey::from(row).key))
    }

    async fn find_api_key_by_prefix(&self, prefix: &str) -> Result<Option<StoredApiKey>> {
        let row: Option<ApiKeyRow> = with_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT_API_KEY} WHERE prefix = $1")))
                .bind(prefix)
                .fetch_optional(pool)
                .await
        })
        .map_err(database_error)?;
        Ok(row.map(StoredApiKey::from))
    }

    async fn revoke_api_key(&self, id: Uuid, now: DateTime<Utc>, events: &[Event]) -> Result<()> {
        execute_with_events!(
            self,
            events,
            sqlx::query("UPDATE api_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
                .bind(id)
                .bind(now)
        )
        .map(|_| ())
    }

    async fn revoke_user_api_keys(
        &self,
        user_id: Uuid,
        now: DateTime<Utc>,
        revoked: &(dyn for<'key> Fn(&'key ApiKey) -> Event + Sync),
    ) -> Result<Vec<ApiKey>> {
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            let rows: Vec<ApiKeyRow> = sqlx::query_as(
                "UPDATE api_keys SET revoked_at = $2 \
                 WHERE user_id = $1 AND revoked_at IS NULL RETURNING id, user_id, name, prefix, \
                 key_digest, scopes, organization_id, created_at, last_used_at, expires_at, \
                 revoked_at",
            )
            .bind(user_id)
            .bind(now)
            .fetch_all(&mut *transaction)
            .await?;
            let keys: Vec<ApiKey> = rows.into_iter().map(|row| StoredApiKey::from(row).key).collect();
            let events: Vec<Event> = keys.iter().map(revoked).collect();
            insert_events!(transaction, &events);
            transaction.commit().await?;
            Ok(keys)
        }
        .await)
        .map_err(database_error)
    }

    async fn touch_api_key(&self, id: Uuid, now: DateTime<Utc>) -> Result<()> {
        execute!(
            self,
            sqlx::query("UPDATE api_keys SET last_used_at = $2 WHERE id = $1")
                .bind(id)
                .bind(now)
        )
        .map(|_| ())
    }
}
