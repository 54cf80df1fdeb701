//! The inbound doors of integrations over plain HTTP, where a signature covers the body's
//! exact bytes (which the JSON transcoder would not keep):
//!
//! - `POST /api/v1/integrations/{integration_id}/events`: signed (Standard Webhooks) or with
//!   the integration's key;
//! - `POST /api/v1/webhooks/{integration_type}`: the original's route, with the key.
//!
//! Each takes the body as it is and the headers' values into `ReceiveIntegrationEvent` of the
//! same stack, so the guard and the handler are the gRPC door's.

use super::pb::keel::integration::v1::ReceiveIntegrationEventRequest;
use super::rest::{Transcoder, grpc_frame, render_reply};
use super::status::RestError;
use crate::domain::secret::SIGNING_SECRET_PREFIX;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use prost::Message;
use std::sync::Arc;
use tonic::Code;

const RECEIVE_RPC: &str = "/keel.integration.v1.IntegrationService/ReceiveIntegrationEvent";

pub struct IntegrationDoor {
    pub transcoder: Arc<Transcoder>,
    pub max_payload_bytes: usize,
}

/// `POST /api/v1/integrations/{integration_id}/events`.
pub async fn receive_by_id(
    State(door): State<Arc<IntegrationDoor>>,
    Path(integration_id): Path<String>,
    request: axum::extract::Request,
) -> Response {
    door.receive(
        ReceiveIntegrationEventRequest {
            integration_id,
            ..Default::default()
        },
        request,
    )
    .await
    .unwrap_or_else(IntoResponse::into_response)
}

/// `POST /api/v1/webhooks/{integration_type}`, unless a transcoded route names the path
/// (`/api/v1/webhooks/events`).
pub async fn receive_by_type(
    State(door): State<Arc<IntegrationDoor>>,
    Path(integration_type): Path<String>,
    request: axum::extract::Request,
) -> Response {
    if door.transcoder.outranks_door("POST", request.uri().path()) {
        return super::rest::handle(State(door.transcoder.clone()), request).await;
    }
    door.receive(
        ReceiveIntegrationEventRequest {
            integration_type,
            ..Default::default()
        },
        request,
    )
    .await
    .unwrap_or_else(IntoResponse::into_response)
}

fn text<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .trim()
}

/// The key a sender presents: `Authorization: Bearer <key>` or `X-API-Key: <key>`. Only an
/// integration's secret (`whsec_…`) counts: Keel's own tokens are no key here.
fn presented_key(headers: &HeaderMap) -> String {
    let bearer = text(headers, header::AUTHORIZATION.as_str());
    let key = match bearer.split_once(' ') {
        Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") => key.trim(),
        _ => text(headers, "x-api-key"),
    };
    match key.starts_with(SIGNING_SECRET_PREFIX) {
        true => key.to_owned(),
        false => String::new(),
    }
}

impl IntegrationDoor {
    async fn receive(
        &self,
        mut message: ReceiveIntegrationEventRequest,
        request: axum::extract::Request,
    ) -> Result<Response, RestError> {
        let (parts, body) = request.into_parts();
        message.payload = match Limited::new(body, self.max_payload_bytes).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
                return Err(RestError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Code::ResourceExhausted,
                    "PAYLOAD_TOO_LARGE",
                    format!("messages are limited to {} bytes", self.max_payload_bytes),
                ));
            }
            Err(error) => {
                return Err(RestError::new(
                    StatusCode::BAD_REQUEST,
                    Code::InvalidArgument,
                    "BODY_UNREADABLE",
                    format!("the request body could not be read: {error}"),
                ));
            }
        };
        let headers = &parts.headers;
        message.content_type = text(headers, header::CONTENT_TYPE.as_str()).to_owned();
        message.key = presented_key(headers);
        message.webhook_id = text(headers, "webhook-id").to_owned();
        message.webhook_signature = text(headers, "webhook-signature").to_owned();
        message.webhook_timestamp = match text(headers, "webhook-timestamp") {
            "" => 0,
            raw => raw.parse().map_err(|_| {
                RestError::new(
                    StatusCode::BAD_REQUEST,
                    Code::InvalidArgument,
                    "TIMESTAMP_OUT_OF_RANGE",
                    "webhook-timestamp must be whole Unix seconds",
                )
            })?,
        };
        let rpc = (self.transcoder.rpc(RECEIVE_RPC)).ok_or_else(|| {
            RestError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                Code::Internal,
                "INTERNAL",
                "the receiving RPC is not in the contract",
            )
        })?;
        let body = tonic::body::Body::new(Full::new(grpc_frame(&message.encode_to_vec())));
        let reply = self.transcoder.call(rpc, &parts, body).await?;
        render_reply(rpc, None, reply)
    }
}
