//! IP restrictions: an organization's allow and deny lists apply to every call admitted to it
//! (sessions and API keys, REST and gRPC) from the next request on, refusals are audited, and
//! the instance's deny list refuses an address everywhere.

use crate::audit::wait_for_entries;
use crate::backend_tests;
use crate::harness::{Backend, TestApp, grpc_reason, rest_violations};
use crate::invitations::verified_user;
use crate::organizations::{create_organization, with_viewer};
use crate::realtime::{receive_until, socket_with, subscribe};
use keel::api::pb::keel::organization::v1::ListMembersRequest;
use keel::api::pb::keel::organization::v1::organization_service_client::OrganizationServiceClient;
use reqwest::Method;
use serde_json::{Value, json};
use tonic::Code;

backend_tests!(
    organizations_admit_callers_by_address,
    the_instance_deny_list_refuses_everywhere,
);

/// A GET as `token` from `address` (behind the trusted proxy on loopback).
async fn get_from(app: &TestApp, path: &str, token: &str, address: &str) -> (u16, Value) {
    let response = app
        .http
        .get(app.url(path))
        .bearer_auth(token)
        .header("x-forwarded-for", address)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn put_rules(
    app: &TestApp,
    organization_id: &str,
    token: &str,
    rules: Value,
) -> (u16, Value) {
    let (status, body) = app
        .rest(
            Method::PUT,
            &format!("/api/v1/organizations/{organization_id}/ip-restrictions"),
            token,
            Some(rules),
        )
        .await;
    (status.as_u16(), body)
}

fn trusting_loopback(settings: &mut keel::config::Settings) {
    settings.trusted_proxies = Some("127.0.0.0/8".into());
}

async fn organizations_admit_callers_by_address(backend: Backend) {
    let app = TestApp::spawn_with(backend, trusting_loopback).await;
    app.create_superuser("root@example.com").await;
    let root = app.login("root@example.com").await;
    let (organization_id, owner, viewer) = with_viewer(&app, "fenced").await;
    let rules_path = format!("/api/v1/organizations/{organization_id}/ip-restrictions");
    let members = format!("/api/v1/organizations/{organization_id}/members");

    let (status, rules) = app
        .rest(Method::GET, &rules_path, &owner.access, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(rules, json!({ "allow": [], "deny": [] }));
    // Only those who may update the organization see or set them.
    let (status, _) = app
        .rest(Method::GET, &rules_path, &viewer.access, None)
        .await;
    assert_eq!(status, 403);

    // Malformed entries are named one by one, and nothing changes.
    let (status, refused) = put_rules(
        &app,
        &organization_id,
        &owner.access,
        json!({ "allow": ["10.0.0.0/33", "127.0.0.1", "intranet"] }),
    )
    .await;
    assert_eq!(status, 400, "{refused}");
    let violations = rest_violations(&refused);
    let fields: Vec<&str> = violations
        .iter()
        .map(|(field, _, _)| field.as_str())
        .collect();
    assert_eq!(fields, ["allow[0]", "allow[2]"], "{refused}");
    assert!(
        violations
            .iter()
            .all(|(_, reason, _)| reason == "string.pattern")
    );
    let (_, rules) = app
        .rest(Method::GET, &rules_path, &owner.access, None)
        .await;
    assert_eq!(rules, json!({ "allow": [], "deny": [] }));

    // Lists that would refuse this very request (from 127.0.0.1) are refused.
    let (status, refused) = put_rules(
        &app,
        &organization_id,
        &owner.access,
        json!({ "allow": ["203.0.113.0/24"] }),
    )
    .await;
    assert_eq!(
        (status, refused["reason"].as_str()),
        (409, Some("WOULD_LOCK_YOU_OUT"))
    );

    let (status, stored) = put_rules(
        &app,
        &organization_id,
        &owner.access,
        json!({
            "allow": ["2001:db8::1/32", "203.0.113.9", "203.0.113.0/24", "127.0.0.1", "203.0.113.0/24"],
            "deny": ["203.0.113.128/25"],
        }),
    )
    .await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(
        stored,
        json!({
            "allow": ["127.0.0.1/32", "203.0.113.0/24", "203.0.113.9/32", "2001:db8::/32"],
            "deny": ["203.0.113.128/25"],
        })
    );
    let (_, rules) = app
        .rest(Method::GET, &rules_path, &owner.access, None)
        .await;
    assert_eq!(rules, stored);

    // From the next call on: inside the allow list and outside the deny list only.
    for (address, expected) in [
        ("203.0.113.7", 200),
        ("2001:db8::5", 200),
        ("198.51.100.7", 403),
        ("203.0.113.200", 403),
    ] {
        let (status, body) = get_from(&app, &members, &viewer.access, address).await;
        assert_eq!(status, expected, "{address}: {body}");
        if expected == 403 {
            assert_eq!(body["reason"], "IP_NOT_ALLOWED", "{address}");
        }
    }
    // Calls outside the organization are not its to refuse.
    let (status, _) = get_from(&app, "/api/v1/auth/me", &viewer.access, "198.51.100.7").await;
    assert_eq!(status, 200);
    // The gRPC door, and an API key, are refused alike.
    let mut request = tonic::Request::new(ListMembersRequest {
        organization_id: organization_id.clone(),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", viewer.access).parse().unwrap(),
    );
    request
        .metadata_mut()
        .insert("x-forwarded-for", "198.51.100.7".parse().unwrap());
    let status = OrganizationServiceClient::new(app.channel().await)
        .list_members(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(grpc_reason(&status), "IP_NOT_ALLOWED");
    let (status, key) = app
        .rest(
            Method::POST,
            "/api/v1/api-keys",
            &viewer.access,
            Some(json!({ "name": "ci", "scopes": ["member:read"] })),
        )
        .await;
    assert_eq!(status, 201);
    let with_key = |address: &'static str| {
        app.http
            .get(app.url(&members))
            .header("x-api-key", key["key"].as_str().unwrap())
            .header("x-forwarded-for", address)
            .send()
    };
    let refused: Value = with_key("198.51.100.7")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(refused["reason"], "IP_NOT_ALLOWED");
    let response = with_key("203.0.113.7").await.unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    // Platform superusers are exempt: they are the way back in.
    let (status, _) = get_from(&app, &members, &root.access, "198.51.100.7").await;
    assert_eq!(status, 200);

    // Refusals are in the organization's audit log, with the address.
    let entries = wait_for_entries(
        &app,
        &owner.access,
        &format!("/api/v1/organizations/{organization_id}/audit-logs?page_size=100"),
        |entries| {
            entries
                .iter()
                .filter(|entry| entry["action"] == "organization.ip_refused")
                .count()
                >= 4
        },
    )
    .await;
    let refused: Vec<&Value> = entries
        .iter()
        .filter(|entry| entry["action"] == "organization.ip_refused")
        .collect();
    assert!(
        refused
            .iter()
            .all(|entry| entry["outcome"] == "AUDIT_OUTCOME_FAILURE")
    );
    assert!(
        refused
            .iter()
            .any(|entry| entry["ip_address"] == "203.0.113.200"),
        "{refused:?}"
    );
    assert!(
        entries
            .iter()
            .any(|entry| entry["action"] == "organization.ip_restrictions_updated")
    );

    // A realtime subscriber from an address the lists now refuse loses the channel.
    let channel = format!("organization:{organization_id}");
    let mut outside = socket_with(
        &app.base_url,
        &owner.access,
        &[("x-forwarded-for", "203.0.113.77")],
    )
    .await;
    assert_eq!(
        subscribe(&mut outside, &channel).await["type"],
        "subscribed"
    );
    let (status, _) = put_rules(
        &app,
        &organization_id,
        &owner.access,
        json!({ "allow": ["127.0.0.1", "203.0.113.0/24"], "deny": ["203.0.113.64/26"] }),
    )
    .await;
    assert_eq!(status, 200);
    let ended = receive_until(&mut outside, |message| message["type"] == "unsubscribed").await;
    assert_eq!(ended.last().unwrap()["channel"], channel.as_str());

    // Empty lists lift the restrictions.
    let (status, _) = put_rules(&app, &organization_id, &owner.access, json!({})).await;
    assert_eq!(status, 200);
    let (status, _) = get_from(&app, &members, &viewer.access, "198.51.100.7").await;
    assert_eq!(status, 200);
}

async fn the_instance_deny_list_refuses_everywhere(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        trusting_loopback(settings);
        settings.ip_deny = Some("192.0.2.0/24, 2001:db8:bad::/48".into());
    })
    .await;
    let ada = app.signed_in("ada@example.com").await;
    for (address, expected) in [
        ("192.0.2.55", 403),
        ("2001:db8:bad::1", 403),
        ("198.51.100.1", 200),
    ] {
        let (status, body) = get_from(&app, "/api/v1/auth/me", &ada.access, address).await;
        assert_eq!(status, expected, "{address}: {body}");
    }
    // Public calls too.
    let response = app
        .http
        .post(app.url("/api/v1/auth/login"))
        .header("x-forwarded-for", "192.0.2.55")
        .json(&json!({ "email": "ada@example.com", "password": crate::harness::PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "IP_NOT_ALLOWED");
}

/// A change on one replica applies to the next call on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_applies_on_every_replica() {
    if !crate::harness::services_available() {
        return;
    }
    let (first, second) = TestApp::two_replicas(trusting_loopback, |_| {}).await;
    let (_, owner) = verified_user(&first, "owner@example.com").await;
    let organization_id = create_organization(&first, &owner.access, "replicated").await;
    let members = format!("/api/v1/organizations/{organization_id}/members");
    // The second replica caches the (empty) lists.
    let (status, _) = get_from(&second, &members, &owner.access, "198.51.100.7").await;
    assert_eq!(status, 200);
    let (status, _) = put_rules(
        &first,
        &organization_id,
        &owner.access,
        json!({ "deny": ["198.51.100.0/24"] }),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = get_from(&second, &members, &owner.access, "198.51.100.7").await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (403, Some("IP_NOT_ALLOWED"))
    );
}
