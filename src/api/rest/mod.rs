//! REST/JSON transcoded from the `google.api.http` rules. A REST call becomes the protobuf
//! request of its RPC (path variables, query parameters and body merged by the proto3 JSON
//! rules), is dispatched in-process through the same tonic stack as gRPC (so authorization
//! and everything else applies identically), and its reply is rendered as proto3 JSON with
//! proto field names. Every failure answers the one error shape of `status::RestError`.

pub mod path_template;
mod request;

use super::client_address::ClientAddress;
use super::contract::{Contract, HttpBinding, Rpc};
use super::status::RestError;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use prost::Message;
use prost_reflect::{DynamicMessage, SerializeOptions};
use std::convert::Infallible;
use std::sync::Arc;
use tonic::Code;
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

/// The tonic stack REST calls are dispatched into (authorization layer + services).
pub type GrpcStack = BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    Infallible,
>;

/// Request headers a REST call passes on to its RPC as metadata.
const FORWARDED_HEADERS: [header::HeaderName; 3] = [
    header::AUTHORIZATION,
    header::USER_AGENT,
    header::ACCEPT_LANGUAGE,
];
const FORWARDED_CUSTOM_HEADERS: [&str; 4] = [
    "x-api-key",
    "x-request-id",
    "x-organization-id",
    "traceparent",
];

pub struct Transcoder {
    contract: Arc<Contract>,
    grpc: GrpcStack,
    max_body_bytes: usize,
    /// Routes under `/api/` served by hand (streams, uploads, inbound messages), for `Allow`:
    /// a path with `*` for one segment, and a method.
    doors: Vec<(&'static str, &'static str)>,
}

struct Matched<'a> {
    rpc: &'a Rpc,
    binding: &'a HttpBinding,
    captures: path_template::Captures,
}

impl Transcoder {
    pub fn new(
        contract: Arc<Contract>,
        grpc: GrpcStack,
        max_body_bytes: usize,
        doors: Vec<(&'static str, &'static str)>,
    ) -> Self {
        Self {
            contract,
            grpc,
            max_body_bytes,
            doors,
        }
    }

    /// Finds the binding for a method and path. The most specific templates matching the path
    /// (literal segments win over variables) name the resource; the one among them with this
    /// method serves it, else 405 with the methods they have; 404 when nothing matches. So
    /// `DELETE /api/v1/sessions/stats` is a 405, not a revocation of the session "stats".
    fn route(&self, method: &http::Method, path: &str) -> Result<Matched<'_>, RestError> {
        let mut best = self.best_matches(path);
        if best.is_empty() {
            return Err(RestError::not_found_route(path));
        }
        if let Some(index) = best
            .iter()
            .position(|matched| matched.binding.method == *method)
        {
            return Ok(best.swap_remove(index));
        }
        Err(RestError::method_not_allowed(
            method,
            path,
            &self.allowed_methods(path, &best),
        ))
    }

    /// The methods `path` answers: those of the most specific templates matching it (literal
    /// segments win over variables), whether bindings or doors served by hand.
    fn allowed_methods<'a>(&'a self, path: &str, matches: &[Matched<'a>]) -> Vec<&'a str> {
        let binding_score = matches
            .first()
            .and_then(|matched| matched.binding.template.matches(path))
            .map(|(score, _)| score);
        let doors = self.matching_doors(path);
        let best = doors
            .iter()
            .map(|(score, _)| score)
            .chain(&binding_score)
            .max();
        let mut allowed: Vec<&str> = doors
            .iter()
            .filter(|(score, _)| Some(score) == best)
            .map(|(_, method)| *method)
            .collect();
        if binding_score.as_ref() == best {
            allowed.extend(
                matches
                    .iter()
                    .map(|matched| matched.binding.method.as_str()),
            );
        }
        allowed.sort_unstable();
        allowed.dedup();
        allowed
    }

    /// The doors whose pattern matches `path`, with their scores (a literal segment, true, wins
    /// over `*`), as templates are scored.
    fn matching_doors(&self, path: &str) -> Vec<(Vec<bool>, &'static str)> {
        let segments = |text: &'static str| text.split('/');
        self.doors
            .iter()
            .filter(|(pattern, _)| {
                segments(pattern).count() == path.split('/').count()
                    && segments(pattern)
                        .zip(path.split('/'))
                        .all(|(expected, actual)| expected == "*" || expected == actual)
            })
            .map(|(pattern, method)| {
                // Scored past the leading empty segment, as templates are.
                let score = segments(pattern).skip(1).map(|segment| segment != "*");
                (score.collect(), *method)
            })
            .collect()
    }

    /// Whether a binding more specific than `method`'s door serves `path` (`GET
    /// /api/v1/webhooks/events` beside the door `POST /api/v1/webhooks/*`): the door then
    /// leaves the path to the transcoder.
    pub(in crate::api) fn outranks_door(&self, method: &str, path: &str) -> bool {
        let matches = self.best_matches(path);
        !self.allowed_methods(path, &matches).contains(&method)
    }

    /// A plain `OPTIONS` (not a CORS preflight): 204 with the path's methods in `Allow`.
    pub fn options(&self, path: &str) -> Response {
        let mut allowed = self.allowed_methods(path, &self.best_matches(path));
        if allowed.is_empty() {
            return RestError::not_found_route(path).into_response();
        }
        allowed.push("OPTIONS");
        (
            StatusCode::NO_CONTENT,
            [(header::ALLOW, allowed.join(", "))],
        )
            .into_response()
    }

    /// The templates matching `path` with the best score, whatever their methods.
    fn best_matches(&self, path: &str) -> Vec<Matched<'_>> {
        let mut best_score: Option<Vec<bool>> = None;
        let mut best: Vec<Matched<'_>> = Vec::new();
        for rpc in &self.contract.rpcs {
            for binding in &rpc.bindings {
                let Some((score, captures)) = binding.template.matches(path) else {
                    continue;
                };
                let matched = Matched {
                    rpc,
                    binding,
                    captures,
                };
                match best_score.as_ref().map(|best| score.cmp(best)) {
                    Some(std::cmp::Ordering::Less) => {}
                    Some(std::cmp::Ordering::Equal) => best.push(matched),
                    None | Some(std::cmp::Ordering::Greater) => {
                        best_score = Some(score);
                        best = vec![matched];
                    }
                }
            }
        }
        best
    }

    async fn handle(&self, request: axum::extract::Request) -> Result<Response, RestError> {
        let (parts, body) = request.into_parts();
        let body = self.read_body(body).await?;
        self.answer(&parts, &body).await
    }

    /// Answers a request whose body was read.
    pub(in crate::api) async fn answer(
        &self,
        parts: &http::request::Parts,
        body: &Bytes,
    ) -> Result<Response, RestError> {
        let (matched, message) = self.request_message(parts, body)?;
        let reply = self.dispatch(matched.rpc, parts, message).await?;
        render_reply(matched.rpc, matched.binding.response_body.as_ref(), reply)
    }

    /// The binding a request matches and the RPC's request message it makes.
    fn request_message(
        &self,
        parts: &http::request::Parts,
        body: &Bytes,
    ) -> Result<(Matched<'_>, DynamicMessage), RestError> {
        let matched = self.route(&parts.method, parts.uri.path())?;
        let message = request::build_message(
            &matched.rpc.descriptor.input(),
            matched.binding,
            &matched.captures,
            parts.uri.query().unwrap_or(""),
            parts.headers.get(header::CONTENT_TYPE),
            body,
        )?;
        Ok((matched, message))
    }

    /// The request message the binding of `parts` makes of `body`, encoded.
    pub(in crate::api) fn encoded_message(
        &self,
        parts: &http::request::Parts,
        body: &Bytes,
    ) -> Result<Vec<u8>, RestError> {
        Ok(self.request_message(parts, body)?.1.encode_to_vec())
    }

    pub(in crate::api) async fn read_body(
        &self,
        body: axum::body::Body,
    ) -> Result<Bytes, RestError> {
        match Limited::new(body, self.max_body_bytes).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
                Err(RestError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    Code::InvalidArgument,
                    "BODY_TOO_LARGE",
                    format!("the request body exceeds {} bytes", self.max_body_bytes),
                ))
            }
            Err(error) => Err(RestError::new(
                StatusCode::BAD_REQUEST,
                Code::InvalidArgument,
                "BODY_UNREADABLE",
                format!("the request body could not be read: {error}"),
            )),
        }
    }

    async fn dispatch(
        &self,
        rpc: &Rpc,
        parts: &http::request::Parts,
        message: DynamicMessage,
    ) -> Result<Reply, RestError> {
        let body = tonic::body::Body::new(Full::new(grpc_frame(&message.encode_to_vec())));
        self.call(rpc, parts, body).await
    }

    /// `rpc` called with a body of gRPC frames, as a gRPC client would call it through the
    /// guarded stack, with the headers REST passes on.
    async fn send(
        &self,
        rpc: &Rpc,
        parts: &http::request::Parts,
        body: tonic::body::Body,
    ) -> Result<http::Response<tonic::body::Body>, RestError> {
        let mut inner = http::Request::builder()
            .method(http::Method::POST)
            .uri(rpc.grpc_path.as_str())
            .header(header::CONTENT_TYPE, "application/grpc")
            .header(header::TE, "trailers");
        for name in FORWARDED_HEADERS {
            if let Some(value) = parts.headers.get(&name) {
                inner = inner.header(name, value);
            }
        }
        for name in FORWARDED_CUSTOM_HEADERS {
            if let Some(value) = parts.headers.get(name) {
                inner = inner.header(name, value);
            }
        }
        if let Some(address) = parts.extensions.get::<ClientAddress>() {
            inner = inner.extension(*address);
        }
        let inner = inner
            .body(body)
            .map_err(|error| internal(format!("building the inner request: {error}")))?;
        let Ok(response) = self.grpc.clone().oneshot(inner).await;
        Ok(response)
    }

    /// Calls a server-streaming `rpc`; answers its messages as they come, or the error it
    /// answered at once.
    pub(in crate::api) async fn call_streaming<M: prost::Message + Default + Send + 'static>(
        &self,
        rpc: &Rpc,
        parts: &http::request::Parts,
        body: tonic::body::Body,
    ) -> Result<tonic::Streaming<M>, RestError> {
        let response = self.send(rpc, parts, body).await?;
        if let Some(status) = tonic::Status::from_header_map(response.headers())
            && status.code() != Code::Ok
        {
            return Err(RestError::from_status(&status, &self.contract.pool));
        }
        let decoder = tonic::codec::Codec::decoder(&mut tonic_prost::ProstCodec::<M, M>::default());
        Ok(tonic::Streaming::new_response(
            decoder,
            response.into_body(),
            StatusCode::OK,
            None,
            None,
        ))
    }

    /// Calls `rpc` with a body of gRPC frames through the guarded stack; answers the reply's
    /// one message.
    pub(in crate::api) async fn call(
        &self,
        rpc: &Rpc,
        parts: &http::request::Parts,
        body: tonic::body::Body,
    ) -> Result<Reply, RestError> {
        let response = self.send(rpc, parts, body).await?;
        let (response_parts, body) = response.into_parts();
        let collected = body
            .collect()
            .await
            .map_err(|status| RestError::from_status(&status, &self.contract.pool))?;
        // Call metadata REST passes on: the rate-limit fields.
        let headers: Vec<(http::HeaderName, HeaderValue)> = response_parts
            .headers
            .iter()
            .chain(collected.trailers().into_iter().flatten())
            .filter(|(name, _)| name.as_str().starts_with("ratelimit-"))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        let status = tonic::Status::from_header_map(&response_parts.headers)
            .or_else(|| {
                collected
                    .trailers()
                    .and_then(tonic::Status::from_header_map)
            })
            .ok_or_else(|| internal("the RPC answered without a grpc-status"))?;
        if status.code() != Code::Ok {
            return Err(RestError {
                headers,
                ..RestError::from_status(&status, &self.contract.pool)
            });
        }
        let data = collected.to_bytes();
        let payload = data
            .get(5..)
            .ok_or_else(|| internal("the RPC answered without a message"))?;
        Ok(Reply {
            message: Bytes::copy_from_slice(payload),
            headers,
        })
    }

    /// The contract's descriptors, for rendering errors.
    pub(in crate::api) fn pool(&self) -> &prost_reflect::DescriptorPool {
        &self.contract.pool
    }

    /// The contract's RPCs, by gRPC path.
    pub(in crate::api) fn rpc(&self, grpc_path: &str) -> Option<&Rpc> {
        self.contract
            .rpcs
            .iter()
            .find(|rpc| rpc.grpc_path == grpc_path)
    }
}

/// One encoded message as a gRPC frame: uncompressed, length-prefixed.
pub(in crate::api) fn grpc_frame(encoded: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(encoded.len() + 5);
    framed.put_u8(0);
    framed.put_u32(u32::try_from(encoded.len()).unwrap_or(u32::MAX));
    framed.put_slice(encoded);
    framed.freeze()
}

/// What an RPC answered a REST call.
pub(in crate::api) struct Reply {
    /// The reply message, encoded.
    pub message: Bytes,
    /// Fields for the HTTP response (the rate-limit ones).
    pub headers: Vec<(http::HeaderName, HeaderValue)>,
}

/// A reply as proto3 JSON (`response_body`: one of its fields only), with the RPC's success
/// status.
pub(in crate::api) fn render_reply(
    rpc: &Rpc,
    response_body: Option<&prost_reflect::FieldDescriptor>,
    reply: Reply,
) -> Result<Response, RestError> {
    let message = DynamicMessage::decode(rpc.descriptor.output(), reply.message)
        .map_err(|error| internal(format!("decoding the reply: {error}")))?;
    let serialized = match response_body {
        Some(field) => match message.get_field(field).as_message() {
            Some(inner) => message_json(inner)?,
            None => serde_json::Value::Null,
        },
        None => message_json(&message)?,
    };
    let mut response = (rpc.success_status, axum::Json(serialized)).into_response();
    response.headers_mut().extend(reply.headers);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// A message as proto3 JSON, as every REST reply renders it.
pub(in crate::api) fn message_json(
    message: &DynamicMessage,
) -> Result<serde_json::Value, RestError> {
    let options = SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(false);
    let mut serialized = message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(|error| internal(format!("rendering the reply: {error}")))?;
    whole_numbers_as_integers(&mut serialized);
    Ok(serialized)
}

/// prost-reflect prints every double with a fraction (`-7.0`); Keel prints whole ones as
/// integers, as the gRPC door's `Struct` conversion does.
fn whole_numbers_as_integers(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Number(number) => {
            if let Some(double) = number.as_f64().filter(|_| number.is_f64()) {
                *value = crate::api::grpc::json_number(double);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(whole_numbers_as_integers),
        serde_json::Value::Object(fields) => {
            fields.values_mut().for_each(whole_numbers_as_integers)
        }
        _ => {}
    }
}

fn internal(message: impl Into<String>) -> RestError {
    let message = message.into();
    tracing::error!(%message, "REST transcoding failed");
    RestError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        Code::Internal,
        "INTERNAL",
        "internal error",
    )
}

/// Answers a plain `OPTIONS` on a REST path before the CORS layer, which takes every `OPTIONS`
/// for a preflight; a preflight (with `Origin`) goes on to it.
pub async fn plain_options(
    State(transcoder): State<Arc<Transcoder>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    if request.method() == http::Method::OPTIONS
        && !request.headers().contains_key(header::ORIGIN)
        && path.starts_with("/api/")
    {
        return transcoder.options(path);
    }
    next.run(request).await
}

/// The axum handler for every `/api/...` request.
pub async fn handle(
    State(transcoder): State<Arc<Transcoder>>,
    request: axum::extract::Request,
) -> Response {
    match transcoder.handle(request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}
