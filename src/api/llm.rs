//! `POST /api/v1/llm/chat/completions` with `"stream": true`: the completion as Server-Sent
//! Events, one `data: <chunk JSON>` per chunk of `StreamChatCompletion` and `data: [DONE]` at
//! the end (an error after the first chunk is an `event: error` with the REST error's JSON).
//! Without `stream`, the transcoder answers the route (`CreateChatCompletion`).

use super::pb::keel::llm::v1::StreamChatCompletionResponse;
use super::rest::{Transcoder, grpc_frame, message_json};
use super::status::RestError;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use http_body_util::Full;
use prost::Message;
use prost_reflect::DynamicMessage;
use std::sync::Arc;

const STREAM_RPC: &str = "/keel.llm.v1.LlmService/StreamChatCompletion";

/// `POST /api/v1/llm/chat/completions`.
pub async fn chat_completions(
    State(transcoder): State<Arc<Transcoder>>,
    request: axum::extract::Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let answered = async {
        let body = transcoder.read_body(body).await?;
        if wants_stream(&body) {
            stream(&transcoder, &parts, &body).await
        } else {
            transcoder.answer(&parts, &body).await
        }
    };
    answered.await.unwrap_or_else(IntoResponse::into_response)
}

/// Whether the body asks for a stream; a body that is not JSON is the transcoder's to refuse.
fn wants_stream(body: &Bytes) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .is_ok_and(|value| value.get("stream") == Some(&serde_json::Value::Bool(true)))
}

async fn stream(
    transcoder: &Transcoder,
    parts: &http::request::Parts,
    body: &Bytes,
) -> Result<Response, RestError> {
    // The streaming request has CreateChatCompletionRequest's fields and numbers, less
    // `stream` (which its decoder skips): the same bytes serve.
    let encoded = transcoder.encoded_message(parts, body)?;
    let rpc = transcoder.rpc(STREAM_RPC).ok_or_else(|| {
        RestError::new(
            http::StatusCode::INTERNAL_SERVER_ERROR,
            tonic::Code::Internal,
            "INTERNAL",
            "the streaming RPC is not in the contract",
        )
    })?;
    let output = rpc.descriptor.output();
    let chunks = transcoder
        .call_streaming::<StreamChatCompletionResponse>(
            rpc,
            parts,
            tonic::body::Body::new(Full::new(grpc_frame(&encoded))),
        )
        .await?;
    let pool = transcoder.pool().clone();
    let events = stream::unfold(Some(chunks), move |chunks| {
        let output = output.clone();
        let pool = pool.clone();
        async move {
            let mut chunks = chunks?;
            let event = match chunks.message().await {
                Ok(Some(chunk)) => {
                    let json = DynamicMessage::decode(output, chunk.encode_to_vec().as_slice())
                        .map_err(|error| error.to_string())
                        .and_then(|message| {
                            message_json(&message).map_err(|error| error.message.clone())
                        });
                    match json {
                        Ok(json) => SseEvent::default().data(json.to_string()),
                        Err(why) => {
                            tracing::error!(%why, "rendering a completion chunk failed");
                            return Some((SseEvent::default().event("error").data(why), None));
                        }
                    }
                }
                Ok(None) => return Some((SseEvent::default().data("[DONE]"), None)),
                Err(status) => {
                    let error = RestError::from_status(&status, &pool);
                    return Some((SseEvent::default().event("error").data(error.json()), None));
                }
            };
            Some((event, Some(chunks)))
        }
    });
    Ok(Sse::new(events.map(Ok::<_, std::convert::Infallible>))
        .keep_alive(KeepAlive::default())
        .into_response())
}
