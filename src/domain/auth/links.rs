//! Flows driven by single-use links sent by mail: email verification, password reset and
//! magic-link sign-in. Requests for a link answer the same whether or not the email has an
//! account: the lookup, the token and the message happen later, in the mail queue, so neither
//! the answer nor its timing tells.

use super::session::ClientInfo;
use super::throttle::account_key;
use super::{AuthService, LoginOutcome};
use crate::domain::clock::truncate_to_micros;
use crate::domain::error::{Error, ErrorKind, Result};
use crate::domain::events::{EventKind, Origin};
use crate::domain::mail::{MailJob, OutgoingMail, Template};
use crate::domain::secret;
use crate::domain::user::{EmailAddress, User};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkPurpose {
    VerifyEmail,
    ResetPassword,
    MagicLink,
}

impl LinkPurpose {
    fn as_str(self) -> &'static str {
        match self {
            LinkPurpose::VerifyEmail => "verify_email",
            LinkPurpose::ResetPassword => "reset_password",
            LinkPurpose::MagicLink => "magic_link",
        }
    }

    fn lifetime(self) -> Duration {
        match self {
            LinkPurpose::VerifyEmail => Duration::hours(24),
            LinkPurpose::ResetPassword => Duration::hours(1),
            LinkPurpose::MagicLink => Duration::minutes(15),
        }
    }

    /// The page of the application the link opens.
    fn path(self) -> &'static str {
        match self {
            LinkPurpose::VerifyEmail => "/verify-email",
            LinkPurpose::ResetPassword => "/reset-password",
            LinkPurpose::MagicLink => "/magic-link",
        }
    }

    fn template(self) -> Template {
        match self {
            LinkPurpose::VerifyEmail => Template::VerifyEmail,
            LinkPurpose::ResetPassword => Template::ResetPassword,
            LinkPurpose::MagicLink => Template::MagicLink,
        }
    }
}

#[async_trait::async_trait]
pub trait OneTimeTokenStore: Send + Sync {
    /// Stores a new token and retires the user's earlier unused tokens of the same purpose.
    async fn issue_token(
        &self,
        digest: &[u8; 32],
        user_id: Uuid,
        purpose: &str,
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<()>;
    /// Spends a token: answers its user when it exists for `purpose`, unused and unexpired.
    async fn consume_token(
        &self,
        digest: &[u8; 32],
        purpose: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<Uuid>>;
    /// Deletes the tokens that expired before `cutoff`; answers how many.
    async fn delete_tokens_expired_before(&self, cutoff: DateTime<Utc>) -> Result<u64>;
}

fn invalid_link() -> Error {
    Error::invalid_argument(
        "INVALID_LINK",
        "the link is not valid: it expired, was already used, or a newer one was sent",
    )
}

impl AuthService {
    async fn link_mail(&self, user: &User, purpose: LinkPurpose) -> Result<OutgoingMail> {
        let token = secret::generate();
        let now = truncate_to_micros(self.clock.now());
        self.one_time_tokens
            .issue_token(
                &secret::digest(&token),
                user.id,
                purpose.as_str(),
                now,
                now + purpose.lifetime(),
            )
            .await?;
        let link = format!(
            "{}{}?token={token}",
            self.settings.link_base_url,
            purpose.path()
        );
        let minutes = purpose.lifetime().num_minutes().to_string();
        Ok(purpose.template().render(
            &user.email,
            &[
                ("name", &user.full_name),
                ("link", &link),
                ("minutes", &minutes),
            ],
        ))
    }

    /// The link mail due to `email`, if any: none for an unknown or inactive account, nor a
    /// verification for an address already verified.
    pub(super) async fn link_mail_for(
        &self,
        email: &str,
        purpose: LinkPurpose,
    ) -> Result<Option<OutgoingMail>> {
        let Ok(email) = EmailAddress::parse(email) else {
            return Ok(None);
        };
        let Some(credentials) = self.users.find_credentials_by_email(&email).await? else {
            return Ok(None);
        };
        let user = credentials.user;
        let due = user.is_active && !(purpose == LinkPurpose::VerifyEmail && user.email_verified);
        if !due {
            return Ok(None);
        }
        self.link_mail(&user, purpose).await.map(Some)
    }

    /// Mails a verification link to a new user. The link is stored before the answer, so that
    /// it is mailed ahead of any link asked for after it.
    pub(super) async fn send_verification(&self, user: &User) -> Result<()> {
        let mail = self.link_mail(user, LinkPurpose::VerifyEmail).await?;
        self.mailer.send_later(MailJob::Rendered(mail)).await
    }

    /// Queues the link mail for `email` after the rate limits; the answer never depends on
    /// whether the account exists. A missing or malformed address is refused with a field
    /// violation: that says nothing about accounts.
    async fn request_link(
        &self,
        email: &str,
        client: &ClientInfo,
        purpose: LinkPurpose,
    ) -> Result<()> {
        EmailAddress::parse(email).map_err(|violation| Error::invalid_fields(vec![violation]))?;
        self.admit_rate("mail", &account_key(email), client).await?;
        self.admit_mail_to(email).await?;
        let email = email.to_owned();
        self.mailer
            .send_later(MailJob::Link { email, purpose })
            .await
    }

    pub async fn resend_verification(&self, email: &str, client: &ClientInfo) -> Result<()> {
        self.request_link(email, client, LinkPurpose::VerifyEmail)
            .await
    }

    pub async fn request_password_reset(&self, email: &str, client: &ClientInfo) -> Result<()> {
        self.request_link(email, client, LinkPurpose::ResetPassword)
            .await
    }

    pub async fn request_magic_link(&self, email: &str, client: &ClientInfo) -> Result<()> {
        self.request_link(email, client, LinkPurpose::MagicLink)
            .await
    }

    async fn consume(&self, token: &str, purpose: LinkPurpose) -> Result<User> {
        let user_id = self
            .one_time_tokens
            .consume_token(
                &secret::digest(token.trim()),
                purpose.as_str(),
                truncate_to_micros(self.clock.now()),
            )
            .await?
            .ok_or_else(invalid_link)?;
        self.user(user_id).await
    }

    /// Records that a link from the mailbox proved the address. The first proof of a
    /// never-verified address ends everything made before it, since whoever registered the
    /// address may not own it (account pre-hijacking): sessions, API keys and any 2FA
    /// enrolment go. Answers whether this was the first proof.
    async fn prove_address(&self, user: &User, origin: &Origin) -> Result<bool> {
        if user.email_verified {
            return Ok(false);
        }
        let verified = User {
            email_verified: true,
            ..user.clone()
        };
        let event = self.user_event(EventKind::UserUpdated, origin, &verified);
        self.users
            .mark_email_verified(user.id, truncate_to_micros(self.clock.now()), &[event])
            .await?;
        self.forget_user(user.id).await?;
        self.revoke_sessions_of(user.id, None, origin).await?;
        self.api_keys.revoke_all_of(user.id, origin).await?;
        self.totp.remove(user, origin.clone()).await?;
        tracing::info!(user_id = %user.id, "address proven for the first time: earlier sessions, keys and 2FA ended");
        Ok(true)
    }

    pub async fn verify_email(&self, token: &str, client: &ClientInfo) -> Result<()> {
        let user = self.consume(token, LinkPurpose::VerifyEmail).await?;
        self.prove_address(&user, &Origin::user(user.id, client))
            .await?;
        tracing::info!(user_id = %user.id, "email verified");
        Ok(())
    }

    /// Sets a new password from a reset link (which also proves the address), signs out every
    /// session, revokes every API key and lifts a lockout; the owner of an account with 2FA is
    /// told by mail. The policy is checked before the link is spent, so a weak password costs
    /// nothing.
    pub async fn reset_password(
        &self,
        token: &str,
        new_password: &str,
        client: &ClientInfo,
    ) -> Result<()> {
        self.hasher.admit()?;
        self.check_new_password("new_password", new_password)
            .await?;
        let user = self.consume(token, LinkPurpose::ResetPassword).await?;
        let origin = Origin::user(user.id, client);
        let hash = self.hasher.hash(new_password).await?;
        self.prove_address(&user, &origin).await?;
        let reset = self.user_event(EventKind::UserPasswordReset, &origin, &user);
        self.users
            .update_password_hash(
                user.id,
                &hash,
                truncate_to_micros(self.clock.now()),
                &[reset],
            )
            .await?;
        self.forget_user(user.id).await?;
        self.revoke_sessions_of(user.id, None, &origin).await?;
        self.api_keys.revoke_all_of(user.id, &origin).await?;
        self.clear_lockout(&account_key(&user.email)).await?;
        if self.totp.is_enabled(user.id).await? {
            let notice = Template::PasswordResetNotice
                .render(&user.email, &[("name", user.full_name.as_str())]);
            self.mailer.send_later(MailJob::Rendered(notice)).await?;
        }
        tracing::info!(user_id = %user.id, "password reset");
        Ok(())
    }

    /// Signs in with a magic link (which also proves the email address). On the first proof
    /// of a never-verified address, the password set at registration is replaced by an
    /// unknown one as well: whoever chose it may not own the address, and the owner sets their
    /// own by a reset. An account with two-factor authentication still needs its second factor.
    pub async fn verify_magic_link(&self, token: &str, client: ClientInfo) -> Result<LoginOutcome> {
        let user = self.consume(token, LinkPurpose::MagicLink).await?;
        if !user.is_active {
            return Err(super::account_disabled());
        }
        self.refuse_if_sso_enforced(&user.email).await?;
        if self
            .prove_address(&user, &Origin::user(user.id, &client))
            .await?
        {
            let unknown = self.hasher.hash(&secret::generate()).await?;
            self.users
                .update_password_hash(user.id, &unknown, truncate_to_micros(self.clock.now()), &[])
                .await?;
        }
        if self.totp.is_enabled(user.id).await? {
            return self.start_mfa(&user, client).await;
        }
        Ok(LoginOutcome::SignedIn(
            self.open_session(&user, client).await?,
        ))
    }

    /// Refuses sign-in to an unverified address when the instance requires verification.
    pub(super) fn require_verified(&self, user: &User) -> Result<()> {
        if self.settings.require_verified_email && !user.email_verified {
            return Err(Error::new(
                ErrorKind::FailedPrecondition,
                "EMAIL_NOT_VERIFIED",
                "confirm your email address first: see the message we sent, or ask for a new one",
            ));
        }
        Ok(())
    }
}
