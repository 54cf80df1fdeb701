//! Realtime: events reach subscribers over WebSocket (tokio-tungstenite), Server-Sent Events
//! (reqwest) and gRPC streaming; subscriptions follow the subscriber's rights, revoked
//! credentials close connections, and a reconnecting client recovers what it missed.

use crate::harness::{Backend, TestApp, Tokens, with_token};
use crate::organizations::{add_member, create_organization, user};
use futures_util::{SinkExt, StreamExt};
use keel::api::pb::keel::realtime::v1::realtime_service_client::RealtimeServiceClient;
use keel::api::pb::keel::realtime::v1::{SubscribeRequest, subscribe_response};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

crate::backend_tests!(
    websocket_speaks_the_protocol_and_streams_my_notifications,
    organization_channels_follow_the_subscribers_rights,
    ended_credentials_close_their_connections,
    reconnecting_clients_recover_what_they_missed,
    connections_are_pinged_limited_and_closed_when_silent,
);

const WAIT: Duration = Duration::from_secs(10);

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The WebSocket endpoint of the server at `base_url` (`http://host:port`).
fn ws_url(base_url: &str) -> String {
    format!("{}/api/v1/ws", base_url.replacen("http://", "ws://", 1))
}

/// A WebSocket with the access token in the `authorization` header, past `connected`.
pub async fn socket(app: &TestApp, token: &str) -> Socket {
    socket_at(&app.base_url, token).await
}

/// As `socket`, to the server at `base_url` (`http://host:port`).
pub async fn socket_at(base_url: &str, token: &str) -> Socket {
    socket_with(base_url, token, &[]).await
}

/// As `socket_at`, with more request headers (`x-forwarded-for`).
pub async fn socket_with(base_url: &str, token: &str, headers: &[(&'static str, &str)]) -> Socket {
    let mut request = ws_url(base_url).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let connected = receive(&mut socket).await;
    assert_eq!(connected["type"], "connected", "{connected}");
    socket
}

async fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::Text(message.to_string().into()))
        .await
        .unwrap();
}

/// The next JSON message (pings and pongs skipped).
pub async fn receive(socket: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a message within 10 s")
            .expect("the socket is open")
            .expect("a frame");
        match frame {
            Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

/// Messages up to the first that `wanted` accepts (which is the last one answered).
pub async fn receive_until(socket: &mut Socket, wanted: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut received = Vec::new();
    loop {
        let message = receive(socket).await;
        let done = wanted(&message);
        received.push(message);
        if done {
            return received;
        }
    }
}

/// The close frame that ends the socket.
async fn closed(socket: &mut Socket) -> (CloseCode, String) {
    loop {
        let frame = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a close within 10 s");
        match frame {
            Some(Ok(Message::Close(Some(close)))) => {
                return (close.code, close.reason.as_str().to_owned());
            }
            Some(Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_))) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

pub async fn subscribe(socket: &mut Socket, channel: &str) -> Value {
    send(socket, json!({ "type": "subscribe", "channel": channel })).await;
    receive_until(socket, |message| message["type"] != "event")
        .await
        .pop()
        .unwrap()
}

fn is_event(message: &Value, channel: &str, kind: &str) -> bool {
    message["type"] == "event" && message["channel"] == channel && message["event"]["type"] == kind
}

async fn notify(app: &TestApp, operator: &str, user_id: &str, title: &str) {
    let (status, body) = app
        .rest(
            Method::POST,
            "/api/v1/notifications",
            operator,
            Some(json!({ "user_id": user_id, "title": title })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

async fn operator(app: &TestApp) -> String {
    app.create_superuser("root@example.com").await;
    app.login("root@example.com").await.access
}

async fn websocket_speaks_the_protocol_and_streams_my_notifications(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let root = operator(&app).await;
    let (alice_id, alice) = user(&app, "alice@example.com").await;
    let mut socket = socket(&app, &alice.access).await;

    send(&mut socket, json!({ "type": "ping", "timestamp": 1234 })).await;
    assert_eq!(
        receive(&mut socket).await,
        json!({ "type": "pong", "timestamp": 1234 })
    );
    // Malformed or unknown messages are answered, and the socket stays open.
    socket
        .send(Message::Text("{not json".into()))
        .await
        .unwrap();
    let error = receive(&mut socket).await;
    assert_eq!(
        (error["type"].as_str(), error["code"].as_str()),
        (Some("error"), Some("INVALID_MESSAGE"))
    );
    send(&mut socket, json!({ "type": "chat", "message": "Hello!" })).await;
    assert_eq!(receive(&mut socket).await["code"], "INVALID_MESSAGE");
    send(
        &mut socket,
        json!({ "type": "subscribe", "channel": "everything" }),
    )
    .await;
    let refused = receive(&mut socket).await;
    assert_eq!(
        (refused["code"].as_str(), refused["channel"].as_str()),
        (Some("INVALID_CHANNEL"), Some("everything"))
    );
    let stranger_org = format!("organization:{}", uuid::Uuid::now_v7());
    let refused = subscribe(&mut socket, &stranger_org).await;
    assert_eq!(refused["code"], "ORGANIZATION_NOT_FOUND", "{refused}");

    assert_eq!(
        subscribe(&mut socket, "user").await,
        json!({ "type": "subscribed", "channel": "user" })
    );
    notify(&app, &root, &alice_id, "Welcome").await;
    let received = receive_until(&mut socket, |message| {
        is_event(message, "user", "notification.created")
    })
    .await;
    let event = received.last().unwrap();
    assert_eq!(event["event"]["data"]["title"], "Welcome");
    assert_eq!(event["event"]["data"]["user_id"], alice_id.as_str());
    assert_eq!(event["id"], event["event"]["id"]);
    assert!(event["event"]["actor"]["type"] == "user", "{event}");
    // Where the operator called from stays out of what Alice receives.
    assert!(!event.to_string().contains("127.0.0.1"), "{event}");

    // After unsubscribing, nothing more arrives on the channel.
    send(
        &mut socket,
        json!({ "type": "unsubscribe", "channel": "user" }),
    )
    .await;
    assert_eq!(receive(&mut socket).await["type"], "unsubscribed");
    notify(&app, &root, &alice_id, "Unheard").await;
    send(&mut socket, json!({ "type": "ping" })).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    send(&mut socket, json!({ "type": "ping", "timestamp": "last" })).await;
    let tail = receive_until(&mut socket, |message| message["timestamp"] == "last").await;
    assert!(
        tail.iter().all(|message| message["type"] == "pong"),
        "{tail:?}"
    );

    // An oversized message closes the socket with 1009.
    let huge = "x".repeat(64 * 1024);
    let _ = socket.send(Message::Text(huge.into())).await;
    assert_eq!(closed(&mut socket).await.0, CloseCode::Size);

    // A credential may also come as a subprotocol (browsers) or as `?token=`; a bad one closes
    // the socket with 1008.
    let mut request = ws_url(&app.base_url).into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("keel.realtime.v1, bearer.{}", alice.access)
            .parse()
            .unwrap(),
    );
    let (mut by_protocol, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        response.headers()["sec-websocket-protocol"],
        "keel.realtime.v1"
    );
    assert_eq!(receive(&mut by_protocol).await["type"], "connected");
    let by_query = format!("{}?token={}", ws_url(&app.base_url), alice.access);
    let (mut by_query, _) = tokio_tungstenite::connect_async(by_query).await.unwrap();
    assert_eq!(receive(&mut by_query).await["type"], "connected");
    let forged = format!("{}?token={}x", ws_url(&app.base_url), alice.access);
    let (mut forged, _) = tokio_tungstenite::connect_async(forged).await.unwrap();
    assert_eq!(closed(&mut forged).await.0, CloseCode::Policy);
    let (mut anonymous, _) = tokio_tungstenite::connect_async(ws_url(&app.base_url))
        .await
        .unwrap();
    assert_eq!(closed(&mut anonymous).await.0, CloseCode::Policy);

    // A plain GET is told to use a WebSocket client.
    let response = app
        .http
        .get(ws_url(&app.base_url).replacen("ws://", "http://", 1))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error(), "{}", response.status());
}

async fn organization_channels_follow_the_subscribers_rights(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, owner) = user(&app, "owner@example.com").await;
    let (admin_id, admin) = user(&app, "admin@example.com").await;
    let (viewer_id, viewer) = user(&app, "viewer@example.com").await;
    let (_, stranger) = user(&app, "stranger@example.com").await;
    let org = create_organization(&app, &owner.access, "acme").await;
    add_member(&app, &owner.access, &org, &admin_id, json!(["admin"])).await;
    add_member(&app, &owner.access, &org, &viewer_id, json!(["viewer"])).await;
    let channel = format!("organization:{org}");

    // Reading an organization's channel takes `audit:read` there; outsiders learn nothing.
    let mut viewing = socket(&app, &viewer.access).await;
    assert_eq!(
        subscribe(&mut viewing, &channel).await["code"],
        "PERMISSION_DENIED"
    );
    let mut outside = socket(&app, &stranger.access).await;
    assert_eq!(
        subscribe(&mut outside, &channel).await["code"],
        "ORGANIZATION_NOT_FOUND"
    );
    assert_eq!(subscribe(&mut outside, "user").await["type"], "subscribed");

    let mut watching = socket(&app, &admin.access).await;
    assert_eq!(
        subscribe(&mut watching, &channel).await["type"],
        "subscribed"
    );
    let (status, team) = app
        .rest(
            Method::POST,
            "/api/v1/teams",
            &owner.access,
            Some(json!({ "organization_id": org, "name": "Blue", "slug": "blue" })),
        )
        .await;
    assert_eq!(status, 201, "{team}");
    let received = receive_until(&mut watching, |message| {
        is_event(message, &channel, "team.created")
    })
    .await;
    assert_eq!(received.last().unwrap()["event"]["data"]["name"], "Blue");
    assert_eq!(
        received.last().unwrap()["event"]["organization_id"],
        org.as_str()
    );

    // Demoted to viewer, the admin loses the channel at once.
    let (status, body) = app
        .rest(
            Method::PUT,
            &format!("/api/v1/organizations/{org}/members/{admin_id}"),
            &owner.access,
            Some(json!({ "roles": ["viewer"] })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let ended = receive_until(&mut watching, |message| message["type"] == "unsubscribed").await;
    assert_eq!(ended.last().unwrap()["channel"], channel.as_str());
    assert_eq!(
        subscribe(&mut watching, &channel).await["code"],
        "PERMISSION_DENIED"
    );

    // The stranger's own channel never carried the organization's events.
    let root = operator(&app).await;
    let stranger_id = app
        .get_with_token("/api/v1/users/me", &stranger.access)
        .await
        .json::<Value>()
        .await
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    notify(&app, &root, &stranger_id, "Marker").await;
    let seen = receive_until(&mut outside, |message| {
        is_event(message, "user", "notification.created")
    })
    .await;
    assert!(
        seen.iter()
            .all(|message| !message.to_string().contains(&org)),
        "{seen:?}"
    );

    // A superuser reads any organization's channel, until the right is taken away.
    let superuser = format!("/api/v1/users/{stranger_id}/superuser");
    let (status, body) = app.rest(Method::POST, &superuser, &root, None).await;
    assert_eq!(status, 200, "{body}");
    let mut overseeing = socket(&app, &stranger.access).await;
    assert_eq!(
        subscribe(&mut overseeing, &channel).await["type"],
        "subscribed"
    );
    let (status, body) = app.rest(Method::DELETE, &superuser, &root, None).await;
    assert_eq!(status, 200, "{body}");
    let ended = receive_until(&mut overseeing, |message| message["type"] == "unsubscribed").await;
    assert_eq!(ended.last().unwrap()["channel"], channel.as_str());
    assert_eq!(
        subscribe(&mut overseeing, &channel).await["code"],
        "ORGANIZATION_NOT_FOUND"
    );
}

async fn ended_credentials_close_their_connections(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // Verified: API keys need it.
    let alice = app.verified("alice@example.com").await;
    let other = app.login("alice@example.com").await;
    let mut signed_out = socket(&app, &alice.access).await;
    let mut staying = socket(&app, &other.access).await;
    assert_eq!(subscribe(&mut staying, "user").await["type"], "subscribed");

    let (status, body) = app
        .rest(
            Method::POST,
            "/api/v1/auth/logout",
            &alice.access,
            Some(json!({})),
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    let (code, reason) = closed(&mut signed_out).await;
    assert_eq!(code, CloseCode::Policy, "{reason}");
    assert!(reason.contains("session"), "{reason}");
    // The other session's socket stays, and hears of the sign-out on the user channel.
    let received = receive_until(&mut staying, |message| {
        is_event(message, "user", "session.revoked")
    })
    .await;
    assert!(!received.is_empty());

    // An API key's connection ends with the key.
    let (status, key) = app
        .rest(
            Method::POST,
            "/api/v1/api-keys",
            &other.access,
            Some(json!({ "name": "ci" })),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let mut request = ws_url(&app.base_url).into_client_request().unwrap();
    request
        .headers_mut()
        .insert("x-api-key", key["key"].as_str().unwrap().parse().unwrap());
    let (mut keyed, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(receive(&mut keyed).await["type"], "connected");
    let (status, body) = app
        .rest(
            Method::DELETE,
            &format!(
                "/api/v1/api-keys/{}",
                key["api_key"]["id"].as_str().unwrap()
            ),
            &other.access,
            None,
        )
        .await;
    assert!(status.is_success(), "{status} {body}");
    assert_eq!(closed(&mut keyed).await.0, CloseCode::Policy);
}

/// Reads server-sent events from `response` until `wanted` accepts one; answers each event's
/// id (if any) and JSON.
async fn sse_until(
    response: &mut reqwest::Response,
    buffer: &mut String,
    wanted: impl Fn(&Value) -> bool,
) -> Vec<(Option<String>, Value)> {
    let mut received = Vec::new();
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let mut id = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("id:") {
                    id = Some(value.trim().to_owned());
                }
                if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.trim());
                }
            }
            if data.is_empty() {
                continue;
            }
            let message: Value = serde_json::from_str(&data).unwrap();
            let done = wanted(&message);
            received.push((id, message));
            if done {
                return received;
            }
        }
        let chunk = tokio::time::timeout(WAIT, response.chunk())
            .await
            .expect("an event within 10 s")
            .unwrap()
            .expect("the stream is open");
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

async fn event_stream(
    app: &TestApp,
    token: &str,
    last_event_id: Option<&str>,
) -> reqwest::Response {
    let mut request = app
        .http
        .get(app.url("/api/v1/events/stream?channels=user"))
        .bearer_auth(token);
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    response
}

/// A gRPC subscription to the `user` channel, resumed after `last_id`.
fn resume_user_channel(last_id: &str, token: &str) -> tonic::Request<SubscribeRequest> {
    with_token(
        SubscribeRequest {
            channels: vec!["user".into()],
            last_event_id: last_id.to_owned(),
        },
        token,
    )
}

async fn next_message<T>(messages: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(WAIT, messages.message())
        .await
        .expect("a message within 10 s")
        .unwrap()
        .expect("the stream is open")
}

fn titles(events: &[(Option<String>, Value)]) -> Vec<String> {
    events
        .iter()
        .filter(|(_, message)| is_event(message, "user", "notification.created"))
        .map(|(_, message)| {
            message["event"]["data"]["title"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

async fn reconnecting_clients_recover_what_they_missed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let root = operator(&app).await;
    let (alice_id, alice) = user(&app, "alice@example.com").await;

    // Over SSE: one notification seen, then the client goes away.
    let mut stream = event_stream(&app, &alice.access, None).await;
    let mut buffer = String::new();
    let opening = sse_until(&mut stream, &mut buffer, |message| {
        message["type"] == "subscribed"
    })
    .await;
    assert_eq!(
        opening.last().unwrap().1,
        json!({ "type": "subscribed", "channel": "user" })
    );
    notify(&app, &root, &alice_id, "First").await;
    let seen = sse_until(&mut stream, &mut buffer, |message| {
        is_event(message, "user", "notification.created")
    })
    .await;
    let (last_id, _) = seen.last().unwrap().clone();
    let last_id = last_id.expect("events carry their id");
    drop(stream);

    notify(&app, &root, &alice_id, "Second").await;
    notify(&app, &root, &alice_id, "Third").await;
    // Both are dispatched before the client comes back.
    let mut watcher = socket(&app, &alice.access).await;
    assert_eq!(subscribe(&mut watcher, "user").await["type"], "subscribed");
    notify(&app, &root, &alice_id, "Fourth").await;
    receive_until(&mut watcher, |message| {
        message["event"]["data"]["title"] == "Fourth"
    })
    .await;

    let mut resumed = event_stream(&app, &alice.access, Some(&last_id)).await;
    let mut buffer = String::new();
    let recovered = sse_until(&mut resumed, &mut buffer, |message| {
        message["event"]["data"]["title"] == "Fourth"
    })
    .await;
    assert_eq!(
        recovered[0].1,
        json!({ "type": "subscribed", "channel": "user", "recovered": true })
    );
    assert_eq!(titles(&recovered), ["Second", "Third", "Fourth"]);

    // An id the history does not hold: told so, and live events follow.
    let mut lost = event_stream(&app, &alice.access, Some(&uuid::Uuid::now_v7().to_string())).await;
    let mut buffer = String::new();
    let opening = sse_until(&mut lost, &mut buffer, |message| {
        message["type"] == "subscribed"
    })
    .await;
    assert_eq!(opening.last().unwrap().1["recovered"], false);

    // The same over gRPC.
    let mut grpc = RealtimeServiceClient::new(app.channel().await);
    let mut messages = grpc
        .subscribe(resume_user_channel(&last_id, &alice.access))
        .await
        .unwrap()
        .into_inner();
    let mut titles = Vec::new();
    let mut first = None;
    while titles.len() < 3 {
        let message = next_message(&mut messages).await;
        match message.message.unwrap() {
            subscribe_response::Message::Subscribed(subscribed) => first = Some(subscribed),
            subscribe_response::Message::Event(event) if event.r#type == "notification.created" => {
                assert_eq!(event.channel, "user");
                let data = event.data.unwrap();
                titles.push(match data.fields["title"].kind.clone().unwrap() {
                    prost_types::value::Kind::StringValue(title) => title,
                    other => panic!("{other:?}"),
                });
            }
            _ => {}
        }
    }
    let first = first.expect("subscribed first");
    assert_eq!(
        (first.channel.as_str(), first.recovered),
        ("user", Some(true))
    );
    assert_eq!(titles, ["Second", "Third", "Fourth"]);

    // Browsers stream over gRPC-web.
    let (transport, origin) = app.grpc_web_transport();
    let mut web = RealtimeServiceClient::with_origin(transport, origin);
    let mut messages = web
        .subscribe(resume_user_channel(&last_id, &alice.access))
        .await
        .unwrap()
        .into_inner();
    let first = next_message(&mut messages).await;
    assert!(
        matches!(first.message, Some(subscribe_response::Message::Subscribed(ref subscribed)) if subscribed.recovered == Some(true)),
        "{first:?}"
    );
    let second = next_message(&mut messages).await;
    assert!(
        matches!(second.message, Some(subscribe_response::Message::Event(ref event)) if event.r#type == "notification.created"),
        "{second:?}"
    );

    // Unknown channels and bad ids are refused before any stream starts.
    let refused = grpc
        .subscribe(with_token(
            SubscribeRequest {
                channels: vec!["organization:nope".into()],
                last_event_id: String::new(),
            },
            &alice.access,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    let (status, body) = app
        .rest(
            Method::GET,
            "/api/v1/events/stream?channels=nope",
            &alice.access,
            None,
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["reason"].as_str()),
        (400, Some("INVALID_CHANNEL"))
    );
    let unauthenticated = app
        .http
        .get(app.url("/api/v1/events/stream?channels=user"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauthenticated.status(), 401);
}

/// With Redis, an event dispatched by one process reaches a subscriber of another; the second
/// process looks for events on its own only once a minute here, so only Redis can bring it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_subscribers_on_another_replica() {
    if !crate::harness::services_available() {
        return;
    }
    let (first, second) = TestApp::two_replicas(
        |_| {},
        |second| second.job_poll_milliseconds = Some("60000".into()),
    )
    .await;

    let root = operator(&first).await;
    let (alice_id, alice): (String, Tokens) = user(&first, "alice@example.com").await;
    let mut socket = socket(&second, &alice.access).await;
    assert_eq!(subscribe(&mut socket, "user").await["type"], "subscribed");
    notify(&first, &root, &alice_id, "Across").await;
    let received = receive_until(&mut socket, |message| {
        is_event(message, "user", "notification.created")
    })
    .await;
    assert_eq!(received.last().unwrap()["event"]["data"]["title"], "Across");
}

async fn connections_are_pinged_limited_and_closed_when_silent(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.realtime_heartbeat_seconds = Some("1".into());
        settings.realtime_idle_timeout_seconds = Some("2".into());
        settings.realtime_max_connections_per_user = Some("2".into());
    })
    .await;
    let (_, alice) = user(&app, "alice@example.com").await;
    let mut silent = socket(&app, &alice.access).await;
    let mut listening = socket(&app, &alice.access).await;
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics.contains("\nkeel_realtime_connections 2\n"),
        "{metrics}"
    );

    // A third connection of the same user is refused, on every door.
    let (mut third, _) = tokio_tungstenite::connect_async(format!(
        "{}?token={}",
        ws_url(&app.base_url),
        alice.access
    ))
    .await
    .unwrap();
    let (code, reason) = closed(&mut third).await;
    assert_eq!(code, CloseCode::Again, "{reason}");
    let (status, body) = app
        .rest(
            Method::GET,
            "/api/v1/events/stream?channels=user",
            &alice.access,
            None,
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["reason"].as_str()),
        (429, Some("TOO_MANY_CONNECTIONS"))
    );

    // The listening client answers the server's pings (tungstenite does, as browsers do) and
    // stays; the silent one reads nothing, so answers nothing, and is closed.
    let started = std::time::Instant::now();
    let mut pings = 0;
    while started.elapsed() < Duration::from_millis(3_500) {
        if let Ok(Some(Ok(Message::Ping(_)))) =
            tokio::time::timeout(Duration::from_millis(200), listening.next()).await
        {
            pings += 1;
        }
    }
    assert!(pings >= 2, "{pings} pings in 3.5 s");
    send(&mut listening, json!({ "type": "ping", "timestamp": 1 })).await;
    assert_eq!(receive(&mut listening).await["type"], "pong");
    let (code, reason) = closed(&mut silent).await;
    assert_eq!(code, CloseCode::Away, "{reason}");
    assert!(reason.contains("nothing heard"), "{reason}");
    // Its place is free again.
    let (mut again, _) = tokio_tungstenite::connect_async(format!(
        "{}?token={}",
        ws_url(&app.base_url),
        alice.access
    ))
    .await
    .unwrap();
    assert_eq!(receive(&mut again).await["type"], "connected");
}
