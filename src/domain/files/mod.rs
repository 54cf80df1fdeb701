//! Files: uploads streamed to an object store, checked by content, hashed and counted against
//! quotas as they stream; listed, described, deleted and served through short-lived signed URLs.
//!
//! A personal file is its uploader's alone; an organization's file is read with `file:read`
//! there and deleted with `file:delete`. Object keys are Keel's own (`objects/<file id>`), never
//! derived from what the client sends.

use super::clock::{Clock, truncate_to_micros};
use super::error::{Error, ErrorKind, FieldViolation, Missing, Result};
use super::events::{Event, EventData, EventKind, Origin};
use super::page::{Page, PageTokens};
use super::principal::{Credential, Principal};
use super::secret::Keyring;
use super::tenancy::access::{AccessControl, Scope};
use super::tenancy::quotas::{QuotaService, quota_exceeded};
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures_util::stream::{BoxStream, StreamExt};
use schemars::JsonSchema;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;
use uuid::Uuid;

mod images;
mod resumable;

pub use images::ImageSettings;
pub use resumable::{UPLOAD_LIFETIME, UploadProgress};

/// Bytes as they stream in or out.
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// The bytes read before the first write, to tell what the file is.
const SNIFF_BYTES: usize = 64 * 1024;
/// The longest original filename kept, in bytes.
const MAX_FILENAME_BYTES: usize = 255;
const SIGNATURE_PURPOSE: &str = "file-download";
const LIST: &str = "files";
/// Queued storage removals worked per cleanup run.
const PURGE_BATCH: usize = 500;

/// Where objects live: a directory, or an S3 bucket.
#[async_trait::async_trait]
pub trait ObjectStore: Send + Sync {
    /// `local` or `s3`, as files record it.
    fn provider(&self) -> &'static str;
    /// Writes the object from `body`. When `body` fails, nothing is left under `key`.
    async fn put(&self, key: &str, body: ByteStream) -> Result<()>;
    /// The object's bytes from `start`, `length` of them (to the end when `None`).
    async fn get(&self, key: &str, start: u64, length: Option<u64>) -> Result<ByteStream>;
    async fn delete(&self, key: &str) -> Result<()>;
    /// Moves an object to another key (within the store).
    async fn rename(&self, from: &str, to: &str) -> Result<()>;
    /// The object's size, or `None` when there is no such object.
    async fn size(&self, key: &str) -> Result<Option<u64>>;
    /// A URL at which the storage itself serves `key` for `expires_in` seconds from
    /// `issued_at`, presented as asked; `None` for a store that only Keel reads (Keel then
    /// signs a URL it serves).
    async fn presigned_url(
        &self,
        key: &str,
        issued_at: DateTime<Utc>,
        expires_in: u32,
        presentation: &Presentation<'_>,
    ) -> Result<Option<String>>;
    /// Starts an object written over several requests (a resumable upload), under `key` once
    /// finished; answers the storage's state of it, which the caller keeps between requests.
    async fn begin_staged(&self, key: &str) -> Result<String>;
    /// Appends `body` to a staged object holding `offset` bytes. What arrives before `body`
    /// fails is kept: the answer says how far the object got, and why it stopped early.
    async fn append_staged(
        &self,
        key: &str,
        state: &str,
        offset: u64,
        body: ByteStream,
    ) -> Result<Appended>;
    /// Makes the complete staged object the object at `key`.
    async fn finish_staged(&self, key: &str, state: &str) -> Result<()>;
    /// Removes a staged object and whatever it holds.
    async fn abort_staged(&self, key: &str, state: &str) -> Result<()>;
}

/// How far an append took a staged object.
pub struct Appended {
    /// The bytes the object holds now.
    pub offset: u64,
    /// The storage's state of it, for the next call.
    pub state: String,
    /// Why the body ended early, if it did.
    pub interrupted: Option<Error>,
}

/// How a download presents a file: its type, and shown in place or saved under its name.
pub struct Presentation<'a> {
    pub content_type: &'a str,
    pub filename: &'a str,
    pub inline: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    pub id: Uuid,
    pub organization_id: Option<Uuid>,
    pub uploaded_by: Uuid,
    pub filename: String,
    pub original_filename: String,
    pub content_type: String,
    pub size: i64,
    pub checksum: String,
    pub storage_provider: String,
    pub object_key: String,
    pub description: String,
    pub created_at: DateTime<Utc>,
}

/// An upload written over several requests, until it holds `length` bytes; its id is the
/// file's once complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingUpload {
    pub id: Uuid,
    pub uploaded_by: Uuid,
    pub header: UploadHeader,
    pub length: i64,
    pub received: i64,
    /// The object store's state of the staged object.
    pub storage_state: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Whose quota a file counts against, and up to how many bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageBudget {
    /// The organization, or the uploader for a personal file.
    pub owner_id: Uuid,
    pub limit: i64,
}

/// What a listing keeps.
#[derive(Debug, Clone, Default)]
pub struct FileFilter {
    pub organization_id: Option<Uuid>,
    /// The uploader, for personal files.
    pub uploaded_by: Option<Uuid>,
    /// A type (`image/png`) or a family (`image/`).
    pub content_type: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
}

#[async_trait::async_trait]
pub trait FileStore: Send + Sync {
    /// Records the file and adds its size to the budget's usage, in one transaction, unless
    /// that would pass the limit: then nothing is written and the answer is `false`.
    async fn insert_file(
        &self,
        file: &StoredFile,
        budget: StorageBudget,
        event: &Event,
    ) -> Result<bool>;
    /// A file not deleted.
    async fn find_file(&self, id: Uuid) -> Result<Option<StoredFile>>;
    /// Newest first, after `after` (by id, descending).
    async fn list_files(
        &self,
        filter: &FileFilter,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<StoredFile>>;
    /// Marks the file deleted and gives its bytes back to `owner_id`'s usage; `false` when it
    /// was deleted already.
    async fn delete_file(
        &self,
        file: &StoredFile,
        owner_id: Uuid,
        now: DateTime<Utc>,
        event: &Event,
    ) -> Result<bool>;
    async fn insert_upload(&self, upload: &PendingUpload) -> Result<()>;
    /// An unfinished upload, expired or not.
    async fn find_upload(&self, id: Uuid) -> Result<Option<PendingUpload>>;
    /// Takes the upload for one append while it holds `received` bytes and no other append
    /// holds it (or that one's lease ran out before `now`): `false` otherwise.
    async fn claim_upload(
        &self,
        id: Uuid,
        received: i64,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool>;
    /// Records where an append left the upload, and releases it.
    async fn record_append(&self, id: Uuid, received: i64, storage_state: &str) -> Result<()>;
    /// `false` when it was gone already.
    async fn delete_upload(&self, id: Uuid) -> Result<bool>;
    /// Deletes the uploads that expired before `now` (their storage is queued for removal):
    /// how many.
    async fn delete_expired_uploads(&self, now: DateTime<Utc>) -> Result<u64>;
    /// Deletes the rows of files deleted before `cutoff` (their storage is queued for
    /// removal): how many.
    async fn forget_deleted_files(&self, cutoff: DateTime<Utc>) -> Result<u64>;
    /// Storage removals queued as file and unfinished upload rows went, oldest first.
    async fn queued_purges(&self, limit: usize) -> Result<Vec<QueuedPurge>>;
    async fn finish_purge(&self, id: i64) -> Result<()>;
}

/// Storage whose row is gone, to remove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedPurge {
    pub id: i64,
    pub target: PurgeTarget,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PurgeTarget {
    /// A file's object (live or in the trash) and its thumbnails.
    File(Uuid),
    /// An unfinished upload's staged object.
    Upload { id: Uuid, storage_state: String },
}

/// What a client says about a file it uploads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadHeader {
    pub filename: String,
    pub organization_id: Option<Uuid>,
    pub description: String,
    pub declared_type: Option<String>,
    pub checksum: Option<String>,
}

#[derive(Debug, Clone)]
pub struct FileSettings {
    /// The largest file anyone may upload.
    pub max_file_bytes: i64,
    /// Bytes of personal files per user.
    pub max_user_storage_bytes: i64,
    /// Content types accepted, as detected.
    pub allowed_types: Vec<String>,
    /// Where signed download URLs point (`<public url>/api/v1/files/{id}/content`).
    pub public_url: String,
    pub images: ImageSettings,
    /// The thumbnails made on request, `WxH`.
    pub thumbnail_sizes: Vec<String>,
    /// How long a deleted file's bytes are kept before the cleanup job removes them.
    pub retention: chrono::Duration,
}

/// The file service's collaborators.
pub struct FilePorts {
    pub store: Arc<dyn FileStore>,
    pub objects: Arc<dyn ObjectStore>,
    pub access: Arc<AccessControl>,
    pub quotas: Arc<QuotaService>,
    pub pages: Arc<PageTokens>,
    pub keyring: Arc<dyn Keyring>,
    pub clock: Arc<dyn Clock>,
}

pub struct FileService {
    ports: FilePorts,
    settings: FileSettings,
    image_permits: tokio::sync::Semaphore,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FileData {
    pub file_id: Uuid,
    pub organization_id: Option<Uuid>,
    pub uploaded_by: Uuid,
    pub filename: String,
    pub original_filename: String,
    pub content_type: String,
    pub size: i64,
    pub checksum: String,
}

impl From<&StoredFile> for FileData {
    fn from(file: &StoredFile) -> Self {
        Self {
            file_id: file.id,
            organization_id: file.organization_id,
            uploaded_by: file.uploaded_by,
            filename: file.filename.clone(),
            original_filename: file.original_filename.clone(),
            content_type: file.content_type.clone(),
            size: file.size,
            checksum: file.checksum.clone(),
        }
    }
}

impl EventData for FileData {
    const SUBJECT: &'static str = "file";
    fn subject_id(&self) -> String {
        self.file_id.to_string()
    }
    fn organization_id(&self) -> Option<Uuid> {
        self.organization_id
    }
    fn user_id(&self) -> Option<Uuid> {
        Some(self.uploaded_by)
    }
}

/// What an upload may use: whose storage, the size limit (and whose it is), the event origin.
struct Admission {
    budget: StorageBudget,
    max_bytes: (i64, &'static str),
    origin: Origin,
}

/// An object written in full, before it is recorded as a file.
struct Written {
    id: Uuid,
    object_key: String,
    content_type: String,
    size: i64,
    /// Of the stored bytes.
    checksum: String,
    /// Of the bytes the client sent (not the same for a re-encoded image).
    received_checksum: String,
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Keel's own key for a file's object: never derived from what the client sends.
fn object_key(id: Uuid) -> String {
    format!("objects/{}", id.simple())
}

fn empty_file() -> Error {
    Error::invalid_argument("EMPTY_FILE", "the file is empty")
}

/// A signed download link as the content route receives it back.
#[derive(Debug, Clone)]
pub struct SignedDownload {
    pub file_id: Uuid,
    pub expires: i64,
    pub inline: bool,
    /// A thumbnail's box, `WxH`.
    pub thumb: Option<String>,
    pub signature: String,
}

/// A file's bytes on their way out: the file's own, or one of its thumbnails.
pub struct Download {
    pub file: StoredFile,
    pub inline: bool,
    pub object_key: String,
    pub size: u64,
    /// Names these bytes: the file's SHA-256, with the thumbnail's box.
    pub etag: String,
}

impl Download {
    fn whole(file: StoredFile, inline: bool) -> Self {
        Self {
            object_key: file.object_key.clone(),
            size: u64::try_from(file.size).unwrap_or(0),
            etag: file.checksum.clone(),
            file,
            inline,
        }
    }
}

/// Where a deleted file's object waits out the retention period: away from its key, so that a
/// presigned URL issued before the deletion no longer reaches it.
fn trash_key(id: Uuid) -> String {
    format!("trash/{}", id.simple())
}

/// Where a file's thumbnail of `thumb` (`WxH`) is kept.
fn thumbnail_key(id: Uuid, thumb: &str) -> String {
    format!("thumbs/{}/{thumb}", id.simple())
}

fn too_large(limit: i64, whose: &str) -> Error {
    Error::new(
        ErrorKind::ResourceExhausted,
        "FILE_TOO_LARGE",
        format!("files are limited to {limit} bytes {whose}"),
    )
}

fn unsupported(message: String) -> Error {
    Error::invalid_argument("UNSUPPORTED_FILE_TYPE", message)
}

/// Whether the caller may reach their own personal files with `permission`: a user always; an
/// API key only when unbound to an organization (a bound key acts there only) and scoped with
/// the permission, as for an organization's files.
fn personal_access(principal: &Principal, permission: &str) -> Result<()> {
    match &principal.credential {
        Credential::Session(_) => Ok(()),
        Credential::ApiKey {
            organization_id: None,
            scopes,
            ..
        } if scopes.iter().any(|scope| scope == permission) => Ok(()),
        Credential::ApiKey { .. } => Err(Error::permission_denied(
            "PERMISSION_DENIED",
            format!(
                "this API key may not reach personal files: it needs the {permission} scope \
                 and no organization of its own"
            ),
        )),
    }
}

/// Types a browser shows without running them as a page.
fn displayable(content_type: &str) -> bool {
    content_type.starts_with("image/")
        || content_type == "application/pdf"
        || content_type == "text/plain"
}

/// The client's filename without directories, control characters or surrounding dots and
/// spaces, at most 255 bytes; `file` when nothing is left.
pub fn sanitize_filename(raw: &str) -> String {
    let base = raw.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = base.chars().filter(|c| !c.is_control()).collect();
    let trimmed = cleaned.trim_matches(|c: char| c == '.' || c.is_whitespace());
    let mut name = String::new();
    for c in trimmed.chars() {
        if name.len() + c.len_utf8() > MAX_FILENAME_BYTES {
            break;
        }
        name.push(c);
    }
    if name.is_empty() {
        "file".to_owned()
    } else {
        name
    }
}

/// The file's type as its bytes tell: by magic number, else text (by extension) when the
/// prefix is UTF-8 without NUL bytes. `None` for bytes of no known kind.
pub fn detect_type(prefix: &[u8], complete: bool, filename: &str) -> Option<String> {
    if let Some(kind) = infer::get(prefix) {
        return Some(kind.mime_type().to_owned());
    }
    let text = match std::str::from_utf8(prefix) {
        Ok(text) => Some(text),
        // A character cut at the end of a partial prefix is still text.
        Err(error) if !complete && error.error_len().is_none() => {
            std::str::from_utf8(&prefix[..error.valid_up_to()]).ok()
        }
        Err(_) => None,
    }?;
    if text.contains('\0') {
        return None;
    }
    let extension = filename
        .rsplit_once('.')
        .map(|(_, extension)| extension.to_ascii_lowercase())
        .unwrap_or_default();
    Some(
        match extension.as_str() {
            "csv" => "text/csv",
            "json" => "application/json",
            "md" | "markdown" => "text/markdown",
            _ => "text/plain",
        }
        .to_owned(),
    )
}

fn extension_of(content_type: &str) -> &'static str {
    match content_type {
        "image/jpeg" => ".jpg",
        "image/png" => ".png",
        "image/gif" => ".gif",
        "image/webp" => ".webp",
        "application/pdf" => ".pdf",
        "text/plain" => ".txt",
        "text/csv" => ".csv",
        "text/markdown" => ".md",
        "application/json" => ".json",
        "application/msword" => ".doc",
        "application/vnd.ms-excel" => ".xls",
        "application/vnd.ms-powerpoint" => ".ppt",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document" => ".docx",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet" => ".xlsx",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation" => ".pptx",
        _ => "",
    }
}

/// The default allow-list: images, PDF, Office documents, text, CSV, JSON and Markdown.
pub const DEFAULT_ALLOWED_TYPES: &str = "image/jpeg,image/png,image/gif,image/webp,application/pdf,\
application/msword,application/vnd.ms-excel,application/vnd.ms-powerpoint,\
application/vnd.openxmlformats-officedocument.wordprocessingml.document,\
application/vnd.openxmlformats-officedocument.spreadsheetml.sheet,\
application/vnd.openxmlformats-officedocument.presentationml.presentation,\
text/plain,text/csv,application/json,text/markdown";

/// A declared type, without parameters, lowercase; `None` when it says nothing.
fn declared(content_type: Option<&str>) -> Option<String> {
    let essence = content_type?
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    (!essence.is_empty() && essence != "application/octet-stream").then_some(essence)
}

fn is_text(content_type: &str) -> bool {
    content_type.starts_with("text/") || content_type == "application/json"
}

impl FileService {
    pub fn new(ports: FilePorts, settings: FileSettings) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            ports,
            settings,
            image_permits: tokio::sync::Semaphore::new(cores),
        }
    }

    /// Runs image work on a blocking thread, as many at once as there are cores (each may hold
    /// a decoded image in memory).
    async fn with_image_permit(
        &self,
        content_type: &str,
        work: impl FnOnce(&str, ImageSettings) -> Result<Vec<u8>> + Send + 'static,
    ) -> Result<Vec<u8>> {
        let _permit = (self.image_permits.acquire().await)
            .map_err(|_| Error::internal("the image permits are closed"))?;
        let (content_type, settings) = (content_type.to_owned(), self.settings.images);
        tokio::task::spawn_blocking(move || work(&content_type, settings))
            .await
            .map_err(|error| Error::internal(format!("image work: {error}")))?
    }

    /// Re-encodes an uploaded image and stores it under `key`: its size and SHA-256.
    async fn store_reencoded(
        &self,
        key: &str,
        original: Vec<u8>,
        content_type: &str,
    ) -> Result<(i64, String)> {
        let stored = self
            .with_image_permit(content_type, move |content_type, settings| {
                images::reencode(&original, content_type, settings)
            })
            .await?;
        let (size, checksum) = (stored.len() as i64, sha256_hex(&stored));
        let body = futures_util::stream::once(async move { Ok(Bytes::from(stored)) }).boxed();
        self.ports.objects.put(key, body).await?;
        Ok((size, checksum))
    }

    pub fn provider(&self) -> &'static str {
        self.ports.objects.provider()
    }

    /// Uploads a file from `body`: sniffs its type before anything is written, then streams
    /// it to storage while hashing it and counting it against the limits.
    pub async fn upload(
        &self,
        principal: &Principal,
        header: UploadHeader,
        body: ByteStream,
    ) -> Result<StoredFile> {
        let admission = self
            .admit_upload(principal, header.organization_id, true)
            .await?;
        let (prefix, complete, rest) = read_prefix(body).await?;
        if prefix.is_empty() {
            return Err(empty_file());
        }
        let content_type = self.checked_type(
            &prefix,
            complete,
            &sanitize_filename(&header.filename),
            &header,
        )?;

        let id = Uuid::now_v7();
        let object_key = object_key(id);
        let room = self.room(admission.budget).await?;
        let (max_bytes, limit) = (admission.max_bytes, admission.budget.limit);
        let progress = Arc::new(std::sync::Mutex::new(Progress::default()));
        let counted = {
            let progress = progress.clone();
            futures_util::stream::once(async move { Ok(prefix) })
                .chain(rest)
                .map(move |chunk| {
                    let chunk = chunk?;
                    let mut progress = progress.lock().unwrap_or_else(|p| p.into_inner());
                    progress.size += chunk.len() as i64;
                    progress.hasher.update(&chunk);
                    if progress.size > max_bytes.0 {
                        return Err(too_large(max_bytes.0, max_bytes.1));
                    }
                    if progress.size > room {
                        return Err(storage_full(limit));
                    }
                    Ok(chunk)
                })
                .boxed()
        };
        let received = || {
            let progress = progress.lock().unwrap_or_else(|p| p.into_inner());
            format!("{:x}", progress.hasher.clone().finalize())
        };
        let (size, checksum, received_checksum) = if images::reencoded(&content_type) {
            let mut original = Vec::new();
            let mut counted = counted;
            while let Some(chunk) = counted.next().await {
                original.extend_from_slice(&chunk?);
            }
            let (size, checksum) =
                (self.store_reencoded(&object_key, original, &content_type)).await?;
            (size, checksum, received())
        } else {
            self.ports.objects.put(&object_key, counted).await?;
            let size = progress.lock().unwrap_or_else(|p| p.into_inner()).size;
            (size, received(), received())
        };
        let written = Written {
            id,
            object_key,
            content_type,
            size,
            checksum,
            received_checksum,
        };
        self.record(principal, &header, &admission, written).await
    }

    /// Checks the caller may upload to `organization_id` (their own files when `None`), counts
    /// the upload against the day's when `count`, and answers the budget and limits it meets.
    async fn admit_upload(
        &self,
        principal: &Principal,
        organization_id: Option<Uuid>,
        count: bool,
    ) -> Result<Admission> {
        let instance = self.settings.max_file_bytes;
        let Some(organization_id) = organization_id else {
            personal_access(principal, "file:create")?;
            return Ok(Admission {
                budget: StorageBudget {
                    owner_id: principal.user.id,
                    limit: self.settings.max_user_storage_bytes,
                },
                max_bytes: (instance, "on this server"),
                origin: Origin::from(principal),
            });
        };
        let access = self
            .ports
            .access
            .authorize(
                principal.clone(),
                Scope::Organization(organization_id),
                "file:create",
            )
            .await?;
        let limits = self.ports.quotas.limits(organization_id).await?;
        if count {
            self.ports.quotas.count_upload(&access).await?;
        }
        Ok(Admission {
            budget: StorageBudget {
                owner_id: organization_id,
                limit: limits.max_storage_bytes,
            },
            max_bytes: if limits.max_file_size_bytes < instance {
                (limits.max_file_size_bytes, "in this organization")
            } else {
                (instance, "on this server")
            },
            origin: access.origin(),
        })
    }

    /// The room left in `budget`, in bytes.
    async fn room(&self, budget: StorageBudget) -> Result<i64> {
        let used = self.ports.quotas.storage_used(budget.owner_id).await?;
        Ok(budget.limit.saturating_sub(used))
    }

    /// Records an object written under `object_key` as file `id`, once its checksum is the
    /// one the client expects and its size fits the budget; otherwise removes the object.
    async fn record(
        &self,
        principal: &Principal,
        header: &UploadHeader,
        admission: &Admission,
        written: Written,
    ) -> Result<StoredFile> {
        let file = StoredFile {
            id: written.id,
            organization_id: header.organization_id,
            uploaded_by: principal.user.id,
            filename: format!(
                "{}{}",
                written.id.simple(),
                extension_of(&written.content_type)
            ),
            original_filename: sanitize_filename(&header.filename),
            content_type: written.content_type.clone(),
            size: written.size,
            checksum: written.checksum.clone(),
            storage_provider: self.provider().to_owned(),
            object_key: written.object_key.clone(),
            description: header.description.clone(),
            created_at: truncate_to_micros(self.ports.clock.now()),
        };
        let refusal = if header
            .checksum
            .as_deref()
            .is_some_and(|expected| expected != written.received_checksum)
        {
            Some(Error::invalid_argument(
                "CHECKSUM_MISMATCH",
                format!(
                    "the file's SHA-256 is {}, not the checksum sent; nothing was stored",
                    written.received_checksum
                ),
            ))
        } else {
            let event = self.event(EventKind::FileUploaded, &admission.origin, &file);
            match (self.ports.store)
                .insert_file(&file, admission.budget, &event)
                .await
            {
                Ok(true) => None,
                Ok(false) => Some(storage_full(admission.budget.limit)),
                Err(error) => Some(error),
            }
        };
        match refusal {
            None => Ok(file),
            Some(error) => {
                self.discard(&file.object_key).await;
                Err(error)
            }
        }
    }

    /// The detected type, refused when not allowed or not what the client declared.
    fn checked_type(
        &self,
        prefix: &[u8],
        complete: bool,
        filename: &str,
        header: &UploadHeader,
    ) -> Result<String> {
        let declared = declared(header.declared_type.as_deref());
        let detected = detect_type(prefix, complete, filename).ok_or_else(|| {
            unsupported("the file's type could not be recognised from its contents".to_owned())
        })?;
        // Text has no magic number: a declared text type stands for it.
        let detected = match declared {
            Some(ref declared) if is_text(&detected) && is_text(declared) => declared.clone(),
            _ => detected,
        };
        if let Some(declared) = declared
            && declared != detected
        {
            return Err(unsupported(format!(
                "the file was declared {declared} but its contents are {detected}"
            )));
        }
        if !self.settings.allowed_types.contains(&detected) {
            return Err(unsupported(format!(
                "files of type {detected} are not accepted here"
            )));
        }
        Ok(detected)
    }

    async fn discard(&self, key: &str) {
        if let Err(error) = self.ports.objects.delete(key).await {
            tracing::warn!(%error, key, "removing a refused upload's object failed");
        }
    }

    fn event(&self, kind: EventKind, origin: &Origin, file: &StoredFile) -> Event {
        Event::new(
            kind,
            origin,
            self.ports.clock.as_ref(),
            &FileData::from(file),
        )
    }

    /// A file the caller may see, or NOT_FOUND, for which they hold `permission` (in its
    /// organization), or PERMISSION_DENIED; with its event origin.
    async fn visible(
        &self,
        principal: &Principal,
        id: Uuid,
        permission: &str,
    ) -> Result<(StoredFile, Origin)> {
        let file = self.ports.store.find_file(id).await?.ok_or(Missing::File)?;
        match file.organization_id {
            None if file.uploaded_by == principal.user.id => {
                personal_access(principal, permission)?;
                Ok((file, Origin::from(principal)))
            }
            None => Err(Missing::File.into()),
            Some(organization_id) => {
                let access = self
                    .ports
                    .access
                    .authorize(
                        principal.clone(),
                        Scope::Organization(organization_id),
                        "file:read",
                    )
                    .await
                    .map_err(|error| match error.kind {
                        ErrorKind::NotFound | ErrorKind::PermissionDenied => Missing::File.into(),
                        _ => error,
                    })?;
                if !access.permissions.contains(permission) {
                    return Err(Error::permission_denied(
                        "PERMISSION_DENIED",
                        format!("this call needs the {permission} permission here"),
                    ));
                }
                Ok((file, access.origin()))
            }
        }
    }

    pub async fn get(&self, principal: &Principal, id: Uuid) -> Result<StoredFile> {
        Ok(self.visible(principal, id, "file:read").await?.0)
    }

    pub async fn list(
        &self,
        principal: &Principal,
        mut filter: FileFilter,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<StoredFile>> {
        match filter.organization_id {
            Some(organization_id) => {
                self.ports
                    .access
                    .authorize(
                        principal.clone(),
                        Scope::Organization(organization_id),
                        "file:read",
                    )
                    .await?;
            }
            None => {
                personal_access(principal, "file:read")?;
                filter.uploaded_by = Some(principal.user.id);
            }
        }
        let request = self.ports.pages.request(LIST, page_size, page_token)?;
        let rows = self
            .ports
            .store
            .list_files(&filter, request.after, request.fetch_limit())
            .await?;
        Ok(self.ports.pages.page(LIST, request, rows, |file| file.id))
    }

    /// Deletes a file: no longer listed or served, its bytes released from the quota at once
    /// and from storage.
    pub async fn delete(&self, principal: &Principal, id: Uuid) -> Result<()> {
        let (file, origin) = self.visible(principal, id, "file:delete").await?;
        let owner_id = file.organization_id.unwrap_or(file.uploaded_by);
        let now = truncate_to_micros(self.ports.clock.now());
        let event = self.event(EventKind::FileDeleted, &origin, &file);
        if !self
            .ports
            .store
            .delete_file(&file, owner_id, now, &event)
            .await?
        {
            return Err(Missing::File.into());
        }
        let moved = (self.ports.objects)
            .rename(&file.object_key, &trash_key(file.id))
            .await;
        if let Err(error) = moved {
            tracing::warn!(%error, key = file.object_key, "moving a deleted file's object failed");
        }
        self.discard_thumbnails(file.id).await;
        Ok(())
    }

    async fn discard_thumbnails(&self, id: Uuid) {
        for thumb in &self.settings.thumbnail_sizes {
            self.discard(&thumbnail_key(id, thumb)).await;
        }
    }

    /// Forgets files deleted longer ago than the retention period, then removes the storage
    /// of every file and unfinished upload whose row is gone; answers how many it removed.
    /// What fails to go stays queued for the next run.
    pub async fn purge(&self) -> Result<usize> {
        let cutoff = self.ports.clock.now() - self.settings.retention;
        self.ports.store.forget_deleted_files(cutoff).await?;
        let mut purged = 0;
        for purge in self.ports.store.queued_purges(PURGE_BATCH).await? {
            let removed = match &purge.target {
                PurgeTarget::File(id) => {
                    self.discard_thumbnails(*id).await;
                    let live = self.ports.objects.delete(&object_key(*id)).await;
                    live.and(self.ports.objects.delete(&trash_key(*id)).await)
                }
                PurgeTarget::Upload { id, storage_state } => {
                    (self.ports.objects)
                        .abort_staged(&object_key(*id), storage_state)
                        .await
                }
            };
            match removed {
                Ok(()) => {
                    self.ports.store.finish_purge(purge.id).await?;
                    purged += 1;
                }
                Err(error) => tracing::warn!(%error, ?purge, "removing storage failed"),
            }
        }
        Ok(purged)
    }

    fn signature(&self, file_id: Uuid, expires: i64, inline: bool, thumb: Option<&str>) -> String {
        let mut data = format!("{file_id}:{expires}:{}", u8::from(inline));
        if let Some(thumb) = thumb {
            data.push(':');
            data.push_str(thumb);
        }
        let mac = self.ports.keyring.mac(SIGNATURE_PURPOSE, data.as_bytes());
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, mac)
    }

    /// A URL serving the file, or its thumbnail `thumb` (`WxH`) when not empty, for
    /// `expires_in` seconds (60 to 86400; 3600 for 0): the storage's presigned URL, or one
    /// Keel signs and serves.
    pub async fn download_url(
        &self,
        principal: &Principal,
        id: Uuid,
        expires_in: i32,
        inline: bool,
        thumb: &str,
    ) -> Result<(String, i32)> {
        let expires_in = match expires_in {
            0 => 3600,
            60..=86_400 => expires_in,
            _ => {
                return Err(Error::invalid_fields(vec![FieldViolation::new(
                    "expires_in",
                    "EXPIRES_IN_RANGE",
                    "must be between 60 and 86400 seconds (or 0 for an hour)",
                )]));
            }
        };
        let thumb = (!thumb.is_empty()).then_some(thumb);
        if let Some(thumb) = thumb
            && !self
                .settings
                .thumbnail_sizes
                .iter()
                .any(|size| size == thumb)
        {
            return Err(Error::invalid_fields(vec![FieldViolation::new(
                "thumb",
                "THUMBNAIL_SIZE",
                format!(
                    "thumbnails come in {}",
                    self.settings.thumbnail_sizes.join(", ")
                ),
            )]));
        }
        let file = self.get(principal, id).await?;
        let inline = inline && displayable(&file.content_type);
        let key = match thumb {
            Some(thumb) => self.thumbnail(&file, thumb).await?.0,
            None => file.object_key.clone(),
        };
        let presentation = Presentation {
            content_type: &file.content_type,
            filename: &file.original_filename,
            inline,
        };
        let now = self.ports.clock.now();
        let presigned = (self.ports.objects)
            .presigned_url(&key, now, expires_in.unsigned_abs(), &presentation)
            .await?;
        let url = match presigned {
            Some(url) => url,
            None => {
                let expires = now.timestamp() + i64::from(expires_in);
                format!(
                    "{}/api/v1/files/{}/content?expires={expires}&disposition={}{}&signature={}",
                    self.settings.public_url.trim_end_matches('/'),
                    file.id,
                    if inline { "inline" } else { "attachment" },
                    thumb
                        .map(|thumb| format!("&thumb={thumb}"))
                        .unwrap_or_default(),
                    self.signature(file.id, expires, inline, thumb),
                )
            }
        };
        Ok((url, expires_in))
    }

    /// An image's thumbnail of `thumb` (`WxH`, a configured size), made and kept on first
    /// request: its key and size.
    async fn thumbnail(&self, file: &StoredFile, thumb: &str) -> Result<(String, u64)> {
        if !images::reencoded(&file.content_type) {
            return Err(Error::invalid_argument(
                "NOT_AN_IMAGE",
                "thumbnails are made of JPEG, PNG and WebP images",
            ));
        }
        let key = thumbnail_key(file.id, thumb);
        if let Some(size) = self.ports.objects.size(&key).await? {
            return Ok((key, size));
        }
        let (width, height) = thumb
            .split_once('x')
            .and_then(|(width, height)| Some((width.parse().ok()?, height.parse().ok()?)))
            .ok_or_else(|| Error::internal(format!("thumbnail size {thumb:?}")))?;
        let mut original = Vec::new();
        let mut bytes = self.ports.objects.get(&file.object_key, 0, None).await?;
        while let Some(chunk) = bytes.next().await {
            original.extend_from_slice(&chunk?);
        }
        let made = self
            .with_image_permit(&file.content_type, move |content_type, settings| {
                images::thumbnail(&original, content_type, (width, height), settings)
            })
            .await?;
        let size = made.len() as u64;
        let body = futures_util::stream::once(async move { Ok(Bytes::from(made)) }).boxed();
        self.ports.objects.put(&key, body).await?;
        Ok((key, size))
    }

    /// What a signed URL names, while it is valid and the file exists; 403 otherwise.
    pub async fn signed_download(&self, link: &SignedDownload) -> Result<Download> {
        let refused =
            |message: &str| Error::permission_denied("INVALID_DOWNLOAD_URL", message.to_owned());
        let thumb = link.thumb.as_deref();
        let expected = self.signature(link.file_id, link.expires, link.inline, thumb);
        if !bool::from(expected.as_bytes().ct_eq(link.signature.as_bytes())) {
            return Err(refused("this download URL is not valid"));
        }
        if self.ports.clock.now().timestamp() >= link.expires {
            return Err(refused("this download URL has expired; ask for a new one"));
        }
        let file = self
            .ports
            .store
            .find_file(link.file_id)
            .await?
            .ok_or_else(|| refused("this file no longer exists"))?;
        let Some(thumb) = thumb else {
            return Ok(Download::whole(file, link.inline));
        };
        let object_key = thumbnail_key(file.id, thumb);
        let size = (self.ports.objects.size(&object_key).await?)
            .ok_or_else(|| refused("this thumbnail no longer exists"))?;
        Ok(Download {
            etag: format!("{}-{thumb}", file.checksum),
            file,
            inline: link.inline,
            object_key,
            size,
        })
    }

    /// A file the caller may read, for streaming.
    pub async fn download(&self, principal: &Principal, id: Uuid) -> Result<Download> {
        Ok(Download::whole(self.get(principal, id).await?, false))
    }

    /// The bytes of a file being downloaded, from `start`, `length` of them.
    pub async fn bytes(
        &self,
        download: &Download,
        start: u64,
        length: Option<u64>,
    ) -> Result<ByteStream> {
        self.ports
            .objects
            .get(&download.object_key, start, length)
            .await
    }
}

fn storage_full(limit: i64) -> Error {
    quota_exceeded(format!(
        "this file would take storage past the limit of {limit} bytes"
    ))
}

#[derive(Default)]
struct Progress {
    size: i64,
    hasher: Sha256,
}

/// Reads up to `SNIFF_BYTES` from the front of `body`: the prefix, whether it is the whole
/// body, and the rest.
async fn read_prefix(mut body: ByteStream) -> Result<(Bytes, bool, ByteStream)> {
    let mut prefix = BytesMut::new();
    while prefix.len() < SNIFF_BYTES {
        match body.next().await {
            Some(chunk) => prefix.extend_from_slice(&chunk?),
            None => return Ok((prefix.freeze(), true, futures_util::stream::empty().boxed())),
        }
    }
    Ok((prefix.freeze(), false, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_lose_directories_control_characters_and_excess() {
        assert_eq!(sanitize_filename("../../etc/passwd"), "passwd");
        assert_eq!(sanitize_filename("C:\\Users\\me\\report.pdf"), "report.pdf");
        assert_eq!(sanitize_filename("a\u{0}b\nc.txt"), "abc.txt");
        assert_eq!(sanitize_filename(" .. "), "file");
        let long = "é".repeat(300);
        let kept = sanitize_filename(&long);
        assert!(kept.len() <= MAX_FILENAME_BYTES && kept.chars().all(|c| c == 'é'));
    }

    #[test]
    fn types_come_from_the_bytes() {
        let png = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13];
        assert_eq!(
            detect_type(&png, true, "x.jpg").as_deref(),
            Some("image/png")
        );
        assert_eq!(
            detect_type(b"a,b\n1,2\n", true, "data.CSV").as_deref(),
            Some("text/csv")
        );
        assert_eq!(
            detect_type(b"hello", true, "notes").as_deref(),
            Some("text/plain")
        );
        assert_eq!(detect_type(b"\x00\x01\x02binary", true, "x.txt"), None);
        // A prefix may end inside a character.
        let cut = "é".as_bytes();
        assert_eq!(
            detect_type(&cut[..1], false, "a.md").as_deref(),
            Some("text/markdown")
        );
    }
}
