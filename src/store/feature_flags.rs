//! `FeatureFlagStore` on SQL.

use super::events::{execute_with_events, insert_events};
use super::{BeginWrite, SqlStore, database_error, unique_or, with_pool};
use crate::domain::error::{Error, Result};
use crate::domain::events::Event;
use crate::domain::flags::{FeatureFlag, FeatureFlagStore, FlagOverride};
use chrono::{DateTime, Utc};
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct FlagRow {
    id: Uuid,
    name: String,
    description: String,
    is_enabled: bool,
    rollout: f64,
    targeting: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<FlagRow> for FeatureFlag {
    type Error = Error;

    fn try_from(row: FlagRow) -> Result<Self> {
        Ok(FeatureFlag {
            id: row.id,
            name: row.name,
            description: row.description,
            is_enabled: row.is_enabled,
            rollout: row.rollout,
            targeting: serde_json::from_str(&row.targeting).map_err(Error::internal)?,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

fn flag_exists() -> Error {
    Error::already_exists(
        "FEATURE_FLAG_EXISTS",
        "a feature flag with this name exists",
    )
}

fn targeting_json(flag: &FeatureFlag) -> Result<String> {
    serde_json::to_string(&flag.targeting).map_err(Error::internal)
}

#[async_trait::async_trait]
impl FeatureFlagStore for SqlStore {
    async fn insert_flag(&self, flag: &FeatureFlag, events: &[Event]) -> Result<()> {
        let targeting = targeting_json(flag)?;
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            sqlx::query(
                "INSERT INTO feature_flags (id, name, description, is_enabled, rollout, targeting, \
                 created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(flag.id)
            .bind(&flag.name)
            .bind(&flag.description)
            .bind(flag.is_enabled)
            .bind(flag.rollout)
            .bind(&targeting)
            .bind(flag.created_at)
            .bind(flag.updated_at)
            .execute(&mut *transaction)
            .await?;
            insert_events!(transaction, events);
            transaction.commit().await
        }
        .await)
        .map_err(unique_or(flag_exists))
    }

    async fn list_flags(&self) -> Result<Vec<FeatureFlag>> {
        let rows: Vec<FlagRow> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, name, description, is_enabled, rollout, targeting, created_at, \
                 updated_at FROM feature_flags",
            )
            .fetch_all(pool)
            .await
        })
        .map_err(database_error)?;
        rows.into_iter().map(FeatureFlag::try_from).collect()
    }

    async fn update_flag(&self, flag: &FeatureFlag, events: &[Event]) -> Result<bool> {
        let targeting = targeting_json(flag)?;
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            let updated = sqlx::query(
                "UPDATE feature_flags SET description = $2, is_enabled = $3, rollout = $4, \
                 targeting = $5, updated_at = $6 WHERE id = $1",
            )
            .bind(flag.id)
            .bind(&flag.description)
            .bind(flag.is_enabled)
            .bind(flag.rollout)
            .bind(&targeting)
            .bind(flag.updated_at)
            .execute(&mut *transaction)
            .await?
            .rows_affected()
                > 0;
            if updated {
                insert_events!(transaction, events);
            }
            transaction.commit().await?;
            Ok(updated)
        }
        .await)
        .map_err(database_error)
    }

    async fn delete_flag(&self, id: Uuid, events: &[Event]) -> Result<bool> {
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            let deleted = sqlx::query("DELETE FROM feature_flags WHERE id = $1")
                .bind(id)
                .execute(&mut *transaction)
                .await?
                .rows_affected()
                > 0;
            if deleted {
                insert_events!(transaction, events);
            }
            transaction.commit().await?;
            Ok(deleted)
        }
        .await)
        .map_err(database_error)
    }

    async fn list_flag_overrides(&self) -> Result<Vec<FlagOverride>> {
        type Row = (Uuid, Uuid, bool, DateTime<Utc>);
        let rows: Vec<Row> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT flag_id, organization_id, is_enabled, updated_at \
                 FROM feature_flag_overrides",
            )
            .fetch_all(pool)
            .await
        })
        .map_err(database_error)?;
        Ok(rows
            .into_iter()
            .map(
                |(flag_id, organization_id, is_enabled, updated_at)| FlagOverride {
                    flag_id,
                    organization_id,
                    is_enabled,
                    updated_at,
                },
            )
            .collect())
    }

    async fn set_flag_override(&self, flag: &FlagOverride, events: &[Event]) -> Result<bool> {
        execute_with_events!(
            self,
            events,
            sqlx::query(
                "INSERT INTO feature_flag_overrides (flag_id, organization_id, is_enabled, \
                 updated_at) SELECT $1, $2, $3, $4 WHERE EXISTS \
                 (SELECT 1 FROM feature_flags WHERE id = $1) \
                 ON CONFLICT (flag_id, organization_id) DO UPDATE SET \
                 is_enabled = excluded.is_enabled, updated_at = excluded.updated_at",
            )
            .bind(flag.flag_id)
            .bind(flag.organization_id)
            .bind(flag.is_enabled)
            .bind(flag.updated_at)
        )
        .map(|written| written > 0)
    }

    async fn delete_flag_override(
        &self,
        flag_id: Uuid,
        organization_id: Uuid,
        events: &[Event],
    ) -> Result<bool> {
        execute_with_events!(
            self,
            events,
            sqlx::query(
                "DELETE FROM feature_flag_overrides WHERE flag_id = $1 AND organization_id = $2",
            )
            .bind(flag_id)
            .bind(organization_id)
        )
        .map(|deleted| deleted > 0)
    }
}
