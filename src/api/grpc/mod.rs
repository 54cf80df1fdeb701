//! tonic implementations of the Keel services: each converts proto to domain at the edge, calls
//! the use case and converts back. No logic lives here.

/// A sign-in reply of type `$reply` carrying a token pair: the four token fields are set here
/// once for every reply that has them (generated messages share no type). Replies with more
/// fields leave them at their defaults.
macro_rules! token_reply {
    ($reply:ident, $tokens:expr) => {{
        let tokens: crate::domain::auth::TokenPair = $tokens;
        #[allow(clippy::needless_update)]
        let reply = $reply {
            access_token: tokens.access_token,
            refresh_token: tokens.refresh_token,
            token_type: "bearer".to_owned(),
            expires_in: crate::api::grpc::count_i32(tokens.expires_in.num_seconds()),
            ..Default::default()
        };
        reply
    }};
}

/// A sign-in reply of type `$reply` for a sign-in that may still need its second factor.
macro_rules! login_reply {
    ($reply:ident, $outcome:expr) => {
        match $outcome {
            crate::domain::auth::LoginOutcome::SignedIn(tokens) => token_reply!($reply, tokens),
            crate::domain::auth::LoginOutcome::MfaRequired { mfa_token } => $reply {
                mfa_required: true,
                mfa_token,
                ..Default::default()
            },
        }
    };
}

mod admin;
mod api_key;
mod audit;
mod auth;
mod dead_letter;
mod feature_flag;
mod file;
mod integration;
mod invitation;
mod job;
mod llm;
mod notification;
mod oauth;
mod organization;
mod passkey;
mod quota;
mod realtime;
mod role;
mod session;
mod sso;
mod team;
mod totp;
mod user;
mod webhook;

pub use admin::AdminApi;
pub use api_key::ApiKeyApi;
pub use audit::AuditLogApi;
pub use auth::AuthApi;
pub use dead_letter::DeadLetterApi;
pub use feature_flag::FeatureFlagApi;
pub use file::FileApi;
pub use integration::IntegrationApi;
pub use invitation::InvitationApi;
pub use job::JobApi;
pub use llm::LlmApi;
pub use notification::NotificationApi;
pub use oauth::OAuthApi;
pub use organization::OrganizationApi;
pub use passkey::PasskeyApi;
pub use quota::QuotaApi;
pub use realtime::RealtimeApi;
pub use role::RoleApi;
pub use session::SessionApi;
pub use sso::SsoApi;
pub use team::TeamApi;
pub use totp::TotpApi;
pub use user::UserApi;
pub use webhook::WebhookApi;

use crate::api::pb::keel::user::v1 as user_pb;
use crate::domain::auth::ClientInfo;
use crate::domain::principal::Principal;
use crate::domain::tenancy::access::Access;
use crate::domain::user::User;
use chrono::{DateTime, Utc};

pub fn timestamp(time: DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: i32::try_from(time.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// A time a request carries, as the domain takes it; out of range is a field violation.
pub fn time(
    field: &str,
    time: Option<prost_types::Timestamp>,
) -> Result<Option<DateTime<Utc>>, tonic::Status> {
    time.map(|time| {
        u32::try_from(time.nanos)
            .ok()
            .and_then(|nanos| DateTime::from_timestamp(time.seconds, nanos))
            .ok_or_else(|| {
                crate::domain::Error::invalid_fields(vec![crate::domain::FieldViolation::new(
                    field,
                    "timestamp.valid",
                    "value must be a valid timestamp",
                )])
                .into()
            })
    })
    .transpose()
}

/// An id the contract declares a UUID, as the domain takes it. The guard has checked its form
/// already; this only turns the text into the type, once, at the edge.
pub fn id(field: &str, raw: &str) -> Result<uuid::Uuid, tonic::Status> {
    uuid::Uuid::parse_str(raw).map_err(|_| {
        crate::domain::Error::invalid_fields(vec![crate::domain::FieldViolation::new(
            field,
            "string.uuid",
            "value must be a valid UUID",
        )])
        .into()
    })
}

/// A count as the protos' `int32` fields carry it, saturating rather than wrapping.
pub fn count_i32(value: impl TryInto<i32>) -> i32 {
    value.try_into().unwrap_or(i32::MAX)
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
    crate::api::client_address::client_info(request.extensions(), request.metadata().as_ref())
}

/// The organization access the authorization layer admitted; present on every RPC guarded by
/// an organization permission.
pub fn access<T>(request: &tonic::Request<T>) -> Result<Access, tonic::Status> {
    request
        .extensions()
        .get::<Access>()
        .cloned()
        .ok_or_else(|| tonic::Status::permission_denied("no organization access"))
}

/// `google.protobuf.Struct` to a JSON object.
pub fn struct_to_json(object: prost_types::Struct) -> serde_json::Map<String, serde_json::Value> {
    object
        .fields
        .into_iter()
        .map(|(key, value)| (key, value_to_json(value)))
        .collect()
}

fn value_to_json(value: prost_types::Value) -> serde_json::Value {
    use prost_types::value::Kind;
    match value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::NumberValue(number)) => json_number(number),
        Some(Kind::StringValue(text)) => serde_json::Value::String(text),
        Some(Kind::BoolValue(flag)) => serde_json::Value::Bool(flag),
        Some(Kind::StructValue(object)) => serde_json::Value::Object(struct_to_json(object)),
        Some(Kind::ListValue(list)) => {
            serde_json::Value::Array(list.values.into_iter().map(value_to_json).collect())
        }
    }
}

/// A double as JSON, whole numbers as integers, as Go's and C++'s protobuf JSON print them: a
/// `Struct` has only doubles, and `-7` read back as `-7.0` is no integer to a typed reader
/// (WebAuthn's `alg`, say).
pub fn json_number(number: f64) -> serde_json::Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53: every integer below is a double
    if number.fract() == 0.0 && number.abs() < EXACT {
        return serde_json::Value::from(number as i64);
    }
    serde_json::Number::from_f64(number).map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// A JSON object to `google.protobuf.Struct`.
pub fn json_to_struct(object: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: object
            .into_iter()
            .map(|(key, value)| (key, json_to_value(value)))
            .collect(),
    }
}

fn json_to_value(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(flag) => Kind::BoolValue(flag),
        serde_json::Value::Number(number) => Kind::NumberValue(number.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(text) => Kind::StringValue(text),
        serde_json::Value::Array(values) => Kind::ListValue(prost_types::ListValue {
            values: values.into_iter().map(json_to_value).collect(),
        }),
        serde_json::Value::Object(object) => Kind::StructValue(json_to_struct(object)),
    };
    prost_types::Value { kind: Some(kind) }
}
