//! Resumable uploads (the tus protocol is their door): a file written over several requests,
//! each continuing where the last stopped, then checked, hashed and recorded like any upload.
//!
//! Only the uploader sees an upload. One append at a time writes to it (a lease in the store);
//! an upload left unfinished for `UPLOAD_LIFETIME` is ended by the cleanup job. The bytes of an
//! upload that ends unfinished (cancelled, expired, or its owner deleted) are queued for
//! removal by the database as the row goes (`FileService::purge` removes them).

use super::{
    ByteStream, FileService, PendingUpload, SNIFF_BYTES, StoredFile, Written, empty_file, images,
    object_key, storage_full, too_large,
};
use crate::domain::clock::truncate_to_micros;
use crate::domain::error::{Error, ErrorKind, Missing, Result};
use crate::domain::principal::Principal;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// How long an upload may stay unfinished.
pub const UPLOAD_LIFETIME: chrono::TimeDelta = chrono::TimeDelta::hours(24);
/// How long one append may hold an upload before another may take over (a crashed one).
const APPEND_LEASE: chrono::TimeDelta = chrono::TimeDelta::minutes(15);

/// Where an append left its upload.
pub enum UploadProgress {
    /// More bytes are expected.
    Partial(PendingUpload),
    /// The last of its `length` bytes arrived: the upload is now this file (whose size differs
    /// when it is an image, re-encoded).
    Complete { length: i64, file: StoredFile },
}

impl FileService {
    /// Starts an upload of `length` bytes, checked against the limits and quotas now (and the
    /// storage quota again when it completes).
    pub async fn create_upload(
        &self,
        principal: &Principal,
        header: super::UploadHeader,
        length: i64,
    ) -> Result<PendingUpload> {
        if length <= 0 {
            return Err(empty_file());
        }
        let admission = self
            .admit_upload(principal, header.organization_id, true)
            .await?;
        let (max, whose) = admission.max_bytes;
        if length > max {
            return Err(too_large(max, whose));
        }
        if length > self.room(admission.budget).await? {
            return Err(storage_full(admission.budget.limit));
        }
        let id = Uuid::now_v7();
        let key = object_key(id);
        let storage_state = self.ports.objects.begin_staged(&key).await?;
        let now = truncate_to_micros(self.ports.clock.now());
        let upload = PendingUpload {
            id,
            uploaded_by: principal.user.id,
            header,
            length,
            received: 0,
            storage_state,
            created_at: now,
            expires_at: now + UPLOAD_LIFETIME,
        };
        if let Err(error) = self.ports.store.insert_upload(&upload).await {
            // No row, so nothing queued its removal.
            let aborted = (self.ports.objects)
                .abort_staged(&key, &upload.storage_state)
                .await;
            if let Err(error) = aborted {
                tracing::warn!(%error, key, "removing a refused upload's bytes failed");
            }
            return Err(error);
        }
        Ok(upload)
    }

    /// The caller's unfinished upload, while they may still upload there.
    pub async fn upload_status(&self, principal: &Principal, id: Uuid) -> Result<PendingUpload> {
        let upload = self.ports.store.find_upload(id).await?;
        let upload = upload
            .filter(|upload| {
                upload.uploaded_by == principal.user.id
                    && upload.expires_at > self.ports.clock.now()
            })
            .ok_or(Missing::Upload)?;
        self.admit_upload(principal, upload.header.organization_id, false)
            .await
            .map_err(|error| match error.kind {
                ErrorKind::NotFound | ErrorKind::PermissionDenied => Missing::Upload.into(),
                _ => error,
            })?;
        Ok(upload)
    }

    /// Appends `body` at `offset`, which must be where the upload stands; bytes that arrive
    /// before the body breaks off are kept, so the client continues from the new offset.
    pub async fn append_upload(
        &self,
        principal: &Principal,
        id: Uuid,
        offset: i64,
        body: ByteStream,
    ) -> Result<UploadProgress> {
        let mut upload = self.upload_status(principal, id).await?;
        if offset != upload.received {
            return Err(Error::new(
                ErrorKind::FailedPrecondition,
                "UPLOAD_OFFSET_MISMATCH",
                format!(
                    "the upload holds {} bytes; continue from there",
                    upload.received
                ),
            ));
        }
        let now = self.ports.clock.now();
        if !(self.ports.store)
            .claim_upload(id, offset, now, now + APPEND_LEASE)
            .await?
        {
            return Err(Error::new(
                ErrorKind::FailedPrecondition,
                "UPLOAD_BUSY",
                "another request is writing to this upload",
            ));
        }
        let room = upload.length - offset;
        let mut arriving = 0_i64;
        let length = upload.length;
        let bounded = body
            .map(move |chunk| {
                let chunk = chunk?;
                arriving += chunk.len() as i64;
                if arriving > room {
                    return Err(Error::invalid_argument(
                        "UPLOAD_TOO_LONG",
                        format!("the upload was declared {length} bytes long"),
                    ));
                }
                Ok(chunk)
            })
            .boxed();
        let key = object_key(id);
        let appended = self
            .ports
            .objects
            .append_staged(&key, &upload.storage_state, offset as u64, bounded)
            .await;
        let appended = match appended {
            Ok(appended) => appended,
            Err(error) => {
                let (received, state) = (upload.received, &upload.storage_state);
                self.ports.store.record_append(id, received, state).await?;
                return Err(error);
            }
        };
        upload.received = appended.offset as i64;
        upload.storage_state = appended.state;
        (self.ports.store)
            .record_append(id, upload.received, &upload.storage_state)
            .await?;
        if let Some(interruption) = appended.interrupted {
            return Err(interruption);
        }
        if upload.received < upload.length {
            return Ok(UploadProgress::Partial(upload));
        }
        (self.ports.objects)
            .finish_staged(&key, &upload.storage_state)
            .await?;
        let recorded = self.complete(principal, &upload).await;
        self.ports.store.delete_upload(id).await?;
        let length = upload.length;
        recorded.map(|file| UploadProgress::Complete { length, file })
    }

    /// Checks and records a finished upload's object as a file (or removes it).
    async fn complete(&self, principal: &Principal, upload: &PendingUpload) -> Result<StoredFile> {
        let key = object_key(upload.id);
        let checked = async {
            let admission = self
                .admit_upload(principal, upload.header.organization_id, false)
                .await?;
            let mut prefix = Vec::new();
            let mut head = (self.ports.objects)
                .get(&key, 0, Some(SNIFF_BYTES as u64))
                .await?;
            while let Some(chunk) = head.next().await {
                prefix.extend_from_slice(&chunk?);
            }
            let complete = upload.length <= SNIFF_BYTES as i64;
            let filename = super::sanitize_filename(&upload.header.filename);
            let content_type = self.checked_type(&prefix, complete, &filename, &upload.header)?;
            // Read back once: hashed, and kept whole when it is an image to re-encode.
            let mut hasher = Sha256::new();
            let mut whole = images::reencoded(&content_type).then(Vec::new);
            let mut bytes = self.ports.objects.get(&key, 0, None).await?;
            while let Some(chunk) = bytes.next().await {
                let chunk = chunk?;
                hasher.update(&chunk);
                if let Some(whole) = whole.as_mut() {
                    whole.extend_from_slice(&chunk);
                }
            }
            let received_checksum = format!("{:x}", hasher.finalize());
            let (size, checksum) = match whole {
                Some(original) => (self.store_reencoded(&key, original, &content_type)).await?,
                None => (upload.length, received_checksum.clone()),
            };
            let written = Written {
                id: upload.id,
                object_key: key.clone(),
                content_type,
                size,
                checksum,
                received_checksum,
            };
            Ok((admission, written))
        }
        .await;
        let (admission, written) = match checked {
            Ok(checked) => checked,
            Err(error) => {
                self.discard(&key).await;
                return Err(error);
            }
        };
        self.record(principal, &upload.header, &admission, written)
            .await
    }

    /// Ends an unfinished upload; its bytes go with the next cleanup (queued with the row).
    pub async fn cancel_upload(&self, principal: &Principal, id: Uuid) -> Result<()> {
        self.upload_status(principal, id).await?;
        if !self.ports.store.delete_upload(id).await? {
            return Err(Missing::Upload.into());
        }
        Ok(())
    }

    /// Ends the uploads left unfinished past their expiry (their bytes are queued for
    /// removal); answers how many.
    pub async fn expire_uploads(&self) -> Result<u64> {
        (self.ports.store)
            .delete_expired_uploads(self.ports.clock.now())
            .await
    }
}
