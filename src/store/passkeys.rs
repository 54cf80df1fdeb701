//! `PasskeyStore` on SQL.

use super::events::insert_events;
use super::{BeginWrite, SqlStore, database_error, execute, unique_or, with_pool};
use crate::domain::auth::{PASSKEY_TAKEN, PasskeyRecord, PasskeyStore, last_sign_in_method};
use crate::domain::error::{Error, Result};
use crate::domain::events::Event;
use chrono::{DateTime, Utc};
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct PasskeyRow {
    id: Uuid,
    user_id: Uuid,
    name: String,
    credential: String,
    sign_count: i64,
    backup_eligible: bool,
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
}

impl TryFrom<PasskeyRow> for PasskeyRecord {
    type Error = Error;

    fn try_from(row: PasskeyRow) -> Result<Self> {
        Ok(PasskeyRecord {
            id: row.id,
            user_id: row.user_id,
            name: row.name,
            credential: serde_json::from_str(&row.credential).map_err(Error::internal)?,
            sign_count: u32::try_from(row.sign_count).map_err(Error::internal)?,
            backup_eligible: row.backup_eligible,
            created_at: row.created_at,
            last_used_at: row.last_used_at,
        })
    }
}

const SELECT_PASSKEY: &str = "SELECT id, user_id, name, credential, sign_count, backup_eligible, \
     created_at, last_used_at FROM passkeys";

fn passkey_taken() -> Error {
    Error::already_exists(
        PASSKEY_TAKEN,
        "this authenticator's passkey is registered already",
    )
}

fn stored_credential(passkey: &PasskeyRecord) -> Result<String> {
    serde_json::to_string(&passkey.credential).map_err(Error::internal)
}

fn records(rows: Vec<PasskeyRow>) -> Result<Vec<PasskeyRecord>> {
    rows.into_iter().map(PasskeyRecord::try_from).collect()
}

#[async_trait::async_trait]
impl PasskeyStore for SqlStore {
    async fn insert_passkey(&self, passkey: &PasskeyRecord, events: &[Event]) -> Result<()> {
        let credential = stored_credential(passkey)?;
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            sqlx::query(
                "INSERT INTO passkeys (id, user_id, credential_id, name, credential, sign_count, \
                 backup_eligible, created_at, last_used_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(passkey.id)
            .bind(passkey.user_id)
            .bind(passkey.credential_id())
            .bind(&passkey.name)
            .bind(&credential)
            .bind(i64::from(passkey.sign_count))
            .bind(passkey.backup_eligible)
            .bind(passkey.created_at)
            .bind(passkey.last_used_at)
            .execute(&mut *transaction)
            .await?;
            insert_events!(transaction, events);
            transaction.commit().await
        }
        .await)
        .map_err(unique_or(passkey_taken))
    }

    async fn list_passkeys(&self, user_id: Uuid) -> Result<Vec<PasskeyRecord>> {
        let rows: Vec<PasskeyRow> = with_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "{SELECT_PASSKEY} WHERE user_id = $1 ORDER BY created_at, id"
            )))
            .bind(user_id)
            .fetch_all(pool)
            .await
        })
        .map_err(database_error)?;
        records(rows)
    }

    async fn find_passkey_by_credential(
        &self,
        credential_id: &[u8],
    ) -> Result<Option<PasskeyRecord>> {
        let row: Option<PasskeyRow> = with_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "{SELECT_PASSKEY} WHERE credential_id = $1"
            )))
            .bind(credential_id)
            .fetch_optional(pool)
            .await
        })
        .map_err(database_error)?;
        row.map(PasskeyRecord::try_from).transpose()
    }

    async fn rename_passkey(
        &self,
        user_id: Uuid,
        id: Uuid,
        name: &str,
    ) -> Result<Option<PasskeyRecord>> {
        let row: Option<PasskeyRow> = with_pool!(self, pool => {
            sqlx::query_as(
                "UPDATE passkeys SET name = $3 WHERE id = $1 AND user_id = $2 RETURNING id, \
                 user_id, name, credential, sign_count, backup_eligible, created_at, last_used_at",
            )
            .bind(id)
            .bind(user_id)
            .bind(name)
            .fetch_optional(pool)
            .await
        })
        .map_err(database_error)?;
        row.map(PasskeyRecord::try_from).transpose()
    }

    async fn record_passkey_use(
        &self,
        passkey: &PasskeyRecord,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        let credential = stored_credential(passkey)?;
        let count = i64::from(passkey.sign_count);
        execute!(
            self,
            sqlx::query(
                "UPDATE passkeys SET credential = $2, sign_count = $3, backup_eligible = $4, \
                 last_used_at = $5 WHERE id = $1 AND (sign_count < $3 OR ($3 = 0 AND sign_count = 0))",
            )
            .bind(passkey.id)
            .bind(&credential)
            .bind(count)
            .bind(passkey.backup_eligible)
            .bind(now)
        )
        .map(|updated| updated > 0)
    }

    async fn delete_passkey(&self, user_id: Uuid, id: Uuid, events: &[Event]) -> Result<bool> {
        self.delete_way_in("passkeys", user_id, id, events)
            .await?
            .ok_or_else(last_sign_in_method)
    }
}
