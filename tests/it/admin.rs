//! Permission-guarded operator RPCs: the development outbox, readable by platform superusers
//! and by their API keys that carry the `mail:read` scope, by nobody else.

use crate::backend_tests;
use crate::harness::{Backend, TestApp, grpc_reason};
use keel::api::pb::keel::admin::v1::ListOutboxMessagesRequest;
use keel::api::pb::keel::admin::v1::admin_service_client::AdminServiceClient;
use serde_json::{Value, json};
use tonic::Code;

backend_tests!(
    outbox_is_for_superusers_and_scoped_keys,
    outbox_is_empty_with_smtp
);

async fn outbox(app: &TestApp, header: (&str, String)) -> reqwest::Response {
    app.http
        .get(app.url("/api/v1/admin/outbox"))
        .header(header.0, header.1)
        .send()
        .await
        .unwrap()
}

fn bearer(token: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {token}"))
}

async fn key_with_scopes(app: &TestApp, token: &str, scopes: Value) -> String {
    let response = app
        .http
        .post(app.url("/api/v1/api-keys"))
        .bearer_auth(token)
        .json(&json!({ "name": "ops", "scopes": scopes }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let body: Value = response.json().await.unwrap();
    body["key"].as_str().unwrap().to_owned()
}

async fn outbox_is_for_superusers_and_scoped_keys(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.smtp_url = Some(String::new());
    })
    .await;
    let user = app.signed_in("plain@example.com").await;
    let denied = outbox(&app, bearer(&user.access)).await;
    assert_eq!(denied.status(), 403);
    let body: Value = denied.json().await.unwrap();
    assert_eq!(body["reason"], "PERMISSION_DENIED");

    app.create_superuser("root@example.com").await;
    let root = app.login("root@example.com").await;
    // The mail worker fills the outbox after the registration commits: wait for it.
    let mut body = Value::Null;
    for _ in 0..100 {
        let response = outbox(&app, bearer(&root.access)).await;
        assert_eq!(response.status(), 200);
        body = response.json().await.unwrap();
        if body["messages"][0].is_object() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(body["delivery"], "outbox");
    let kept = &body["messages"][0];
    assert_eq!(kept["to"], "plain@example.com");
    assert_eq!(kept["subject"], "Confirm your email address");
    assert!(
        kept["text"]
            .as_str()
            .unwrap()
            .contains("http://keel.test/verify-email?token=")
    );

    // A superuser's key needs the scope; with it, it reads the outbox on every door.
    let unscoped = key_with_scopes(&app, &root.access, json!([])).await;
    let refused = outbox(&app, ("x-api-key", unscoped)).await;
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["reason"], "SCOPE_MISSING");
    let scoped = key_with_scopes(&app, &root.access, json!(["mail:read"])).await;
    assert_eq!(
        outbox(&app, ("x-api-key", scoped.clone())).await.status(),
        200
    );
    let mut request = tonic::Request::new(ListOutboxMessagesRequest {});
    request
        .metadata_mut()
        .insert("x-api-key", scoped.parse().unwrap());
    let reply = AdminServiceClient::new(app.channel().await)
        .list_outbox_messages(request)
        .await
        .unwrap()
        .into_inner();
    assert!(!reply.messages.is_empty());

    // A plain user's key with the scope still lacks the user's right (keys need a verified
    // address: the link is in the outbox).
    let link = kept["text"].as_str().unwrap();
    let token: String = link[link.find("token=").unwrap() + "token=".len()..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    let verified = app
        .post_json("/api/v1/auth/verify-email", json!({ "token": token }))
        .await;
    assert_eq!(verified.status(), 200);
    let user = app.login("plain@example.com").await;
    let plain_key = key_with_scopes(&app, &user.access, json!(["mail:read"])).await;
    let mut request = tonic::Request::new(ListOutboxMessagesRequest {});
    request
        .metadata_mut()
        .insert("x-api-key", plain_key.parse().unwrap());
    let status = AdminServiceClient::new(app.channel().await)
        .list_outbox_messages(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(grpc_reason(&status), "PERMISSION_DENIED");
}

async fn outbox_is_empty_with_smtp(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create_superuser("root@example.com").await;
    let root = app.login("root@example.com").await;
    let body: Value = outbox(&app, bearer(&root.access))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["delivery"], "smtp");
    assert_eq!(body["messages"], json!([]));
}
