//! Users: the account record, its parsed inputs and its store port.

use super::error::{Error, FieldViolation, Result};
use super::events::Event;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A syntactically valid email address, trimmed and lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct EmailAddress(String);

impl EmailAddress {
    pub const MAX_LENGTH: usize = 254;

    pub fn parse(raw: &str) -> Result<Self, FieldViolation> {
        let normalized = raw.trim().to_lowercase();
        let invalid = |description: &str| {
            FieldViolation::new("email", "INVALID_EMAIL", description.to_owned())
        };
        if normalized.is_empty() {
            return Err(invalid("is required"));
        }
        if normalized.len() > Self::MAX_LENGTH {
            return Err(invalid("must be at most 254 characters"));
        }
        let Some((local, domain)) = normalized.rsplit_once('@') else {
            return Err(invalid("must look like name@example.com"));
        };
        let domain_ok = domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..");
        let no_bad_chars = !normalized
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ',' | ';'));
        if local.is_empty() || local.contains('@') || !domain_ok || !no_bad_chars {
            return Err(invalid("must look like name@example.com"));
        }
        Ok(Self(normalized))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A display name, possibly empty.
pub fn parse_full_name(raw: &str) -> Result<String, FieldViolation> {
    super::text::bounded_text(
        "full_name",
        "INVALID_FULL_NAME",
        raw,
        200,
        super::text::Blank::Allowed,
    )
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub id: Uuid,
    pub email: String,
    pub full_name: String,
    pub email_verified: bool,
    pub is_superuser: bool,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A user together with the hash of their password, for sign-in only.
#[derive(Debug, Clone)]
pub struct UserCredentials {
    pub user: User,
    pub password_hash: String,
}

/// Filters of the user directory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserQuery {
    /// Case-insensitive part of the email or the name; empty for all.
    pub text: String,
    pub is_active: Option<bool>,
    pub is_superuser: Option<bool>,
}

#[async_trait::async_trait]
pub trait UserStore: Send + Sync {
    /// Fails with `AlreadyExists`/`EMAIL_TAKEN` when the email is taken.
    ///
    /// Every change writes `events` in its transaction (when it changed a row).
    async fn insert_user(&self, user: &User, password_hash: &str, events: &[Event]) -> Result<()>;
    async fn find_user(&self, id: Uuid) -> Result<Option<User>>;
    async fn find_password_hash(&self, id: Uuid) -> Result<Option<String>>;
    async fn find_credentials_by_email(
        &self,
        email: &EmailAddress,
    ) -> Result<Option<UserCredentials>>;
    async fn mark_email_verified(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
        events: &[Event],
    ) -> Result<()>;
    async fn update_password_hash(
        &self,
        id: Uuid,
        password_hash: &str,
        now: DateTime<Utc>,
        events: &[Event],
    ) -> Result<()>;
    /// Users matching `query` after `after` (by id).
    async fn list_users(
        &self,
        query: &UserQuery,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<User>>;
    async fn update_full_name(
        &self,
        id: Uuid,
        full_name: &str,
        now: DateTime<Utc>,
        events: &[Event],
    ) -> Result<()>;
    async fn set_superuser(
        &self,
        id: Uuid,
        is_superuser: bool,
        now: DateTime<Utc>,
        events: &[Event],
    ) -> Result<()>;
    async fn deactivate_user(&self, id: Uuid, now: DateTime<Utc>, events: &[Event]) -> Result<()>;
}

pub const EMAIL_TAKEN: &str = "EMAIL_TAKEN";

pub fn email_taken() -> Error {
    Error::already_exists(EMAIL_TAKEN, "an account with this email already exists")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalized() {
        let email = EmailAddress::parse("  Ada@Example.COM ").map(|email| email.0);
        assert_eq!(email, Ok("ada@example.com".to_owned()));
    }

    #[test]
    fn malformed_emails_are_rejected() {
        for raw in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@example",
            "a b@example.com",
            "ada@.com",
            "ada@example..com",
        ] {
            assert!(EmailAddress::parse(raw).is_err(), "{raw:?} was accepted");
        }
    }
}
