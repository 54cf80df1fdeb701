//! Sessions and tokens: refresh rotation, reuse detection, logout, and tokens that must fail.

use crate::backend_tests;
use crate::harness::{Backend, TestApp, grpc_reason, with_token};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keel::api::pb::keel::auth::v1::{GetMeRequest, LogoutRequest, RefreshRequest};
use serde_json::{Value, json};
use tonic::Code;

backend_tests!(
    refresh_rotates_and_reuse_revokes_the_session,
    refresh_over_grpc_detects_reuse,
    logout_revokes_the_session_on_every_door,
    malformed_and_forged_tokens_are_refused,
    expired_access_token_is_refused,
    hs256_tokens_work_when_configured,
);

async fn refresh(app: &TestApp, refresh_token: &str) -> reqwest::Response {
    app.post_json(
        "/api/v1/auth/refresh",
        json!({ "refresh_token": refresh_token }),
    )
    .await
}

async fn reason(response: reqwest::Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["reason"].as_str().unwrap_or_default().to_owned()
}

async fn refresh_rotates_and_reuse_revokes_the_session(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let first = app.signed_in("rotate@example.com").await;

    let response = refresh(&app, &first.refresh).await;
    assert_eq!(response.status(), 200);
    let second: Value = response.json().await.unwrap();
    let second_refresh = second["refresh_token"].as_str().unwrap().to_owned();
    let second_access = second["access_token"].as_str().unwrap().to_owned();
    assert_ne!(second_refresh, first.refresh);
    assert_eq!(
        app.get_with_token("/api/v1/auth/me", &second_access)
            .await
            .status(),
        200
    );

    // The spent token again: refused, and the whole session with it.
    let reused = refresh(&app, &first.refresh).await;
    assert_eq!(reused.status(), 401);
    assert_eq!(reason(reused).await, "REFRESH_TOKEN_REUSED");
    let newest = refresh(&app, &second_refresh).await;
    assert_eq!(newest.status(), 401);
    assert_eq!(reason(newest).await, "SESSION_REVOKED");
    let me = app.get_with_token("/api/v1/auth/me", &second_access).await;
    assert_eq!(me.status(), 401);
    assert_eq!(reason(me).await, "SESSION_REVOKED");

    // Other sessions of the same user are untouched.
    let other = app.login("rotate@example.com").await;
    assert_eq!(
        app.get_with_token("/api/v1/auth/me", &other.access)
            .await
            .status(),
        200
    );

    let unknown = refresh(&app, "not-a-refresh-token").await;
    assert_eq!(unknown.status(), 401);
    assert_eq!(reason(unknown).await, "INVALID_REFRESH_TOKEN");
}

async fn refresh_over_grpc_detects_reuse(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let tokens = app.signed_in("grpc-rotate@example.com").await;
    let mut client = app.grpc().await;
    let rotated = client
        .refresh(RefreshRequest {
            refresh_token: tokens.refresh.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rotated.token_type, "bearer");
    let reused = client
        .refresh(RefreshRequest {
            refresh_token: tokens.refresh,
        })
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::Unauthenticated);
    assert_eq!(grpc_reason(&reused), "REFRESH_TOKEN_REUSED");
    let revoked = client
        .get_me(with_token(GetMeRequest {}, &rotated.access_token))
        .await
        .unwrap_err();
    assert_eq!(grpc_reason(&revoked), "SESSION_REVOKED");
}

async fn logout_revokes_the_session_on_every_door(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let tokens = app.signed_in("logout@example.com").await;
    let kept = app.login("logout@example.com").await;
    let mut grpc = app.grpc().await;
    let mut grpc_web = app.grpc_web();
    // Warm every door's caches with the live session first.
    assert_eq!(
        app.get_with_token("/api/v1/auth/me", &tokens.access)
            .await
            .status(),
        200
    );
    grpc.get_me(with_token(GetMeRequest {}, &tokens.access))
        .await
        .unwrap();

    let response = app
        .http
        .post(app.url("/api/v1/auth/logout"))
        .bearer_auth(&tokens.access)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let rest = app.get_with_token("/api/v1/users/me", &tokens.access).await;
    assert_eq!(rest.status(), 401);
    assert_eq!(reason(rest).await, "SESSION_REVOKED");
    let status = grpc
        .get_me(with_token(GetMeRequest {}, &tokens.access))
        .await
        .unwrap_err();
    assert_eq!(grpc_reason(&status), "SESSION_REVOKED");
    let status = grpc_web
        .get_me(with_token(GetMeRequest {}, &tokens.access))
        .await
        .unwrap_err();
    assert_eq!(grpc_reason(&status), "SESSION_REVOKED");
    let refreshed = refresh(&app, &tokens.refresh).await;
    assert_eq!(refreshed.status(), 401);
    assert_eq!(reason(refreshed).await, "SESSION_REVOKED");

    // Logging out over gRPC works the same, and only the caller's session goes.
    assert_eq!(
        app.get_with_token("/api/v1/auth/me", &kept.access)
            .await
            .status(),
        200
    );
    grpc.logout(with_token(LogoutRequest {}, &kept.access))
        .await
        .unwrap();
    assert_eq!(
        app.get_with_token("/api/v1/auth/me", &kept.access)
            .await
            .status(),
        401
    );
    let unauthenticated = grpc.logout(LogoutRequest {}).await.unwrap_err();
    assert_eq!(unauthenticated.code(), Code::Unauthenticated);
}

/// A token with the real header and claims but a signature from another Ed25519 key.
fn forge(real: &str) -> String {
    let mut parts = real.split('.');
    let (header, claims) = (parts.next().unwrap(), parts.next().unwrap());
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = aws_lc_rs::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let key = aws_lc_rs::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let signature = key.sign(format!("{header}.{claims}").as_bytes());
    format!(
        "{header}.{claims}.{}",
        URL_SAFE_NO_PAD.encode(signature.as_ref())
    )
}

/// The real token with its claims edited (the signature no longer matches).
fn tamper(real: &str) -> String {
    let mut parts = real.split('.');
    let (header, claims, signature) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let mut decoded: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
    decoded["exp"] = json!(decoded["exp"].as_i64().unwrap() + 86_400);
    let edited = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&decoded).unwrap());
    format!("{header}.{edited}.{signature}")
}

/// An unsigned token (`alg: none`).
fn unsigned(real: &str) -> String {
    let claims = real.split('.').nth(1).unwrap();
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    format!("{header}.{claims}.")
}

async fn malformed_and_forged_tokens_are_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let tokens = app.signed_in("forged@example.com").await;
    let mut grpc = app.grpc().await;
    for bad in [
        "garbage".to_owned(),
        forge(&tokens.access),
        tamper(&tokens.access),
        unsigned(&tokens.access),
        tokens.refresh.clone(),
    ] {
        let response = app.get_with_token("/api/v1/auth/me", &bad).await;
        assert_eq!(response.status(), 401, "{bad}");
        assert_eq!(reason(response).await, "INVALID_TOKEN", "{bad}");
        let status = grpc
            .get_me(with_token(GetMeRequest {}, &bad))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
        assert_eq!(grpc_reason(&status), "INVALID_TOKEN");
    }
    let response = app
        .http
        .get(app.url("/api/v1/auth/me"))
        .header("authorization", format!("Basic {}", tokens.access))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(reason(response).await, "MISSING_CREDENTIALS");
}

async fn expired_access_token_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let tokens = app.signed_in("expired@example.com").await;
    assert_eq!(
        app.get_with_token("/api/v1/auth/me", &tokens.access)
            .await
            .status(),
        200
    );
    app.clock.advance(chrono::Duration::seconds(901));
    let response = app.get_with_token("/api/v1/auth/me", &tokens.access).await;
    assert_eq!(response.status(), 401);
    assert_eq!(reason(response).await, "TOKEN_EXPIRED");
    let status = app
        .grpc()
        .await
        .get_me(with_token(GetMeRequest {}, &tokens.access))
        .await
        .unwrap_err();
    assert_eq!(grpc_reason(&status), "TOKEN_EXPIRED");

    // The refresh token still works within the session's lifetime, and yields a fresh token.
    let refreshed = refresh(&app, &tokens.refresh).await;
    assert_eq!(refreshed.status(), 200);
    let body: Value = refreshed.json().await.unwrap();
    let access = body["access_token"].as_str().unwrap();
    assert_eq!(
        app.get_with_token("/api/v1/auth/me", access).await.status(),
        200
    );

    // Past the session's lifetime the refresh token is refused.
    app.clock.advance(chrono::Duration::days(8));
    let late = refresh(&app, body["refresh_token"].as_str().unwrap()).await;
    assert_eq!(late.status(), 401);
    assert_eq!(reason(late).await, "SESSION_EXPIRED");
}

async fn hs256_tokens_work_when_configured(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.jwt_hs256_secret = Some("a-shared-secret-of-at-least-32-bytes!!".into());
    })
    .await;
    let tokens = app.signed_in("hs256@example.com").await;
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(tokens.access.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "HS256");
    assert_eq!(
        app.get_with_token("/api/v1/auth/me", &tokens.access)
            .await
            .status(),
        200
    );
    assert_eq!(
        app.get_with_token("/api/v1/auth/me", &forge(&tokens.access))
            .await
            .status(),
        401
    );
    let jwks: Value = app
        .http
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(jwks["keys"], json!([]));
}
