//! API keys: created once with their secret, accepted on every door, limited in what they may
//! do, revoked and expired on the next request, isolated between users.

use crate::backend_tests;
use crate::harness::{Backend, TestApp, grpc_reason, with_token};
use keel::api::pb::keel::apikey::v1::CreateApiKeyRequest;
use keel::api::pb::keel::apikey::v1::api_key_service_client::ApiKeyServiceClient;
use keel::api::pb::keel::auth::v1::GetMeRequest;
use serde_json::{Value, json};
use sha2::Digest;
use tonic::Code;

backend_tests!(
    api_keys_work_on_every_door_until_revoked,
    api_keys_cannot_manage_the_account,
    forged_and_expired_api_keys_are_refused,
    api_key_requests_are_validated,
    api_keys_are_private_to_their_owner,
);

async fn create(app: &TestApp, token: &str, body: Value) -> reqwest::Response {
    app.http
        .post(app.url("/api/v1/api-keys"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn me_with_key(app: &TestApp, key: &str) -> reqwest::Response {
    app.http
        .get(app.url("/api/v1/auth/me"))
        .header("x-api-key", key)
        .send()
        .await
        .unwrap()
}

fn grpc_with_key<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-api-key", key.parse().unwrap());
    request
}

async fn listed_keys(app: &TestApp, token: &str) -> Value {
    let response = app.get_with_token("/api/v1/api-keys", token).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn reason(response: reqwest::Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["reason"].as_str().unwrap_or_default().to_owned()
}

async fn api_keys_work_on_every_door_until_revoked(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let tokens = app.verified("keys@example.com").await;
    let response = create(
        &app,
        &tokens.access,
        json!({ "name": "ci deploys", "expires_in_days": 30 }),
    )
    .await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let record = &created["api_key"];
    assert!(key.starts_with("keel_"));
    assert!(key.starts_with(record["prefix"].as_str().unwrap()));
    assert_eq!(record["name"], "ci deploys");
    assert_eq!(record["scopes"], json!([]));
    assert!(record["expires_at"].is_string());
    let id = record["id"].as_str().unwrap().to_owned();

    // REST with x-api-key and with a bearer key; gRPC and gRPC-web with metadata.
    let me: Value = me_with_key(&app, &key).await.json().await.unwrap();
    assert_eq!(me["email"], "keys@example.com");
    assert_eq!(
        app.get_with_token("/api/v1/auth/me", &key).await.status(),
        200
    );
    app.grpc()
        .await
        .get_me(grpc_with_key(GetMeRequest {}, &key))
        .await
        .unwrap();
    app.grpc_web()
        .get_me(with_token(GetMeRequest {}, &key))
        .await
        .unwrap();

    // Listed and readable without the secret, with its last use recorded.
    let listed = listed_keys(&app, &tokens.access).await;
    let keys = listed["api_keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert!(!listed.to_string().contains(&key));
    assert!(keys[0]["last_used_at"].is_string(), "{listed}");
    let fetched: Value = app
        .get_with_token(&format!("/api/v1/api-keys/{id}"), &tokens.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["id"], id);

    // At rest the key is only a keyed digest: not the key, not its plain SHA-256.
    let store = keel::store::SqlStore::connect(&app.config.database_url)
        .await
        .unwrap();
    let stored = keel::domain::apikey::ApiKeyStore::find_api_key_by_prefix(
        &store,
        record["prefix"].as_str().unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(stored.digest.len(), 32);
    assert_ne!(stored.digest, sha2::Sha256::digest(key.as_bytes()).to_vec());

    let revoked = app
        .http
        .delete(app.url(&format!("/api/v1/api-keys/{id}")))
        .bearer_auth(&tokens.access)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let refused = me_with_key(&app, &key).await;
    assert_eq!(refused.status(), 401);
    assert_eq!(reason(refused).await, "API_KEY_REVOKED");
    let status = app
        .grpc()
        .await
        .get_me(grpc_with_key(GetMeRequest {}, &key))
        .await
        .unwrap_err();
    assert_eq!(grpc_reason(&status), "API_KEY_REVOKED");
    let listed = listed_keys(&app, &tokens.access).await;
    assert_eq!(listed["api_keys"], json!([]));
    let gone = app
        .get_with_token(&format!("/api/v1/api-keys/{id}"), &tokens.access)
        .await;
    assert_eq!(gone.status(), 404);
}

async fn api_keys_cannot_manage_the_account(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let tokens = app.verified("limited-key@example.com").await;
    let created: Value = create(&app, &tokens.access, json!({ "name": "robot" }))
        .await
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().unwrap();

    let with_key = |method: reqwest::Method, path: &str| {
        app.http
            .request(method, app.url(path))
            .header("x-api-key", key)
    };
    let attempts = [
        with_key(reqwest::Method::GET, "/api/v1/sessions"),
        with_key(reqwest::Method::DELETE, "/api/v1/sessions/all"),
        with_key(reqwest::Method::GET, "/api/v1/api-keys"),
        with_key(reqwest::Method::POST, "/api/v1/api-keys").json(&json!({ "name": "more" })),
        with_key(reqwest::Method::POST, "/api/v1/auth/logout").json(&json!({})),
        with_key(reqwest::Method::PUT, "/api/v1/users/me/password")
            .json(&json!({ "current_password": "x", "new_password": "Y3t!another" })),
    ];
    for attempt in attempts {
        let response = attempt.send().await.unwrap();
        assert_eq!(response.status(), 403);
        assert_eq!(reason(response).await, "SESSION_REQUIRED");
    }
    let status = ApiKeyServiceClient::new(app.channel().await)
        .create_api_key(grpc_with_key(
            CreateApiKeyRequest {
                name: "more".into(),
                ..Default::default()
            },
            key,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(grpc_reason(&status), "SESSION_REQUIRED");
    // Nothing happened: still one key, the session still works.
    let listed = listed_keys(&app, &tokens.access).await;
    assert_eq!(listed["api_keys"].as_array().unwrap().len(), 1);
    assert_eq!(
        app.get_with_token("/api/v1/auth/me", &tokens.access)
            .await
            .status(),
        200
    );
}

async fn forged_and_expired_api_keys_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let tokens = app.verified("forged-key@example.com").await;
    let created: Value = create(
        &app,
        &tokens.access,
        json!({ "name": "short", "expires_in_days": 1 }),
    )
    .await
    .json()
    .await
    .unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let prefix = created["api_key"]["prefix"].as_str().unwrap();
    let forged = format!("{prefix}_{}", "A".repeat(43));
    for bad in [
        forged.as_str(),
        "keel_zzzzzzzz_nope",
        "keel_",
        "keel_nounderscore",
    ] {
        let response = me_with_key(&app, bad).await;
        assert_eq!(response.status(), 401, "{bad}");
        assert_eq!(reason(response).await, "INVALID_API_KEY", "{bad}");
    }
    assert_eq!(me_with_key(&app, &key).await.status(), 200);
    app.clock.advance(chrono::Duration::days(2));
    let expired = me_with_key(&app, &key).await;
    assert_eq!(expired.status(), 401);
    assert_eq!(reason(expired).await, "API_KEY_EXPIRED");
}

async fn api_key_requests_are_validated(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let tokens = app.verified("validate-key@example.com").await;
    for (body, field, reason_expected) in [
        // The contract's rules (rule ids), then the catalog's (the domain's reasons).
        (json!({ "name": "" }), "name", "required"),
        (json!({ "name": "x".repeat(101) }), "name", "string.max_len"),
        (json!({ "name": " " }), "name", "string.pattern"),
        (
            json!({ "name": "k", "expires_in_days": 0 }),
            "expires_in_days",
            "int32.gte_lte",
        ),
        (
            json!({ "name": "k", "expires_in_days": 5000 }),
            "expires_in_days",
            "int32.gte_lte",
        ),
        (
            json!({ "name": "k", "scopes": ["everything:all"] }),
            "scopes",
            "UNKNOWN_SCOPE",
        ),
    ] {
        let response = create(&app, &tokens.access, body.clone()).await;
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        let violation = &error["details"][1]["field_violations"][0];
        assert_eq!(violation["field"], field, "{error}");
        assert_eq!(violation["reason"], reason_expected, "{error}");
    }
    let listed = listed_keys(&app, &tokens.access).await;
    assert_eq!(listed["api_keys"], json!([]));
}

async fn api_keys_are_private_to_their_owner(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let owner = app.verified("owner-key@example.com").await;
    let other = app.verified("other-key@example.com").await;
    let created: Value = create(&app, &owner.access, json!({ "name": "mine" }))
        .await
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().unwrap();
    let id = created["api_key"]["id"].as_str().unwrap();

    let read = app
        .get_with_token(&format!("/api/v1/api-keys/{id}"), &other.access)
        .await;
    assert_eq!(read.status(), 404);
    let revoke = app
        .http
        .delete(app.url(&format!("/api/v1/api-keys/{id}")))
        .bearer_auth(&other.access)
        .send()
        .await
        .unwrap();
    assert_eq!(revoke.status(), 404);
    assert_eq!(reason(revoke).await, "API_KEY_NOT_FOUND");
    let listed = listed_keys(&app, &other.access).await;
    assert_eq!(listed["api_keys"], json!([]));
    // The key still works, and acts for its owner only.
    let me: Value = me_with_key(&app, key).await.json().await.unwrap();
    assert_eq!(me["email"], "owner-key@example.com");
}
