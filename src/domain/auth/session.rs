//! Sessions: one per sign-in, carried by an access token (`sid`) and a chain of single-use
//! refresh tokens.

use crate::domain::error::Result;
use crate::domain::events::Event;
use chrono::{DateTime, Utc};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: Uuid,
    pub user_id: Uuid,
    pub user_agent: Option<String>,
    pub ip_address: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl Session {
    pub fn is_live(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at > now
    }
}

/// A stored refresh token, found by the digest of its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshTokenRecord {
    pub session_id: Uuid,
    pub spent: bool,
}

/// Where a request came from: the client's address and agent, and the request's id.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientInfo {
    pub ip_address: Option<String>,
    pub user_agent: Option<String>,
    /// `X-Request-ID` (the client's, or one Keel made up), carried into the events the request
    /// wrote and their webhook deliveries; not part of the audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

#[async_trait::async_trait]
pub trait SessionStore: Send + Sync {
    /// Stores a new session with its first refresh token (and `events`, in its transaction).
    async fn insert_session(
        &self,
        session: &Session,
        refresh_digest: &[u8; 32],
        events: &[Event],
    ) -> Result<()>;
    async fn find_session(&self, id: Uuid) -> Result<Option<Session>>;
    async fn find_refresh_token(&self, digest: &[u8; 32]) -> Result<Option<RefreshTokenRecord>>;
    /// Spends `old_digest` and stores `new_digest` for the same session, extending its expiry.
    /// Answers false, changing nothing, when `old_digest` was already spent (a concurrent
    /// refresh won the race).
    async fn rotate_refresh_token(
        &self,
        session_id: Uuid,
        old_digest: &[u8; 32],
        new_digest: &[u8; 32],
        now: DateTime<Utc>,
        expires_at: DateTime<Utc>,
    ) -> Result<bool>;
    /// Revokes a live session, writing `events` with the change (none when it was revoked
    /// already).
    async fn revoke_session(&self, id: Uuid, now: DateTime<Utc>, events: &[Event]) -> Result<()>;
    /// Every session of the user, revoked and expired ones included, newest first.
    async fn list_sessions(&self, user_id: Uuid) -> Result<Vec<Session>>;
    /// Revokes every live session of the user but `keep`, writing the event `revoked` makes
    /// of each; answers the ids it revoked.
    async fn revoke_user_sessions(
        &self,
        user_id: Uuid,
        keep: Option<Uuid>,
        now: DateTime<Utc>,
        revoked: &(dyn Fn(Uuid) -> Event + Sync),
    ) -> Result<Vec<Uuid>>;
    /// Marks the sessions that expired (unrevoked) before `now` and were not yet recorded,
    /// writing the event `expired` makes of each (session id, user id); answers how many.
    async fn record_expired_sessions(
        &self,
        now: DateTime<Utc>,
        expired: &(dyn Fn(Uuid, Uuid) -> Event + Sync),
    ) -> Result<u64>;
    /// Records activity on a session.
    async fn touch_session(&self, id: Uuid, now: DateTime<Utc>) -> Result<()>;
    /// Deletes sessions (and their refresh tokens) that expired or were revoked before `cutoff`;
    /// answers how many.
    async fn delete_sessions_ended_before(&self, cutoff: DateTime<Utc>) -> Result<u64>;
}
