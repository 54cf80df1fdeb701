//! Objects as files under a directory (`<data dir>/files`). An object is written to a
//! temporary file beside its place and renamed there once complete, so a reader never sees
//! half an object and a failed upload leaves nothing behind.

use crate::domain::error::{Error, Result};
use crate::domain::files::{Appended, ByteStream, ObjectStore, Presentation};
use crate::domain::health::HealthProbe;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use std::io::SeekFrom;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio_util::io::ReaderStream;

/// The size of the chunks read back.
const READ_CHUNK: usize = 64 * 1024;

pub struct LocalObjects {
    root: PathBuf,
}

impl LocalObjects {
    pub fn open(root: &Path) -> anyhow::Result<Self> {
        crate::security::create_private_dir(root)?;
        Ok(Self {
            root: root.to_owned(),
        })
    }

    /// Keys are Keel's own (`objects/<hex>`); anything else is refused rather than joined.
    fn path(&self, key: &str) -> Result<PathBuf> {
        let safe = key
            .split('/')
            .all(|part| !part.is_empty() && part.bytes().all(|byte| byte.is_ascii_alphanumeric()));
        if !safe {
            return Err(Error::internal(format!("invalid object key {key:?}")));
        }
        Ok(self.root.join(key))
    }

    /// Where a staged object grows until it is finished.
    fn staged_path(&self, key: &str) -> Result<PathBuf> {
        Ok(self.path(key)?.with_extension("staged"))
    }
}

fn storage_error(error: std::io::Error) -> Error {
    Error::internal(format!("file storage: {error}"))
}

async fn remove_if_present(path: &Path) -> Result<()> {
    match tokio::fs::remove_file(path).await {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(storage_error(error)),
    }
}

#[async_trait::async_trait]
impl ObjectStore for LocalObjects {
    fn provider(&self) -> &'static str {
        "local"
    }

    async fn put(&self, key: &str, mut body: ByteStream) -> Result<()> {
        let path = self.path(key)?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(storage_error)?;
        }
        let partial = path.with_extension("partial");
        let written = async {
            let mut file = tokio::fs::File::create(&partial)
                .await
                .map_err(storage_error)?;
            while let Some(chunk) = body.next().await {
                file.write_all(&chunk?).await.map_err(storage_error)?;
            }
            file.sync_all().await.map_err(storage_error)?;
            tokio::fs::rename(&partial, &path)
                .await
                .map_err(storage_error)
        }
        .await;
        if written.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        written
    }

    async fn get(&self, key: &str, start: u64, length: Option<u64>) -> Result<ByteStream> {
        let mut file = tokio::fs::File::open(self.path(key)?)
            .await
            .map_err(storage_error)?;
        file.seek(SeekFrom::Start(start))
            .await
            .map_err(storage_error)?;
        let reader = file.take(length.unwrap_or(u64::MAX));
        Ok(ReaderStream::with_capacity(reader, READ_CHUNK)
            .map(|chunk| chunk.map_err(storage_error))
            .boxed())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        remove_if_present(&self.path(key)?).await
    }

    async fn rename(&self, from: &str, to: &str) -> Result<()> {
        let to = self.path(to)?;
        if let Some(parent) = to.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(storage_error)?;
        }
        tokio::fs::rename(self.path(from)?, to)
            .await
            .map_err(storage_error)
    }

    async fn size(&self, key: &str) -> Result<Option<u64>> {
        match tokio::fs::metadata(self.path(key)?).await {
            Ok(metadata) => Ok(Some(metadata.len())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(storage_error(error)),
        }
    }

    async fn begin_staged(&self, key: &str) -> Result<String> {
        let path = self.staged_path(key)?;
        if let Some(parent) = path.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(storage_error)?;
        }
        tokio::fs::File::create(&path)
            .await
            .map_err(storage_error)?;
        Ok(String::new())
    }

    async fn append_staged(
        &self,
        key: &str,
        _: &str,
        offset: u64,
        mut body: ByteStream,
    ) -> Result<Appended> {
        let mut file = tokio::fs::OpenOptions::new()
            .write(true)
            .open(self.staged_path(key)?)
            .await
            .map_err(storage_error)?;
        // Bytes past `offset` are from an append whose end was never recorded.
        file.set_len(offset).await.map_err(storage_error)?;
        file.seek(SeekFrom::Start(offset))
            .await
            .map_err(storage_error)?;
        let mut appended = Appended {
            offset,
            state: String::new(),
            interrupted: None,
        };
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => {
                    file.write_all(&chunk).await.map_err(storage_error)?;
                    appended.offset += chunk.len() as u64;
                }
                Err(error) => {
                    appended.interrupted = Some(error);
                    break;
                }
            }
        }
        file.sync_all().await.map_err(storage_error)?;
        Ok(appended)
    }

    async fn finish_staged(&self, key: &str, _: &str) -> Result<()> {
        tokio::fs::rename(self.staged_path(key)?, self.path(key)?)
            .await
            .map_err(storage_error)
    }

    async fn abort_staged(&self, key: &str, _: &str) -> Result<()> {
        remove_if_present(&self.staged_path(key)?).await
    }

    /// Keel serves local objects itself, through URLs it signs.
    async fn presigned_url(
        &self,
        _: &str,
        _: DateTime<Utc>,
        _: u32,
        _: &Presentation<'_>,
    ) -> Result<Option<String>> {
        Ok(None)
    }
}

#[async_trait::async_trait]
impl HealthProbe for LocalObjects {
    fn name(&self) -> &'static str {
        "storage"
    }

    fn backend(&self) -> &'static str {
        "local"
    }

    /// The directory is there and writable.
    async fn check(&self) -> Result<()> {
        let metadata = tokio::fs::metadata(&self.root)
            .await
            .map_err(storage_error)?;
        if metadata.is_dir() && !metadata.permissions().readonly() {
            Ok(())
        } else {
            Err(storage_error(std::io::Error::other(format!(
                "{} is not a writable directory",
                self.root.display()
            ))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn body(chunks: Vec<Result<Bytes>>) -> ByteStream {
        futures_util::stream::iter(chunks).boxed()
    }

    async fn read(objects: &LocalObjects, start: u64, length: Option<u64>) -> Vec<u8> {
        let mut stream = objects.get("objects/abc", start, length).await.unwrap();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            bytes.extend_from_slice(&chunk.unwrap());
        }
        bytes
    }

    #[tokio::test]
    async fn objects_are_whole_or_absent() {
        let directory = tempfile::tempdir().unwrap();
        let objects = LocalObjects::open(directory.path()).unwrap();
        let chunks = vec![
            Ok(Bytes::from_static(b"hello ")),
            Ok(Bytes::from_static(b"world")),
        ];
        objects.put("objects/abc", body(chunks)).await.unwrap();
        assert_eq!(read(&objects, 0, None).await, b"hello world");
        assert_eq!(read(&objects, 6, Some(3)).await, b"wor");

        let failing = vec![
            Ok(Bytes::from_static(b"half")),
            Err(Error::internal("the client went away")),
        ];
        assert!(objects.put("objects/def", body(failing)).await.is_err());
        let objects_dir = directory.path().join("objects");
        let left: Vec<_> = std::fs::read_dir(&objects_dir).unwrap().collect();
        assert_eq!(left.len(), 1, "only the complete object remains");

        objects.delete("objects/abc").await.unwrap();
        objects.delete("objects/abc").await.unwrap();
        assert!(objects.get("objects/abc", 0, None).await.is_err());
        assert!(objects.put("../escape", body(vec![])).await.is_err());
    }
}
