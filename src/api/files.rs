//! The file doors over plain HTTP:
//!
//! - `POST /api/v1/files/upload`: a multipart/form-data upload, streamed into the gRPC
//!   `UploadFile` of the same stack (so the guard and the handler are the gRPC door's). The
//!   fields `organization_id`, `description` and `checksum` come before `file`.
//! - `GET /api/v1/files/{file_id}/content`: the bytes a signed download URL names, streamed,
//!   with `Range`, `ETag` and a safe `Content-Disposition`.

use super::contract::Contract;
use super::pb::keel::file::v1::{UploadFileRequest, UploadHeader, upload_file_request};
use super::rest::{Transcoder, grpc_frame, render_reply};
use super::status::RestError;
use crate::domain::files::{Download, FileService, SignedDownload};
use crate::objects::content_disposition;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use http::request::Parts;
use http::{HeaderValue, StatusCode, header};
use prost::Message;
use std::sync::Arc;
use tonic::Code;

const UPLOAD_RPC: &str = "/keel.file.v1.FileService/UploadFile";
/// The largest chunk of an upload stream (`UploadFileRequest.chunk`).
const MAX_CHUNK: usize = 1024 * 1024;
/// The longest text field of an upload form.
const MAX_TEXT_FIELD: usize = 4096;

pub struct FileDoor {
    pub files: Arc<FileService>,
    pub transcoder: Arc<Transcoder>,
    pub contract: Arc<Contract>,
}

fn bad_form(reason: &str, message: impl Into<String>) -> RestError {
    RestError::new(
        StatusCode::BAD_REQUEST,
        Code::InvalidArgument,
        reason,
        message,
    )
}

/// One message of a gRPC stream, framed.
fn frame(part: upload_file_request::Part) -> Bytes {
    grpc_frame(&UploadFileRequest { part: Some(part) }.encode_to_vec())
}

async fn text(mut field: multer::Field<'static>) -> Result<String, RestError> {
    let name = field.name().unwrap_or_default().to_owned();
    let mut value = Vec::new();
    while let Some(chunk) = field
        .chunk()
        .await
        .map_err(|error| bad_form("INVALID_MULTIPART", error.to_string()))?
    {
        value.extend_from_slice(&chunk);
        if value.len() > MAX_TEXT_FIELD {
            return Err(bad_form(
                "FIELD_TOO_LARGE",
                format!("the field {name} exceeds {MAX_TEXT_FIELD} bytes"),
            ));
        }
    }
    String::from_utf8(value).map_err(|_| {
        bad_form(
            "INVALID_MULTIPART",
            format!("the field {name} is not UTF-8"),
        )
    })
}

/// `POST /api/v1/files/upload`.
pub async fn upload(
    State(door): State<Arc<FileDoor>>,
    request: axum::extract::Request,
) -> Response {
    match door.upload(request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

impl FileDoor {
    async fn upload(&self, request: axum::extract::Request) -> Result<Response, RestError> {
        let (parts, body) = request.into_parts();
        let boundary = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| multer::parse_boundary(value).ok())
            .ok_or_else(|| {
                RestError::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    Code::InvalidArgument,
                    "MULTIPART_REQUIRED",
                    "send the file as multipart/form-data, in the field `file`",
                )
            })?;
        let mut form = multer::Multipart::new(OnePerPoll::new(body.into_data_stream()), boundary);
        let mut header = UploadHeader::default();
        let file = loop {
            let field = form
                .next_field()
                .await
                .map_err(|error| bad_form("INVALID_MULTIPART", error.to_string()))?
                .ok_or_else(|| {
                    bad_form("FILE_REQUIRED", "send the file's bytes in the field `file`")
                })?;
            match field.name().unwrap_or_default() {
                "file" => break field,
                "organization_id" => header.organization_id = text(field).await?,
                "description" => header.description = text(field).await?,
                "checksum" => header.checksum = text(field).await?,
                other => {
                    return Err(bad_form(
                        "UNKNOWN_FIELD",
                        format!(
                            "unknown field {other:?}: send organization_id, description, checksum, then file"
                        ),
                    ));
                }
            }
        };
        header.filename = file.file_name().unwrap_or("file").to_owned();
        header.content_type = file
            .content_type()
            .map(ToString::to_string)
            .unwrap_or_default();
        let first = frame(upload_file_request::Part::Header(header));
        let body = futures_util::stream::once(async move { Ok(first) })
            .chain(file_chunks(form, file))
            .map(|framed| framed.map(http_body::Frame::data));
        let body = tonic::body::Body::new(http_body_util::StreamBody::new(body));
        let rpc = (self.transcoder.rpc(UPLOAD_RPC))
            .ok_or_else(|| bad_form("INTERNAL", "the upload RPC is not in the contract"))?;
        let reply = self.transcoder.call(rpc, &parts, body).await?;
        let file_field = rpc.descriptor.output().get_field_by_name("file");
        render_reply(rpc, file_field.as_ref(), reply)
    }
}

/// Hands the form parser one chunk per poll. multer reads whatever the connection has ready
/// into its buffer before it returns a field's bytes, and on a fast client that is much of the
/// upload (tens of MiB held at once); one chunk at a time keeps it to what the consumer takes.
struct OnePerPoll<S> {
    inner: S,
    yielded: bool,
}

impl<S> OnePerPoll<S> {
    fn new(inner: S) -> Self {
        Self {
            inner,
            yielded: false,
        }
    }
}

impl<S: futures_util::Stream + Unpin> futures_util::Stream for OnePerPoll<S> {
    type Item = S::Item;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        context: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<S::Item>> {
        if std::mem::take(&mut self.yielded) {
            // Ready again at once, but only after the parser has used what it got.
            context.waker().wake_by_ref();
            return std::task::Poll::Pending;
        }
        let next = std::pin::Pin::new(&mut self.inner).poll_next(context);
        self.yielded = matches!(next, std::task::Poll::Ready(Some(_)));
        next
    }
}

/// The file's bytes as framed chunks; a field after the file breaks the stream, since what
/// it says would come too late.
fn file_chunks(
    mut form: multer::Multipart<'static>,
    file: multer::Field<'static>,
) -> impl futures_util::Stream<Item = Result<Bytes, tonic::Status>> {
    let broken = |error: multer::Error| tonic::Status::invalid_argument(error.to_string());
    // The parser hands over what it has buffered, at times several MiB at once: cut it to the
    // contract's chunk size (a gRPC message is at most 4 MiB).
    let chunks = file.flat_map(move |chunk| {
        let frames: Vec<Result<Bytes, tonic::Status>> = match chunk {
            Ok(chunk) => (0..chunk.len())
                .step_by(MAX_CHUNK)
                .map(|start| {
                    let piece = chunk.slice(start..chunk.len().min(start + MAX_CHUNK));
                    Ok(frame(upload_file_request::Part::Chunk(piece)))
                })
                .collect(),
            Err(error) => vec![Err(broken(error))],
        };
        futures_util::stream::iter(frames)
    });
    let after = futures_util::stream::once(async move {
        match form.next_field().await {
            Ok(None) => None,
            Ok(Some(_)) => Some(Err(tonic::Status::invalid_argument(
                "a field came after the file: send organization_id, description and checksum before it",
            ))),
            Err(error) => Some(Err(broken(error))),
        }
    })
    .filter_map(std::future::ready);
    chunks.chain(after)
}

/// The one range of `Range: bytes=…` within `size`: `Ok(None)` for the whole file (no header,
/// or one Keel does not serve in parts, such as several ranges), `Err` when unsatisfiable.
fn range(value: Option<&HeaderValue>, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = value
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (first, last) = spec.split_once('-').ok_or(())?;
    let (first, last) = (first.trim(), last.trim());
    let (start, end) = if first.is_empty() {
        let suffix: u64 = last.parse().map_err(|_| ())?;
        (size.saturating_sub(suffix), size.checked_sub(1).ok_or(())?)
    } else {
        let start: u64 = first.parse().map_err(|_| ())?;
        let end = if last.is_empty() {
            size.saturating_sub(1)
        } else {
            last.parse::<u64>()
                .map_err(|_| ())?
                .min(size.saturating_sub(1))
        };
        (start, end)
    };
    if start >= size || end < start {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// `GET /api/v1/files/{file_id}/content?expires=…&disposition=…&signature=…`.
pub async fn content(
    State(door): State<Arc<FileDoor>>,
    Path(file_id): Path<String>,
    parts: Parts,
) -> Response {
    match door.content(&file_id, &parts).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

impl FileDoor {
    async fn content(&self, file_id: &str, parts: &Parts) -> Result<Response, RestError> {
        let query: std::collections::HashMap<String, String> =
            form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
                .into_owned()
                .collect();
        let invalid = || {
            RestError::new(
                StatusCode::FORBIDDEN,
                Code::PermissionDenied,
                "INVALID_DOWNLOAD_URL",
                "this download URL is not valid",
            )
        };
        let link = SignedDownload {
            file_id: file_id.parse().map_err(|_| invalid())?,
            expires: (query.get("expires").and_then(|value| value.parse().ok()))
                .ok_or_else(invalid)?,
            inline: match query.get("disposition").map(String::as_str) {
                Some("inline") => true,
                Some("attachment") => false,
                _ => return Err(invalid()),
            },
            thumb: query.get("thumb").cloned(),
            signature: query.get("signature").cloned().ok_or_else(invalid)?,
        };
        let pool = &self.contract.pool;
        let download = (self.files.signed_download(&link).await)
            .map_err(|error| RestError::from_domain(error, pool))?;
        let Download {
            ref file, inline, ..
        } = download;
        let etag = format!("\"{}\"", download.etag);
        let size = download.size;
        let mut response = Response::builder()
            .header(header::ETAG, &etag)
            .header(header::ACCEPT_RANGES, "bytes")
            .header(header::CACHE_CONTROL, "private")
            .header(header::CONTENT_TYPE, &file.content_type)
            .header(
                header::CONTENT_DISPOSITION,
                content_disposition(inline, &file.original_filename),
            )
            // Nothing served here runs as a page of this origin.
            .header(header::CONTENT_SECURITY_POLICY, "sandbox");
        let unchanged = parts
            .headers
            .get(header::IF_NONE_MATCH)
            .and_then(|value| value.to_str().ok())
            .is_some_and(|tags| {
                tags.split(',')
                    .any(|tag| tag.trim() == etag || tag.trim() == "*")
            });
        if unchanged {
            return Ok(response
                .status(StatusCode::NOT_MODIFIED)
                .body(Body::empty())
                .unwrap_or_default());
        }
        let (status, start, length) = match range(parts.headers.get(header::RANGE), size) {
            Ok(None) => (StatusCode::OK, 0, size),
            Ok(Some((start, end))) => {
                response =
                    response.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{size}"));
                (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
            }
            Err(()) => {
                return Ok(response
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                    .body(Body::empty())
                    .unwrap_or_default());
            }
        };
        let bytes = (self.files.bytes(&download, start, Some(length)).await)
            .map_err(|error| RestError::from_domain(error, pool))?;
        let body = Body::from_stream(bytes.map(|chunk| chunk.map_err(std::io::Error::other)));
        Ok(response
            .status(status)
            .header(header::CONTENT_LENGTH, length)
            .body(body)
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        let header = |text: &'static str| HeaderValue::from_static(text);
        assert_eq!(range(None, 10), Ok(None));
        assert_eq!(range(Some(&header("bytes=0-3")), 10), Ok(Some((0, 3))));
        assert_eq!(range(Some(&header("bytes=4-")), 10), Ok(Some((4, 9))));
        assert_eq!(range(Some(&header("bytes=-3")), 10), Ok(Some((7, 9))));
        assert_eq!(range(Some(&header("bytes=5-100")), 10), Ok(Some((5, 9))));
        assert_eq!(range(Some(&header("bytes=0-1,4-5")), 10), Ok(None));
        assert_eq!(range(Some(&header("bytes=10-")), 10), Err(()));
        assert_eq!(range(Some(&header("bytes=x-")), 10), Err(()));
    }
}
