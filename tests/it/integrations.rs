//! Integrations (seed 003): managed by organization admins, their secrets shown once and
//! replaced at once; messages they send received at the inbound doors (signed per Standard
//! Webhooks, or with the key; REST and gRPC), each message id once, published to webhooks,
//! the audit log and realtime; refusals (forged, stale, oversized, malformed, turned off)
//! store nothing.

use crate::harness::{Backend, TestApp, grpc_reason, with_token};
use crate::organizations::with_viewer;
use crate::realtime::{receive_until, socket, subscribe};
use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use keel::api::pb::keel::integration::v1::ReceiveIntegrationEventRequest;
use keel::api::pb::keel::integration::v1::integration_service_client::IntegrationServiceClient;
use reqwest::Method;
use serde_json::{Value, json};

crate::backend_tests!(
    integrations_are_managed_by_admins_and_their_secrets_shown_once,
    signed_messages_are_received_once_and_published,
    refused_messages_store_nothing,
    keys_authenticate_at_the_original_route_and_over_grpc
);

/// An integration of `organization_id`; answers its id and secret.
async fn create_integration(
    app: &TestApp,
    token: &str,
    organization_id: &str,
    integration_type: &str,
) -> (String, String) {
    let (status, created) = app
        .rest(
            Method::POST,
            "/api/v1/integrations",
            token,
            Some(json!({
                "organization_id": organization_id,
                "name": "Payments",
                "integration_type": integration_type,
                "description": "charges and refunds",
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    (
        created["integration"]["id"].as_str().unwrap().to_owned(),
        created["secret"].as_str().unwrap().to_owned(),
    )
}

/// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` under the `whsec_` secret, as a Standard
/// Webhooks sender signs.
fn sign(secret: &str, message_id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
    let mut content = format!("{message_id}.{timestamp}.").into_bytes();
    content.extend_from_slice(body);
    format!("v1,{}", STANDARD.encode(hmac::sign(&key, &content)))
}

/// Posts `body` to an integration's events, signed under `secret` with `message_id` at
/// `timestamp`; answers the status and body.
async fn post_signed(
    app: &TestApp,
    integration_id: &str,
    secret: &str,
    message_id: &str,
    timestamp: i64,
    body: &str,
) -> (u16, Value) {
    let response = app
        .http
        .post(app.url(&format!("/api/v1/integrations/{integration_id}/events")))
        .header("content-type", "application/json")
        .header("webhook-id", message_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            sign(secret, message_id, timestamp, body.as_bytes()),
        )
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn received(app: &TestApp, token: &str, integration_id: &str) -> Vec<Value> {
    let (status, listed) = app
        .rest(
            Method::GET,
            &format!("/api/v1/integrations/{integration_id}/events"),
            token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{listed}");
    listed["events"].as_array().cloned().unwrap_or_default()
}

async fn integrations_are_managed_by_admins_and_their_secrets_shown_once(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (organization_id, owner, viewer) = with_viewer(&app, "acme").await;
    let (id, secret) = create_integration(&app, &owner.access, &organization_id, "stripe").await;
    assert!(secret.starts_with("whsec_"), "{secret}");

    // Read by viewers, without the secret; changed by admins only.
    let (status, listed) = app
        .rest(
            Method::GET,
            &format!("/api/v1/integrations?organization_id={organization_id}"),
            &viewer.access,
            None,
        )
        .await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["integrations"][0]["id"], id.as_str());
    assert_eq!(listed["integrations"][0]["integration_type"], "stripe");
    assert!(listed["integrations"][0].get("secret").is_none());
    assert_eq!(listed["integrations"][0]["last_event_at"], Value::Null);
    for (method, path, body) in [
        (
            Method::POST,
            "/api/v1/integrations".to_owned(),
            Some(
                json!({ "organization_id": organization_id, "name": "x", "integration_type": "x" }),
            ),
        ),
        (
            Method::PUT,
            format!("/api/v1/integrations/{id}"),
            Some(json!({ "name": "Mine" })),
        ),
        (Method::DELETE, format!("/api/v1/integrations/{id}"), None),
        (
            Method::POST,
            format!("/api/v1/integrations/{id}/regenerate-secret"),
            Some(json!({})),
        ),
    ] {
        let (status, refused) = app.rest(method, &path, &viewer.access, body).await;
        assert_eq!(status, 403, "{path}: {refused}");
    }

    // Bad input: a clear 400 naming the field, nothing created.
    for (body, field) in [
        (
            json!({ "organization_id": organization_id, "name": "Hooks", "integration_type": "Not A Slug" }),
            "integration_type",
        ),
        (
            json!({ "organization_id": organization_id, "name": "   ", "integration_type": "crm" }),
            "name",
        ),
    ] {
        let (status, refused) = app
            .rest(
                Method::POST,
                "/api/v1/integrations",
                &owner.access,
                Some(body),
            )
            .await;
        assert_eq!(status, 400, "{refused}");
        assert_eq!(
            crate::harness::rest_violations(&refused)[0].0,
            field,
            "{refused}"
        );
    }

    let (status, updated) = app
        .rest(
            Method::PUT,
            &format!("/api/v1/integrations/{id}"),
            &owner.access,
            Some(json!({ "name": "Stripe (live)" })),
        )
        .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["name"], "Stripe (live)");
    assert_eq!(updated["description"], "charges and refunds");
    assert_eq!(updated["is_active"], true);

    // A new secret works at once and the old one no longer does.
    let (status, regenerated) = app
        .rest(
            Method::POST,
            &format!("/api/v1/integrations/{id}/regenerate-secret"),
            &owner.access,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{regenerated}");
    let new_secret = regenerated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    let (status, refused) = post_signed(&app, &id, &secret, "msg_1", now(), "{}").await;
    assert_eq!(status, 401, "{refused}");
    assert_eq!(refused["reason"], "INTEGRATION_AUTH_FAILED");
    let (status, accepted) = post_signed(&app, &id, &new_secret, "msg_1", now(), "{}").await;
    assert_eq!(status, 202, "{accepted}");

    // Deleted with what it received; gone for everyone.
    let (status, _) = app
        .rest(
            Method::DELETE,
            &format!("/api/v1/integrations/{id}"),
            &owner.access,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, missing) = app
        .rest(
            Method::GET,
            &format!("/api/v1/integrations/{id}"),
            &owner.access,
            None,
        )
        .await;
    assert_eq!(status, 404, "{missing}");
    assert_eq!(missing["reason"], "INTEGRATION_NOT_FOUND");
    let (status, _) = post_signed(&app, &id, &new_secret, "msg_2", now(), "{}").await;
    assert_eq!(status, 401);
}

async fn signed_messages_are_received_once_and_published(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (organization_id, owner, _) = with_viewer(&app, "acme").await;
    let (id, secret) = create_integration(&app, &owner.access, &organization_id, "stripe").await;
    let mut live = socket(&app, &owner.access).await;
    let channel = format!("organization:{organization_id}");
    assert_eq!(subscribe(&mut live, &channel).await["type"], "subscribed");

    let body = r#"{"type": "charge.succeeded", "amount": 4200}"#;
    let sent_at = now();
    let (status, first) = post_signed(&app, &id, &secret, "msg_charge_1", sent_at, body).await;
    assert_eq!(status, 202, "{first}");
    assert_eq!(first["duplicate"], false);
    assert_eq!(first["event"]["message_id"], "msg_charge_1");
    assert_eq!(first["event"]["authenticated_by"], "signature");
    assert_eq!(first["event"]["payload"], body, "stored as sent");

    // The sender's retry (and a capture replayed within the window): answered as a success,
    // nothing new stored or published.
    let (status, again) = post_signed(&app, &id, &secret, "msg_charge_1", sent_at, body).await;
    assert_eq!(status, 202, "{again}");
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["event"]["id"], first["event"]["id"]);
    let stored = received(&app, &owner.access, &id).await;
    assert_eq!(stored.len(), 1, "{stored:?}");

    // Published once: realtime, then the audit log, with the payload as JSON.
    let events = receive_until(&mut live, |message| {
        message["type"] == "event" && message["event"]["type"] == "integration.event_received"
    })
    .await;
    let published = &events.last().unwrap()["event"]["data"];
    assert_eq!(published["integration_id"], id.as_str());
    assert_eq!(published["message_id"], "msg_charge_1");
    assert_eq!(published["payload"]["amount"], 4200);
    let entries = crate::audit::wait_for_entries(
        &app,
        &owner.access,
        &format!("/api/v1/organizations/{organization_id}/audit-logs?page_size=100"),
        |entries| {
            entries
                .iter()
                .any(|entry| entry["action"] == "integration.event_received")
        },
    )
    .await;
    assert_eq!(
        entries
            .iter()
            .filter(|entry| entry["action"] == "integration.event_received")
            .count(),
        1
    );
    let (status, fetched) = app
        .rest(
            Method::GET,
            &format!("/api/v1/integrations/{id}"),
            &owner.access,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(fetched["last_event_at"].is_string(), "{fetched}");
}

async fn refused_messages_store_nothing(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.integration_max_payload_kib = Some("1".into());
    })
    .await;
    let (organization_id, owner, _) = with_viewer(&app, "acme").await;
    let (id, secret) = create_integration(&app, &owner.access, &organization_id, "crm").await;
    let send = |message_id: &'static str, timestamp: i64, signature: String, body: String| {
        app.http
            .post(app.url(&format!("/api/v1/integrations/{id}/events")))
            .header("content-type", "application/json")
            .header("webhook-id", message_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
    };
    let reason = |response: reqwest::Response| async move {
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        (
            status,
            body["reason"].as_str().unwrap_or_default().to_owned(),
        )
    };

    // Forged: a signature under another secret, or over another body.
    let other = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let forged = send(
        "m1",
        now(),
        sign(other, "m1", now(), b"{}"),
        "{}".to_owned(),
    );
    assert_eq!(
        reason(forged.await.unwrap()).await,
        (401, "INTEGRATION_AUTH_FAILED".to_owned())
    );
    let swapped = send(
        "m1",
        now(),
        sign(&secret, "m1", now(), b"{\"amount\": 1}"),
        "{\"amount\": 1000}".to_owned(),
    );
    assert_eq!(reason(swapped.await.unwrap()).await.0, 401);
    // No credentials at all.
    let bare = app
        .http
        .post(app.url(&format!("/api/v1/integrations/{id}/events")))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(reason(bare).await.0, 401);
    // Stale: signed correctly ten minutes ago.
    let stale = now() - 600;
    let replayed = send(
        "m2",
        stale,
        sign(&secret, "m2", stale, b"{}"),
        "{}".to_owned(),
    );
    assert_eq!(
        reason(replayed.await.unwrap()).await,
        (400, "TIMESTAMP_OUT_OF_RANGE".to_owned())
    );
    // Too large (the limit is 1 KiB here).
    let large = format!("{{\"padding\": \"{}\"}}", "x".repeat(2000));
    let oversized = send(
        "m3",
        now(),
        sign(&secret, "m3", now(), large.as_bytes()),
        large.clone(),
    );
    assert_eq!(
        reason(oversized.await.unwrap()).await,
        (413, "PAYLOAD_TOO_LARGE".to_owned())
    );
    // Sent as JSON, but not JSON.
    let malformed = send(
        "m4",
        now(),
        sign(&secret, "m4", now(), b"{not json"),
        "{not json".to_owned(),
    );
    assert_eq!(
        reason(malformed.await.unwrap()).await,
        (400, "INVALID_PAYLOAD".to_owned())
    );
    // Turned off.
    let (status, _) = app
        .rest(
            Method::PUT,
            &format!("/api/v1/integrations/{id}"),
            &owner.access,
            Some(json!({ "is_active": false })),
        )
        .await;
    assert_eq!(status, 200);
    let off = send(
        "m5",
        now(),
        sign(&secret, "m5", now(), b"{}"),
        "{}".to_owned(),
    );
    assert_eq!(
        reason(off.await.unwrap()).await,
        (409, "INTEGRATION_INACTIVE".to_owned())
    );
    assert!(received(&app, &owner.access, &id).await.is_empty());

    // A message id refused once can be sent properly afterwards.
    let (status, _) = app
        .rest(
            Method::PUT,
            &format!("/api/v1/integrations/{id}"),
            &owner.access,
            Some(json!({ "is_active": true })),
        )
        .await;
    assert_eq!(status, 200);
    let (status, accepted) = post_signed(&app, &id, &secret, "m4", now(), "{}").await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(received(&app, &owner.access, &id).await.len(), 1);
}

async fn keys_authenticate_at_the_original_route_and_over_grpc(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (organization_id, owner, _) = with_viewer(&app, "acme").await;
    let (id, secret) = create_integration(&app, &owner.access, &organization_id, "github").await;
    let (other_id, other_secret) =
        create_integration(&app, &owner.access, &organization_id, "jira").await;

    // The original's route: the type in the path, the key in Authorization or X-API-Key;
    // text that is not JSON is kept as text.
    let response = app
        .http
        .post(app.url("/api/v1/webhooks/github"))
        .bearer_auth(&secret)
        .header("content-type", "text/plain")
        .body("build 812 passed")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["event"]["authenticated_by"], "key");
    assert_eq!(accepted["event"]["integration_id"], id.as_str());
    assert_eq!(accepted["event"]["payload"], "build 812 passed");
    let response = app
        .http
        .post(app.url("/api/v1/webhooks/jira"))
        .header("x-api-key", &other_secret)
        .header("webhook-id", "jira-1")
        .json(&json!({ "issue": "KEEL-1" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    // A key sent to another integration's type (or id) is refused, as a wrong key is.
    for (path, key) in [
        ("/api/v1/webhooks/jira".to_owned(), &secret),
        (format!("/api/v1/integrations/{other_id}/events"), &secret),
        (
            "/api/v1/webhooks/github".to_owned(),
            &"whsec_wrong".to_owned(),
        ),
    ] {
        let response = app
            .http
            .post(app.url(&path))
            .bearer_auth(key)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{path}");
    }
    // The transcoded routes on the same paths still answer, and a literal route outranks
    // the door: `/api/v1/webhooks/events` is the event catalog, read only.
    let (status, _) = app
        .rest(Method::GET, "/api/v1/webhooks/events", &owner.access, None)
        .await;
    assert_eq!(status, 200);
    let response = app
        .http
        .post(app.url("/api/v1/webhooks/events"))
        .bearer_auth(&secret)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET");
    for (path, allowed) in [
        (
            format!("/api/v1/webhooks/{other_id}"),
            "DELETE, GET, POST, PUT, OPTIONS",
        ),
        (
            format!("/api/v1/integrations/{id}/events"),
            "GET, POST, OPTIONS",
        ),
        ("/api/v1/webhooks/events".to_owned(), "GET, OPTIONS"),
    ] {
        let options = app
            .http
            .request(Method::OPTIONS, app.url(&path))
            .send()
            .await
            .unwrap();
        assert_eq!(options.headers()["allow"], allowed, "{path}");
    }

    // gRPC: the same RPC with the headers' values as fields.
    let mut client = IntegrationServiceClient::new(app.channel().await);
    let payload = br#"{"ref": "main"}"#.to_vec();
    let timestamp = now();
    let signed = client
        .receive_integration_event(ReceiveIntegrationEventRequest {
            integration_id: id.clone(),
            payload: payload.clone().into(),
            content_type: "application/json".to_owned(),
            webhook_id: "push-1".to_owned(),
            webhook_timestamp: timestamp,
            webhook_signature: sign(&secret, "push-1", timestamp, &payload),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!signed.duplicate);
    assert_eq!(signed.event.unwrap().authenticated_by, "signature");
    let by_key = client
        .receive_integration_event(ReceiveIntegrationEventRequest {
            integration_type: "github".to_owned(),
            payload: b"ping".to_vec().into(),
            key: secret.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_key.event.unwrap().payload, "ping");
    // Keel's own credentials are no key here.
    let refused = client
        .receive_integration_event(with_token(
            ReceiveIntegrationEventRequest {
                integration_id: id.clone(),
                payload: b"{}".to_vec().into(),
                ..Default::default()
            },
            &owner.access,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    assert_eq!(grpc_reason(&refused), "INTEGRATION_AUTH_FAILED");
    assert_eq!(received(&app, &owner.access, &id).await.len(), 3);
}
