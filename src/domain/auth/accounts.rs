//! Account changes: the caller's profile, second-factor changes behind the sign-in defences,
//! and the platform administration of accounts (soft deletion, superuser rights). Each drops
//! the cached user record, so the change applies on the user's next request.

use super::AuthService;
use super::throttle::account_key;
use crate::domain::clock::truncate_to_micros;
use crate::domain::error::{Error, ErrorKind, Missing, Result};
use crate::domain::events::{EventKind, Origin, SignInFailureData};
use crate::domain::mail::{MailJob, Template};
use crate::domain::principal::Principal;
use crate::domain::totp::{EnrolmentProof, Reauthentication};
use crate::domain::user::{User, parse_full_name};
use rand::Rng;
use std::future::Future;
use uuid::Uuid;

const ENROLMENT_PURPOSE: &str = "totp_enrolment";
const ENROLMENT_CODE_MINUTES: i64 = 10;

fn cannot_change_self() -> Error {
    Error::new(
        ErrorKind::FailedPrecondition,
        "CANNOT_CHANGE_SELF",
        "superusers cannot delete themselves or drop their own rights; ask another superuser",
    )
}

impl AuthService {
    /// Changes the caller's display name.
    pub async fn update_profile(
        &self,
        caller: &Principal,
        full_name: Option<&str>,
    ) -> Result<User> {
        caller.session_id()?;
        if let Some(full_name) = full_name {
            let full_name = parse_full_name(full_name)
                .map_err(|violation| Error::invalid_fields(vec![violation]))?;
            let updated = User {
                full_name: full_name.clone(),
                ..caller.user.as_ref().clone()
            };
            let event = self.user_event(EventKind::UserUpdated, &caller.into(), &updated);
            self.users
                .update_full_name(
                    caller.user.id,
                    &full_name,
                    truncate_to_micros(self.clock.now()),
                    &[event],
                )
                .await?;
            self.forget_user(caller.user.id).await?;
        }
        self.load_user(caller.user.id).await
    }

    /// Turns two-factor authentication on after a password or mailed-code check that counts
    /// towards the account's lockout, like a sign-in.
    pub async fn enable_totp(
        &self,
        caller: &Principal,
        code: &str,
        password: &str,
        email_code: &str,
    ) -> Result<()> {
        self.reauthenticated(caller, async {
            let proof = if password.is_empty() && !email_code.trim().is_empty() {
                self.spend_enrolment_code(caller, email_code).await?;
                EnrolmentProof::MailedCode
            } else {
                EnrolmentProof::Password(password)
            };
            self.totp.enable(caller, code, proof).await
        })
        .await
    }

    /// Mails a six-digit code that `enable_totp` takes instead of the password.
    pub async fn send_enrolment_code(&self, caller: &Principal) -> Result<()> {
        caller.session_id()?;
        let user = &caller.user;
        if !user.email_verified {
            return Err(Error::new(
                ErrorKind::FailedPrecondition,
                "EMAIL_NOT_VERIFIED",
                "verify your email address first",
            ));
        }
        self.admit_mail_to(&user.email).await?;
        let code = format!("{:06}", rand::rng().random_range(0..1_000_000));
        let now = truncate_to_micros(self.clock.now());
        self.one_time_tokens
            .issue_token(
                &self.enrolment_digest(user.id, &code),
                user.id,
                ENROLMENT_PURPOSE,
                now,
                now + chrono::Duration::minutes(ENROLMENT_CODE_MINUTES),
            )
            .await?;
        let minutes = ENROLMENT_CODE_MINUTES.to_string();
        let mail = Template::EnrolmentCode.render(
            &user.email,
            &[
                ("name", user.full_name.as_str()),
                ("code", code.as_str()),
                ("minutes", minutes.as_str()),
            ],
        );
        self.mailer.send_later(MailJob::Rendered(mail)).await
    }

    /// A six-digit code is no secret on its own: its digest is keyed with the instance secret
    /// (a copy of the database cannot test the million candidates) and bound to its user (no
    /// code is spent by another account); guesses meet the lockout.
    fn enrolment_digest(&self, user_id: Uuid, code: &str) -> [u8; 32] {
        self.keyring.mac(
            ENROLMENT_PURPOSE,
            [user_id.as_bytes().as_slice(), code.as_bytes()]
                .concat()
                .as_slice(),
        )
    }

    /// Spends the caller's mailed enrolment code; a wrong one is a failed re-authentication.
    async fn spend_enrolment_code(&self, caller: &Principal, email_code: &str) -> Result<()> {
        let owner = self
            .one_time_tokens
            .consume_token(
                &self.enrolment_digest(caller.user.id, email_code.trim()),
                ENROLMENT_PURPOSE,
                truncate_to_micros(self.clock.now()),
            )
            .await?;
        if owner != Some(caller.user.id) {
            return Err(Error::invalid_argument(
                "REAUTHENTICATION_FAILED",
                "the mailed code is not valid: it expired, was used, or a newer one was sent",
            ));
        }
        Ok(())
    }

    /// Turns two-factor authentication off after a password or code check that counts
    /// towards the account's lockout, like a sign-in.
    pub async fn disable_totp(
        &self,
        caller: &Principal,
        proof: Reauthentication<'_>,
    ) -> Result<()> {
        self.reauthenticated(caller, self.totp.disable(caller, proof))
            .await
    }

    /// New backup codes after a password or code check that counts towards the lockout.
    pub async fn regenerate_backup_codes(
        &self,
        caller: &Principal,
        proof: Reauthentication<'_>,
    ) -> Result<Vec<String>> {
        self.reauthenticated(caller, self.totp.regenerate_backup_codes(caller, proof))
            .await
    }

    /// Runs a re-authenticated change behind the sign-in defences: refused while the account
    /// is locked or rate limited, a failed proof counts as a failed sign-in.
    async fn reauthenticated<T>(
        &self,
        caller: &Principal,
        change: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        self.hasher.admit()?;
        let account = account_key(&caller.user.email);
        let origin = Origin::from(caller);
        self.admit_attempt(&account, &origin.client).await?;
        match change.await {
            Err(error) if error.reason == "REAUTHENTICATION_FAILED" => {
                let user = &caller.user;
                let failure =
                    SignInFailureData::new(Some(user.id), &user.email, "reauthentication_failed");
                self.record_failure(&account, &origin, failure).await?;
                Err(error)
            }
            Err(error) => {
                self.release_attempt(&account).await?;
                Err(error)
            }
            Ok(value) => {
                self.record_success(&account).await?;
                Ok(value)
            }
        }
    }

    /// The account a superuser acts on, never their own.
    async fn other_user(&self, caller: &Principal, user_id: Uuid) -> Result<User> {
        if user_id == caller.user.id {
            return Err(cannot_change_self());
        }
        self.users
            .find_user(user_id)
            .await?
            .ok_or_else(|| Missing::User.into())
    }

    /// Deactivates an account and revokes its sessions; its API keys stop working with it.
    pub async fn delete_user(&self, caller: &Principal, user_id: Uuid) -> Result<()> {
        let user = self.other_user(caller, user_id).await?;
        let origin = Origin::from(caller);
        let deleted = User {
            is_active: false,
            ..user.clone()
        };
        let event = self.user_event(EventKind::UserDeleted, &origin, &deleted);
        self.users
            .deactivate_user(user.id, truncate_to_micros(self.clock.now()), &[event])
            .await?;
        self.forget_user(user.id).await?;
        self.revoke_sessions_of(user.id, None, &origin).await?;
        tracing::info!(user_id = %user.id, by = %caller.user.id, "user deleted");
        Ok(())
    }

    /// Turns a user's 2FA off for them (authenticator and backup codes lost), tells them by
    /// mail, and logs who did it.
    pub async fn reset_totp(&self, caller: &Principal, user_id: Uuid) -> Result<()> {
        let user = self.other_user(caller, user_id).await?;
        if !self.totp.is_enabled(user.id).await? {
            return Err(Error::new(
                ErrorKind::FailedPrecondition,
                "TOTP_NOT_ENABLED",
                "this user has no two-factor authentication to reset",
            ));
        }
        self.totp.remove(&user, caller).await?;
        let notice = Template::TotpReset.render(&user.email, &[("name", user.full_name.as_str())]);
        if let Err(error) = self.mailer.send_later(MailJob::Rendered(notice)).await {
            tracing::warn!(user_id = %user.id, %error, "2FA reset notice not queued");
        }
        tracing::warn!(user_id = %user.id, by = %caller.user.id, "two-factor authentication reset by a superuser");
        Ok(())
    }

    /// Grants or revokes platform superuser rights.
    pub async fn set_superuser(
        &self,
        caller: &Principal,
        user_id: Uuid,
        is_superuser: bool,
    ) -> Result<User> {
        let user = self.other_user(caller, user_id).await?;
        let kind = if is_superuser {
            EventKind::UserSuperuserGranted
        } else {
            EventKind::UserSuperuserRevoked
        };
        let changed = User {
            is_superuser,
            ..user.clone()
        };
        let events: Vec<_> = (user.is_superuser != is_superuser)
            .then(|| self.user_event(kind, &caller.into(), &changed))
            .into_iter()
            .collect();
        self.users
            .set_superuser(
                user.id,
                is_superuser,
                truncate_to_micros(self.clock.now()),
                &events,
            )
            .await?;
        self.forget_user(user.id).await?;
        tracing::info!(user_id = %user.id, by = %caller.user.id, is_superuser, "superuser rights changed");
        self.load_user(user.id).await
    }
}
