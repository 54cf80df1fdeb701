//! High-entropy opaque secrets (refresh tokens, later API keys and one-time links) and the
//! digests they are stored as. A fast hash is right here: the secrets are random 256-bit
//! values, so there is nothing to brute-force; passwords use `password::PasswordHasher`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};

use super::error::Result;

/// A fresh random secret, URL-safe.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// What a Standard Webhooks secret starts with.
pub const SIGNING_SECRET_PREFIX: &str = "whsec_";

/// A new Standard Webhooks secret (webhooks', integrations'): what its holder is shown once
/// (`whsec_<base64>`), and the raw key that signs.
pub fn signing_secret() -> (String, Vec<u8>) {
    let mut raw = vec![0u8; 24];
    rand::rng().fill_bytes(&mut raw);
    let shown = format!(
        "{SIGNING_SECRET_PREFIX}{}",
        base64::engine::general_purpose::STANDARD.encode(&raw)
    );
    (shown, raw)
}

/// Keyed digests under the instance's secret key, for values stored where a database copy
/// alone must not be enough to test guesses against them.
pub trait Keyring: Send + Sync {
    /// HMAC-SHA256 of `data` under a key derived for `purpose`.
    fn mac(&self, purpose: &str, data: &[u8]) -> [u8; 32];
    /// Encrypts and authenticates `plaintext` under a key derived for `purpose`.
    fn seal(&self, purpose: &str, plaintext: &[u8]) -> Result<Vec<u8>>;
    /// Decrypts what `seal` made for the same purpose; fails on anything else.
    fn open(&self, purpose: &str, sealed: &[u8]) -> Result<Vec<u8>>;
}

/// The SHA-256 digest a secret is stored and looked up by.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// `digest` in lower-case hex, for cache keys.
pub fn digest_hex(secret: &str) -> String {
    hex(&digest(secret))
}

/// Bytes in lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
