//! Flows driven by mailed links, read from a real SMTP server: email verification, password
//! reset and magic links; single use, expiry, replacement, and no account enumeration.

use crate::backend_tests;
use crate::harness::{Backend, PASSWORD, TestApp, grpc_reason};
use keel::api::pb::keel::auth::v1::{RequestPasswordResetRequest, VerifyEmailRequest};
use serde_json::{Value, json};
use tonic::Code;

backend_tests!(
    registration_mails_a_verification_link,
    unverified_users_cannot_sign_in_when_required,
    password_reset_by_mail,
    magic_link_signs_in,
);

async fn post(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    let response = app.post_json(path, body).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

async fn me(app: &TestApp, access: &str) -> Value {
    app.get_with_token("/api/v1/auth/me", access)
        .await
        .json()
        .await
        .unwrap()
}

async fn registration_mails_a_verification_link(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let tokens = app.signed_in("verify@example.com").await;
    let first = app.mailbox.token("verify@example.com", 1).await;
    let message = &app.mailbox.messages_to("verify@example.com")[0];
    assert!(message.contains("Subject: Confirm your email address"));
    assert!(message.contains("http://keel.test/verify-email?token="));

    // A resend replaces the first link.
    let (status, _) = post(
        &app,
        "/api/v1/auth/resend-verification",
        json!({ "email": "verify@example.com" }),
    )
    .await;
    assert_eq!(status, 200);
    let second = app.mailbox.token("verify@example.com", 2).await;
    assert_ne!(first, second);
    let (status, body) = post(&app, "/api/v1/auth/verify-email", json!({ "token": first })).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (400, Some("INVALID_LINK"))
    );

    let (status, _) = post(
        &app,
        "/api/v1/auth/verify-email",
        json!({ "token": second }),
    )
    .await;
    assert_eq!(status, 200);
    // The first proof of the address ends the sessions opened before it.
    assert_eq!(me(&app, &tokens.access).await["reason"], "SESSION_REVOKED");
    let tokens = app.login("verify@example.com").await;
    assert_eq!(me(&app, &tokens.access).await["email_verified"], true);
    let (status, _) = post(
        &app,
        "/api/v1/auth/verify-email",
        json!({ "token": second }),
    )
    .await;
    assert_eq!(status, 400, "a link works once");

    // Verified: no more verification mail is sent, and the answer is the same as for anyone.
    let (_, known) = post(
        &app,
        "/api/v1/auth/resend-verification",
        json!({ "email": "verify@example.com" }),
    )
    .await;
    let (_, unknown) = post(
        &app,
        "/api/v1/auth/resend-verification",
        json!({ "email": "nobody@example.com" }),
    )
    .await;
    assert_eq!(known, unknown);

    // No address, or not an address, is refused with a field violation on every link route.
    for path in [
        "/api/v1/auth/resend-verification",
        "/api/v1/auth/request-password-reset",
        "/api/v1/auth/magic-link",
    ] {
        for body in [
            json!({}),
            json!({ "email": "" }),
            json!({ "email": "not an address" }),
        ] {
            let (status, error) = post(&app, path, body.clone()).await;
            assert_eq!(
                (status, &error["details"][1]["field_violations"][0]["field"]),
                (400, &json!("email")),
                "{path} {body}: {error}"
            );
        }
    }
    let refused = app
        .grpc()
        .await
        .request_password_reset(RequestPasswordResetRequest {
            email: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);

    let status = app
        .grpc()
        .await
        .verify_email(VerifyEmailRequest {
            token: "forged".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(grpc_reason(&status), "INVALID_LINK");
}

async fn unverified_users_cannot_sign_in_when_required(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.require_verified_email = Some("true".into());
    })
    .await;
    app.register("strict@example.com").await;
    let (status, body) = post(
        &app,
        "/api/v1/auth/login",
        json!({ "email": "strict@example.com", "password": PASSWORD }),
    )
    .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (409, Some("EMAIL_NOT_VERIFIED"))
    );
    let token = app.mailbox.token("strict@example.com", 1).await;
    post(&app, "/api/v1/auth/verify-email", json!({ "token": token })).await;
    app.login("strict@example.com").await;
}

async fn password_reset_by_mail(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let old_session = app.signed_in("reset@example.com").await;
    app.mailbox.token("reset@example.com", 1).await; // the verification mail

    // Known and unknown addresses get the same answer.
    let (status, known) = post(
        &app,
        "/api/v1/auth/request-password-reset",
        json!({ "email": "reset@example.com" }),
    )
    .await;
    assert_eq!(status, 200);
    let (_, unknown) = post(
        &app,
        "/api/v1/auth/request-password-reset",
        json!({ "email": "ghost@example.com" }),
    )
    .await;
    assert_eq!(known, unknown);
    let reply = app
        .grpc()
        .await
        .request_password_reset(RequestPasswordResetRequest {
            email: "ghost@example.com".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.message, known["message"]);

    let token = app.mailbox.token("reset@example.com", 2).await;
    let message = &app.mailbox.messages_to("reset@example.com")[1];
    assert!(message.contains("Subject: Reset your password"));
    assert!(app.mailbox.messages_to("ghost@example.com").is_empty());

    // A weak password is refused without spending the link.
    let (status, body) = post(
        &app,
        "/api/v1/auth/reset-password",
        json!({ "token": token, "new_password": "weak" }),
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.to_string().contains("new_password"));
    let (status, _) = post(
        &app,
        "/api/v1/auth/reset-password",
        json!({ "token": token, "new_password": "N3w!Passw0rd" }),
    )
    .await;
    assert_eq!(status, 200);

    // Every session is signed out; the new password works, the old one and the link do not.
    assert_eq!(
        app.get_with_token("/api/v1/auth/me", &old_session.access)
            .await
            .status(),
        401
    );
    let (status, _) = post(
        &app,
        "/api/v1/auth/login",
        json!({ "email": "reset@example.com", "password": PASSWORD }),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = post(
        &app,
        "/api/v1/auth/login",
        json!({ "email": "reset@example.com", "password": "N3w!Passw0rd" }),
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = post(
        &app,
        "/api/v1/auth/reset-password",
        json!({ "token": token, "new_password": "An0ther!pass" }),
    )
    .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (400, Some("INVALID_LINK"))
    );

    // Links expire after an hour.
    post(
        &app,
        "/api/v1/auth/request-password-reset",
        json!({ "email": "reset@example.com" }),
    )
    .await;
    let late = app.mailbox.token("reset@example.com", 3).await;
    app.clock.advance(chrono::Duration::minutes(61));
    let (status, body) = post(
        &app,
        "/api/v1/auth/reset-password",
        json!({ "token": late, "new_password": "An0ther!pass" }),
    )
    .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (400, Some("INVALID_LINK"))
    );
}

async fn magic_link_signs_in(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("magic@example.com").await;
    // Proven already: a first proof by magic link also retires the registration's password
    // (see hardening::a_magic_link_takes_over_a_pre_hijacked_account).
    app.verify_email("magic@example.com").await;

    let (status, _) = post(
        &app,
        "/api/v1/auth/magic-link",
        json!({ "email": "magic@example.com" }),
    )
    .await;
    assert_eq!(status, 200);
    let token = app.mailbox.token("magic@example.com", 2).await;
    let message = &app.mailbox.messages_to("magic@example.com")[1];
    assert!(message.contains("http://keel.test/magic-link?token="));
    let (status, body) = post(
        &app,
        "/api/v1/auth/magic-link/verify",
        json!({ "token": token }),
    )
    .await;
    assert_eq!(status, 200);
    let access = body["access_token"].as_str().unwrap();
    assert_eq!(
        me(&app, access).await["email_verified"],
        true,
        "the link proves the address"
    );
    let (status, _) = post(
        &app,
        "/api/v1/auth/magic-link/verify",
        json!({ "token": token }),
    )
    .await;
    assert_eq!(status, 400, "a link works once");

    // Fifteen minutes, then it is refused.
    post(
        &app,
        "/api/v1/auth/magic-link",
        json!({ "email": "magic@example.com" }),
    )
    .await;
    let late = app.mailbox.token("magic@example.com", 3).await;
    app.clock.advance(chrono::Duration::minutes(16));
    let (status, body) = post(
        &app,
        "/api/v1/auth/magic-link/verify",
        json!({ "token": late }),
    )
    .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (400, Some("INVALID_LINK"))
    );

    // With two-factor authentication on, the link still needs the second factor.
    let tokens = app.login("magic@example.com").await;
    let setup: Value = app
        .http
        .post(app.url("/api/v1/totp/setup"))
        .bearer_auth(&tokens.access)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let secret = setup["secret"].as_str().unwrap();
    let totp = totp_rs::Builder::new()
        .with_secret(totp_rs::Secret::try_from_base32(secret).unwrap())
        .build_noncompliant();
    let now =
        u64::try_from(keel::domain::clock::Clock::now(app.clock.as_ref()).timestamp()).unwrap();
    app.http
        .post(app.url("/api/v1/totp/enable"))
        .bearer_auth(&tokens.access)
        .json(&json!({ "code": totp.generate(now).to_string(), "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    post(
        &app,
        "/api/v1/auth/magic-link",
        json!({ "email": "magic@example.com" }),
    )
    .await;
    let token = app.mailbox.token("magic@example.com", 4).await;
    let (status, body) = post(
        &app,
        "/api/v1/auth/magic-link/verify",
        json!({ "token": token }),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["mfa_required"], true);
    assert_eq!(body["access_token"], "");
}
