//! Two-factor authentication: TOTP (RFC 6238) enrolment and checks, and single-use backup
//! codes. The TOTP secret is stored sealed (AES-256-GCM under the instance secret); backup
//! codes are stored as keyed digests. A code's time step is claimed in the store, so no code
//! is accepted twice, even by two concurrent requests.

use crate::domain::clock::{Clock, truncate_to_micros};
use crate::domain::error::{Error, ErrorKind, Result};
use crate::domain::events::{Event, EventKind, Origin, UserData};
use crate::domain::password::{PasswordCheck, PasswordHasher};
use crate::domain::principal::Principal;
use crate::domain::secret::Keyring;
use crate::domain::user::{User, UserStore};
use chrono::{DateTime, Utc};
use rand::Rng;
use std::sync::Arc;
use totp_rs::{Builder, Secret, Totp};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TotpCredential {
    pub user_id: Uuid,
    pub secret_sealed: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub enabled_at: Option<DateTime<Utc>>,
}

#[async_trait::async_trait]
pub trait TotpStore: Send + Sync {
    /// Stores a new, not yet enabled, secret with its backup codes, replacing an earlier
    /// enrolment that was never enabled.
    async fn put_pending_totp(
        &self,
        credential: &TotpCredential,
        backup_code_digests: &[[u8; 32]],
    ) -> Result<()>;
    async fn find_totp(&self, user_id: Uuid) -> Result<Option<TotpCredential>>;
    async fn enable_totp(&self, user_id: Uuid, now: DateTime<Utc>, events: &[Event]) -> Result<()>;
    /// Removes the secret and the backup codes.
    async fn delete_totp(&self, user_id: Uuid, events: &[Event]) -> Result<()>;
    /// Records `step` as used; false when it, or a later step, already was.
    async fn claim_totp_step(&self, user_id: Uuid, step: i64) -> Result<bool>;
    async fn replace_backup_codes(&self, user_id: Uuid, digests: &[[u8; 32]]) -> Result<()>;
    /// Marks an unused backup code used; false when there is no such unused code.
    async fn use_backup_code(
        &self,
        user_id: Uuid,
        digest: &[u8; 32],
        now: DateTime<Utc>,
    ) -> Result<bool>;
    async fn count_unused_backup_codes(&self, user_id: Uuid) -> Result<u64>;
}

pub struct Enrolment {
    pub secret_base32: String,
    pub provisioning_uri: String,
    pub qr_code_data_uri: String,
    pub backup_codes: Vec<String>,
}

pub struct TotpStatus {
    pub enabled: bool,
    pub backup_codes_remaining: u64,
    pub enabled_at: Option<DateTime<Utc>>,
}

/// What a caller turning 2FA on proved themselves with.
pub enum EnrolmentProof<'a> {
    Password(&'a str),
    /// A code mailed to the verified address, already checked.
    MailedCode,
}

/// What a caller proves themselves with before a sensitive change.
pub struct Reauthentication<'a> {
    pub password: &'a str,
    pub code: &'a str,
}

const SEAL_PURPOSE: &str = "totp-secret";
const BACKUP_CODE_PURPOSE: &str = "totp-backup-code";
const BACKUP_CODE_COUNT: usize = 10;
/// No 0/o, 1/l/i: codes are read off paper.
const BACKUP_CODE_ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
const ISSUER: &str = "Keel";

pub struct TotpService {
    store: Arc<dyn TotpStore>,
    users: Arc<dyn UserStore>,
    hasher: Arc<dyn PasswordHasher>,
    keyring: Arc<dyn Keyring>,
    clock: Arc<dyn Clock>,
}

fn failed_precondition(reason: &'static str, message: &str) -> Error {
    Error::new(ErrorKind::FailedPrecondition, reason, message)
}

fn totp_for(secret: Vec<u8>, account: &str) -> Result<Totp> {
    Builder::new()
        .with_secret(Secret::from(secret))
        .with_issuer(Some(ISSUER))
        .with_account_name(account)
        .build()
        .map_err(|error| Error::internal(format!("building the TOTP: {error:?}")))
}

fn new_backup_codes() -> Vec<String> {
    let mut rng = rand::rng();
    (0..BACKUP_CODE_COUNT)
        .map(|_| {
            let mut code: String = (0..10)
                .map(|_| {
                    char::from(
                        BACKUP_CODE_ALPHABET[rng.random_range(0..BACKUP_CODE_ALPHABET.len())],
                    )
                })
                .collect();
            code.insert(5, '-');
            code
        })
        .collect()
}

/// Backup codes are compared without case, spaces or dashes.
fn normalize_backup_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

fn looks_like_totp_code(code: &str) -> bool {
    code.len() == 6 && code.chars().all(|c| c.is_ascii_digit())
}

impl TotpService {
    pub fn new(
        store: Arc<dyn TotpStore>,
        users: Arc<dyn UserStore>,
        hasher: Arc<dyn PasswordHasher>,
        keyring: Arc<dyn Keyring>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            users,
            hasher,
            keyring,
            clock,
        }
    }

    fn backup_digests(&self, user_id: Uuid, codes: &[String]) -> Vec<[u8; 32]> {
        codes
            .iter()
            .map(|code| self.backup_digest(user_id, code))
            .collect()
    }

    fn backup_digest(&self, user_id: Uuid, code: &str) -> [u8; 32] {
        let normalized = normalize_backup_code(code);
        self.keyring.mac(
            BACKUP_CODE_PURPOSE,
            [user_id.as_bytes().as_slice(), normalized.as_bytes()]
                .concat()
                .as_slice(),
        )
    }

    pub async fn setup(&self, principal: &Principal) -> Result<Enrolment> {
        let user = &principal.user;
        if self
            .store
            .find_totp(user.id)
            .await?
            .is_some_and(|credential| credential.enabled_at.is_some())
        {
            return Err(failed_precondition(
                "TOTP_ALREADY_ENABLED",
                "two-factor authentication is already on; disable it first",
            ));
        }
        let secret = Secret::generate().as_bytes().to_vec();
        let totp = totp_for(secret.clone(), &user.email)?;
        let provisioning_uri = totp
            .to_url()
            .map_err(|error| Error::internal(format!("TOTP URI: {error:?}")))?;
        let qr = totp
            .to_qr_base64()
            .map_err(|error| Error::internal(format!("TOTP QR code: {error:?}")))?;
        let backup_codes = new_backup_codes();
        let credential = TotpCredential {
            user_id: user.id,
            secret_sealed: self.keyring.seal(SEAL_PURPOSE, &secret)?,
            created_at: truncate_to_micros(self.clock.now()),
            enabled_at: None,
        };
        self.store
            .put_pending_totp(&credential, &self.backup_digests(user.id, &backup_codes))
            .await?;
        Ok(Enrolment {
            secret_base32: Secret::from(secret).to_base32(),
            provisioning_uri,
            qr_code_data_uri: format!("data:image/png;base64,{qr}"),
            backup_codes,
        })
    }

    /// Turns 2FA on: the caller's proof (the current password, or a mailed code checked
    /// before), then a code from the enrolled secret.
    pub async fn enable(
        &self,
        principal: &Principal,
        code: &str,
        proof: EnrolmentProof<'_>,
    ) -> Result<()> {
        let credential = self
            .store
            .find_totp(principal.user.id)
            .await?
            .ok_or_else(|| {
                failed_precondition("TOTP_NOT_SET_UP", "set up two-factor authentication first")
            })?;
        if credential.enabled_at.is_some() {
            return Err(failed_precondition(
                "TOTP_ALREADY_ENABLED",
                "two-factor authentication is already on",
            ));
        }
        let proven = match proof {
            EnrolmentProof::Password(password) => {
                self.password_matches(principal.user.id, password).await?
            }
            EnrolmentProof::MailedCode => true,
        };
        if !proven {
            return Err(Error::invalid_argument(
                "REAUTHENTICATION_FAILED",
                "give the account's current password, or a code mailed by SendEnrolmentCode",
            ));
        }
        if !self
            .check_totp_code(&credential, &principal.user.email, code)
            .await?
        {
            return Err(Error::invalid_argument(
                "INVALID_CODE",
                "the code is not valid",
            ));
        }
        let enabled = self.mfa_event(EventKind::UserMfaEnabled, principal, &principal.user);
        self.store
            .enable_totp(
                principal.user.id,
                truncate_to_micros(self.clock.now()),
                &[enabled],
            )
            .await?;
        tracing::info!(user_id = %principal.user.id, "two-factor authentication enabled");
        Ok(())
    }

    pub async fn status(&self, principal: &Principal) -> Result<TotpStatus> {
        let enabled_at = self
            .store
            .find_totp(principal.user.id)
            .await?
            .and_then(|credential| credential.enabled_at);
        let backup_codes_remaining = match enabled_at {
            Some(_) => {
                self.store
                    .count_unused_backup_codes(principal.user.id)
                    .await?
            }
            None => 0,
        };
        Ok(TotpStatus {
            enabled: enabled_at.is_some(),
            backup_codes_remaining,
            enabled_at,
        })
    }

    pub async fn disable(&self, principal: &Principal, proof: Reauthentication<'_>) -> Result<()> {
        self.reauthenticate(principal, proof).await?;
        let disabled = self.mfa_event(EventKind::UserMfaDisabled, principal, &principal.user);
        self.store
            .delete_totp(principal.user.id, &[disabled])
            .await?;
        tracing::info!(user_id = %principal.user.id, "two-factor authentication disabled");
        Ok(())
    }

    pub async fn regenerate_backup_codes(
        &self,
        principal: &Principal,
        proof: Reauthentication<'_>,
    ) -> Result<Vec<String>> {
        self.reauthenticate(principal, proof).await?;
        let codes = new_backup_codes();
        self.store
            .replace_backup_codes(
                principal.user.id,
                &self.backup_digests(principal.user.id, &codes),
            )
            .await?;
        Ok(codes)
    }

    /// Requires TOTP to be on, then the current password or a current code.
    async fn reauthenticate(
        &self,
        principal: &Principal,
        proof: Reauthentication<'_>,
    ) -> Result<()> {
        let user = &principal.user;
        if !self.is_enabled(user.id).await? {
            return Err(failed_precondition(
                "TOTP_NOT_ENABLED",
                "two-factor authentication is off",
            ));
        }
        let proven = if !proof.password.is_empty() {
            self.password_matches(user.id, proof.password).await?
        } else if !proof.code.is_empty() {
            self.verify_second_factor(user.id, &user.email, proof.code)
                .await?
        } else {
            false
        };
        if !proven {
            return Err(Error::invalid_argument(
                "REAUTHENTICATION_FAILED",
                "give the current password or a current authenticator code",
            ));
        }
        Ok(())
    }

    /// Removes an enrolment, enabled or not, with its backup codes: one made before the
    /// account's address was proven, or one a superuser resets.
    pub async fn remove(&self, user: &User, origin: impl Into<Origin>) -> Result<()> {
        let Some(credential) = self.store.find_totp(user.id).await? else {
            return Ok(());
        };
        let events: Vec<Event> = credential
            .enabled_at
            .map(|_| self.mfa_event(EventKind::UserMfaDisabled, origin, user))
            .into_iter()
            .collect();
        self.store.delete_totp(user.id, &events).await?;
        tracing::info!(user_id = %user.id, "two-factor enrolment removed");
        Ok(())
    }

    fn mfa_event(&self, kind: EventKind, origin: impl Into<Origin>, user: &User) -> Event {
        Event::new(
            kind,
            &origin.into(),
            self.clock.as_ref(),
            &UserData::from(user),
        )
    }

    async fn password_matches(&self, user_id: Uuid, password: &str) -> Result<bool> {
        if password.is_empty() {
            return Ok(false);
        }
        let Some(stored) = self.users.find_password_hash(user_id).await? else {
            return Ok(false);
        };
        Ok(self.hasher.verify(password, &stored).await? != PasswordCheck::Mismatch)
    }

    pub async fn is_enabled(&self, user_id: Uuid) -> Result<bool> {
        Ok(self
            .store
            .find_totp(user_id)
            .await?
            .is_some_and(|credential| credential.enabled_at.is_some()))
    }

    /// A sign-in's second factor: a current TOTP code (each accepted once) or an unused backup
    /// code (consumed).
    pub async fn verify_second_factor(
        &self,
        user_id: Uuid,
        email: &str,
        code: &str,
    ) -> Result<bool> {
        let Some(credential) = self
            .store
            .find_totp(user_id)
            .await?
            .filter(|credential| credential.enabled_at.is_some())
        else {
            return Ok(false);
        };
        let code = code.trim();
        if looks_like_totp_code(code) {
            return self.check_totp_code(&credential, email, code).await;
        }
        self.store
            .use_backup_code(
                user_id,
                &self.backup_digest(user_id, code),
                truncate_to_micros(self.clock.now()),
            )
            .await
    }

    async fn check_totp_code(
        &self,
        credential: &TotpCredential,
        email: &str,
        code: &str,
    ) -> Result<bool> {
        let secret = self.keyring.open(SEAL_PURPOSE, &credential.secret_sealed)?;
        let now = u64::try_from(self.clock.now().timestamp()).unwrap_or(0);
        let Some(step) = totp_for(secret, email)?.check(code.trim(), now) else {
            return Ok(false);
        };
        self.store
            .claim_totp_step(credential.user_id, i64::try_from(step).unwrap_or(i64::MAX))
            .await
    }
}

pub fn invalid_code() -> Error {
    Error::unauthenticated("INVALID_CODE", "the code is not valid")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_codes_are_readable_and_normalize() {
        let codes = new_backup_codes();
        assert_eq!(codes.len(), 10);
        assert!(
            codes
                .iter()
                .all(|code| code.len() == 11 && code.as_bytes()[5] == b'-')
        );
        assert_eq!(normalize_backup_code(" AbCde-fGhjk "), "abcdefghjk");
        assert!(looks_like_totp_code("012345"));
        assert!(!looks_like_totp_code("abcde-fghjk"));
    }
}
