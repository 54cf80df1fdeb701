//! Passwords: the policy a new password must satisfy and the hashing port.

use super::error::{FieldViolation, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordCheck {
    Mismatch,
    Match,
    /// Matches, but the stored hash uses a legacy algorithm or old parameters.
    MatchNeedsRehash,
}

/// Slow, salted password hashing. Implementations bound how many hashes run at once so that a
/// login flood cannot starve other requests.
#[async_trait::async_trait]
pub trait PasswordHasher: Send + Sync {
    /// Refuses at once (`SERVER_BUSY`) while as many hashes wait as may: called first by the
    /// calls that end in a hash, so that turning one away costs nothing else (no lookup, no
    /// rate-limit counter, no lockout attempt).
    fn admit(&self) -> Result<()>;
    async fn hash(&self, password: &str) -> Result<String>;
    async fn verify(&self, password: &str, stored_hash: &str) -> Result<PasswordCheck>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordPolicy {
    pub min_length: usize,
    pub max_length: usize,
    pub require_lowercase: bool,
    pub require_uppercase: bool,
    pub require_digit: bool,
    pub require_symbol: bool,
}

/// Passwords known from breaches (ASVS 2.1.7), looked up where the password never leaves
/// Keel.
#[async_trait::async_trait]
pub trait BreachedPasswords: Send + Sync {
    async fn is_breached(&self, password: &str) -> Result<bool>;
}

pub fn breached(field: &str) -> FieldViolation {
    FieldViolation::new(
        field,
        "PASSWORD_BREACHED",
        "appears in a list of passwords exposed in data breaches: choose another",
    )
}

impl PasswordPolicy {
    /// Every rule `password` breaks, as violations of `field`.
    pub fn check(&self, field: &str, password: &str) -> Vec<FieldViolation> {
        let length = password.chars().count();
        let mut violations = Vec::new();
        let mut broken = |reason: &'static str, description: String| {
            violations.push(FieldViolation::new(field, reason, description));
        };
        if length < self.min_length {
            broken(
                "PASSWORD_TOO_SHORT",
                format!("must be at least {} characters", self.min_length),
            );
        }
        if length > self.max_length {
            broken(
                "PASSWORD_TOO_LONG",
                format!("must be at most {} characters", self.max_length),
            );
        }
        if self.require_lowercase && !password.chars().any(char::is_lowercase) {
            broken(
                "PASSWORD_NEEDS_LOWERCASE",
                "must contain a lower-case letter".into(),
            );
        }
        if self.require_uppercase && !password.chars().any(char::is_uppercase) {
            broken(
                "PASSWORD_NEEDS_UPPERCASE",
                "must contain an upper-case letter".into(),
            );
        }
        if self.require_digit && !password.chars().any(|c| c.is_ascii_digit()) {
            broken("PASSWORD_NEEDS_DIGIT", "must contain a digit".into());
        }
        if self.require_symbol && password.chars().all(char::is_alphanumeric) {
            broken("PASSWORD_NEEDS_SYMBOL", "must contain a symbol".into());
        }
        violations
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ASVS 4 (2.1.1, 2.1.2, 2.1.9), Keel's default: at least 12 characters, up to 128, no
    /// composition rules.
    fn asvs() -> PasswordPolicy {
        PasswordPolicy {
            min_length: 12,
            max_length: 128,
            require_lowercase: false,
            require_uppercase: false,
            require_digit: false,
            require_symbol: false,
        }
    }

    #[test]
    fn length_policy_wants_length_not_composition() {
        let policy = asvs();
        assert!(policy.check("password", "Str0ng!Passw0rd").is_empty());
        assert!(policy.check("password", "correct horse battery").is_empty());
        assert_eq!(
            policy.check("password", "Sh0rt!pass")[0].reason,
            "PASSWORD_TOO_SHORT"
        );
    }

    #[test]
    fn every_broken_rule_is_reported() {
        let policy = PasswordPolicy {
            min_length: 8,
            require_lowercase: true,
            require_uppercase: true,
            require_digit: true,
            require_symbol: true,
            ..asvs()
        };
        let reasons: Vec<_> = policy
            .check("password", "abc")
            .into_iter()
            .map(|violation| violation.reason)
            .collect();
        assert_eq!(
            reasons,
            [
                "PASSWORD_TOO_SHORT",
                "PASSWORD_NEEDS_UPPERCASE",
                "PASSWORD_NEEDS_DIGIT",
                "PASSWORD_NEEDS_SYMBOL"
            ]
        );
    }
}
