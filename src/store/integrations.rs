//! `IntegrationStore` on SQL.

use super::events::execute_with_events;
use super::{SqlStore, database_error, with_pool};
use crate::domain::error::{Error, Result};
use crate::domain::events::Event;
use crate::domain::integrations::{
    AuthenticatedBy, Integration, IntegrationStore, ReceivedMessage, StoredIntegration,
};
use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct IntegrationRow {
    id: Uuid,
    organization_id: Uuid,
    name: String,
    integration_type: String,
    description: String,
    is_active: bool,
    last_event_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<IntegrationRow> for Integration {
    fn from(row: IntegrationRow) -> Self {
        Integration {
            id: row.id,
            organization_id: row.organization_id,
            name: row.name,
            integration_type: row.integration_type,
            description: row.description,
            is_active: row.is_active,
            last_event_at: row.last_event_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// The last message's time is its newest row's (ids are time-ordered), one step down the
/// index on (integration, id) however many messages the integration sent.
const INTEGRATION_COLUMNS: &str = "id, organization_id, name, integration_type, description, \
     is_active, created_at, updated_at, (SELECT received_at FROM integration_events \
     WHERE integration_id = integrations.id ORDER BY id DESC LIMIT 1) AS last_event_at";

#[derive(sqlx::FromRow)]
struct SecretRow {
    #[sqlx(flatten)]
    integration: IntegrationRow,
    secret: Vec<u8>,
}

#[derive(sqlx::FromRow)]
struct MessageRow {
    id: Uuid,
    integration_id: Uuid,
    message_id: String,
    content_type: String,
    payload: String,
    authenticated_by: String,
    received_at: DateTime<Utc>,
}

impl TryFrom<MessageRow> for ReceivedMessage {
    type Error = Error;

    fn try_from(row: MessageRow) -> Result<Self> {
        Ok(ReceivedMessage {
            authenticated_by: AuthenticatedBy::parse(&row.authenticated_by).ok_or_else(|| {
                Error::internal(format!(
                    "a received message authenticated by {:?}",
                    row.authenticated_by
                ))
            })?,
            id: row.id,
            integration_id: row.integration_id,
            message_id: row.message_id,
            content_type: row.content_type,
            payload: row.payload,
            received_at: row.received_at,
        })
    }
}

const SELECT_MESSAGE: &str = "SELECT id, integration_id, message_id, content_type, payload, \
     authenticated_by, received_at FROM integration_events";

#[async_trait::async_trait]
impl IntegrationStore for SqlStore {
    async fn insert_integration(
        &self,
        integration: &Integration,
        sealed_secret: &[u8],
        secret_digest: &[u8],
        events: &[Event],
    ) -> Result<()> {
        execute_with_events!(
            self,
            events,
            sqlx::query(
                "INSERT INTO integrations (id, organization_id, name, integration_type, \
                 description, secret, secret_digest, is_active, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            )
            .bind(integration.id)
            .bind(integration.organization_id)
            .bind(&integration.name)
            .bind(&integration.integration_type)
            .bind(&integration.description)
            .bind(sealed_secret)
            .bind(secret_digest)
            .bind(integration.is_active)
            .bind(integration.created_at)
            .bind(integration.updated_at)
        )
        .map(|_| ())
    }

    async fn find_integration(
        &self,
        organization_id: Uuid,
        id: Uuid,
    ) -> Result<Option<Integration>> {
        let sql = format!(
            "SELECT {INTEGRATION_COLUMNS} FROM integrations WHERE id = $1 AND organization_id = $2"
        );
        let row: Option<IntegrationRow> = with_pool!(self, pool => {
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(id)
                .bind(organization_id)
                .fetch_optional(pool)
                .await
        })
        .map_err(database_error)?;
        Ok(row.map(Integration::from))
    }

    async fn find_integration_with_secret(&self, id: Uuid) -> Result<Option<StoredIntegration>> {
        let sql = format!("SELECT secret, {INTEGRATION_COLUMNS} FROM integrations WHERE id = $1");
        let row: Option<SecretRow> = with_pool!(self, pool => {
            sqlx::query_as(AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await
        })
        .map_err(database_error)?;
        Ok(row.map(|row| StoredIntegration {
            integration: row.integration.into(),
            sealed_secret: row.secret,
        }))
    }

    async fn find_integration_by_secret(
        &self,
        secret_digest: &[u8],
    ) -> Result<Option<Integration>> {
        let sql =
            format!("SELECT {INTEGRATION_COLUMNS} FROM integrations WHERE secret_digest = $1");
        let row: Option<IntegrationRow> = with_pool!(self, pool => {
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(secret_digest)
                .fetch_optional(pool)
                .await
        })
        .map_err(database_error)?;
        Ok(row.map(Integration::from))
    }

    async fn list_integrations(
        &self,
        organization_id: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<Integration>> {
        let sql = format!(
            "SELECT {INTEGRATION_COLUMNS} FROM integrations WHERE organization_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        );
        let rows: Vec<IntegrationRow> = with_pool!(self, pool => {
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(organization_id)
                .bind(after.unwrap_or(Uuid::nil()))
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await
        })
        .map_err(database_error)?;
        Ok(rows.into_iter().map(Integration::from).collect())
    }

    async fn update_integration(&self, integration: &Integration, events: &[Event]) -> Result<()> {
        execute_with_events!(
            self,
            events,
            sqlx::query(
                "UPDATE integrations SET name = $3, description = $4, is_active = $5, \
                 updated_at = $6 WHERE id = $1 AND organization_id = $2",
            )
            .bind(integration.id)
            .bind(integration.organization_id)
            .bind(&integration.name)
            .bind(&integration.description)
            .bind(integration.is_active)
            .bind(integration.updated_at)
        )
        .map(|_| ())
    }

    async fn delete_integration(
        &self,
        organization_id: Uuid,
        id: Uuid,
        events: &[Event],
    ) -> Result<()> {
        execute_with_events!(
            self,
            events,
            sqlx::query("DELETE FROM integrations WHERE id = $1 AND organization_id = $2")
                .bind(id)
                .bind(organization_id)
        )
        .map(|_| ())
    }

    async fn replace_integration_secret(
        &self,
        id: Uuid,
        sealed_secret: &[u8],
        secret_digest: &[u8],
        events: &[Event],
    ) -> Result<()> {
        execute_with_events!(
            self,
            events,
            sqlx::query("UPDATE integrations SET secret = $2, secret_digest = $3 WHERE id = $1")
                .bind(id)
                .bind(sealed_secret)
                .bind(secret_digest)
        )
        .map(|_| ())
    }

    async fn insert_received_message(
        &self,
        message: &ReceivedMessage,
        events: &[Event],
    ) -> Result<bool> {
        execute_with_events!(
            self,
            events,
            sqlx::query(
                "INSERT INTO integration_events (id, integration_id, message_id, content_type, \
                 payload, authenticated_by, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (integration_id, message_id) DO NOTHING",
            )
            .bind(message.id)
            .bind(message.integration_id)
            .bind(&message.message_id)
            .bind(&message.content_type)
            .bind(&message.payload)
            .bind(message.authenticated_by.as_str())
            .bind(message.received_at)
        )
        .map(|inserted| inserted > 0)
    }

    async fn find_received_message(
        &self,
        integration_id: Uuid,
        message_id: &str,
    ) -> Result<Option<ReceivedMessage>> {
        let sql = format!("{SELECT_MESSAGE} WHERE integration_id = $1 AND message_id = $2");
        let row: Option<MessageRow> = with_pool!(self, pool => {
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(integration_id)
                .bind(message_id)
                .fetch_optional(pool)
                .await
        })
        .map_err(database_error)?;
        row.map(ReceivedMessage::try_from).transpose()
    }

    async fn list_received_messages(
        &self,
        integration_id: Uuid,
        before: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<ReceivedMessage>> {
        let sql = format!(
            "{SELECT_MESSAGE} WHERE integration_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
        );
        let rows: Vec<MessageRow> = with_pool!(self, pool => {
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(integration_id)
                .bind(before.unwrap_or(Uuid::max()))
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await
        })
        .map_err(database_error)?;
        rows.into_iter().map(ReceivedMessage::try_from).collect()
    }

    async fn delete_received_messages_before(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        with_pool!(self, pool => {
            sqlx::query("DELETE FROM integration_events WHERE received_at < $1")
                .bind(cutoff)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(database_error)
    }
}
