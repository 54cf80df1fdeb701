//! Access tokens as JWTs: EdDSA (Ed25519) with a `kid` and a published JWKS by default, HS256
//! with a shared secret for compatibility. Signing keys live as PKCS#8 PEM files in a key
//! directory (generated on first start): the newest file signs, every file verifies, so a key
//! is rotated by adding a newer file and retiring the old one once its tokens have expired.

use crate::domain::Error;
use crate::domain::auth::{AccessClaims, AccessTokenCodec};
use crate::domain::error::Result;
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use uuid::Uuid;

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: Uuid,
    sid: Uuid,
    jti: Uuid,
    iat: i64,
    exp: i64,
    iss: String,
    aud: String,
}

/// Where the signing keys come from.
pub enum SigningKeys {
    /// Ed25519 PEM files in a directory; one is generated when there is none.
    Ed25519Directory(PathBuf),
    /// One Ed25519 PKCS#8 PEM file given by the operator.
    Ed25519File(PathBuf),
    /// A shared HS256 secret (no JWKS is published).
    Hs256Secret(String),
}

struct SigningKey {
    kid: Option<String>,
    algorithm: Algorithm,
    key: EncodingKey,
}

/// Verified tokens are remembered by digest so that the hot path pays one SHA-256 instead of a
/// signature check; the map is cleared when it reaches this size.
const VERIFIED_CACHE_CAPACITY: usize = 100_000;

pub struct JwtCodec {
    signing: SigningKey,
    verifying: HashMap<Option<String>, DecodingKey>,
    validation: Validation,
    issuer: String,
    audience: String,
    jwks: serde_json::Value,
    verified: Mutex<HashMap<[u8; 32], AccessClaims>>,
}

struct Ed25519Key {
    kid: String,
    pkcs8: Vec<u8>,
    public: Vec<u8>,
}

impl JwtCodec {
    pub fn load(keys: SigningKeys, issuer: &str, audience: &str) -> anyhow::Result<Self> {
        let (signing, verifying, jwk_list) = match keys {
            SigningKeys::Hs256Secret(secret) => {
                anyhow::ensure!(
                    secret.len() >= 32,
                    "KEEL_JWT_HS256_SECRET must be at least 32 bytes"
                );
                let signing = SigningKey {
                    kid: None,
                    algorithm: Algorithm::HS256,
                    key: EncodingKey::from_secret(secret.as_bytes()),
                };
                let verifying =
                    HashMap::from([(None, DecodingKey::from_secret(secret.as_bytes()))]);
                (signing, verifying, Vec::new())
            }
            SigningKeys::Ed25519File(path) => Self::ed25519(vec![read_ed25519(&path)?])?,
            SigningKeys::Ed25519Directory(dir) => Self::ed25519(load_or_create_keys(&dir)?)?,
        };
        let mut validation = Validation::new(signing.algorithm);
        // Expiry is checked by the domain against its injected clock.
        validation.validate_exp = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "iat", "sub", "iss", "aud"]);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        Ok(Self {
            signing,
            verifying,
            validation,
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            jwks: serde_json::json!({ "keys": jwk_list }),
            verified: Mutex::new(HashMap::new()),
        })
    }

    #[allow(clippy::type_complexity)]
    fn ed25519(
        keys: Vec<Ed25519Key>,
    ) -> anyhow::Result<(
        SigningKey,
        HashMap<Option<String>, DecodingKey>,
        Vec<serde_json::Value>,
    )> {
        let newest = keys
            .last()
            .ok_or_else(|| anyhow::anyhow!("no Ed25519 signing key"))?;
        let signing = SigningKey {
            kid: Some(newest.kid.clone()),
            algorithm: Algorithm::EdDSA,
            key: EncodingKey::from_ed_der(&newest.pkcs8),
        };
        let verifying = keys
            .iter()
            .map(|key| (Some(key.kid.clone()), DecodingKey::from_ed_der(&key.public)))
            .collect();
        let jwks = keys
            .iter()
            .map(|key| {
                serde_json::json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "alg": "EdDSA",
                    "use": "sig",
                    "kid": key.kid,
                    "x": URL_SAFE_NO_PAD.encode(&key.public),
                })
            })
            .collect();
        Ok((signing, verifying, jwks))
    }

    /// The public keys as a JSON Web Key Set, for `/.well-known/jwks.json`.
    pub fn jwks(&self) -> &serde_json::Value {
        &self.jwks
    }

    fn verify_signature(&self, token: &str) -> Result<AccessClaims> {
        let invalid = || Error::unauthenticated("INVALID_TOKEN", "the access token is not valid");
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid())?;
        let key = self.verifying.get(&header.kid).ok_or_else(invalid)?;
        let data =
            jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|_| invalid())?;
        let claims = data.claims;
        let time = |seconds: i64| DateTime::<Utc>::from_timestamp(seconds, 0).ok_or_else(invalid);
        Ok(AccessClaims {
            user_id: claims.sub,
            session_id: claims.sid,
            token_id: claims.jti,
            issued_at: time(claims.iat)?,
            expires_at: time(claims.exp)?,
        })
    }
}

impl AccessTokenCodec for JwtCodec {
    fn sign(&self, claims: &AccessClaims) -> Result<String> {
        let mut header = Header::new(self.signing.algorithm);
        header.kid = self.signing.kid.clone();
        let body = Claims {
            sub: claims.user_id,
            sid: claims.session_id,
            jti: claims.token_id,
            iat: claims.issued_at.timestamp(),
            exp: claims.expires_at.timestamp(),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        };
        jsonwebtoken::encode(&header, &body, &self.signing.key).map_err(Error::internal)
    }

    fn verify(&self, token: &str) -> Result<AccessClaims> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let lock = || {
            self.verified
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
        };
        if let Some(claims) = lock().get(&digest) {
            return Ok(claims.clone());
        }
        let claims = self.verify_signature(token)?;
        let mut verified = lock();
        if verified.len() >= VERIFIED_CACHE_CAPACITY {
            verified.clear();
        }
        verified.insert(digest, claims.clone());
        Ok(claims)
    }
}

fn load_or_create_keys(dir: &Path) -> anyhow::Result<Vec<Ed25519Key>> {
    super::create_private_dir(dir)
        .map_err(|error| anyhow::anyhow!("creating key directory {}: {error}", dir.display()))?;
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "pem"))
        .collect();
    if paths.is_empty() {
        let path = dir.join(format!(
            "ed25519-{}.pem",
            Utc::now().format("%Y%m%dT%H%M%SZ")
        ));
        write_new_key(&path)?;
        tracing::info!(path = %path.display(), "generated a new Ed25519 signing key");
        paths.push(path);
    }
    // Names sort by creation time, so the last one is the newest.
    paths.sort();
    paths.iter().map(|path| read_ed25519(path)).collect()
}

fn write_new_key(path: &Path) -> anyhow::Result<()> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    // PKCS#8 v1 (no public key inside): what OpenSSL 3.0 and Python's cryptography read.
    let document = Ed25519KeyPair::generate_pkcs8v1(&rng)
        .map_err(|_| anyhow::anyhow!("generating an Ed25519 key failed"))?;
    let body = STANDARD.encode(document.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line)?);
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    std::io::Write::write_all(&mut options.open(path)?, pem.as_bytes())?;
    Ok(())
}

fn read_ed25519(path: &Path) -> anyhow::Result<Ed25519Key> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| anyhow::anyhow!("reading signing key {}: {error}", path.display()))?;
    let body: String = text
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    let pkcs8 = STANDARD
        .decode(body.trim())
        .map_err(|error| anyhow::anyhow!("signing key {} is not PEM: {error}", path.display()))?;
    let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|error| {
        anyhow::anyhow!(
            "signing key {} is not an Ed25519 PKCS#8 key: {error}",
            path.display()
        )
    })?;
    let public = pair.public_key().as_ref().to_vec();
    Ok(Ed25519Key {
        kid: thumbprint(&public),
        pkcs8,
        public,
    })
}

/// The RFC 7638 JWK thumbprint of an Ed25519 public key: a stable `kid`.
fn thumbprint(public: &[u8]) -> String {
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public)
    );
    URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
}
