//! `FileStore` on SQL, with the storage usage each owner's files add up to.

use super::{BeginWrite, SqlStore, database_error, with_pool};
use crate::domain::error::Result;
use crate::domain::events::Event;
use crate::domain::files::{
    FileFilter, FileStore, PendingUpload, PurgeTarget, QueuedPurge, StorageBudget, StoredFile,
    UploadHeader,
};
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

#[derive(sqlx::FromRow)]
struct UploadRow {
    id: Uuid,
    organization_id: Option<Uuid>,
    uploaded_by: Uuid,
    filename: String,
    declared_type: Option<String>,
    description: String,
    checksum: Option<String>,
    length: i64,
    received: i64,
    storage_state: String,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

impl From<UploadRow> for PendingUpload {
    fn from(row: UploadRow) -> Self {
        Self {
            id: row.id,
            uploaded_by: row.uploaded_by,
            header: UploadHeader {
                filename: row.filename,
                organization_id: row.organization_id,
                description: row.description,
                declared_type: row.declared_type,
                checksum: row.checksum,
            },
            length: row.length,
            received: row.received,
            storage_state: row.storage_state,
            created_at: row.created_at,
            expires_at: row.expires_at,
        }
    }
}

const UPLOAD_COLUMNS: &str = "id, organization_id, uploaded_by, filename, declared_type, \
     description, checksum, length, received, storage_state, created_at, expires_at";

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

    async fn insert_upload(&self, upload: &PendingUpload) -> Result<()> {
        let sql = format!(
            "INSERT INTO file_uploads ({UPLOAD_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        );
        with_pool!(self, pool => {
            sqlx::query(AssertSqlSafe(sql))
                .bind(upload.id)
                .bind(upload.header.organization_id)
                .bind(upload.uploaded_by)
                .bind(&upload.header.filename)
                .bind(upload.header.declared_type.as_deref())
                .bind(&upload.header.description)
                .bind(upload.header.checksum.as_deref())
                .bind(upload.length)
                .bind(upload.received)
                .bind(&upload.storage_state)
                .bind(upload.created_at)
                .bind(upload.expires_at)
                .execute(pool)
                .await
                .map(|_| ())
        })
        .map_err(database_error)
    }

    async fn find_upload(&self, id: Uuid) -> Result<Option<PendingUpload>> {
        let sql = format!("SELECT {UPLOAD_COLUMNS} FROM file_uploads WHERE id = $1");
        let row: Option<UploadRow> = with_pool!(self, pool => {
            sqlx::query_as(AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await
        })
        .map_err(database_error)?;
        Ok(row.map(PendingUpload::from))
    }

    async fn claim_upload(
        &self,
        id: Uuid,
        received: i64,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool> {
        let claimed = with_pool!(self, pool => {
            sqlx::query(
                "UPDATE file_uploads SET appending_until = $4 WHERE id = $1 AND received = $2 \
                 AND (appending_until IS NULL OR appending_until < $3)",
            )
            .bind(id)
            .bind(received)
            .bind(now)
            .bind(until)
            .execute(pool)
            .await
            .map(|done| done.rows_affected())
        })
        .map_err(database_error)?;
        Ok(claimed == 1)
    }

    async fn record_append(&self, id: Uuid, received: i64, storage_state: &str) -> Result<()> {
        with_pool!(self, pool => {
            sqlx::query(
                "UPDATE file_uploads SET received = $2, storage_state = $3, \
                 appending_until = NULL WHERE id = $1",
            )
            .bind(id)
            .bind(received)
            .bind(storage_state)
            .execute(pool)
            .await
            .map(|_| ())
        })
        .map_err(database_error)
    }

    async fn delete_upload(&self, id: Uuid) -> Result<bool> {
        let deleted = with_pool!(self, pool => {
            sqlx::query("DELETE FROM file_uploads WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(database_error)?;
        Ok(deleted == 1)
    }

    async fn delete_expired_uploads(&self, now: DateTime<Utc>) -> Result<u64> {
        with_pool!(self, pool => {
            sqlx::query("DELETE FROM file_uploads WHERE expires_at < $1")
                .bind(now)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(database_error)
    }

    async fn forget_deleted_files(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        with_pool!(self, pool => {
            sqlx::query("DELETE FROM files WHERE deleted_at < $1")
                .bind(cutoff)
                .execute(pool)
                .await
                .map(|done| done.rows_affected())
        })
        .map_err(database_error)
    }

    async fn queued_purges(&self, limit: usize) -> Result<Vec<QueuedPurge>> {
        let rows: Vec<(i64, Uuid, String, String)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, item_id, kind, storage_state FROM object_purges ORDER BY id LIMIT $1",
            )
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(pool)
            .await
        })
        .map_err(database_error)?;
        Ok(rows
            .into_iter()
            .map(|(id, item_id, kind, storage_state)| QueuedPurge {
                id,
                target: match kind.as_str() {
                    "upload" => PurgeTarget::Upload {
                        id: item_id,
                        storage_state,
                    },
                    _ => PurgeTarget::File(item_id),
                },
            })
            .collect())
    }

    async fn finish_purge(&self, id: i64) -> Result<()> {
        with_pool!(self, pool => {
            sqlx::query("DELETE FROM object_purges WHERE id = $1")
                .bind(id)
                .execute(pool)
                .await
                .map(|_| ())
        })
        .map_err(database_error)
    }
}
