//! Sign-in throttling: account lockout after repeated failures and per-minute rate limits, with
//! the same answers for known and unknown emails.

use crate::backend_tests;
use crate::harness::{Backend, PASSWORD, TestApp, grpc_reason};
use keel::api::pb::keel::auth::v1::LoginRequest;
use serde_json::{Value, json};
use tonic::Code;

backend_tests!(
    repeated_failures_lock_the_account_for_a_while,
    sign_in_attempts_are_rate_limited,
    guessing_the_current_password_locks_too,
);

async fn attempt(app: &TestApp, email: &str, password: &str) -> (u16, Option<String>, String) {
    let response = app
        .post_json(
            "/api/v1/auth/login",
            json!({ "email": email, "password": password }),
        )
        .await;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|value| value.to_str().unwrap().to_owned());
    let body: Value = response.json().await.unwrap();
    (
        status,
        retry_after,
        body["reason"].as_str().unwrap_or_default().to_owned(),
    )
}

async fn repeated_failures_lock_the_account_for_a_while(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.lockout_threshold = Some("3".into());
        settings.lockout_minutes = Some("15".into());
    })
    .await;
    app.register("locked@example.com").await;

    // Failures below the threshold, then a success, reset the count.
    for _ in 0..2 {
        assert_eq!(
            attempt(&app, "locked@example.com", "Wr0ng!pass").await.2,
            "INVALID_CREDENTIALS"
        );
    }
    app.login("locked@example.com").await;
    for _ in 0..2 {
        assert_eq!(
            attempt(&app, "locked@example.com", "Wr0ng!pass").await.2,
            "INVALID_CREDENTIALS"
        );
    }
    assert_eq!(attempt(&app, "locked@example.com", PASSWORD).await.0, 200);

    // Three consecutive failures lock it: even the right password is refused, unchecked.
    for _ in 0..3 {
        assert_eq!(
            attempt(&app, "locked@example.com", "Wr0ng!pass").await.2,
            "INVALID_CREDENTIALS"
        );
    }
    let (status, retry_after, reason) = attempt(&app, "Locked@Example.com", PASSWORD).await;
    assert_eq!((status, reason.as_str()), (401, "ACCOUNT_LOCKED"));
    let seconds: u64 = retry_after
        .expect("Retry-After on a locked account")
        .parse()
        .unwrap();
    assert!((1..=900).contains(&seconds), "{seconds}");
    let status = app
        .grpc()
        .await
        .login(LoginRequest {
            email: "locked@example.com".into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(grpc_reason(&status), "ACCOUNT_LOCKED");

    // An unknown email locks the same way, so a lock says nothing about existence.
    for _ in 0..3 {
        assert_eq!(
            attempt(&app, "nobody@example.com", "Wr0ng!pass").await.2,
            "INVALID_CREDENTIALS"
        );
    }
    let (status, retry_after, reason) = attempt(&app, "nobody@example.com", PASSWORD).await;
    assert_eq!((status, reason.as_str()), (401, "ACCOUNT_LOCKED"));
    assert!(retry_after.is_some());

    // Other accounts are untouched, and the lock ends after its time.
    app.signed_in("free@example.com").await;
    app.clock.advance(chrono::Duration::minutes(16));
    assert_eq!(attempt(&app, "locked@example.com", PASSWORD).await.0, 200);
}

async fn sign_in_attempts_are_rate_limited(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.rate_limit_auth_per_minute = Some("4".into());
    })
    .await;
    crate::harness::inside_one_minute().await;
    app.register("limited@example.com").await;
    let emails = [
        "limited@example.com",
        "a@example.com",
        "b@example.com",
        "c@example.com",
    ];
    // Within the minute's budget every attempt is judged on its merits.
    for email in emails {
        let (status, _, _) = attempt(&app, email, "Wr0ng!pass").await;
        assert_eq!(status, 401, "{email}");
    }
    // The fifth attempt from this address is refused, whatever the account and door.
    let (status, retry_after, reason) = attempt(&app, "limited@example.com", PASSWORD).await;
    assert_eq!((status, reason.as_str()), (429, "RATE_LIMITED"));
    let seconds: u64 = retry_after
        .expect("Retry-After when rate limited")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&seconds), "{seconds}");
    let status = app
        .grpc()
        .await
        .login(LoginRequest {
            email: "limited@example.com".into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(grpc_reason(&status), "RATE_LIMITED");

    // The next minute has a fresh budget.
    app.clock.advance(chrono::Duration::seconds(61));
    assert_eq!(attempt(&app, "limited@example.com", PASSWORD).await.0, 200);
}

async fn guessing_the_current_password_locks_too(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.lockout_threshold = Some("3".into());
    })
    .await;
    let tokens = app.signed_in("guess@example.com").await;
    let change = |current: &'static str| {
        app.http
            .put(app.url("/api/v1/users/me/password"))
            .bearer_auth(&tokens.access)
            .json(&json!({ "current_password": current, "new_password": "N3w!Passw0rd" }))
            .send()
    };
    for _ in 0..3 {
        let response = change("Wr0ng!guess").await.unwrap();
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["reason"], "WRONG_PASSWORD");
    }
    let response = change(PASSWORD).await.unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "ACCOUNT_LOCKED");
    assert_eq!(
        attempt(&app, "guess@example.com", PASSWORD).await.2,
        "ACCOUNT_LOCKED"
    );
}
