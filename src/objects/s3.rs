//! Objects in an S3 bucket (AWS, MinIO, Ceph, R2…), through the `minio` crate. Uploads stream
//! as multipart uploads of `PART_BYTES` parts (one part in memory at a time); downloads are
//! presigned URLs the storage serves itself.

use super::content_disposition;
use crate::domain::error::{Error, Result};
use crate::domain::files::{Appended, ByteStream, ObjectStore, Presentation};
use crate::domain::health::HealthProbe;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures_util::{StreamExt, TryStreamExt};
use minio::s3::builders::CopySource;
use minio::s3::creds::StaticProvider;
use minio::s3::error::S3ServerError;
use minio::s3::http::BaseUrl;
use minio::s3::multimap_ext::Multimap;
use minio::s3::response_traits::HasEtagFromHeaders;
use minio::s3::segmented_bytes::SegmentedBytes;
use minio::s3::types::{BucketName, ETag, ObjectKey, PartInfo, Region, S3Api};
use minio::s3::{MinioClient, MinioClientBuilder};
use serde::{Deserialize, Serialize};

/// The part size of streamed uploads: S3's smallest, since an upload holds a part (and the
/// client library's copies of it) in memory; objects are then limited to 10,000 parts, 50 GiB.
const PART_BYTES: u64 = 5 * 1024 * 1024;

/// A staged object: an S3 multipart upload of `PART_BYTES` parts, and the bytes short of a
/// part kept in a `<key>.tail` object until more arrive (S3 needs 5 MiB parts but the last).
#[derive(Debug, Default, Serialize, Deserialize)]
struct Staged {
    upload_id: String,
    parts: Vec<StagedPart>,
    tail: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct StagedPart {
    number: u16,
    etag: String,
    size: u64,
}

impl Staged {
    fn parse(state: &str) -> Result<Self> {
        serde_json::from_str(state).map_err(storage_error)
    }

    fn encode(&self) -> Result<String> {
        serde_json::to_string(self).map_err(storage_error)
    }
}

/// Whether S3 answered with the error `code` (`NoSuchKey`…): what was asked for is not there.
fn is_missing(error: &minio::s3::error::Error, code: &str) -> bool {
    matches!(error, minio::s3::error::Error::S3Server(S3ServerError::S3Error(response))
        if response.code().to_string() == code)
}

fn tail_key(key: &str) -> String {
    format!("{key}.tail")
}

/// `KEEL_S3_*`.
#[derive(Debug, Clone)]
pub struct S3Settings {
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
}

pub struct S3Objects {
    client: MinioClient,
    bucket: String,
}

fn storage_error(error: impl std::fmt::Display) -> Error {
    Error::internal(format!("S3 storage: {error}"))
}

impl S3Objects {
    /// Connects and creates the bucket if it is missing.
    pub async fn connect(settings: &S3Settings) -> anyhow::Result<Self> {
        let mut base_url: BaseUrl = settings
            .endpoint
            .parse()
            .map_err(|error| anyhow::anyhow!("KEEL_S3_ENDPOINT: {error}"))?;
        base_url.region = Region::new(&settings.region)
            .map_err(|error| anyhow::anyhow!("KEEL_S3_REGION: {error}"))?;
        let provider = StaticProvider::new(&settings.access_key, &settings.secret_key, None);
        let client = MinioClientBuilder::new(base_url)
            .provider(Some(provider))
            .build()
            .map_err(|error| anyhow::anyhow!("KEEL_S3_ENDPOINT: {error}"))?;
        let objects = Self {
            client,
            bucket: settings.bucket.clone(),
        };
        let bucket = || anyhow::anyhow!("KEEL_S3_BUCKET {:?}", settings.bucket);
        let exists = (objects.bucket_exists().await)
            .map_err(|error| bucket().context(format!("reaching the S3 server: {error}")))?;
        if !exists {
            objects
                .client
                .create_bucket(&objects.bucket)
                .map_err(|error| bucket().context(error.to_string()))?
                .build()
                .send()
                .await
                .map_err(|error| bucket().context(format!("creating the bucket: {error}")))?;
            tracing::info!(bucket = %objects.bucket, "created the S3 bucket");
        }
        Ok(objects)
    }
}

impl S3Objects {
    async fn bucket_exists(&self) -> Result<bool> {
        let answer = self
            .client
            .bucket_exists(&self.bucket)
            .map_err(storage_error)?
            .build()
            .send()
            .await
            .map_err(storage_error)?;
        Ok(answer.exists())
    }

    async fn read_all(&self, key: &str) -> Result<BytesMut> {
        let mut bytes = BytesMut::new();
        let mut stream = self.get(key, 0, None).await?;
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk?);
        }
        Ok(bytes)
    }

    async fn upload_part(&self, key: &str, staged: &mut Staged, bytes: Bytes) -> Result<()> {
        let number = u16::try_from(staged.parts.len() + 1).map_err(storage_error)?;
        let size = bytes.len() as u64;
        let response = self
            .client
            .upload_part(
                &self.bucket,
                key,
                staged.upload_id.as_str(),
                number,
                SegmentedBytes::from(bytes),
            )
            .map_err(storage_error)?
            .build()
            .send()
            .await
            .map_err(storage_error)?;
        let etag = response.etag().map_err(storage_error)?.into_inner();
        staged.parts.push(StagedPart { number, etag, size });
        Ok(())
    }

    async fn put_whole(&self, key: &str, bytes: Bytes) -> Result<()> {
        self.client
            .put_object(&self.bucket, key, SegmentedBytes::from(bytes))
            .map_err(storage_error)?
            .build()
            .send()
            .await
            .map(|_| ())
            .map_err(storage_error)
    }

    /// Completes a multipart upload from its parts.
    async fn complete(&self, key: &str, staged: &Staged) -> Result<()> {
        let parts = (staged.parts.iter())
            .map(|part| {
                let etag = ETag::new(part.etag.as_str()).map_err(storage_error)?;
                Ok(PartInfo::new(part.number, etag, part.size, None))
            })
            .collect::<Result<Vec<_>>>()?;
        self.client
            .complete_multipart_upload(&self.bucket, key, staged.upload_id.as_str(), parts)
            .map_err(storage_error)?
            .build()
            .send()
            .await
            .map(|_| ())
            .map_err(storage_error)
    }

    /// Keeps `bytes` (less than a part) as the staged object's tail.
    async fn keep_tail(&self, key: &str, staged: &mut Staged, bytes: Bytes) -> Result<()> {
        let tail = tail_key(key);
        let length = bytes.len() as u64;
        if bytes.is_empty() {
            if staged.tail > 0 {
                self.delete(&tail).await?;
            }
        } else {
            self.put_whole(&tail, bytes).await?;
        }
        staged.tail = length;
        Ok(())
    }
}

#[async_trait::async_trait]
impl ObjectStore for S3Objects {
    fn provider(&self) -> &'static str {
        "s3"
    }

    /// A body shorter than a part is one PUT; a longer one a multipart upload, aborted if the
    /// body fails. Parts are gathered in one buffer, reused from part to part: the body's
    /// chunks may be slices of larger buffers (tonic's decoding buffer) that a part made of
    /// them would keep alive, and a new 5 MiB buffer per part leaves the allocator holding
    /// freed ones.
    async fn put(&self, key: &str, mut body: ByteStream) -> Result<()> {
        let part_bytes = PART_BYTES as usize;
        let mut buffer = BytesMut::with_capacity(part_bytes);
        let mut staged: Option<Staged> = None;
        let sent = async {
            while let Some(chunk) = body.next().await {
                let mut chunk = chunk?;
                while !chunk.is_empty() {
                    let room = part_bytes - buffer.len();
                    buffer.extend_from_slice(&chunk.split_to(room.min(chunk.len())));
                    if buffer.len() < part_bytes {
                        continue;
                    }
                    let staged = match staged.as_mut() {
                        Some(staged) => staged,
                        None => staged.insert(Staged::parse(&self.begin_staged(key).await?)?),
                    };
                    let part = std::mem::take(&mut buffer).freeze();
                    self.upload_part(key, staged, part.clone()).await?;
                    // The client has let go of its copies once the part is sent.
                    buffer = part
                        .try_into_mut()
                        .unwrap_or_else(|_| BytesMut::with_capacity(part_bytes));
                    buffer.clear();
                }
            }
            let last = buffer.split().freeze();
            match staged.as_mut() {
                None => self.put_whole(key, last).await,
                Some(staged) => {
                    if !last.is_empty() {
                        self.upload_part(key, staged, last).await?;
                    }
                    self.complete(key, staged).await
                }
            }
        }
        .await;
        if let (Err(_), Some(staged)) = (&sent, &staged) {
            let _ = self.abort_staged(key, &staged.encode()?).await;
        }
        sent
    }

    async fn get(&self, key: &str, start: u64, length: Option<u64>) -> Result<ByteStream> {
        let response = self
            .client
            .get_object(&self.bucket, key)
            .map_err(storage_error)?
            .offset(start)
            .length(length)
            .build()
            .send()
            .await
            .map_err(storage_error)?;
        let (stream, _) = response.into_boxed_stream().map_err(storage_error)?;
        Ok(stream.map_err(storage_error).boxed())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.client
            .delete_object(&self.bucket, key)
            .map_err(storage_error)?
            .build()
            .send()
            .await
            .map(|_| ())
            .map_err(storage_error)
    }

    async fn begin_staged(&self, key: &str) -> Result<String> {
        let created = self
            .client
            .create_multipart_upload(&self.bucket, key)
            .map_err(storage_error)?
            .build()
            .send()
            .await
            .map_err(storage_error)?;
        let upload_id = created.upload_id().await.map_err(storage_error)?;
        Staged {
            upload_id: upload_id.to_string(),
            ..Staged::default()
        }
        .encode()
    }

    async fn append_staged(
        &self,
        key: &str,
        state: &str,
        offset: u64,
        mut body: ByteStream,
    ) -> Result<Appended> {
        let mut staged = Staged::parse(state)?;
        let mut pending = if staged.tail > 0 {
            self.read_all(&tail_key(key)).await?
        } else {
            BytesMut::new()
        };
        let mut appended = Appended {
            offset,
            state: String::new(),
            interrupted: None,
        };
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => {
                    appended.offset += chunk.len() as u64;
                    pending.extend_from_slice(&chunk);
                    while pending.len() as u64 >= PART_BYTES {
                        let part = pending.split_to(PART_BYTES as usize).freeze();
                        self.upload_part(key, &mut staged, part).await?;
                    }
                }
                Err(error) => {
                    appended.interrupted = Some(error);
                    break;
                }
            }
        }
        self.keep_tail(key, &mut staged, pending.freeze()).await?;
        appended.state = staged.encode()?;
        Ok(appended)
    }

    async fn finish_staged(&self, key: &str, state: &str) -> Result<()> {
        let mut staged = Staged::parse(state)?;
        if staged.tail > 0 {
            let last = self.read_all(&tail_key(key)).await?.freeze();
            self.upload_part(key, &mut staged, last).await?;
        }
        self.complete(key, &staged).await?;
        if staged.tail > 0 {
            self.delete(&tail_key(key)).await?;
        }
        Ok(())
    }

    async fn abort_staged(&self, key: &str, state: &str) -> Result<()> {
        let staged = Staged::parse(state)?;
        let aborted = self
            .client
            .abort_multipart_upload(&self.bucket, key, staged.upload_id.as_str())
            .map_err(storage_error)?
            .build()
            .send()
            .await;
        match aborted {
            Ok(_) => {}
            // Aborted or completed before.
            Err(error) if is_missing(&error, "NoSuchUpload") => {}
            Err(error) => return Err(storage_error(error)),
        }
        self.delete(&tail_key(key)).await
    }

    /// S3 has no rename: a server-side copy, then the original goes.
    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let source = CopySource::builder()
            .bucket(BucketName::new(&self.bucket).map_err(storage_error)?)
            .object(ObjectKey::new(from).map_err(storage_error)?)
            .build();
        self.client
            .copy_object(&self.bucket, to)
            .map_err(storage_error)?
            .source(source)
            .build()
            .send()
            .await
            .map_err(storage_error)?;
        self.delete(from).await
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        let stat = self
            .client
            .stat_object(&self.bucket, key)
            .map_err(storage_error)?
            .build()
            .send()
            .await;
        match stat {
            Ok(stat) => stat.size().map(Some).map_err(storage_error),
            Err(error) if is_missing(&error, "NoSuchKey") => Ok(None),
            Err(error) => Err(storage_error(error)),
        }
    }

    async fn presigned_url(
        &self,
        key: &str,
        issued_at: DateTime<Utc>,
        expires_in: u32,
        presentation: &Presentation<'_>,
    ) -> Result<Option<String>> {
        let mut headers = Multimap::new();
        headers.insert(
            "response-content-type".into(),
            presentation.content_type.into(),
        );
        headers.insert(
            "response-content-disposition".into(),
            content_disposition(presentation.inline, presentation.filename),
        );
        let presigned = self
            .client
            .get_presigned_object_url(&self.bucket, key, http::Method::GET)
            .map_err(storage_error)?
            .request_time(issued_at)
            .expiry_seconds(expires_in)
            .extra_query_params(headers)
            .build()
            .send()
            .await
            .map_err(storage_error)?;
        Ok(Some(presigned.url))
    }
}

#[async_trait::async_trait]
impl HealthProbe for S3Objects {
    fn name(&self) -> &'static str {
        "storage"
    }

    fn backend(&self) -> &'static str {
        "s3"
    }

    async fn check(&self) -> Result<()> {
        if self.bucket_exists().await? {
            Ok(())
        } else {
            Err(storage_error(format!("bucket {} is gone", self.bucket)))
        }
    }
}
