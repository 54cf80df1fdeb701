//! `FileStore` on SQL, with the storage usage each owner's files add up to.

use super::{BeginWrite, SqlStore, database_error, with_pool};
use crate::domain::error::Result;
use crate::domain::events::Event;
use crate::domain::files::{FileFilter, FileStore, StorageBudget, StoredFile};
use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct FileRow {
    id: Uuid,
    organization_id: Option<Uuid>,
    uploaded_by: Uuid,
    filename: String,
    original_filename: String,
    content_type: String,
    size: i64,
    checksum: String,
    storage_provider: String,
    object_key: String,
    description: String,
    created_at: DateTime<Utc>,
}

impl From<FileRow> for StoredFile {
    fn from(row: FileRow) -> Self {
        Self {
            id: row.id,
            organization_id: row.organization_id,
            uploaded_by: row.uploaded_by,
            filename: row.filename,
            original_filename: row.original_filename,
            content_type: row.content_type,
            size: row.size,
            checksum: row.checksum,
            storage_provider: row.storage_provider,
            object_key: row.object_key,
            description: row.description,
            created_at: row.created_at,
        }
    }
}

const COLUMNS: &str = "id, organization_id, uploaded_by, filename, original_filename, \
     content_type, size, checksum, storage_provider, object_key, description, created_at";

/// Adds `$2` bytes to owner `$1`'s usage unless that passes `$3`: one row changed, or none.
const RESERVE: &str = "INSERT INTO storage_usage (owner_id, bytes) SELECT $1, $2 WHERE $2 <= $3 \
     ON CONFLICT (owner_id) DO UPDATE SET bytes = storage_usage.bytes + excluded.bytes \
     WHERE storage_usage.bytes + excluded.bytes <= $3";

#[async_trait::async_trait]
impl FileStore for SqlStore {
    async fn insert_file(
        &self,
        file: &StoredFile,
        budget: StorageBudget,
        event: &Event,
    ) -> Result<bool> {
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            let reserved = sqlx::query(RESERVE)
                .bind(budget.owner_id)
                .bind(file.size)
                .bind(budget.limit)
                .execute(&mut *transaction)
                .await?
                .rows_affected();
            if reserved == 0 {
                return Ok(false);
            }
            let sql = format!(
                "INSERT INTO files ({COLUMNS}) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
            );
            sqlx::query(AssertSqlSafe(sql))
                .bind(file.id)
                .bind(file.organization_id)
                .bind(file.uploaded_by)
                .bind(&file.filename)
                .bind(&file.original_filename)
                .bind(&file.content_type)
                .bind(file.size)
                .bind(&file.checksum)
                .bind(&file.storage_provider)
                .bind(&file.object_key)
                .bind(&file.description)
                .bind(file.created_at)
                .execute(&mut *transaction)
                .await?;
            super::events::insert_events!(transaction, std::slice::from_ref(event));
            transaction.commit().await?;
            Ok::<bool, sqlx::Error>(true)
        }
        .await)
        .map_err(database_error)
    }

    async fn find_file(&self, id: Uuid) -> Result<Option<StoredFile>> {
        let sql = format!("SELECT {COLUMNS} FROM files WHERE id = $1 AND deleted_at IS NULL");
        let row: Option<FileRow> = with_pool!(self, pool => {
            sqlx::query_as(AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await
        })
        .map_err(database_error)?;
        Ok(row.map(StoredFile::from))
    }

    async fn list_files(
        &self,
        filter: &FileFilter,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<StoredFile>> {
        // Every parameter appears (PostgreSQL refuses unused ones); `image/` is a family.
        let sql = format!(
            "SELECT {COLUMNS} FROM files WHERE deleted_at IS NULL \
             AND (organization_id = $1 \
                  OR ($1 IS NULL AND organization_id IS NULL AND uploaded_by = $2)) \
             AND ($3 IS NULL OR content_type = $3 \
                  OR (substr($3, length($3), 1) = '/' \
                      AND substr(content_type, 1, length($3)) = $3)) \
             AND ($4 IS NULL OR created_at >= $4) AND ($5 IS NULL OR created_at < $5) \
             AND ($6 IS NULL OR id < $6) ORDER BY id DESC LIMIT $7"
        );
        let rows: Vec<FileRow> = with_pool!(self, pool => {
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(filter.organization_id)
                .bind(filter.uploaded_by)
                .bind(filter.content_type.as_deref())
                .bind(filter.created_after)
                .bind(filter.created_before)
                .bind(after)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await
        })
        .map_err(database_error)?;
        Ok(rows.into_iter().map(StoredFile::from).collect())
    }

    async fn delete_file(
        &self,
        file: &StoredFile,
        owner_id: Uuid,
        now: DateTime<Utc>,
        event: &Event,
    ) -> Result<bool> {
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            let deleted = sqlx::query(
                "UPDATE files SET deleted_at = $2 WHERE id = $1 AND deleted_at IS NULL",
            )
            .bind(file.id)
            .bind(now)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
            if deleted == 0 {
                return Ok(false);
            }
            sqlx::query("UPDATE storage_usage SET bytes = bytes - $2 WHERE owner_id = $1")
                .bind(owner_id)
                .bind(file.size)
                .execute(&mut *transaction)
                .await?;
            super::events::insert_events!(transaction, std::slice::from_ref(event));
            transaction.commit().await?;
            Ok::<bool, sqlx::Error>(true)
        }
        .await)
        .map_err(database_error)
    }
}
