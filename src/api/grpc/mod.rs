//! tonic implementations of the Keel services: each converts proto to domain at the edge, calls
//! the use case and converts back. No logic lives here.

mod admin;
mod api_key;
mod auth;
mod session;
mod totp;

pub use admin::AdminApi;
pub use api_key::ApiKeyApi;
pub use auth::AuthApi;
pub use session::SessionApi;
pub use totp::TotpApi;

use crate::api::client_address::ClientAddress;
use crate::api::pb::keel::user::v1 as user_pb;
use crate::domain::auth::ClientInfo;
use crate::domain::principal::Principal;
use crate::domain::user::User;
use chrono::{DateTime, Utc};

pub fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

pub fn user_to_proto(user: User) -> user_pb::User {
    user_pb::User {
        id: user.id.to_string(),
        email: user.email,
        full_name: user.full_name,
        email_verified: user.email_verified,
        is_superuser: user.is_superuser,
        is_active: user.is_active,
        created_at: Some(timestamp(user.created_at)),
        updated_at: Some(timestamp(user.updated_at)),
    }
}

/// The caller the authorization layer admitted; present on every non-public RPC.
pub fn principal<T>(request: &tonic::Request<T>) -> Result<Principal, tonic::Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| tonic::Status::unauthenticated("missing credentials"))
}

/// Where the request came from: the client address the listener worked out (the REST door
/// forwards it) and the user agent.
pub fn client_info<T>(request: &tonic::Request<T>) -> ClientInfo {
    ClientInfo {
        ip_address: request
            .extensions()
            .get::<ClientAddress>()
            .map(|ClientAddress(address)| address.to_string()),
        user_agent: request
            .metadata()
            .get("user-agent")
            .and_then(|value| value.to_str().ok())
            .map(|agent| agent.chars().take(512).collect()),
    }
}
