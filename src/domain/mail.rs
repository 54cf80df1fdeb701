//! Outgoing mail: the message, the port that delivers it, and the templates of the account
//! messages (kept in `templates/mail/`, rendered with `{{placeholder}}` substitution).

use super::auth::LinkPurpose;
use super::error::Result;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutgoingMail {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// A message to send. `Link` and `RegistrationAttempt` are decided and rendered by the
/// worker, off the request that caused them, so the request neither waits for the lookup nor
/// reveals by its timing whether a message was due.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MailJob {
    Rendered(OutgoingMail),
    /// A link for the account of `email`, if it has one that is due such a link.
    Link {
        email: String,
        purpose: LinkPurpose,
    },
    /// Tells the owner of `email` that someone tried to register it again.
    RegistrationAttempt {
        email: String,
    },
}

/// A mail job as it is queued: the job, and the request that queued it (to follow the request
/// into its jobs). Stored as the job's fields beside `request_id` and `traceparent`, so jobs
/// queued before these existed read as well.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedMail {
    #[serde(flatten)]
    pub job: MailJob,
    /// The `X-Request-ID` of the request that queued it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The W3C `traceparent` of the span that queued it, when traced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// Queues mail durably: once `send_later` answers, the message goes out even if this process
/// dies; delivery is retried in the background and never blocks the caller.
#[async_trait::async_trait]
pub trait Mailer: Send + Sync {
    async fn send_later(&self, job: MailJob) -> Result<()>;
}

/// A message the development outbox kept instead of sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptMail {
    pub mail: OutgoingMail,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// The development outbox, for operators: what would have been sent.
pub trait Outbox: Send + Sync {
    /// The newest messages, newest first.
    fn recent(&self) -> Vec<KeptMail>;
}

pub enum Template {
    VerifyEmail,
    ResetPassword,
    MagicLink,
    Invitation,
    /// Tells the owner of an account with 2FA that its password was reset.
    PasswordResetNotice,
    /// Tells the owner of an address that someone tried to register it again.
    RegistrationAttempt,
    /// Tells a user that a superuser turned their two-factor authentication off.
    TotpReset,
    /// The code that turns two-factor authentication on without a password.
    EnrolmentCode,
}

impl Template {
    fn parts(&self) -> (&'static str, &'static str, &'static str) {
        match self {
            Template::VerifyEmail => (
                "Confirm your email address",
                include_str!("../../templates/mail/verify_email.txt"),
                include_str!("../../templates/mail/verify_email.html"),
            ),
            Template::ResetPassword => (
                "Reset your password",
                include_str!("../../templates/mail/reset_password.txt"),
                include_str!("../../templates/mail/reset_password.html"),
            ),
            Template::MagicLink => (
                "Your sign-in link",
                include_str!("../../templates/mail/magic_link.txt"),
                include_str!("../../templates/mail/magic_link.html"),
            ),
            Template::Invitation => (
                "You are invited to join an organization",
                include_str!("../../templates/mail/invitation.txt"),
                include_str!("../../templates/mail/invitation.html"),
            ),
            Template::PasswordResetNotice => (
                "Your password was reset",
                include_str!("../../templates/mail/password_reset_notice.txt"),
                include_str!("../../templates/mail/password_reset_notice.html"),
            ),
            Template::RegistrationAttempt => (
                "Someone tried to register with your address",
                include_str!("../../templates/mail/registration_attempt.txt"),
                include_str!("../../templates/mail/registration_attempt.html"),
            ),
            Template::EnrolmentCode => (
                "Your code to turn on two-factor authentication",
                include_str!("../../templates/mail/enrolment_code.txt"),
                include_str!("../../templates/mail/enrolment_code.html"),
            ),
            Template::TotpReset => (
                "Two-factor authentication was turned off",
                include_str!("../../templates/mail/totp_reset.txt"),
                include_str!("../../templates/mail/totp_reset.html"),
            ),
        }
    }

    /// Renders the message for `to`, filling each `{{placeholder}}` of `values` (`name`
    /// falls back to "there").
    pub fn render(&self, to: &str, values: &[(&str, &str)]) -> OutgoingMail {
        let (subject, text, html) = self.parts();
        let fill = |template: &str, escape: fn(&str) -> String| {
            values
                .iter()
                .fold(template.to_owned(), |filled, (key, value)| {
                    let value = if *key == "name" && value.is_empty() {
                        "there"
                    } else {
                        value
                    };
                    filled.replace(&format!("{{{{{key}}}}}"), &escape(value))
                })
        };
        OutgoingMail {
            to: to.to_owned(),
            subject: subject.to_owned(),
            text: fill(text, str::to_owned),
            html: fill(html, escape_html),
        }
    }
}

fn escape_html(raw: &str) -> String {
    raw.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    /// Jobs queued before they carried their origin read as well, and the origin rides beside
    /// the job's own fields.
    #[test]
    fn queued_mail_reads_with_or_without_its_origin() {
        let old = r#"{"RegistrationAttempt":{"email":"a@example.com"}}"#;
        let queued: QueuedMail = serde_json::from_str(old).unwrap();
        assert_eq!(
            queued.job,
            MailJob::RegistrationAttempt {
                email: "a@example.com".into()
            }
        );
        assert_eq!((&queued.request_id, &queued.traceparent), (&None, &None));
        let traced = QueuedMail {
            request_id: Some("req-1".into()),
            ..queued
        };
        let text = serde_json::to_string(&traced).unwrap();
        assert_eq!(
            text,
            r#"{"RegistrationAttempt":{"email":"a@example.com"},"request_id":"req-1"}"#
        );
        assert_eq!(serde_json::from_str::<QueuedMail>(&text).unwrap(), traced);
    }

    use super::*;

    #[test]
    fn templates_fill_and_escape() {
        let mail = Template::ResetPassword.render(
            "a@example.com",
            &[
                ("name", "<Ada>"),
                ("link", "https://keel.test/reset-password?token=abc&x=1"),
                ("minutes", "60"),
            ],
        );
        assert!(mail.text.contains("<Ada>"));
        assert!(
            mail.text
                .contains("https://keel.test/reset-password?token=abc&x=1")
        );
        assert!(mail.text.contains("60 minutes"));
        assert!(mail.html.contains("&lt;Ada&gt;"));
        assert!(mail.html.contains("token=abc&amp;x=1"));
        assert!(!mail.text.contains("{{"));
        assert!(!mail.html.contains("{{"));
    }
}
