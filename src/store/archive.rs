//! `AuditArchive` on a local directory: each export a file readable by Keel's user alone,
//! synced to disk before the entries it holds are deleted.

use crate::domain::audit::AuditArchive;
use crate::domain::error::{Error, Result};
use std::io::Write;
use std::path::PathBuf;

pub struct DirectoryArchive {
    directory: PathBuf,
}

impl DirectoryArchive {
    pub fn new(directory: PathBuf) -> Self {
        Self { directory }
    }
}

#[async_trait::async_trait]
impl AuditArchive for DirectoryArchive {
    async fn write(&self, name: &str, lines: &str) -> Result<String> {
        let directory = self.directory.clone();
        let path = directory.join(name);
        let lines = lines.to_owned();
        tokio::task::spawn_blocking(move || {
            crate::security::create_private_dir(&directory)?;
            let mut options = std::fs::OpenOptions::new();
            // A retry after a crash between export and delete writes the same file again.
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(&path)?;
            file.write_all(lines.as_bytes())?;
            file.sync_all()?;
            Ok::<_, std::io::Error>(path.display().to_string())
        })
        .await
        .map_err(Error::internal)?
        .map_err(Error::internal)
    }
}
