//! Two-factor authentication: enrolment, sign-in with a code or a backup code, replay and
//! reuse refused, re-authentication for changes, lockout on wrong codes, secrets sealed at rest.

use crate::backend_tests;
use crate::harness::{Backend, PASSWORD, TestApp, grpc_reason};
use keel::api::pb::keel::auth::v1::{LoginMfaRequest, LoginRequest};
use keel::domain::clock::Clock;
use serde_json::{Value, json};
use tonic::Code;
use totp_rs::{Builder, Secret};

backend_tests!(
    totp_sign_in_with_codes_and_backup_codes,
    totp_changes_need_reauthentication,
    wrong_codes_count_towards_the_lockout,
    wrong_reauthentication_counts_towards_the_lockout,
);

/// The code an authenticator shows now (by the server's clock) for a base32 secret.
pub fn code_now(app: &TestApp, secret: &str) -> String {
    let totp = Builder::new()
        .with_secret(Secret::try_from_base32(secret).unwrap())
        .build_noncompliant();
    let now = u64::try_from(app.clock.now().timestamp()).unwrap();
    totp.generate(now).to_string()
}

async fn post(app: &TestApp, path: &str, token: &str, body: Value) -> reqwest::Response {
    app.http
        .post(app.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap()
}

async fn reason(response: reqwest::Response) -> String {
    let body: Value = response.json().await.unwrap();
    body["reason"].as_str().unwrap_or_default().to_owned()
}

/// Signs up `email` and turns TOTP on; answers the secret and the backup codes.
async fn enrolled(app: &TestApp, email: &str) -> (String, Vec<String>) {
    let tokens = app.signed_in(email).await;
    enroll(app, &tokens.access).await
}

/// Turns 2FA on for the signed-in caller; answers the secret and the backup codes.
pub async fn enroll(app: &TestApp, access: &str) -> (String, Vec<String>) {
    let setup = post(app, "/api/v1/totp/setup", access, json!({})).await;
    assert_eq!(setup.status(), 200);
    let setup: Value = setup.json().await.unwrap();
    let secret = setup["secret"].as_str().unwrap().to_owned();
    let codes: Vec<String> = setup["backup_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|code| code.as_str().unwrap().to_owned())
        .collect();
    let enabled = post(
        app,
        "/api/v1/totp/enable",
        access,
        json!({ "code": code_now(app, &secret), "password": PASSWORD }),
    )
    .await;
    assert_eq!(enabled.status(), 200);
    (secret, codes)
}

/// Signs in with the password; answers the `mfa_token` the server asks to complete.
pub async fn mfa_token(app: &TestApp, email: &str) -> String {
    let response = app
        .post_json(
            "/api/v1/auth/login",
            json!({ "email": email, "password": PASSWORD }),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["mfa_required"], true, "{body}");
    assert_eq!(
        body["access_token"], "",
        "no tokens before the second factor"
    );
    body["mfa_token"].as_str().unwrap().to_owned()
}

async fn login_mfa(app: &TestApp, path: &str, mfa_token: &str, code: &str) -> reqwest::Response {
    app.post_json(path, json!({ "mfa_token": mfa_token, "code": code }))
        .await
}

async fn totp_sign_in_with_codes_and_backup_codes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let tokens = app.signed_in("mfa@example.com").await;

    let setup: Value = post(&app, "/api/v1/totp/setup", &tokens.access, json!({}))
        .await
        .json()
        .await
        .unwrap();
    let secret = setup["secret"].as_str().unwrap().to_owned();
    assert!(
        setup["provisioning_uri"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/Keel:mfa%40example.com?")
    );
    assert!(
        setup["qr_code"]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,")
    );
    assert_eq!(setup["backup_codes"].as_array().unwrap().len(), 10);
    let backup = setup["backup_codes"][0].as_str().unwrap().to_owned();

    // Set up but not enabled: nothing changes at sign-in.
    let status: Value = app
        .get_with_token("/api/v1/totp/status", &tokens.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["enabled"], false);
    app.login("mfa@example.com").await;

    let wrong = post(
        &app,
        "/api/v1/totp/enable",
        &tokens.access,
        json!({ "code": "000000", "password": PASSWORD }),
    )
    .await;
    assert_eq!(wrong.status(), 400);
    assert_eq!(reason(wrong).await, "INVALID_CODE");
    let enable_code = code_now(&app, &secret);
    let enabled = post(
        &app,
        "/api/v1/totp/enable",
        &tokens.access,
        json!({ "code": enable_code, "password": PASSWORD }),
    )
    .await;
    assert_eq!(enabled.status(), 200);
    let status: Value = app
        .get_with_token("/api/v1/totp/status", &tokens.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["enabled"], true);
    assert_eq!(status["backup_codes_remaining"], 10);

    // The password alone no longer signs in; the code used to enable cannot be replayed.
    let pending = mfa_token(&app, "mfa@example.com").await;
    let response = login_mfa(&app, "/api/v1/auth/login/mfa", &pending, "123456").await;
    assert_eq!(response.status(), 401);
    assert_eq!(reason(response).await, "INVALID_CODE");
    let replayed = login_mfa(&app, "/api/v1/auth/login/mfa", &pending, &enable_code).await;
    assert_eq!(reason(replayed).await, "INVALID_CODE");

    app.clock.advance(chrono::Duration::seconds(30));
    let code = code_now(&app, &secret);
    let response = login_mfa(&app, "/api/v1/auth/login/mfa", &pending, &code).await;
    assert_eq!(response.status(), 200);
    let signed_in: Value = response.json().await.unwrap();
    let access = signed_in["access_token"].as_str().unwrap();
    assert_eq!(
        app.get_with_token("/api/v1/auth/me", access).await.status(),
        200
    );

    // The MFA token is single use, and the code too, even with a fresh MFA token.
    let reused = login_mfa(&app, "/api/v1/auth/login/mfa", &pending, &code).await;
    assert_eq!(reason(reused).await, "INVALID_MFA_TOKEN");
    let fresh = mfa_token(&app, "mfa@example.com").await;
    let replayed = login_mfa(&app, "/api/v1/auth/login/mfa", &fresh, &code).await;
    assert_eq!(reason(replayed).await, "INVALID_CODE");

    // A backup code works exactly once, through the seed's /totp/verify route as well.
    let response = login_mfa(&app, "/api/v1/totp/verify", &fresh, &backup.to_uppercase()).await;
    assert_eq!(response.status(), 200);
    let again = mfa_token(&app, "mfa@example.com").await;
    let response = login_mfa(&app, "/api/v1/auth/login/mfa", &again, &backup).await;
    assert_eq!(reason(response).await, "INVALID_CODE");
    let status: Value = app
        .get_with_token("/api/v1/totp/status", &tokens.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["backup_codes_remaining"], 9);

    // gRPC: Login answers mfa_required, LoginMfa finishes.
    let mut client = app.grpc().await;
    let reply = client
        .login(LoginRequest {
            email: "mfa@example.com".into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(reply.mfa_required);
    assert!(reply.access_token.is_empty());
    app.clock.advance(chrono::Duration::seconds(30));
    let finished = client
        .login_mfa(LoginMfaRequest {
            mfa_token: reply.mfa_token.clone(),
            code: code_now(&app, &secret),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(finished.token_type, "bearer");
    let status = client
        .login_mfa(LoginMfaRequest {
            mfa_token: reply.mfa_token,
            code: code_now(&app, &secret),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(grpc_reason(&status), "INVALID_MFA_TOKEN");

    // An MFA token expires after five minutes.
    let late = mfa_token(&app, "mfa@example.com").await;
    app.clock.advance(chrono::Duration::minutes(6));
    let response = login_mfa(
        &app,
        "/api/v1/auth/login/mfa",
        &late,
        &code_now(&app, &secret),
    )
    .await;
    assert_eq!(reason(response).await, "INVALID_MFA_TOKEN");

    // The secret is sealed at rest.
    let store = keel::store::SqlStore::connect(&app.config.database_url)
        .await
        .unwrap();
    let me: Value = app
        .get_with_token("/api/v1/auth/me", &tokens.access)
        .await
        .json()
        .await
        .unwrap();
    let user_id = uuid::Uuid::parse_str(me["id"].as_str().unwrap()).unwrap();
    let stored = keel::domain::totp::TotpStore::find_totp(&store, user_id)
        .await
        .unwrap()
        .unwrap();
    let raw = Secret::try_from_base32(&secret)
        .unwrap()
        .as_bytes()
        .to_vec();
    assert!(
        !stored
            .secret_sealed
            .windows(raw.len())
            .any(|window| window == raw.as_slice())
    );
}

async fn totp_changes_need_reauthentication(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (secret, old_codes) = enrolled(&app, "reauth@example.com").await;
    let pending = mfa_token(&app, "reauth@example.com").await;
    let signed_in: Value = login_mfa(&app, "/api/v1/auth/login/mfa", &pending, &old_codes[0])
        .await
        .json()
        .await
        .unwrap();
    let access = signed_in["access_token"].as_str().unwrap().to_owned();

    let again = post(&app, "/api/v1/totp/setup", &access, json!({})).await;
    assert_eq!(again.status(), 409);
    assert_eq!(reason(again).await, "TOTP_ALREADY_ENABLED");

    for body in [
        json!({}),
        json!({ "password": "Wr0ng!pass" }),
        json!({ "code": "000000" }),
    ] {
        let refused = post(&app, "/api/v1/totp/backup-codes", &access, body.clone()).await;
        assert_eq!(refused.status(), 400, "{body}");
        assert_eq!(reason(refused).await, "REAUTHENTICATION_FAILED");
    }
    let regenerated: Value = post(
        &app,
        "/api/v1/totp/backup-codes",
        &access,
        json!({ "password": PASSWORD }),
    )
    .await
    .json()
    .await
    .unwrap();
    let new_codes = regenerated["backup_codes"].as_array().unwrap();
    assert_eq!(new_codes.len(), 10);
    let pending = mfa_token(&app, "reauth@example.com").await;
    let old = login_mfa(&app, "/api/v1/auth/login/mfa", &pending, &old_codes[1]).await;
    assert_eq!(
        reason(old).await,
        "INVALID_CODE",
        "old backup codes are gone"
    );

    app.clock.advance(chrono::Duration::seconds(30));
    let disabled = post(
        &app,
        "/api/v1/totp/disable",
        &access,
        json!({ "code": code_now(&app, &secret) }),
    )
    .await;
    assert_eq!(disabled.status(), 200);
    let status: Value = app
        .get_with_token("/api/v1/totp/status", &access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["enabled"], false);
    app.login("reauth@example.com").await;
    let off = post(
        &app,
        "/api/v1/totp/disable",
        &access,
        json!({ "password": PASSWORD }),
    )
    .await;
    assert_eq!(reason(off).await, "TOTP_NOT_ENABLED");
}

async fn wrong_codes_count_towards_the_lockout(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.lockout_threshold = Some("3".into());
    })
    .await;
    let (secret, _) = enrolled(&app, "mfa-lock@example.com").await;
    // The accepted password counts as an attempt until its code arrives: two wrong codes
    // reach the threshold of three.
    let pending = mfa_token(&app, "mfa-lock@example.com").await;
    for _ in 0..2 {
        let response = login_mfa(&app, "/api/v1/auth/login/mfa", &pending, "111111").await;
        assert_eq!(reason(response).await, "INVALID_CODE");
    }
    app.clock.advance(chrono::Duration::seconds(30));
    let locked = login_mfa(
        &app,
        "/api/v1/auth/login/mfa",
        &pending,
        &code_now(&app, &secret),
    )
    .await;
    assert_eq!(locked.status(), 401);
    assert_eq!(reason(locked).await, "ACCOUNT_LOCKED");
    let password = app
        .post_json(
            "/api/v1/auth/login",
            json!({ "email": "mfa-lock@example.com", "password": PASSWORD }),
        )
        .await;
    assert_eq!(reason(password).await, "ACCOUNT_LOCKED");
}

/// Guessing the password or code that turns 2FA off, from a stolen session, meets the same
/// lockout as signing in.
async fn wrong_reauthentication_counts_towards_the_lockout(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.lockout_threshold = Some("3".into());
    })
    .await;
    let tokens = app.signed_in("mfa-guess@example.com").await;
    let (secret, _) = enroll(&app, &tokens.access).await;
    for (path, proof) in [
        (
            "/api/v1/totp/disable",
            json!({ "password": "Wr0ng!Passw0rd" }),
        ),
        ("/api/v1/totp/backup-codes", json!({ "code": "111111" })),
        (
            "/api/v1/totp/disable",
            json!({ "password": "Wr0ng!Passw0rd" }),
        ),
    ] {
        let refused = post(&app, path, &tokens.access, proof).await;
        assert_eq!(reason(refused).await, "REAUTHENTICATION_FAILED");
    }
    let locked = post(
        &app,
        "/api/v1/totp/disable",
        &tokens.access,
        json!({ "code": code_now(&app, &secret) }),
    )
    .await;
    assert_eq!(locked.status(), 401);
    assert_eq!(reason(locked).await, "ACCOUNT_LOCKED");
    let status: Value = app
        .get_with_token("/api/v1/totp/status", &tokens.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(status["enabled"], true, "2FA stays on while locked");
}
