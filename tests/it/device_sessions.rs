//! The caller's sessions: listing with devices, statistics, revoking one or all, changing the
//! password, and the purge of ended sessions.

use crate::backend_tests;
use crate::harness::{Backend, PASSWORD, TestApp, Tokens, grpc_reason, with_token};
use keel::api::pb::keel::auth::v1::{ChangePasswordRequest, GetMeRequest, LoginRequest};
use keel::api::pb::keel::session::v1::session_service_client::SessionServiceClient;
use keel::api::pb::keel::session::v1::{
    ListSessionsRequest, RevokeAllSessionsRequest, RevokeSessionRequest,
};
use keel::domain::auth::SessionStore;
use keel::store::SqlStore;
use serde_json::{Value, json};
use tonic::Code;

backend_tests!(
    sessions_list_devices_and_mark_the_current_one,
    revoking_one_session_signs_that_device_out,
    revoke_all_keeps_the_current_session_on_request,
    change_password_signs_out_other_sessions,
    ended_sessions_are_purged,
);

const DESKTOP_CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 \
    (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
const IPHONE_SAFARI: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) \
    AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";

async fn login_as(app: &TestApp, email: &str, user_agent: &str) -> Tokens {
    let response = app
        .http
        .post(app.url("/api/v1/auth/login"))
        .header("user-agent", user_agent)
        .json(&json!({ "email": email, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    Tokens {
        access: body["access_token"].as_str().unwrap().to_owned(),
        refresh: body["refresh_token"].as_str().unwrap().to_owned(),
    }
}

async fn list(app: &TestApp, token: &str, query: &str) -> Value {
    let response = app
        .get_with_token(&format!("/api/v1/sessions{query}"), token)
        .await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

async fn delete(app: &TestApp, path: &str, token: &str) -> reqwest::Response {
    app.http
        .delete(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn sessions_list_devices_and_mark_the_current_one(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("devices@example.com").await;
    let desktop = login_as(&app, "devices@example.com", DESKTOP_CHROME).await;
    let phone = login_as(&app, "devices@example.com", IPHONE_SAFARI).await;

    let listed = list(&app, &desktop.access, "").await;
    assert_eq!(listed["total"], 2);
    assert_eq!(listed["active"], 2);
    let sessions = listed["sessions"].as_array().unwrap();
    // Newest first: the phone signed in last.
    assert_eq!(sessions[0]["device_type"], "mobile");
    assert_eq!(sessions[0]["is_current"], false);
    assert_eq!(sessions[1]["device_type"], "desktop");
    assert_eq!(sessions[1]["browser"], "Chrome");
    assert_eq!(sessions[1]["os"], "Windows 10");
    assert_eq!(sessions[1]["is_current"], true);
    assert_eq!(sessions[1]["ip_address"], "127.0.0.1");
    for session in sessions {
        for field in ["id", "created_at", "last_activity", "expires_at"] {
            assert!(session[field].is_string(), "{field} in {session}");
        }
    }

    let stats: Value = app
        .get_with_token("/api/v1/sessions/stats", &phone.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stats["active_sessions"], 2);
    assert_eq!(stats["active_by_device_type"]["mobile"], 1);
    assert_eq!(stats["active_by_device_type"]["desktop"], 1);

    // The same over gRPC, from the phone's session.
    let mut sessions_client = SessionServiceClient::new(app.channel().await);
    let reply = sessions_client
        .list_sessions(with_token(ListSessionsRequest::default(), &phone.access))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.total, 2);
    let current: Vec<_> = reply
        .sessions
        .iter()
        .filter(|session| session.is_current)
        .collect();
    assert_eq!(current.len(), 1);
    assert_eq!(current[0].device_type, "mobile");

    // Another user sees only their own.
    let other = app.signed_in("other-devices@example.com").await;
    assert_eq!(list(&app, &other.access, "").await["total"], 1);
}

async fn revoking_one_session_signs_that_device_out(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("revoke-one@example.com").await;
    let kept = login_as(&app, "revoke-one@example.com", DESKTOP_CHROME).await;
    let lost = login_as(&app, "revoke-one@example.com", IPHONE_SAFARI).await;
    let listed = list(&app, &kept.access, "").await;
    let lost_id = listed["sessions"][0]["id"].as_str().unwrap().to_owned();

    let response = delete(&app, &format!("/api/v1/sessions/{lost_id}"), &kept.access).await;
    assert_eq!(response.status(), 200);
    let me = app.get_with_token("/api/v1/auth/me", &lost.access).await;
    assert_eq!(me.status(), 401);
    let status = app
        .grpc()
        .await
        .get_me(with_token(GetMeRequest {}, &lost.access))
        .await
        .unwrap_err();
    assert_eq!(grpc_reason(&status), "SESSION_REVOKED");
    let refresh = app
        .post_json(
            "/api/v1/auth/refresh",
            json!({ "refresh_token": lost.refresh }),
        )
        .await;
    assert_eq!(refresh.status(), 401);
    assert_eq!(
        app.get_with_token("/api/v1/auth/me", &kept.access)
            .await
            .status(),
        200
    );

    let inactive = list(&app, &kept.access, "?include_inactive=true").await;
    assert_eq!(inactive["total"], 2);
    assert_eq!(inactive["active"], 1);
    let revoked = &inactive["sessions"][0];
    assert_eq!(revoked["is_active"], false);
    assert!(revoked["revoked_at"].is_string());

    // Someone else's session id, an unknown one and a malformed one reveal nothing.
    let stranger = app.signed_in("stranger@example.com").await;
    let kept_id = list(&app, &kept.access, "").await["sessions"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = delete(
        &app,
        &format!("/api/v1/sessions/{kept_id}"),
        &stranger.access,
    )
    .await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "SESSION_NOT_FOUND");
    assert_eq!(
        app.get_with_token("/api/v1/auth/me", &kept.access)
            .await
            .status(),
        200
    );
    let unknown = delete(
        &app,
        &format!("/api/v1/sessions/{}", uuid::Uuid::now_v7()),
        &kept.access,
    )
    .await;
    assert_eq!(unknown.status(), 404);
    let malformed = delete(&app, "/api/v1/sessions/not-a-uuid", &kept.access).await;
    assert_eq!(malformed.status(), 400);

    let status = SessionServiceClient::new(app.channel().await)
        .revoke_session(with_token(
            RevokeSessionRequest {
                session_id: kept_id,
            },
            &stranger.access,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

async fn revoke_all_keeps_the_current_session_on_request(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("revoke-all@example.com").await;
    let current = login_as(&app, "revoke-all@example.com", DESKTOP_CHROME).await;
    let second = login_as(&app, "revoke-all@example.com", IPHONE_SAFARI).await;
    let third = app.login("revoke-all@example.com").await;

    // `/sessions/all` is the literal route, not a session id.
    let response = delete(
        &app,
        "/api/v1/sessions/all?keep_current=true",
        &current.access,
    )
    .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["revoked_count"], 2);
    assert_eq!(
        app.get_with_token("/api/v1/auth/me", &current.access)
            .await
            .status(),
        200
    );
    for gone in [&second, &third] {
        assert_eq!(
            app.get_with_token("/api/v1/auth/me", &gone.access)
                .await
                .status(),
            401
        );
    }

    let another = app.login("revoke-all@example.com").await;
    let reply = SessionServiceClient::new(app.channel().await)
        .revoke_all_sessions(with_token(
            RevokeAllSessionsRequest {
                keep_current: false,
            },
            &another.access,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.revoked_count, 2);
    assert_eq!(
        app.get_with_token("/api/v1/auth/me", &current.access)
            .await
            .status(),
        401
    );
    assert_eq!(
        app.get_with_token("/api/v1/auth/me", &another.access)
            .await
            .status(),
        401
    );
}

async fn change_password_signs_out_other_sessions(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let current = app.signed_in("change@example.com").await;
    let other = app.login("change@example.com").await;
    let change = |token: String, body: Value| {
        let request = app
            .http
            .put(app.url("/api/v1/users/me/password"))
            .bearer_auth(token)
            .json(&body);
        async move { request.send().await.unwrap() }
    };

    let wrong = change(
        current.access.clone(),
        json!({ "current_password": "Wr0ng!Password", "new_password": "N3w!Password" }),
    )
    .await;
    assert_eq!(wrong.status(), 400);
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(body["reason"], "WRONG_PASSWORD");

    let weak = change(
        current.access.clone(),
        json!({ "current_password": PASSWORD, "new_password": "weak" }),
    )
    .await;
    assert_eq!(weak.status(), 400);
    let body: Value = weak.json().await.unwrap();
    assert!(
        body.to_string().contains("\"field\":\"new_password\""),
        "{body}"
    );
    assert_eq!(
        app.get_with_token("/api/v1/auth/me", &other.access)
            .await
            .status(),
        200
    );

    let changed = change(
        current.access.clone(),
        json!({ "current_password": PASSWORD, "new_password": "N3w!Password" }),
    )
    .await;
    assert_eq!(changed.status(), 200);
    let body: Value = changed.json().await.unwrap();
    assert_eq!(body["revoked_sessions"], 1);
    assert_eq!(
        app.get_with_token("/api/v1/auth/me", &current.access)
            .await
            .status(),
        200
    );
    assert_eq!(
        app.get_with_token("/api/v1/auth/me", &other.access)
            .await
            .status(),
        401
    );

    let old = app
        .post_json(
            "/api/v1/auth/login",
            json!({ "email": "change@example.com", "password": PASSWORD }),
        )
        .await;
    assert_eq!(old.status(), 401);

    // And back over gRPC.
    let mut client = app.grpc().await;
    let tokens = client
        .login(LoginRequest {
            email: "change@example.com".into(),
            password: "N3w!Password".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let reply = client
        .change_password(with_token(
            ChangePasswordRequest {
                current_password: "N3w!Password".into(),
                new_password: PASSWORD.into(),
            },
            &tokens.access_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.revoked_sessions, 1);
    app.login("change@example.com").await;
}

async fn ended_sessions_are_purged(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let current = app.signed_in("purge@example.com").await;
    let ended = app.login("purge@example.com").await;
    let id = list(&app, &current.access, "").await["sessions"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    delete(&app, &format!("/api/v1/sessions/{id}"), &current.access).await;
    assert_eq!(
        app.get_with_token("/api/v1/auth/me", &ended.access)
            .await
            .status(),
        401
    );

    let store = SqlStore::connect(&app.config.database_url).await.unwrap();
    let cutoff = chrono::Utc::now() + chrono::Duration::seconds(1);
    assert_eq!(store.delete_sessions_ended_before(cutoff).await.unwrap(), 1);
    let listed = list(&app, &current.access, "?include_inactive=true").await;
    assert_eq!(listed["total"], 1);
    assert_eq!(
        app.get_with_token("/api/v1/auth/me", &current.access)
            .await
            .status(),
        200
    );
    // The purged session's refresh token went with it.
    let refresh = app
        .post_json(
            "/api/v1/auth/refresh",
            json!({ "refresh_token": ended.refresh }),
        )
        .await;
    assert_eq!(refresh.status(), 401);
}

#[tokio::test]
async fn forwarded_for_is_believed_only_from_trusted_proxies() {
    for (trusted, expected) in [(Some("127.0.0.0/8"), "203.0.113.7"), (None, "127.0.0.1")] {
        let app = TestApp::spawn_with(Backend::Embedded, |settings| {
            settings.trusted_proxies = trusted.map(str::to_owned);
        })
        .await;
        app.register("proxied@example.com").await;
        let response = app
            .http
            .post(app.url("/api/v1/auth/login"))
            .header("x-forwarded-for", "198.51.100.1, 203.0.113.7")
            .json(&json!({ "email": "proxied@example.com", "password": PASSWORD }))
            .send()
            .await
            .unwrap();
        let body: Value = response.json().await.unwrap();
        let listed = list(&app, body["access_token"].as_str().unwrap(), "").await;
        assert_eq!(
            listed["sessions"][0]["ip_address"], expected,
            "trusted: {trusted:?}"
        );
    }
}
