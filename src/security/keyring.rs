//! The instance secret and the keyed digests made with it (HMAC-SHA256, aws-lc-rs). The
//! secret comes from `KEEL_SECRET_KEY` or, on the embedded defaults, from a file generated in
//! the data directory on first start. Replicas must share it: set `KEEL_SECRET_KEY` in
//! production.

use crate::domain::secret::Keyring;
use anyhow::Context;
use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::path::Path;

pub struct InstanceKeyring {
    root: hmac::Key,
}

const MIN_SECRET_BYTES: usize = 32;

impl InstanceKeyring {
    /// From a base64 secret of at least 32 bytes.
    pub fn from_base64(encoded: &str) -> anyhow::Result<Self> {
        let secret = STANDARD
            .decode(encoded.trim())
            .context("KEEL_SECRET_KEY must be base64 (e.g. `openssl rand -base64 32`)")?;
        anyhow::ensure!(
            secret.len() >= MIN_SECRET_BYTES,
            "KEEL_SECRET_KEY must decode to at least {MIN_SECRET_BYTES} bytes"
        );
        Ok(Self::from_bytes(&secret))
    }

    /// From the file at `path`, generating it (mode 0600) when it does not exist.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        if !path.exists() {
            let mut secret = [0u8; MIN_SECRET_BYTES];
            aws_lc_rs::rand::fill(&mut secret)
                .map_err(|_| anyhow::anyhow!("generating the instance secret failed"))?;
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            std::io::Write::write_all(
                &mut options
                    .open(path)
                    .with_context(|| format!("creating {}", path.display()))?,
                STANDARD.encode(secret).as_bytes(),
            )?;
            tracing::info!(path = %path.display(), "generated the instance secret");
        }
        let encoded = std::fs::read_to_string(path)
            .with_context(|| format!("reading the instance secret {}", path.display()))?;
        Self::from_base64(&encoded).with_context(|| format!("instance secret {}", path.display()))
    }

    fn from_bytes(secret: &[u8]) -> Self {
        Self {
            root: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }
}

impl Keyring for InstanceKeyring {
    fn mac(&self, purpose: &str, data: &[u8]) -> [u8; 32] {
        // One derived key per purpose, so a digest made for one use is useless for another.
        let derived = hmac::sign(&self.root, purpose.as_bytes());
        let key = hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref());
        let mut out = [0u8; 32];
        out.copy_from_slice(hmac::sign(&key, data).as_ref());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_depend_on_secret_purpose_and_data() -> anyhow::Result<()> {
        let one = InstanceKeyring::from_base64(&STANDARD.encode([1u8; 32]))?;
        let two = InstanceKeyring::from_base64(&STANDARD.encode([2u8; 32]))?;
        assert_eq!(one.mac("a", b"x"), one.mac("a", b"x"));
        assert_ne!(one.mac("a", b"x"), one.mac("b", b"x"));
        assert_ne!(one.mac("a", b"x"), one.mac("a", b"y"));
        assert_ne!(one.mac("a", b"x"), two.mac("a", b"x"));
        assert!(InstanceKeyring::from_base64(&STANDARD.encode([1u8; 16])).is_err());
        Ok(())
    }

    #[test]
    fn a_generated_secret_is_kept() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("keel-keyring-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("instance-secret.key");
        let first = InstanceKeyring::load_or_create(&path)?.mac("a", b"x");
        let second = InstanceKeyring::load_or_create(&path)?.mac("a", b"x");
        std::fs::remove_dir_all(&dir)?;
        assert_eq!(first, second);
        Ok(())
    }
}
