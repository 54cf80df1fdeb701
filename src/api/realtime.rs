//! The realtime doors over HTTP: WebSocket at `/api/v1/ws` and Server-Sent Events at
//! `/api/v1/events/stream`, both on the hub (`keel.realtime.v1.RealtimeService/Subscribe` is
//! the gRPC one). Messages are JSON objects with a `type`:
//!
//! - server: `connected`, `subscribed {channel, recovered?}`, `unsubscribed {channel,
//!   reason}`, `event {channel, id, event}`, `pong {timestamp}`, `error {code, message,
//!   channel?}`, `closed {code, message}` (SSE; WebSocket closes with a status code instead);
//! - client (WebSocket): `subscribe {channel, since?}`, `unsubscribe {channel}`, `ping
//!   {timestamp?}`.
//!
//! The credential travels as `authorization: Bearer …` or `x-api-key`, as the subprotocol
//! `bearer.<token>` offered beside `keel.realtime.v1` (browsers cannot set WebSocket headers),
//! or as `?token=` (EventSource and the original's clients); request logs never carry query
//! strings.

use super::client_address::client_info;
use super::contract::Contract;
use super::guard::{Presented, authenticate, presented_credential};
use super::status::RestError;
use crate::domain::auth::AuthService;
use crate::domain::error::{Error, ErrorKind};
use crate::domain::principal::Principal;
use crate::domain::realtime::{Channel, CloseReason, Connection, Hub, Outgoing, Subscribed};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use http::request::Parts;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

/// The subprotocol Keel speaks; a browser offers it with `bearer.<token>`.
const PROTOCOL: &str = "keel.realtime.v1";
const BEARER_PROTOCOL: &str = "bearer.";
/// The largest message a client may send (a subscribe is under 200 bytes).
const MAX_CLIENT_MESSAGE: usize = 16 * 1024;

/// How long a closing server waits for the client's close frame.
const CLOSE_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// WebSocket close codes (RFC 6455 §7.4.1).
const CLOSE_POLICY_VIOLATION: u16 = 1008;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_GOING_AWAY: u16 = 1001;
const CLOSE_TRY_AGAIN_LATER: u16 = 1013;
const CLOSE_SERVICE_RESTART: u16 = 1012;

pub struct RealtimeDoor {
    pub hub: Arc<Hub>,
    pub auth: Arc<AuthService>,
    pub contract: Arc<Contract>,
}

/// The query parameters the doors read.
fn query(parts: &Parts) -> HashMap<String, String> {
    form_urlencoded::parse(parts.uri.query().unwrap_or_default().as_bytes())
        .into_owned()
        .collect()
}

/// The caller, from the headers, the offered subprotocols or `?token=`.
async fn caller(
    door: &RealtimeDoor,
    parts: &Parts,
    query: &HashMap<String, String>,
) -> Result<Principal, Error> {
    let protocol_token = parts
        .headers
        .get_all(http::header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .find_map(|protocol| protocol.trim().strip_prefix(BEARER_PROTOCOL));
    let presented = presented_credential(&parts.headers)
        .or_else(|| protocol_token.map(Presented::bearer))
        .or_else(|| {
            query
                .get("token")
                .map(|token| Presented::bearer(token.trim()))
        });
    let principal = authenticate(&door.auth, presented).await?;
    Ok(Principal {
        client: client_info(&parts.extensions, &parts.headers),
        ..principal
    })
}

async fn open(
    door: &RealtimeDoor,
    parts: &Parts,
    query: &HashMap<String, String>,
) -> Result<Connection, Error> {
    door.hub.connect(caller(door, parts, query).await?)
}

fn subscribed_message(subscribed: &Subscribed) -> serde_json::Value {
    let mut message = json!({"type": "subscribed", "channel": subscribed.channel.name()});
    if let Some(recovered) = subscribed.recovered {
        message["recovered"] = json!(recovered);
    }
    message
}

fn error_message(error: &Error, channel: Option<&str>) -> serde_json::Value {
    let mut message = json!({"type": "error", "code": error.reason, "message": error.message});
    if let Some(channel) = channel {
        message["channel"] = json!(channel);
    }
    message
}

/// What the hub sent, as the client reads it.
fn outgoing_text(outgoing: &Outgoing) -> String {
    match outgoing {
        Outgoing::Event { channel, event } => format!(
            r#"{{"type":"event","channel":"{}","id":"{}","event":{}}}"#,
            channel.name(),
            event.id,
            event.json
        ),
        Outgoing::Unsubscribed { channel, reason } => {
            json!({"type": "unsubscribed", "channel": channel.name(), "reason": reason}).to_string()
        }
    }
}

/// `GET /api/v1/ws`.
pub async fn websocket(State(door): State<Arc<RealtimeDoor>>, mut parts: Parts) -> Response {
    let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(upgrade) => upgrade,
        Err(rejection) => {
            return RestError::new(
                rejection.status(),
                tonic::Code::InvalidArgument,
                "WEBSOCKET_REQUIRED",
                format!("{rejection}: connect with a WebSocket client"),
            )
            .into_response();
        }
    };
    let query = query(&parts);
    let opened = open(&door, &parts, &query).await;
    let settings = door.hub.settings().clone();
    upgrade
        .protocols([PROTOCOL])
        // Held by every idle connection: small, since clients send small messages (it grows
        // for a larger one).
        .read_buffer_size(1024)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |mut socket| async move {
            match opened {
                Ok(connection) => {
                    serve_socket(
                        socket,
                        connection,
                        settings.heartbeat,
                        settings.idle_timeout,
                    )
                    .await;
                }
                Err(error) => {
                    let code = match error.kind {
                        ErrorKind::ResourceExhausted => CLOSE_TRY_AGAIN_LATER,
                        ErrorKind::Unavailable => CLOSE_SERVICE_RESTART,
                        _ => CLOSE_POLICY_VIOLATION,
                    };
                    close(&mut socket, code, &error.message).await;
                }
            }
        })
}

async fn send(socket: &mut WebSocket, text: String) -> bool {
    socket.send(Message::Text(text.into())).await.is_ok()
}

/// Sends a close frame, then waits (briefly) for the client's own: the closing handshake, so
/// that what the client sends meanwhile (a pong) does not meet a reset connection.
async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    // A close reason is at most 123 bytes.
    let mut reason = reason.to_owned();
    while reason.len() > 123 {
        reason.pop();
    }
    let frame = Message::Close(Some(CloseFrame {
        code,
        reason: reason.into(),
    }));
    if socket.send(frame).await.is_err() {
        return;
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(message)) = socket.recv().await {
            if let Message::Close(_) = message {
                return;
            }
        }
    })
    .await;
}

/// Whether a read failed because the client's message was too large.
fn too_big(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(tungstenite::Error::Capacity(_)) = current.downcast_ref::<tungstenite::Error>()
        {
            return true;
        }
        source = current.source();
    }
    false
}

async fn serve_socket(
    mut socket: WebSocket,
    connection: Connection,
    heartbeat: std::time::Duration,
    idle_timeout: std::time::Duration,
) {
    // The connection is gone (its place free) before the closing handshake.
    if let Some((code, reason)) = converse(&mut socket, connection, heartbeat, idle_timeout).await {
        close(&mut socket, code, &reason).await;
    }
}

/// Serves the client until one side ends the conversation; answers the close code and reason
/// when the server ends it (`None`: the client left).
async fn converse(
    socket: &mut WebSocket,
    mut connection: Connection,
    heartbeat: std::time::Duration,
    idle_timeout: std::time::Duration,
) -> Option<(u16, String)> {
    let connected = json!({
        "type": "connected",
        "user_id": connection.user_id(),
        "heartbeat_seconds": heartbeat.as_secs(),
    });
    if !send(socket, connected.to_string()).await {
        return None;
    }
    let mut ticks = tokio::time::interval(heartbeat);
    ticks.tick().await;
    let mut heard = Instant::now();
    loop {
        tokio::select! {
            incoming = socket.recv() => {
                heard = Instant::now();
                let text = match incoming {
                    None | Some(Ok(Message::Close(_))) => return None,
                    Some(Err(error)) => {
                        let message = format!("messages are limited to {MAX_CLIENT_MESSAGE} bytes");
                        return too_big(&error).then_some((CLOSE_TOO_BIG, message));
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Binary(_))) => {
                        let error = Error::invalid_argument(
                            "INVALID_MESSAGE",
                            "send JSON text messages, not binary ones",
                        );
                        error_message(&error, None).to_string()
                    }
                    // Boxed: a subscribe's authorization is a deep future, and a connection
                    // would otherwise hold room for it the whole time it sits idle.
                    Some(Ok(Message::Text(text))) => {
                        Box::pin(answer(&mut connection, text.as_str())).await
                    }
                };
                if !send(socket, text).await {
                    return None;
                }
            }
            outgoing = connection.next() => match outgoing {
                Some(outgoing) => {
                    if !send(socket, outgoing_text(&outgoing)).await {
                        return None;
                    }
                }
                None => {
                    let reason = connection.close_reason().unwrap_or(CloseReason::ShuttingDown);
                    let code = match reason {
                        CloseReason::CredentialRevoked => CLOSE_POLICY_VIOLATION,
                        CloseReason::SlowConsumer => CLOSE_TRY_AGAIN_LATER,
                        CloseReason::ShuttingDown => CLOSE_SERVICE_RESTART,
                    };
                    return Some((code, reason.message().to_owned()));
                }
            },
            _ = ticks.tick() => {
                if heard.elapsed() >= idle_timeout {
                    let message = format!("nothing heard for {} s", idle_timeout.as_secs());
                    return Some((CLOSE_GOING_AWAY, message));
                }
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    return None;
                }
            }
        }
    }
}

/// A client message as the WebSocket protocol takes it.
#[derive(serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum Request {
    Subscribe {
        channel: String,
        since: Option<String>,
    },
    Unsubscribe {
        channel: String,
    },
    Ping {
        timestamp: Option<serde_json::Value>,
    },
}

/// The answer to one client message.
async fn answer(connection: &mut Connection, text: &str) -> String {
    let request = match serde_json::from_str::<Request>(text) {
        Ok(request) => request,
        Err(error) => {
            let error = Error::invalid_argument(
                "INVALID_MESSAGE",
                format!(
                    "{error}: send {{\"type\": \"subscribe\" | \"unsubscribe\" | \"ping\", …}}"
                ),
            );
            return error_message(&error, None).to_string();
        }
    };
    match request {
        Request::Ping { timestamp } => json!({"type": "pong", "timestamp": timestamp}).to_string(),
        Request::Subscribe { channel, since } => {
            let subscribed = async {
                let parsed = Channel::parse(&channel)?;
                let since = since.as_deref().map(event_id).transpose()?;
                connection.subscribe(parsed, since).await
            }
            .await;
            match subscribed {
                Ok(subscribed) => subscribed_message(&subscribed).to_string(),
                Err(error) => error_message(&error, Some(&channel)).to_string(),
            }
        }
        Request::Unsubscribe { channel } => match Channel::parse(&channel) {
            Ok(parsed) => {
                connection.unsubscribe(parsed);
                json!({"type": "unsubscribed", "channel": parsed.name(), "reason": "requested"})
                    .to_string()
            }
            Err(error) => error_message(&error, Some(&channel)).to_string(),
        },
    }
}

fn event_id(text: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(text.trim()).map_err(|_| {
        Error::invalid_argument(
            "INVALID_EVENT_ID",
            format!("{text:?} is not an event id (a UUID)"),
        )
    })
}

/// `GET /api/v1/events/stream?channels=user,organization:<id>`.
pub async fn event_stream(State(door): State<Arc<RealtimeDoor>>, parts: Parts) -> Response {
    match open_stream(&door, &parts).await {
        Ok((connection, subscriptions)) => {
            let keep_alive = KeepAlive::new().interval(door.hub.settings().heartbeat);
            Sse::new(sse_messages(connection, subscriptions))
                .keep_alive(keep_alive)
                .into_response()
        }
        Err(error) => RestError::from_domain(error, &door.contract.pool).into_response(),
    }
}

async fn open_stream(
    door: &RealtimeDoor,
    parts: &Parts,
) -> Result<(Connection, Vec<Subscribed>), Error> {
    let query = query(parts);
    let mut connection = open(door, parts, &query).await?;
    let channels: Vec<Channel> = query
        .get("channels")
        .map(String::as_str)
        .unwrap_or_default()
        .split(',')
        .filter(|channel| !channel.trim().is_empty())
        .map(Channel::parse)
        .collect::<Result<_, _>>()?;
    if channels.is_empty() {
        return Err(Error::invalid_argument(
            "INVALID_CHANNEL",
            "name the channels: ?channels=user,organization:<organization id>",
        ));
    }
    let since = parts
        .headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .or_else(|| query.get("last_event_id").map(String::as_str))
        .filter(|text| !text.trim().is_empty())
        .map(event_id)
        .transpose()?;
    let mut subscriptions = Vec::new();
    for channel in channels {
        subscriptions.push(connection.subscribe(channel, since).await?);
    }
    Ok((connection, subscriptions))
}

fn sse_messages(
    connection: Connection,
    subscriptions: Vec<Subscribed>,
) -> impl Stream<Item = Result<SseEvent, std::convert::Infallible>> {
    let opening = stream::iter(
        subscriptions
            .iter()
            .map(|subscribed| {
                Ok(SseEvent::default().data(subscribed_message(subscribed).to_string()))
            })
            .collect::<Vec<_>>(),
    );
    let live = stream::unfold(Some(connection), |connection| async move {
        let mut connection = connection?;
        match connection.next().await {
            Some(outgoing) => {
                let mut message = SseEvent::default().data(outgoing_text(&outgoing));
                if let Outgoing::Event { event, .. } = &outgoing {
                    message = message.id(event.id.to_string());
                }
                Some((Ok(message), Some(connection)))
            }
            None => {
                let reason = connection
                    .close_reason()
                    .unwrap_or(CloseReason::ShuttingDown);
                let closed =
                    json!({"type": "closed", "code": reason.code(), "message": reason.message()});
                Some((Ok(SseEvent::default().data(closed.to_string())), None))
            }
        }
    });
    stream::StreamExt::chain(opening, live)
}
