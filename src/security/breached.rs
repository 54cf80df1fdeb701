//! Breached passwords from a local copy of the Have I Been Pwned list in its k-anonymity range
//! layout: one file per first five hex digits of the SHA-1 (`<dir>/21BD1.txt`), each line the
//! remaining 35 digits and a count (`0018A45C4D1DEF81644B54AB7F969B88D65:10`), as the
//! `haveibeenpwned-downloader` writes it. Only the file of the password's prefix is read, so
//! the list can be the full multi-gigabyte set; no password or digest leaves the machine.

use crate::domain::error::{Error, Result};
use crate::domain::password::BreachedPasswords;
use std::path::PathBuf;

pub struct RangeFiles {
    directory: PathBuf,
}

impl RangeFiles {
    pub fn open(directory: PathBuf) -> anyhow::Result<Self> {
        anyhow::ensure!(
            directory.is_dir(),
            "KEEL_BREACHED_PASSWORDS_DIR: {} is not a directory",
            directory.display()
        );
        Ok(Self { directory })
    }
}

fn sha1_hex(password: &str) -> String {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        password.as_bytes(),
    );
    digest
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02X}"))
        .collect()
}

#[async_trait::async_trait]
impl BreachedPasswords for RangeFiles {
    async fn is_breached(&self, password: &str) -> Result<bool> {
        let digest = sha1_hex(password);
        let (prefix, suffix) = digest.split_at(5);
        let range =
            match tokio::fs::read_to_string(self.directory.join(format!("{prefix}.txt"))).await {
                Ok(range) => range,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(error) => return Err(Error::internal(error)),
            };
        Ok(range.lines().any(|line| {
            line.split(':')
                .next()
                .is_some_and(|listed| listed.trim().eq_ignore_ascii_case(suffix))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finds_a_listed_password_by_its_range() -> anyhow::Result<()> {
        let directory = tempfile::tempdir()?;
        // SHA-1 of "password" is 5BAA61E4C9B93F3F0682250B6CF8331B7EE68FD8.
        assert_eq!(
            sha1_hex("password"),
            "5BAA61E4C9B93F3F0682250B6CF8331B7EE68FD8"
        );
        std::fs::write(
            directory.path().join("5BAA6.txt"),
            "003D68EB55068C33ACE09247EE4C639306B:3\r\n1E4C9B93F3F0682250B6CF8331B7EE68FD8:9659365\r\n",
        )?;
        let list = RangeFiles::open(directory.path().to_owned())?;
        assert!(list.is_breached("password").await?);
        assert!(!list.is_breached("a long and unlisted passphrase").await?);
        Ok(())
    }
}
