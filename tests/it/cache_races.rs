//! A request that misses the cache reads the database and then writes the cache; a change
//! landing between the two must not be undone by that write. These tests play the slow
//! reader's part on Redis: they keep what was cached before a change, make the change through
//! the API, write the old entry back as the reader would, and check the change still holds.

use crate::harness::{Backend, TestApp, services_available};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use fred::prelude::{Builder, Client, ClientLike, Config, Expiration, KeysInterface};
use reqwest::Method;
use serde_json::{Value, json};

struct SlowReader {
    redis: Client,
    prefix: String,
}

impl SlowReader {
    async fn connect(app: &TestApp) -> Self {
        let url = std::env::var("KEEL_TEST_REDIS_URL").unwrap();
        let redis = Builder::from_config(Config::from_url(&url).unwrap())
            .build()
            .unwrap();
        redis.init().await.unwrap();
        Self {
            redis,
            prefix: app.config.redis_prefix.clone(),
        }
    }

    /// What the cache holds under `key` now: what a reader that read before the change
    /// would write.
    async fn read(&self, key: &str) -> Vec<u8> {
        let value: Option<Vec<u8>> = self
            .redis
            .get(format!("{}{key}", self.prefix))
            .await
            .unwrap();
        value.unwrap_or_else(|| panic!("{key} is not cached"))
    }

    /// The late write of that reader.
    async fn write_back(&self, key: &str, value: Vec<u8>) {
        self.redis
            .set::<(), _, _>(
                format!("{}{key}", self.prefix),
                value,
                Some(Expiration::EX(300)),
                None,
                false,
            )
            .await
            .unwrap();
    }
}

fn session_id(access_token: &str) -> String {
    let payload = access_token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    claims["sid"].as_str().unwrap().to_owned()
}

async fn me(app: &TestApp, credential: &str) -> (u16, Value) {
    let (status, body) = app
        .rest(Method::GET, "/api/v1/auth/me", credential, None)
        .await;
    (status.as_u16(), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_racing_read_cannot_undo_a_revocation() {
    if !services_available() {
        return;
    }
    let app = TestApp::spawn(Backend::Services).await;
    let reader = SlowReader::connect(&app).await;

    // A session signed out while a read of its status was under way.
    let tokens = app.signed_in("race@example.com").await;
    assert_eq!(me(&app, &tokens.access).await.0, 200);
    let status_key = format!("session:{}", session_id(&tokens.access));
    let live = reader.read(&status_key).await;
    let (status, _) = app
        .rest(Method::POST, "/api/v1/auth/logout", &tokens.access, None)
        .await;
    assert_eq!(status, 200);
    reader.write_back(&status_key, live).await;
    let (status, body) = me(&app, &tokens.access).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("SESSION_REVOKED"))
    );

    // An API key revoked while a read of its record was under way.
    let owner = app.verified("keys-race@example.com").await;
    let (status, created) = app
        .rest(
            Method::POST,
            "/api/v1/api-keys",
            &owner.access,
            Some(json!({ "name": "racer" })),
        )
        .await;
    assert_eq!(status, 201);
    let key = created["key"].as_str().unwrap();
    assert_eq!(me(&app, key).await.0, 200);
    let record_key = format!("api-key:{}", created["api_key"]["prefix"].as_str().unwrap());
    let usable = reader.read(&record_key).await;
    let (status, _) = app
        .rest(
            Method::DELETE,
            &format!(
                "/api/v1/api-keys/{}",
                created["api_key"]["id"].as_str().unwrap()
            ),
            &owner.access,
            None,
        )
        .await;
    assert_eq!(status, 200);
    reader.write_back(&record_key, usable).await;
    let (status, body) = me(&app, key).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (401, Some("API_KEY_REVOKED"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_racing_read_cannot_undo_a_role_change() {
    if !services_available() {
        return;
    }
    let app = TestApp::spawn(Backend::Services).await;
    let reader = SlowReader::connect(&app).await;
    let (_, owner) = crate::organizations::user(&app, "race-owner@example.com").await;
    let (admin_id, admin) = crate::organizations::user(&app, "race-admin@example.com").await;
    let organization_id =
        crate::organizations::create_organization(&app, &owner.access, "racers").await;
    crate::organizations::add_member(
        &app,
        &owner.access,
        &organization_id,
        &admin_id,
        json!(["admin"]),
    )
    .await;
    let rename = |name: &'static str| {
        let app = &app;
        let path = format!("/api/v1/organizations/{organization_id}");
        let access = admin.access.clone();
        async move {
            app.rest(Method::PUT, &path, &access, Some(json!({ "name": name })))
                .await
                .0
                .as_u16()
        }
    };
    assert_eq!(rename("Racers").await, 200);
    let grants_key = format!("access:member:{organization_id}:{admin_id}");
    let admin_grants = reader.read(&grants_key).await;

    // Demoted to viewer while a read of the admin's roles was under way.
    let (status, _) = app
        .rest(
            Method::PUT,
            &format!("/api/v1/organizations/{organization_id}/members/{admin_id}"),
            &owner.access,
            Some(json!({ "roles": ["viewer"] })),
        )
        .await;
    assert_eq!(status, 200);
    reader.write_back(&grants_key, admin_grants).await;
    assert_eq!(rename("Still mine").await, 403);
}
