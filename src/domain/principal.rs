//! Who is calling: the user, and the credential they used.

use super::auth::ClientInfo;
use super::error::{Error, Result};
use super::user::User;
use std::sync::Arc;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// An access token of this session.
    Session(Uuid),
    /// An API key, limited to its scopes and, when bound, to one organization.
    ApiKey {
        id: Uuid,
        scopes: Vec<String>,
        organization_id: Option<Uuid>,
    },
}

/// The signed-in caller of a request, with their user record as of this request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user: Arc<User>,
    pub credential: Credential,
    /// Where the request came from (the transport fills it in), for the audit log.
    pub client: ClientInfo,
}

impl Principal {
    /// The caller's session; account management refuses API keys.
    pub fn session_id(&self) -> Result<Uuid> {
        match &self.credential {
            Credential::Session(session_id) => Ok(*session_id),
            Credential::ApiKey { .. } => Err(session_required()),
        }
    }
}

pub fn session_required() -> Error {
    Error::permission_denied(
        "SESSION_REQUIRED",
        "this call needs a signed-in user session, not an API key",
    )
}
