//! The one place errors cross into transports: `domain::Error` to `tonic::Status` (with
//! `google.rpc` details), and any `tonic::Status` to the REST error shape
//! `{code, message, reason, details}` with the HTTP status mapped from the gRPC code.

use super::pb::google::rpc;
use crate::domain::{Error, ErrorKind};
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode};
use prost::Message;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::json;
use tonic::Code;

const ERROR_DOMAIN: &str = "keel";
const SERVER_BUSY: &str = "SERVER_BUSY";

/// The reasons HTTP says more precisely than their gRPC code.
fn reason_status(reason: &str) -> Option<StatusCode> {
    match reason {
        // The whole server out of capacity is 503 (RFC 9110), a caller's own limit 429.
        SERVER_BUSY => Some(StatusCode::SERVICE_UNAVAILABLE),
        "FILE_TOO_LARGE" | "IMAGE_TOO_LARGE" => Some(StatusCode::PAYLOAD_TOO_LARGE),
        // What tus servers answer while another request appends to the upload.
        "UPLOAD_BUSY" => Some(StatusCode::LOCKED),
        "UNSUPPORTED_FILE_TYPE" => Some(StatusCode::UNSUPPORTED_MEDIA_TYPE),
        _ => None,
    }
}

fn any(type_name: &str, message: &impl Message) -> prost_types::Any {
    prost_types::Any {
        type_url: format!("type.googleapis.com/{type_name}"),
        value: message.encode_to_vec(),
    }
}

/// Converts a use-case error for gRPC. Internal and unavailable causes are logged here, once;
/// the caller sees only the safe message.
pub fn to_status(error: Error) -> tonic::Status {
    let code = match error.kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::AlreadyExists => Code::AlreadyExists,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::ResourceExhausted => Code::ResourceExhausted,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Internal => Code::Internal,
    };
    match error.kind {
        ErrorKind::Internal => tracing::error!(error = %error, "internal error"),
        ErrorKind::Unavailable => tracing::warn!(error = %error, "backing service unavailable"),
        _ => {}
    }
    let mut details = vec![any(
        "google.rpc.ErrorInfo",
        &rpc::ErrorInfo {
            reason: error.reason.to_owned(),
            domain: ERROR_DOMAIN.to_owned(),
            metadata: Default::default(),
        },
    )];
    if !error.violations.is_empty() {
        details.push(any(
            "google.rpc.BadRequest",
            &rpc::BadRequest {
                field_violations: error
                    .violations
                    .iter()
                    .map(|violation| rpc::bad_request::FieldViolation {
                        field: violation.field.clone(),
                        description: violation.description.clone(),
                        reason: violation.reason.to_string(),
                    })
                    .collect(),
            },
        ));
    }
    if let Some(delay) = error.retry_after {
        details.push(any(
            "google.rpc.RetryInfo",
            &rpc::RetryInfo {
                retry_delay: prost_types::Duration::try_from(delay).ok(),
            },
        ));
    }
    let encoded = rpc::Status {
        code: code as i32,
        message: error.message.clone(),
        details,
    }
    .encode_to_vec();
    tonic::Status::with_details(code, error.message, encoded.into())
}

/// Lets gRPC handlers answer a use-case error with `?`.
impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        to_status(error)
    }
}

/// The HTTP status for a gRPC code: the mapping of grpc-gateway and Google's APIs, except that
/// FAILED_PRECONDITION is 409, not 400. The request is well formed; the resource's state
/// refuses it (the last owner leaving, an unverified address), which is what 409 says, and a
/// client reading 400 would look for a mistake in the request.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted | Code::FailedPrecondition => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error as a REST client sees it.
#[derive(Debug)]
pub struct RestError {
    pub http_status: StatusCode,
    pub code: Code,
    pub reason: String,
    pub message: String,
    pub details: Vec<serde_json::Value>,
    pub retry_after_seconds: Option<u64>,
    /// Further fields of the response: the rate-limit ones, and `Allow` on a 405.
    pub headers: Vec<(http::HeaderName, HeaderValue)>,
}

impl RestError {
    /// An error raised by the REST layer itself (routing, body parsing), before any RPC runs;
    /// it carries its reason as a `google.rpc.ErrorInfo` detail, as RPC errors do.
    pub fn new(
        http_status: StatusCode,
        code: Code,
        reason: &str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            details: vec![json!({
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": reason,
                "domain": ERROR_DOMAIN,
            })],
            ..Self::bare(http_status, code, reason, message)
        }
    }

    fn bare(http_status: StatusCode, code: Code, reason: &str, message: impl Into<String>) -> Self {
        Self {
            http_status,
            code,
            reason: reason.to_owned(),
            message: message.into(),
            details: Vec::new(),
            retry_after_seconds: None,
            headers: Vec::new(),
        }
    }

    /// 405 for `method` on `path`, which takes `allowed` instead.
    pub fn method_not_allowed(method: &http::Method, path: &str, allowed: &[&str]) -> Self {
        let allowed = allowed.join(", ");
        Self {
            headers: HeaderValue::from_str(&allowed)
                .map(|allow| vec![(http::header::ALLOW, allow)])
                .unwrap_or_default(),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                Code::Unimplemented,
                "METHOD_NOT_ALLOWED",
                format!("{method} is not allowed on {path}; use {allowed}"),
            )
        }
    }

    pub fn not_found_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            Code::NotFound,
            "ROUTE_NOT_FOUND",
            format!("no route for {path}"),
        )
    }

    /// A use-case error, converted as gRPC would see it and then rendered for REST.
    pub fn from_domain(error: Error, pool: &DescriptorPool) -> Self {
        Self::from_status(&to_status(error), pool)
    }

    /// Renders a gRPC status, decoding its `google.rpc.Status` details through the descriptor
    /// pool so that each detail keeps its `@type`.
    pub fn from_status(status: &tonic::Status, pool: &DescriptorPool) -> Self {
        let mut error = Self::bare(
            http_status(status.code()),
            status.code(),
            "",
            status.message(),
        );
        let Ok(decoded) = rpc::Status::decode(status.details()) else {
            return error;
        };
        for detail in decoded.details {
            if detail.type_url.ends_with("/google.rpc.ErrorInfo")
                && let Ok(info) = rpc::ErrorInfo::decode(detail.value.as_slice())
            {
                error.reason = info.reason;
                if let Some(status) = reason_status(&error.reason) {
                    error.http_status = status;
                }
            }
            if detail.type_url.ends_with("/google.rpc.RetryInfo")
                && let Ok(retry) = rpc::RetryInfo::decode(detail.value.as_slice())
            {
                error.retry_after_seconds = retry.retry_delay.map(|delay| {
                    // Whole seconds, rounded up: never earlier than the server said.
                    let seconds = u64::try_from(delay.seconds).unwrap_or(0);
                    (seconds + u64::from(delay.nanos > 0)).max(1)
                });
            }
            if let Some(rendered) = render_any(&detail, pool) {
                error.details.push(rendered);
            }
        }
        error
    }
}

fn render_any(detail: &prost_types::Any, pool: &DescriptorPool) -> Option<serde_json::Value> {
    let type_name = detail.type_url.rsplit('/').next()?;
    let descriptor = pool.get_message_by_name(type_name)?;
    let message = DynamicMessage::decode(descriptor, detail.value.as_slice()).ok()?;
    let options = prost_reflect::SerializeOptions::new().use_proto_field_name(true);
    let mut rendered = message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .ok()?;
    if let serde_json::Value::Object(fields) = &mut rendered {
        fields.insert("@type".to_owned(), json!(detail.type_url));
    }
    Some(rendered)
}

impl RestError {
    /// The error's body: `{code, message, reason, details}`.
    pub fn json(&self) -> String {
        self.body().to_string()
    }

    fn body(&self) -> serde_json::Value {
        json!({
            "code": self.code as i32,
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
        })
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let body = self.body();
        let mut response = (self.http_status, axum::Json(body)).into_response();
        response.headers_mut().extend(self.headers);
        if let Some(seconds) = self.retry_after_seconds {
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
