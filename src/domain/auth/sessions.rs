//! The caller's own sessions: listing, statistics, revocation, password change, and the purge
//! of ended sessions.

use super::device::{self, Device};
use super::throttle::account_key;
use super::{AuthService, Session};
use crate::domain::clock::truncate_to_micros;
use crate::domain::error::{Error, FieldViolation, Missing, Result};
use crate::domain::events::{EventKind, Origin, SignInFailureData};
use crate::domain::password::PasswordCheck;
use crate::domain::principal::Principal;
use chrono::{DateTime, Duration, Utc};
use std::collections::BTreeMap;
use uuid::Uuid;

/// A session as its owner sees it.
#[derive(Debug, Clone)]
pub struct SessionView {
    pub session: Session,
    pub device: Device,
    pub is_current: bool,
    pub is_active: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub active: usize,
    pub revoked: usize,
    pub expired: usize,
    pub active_by_device_type: BTreeMap<&'static str, usize>,
    pub last_activity: Option<DateTime<Utc>>,
}

impl AuthService {
    /// The caller's sessions, newest first; only active ones unless `include_inactive`.
    pub async fn list_sessions(
        &self,
        principal: &Principal,
        include_inactive: bool,
    ) -> Result<Vec<SessionView>> {
        let current = principal.session_id()?;
        let now = self.clock.now();
        let sessions = self.sessions.list_sessions(principal.user.id).await?;
        Ok(sessions
            .into_iter()
            .map(|session| SessionView {
                device: device::describe(session.user_agent.as_deref()),
                is_current: session.id == current,
                is_active: session.is_live(now),
                session,
            })
            .filter(|view| include_inactive || view.is_active)
            .collect())
    }

    pub async fn session_stats(&self, principal: &Principal) -> Result<SessionStats> {
        let mut stats = SessionStats::default();
        for view in self.list_sessions(principal, true).await? {
            let session = &view.session;
            if view.is_active {
                stats.active += 1;
                *stats
                    .active_by_device_type
                    .entry(view.device.device_type)
                    .or_default() += 1;
            } else if session.revoked_at.is_some() {
                stats.revoked += 1;
            } else {
                stats.expired += 1;
            }
            stats.last_activity = stats.last_activity.max(Some(session.last_used_at));
        }
        Ok(stats)
    }

    /// Revokes one of the caller's sessions. Another user's session answers not found, so
    /// that session ids reveal nothing.
    pub async fn revoke_own_session(&self, principal: &Principal, session_id: Uuid) -> Result<()> {
        let session = self
            .sessions
            .find_session(session_id)
            .await?
            .filter(|session| session.user_id == principal.user.id)
            .ok_or(Missing::Session)?;
        self.revoke_session(session.id, session.user_id, &principal.into())
            .await
    }

    /// Revokes every session of the caller, or every other one with `keep_current`.
    pub async fn revoke_all_sessions(
        &self,
        principal: &Principal,
        keep_current: bool,
    ) -> Result<usize> {
        let current = principal.session_id()?;
        let keep = keep_current.then_some(current);
        self.revoke_sessions_of(principal.user.id, keep, &principal.into())
            .await
    }

    pub(super) async fn revoke_sessions_of(
        &self,
        user_id: Uuid,
        keep: Option<Uuid>,
        origin: &Origin,
    ) -> Result<usize> {
        let now = truncate_to_micros(self.clock.now());
        let event =
            |session_id| self.session_event(EventKind::SessionRevoked, origin, session_id, user_id);
        let revoked = self
            .sessions
            .revoke_user_sessions(user_id, keep, now, &event)
            .await?;
        let generation = self.forget_user(user_id).await?;
        for session_id in &revoked {
            self.mark_revoked(*session_id, generation).await?;
        }
        tracing::info!(user_id = %user_id, count = revoked.len(), "sessions revoked");
        Ok(revoked.len())
    }

    /// Changes the caller's password after checking the current one, then signs out every
    /// other session; answers how many.
    pub async fn change_password(
        &self,
        principal: &Principal,
        current_password: &str,
        new_password: &str,
    ) -> Result<usize> {
        let current_session = principal.session_id()?;
        self.check_new_password("new_password", new_password)
            .await?;
        self.hasher.admit()?;
        // Guessing the current password from a stolen session meets the sign-in defences.
        let account = account_key(&principal.user.email);
        let origin = Origin::from(principal);
        self.admit_attempt(&account, &origin.client).await?;
        let check = self
            .judged(&account, async {
                let stored_hash = self
                    .users
                    .find_password_hash(principal.user.id)
                    .await?
                    .ok_or_else(|| {
                        Error::unauthenticated("USER_NOT_FOUND", "the user no longer exists")
                    })?;
                self.hasher.verify(current_password, &stored_hash).await
            })
            .await?;
        if check == PasswordCheck::Mismatch {
            let user = &principal.user;
            let failure = SignInFailureData::new(Some(user.id), &user.email, "wrong_password");
            self.record_failure(&account, &origin, failure).await?;
            return Err(Error {
                violations: vec![FieldViolation::new(
                    "current_password",
                    "WRONG_PASSWORD",
                    "is not the current password",
                )],
                ..Error::invalid_argument("WRONG_PASSWORD", "the current password is wrong")
            });
        }
        self.record_success(&account).await?;
        let hash = self.hasher.hash(new_password).await?;
        let changed = self.user_event(EventKind::UserPasswordChanged, &origin, &principal.user);
        self.users
            .update_password_hash(
                principal.user.id,
                &hash,
                truncate_to_micros(self.clock.now()),
                &[changed],
            )
            .await?;
        self.forget_user(principal.user.id).await?;
        tracing::info!(user_id = %principal.user.id, "password changed");
        self.revoke_sessions_of(principal.user.id, Some(current_session), &origin)
            .await
    }

    /// Records the sessions that expired since the last look (`session.expired`); the
    /// cleanup job calls it.
    pub async fn record_expired_sessions(&self) -> Result<u64> {
        let origin = Origin::system();
        let event = |session_id, user_id| {
            self.session_event(EventKind::SessionExpired, &origin, session_id, user_id)
        };
        let now = truncate_to_micros(self.clock.now());
        self.sessions.record_expired_sessions(now, &event).await
    }

    /// Deletes sessions that ended (expired or revoked) more than `retention` ago.
    pub async fn purge_ended_sessions(&self, retention: Duration) -> Result<u64> {
        let cutoff = truncate_to_micros(self.clock.now() - retention);
        let deleted = self.sessions.delete_sessions_ended_before(cutoff).await?;
        if deleted > 0 {
            tracing::info!(deleted, "ended sessions purged");
        }
        Ok(deleted)
    }

    /// Deletes mailed-link and enrolment tokens that expired more than `retention` ago (a
    /// spent or expired link answers the same without its row).
    pub async fn purge_expired_links(&self, retention: Duration) -> Result<u64> {
        let cutoff = truncate_to_micros(self.clock.now() - retention);
        let deleted = self
            .one_time_tokens
            .delete_tokens_expired_before(cutoff)
            .await?;
        if deleted > 0 {
            tracing::info!(deleted, "expired link tokens purged");
        }
        Ok(deleted)
    }
}
