//! Resumable uploads over HTTP: the tus 1.0 core protocol with its creation, termination and
//! expiration extensions (<https://tus.io/protocols/resumable-upload>), so that Uppy and
//! tus-js-client upload to Keel as they are.
//!
//! - `POST /api/v1/files/uploads` with `Upload-Length` and `Upload-Metadata` (`filename`,
//!   `filetype`, `organization_id`, `description`, `checksum`) → 201 and the upload's URL.
//! - `HEAD` that URL → how many bytes it holds (`Upload-Offset`).
//! - `PATCH` it with `Upload-Offset` and `application/offset+octet-stream` bytes → 204 and the
//!   new offset. The last bytes make it a file whose id is the upload's.
//! - `DELETE` it → 204, and its bytes are gone.
//!
//! Callers authenticate as on every other route (bearer token or `x-api-key`).

use super::client_address::client_info;
use super::contract::Contract;
use super::guard::{authenticate, presented_credential};
use super::status::RestError;
use crate::domain::auth::AuthService;
use crate::domain::error::{Error, Result};
use crate::domain::files::{FileService, PendingUpload, UploadHeader, UploadProgress};
use crate::domain::principal::Principal;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures_util::TryStreamExt;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use std::sync::Arc;
use uuid::Uuid;

pub const UPLOADS_PATH: &str = "/api/v1/files/uploads";
const TUS_VERSION: &str = "1.0.0";
const TUS_EXTENSIONS: &str = "creation,termination,expiration";
const OFFSET_CONTENT_TYPE: &str = "application/offset+octet-stream";

static TUS_RESUMABLE: HeaderName = HeaderName::from_static("tus-resumable");
static UPLOAD_LENGTH: HeaderName = HeaderName::from_static("upload-length");
static UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
static UPLOAD_METADATA: HeaderName = HeaderName::from_static("upload-metadata");
static UPLOAD_EXPIRES: HeaderName = HeaderName::from_static("upload-expires");

/// The headers a browser client sends and reads (for CORS).
pub const REQUEST_HEADERS: [&str; 4] = [
    "tus-resumable",
    "upload-length",
    "upload-offset",
    "upload-metadata",
];
pub const RESPONSE_HEADERS: [&str; 8] = [
    "location",
    "tus-resumable",
    "tus-version",
    "tus-extension",
    "tus-max-size",
    "upload-length",
    "upload-offset",
    "upload-expires",
];

pub struct TusDoor {
    pub files: Arc<FileService>,
    pub auth: Arc<AuthService>,
    pub contract: Arc<Contract>,
    /// Where upload URLs point.
    pub public_url: String,
    pub max_file_bytes: i64,
}

fn bad_request(reason: &str, message: impl Into<String>) -> RestError {
    RestError::new(
        StatusCode::BAD_REQUEST,
        tonic::Code::InvalidArgument,
        reason,
        message,
    )
}

/// Every answer says which protocol version it speaks.
fn tus(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(TUS_RESUMABLE.clone(), HeaderValue::from_static(TUS_VERSION));
    response
}

fn number(headers: &HeaderMap, name: &HeaderName) -> Result<i64, RestError> {
    let value = headers
        .get(name)
        .ok_or_else(|| bad_request("MISSING_HEADER", format!("{name} is required")))?;
    value
        .to_str()
        .ok()
        .and_then(|text| text.parse::<i64>().ok())
        .filter(|number| *number >= 0)
        .ok_or_else(|| {
            bad_request(
                "INVALID_HEADER",
                format!("{name} must be a non-negative integer"),
            )
        })
}

/// `Upload-Metadata`: comma-separated `key base64(value)` pairs.
fn metadata(headers: &HeaderMap) -> Result<UploadHeader, RestError> {
    let mut header = UploadHeader::default();
    let Some(raw) = headers.get(&UPLOAD_METADATA) else {
        return Ok(header);
    };
    let invalid = |message: String| bad_request("INVALID_UPLOAD_METADATA", message);
    let raw = raw
        .to_str()
        .map_err(|_| invalid("Upload-Metadata must be ASCII".into()))?;
    for pair in raw
        .split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
    {
        let (key, encoded) = pair.split_once(' ').unwrap_or((pair, ""));
        let value = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| invalid(format!("the value of {key} is not base64 of UTF-8 text")))?;
        match key {
            "filename" | "name" => header.filename = value,
            "filetype" | "type" => header.declared_type = Some(value),
            "description" => header.description = value,
            "checksum" => header.checksum = Some(value.to_ascii_lowercase()),
            "organization_id" => {
                header.organization_id = Some(
                    value
                        .parse()
                        .map_err(|_| invalid(format!("organization_id {value:?} is not a UUID")))?,
                )
            }
            // Clients add their own (Uppy's relativePath…); they mean nothing here.
            _ => {}
        }
    }
    Ok(header)
}

fn upload_id(raw: &str) -> Result<Uuid, Error> {
    raw.parse()
        .map_err(|_| Error::from(crate::domain::error::Missing::Upload))
}

fn expires(upload: &PendingUpload) -> String {
    upload
        .expires_at
        .format("%a, %d %b %Y %H:%M:%S GMT")
        .to_string()
}

impl TusDoor {
    fn refusal(&self, error: Error) -> RestError {
        RestError::from_domain(error, &self.contract.pool)
    }

    async fn caller(&self, parts: &Parts) -> Result<Principal, RestError> {
        let principal = authenticate(&self.auth, presented_credential(&parts.headers))
            .await
            .map_err(|error| self.refusal(error))?;
        Ok(Principal {
            client: client_info(&parts.extensions, &parts.headers),
            ..principal
        })
    }

    /// Requests other than `OPTIONS` must say they speak 1.0.0: 412 otherwise.
    fn version_refused(headers: &HeaderMap) -> Option<Response> {
        match headers.get(&TUS_RESUMABLE) {
            Some(version) if version == TUS_VERSION => None,
            _ => Some(
                (
                    StatusCode::PRECONDITION_FAILED,
                    [("tus-version", TUS_VERSION)],
                    "Tus-Resumable: 1.0.0 is required",
                )
                    .into_response(),
            ),
        }
    }

    async fn create(&self, parts: &Parts) -> Result<Response, RestError> {
        let principal = self.caller(parts).await?;
        if parts.headers.contains_key("upload-defer-length") {
            return Err(bad_request(
                "UPLOAD_LENGTH_REQUIRED",
                "uploads of unknown length are not supported: send Upload-Length",
            ));
        }
        let length = number(&parts.headers, &UPLOAD_LENGTH)?;
        let header = metadata(&parts.headers)?;
        let upload = (self.files.create_upload(&principal, header, length).await)
            .map_err(|error| self.refusal(error))?;
        let location = format!("{}{UPLOADS_PATH}/{}", self.public_url, upload.id);
        Ok((
            StatusCode::CREATED,
            [
                (header::LOCATION, location),
                (UPLOAD_EXPIRES.clone(), expires(&upload)),
            ],
        )
            .into_response())
    }

    async fn status(&self, id: &str, parts: &Parts) -> Result<Response, RestError> {
        let principal = self.caller(parts).await?;
        let id = upload_id(id).map_err(|error| self.refusal(error))?;
        let upload = (self.files.upload_status(&principal, id).await)
            .map_err(|error| self.refusal(error))?;
        Ok((
            StatusCode::OK,
            [
                (UPLOAD_OFFSET.clone(), upload.received.to_string()),
                (UPLOAD_LENGTH.clone(), upload.length.to_string()),
                (UPLOAD_EXPIRES.clone(), expires(&upload)),
                (header::CACHE_CONTROL, "no-store".to_owned()),
            ],
        )
            .into_response())
    }

    async fn append(&self, id: &str, parts: &Parts, body: Body) -> Result<Response, RestError> {
        let principal = self.caller(parts).await?;
        let content_type = parts.headers.get(header::CONTENT_TYPE);
        if content_type.is_none_or(|value| value != OFFSET_CONTENT_TYPE) {
            return Err(RestError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                tonic::Code::InvalidArgument,
                "OFFSET_OCTET_STREAM_REQUIRED",
                format!("PATCH bodies are {OFFSET_CONTENT_TYPE}"),
            ));
        }
        let offset = number(&parts.headers, &UPLOAD_OFFSET)?;
        let id = upload_id(id).map_err(|error| self.refusal(error))?;
        let bytes = body
            .into_data_stream()
            .map_err(|error| Error::invalid_argument("UPLOAD_INTERRUPTED", error.to_string()));
        let progress = self
            .files
            .append_upload(&principal, id, offset, Box::pin(bytes))
            .await
            .map_err(|error| self.refusal(error))?;
        let (offset, expires) = match progress {
            UploadProgress::Partial(upload) => (upload.received, Some(expires(&upload))),
            UploadProgress::Complete { length, .. } => (length, None),
        };
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        headers.insert(UPLOAD_OFFSET.clone(), HeaderValue::from(offset));
        if let Some(expires) = expires.and_then(|text| HeaderValue::from_str(&text).ok()) {
            headers.insert(UPLOAD_EXPIRES.clone(), expires);
        }
        Ok(response)
    }

    async fn cancel(&self, id: &str, parts: &Parts) -> Result<Response, RestError> {
        let principal = self.caller(parts).await?;
        let id = upload_id(id).map_err(|error| self.refusal(error))?;
        (self.files.cancel_upload(&principal, id).await).map_err(|error| self.refusal(error))?;
        Ok(StatusCode::NO_CONTENT.into_response())
    }
}

/// A plain `OPTIONS` of the uploads (not a CORS preflight, which has an `Origin`): what this
/// server speaks. A middleware, since the CORS layer takes every `OPTIONS` for a preflight.
pub async fn capabilities(
    State(door): State<Arc<TusDoor>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if request.method() != http::Method::OPTIONS
        || request.headers().contains_key(header::ORIGIN)
        || !request.uri().path().starts_with(UPLOADS_PATH)
    {
        return next.run(request).await;
    }
    let allow = if request.uri().path() == UPLOADS_PATH {
        "POST, OPTIONS"
    } else {
        "HEAD, PATCH, DELETE, OPTIONS"
    };
    tus((
        StatusCode::NO_CONTENT,
        [
            (header::ALLOW, allow.to_owned()),
            (
                HeaderName::from_static("tus-version"),
                TUS_VERSION.to_owned(),
            ),
            (
                HeaderName::from_static("tus-extension"),
                TUS_EXTENSIONS.to_owned(),
            ),
            (
                HeaderName::from_static("tus-max-size"),
                door.max_file_bytes.to_string(),
            ),
        ],
    )
        .into_response())
}

/// `POST /api/v1/files/uploads`.
pub async fn create(State(door): State<Arc<TusDoor>>, request: axum::extract::Request) -> Response {
    let (parts, _) = request.into_parts();
    if let Some(refused) = TusDoor::version_refused(&parts.headers) {
        return tus(refused);
    }
    tus(door
        .create(&parts)
        .await
        .unwrap_or_else(IntoResponse::into_response))
}

/// `HEAD`, `PATCH` and `DELETE /api/v1/files/uploads/{upload_id}`.
pub async fn upload(
    State(door): State<Arc<TusDoor>>,
    Path(id): Path<String>,
    request: axum::extract::Request,
) -> Response {
    let (parts, body) = request.into_parts();
    if let Some(refused) = TusDoor::version_refused(&parts.headers) {
        return tus(refused);
    }
    let answered = match parts.method {
        http::Method::HEAD => door.status(&id, &parts).await,
        http::Method::PATCH => door.append(&id, &parts, body).await,
        _ => door.cancel(&id, &parts).await,
    };
    tus(answered.unwrap_or_else(IntoResponse::into_response))
}
