//! `DependencyStore` on SQL.

use super::{BeginWrite, SqlStore, database_error, with_pool};
use crate::domain::dependencies::DependencyStore;
use crate::domain::error::Result;
use chrono::{DateTime, Utc};

#[async_trait::async_trait]
impl DependencyStore for SqlStore {
    async fn save_newest_versions(
        &self,
        versions: &[(String, String)],
        checked_at: DateTime<Utc>,
    ) -> Result<()> {
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            for (name, version) in versions {
                sqlx::query(
                    "INSERT INTO dependency_versions (name, newest_version, checked_at) \
                     VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE \
                     SET newest_version = $2, checked_at = $3",
                )
                .bind(name)
                .bind(version)
                .bind(checked_at)
                .execute(&mut *transaction)
                .await?;
            }
            transaction.commit().await
        }
        .await)
        .map_err(database_error)
    }

    async fn newest_versions(&self) -> Result<Vec<(String, String, DateTime<Utc>)>> {
        with_pool!(self, pool => {
            sqlx::query_as("SELECT name, newest_version, checked_at FROM dependency_versions")
                .fetch_all(pool)
                .await
        })
        .map_err(database_error)
    }
}
