//! `LlmProviderStore` on SQL.

use super::events::{execute_with_events, insert_events};
use super::{BeginWrite, SqlStore, database_error, with_pool};
use crate::domain::error::{Error, Result};
use crate::domain::events::Event;
use crate::domain::llm::{LlmProvider, LlmProviderStore, ProviderKind};
use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct ProviderRow {
    organization_id: Uuid,
    name: String,
    kind: String,
    base_url: String,
    api_version: String,
    models: String,
    default_model: String,
    is_default: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<ProviderRow> for LlmProvider {
    type Error = Error;

    fn try_from(row: ProviderRow) -> Result<Self> {
        Ok(LlmProvider {
            kind: ProviderKind::parse(&row.kind).ok_or_else(|| {
                Error::internal(format!("an LLM provider of kind {:?}", row.kind))
            })?,
            organization_id: row.organization_id,
            name: row.name,
            base_url: row.base_url,
            api_version: row.api_version,
            models: row.models.split_whitespace().map(str::to_owned).collect(),
            default_model: row.default_model,
            is_default: row.is_default,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

const PROVIDER_COLUMNS: &str = "organization_id, name, kind, base_url, api_version, models, \
     default_model, is_default, created_at, updated_at";

#[async_trait::async_trait]
impl LlmProviderStore for SqlStore {
    async fn save_llm_provider(
        &self,
        provider: &LlmProvider,
        sealed_key: &[u8],
        events: &[Event],
    ) -> Result<()> {
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            if provider.is_default {
                sqlx::query(
                    "UPDATE llm_providers SET is_default = $3 \
                     WHERE organization_id = $1 AND name <> $2",
                )
                .bind(provider.organization_id)
                .bind(&provider.name)
                .bind(false)
                .execute(&mut *transaction)
                .await?;
            }
            sqlx::query(
                "INSERT INTO llm_providers (organization_id, name, kind, base_url, api_key, \
                 api_version, models, default_model, is_default, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) \
                 ON CONFLICT (organization_id, name) DO UPDATE SET kind = excluded.kind, \
                 base_url = excluded.base_url, api_key = excluded.api_key, \
                 api_version = excluded.api_version, models = excluded.models, \
                 default_model = excluded.default_model, is_default = excluded.is_default, \
                 updated_at = excluded.updated_at",
            )
            .bind(provider.organization_id)
            .bind(&provider.name)
            .bind(provider.kind.as_str())
            .bind(&provider.base_url)
            .bind(sealed_key)
            .bind(&provider.api_version)
            .bind(provider.models.join(" "))
            .bind(&provider.default_model)
            .bind(provider.is_default)
            .bind(provider.created_at)
            .bind(provider.updated_at)
            .execute(&mut *transaction)
            .await?;
            insert_events!(transaction, events);
            transaction.commit().await
        }
        .await)
        .map_err(database_error)
    }

    async fn find_llm_provider(
        &self,
        organization_id: Uuid,
        name: &str,
    ) -> Result<Option<(LlmProvider, Vec<u8>)>> {
        #[derive(sqlx::FromRow)]
        struct KeyedRow {
            #[sqlx(flatten)]
            provider: ProviderRow,
            api_key: Vec<u8>,
        }
        let sql = format!(
            "SELECT {PROVIDER_COLUMNS}, api_key FROM llm_providers \
             WHERE organization_id = $1 AND name = $2"
        );
        let row: Option<KeyedRow> = with_pool!(self, pool => {
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(organization_id)
                .bind(name)
                .fetch_optional(pool)
                .await
        })
        .map_err(database_error)?;
        row.map(|row| Ok((LlmProvider::try_from(row.provider)?, row.api_key)))
            .transpose()
    }

    async fn list_llm_providers(&self, organization_id: Uuid) -> Result<Vec<LlmProvider>> {
        let sql = format!(
            "SELECT {PROVIDER_COLUMNS} FROM llm_providers WHERE organization_id = $1 ORDER BY name"
        );
        let rows: Vec<ProviderRow> = with_pool!(self, pool => {
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(organization_id)
                .fetch_all(pool)
                .await
        })
        .map_err(database_error)?;
        rows.into_iter().map(LlmProvider::try_from).collect()
    }

    async fn delete_llm_provider(
        &self,
        organization_id: Uuid,
        name: &str,
        events: &[Event],
    ) -> Result<bool> {
        execute_with_events!(
            self,
            events,
            sqlx::query("DELETE FROM llm_providers WHERE organization_id = $1 AND name = $2")
                .bind(organization_id)
                .bind(name)
        )
        .map(|deleted| deleted > 0)
    }
}
