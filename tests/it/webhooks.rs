//! Webhooks against real receivers on loopback: events an organization subscribes to arrive
//! signed (checked by a verifier written here from the Standard Webhooks specification),
//! failures are retried then given up to the dead-letter queue, from which a retry delivers;
//! replay, recover, test events, secret rotation with its grace period; and the SSRF guard,
//! which refuses every loopback spelling and turns a failing webhook off.

use crate::harness::{Backend, TestApp, with_token};
use crate::invitations::verified_user;
use crate::organizations::{create_organization, user};
use aws_lc_rs::hmac;
use axum::extract::State;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use keel::api::pb::keel::webhook::v1::ReplayWebhookDeliveryRequest;
use keel::api::pb::keel::webhook::v1::webhook_service_client::WebhookServiceClient;
use reqwest::Method;
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

crate::backend_tests!(
    an_endpoint_gets_no_more_than_its_rate,
    events_reach_subscribed_endpoints_signed_and_retried,
    private_targets_are_refused_and_a_failing_webhook_is_turned_off
);

/// A request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    at: std::time::Instant,
    id: String,
    timestamp: String,
    signature: String,
    /// `x-request-id`: the request that wrote the event.
    request_id: String,
    body: String,
}

#[derive(Default)]
struct Receiver {
    received: Mutex<Vec<Received>>,
    /// Statuses to answer, in order; 200 once they run out.
    answers: Mutex<VecDeque<u16>>,
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: http::HeaderMap,
    body: String,
) -> (http::StatusCode, &'static str) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    receiver.received.lock().unwrap().push(Received {
        at: std::time::Instant::now(),
        id: header("webhook-id"),
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        request_id: header("x-request-id"),
        body,
    });
    let status = receiver.answers.lock().unwrap().pop_front().unwrap_or(200);
    (
        http::StatusCode::from_u16(status).unwrap(),
        "receiver says hello",
    )
}

/// A receiver on an ephemeral loopback port; answers its URL.
async fn start_receiver() -> (Arc<Receiver>, String) {
    let receiver = Arc::new(Receiver::default());
    let router = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (receiver, format!("http://{address}/hook"))
}

impl Receiver {
    /// The requests received, once there are `count`.
    async fn wait_for(&self, count: usize) -> Vec<Received> {
        for _ in 0..150 {
            let received = self.received.lock().unwrap().clone();
            if received.len() >= count {
                return received;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{count} requests never arrived: {:#?}",
            self.received.lock().unwrap()
        );
    }
}

/// Standard Webhooks verification, from the specification: the secret is the base64 after
/// `whsec_`; each `v1,<base64>` in the header is an HMAC-SHA256 of `id.timestamp.body`; the
/// timestamp is within five minutes. Answers how many of the signatures `secret` made.
fn verified_by(message: &Received, secret: &str) -> usize {
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .unwrap();
    let sent: i64 = message.timestamp.parse().unwrap();
    assert!((chrono::Utc::now().timestamp() - sent).abs() < 300);
    let content = format!("{}.{}.{}", message.id, message.timestamp, message.body);
    let key = hmac::Key::new(hmac::HMAC_SHA256, &key);
    message
        .signature
        .split(' ')
        .filter_map(|signature| signature.strip_prefix("v1,"))
        .filter(|signature| {
            STANDARD
                .decode(signature)
                .is_ok_and(|tag| hmac::verify(&key, content.as_bytes(), &tag).is_ok())
        })
        .count()
}

fn body(message: &Received) -> Value {
    serde_json::from_str(&message.body).unwrap()
}

async fn deliveries(app: &TestApp, token: &str, webhook_id: &str) -> Vec<Value> {
    let (status, listed) = app
        .rest(
            Method::GET,
            &format!("/api/v1/webhooks/{webhook_id}/deliveries"),
            token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{listed}");
    listed["deliveries"].as_array().cloned().unwrap_or_default()
}

/// The deliveries of a webhook once `ready` holds for them.
async fn wait_for_deliveries(
    app: &TestApp,
    token: &str,
    webhook_id: &str,
    ready: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    for _ in 0..150 {
        let listed = deliveries(app, token, webhook_id).await;
        if ready(&listed) {
            return listed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "deliveries never got there: {:#?}",
        deliveries(app, token, webhook_id).await
    );
}

async fn rename(app: &TestApp, token: &str, organization_id: &str, name: &str) {
    let (status, body) = app
        .rest(
            Method::PUT,
            &format!("/api/v1/organizations/{organization_id}"),
            token,
            Some(json!({ "name": name })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

async fn events_reach_subscribed_endpoints_signed_and_retried(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create_superuser("root@example.com").await;
    let root = app.login("root@example.com").await.access;
    let (_, alice) = verified_user(&app, "alice@example.com").await;
    let (bob_id, _) = user(&app, "bob@example.com").await;
    let organization_id = create_organization(&app, &alice.access, "acme").await;
    let (receiver, url) = start_receiver().await;

    let (status, created) = app
        .rest(
            Method::POST,
            "/api/v1/webhooks",
            &alice.access,
            Some(json!({
                "organization_id": organization_id,
                "url": url,
                "events": ["member.*", "organization.updated"],
                "description": "ops",
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let webhook_id = created["webhook"]["id"].as_str().unwrap().to_owned();
    let (status, fetched) = app
        .rest(
            Method::GET,
            &format!("/api/v1/webhooks/{webhook_id}"),
            &alice.access,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        fetched["events"],
        json!(["member.*", "organization.updated"])
    );
    assert!(fetched.get("secret").is_none(), "the secret is shown once");

    // Subscribed events arrive signed; others (team.created) do not. Each carries the id of
    // the request that wrote it.
    let renamed = app
        .http
        .put(app.url(&format!("/api/v1/organizations/{organization_id}")))
        .bearer_auth(&alice.access)
        .header("x-request-id", "rename-acme-2")
        .json(&json!({ "name": "Acme 2" }))
        .send()
        .await
        .unwrap();
    assert_eq!(renamed.status(), 200);
    let (status, _) = app
        .rest(
            Method::POST,
            "/api/v1/teams",
            &alice.access,
            Some(json!({ "organization_id": organization_id, "name": "Core", "slug": "core" })),
        )
        .await;
    assert_eq!(status, 201);
    crate::organizations::add_member(&app, &alice.access, &organization_id, &bob_id, json!([]))
        .await;
    // Deliveries run side by side: they arrive in any order.
    let received = receiver.wait_for(2).await;
    let of_type = |kind: &str| {
        received
            .iter()
            .find(|message| body(message)["type"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in {received:#?}"))
            .clone()
    };
    let (updated, added_message) = (of_type("organization.updated"), of_type("member.added"));
    for message in &received {
        assert_eq!(verified_by(message, &secret), 1, "{message:?}");
    }
    assert_eq!(updated.request_id, "rename-acme-2");
    assert_eq!(added_message.request_id.len(), 36, "{added_message:?}");
    let added = body(&added_message);
    assert_eq!(added["data"]["user_id"], bob_id.as_str());
    assert_eq!(added["data"]["organization_id"], organization_id.as_str());
    let delivered = wait_for_deliveries(&app, &alice.access, &webhook_id, |listed| {
        listed.len() == 2
            && listed
                .iter()
                .all(|d| d["status"] == "DELIVERY_STATUS_SUCCEEDED")
    })
    .await;
    assert_eq!(delivered[0]["response_status_code"], 200);
    assert_eq!(delivered[0]["response_excerpt"], "receiver says hello");
    assert_eq!(delivered[0]["event_id"].as_str().unwrap(), added_message.id);
    let tampered = Received {
        body: updated.body.replace("Acme 2", "Acme 3"),
        ..updated.clone()
    };
    assert_eq!(verified_by(&tampered, &secret), 0, "a changed body fails");

    // A failing endpoint: 3 attempts (1 s apart here), then a dead letter; its retry delivers.
    receiver.answers.lock().unwrap().extend([500, 503, 500]);
    rename(&app, &alice.access, &organization_id, "Acme 3").await;
    let failed = wait_for_deliveries(&app, &alice.access, &webhook_id, |listed| {
        listed[0]["status"] == "DELIVERY_STATUS_FAILED"
    })
    .await;
    assert_eq!(failed[0]["attempts"], 3);
    assert_eq!(failed[0]["response_status_code"], 500);
    let failed_id = failed[0]["id"].as_str().unwrap().to_owned();
    // Each attempt is kept as it went.
    let (status, history) = app
        .rest(
            Method::GET,
            &format!("/api/v1/webhooks/{webhook_id}/deliveries/{failed_id}/attempts"),
            &alice.access,
            None,
        )
        .await;
    assert_eq!(status, 200, "{history}");
    let attempts: Vec<(i64, i64, String)> = history["attempts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|attempt| {
            (
                attempt["attempt"].as_i64().unwrap(),
                attempt["response_status_code"].as_i64().unwrap(),
                attempt["error"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        attempts,
        [500, 503, 500]
            .into_iter()
            .zip(1..)
            .map(|(code, attempt)| (attempt, code, format!("the endpoint answered {code}")))
            .collect::<Vec<_>>()
    );
    let (status, history) = app
        .rest(
            Method::GET,
            &format!(
                "/api/v1/webhooks/{webhook_id}/deliveries/{}/attempts",
                delivered[0]["id"].as_str().unwrap()
            ),
            &alice.access,
            None,
        )
        .await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(history["attempts"][0]["response_status_code"], 200);
    assert_eq!(
        history["attempts"][0]["response_excerpt"],
        "receiver says hello"
    );
    let (status, dead) = app
        .rest(
            Method::GET,
            &format!("/api/v1/dead-letter/{failed_id}"),
            &root,
            None,
        )
        .await;
    assert_eq!(status, 200, "{dead}");
    assert_eq!(dead["job_type"], "webhook");
    let (status, retried) = app
        .rest(
            Method::POST,
            &format!("/api/v1/dead-letter/{failed_id}/retry"),
            &root,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{retried}");
    let received = receiver.wait_for(6).await;
    assert_eq!(
        received[5].id, received[4].id,
        "a retry keeps the event's webhook-id"
    );
    let mut outcome = Value::Null;
    for _ in 0..100 {
        let (_, dead) = app
            .rest(
                Method::GET,
                &format!("/api/v1/dead-letter/{failed_id}"),
                &root,
                None,
            )
            .await;
        outcome = dead["retry_outcome"].clone();
        if outcome == "RETRY_OUTCOME_SUCCEEDED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(outcome, "RETRY_OUTCOME_SUCCEEDED");

    // Replay one delivery (gRPC), recover the failed ones since a time, a test event.
    let mut grpc = WebhookServiceClient::new(app.channel().await);
    grpc.replay_webhook_delivery(with_token(
        ReplayWebhookDeliveryRequest {
            webhook_id: webhook_id.clone(),
            delivery_id: delivered[1]["id"].as_str().unwrap().to_owned(),
            organization_id: String::new(),
        },
        &alice.access,
    ))
    .await
    .unwrap();
    let received = receiver.wait_for(7).await;
    assert_eq!(received[6].id, updated.id);
    let (status, recovered) = app
        .rest(
            Method::POST,
            &format!("/api/v1/webhooks/{webhook_id}/recover"),
            &alice.access,
            Some(json!({ "since": "2020-01-01T00:00:00Z" })),
        )
        .await;
    assert_eq!(status, 200, "{recovered}");
    assert_eq!(recovered["deliveries"].as_array().unwrap().len(), 1);
    let received = receiver.wait_for(8).await;
    assert_eq!(body(&received[7])["type"], "organization.updated");
    let (status, test) = app
        .rest(
            Method::POST,
            &format!("/api/v1/webhooks/{webhook_id}/test"),
            &alice.access,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{test}");
    assert_eq!(test["event_type"], "test.event");
    let received = receiver.wait_for(9).await;
    assert_eq!(body(&received[8])["type"], "test.event");

    // Rotation: the old and the new secret both sign during the grace period.
    let (status, rotated) = app
        .rest(
            Method::POST,
            &format!("/api/v1/webhooks/{webhook_id}/rotate-secret"),
            &alice.access,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    rename(&app, &alice.access, &organization_id, "Acme 4").await;
    let received = receiver.wait_for(10).await;
    assert_eq!(verified_by(&received[9], &new_secret), 1);
    assert_eq!(verified_by(&received[9], &secret), 1);
    // After the grace period, the new one alone.
    app.clock.advance(chrono::Duration::hours(25));
    let alice = app.login("alice@example.com").await;
    rename(&app, &alice.access, &organization_id, "Acme 5").await;
    let received = receiver.wait_for(11).await;
    assert_eq!(verified_by(&received[10], &new_secret), 1);
    assert_eq!(verified_by(&received[10], &secret), 0);

    // A delivery queued before the webhook was turned off waits, and goes once it is on again.
    let webhook_path = format!("/api/v1/webhooks/{webhook_id}");
    let toggle = |active: bool| {
        app.rest(
            Method::PUT,
            &webhook_path,
            &alice.access,
            Some(json!({ "is_active": active })),
        )
    };
    assert_eq!(toggle(false).await.0, 200);
    let store = keel::store::SqlStore::connect(&app.config.database_url)
        .await
        .unwrap();
    let held = keel::domain::webhooks::Delivery {
        id: uuid::Uuid::now_v7(),
        event_id: uuid::Uuid::now_v7(),
        status: keel::domain::webhooks::DeliveryStatus::Pending,
        attempts: 0,
        next_attempt_at: None,
        ..keel::domain::webhooks::WebhookStore::find_delivery(
            &store,
            delivered[0]["id"].as_str().unwrap().parse().unwrap(),
        )
        .await
        .unwrap()
        .unwrap()
    };
    keel::domain::webhooks::WebhookStore::insert_deliveries(&store, std::slice::from_ref(&held))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.received.lock().unwrap().len(),
        11,
        "held while off"
    );
    assert_eq!(toggle(true).await.0, 200);
    let received = receiver.wait_for(12).await;
    assert_eq!(received[11].id, held.event_id.to_string());
    store.close().await;

    // Webhook changes are audited; deleting stops deliveries.
    let (status, _) = app
        .rest(
            Method::DELETE,
            &format!("/api/v1/webhooks/{webhook_id}"),
            &alice.access,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let audited = crate::audit::wait_for_entries(
        &app,
        &alice.access,
        &format!("/api/v1/organizations/{organization_id}/audit-logs?target_type=webhook"),
        |entries| entries.len() >= 5,
    )
    .await;
    let actions: Vec<&str> = audited
        .iter()
        .map(|entry| entry["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "webhook.deleted",
            "webhook.updated",
            "webhook.updated",
            "webhook.secret_rotated",
            "webhook.created"
        ]
    );
    rename(&app, &alice.access, &organization_id, "Acme 6").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received.lock().unwrap().len(), 12);
}

async fn private_targets_are_refused_and_a_failing_webhook_is_turned_off(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.webhook_allow_private_targets = Some("false".into());
        settings.webhook_disable_after_failures = Some("3".into());
    })
    .await;
    let (_, alice) = verified_user(&app, "alice@example.com").await;
    let organization_id = create_organization(&app, &alice.access, "acme").await;
    let (receiver, url) = start_receiver().await;
    let port = url
        .trim_start_matches("http://127.0.0.1:")
        .trim_end_matches("/hook")
        .to_owned();
    let mut webhooks = Vec::new();
    for host in [
        "127.0.0.1",
        "localhost",
        "[::1]",
        "127.1",
        "2130706433",
        "[::ffff:127.0.0.1]",
    ] {
        let (status, created) = app
            .rest(
                Method::POST,
                "/api/v1/webhooks",
                &alice.access,
                Some(json!({
                    "organization_id": organization_id,
                    "url": format!("http://{host}:{port}/hook"),
                    "events": ["*"],
                })),
            )
            .await;
        assert_eq!(status, 201, "{created}");
        webhooks.push(created["webhook"]["id"].as_str().unwrap().to_owned());
    }
    for round in 0..3 {
        rename(
            &app,
            &alice.access,
            &organization_id,
            &format!("Acme {round}"),
        )
        .await;
    }
    for webhook_id in &webhooks {
        // Its own webhook.created and the renames; once turned off, the rest wait.
        let failed = |delivery: &&Value| delivery["status"] == "DELIVERY_STATUS_FAILED";
        let listed = wait_for_deliveries(&app, &alice.access, webhook_id, |listed| {
            listed.iter().filter(failed).count() >= 3
        })
        .await;
        for delivery in listed.iter().filter(failed) {
            assert_eq!(delivery["attempts"], 1, "a refused target is not retried");
            assert!(
                delivery["error"]
                    .as_str()
                    .unwrap()
                    .contains("not a public address"),
                "{delivery}"
            );
        }
    }
    assert!(
        receiver.received.lock().unwrap().is_empty(),
        "nothing reached the private address"
    );

    // Three failures in a row turned each off, and the organization's log says so.
    for webhook_id in &webhooks {
        let (_, webhook) = app
            .rest(
                Method::GET,
                &format!("/api/v1/webhooks/{webhook_id}"),
                &alice.access,
                None,
            )
            .await;
        assert_eq!(webhook["is_active"], false, "{webhook}");
        assert!(
            webhook["disabled_reason"]
                .as_str()
                .unwrap()
                .contains("3 deliveries in a row failed")
        );
    }
    let disabled = crate::audit::wait_for_entries(
        &app,
        &alice.access,
        &format!("/api/v1/organizations/{organization_id}/audit-logs?action=webhook.disabled"),
        |entries| entries.len() == webhooks.len(),
    )
    .await;
    assert!(
        disabled
            .iter()
            .all(|entry| entry["actor"]["type"] == "system")
    );
    // The organization's owners and admins are told (with the audit entry, in one commit).
    let (_, notified) = app
        .rest(Method::GET, "/api/v1/notifications", &alice.access, None)
        .await;
    let turned_off: Vec<&Value> = notified["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|notification| notification["title"] == "A webhook was turned off")
        .collect();
    assert_eq!(turned_off.len(), webhooks.len(), "{notified}");
    assert!(
        turned_off[0]["body"]
            .as_str()
            .unwrap()
            .contains("3 deliveries in a row failed")
    );

    // Bad input: a URL that is no http(s) URL, an unknown event type.
    for (field, value, reason) in [
        ("url", json!("ftp://example.com/hook"), "string.pattern"),
        ("events", json!(["nope.*"]), "UNKNOWN_EVENT_TYPE"),
    ] {
        let mut request = json!({
            "organization_id": organization_id,
            "url": "https://hooks.example.com/keel",
            "events": ["*"],
        });
        request[field] = value;
        let (status, body) = app
            .rest(
                Method::POST,
                "/api/v1/webhooks",
                &alice.access,
                Some(request),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        let violations = crate::harness::rest_violations(&body);
        assert_eq!(violations[0].0, field, "{body}");
        assert_eq!(violations[0].1, reason, "{body}");
    }
}

/// A webhook limited to 1 delivery a second gets three events over more than a second, each
/// at its first attempt (a postponed delivery is not a failed one).
async fn an_endpoint_gets_no_more_than_its_rate(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.cleanup_schedule = Some("* * * * * *".into());
    })
    .await;
    let (_, alice) = verified_user(&app, "alice@example.com").await;
    let organization_id = create_organization(&app, &alice.access, "acme").await;
    let (receiver, url) = start_receiver().await;
    let (status, created) = app
        .rest(
            Method::POST,
            "/api/v1/webhooks",
            &alice.access,
            Some(json!({
                "organization_id": organization_id,
                "url": url,
                "events": ["organization.updated"],
                "rate_limit_per_second": 1,
            })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let webhook_id = created["webhook"]["id"].as_str().unwrap().to_owned();
    for round in 0..3 {
        rename(
            &app,
            &alice.access,
            &organization_id,
            &format!("Acme {round}"),
        )
        .await;
    }
    let received = receiver.wait_for(3).await;
    let span = received[2].at - received[0].at;
    assert!(span >= Duration::from_secs(1), "3 deliveries in {span:?}");
    let delivered = wait_for_deliveries(&app, &alice.access, &webhook_id, |listed| {
        listed.len() == 3
            && listed
                .iter()
                .all(|delivery| delivery["status"] == "DELIVERY_STATUS_SUCCEEDED")
    })
    .await;
    assert!(delivered.iter().all(|delivery| delivery["attempts"] == 1));

    // Monitoring counts them; the cleanup deletes them once 30 days old.
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("keel_webhook_deliveries{status=\"succeeded\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("keel_outbox_pending "), "{metrics}");
    app.clock.advance(chrono::Duration::days(31));
    let alice = app.login("alice@example.com").await;
    wait_for_deliveries(&app, &alice.access, &webhook_id, |listed| listed.is_empty()).await;
}
