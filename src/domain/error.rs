//! The one error type of every use case: a closed set of kinds, a stable machine-readable reason
//! and optional field violations. `api::status` maps it to gRPC and HTTP in one place.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    Unauthenticated,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
    Internal,
}

/// One invalid input field, named by its proto (snake_case) path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    /// Upper snake case for the domain's rules (`WEAK_PASSWORD`); the rule id (`string.email`)
    /// for the contract's `buf.validate` rules.
    pub reason: Cow<'static, str>,
    pub description: String,
}

impl FieldViolation {
    pub fn new(
        field: &str,
        reason: impl Into<Cow<'static, str>>,
        description: impl Into<String>,
    ) -> Self {
        Self {
            field: field.to_owned(),
            reason: reason.into(),
            description: description.into(),
        }
    }
}

/// The field violations of one request, collected so that it is refused once with all of them.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// The value of a valid field; records the violation of an invalid one.
    pub fn check<T>(&mut self, parsed: Result<T, FieldViolation>) -> Option<T> {
        parsed.map_err(|violation| self.0.push(violation)).ok()
    }

    /// Applies an optional change (a partial update) to `slot` when it is valid.
    pub fn update<T>(&mut self, slot: &mut T, change: Option<Result<T, FieldViolation>>) {
        if let Some(value) = change.and_then(|parsed| self.check(parsed)) {
            *slot = value;
        }
    }

    pub fn push(&mut self, violation: FieldViolation) {
        self.0.push(violation);
    }

    /// `INVALID_ARGUMENT` with every violation recorded, if any.
    pub fn finish(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(self.into_error())
        }
    }

    /// The refusal, once a field was found invalid.
    pub fn into_error(self) -> Error {
        Error::invalid_fields(self.0)
    }
}

type Source = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
pub struct Error {
    pub kind: ErrorKind,
    /// Stable, upper snake case (`EMAIL_TAKEN`); clients branch on it, never on the message.
    pub reason: &'static str,
    /// Lower case, no trailing punctuation, safe to show to the caller.
    pub message: String,
    pub violations: Vec<FieldViolation>,
    pub retry_after: Option<Duration>,
    /// The cause of an internal error: logged, never sent to the caller.
    pub source: Option<Source>,
}

impl Error {
    pub fn new(kind: ErrorKind, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            reason,
            message: message.into(),
            violations: Vec::new(),
            retry_after: None,
            source: None,
        }
    }

    pub fn invalid_argument(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, reason, message)
    }

    /// An invalid request with one violation per bad field.
    pub fn invalid_fields(violations: Vec<FieldViolation>) -> Self {
        let message = violations
            .iter()
            .map(|violation| format!("{}: {}", violation.field, violation.description))
            .collect::<Vec<_>>()
            .join("; ");
        Self {
            violations,
            ..Self::invalid_argument("INVALID_FIELDS", message)
        }
    }

    pub fn not_found(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, reason, message)
    }

    pub fn already_exists(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::AlreadyExists, reason, message)
    }

    pub fn unauthenticated(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unauthenticated, reason, message)
    }

    pub fn permission_denied(reason: &'static str, message: impl Into<String>) -> Self {
        Self::new(ErrorKind::PermissionDenied, reason, message)
    }

    pub fn unavailable(reason: &'static str, source: impl Into<Source>) -> Self {
        Self {
            source: Some(source.into()),
            ..Self::new(
                ErrorKind::Unavailable,
                reason,
                "a backing service is unavailable, try again",
            )
        }
    }

    /// An unexpected failure; `source` is logged and the caller sees a generic message.
    pub fn internal(source: impl Into<Source>) -> Self {
        Self {
            source: Some(source.into()),
            ..Self::new(ErrorKind::Internal, "INTERNAL", "internal error")
        }
    }
}

/// Something a request names that does not exist, or that the caller may not know of (the
/// same answer, so that existence does not leak).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    User,
    Session,
    ApiKey,
    Organization,
    Member,
    Team,
    TeamMember,
    Invitation,
    Integration,
    LlmProvider,
    Role,
    DeadLetter,
    AuditEntry,
    Webhook,
    WebhookDelivery,
    Notification,
    File,
    Upload,
    Identity,
    Passkey,
}

impl From<Missing> for Error {
    fn from(missing: Missing) -> Self {
        let (reason, message) = match missing {
            Missing::User => ("USER_NOT_FOUND", "no such user"),
            Missing::Session => ("SESSION_NOT_FOUND", "no such session"),
            Missing::ApiKey => ("API_KEY_NOT_FOUND", "no such API key"),
            Missing::Organization => ("ORGANIZATION_NOT_FOUND", "no such organization"),
            Missing::Member => ("MEMBER_NOT_FOUND", "no such member in this organization"),
            Missing::Team => ("TEAM_NOT_FOUND", "no such team"),
            Missing::TeamMember => ("TEAM_MEMBER_NOT_FOUND", "no such member in this team"),
            Missing::Invitation => ("INVITATION_NOT_FOUND", "no such invitation"),
            Missing::LlmProvider => (
                "LLM_PROVIDER_NOT_FOUND",
                "no such LLM provider in this organization",
            ),
            Missing::Integration => (
                "INTEGRATION_NOT_FOUND",
                "no such integration in this organization",
            ),
            Missing::Role => ("ROLE_NOT_FOUND", "no such role in this organization"),
            Missing::DeadLetter => ("DEAD_LETTER_NOT_FOUND", "no such dead letter"),
            Missing::AuditEntry => ("AUDIT_LOG_NOT_FOUND", "no such audit log entry"),
            Missing::Webhook => ("WEBHOOK_NOT_FOUND", "no such webhook in this organization"),
            Missing::WebhookDelivery => (
                "WEBHOOK_DELIVERY_NOT_FOUND",
                "no such delivery of this webhook",
            ),
            Missing::Notification => ("NOTIFICATION_NOT_FOUND", "no such notification"),
            Missing::File => ("FILE_NOT_FOUND", "no such file"),
            Missing::Upload => ("UPLOAD_NOT_FOUND", "no such upload, or it has expired"),
            Missing::Identity => (
                "IDENTITY_NOT_FOUND",
                "no such identity linked to your account",
            ),
            Missing::Passkey => ("PASSKEY_NOT_FOUND", "no such passkey on your account"),
        };
        Error::not_found(reason, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{} ({})", self.message, self.reason)?;
        if let Some(source) = &self.source {
            write!(formatter, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|source| source as &(dyn std::error::Error + 'static))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
