//! Access tokens: what they claim and the port that signs and verifies them.

use crate::domain::error::Result;
use chrono::{DateTime, Utc};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessClaims {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub token_id: Uuid,
    pub issued_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// Signs and verifies access tokens. `verify` checks the signature, issuer and audience; expiry
/// is checked by the caller against the injected clock.
pub trait AccessTokenCodec: Send + Sync {
    fn sign(&self, claims: &AccessClaims) -> Result<String>;
    /// Fails with `Unauthenticated`/`INVALID_TOKEN` for anything but a token this instance signed.
    fn verify(&self, token: &str) -> Result<AccessClaims>;
}
