//! The instance secret and the keyed digests made with it (HMAC-SHA256, aws-lc-rs). The
//! secret comes from `KEEL_SECRET_KEY` or, on the embedded defaults, from a file generated in
//! the data directory on first start. Replicas must share it: set `KEEL_SECRET_KEY` in
//! production.

use crate::domain::Error;
use crate::domain::error::Result;
use crate::domain::secret::Keyring;
use anyhow::Context;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
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

impl InstanceKeyring {
    /// One derived key per use, so material made for one purpose is useless for another.
    fn derive(&self, label: &str) -> hmac::Tag {
        hmac::sign(&self.root, label.as_bytes())
    }

    fn sealing_key(&self, purpose: &str) -> Result<LessSafeKey> {
        let derived = self.derive(&format!("seal:{purpose}"));
        let unbound = UnboundKey::new(&AES_256_GCM, derived.as_ref())
            .map_err(|_| Error::internal("deriving a sealing key failed"))?;
        Ok(LessSafeKey::new(unbound))
    }
}

impl Keyring for InstanceKeyring {
    fn mac(&self, purpose: &str, data: &[u8]) -> [u8; 32] {
        let derived = self.derive(purpose);
        let key = hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref());
        let mut out = [0u8; 32];
        out.copy_from_slice(hmac::sign(&key, data).as_ref());
        out
    }

    /// AES-256-GCM with a random 96-bit nonce, stored as `nonce || ciphertext || tag`.
    fn seal(&self, purpose: &str, plaintext: &[u8]) -> Result<Vec<u8>> {
        let key = self.sealing_key(purpose)?;
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| Error::internal("no randomness"))?;
        let mut in_out = plaintext.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(purpose.as_bytes()),
            &mut in_out,
        )
        .map_err(|_| Error::internal("sealing failed"))?;
        Ok([nonce.as_slice(), &in_out].concat())
    }

    fn open(&self, purpose: &str, sealed: &[u8]) -> Result<Vec<u8>> {
        let broken = || Error::internal("sealed data does not open under the instance secret");
        if sealed.len() < NONCE_LEN {
            return Err(broken());
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| broken())?;
        let mut in_out = ciphertext.to_vec();
        let plaintext = self
            .sealing_key(purpose)?
            .open_in_place(nonce, Aad::from(purpose.as_bytes()), &mut in_out)
            .map_err(|_| broken())?;
        Ok(plaintext.to_vec())
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
    fn sealed_data_opens_only_with_the_same_secret_and_purpose() -> anyhow::Result<()> {
        let one = InstanceKeyring::from_base64(&STANDARD.encode([1u8; 32]))?;
        let two = InstanceKeyring::from_base64(&STANDARD.encode([2u8; 32]))?;
        let sealed = one.seal("totp", b"secret bytes")?;
        assert_ne!(&sealed[NONCE_LEN..], b"secret bytes");
        assert_eq!(one.open("totp", &sealed)?, b"secret bytes");
        assert!(one.open("other", &sealed).is_err());
        assert!(two.open("totp", &sealed).is_err());
        let mut tampered = sealed.clone();
        tampered[NONCE_LEN] ^= 1;
        assert!(one.open("totp", &tampered).is_err());
        assert_ne!(
            one.seal("totp", b"secret bytes")?,
            sealed,
            "nonces are fresh"
        );
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
