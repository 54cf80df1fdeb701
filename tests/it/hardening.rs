//! The account hardening of issue #8: pre-hijacked accounts are taken back whole by the first
//! proof of the address, 2FA enrolment needs the password, lockouts count before they check,
//! sign-ups and hashing are admitted under load, sessions end at their absolute lifetime, and
//! the operational defaults (file modes, `/metrics` token, HSTS).

use crate::backend_tests;
use crate::harness::{Backend, PASSWORD, TestApp, Tokens, grpc_reason, with_token};
use crate::totp::{code_now, enroll, mfa_token};
use keel::api::pb::keel::apikey::v1::CreateApiKeyRequest;
use keel::api::pb::keel::apikey::v1::api_key_service_client::ApiKeyServiceClient;
use keel::api::pb::keel::auth::v1::auth_service_client::AuthServiceClient;
use keel::api::pb::keel::auth::v1::{LoginMfaRequest, LoginRequest, RegisterRequest};
use keel::api::pb::keel::organization::v1::LeaveOrganizationRequest;
use keel::api::pb::keel::organization::v1::organization_service_client::OrganizationServiceClient;
use keel::api::pb::keel::totp::v1::EnableTotpRequest;
use keel::api::pb::keel::totp::v1::totp_service_client::TotpServiceClient;
use reqwest::Method;
use serde_json::{Value, json};
use tonic::Code;

backend_tests!(
    a_password_reset_takes_over_a_pre_hijacked_account,
    a_magic_link_takes_over_a_pre_hijacked_account,
    api_keys_need_a_verified_address_and_die_with_a_reset,
    enabling_totp_needs_the_password,
    parallel_wrong_passwords_get_exactly_the_threshold,
    parallel_wrong_codes_get_exactly_the_threshold,
    registration_is_rate_limited_per_address,
    a_full_hashing_queue_refuses_at_once,
    api_keys_cannot_leave_an_organization,
    sessions_end_at_their_absolute_lifetime,
    a_taken_address_registers_alike_when_verification_is_required,
    mail_to_one_address_and_invitations_are_bounded,
    breached_and_short_passwords_are_refused,
    a_superuser_resets_lost_two_factor,
    an_account_without_a_known_password_enrols_with_a_mailed_code,
);

async fn login_status(app: &TestApp, email: &str, password: &str) -> (u16, String) {
    let response = app
        .post_json(
            "/api/v1/auth/login",
            json!({ "email": email, "password": password }),
        )
        .await;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (
        status,
        body["reason"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Why a gRPC sign-in of `email` with `password` is refused.
async fn refused_sign_in(
    grpc: &mut AuthServiceClient<tonic::transport::Channel>,
    email: &str,
    password: &str,
) -> String {
    let status = grpc
        .login(LoginRequest {
            email: email.into(),
            password: password.into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    grpc_reason(&status)
}

async fn refresh_status(app: &TestApp, refresh_token: &str) -> (u16, String) {
    let response = app
        .post_json(
            "/api/v1/auth/refresh",
            json!({ "refresh_token": refresh_token }),
        )
        .await;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    (
        status,
        body["reason"].as_str().unwrap_or_default().to_owned(),
    )
}

/// Asks for a reset link for `email` and follows it with `new_password`; answers the status
/// and the error reason (empty on success).
async fn reset_by_mail(app: &TestApp, email: &str, new_password: &str) -> (u16, String) {
    app.post_json(
        "/api/v1/auth/request-password-reset",
        json!({ "email": email }),
    )
    .await;
    let token = app.mailbox.link_token(email, "reset-password").await;
    app.status_and_reason(
        Method::POST,
        "/api/v1/auth/reset-password",
        "",
        Some(json!({ "token": token, "new_password": new_password })),
    )
    .await
}

/// The squatter's foothold on an address they do not own: a session (with its refresh token)
/// and an authenticator of theirs enrolled as the account's second factor.
async fn squat(app: &TestApp, email: &str) -> Tokens {
    let squatter = app.signed_in(email).await;
    enroll(app, &squatter.access).await;
    let pending = mfa_token(app, email).await;
    assert!(!pending.is_empty(), "the squatter's 2FA is on");
    squatter
}

async fn a_password_reset_takes_over_a_pre_hijacked_account(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let email = "victim@corp.example";
    let squatter = squat(&app, email).await;

    // The owner of the mailbox resets the password.
    assert_eq!(
        reset_by_mail(&app, email, "An0ther!Passw0rd").await,
        (200, String::new())
    );

    // The squatter's session, refresh token, password and authenticator are all gone.
    assert_eq!(
        app.status_and_reason(Method::GET, "/api/v1/auth/me", &squatter.access, None)
            .await,
        (401, "SESSION_REVOKED".to_owned())
    );
    assert_eq!(refresh_status(&app, &squatter.refresh).await.0, 401);
    assert_eq!(login_status(&app, email, PASSWORD).await.0, 401);
    let owner = app
        .grpc()
        .await
        .login(LoginRequest {
            email: email.into(),
            password: "An0ther!Passw0rd".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!owner.mfa_required, "the squatter's 2FA enrolment is gone");
    let me: Value = app
        .get_with_token("/api/v1/auth/me", &owner.access_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["email_verified"], true, "the reset proved the address");
}

async fn a_magic_link_takes_over_a_pre_hijacked_account(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let email = "owner@corp.example";
    let squatter = squat(&app, email).await;

    app.post_json("/api/v1/auth/magic-link", json!({ "email": email }))
        .await;
    let token = app.mailbox.link_token(email, "magic-link").await;
    let response = app
        .post_json("/api/v1/auth/magic-link/verify", json!({ "token": token }))
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["mfa_required"], false, "the squatter's 2FA is gone");
    let owner = body["access_token"].as_str().unwrap();
    assert_eq!(
        app.get_with_token("/api/v1/auth/me", owner).await.status(),
        200
    );

    // The squatter keeps nothing: not the session, not the refresh token, not the password
    // they chose at registration.
    assert_eq!(
        app.status_and_reason(Method::GET, "/api/v1/auth/me", &squatter.access, None)
            .await,
        (401, "SESSION_REVOKED".to_owned())
    );
    assert_eq!(refresh_status(&app, &squatter.refresh).await.0, 401);
    assert_eq!(
        login_status(&app, email, PASSWORD).await,
        (401, "INVALID_CREDENTIALS".to_owned())
    );
}

async fn api_keys_need_a_verified_address_and_die_with_a_reset(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let unverified = app.signed_in("unproven@example.com").await;
    assert_eq!(
        app.status_and_reason(
            Method::POST,
            "/api/v1/api-keys",
            &unverified.access,
            Some(json!({ "name": "deploys" })),
        )
        .await,
        (409, "EMAIL_NOT_VERIFIED".to_owned())
    );
    let refused = ApiKeyServiceClient::new(app.channel().await)
        .create_api_key(with_token(
            CreateApiKeyRequest {
                name: "deploys".into(),
                ..Default::default()
            },
            &unverified.access,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), grpc_reason(&refused).as_str()),
        (Code::FailedPrecondition, "EMAIL_NOT_VERIFIED")
    );

    // A verified owner gets keys; a password reset revokes them, a change of password keeps
    // them.
    let email = "proven@example.com";
    let owner = app.verified(email).await;
    let key = |tokens: &Tokens| {
        let access = tokens.access.clone();
        let app = &app;
        async move {
            let (status, created) = app
                .rest(
                    Method::POST,
                    "/api/v1/api-keys",
                    &access,
                    Some(json!({ "name": "deploys" })),
                )
                .await;
            assert_eq!(status, 201, "{created}");
            created["key"].as_str().unwrap().to_owned()
        }
    };
    let kept = key(&owner).await;
    let (status, _) = app
        .rest(
            Method::PUT,
            "/api/v1/users/me/password",
            &owner.access,
            Some(json!({ "current_password": PASSWORD, "new_password": "Chang3d!Passw0rd" })),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        app.get_with_token("/api/v1/auth/me", &kept).await.status(),
        200,
        "a change of password keeps the keys"
    );

    assert_eq!(
        reset_by_mail(&app, email, "Res3t!Passw0rd").await,
        (200, String::new())
    );
    assert_eq!(
        app.status_and_reason(Method::GET, "/api/v1/auth/me", &kept, None)
            .await,
        (401, "API_KEY_REVOKED".to_owned())
    );
}

async fn enabling_totp_needs_the_password(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.lockout_threshold = Some("3".into());
    })
    .await;
    let email = "enrol@example.com";
    let tokens = app.verified(email).await;
    let (status, setup) = app
        .rest(
            Method::POST,
            "/api/v1/totp/setup",
            &tokens.access,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    let secret = setup["secret"].as_str().unwrap().to_owned();

    // A stolen access token alone cannot enrol its thief's authenticator.
    let mut totp = TotpServiceClient::new(app.channel().await);
    let refused = totp
        .enable_totp(with_token(
            EnableTotpRequest {
                code: code_now(&app, &secret),
                ..Default::default()
            },
            &tokens.access,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), grpc_reason(&refused).as_str()),
        (Code::InvalidArgument, "REAUTHENTICATION_FAILED")
    );
    assert_eq!(
        app.status_and_reason(
            Method::POST,
            "/api/v1/totp/enable",
            &tokens.access,
            Some(json!({ "code": code_now(&app, &secret), "password": "Wr0ng!Passw0rd" })),
        )
        .await,
        (400, "REAUTHENTICATION_FAILED".to_owned())
    );
    // Wrong passwords here count towards the lockout: the third locks the account.
    assert_eq!(
        app.status_and_reason(
            Method::POST,
            "/api/v1/totp/enable",
            &tokens.access,
            Some(json!({ "code": code_now(&app, &secret), "password": "Wr0ng!Passw0rd" })),
        )
        .await
        .1,
        "REAUTHENTICATION_FAILED"
    );
    assert_eq!(
        login_status(&app, email, PASSWORD).await,
        (401, "ACCOUNT_LOCKED".to_owned())
    );
    app.clock.advance(chrono::Duration::minutes(16));
    let tokens = app.login(email).await;

    totp.enable_totp(with_token(
        EnableTotpRequest {
            code: code_now(&app, &secret),
            password: PASSWORD.into(),
            ..Default::default()
        },
        &tokens.access,
    ))
    .await
    .unwrap();
    assert!(!mfa_token(&app, email).await.is_empty());

    // A password reset of an account with 2FA tells its owner.
    assert_eq!(
        reset_by_mail(&app, email, "Res3t!Passw0rd").await,
        (200, String::new())
    );
    assert_eq!(
        app.mailbox
            .wait_for(email, "Subject: Your password was reset", 1)
            .await,
        1
    );
}

async fn parallel_wrong_passwords_get_exactly_the_threshold(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let email = "burst@example.com";
    app.register(email).await;
    let mut grpc = app.grpc().await;
    let guesses = (0..20).map(|index| {
        let mut grpc = grpc.clone();
        async move { refused_sign_in(&mut grpc, email, &format!("Wr0ng!guess{index}")).await }
    });
    let reasons = futures_util::future::join_all(guesses).await;
    let checked = reasons
        .iter()
        .filter(|reason| *reason == "INVALID_CREDENTIALS")
        .count();
    let locked = reasons
        .iter()
        .filter(|reason| *reason == "ACCOUNT_LOCKED")
        .count();
    assert_eq!((checked, locked), (5, 15), "{reasons:?}");
    assert_eq!(
        refused_sign_in(&mut grpc, email, PASSWORD).await,
        "ACCOUNT_LOCKED"
    );
}

async fn parallel_wrong_codes_get_exactly_the_threshold(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let email = "codes@example.com";
    let tokens = app.verified(email).await;
    enroll(&app, &tokens.access).await;
    let mut grpc = app.grpc().await;
    // The password step counts one attempt until its code arrives, so a burst of wrong codes
    // gets the four checks left.
    let pending = mfa_token(&app, email).await;
    let guesses = (0..12).map(|index| {
        let mut grpc = grpc.clone();
        let mfa_token = pending.clone();
        async move {
            let status = grpc
                .login_mfa(LoginMfaRequest {
                    mfa_token,
                    code: format!("{:06}", 100_000 + index),
                })
                .await
                .unwrap_err();
            grpc_reason(&status)
        }
    });
    let reasons = futures_util::future::join_all(guesses).await;
    let checked = reasons
        .iter()
        .filter(|reason| *reason == "INVALID_CODE")
        .count();
    assert_eq!(checked, 4, "{reasons:?}");
    assert!(
        reasons
            .iter()
            .all(|reason| reason == "INVALID_CODE" || reason == "ACCOUNT_LOCKED"),
        "{reasons:?}"
    );
    assert_eq!(
        refused_sign_in(&mut grpc, email, PASSWORD).await,
        "ACCOUNT_LOCKED"
    );
}

async fn registration_is_rate_limited_per_address(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.rate_limit_auth_per_minute = Some("3".into());
    })
    .await;
    crate::harness::inside_one_minute().await;
    for index in 0..3 {
        app.register(&format!("flood{index}@example.com")).await;
    }
    let response = app
        .post_json(
            "/api/v1/auth/register",
            json!({ "email": "flood3@example.com", "password": PASSWORD, "full_name": "F" }),
        )
        .await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    let refused = app
        .grpc()
        .await
        .register(RegisterRequest {
            email: "flood4@example.com".into(),
            password: PASSWORD.into(),
            full_name: "F".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), grpc_reason(&refused).as_str()),
        (Code::ResourceExhausted, "RATE_LIMITED")
    );
    // The next minute has a fresh budget.
    app.clock.advance(chrono::Duration::minutes(1));
    app.register("flood5@example.com").await;
}

async fn a_full_hashing_queue_refuses_at_once(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.hash_concurrency = Some("1".into());
        settings.hash_queue_limit = Some("1".into());
        // Slow enough hashes that a burst piles up behind one thread.
        settings.argon2_memory_kib = Some("16384".into());
        settings.argon2_iterations = Some("4".into());
    })
    .await;
    let registrations = (0..16).map(|index| {
        let app = &app;
        async move {
            let response = app
                .post_json(
                    "/api/v1/auth/register",
                    json!({ "email": format!("busy{index}@example.com"), "password": PASSWORD, "full_name": "B" }),
                )
                .await;
            let status = response.status().as_u16();
            let retry_after = response.headers().contains_key("retry-after");
            let body: Value = response.json().await.unwrap();
            (status, retry_after, body["reason"].as_str().unwrap_or_default().to_owned())
        }
    });
    let outcomes = futures_util::future::join_all(registrations).await;
    let busy: Vec<_> = outcomes
        .iter()
        .filter(|(status, _, _)| *status == 503)
        .collect();
    assert!(!busy.is_empty(), "{outcomes:?}");
    assert!(
        busy.iter()
            .all(|(_, retry_after, reason)| *retry_after && reason == "SERVER_BUSY"),
        "{outcomes:?}"
    );
    assert!(
        outcomes.iter().any(|(status, _, _)| *status == 201),
        "{outcomes:?}"
    );
    assert!(
        outcomes
            .iter()
            .all(|(status, _, _)| *status == 201 || *status == 503),
        "{outcomes:?}"
    );

    // gRPC callers see RESOURCE_EXHAUSTED with the same reason; sign-ins refused unchecked
    // do not count towards the account's lockout.
    let registered = outcomes
        .iter()
        .position(|(status, _, _)| *status == 201)
        .unwrap();
    let email = format!("busy{registered}@example.com");
    let grpc = app.grpc().await;
    let attempts = (0..16).map(|_| {
        let mut grpc = grpc.clone();
        let email = email.clone();
        async move {
            grpc.login(LoginRequest {
                email,
                password: PASSWORD.into(),
                ..Default::default()
            })
            .await
        }
    });
    let refused: Vec<_> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .filter_map(Result::err)
        .filter(|status| status.code() == Code::ResourceExhausted)
        .collect();
    assert!(!refused.is_empty());
    assert!(
        refused
            .iter()
            .all(|status| grpc_reason(status) == "SERVER_BUSY")
    );
    assert_eq!(login_status(&app, &email, PASSWORD).await.0, 200);
}

async fn api_keys_cannot_leave_an_organization(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let owner = app.verified("leaver@example.com").await;
    let (status, organization) = app
        .rest(
            Method::POST,
            "/api/v1/organizations",
            &owner.access,
            Some(json!({ "name": "Leavers", "slug": "leavers" })),
        )
        .await;
    assert_eq!(status, 201, "{organization}");
    let organization_id = organization["id"].as_str().unwrap().to_owned();
    let (status, created) = app
        .rest(
            Method::POST,
            "/api/v1/api-keys",
            &owner.access,
            Some(json!({ "name": "reader", "scopes": ["organization:read"] })),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap();

    assert_eq!(
        app.status_and_reason(
            Method::POST,
            &format!("/api/v1/organizations/{organization_id}/leave"),
            key,
            None,
        )
        .await,
        (403, "SESSION_REQUIRED".to_owned())
    );
    let refused = OrganizationServiceClient::new(app.channel().await)
        .leave_organization(with_token(
            LeaveOrganizationRequest {
                organization_id: organization_id.clone(),
            },
            key,
        ))
        .await
        .unwrap_err();
    assert_eq!(
        (refused.code(), grpc_reason(&refused).as_str()),
        (Code::PermissionDenied, "SESSION_REQUIRED")
    );
    let (status, _) = app
        .rest(
            Method::GET,
            &format!("/api/v1/organizations/{organization_id}"),
            &owner.access,
            None,
        )
        .await;
    assert_eq!(status, 200, "still a member");
}

async fn sessions_end_at_their_absolute_lifetime(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.session_max_lifetime_seconds = Some("3600".into());
    })
    .await;
    let mut tokens = app.signed_in("lifetime@example.com").await;
    // Refreshing keeps the session alive, but never past an hour from sign-in.
    for _ in 0..2 {
        app.clock.advance(chrono::Duration::minutes(25));
        let response = app
            .post_json(
                "/api/v1/auth/refresh",
                json!({ "refresh_token": tokens.refresh }),
            )
            .await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        tokens.refresh = body["refresh_token"].as_str().unwrap().to_owned();
    }
    app.clock.advance(chrono::Duration::minutes(11));
    assert_eq!(
        refresh_status(&app, &tokens.refresh).await,
        (401, "SESSION_EXPIRED".to_owned())
    );
}

async fn a_taken_address_registers_alike_when_verification_is_required(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.require_verified_email = Some("true".into());
    })
    .await;
    let email = "taken@example.com";
    let first = app.register(email).await;
    let response = app
        .post_json(
            "/api/v1/auth/register",
            json!({ "email": email, "password": "Imp0ster!Passw0rd", "full_name": "Test User" }),
        )
        .await;
    assert_eq!(response.status(), 201, "the same answer as a new address");
    let second: Value = response.json().await.unwrap();
    let keys = |user: &Value| {
        let mut keys: Vec<String> = user.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    assert_eq!(keys(&first), keys(&second));
    assert_eq!(
        (&second["email"], &second["email_verified"]),
        (&json!(email), &json!(false))
    );
    assert_ne!(first["id"], second["id"]);
    app.grpc()
        .await
        .register(RegisterRequest {
            email: email.into(),
            password: "Imp0ster!Passw0rd".into(),
            full_name: "Test User".into(),
        })
        .await
        .unwrap();

    // The owner hears of it; the impostor's password opens nothing.
    let subject = "Subject: Someone tried to register with your address";
    assert_eq!(
        app.mailbox.wait_for(email, subject, 2).await,
        2,
        "one message to the owner per attempt"
    );
    assert_eq!(
        login_status(&app, email, "Imp0ster!Passw0rd").await,
        (401, "INVALID_CREDENTIALS".to_owned())
    );

    // Without the requirement a taken address says so.
    let open = TestApp::spawn(backend).await;
    open.register(email).await;
    let response = open
        .post_json(
            "/api/v1/auth/register",
            json!({ "email": email, "password": PASSWORD, "full_name": "Test User" }),
        )
        .await;
    assert_eq!(response.status(), 409);
}

async fn mail_to_one_address_and_invitations_are_bounded(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.rate_limit_mail_per_recipient_per_hour = Some("3".into());
        settings.rate_limit_invitations_per_hour = Some("2".into());
    })
    .await;
    // Every kind of mail to one address, whoever asks, shares its budget; an address without
    // an account is bounded alike, so the refusal says nothing about existence.
    app.register("target@example.com").await;
    for email in ["target@example.com", "stranger@example.com"] {
        let mut answers = Vec::new();
        for path in [
            "/api/v1/auth/request-password-reset",
            "/api/v1/auth/magic-link",
            "/api/v1/auth/resend-verification",
            "/api/v1/auth/magic-link",
        ] {
            let response = app.post_json(path, json!({ "email": email })).await;
            answers.push(response.status().as_u16());
        }
        let expected = if email == "target@example.com" {
            vec![200, 200, 429, 429]
        } else {
            vec![200, 200, 200, 429]
        };
        assert_eq!(answers, expected, "{email}");
    }

    // An organization sends a bounded number of invitations, resends included.
    let (_, owner) = crate::invitations::verified_user(&app, "inviter@example.com").await;
    let organization_id =
        crate::organizations::create_organization(&app, &owner.access, "inviters").await;
    let invitations = format!("/api/v1/organizations/{organization_id}/invitations");
    let (status, first) = app
        .rest(
            Method::POST,
            &invitations,
            &owner.access,
            Some(json!({ "email": "guest1@example.com" })),
        )
        .await;
    assert_eq!(status, 201);
    let first_id = first["id"].as_str().unwrap();
    let (status, _) = app
        .rest(
            Method::POST,
            &format!("{invitations}/{first_id}/resend"),
            &owner.access,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        app.status_and_reason(
            Method::POST,
            &invitations,
            &owner.access,
            Some(json!({ "email": "guest2@example.com" })),
        )
        .await,
        (429, "RATE_LIMITED".to_owned())
    );
    let (_, listed) = app
        .rest(Method::GET, &invitations, &owner.access, None)
        .await;
    assert_eq!(
        listed["invitations"].as_array().unwrap().len(),
        1,
        "a refused invitation leaves nothing behind"
    );
}

/// ASVS defaults: twelve characters at least, no composition rules, and (when a list is
/// configured) no password known from a breach.
async fn breached_and_short_passwords_are_refused(backend: Backend) {
    let breached = "correct horse battery staple";
    let digest: String = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        breached.as_bytes(),
    )
    .as_ref()
    .iter()
    .map(|byte| format!("{byte:02X}"))
    .collect();
    let list = tempfile::tempdir().unwrap();
    std::fs::write(
        list.path().join(format!("{}.txt", &digest[..5])),
        format!("{}:42\n", &digest[5..]),
    )
    .unwrap();
    let directory = list.path().display().to_string();
    let app = TestApp::spawn_with(backend, |settings| {
        settings.breached_passwords_dir = Some(directory);
    })
    .await;
    let register = |password: &'static str| {
        let app = &app;
        async move {
            let response = app
                .post_json(
                    "/api/v1/auth/register",
                    json!({ "email": "asvs@example.com", "password": password, "full_name": "A" }),
                )
                .await;
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap();
            let reasons: Vec<String> = body["details"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|detail| detail["field_violations"].as_array())
                .flatten()
                .map(|violation| violation["reason"].as_str().unwrap().to_owned())
                .collect();
            (status, reasons)
        }
    };
    assert_eq!(
        register("Sh0rt!pass").await,
        (400, vec!["PASSWORD_TOO_SHORT".to_owned()])
    );
    assert_eq!(
        register(breached).await,
        (400, vec!["PASSWORD_BREACHED".to_owned()])
    );
    assert_eq!(register("no digits or capitals needed").await.0, 201);

    // A reset to a breached password is refused too, before the link is spent.
    app.post_json(
        "/api/v1/auth/request-password-reset",
        json!({ "email": "asvs@example.com" }),
    )
    .await;
    let token = app
        .mailbox
        .link_token("asvs@example.com", "reset-password")
        .await;
    let response = app
        .post_json(
            "/api/v1/auth/reset-password",
            json!({ "token": token, "new_password": breached }),
        )
        .await;
    assert_eq!(response.status(), 400);
    let response = app
        .post_json(
            "/api/v1/auth/reset-password",
            json!({ "token": token, "new_password": "an unlisted passphrase" }),
        )
        .await;
    assert_eq!(response.status(), 200);
}

/// Authenticator and backup codes both lost: a superuser turns 2FA off, the owner hears of it.
async fn a_superuser_resets_lost_two_factor(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create_superuser("root@example.com").await;
    let root = app.login("root@example.com").await;
    let email = "lost-phone@example.com";
    let owner = app.verified(email).await;
    enroll(&app, &owner.access).await;
    let (_, me) = app
        .rest(Method::GET, "/api/v1/auth/me", &owner.access, None)
        .await;
    let path = format!("/api/v1/users/{}/totp", me["id"].as_str().unwrap());

    assert_eq!(
        app.status_and_reason(Method::DELETE, &path, &owner.access, None)
            .await,
        (403, "PERMISSION_DENIED".to_owned())
    );
    assert_eq!(
        app.status_and_reason(Method::DELETE, &path, &root.access, None)
            .await,
        (200, String::new())
    );
    assert_eq!(
        app.status_and_reason(Method::DELETE, &path, &root.access, None)
            .await,
        (409, "TOTP_NOT_ENABLED".to_owned())
    );
    let (status, body) = app
        .rest(
            Method::POST,
            "/api/v1/auth/login",
            "",
            Some(json!({ "email": email, "password": PASSWORD })),
        )
        .await;
    assert_eq!(
        (status.as_u16(), &body["mfa_required"]),
        (200, &json!(false))
    );
    assert_eq!(
        app.mailbox
            .wait_for(
                email,
                "Subject: Two-factor authentication was turned off",
                1
            )
            .await,
        1
    );
}

/// An account whose first proof was a magic link knows no password: it turns 2FA on with a
/// code mailed to its address instead.
async fn an_account_without_a_known_password_enrols_with_a_mailed_code(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let email = "passwordless@example.com";
    app.register(email).await;
    app.post_json("/api/v1/auth/magic-link", json!({ "email": email }))
        .await;
    let token = app.mailbox.link_token(email, "magic-link").await;
    let signed_in: Value = app
        .post_json("/api/v1/auth/magic-link/verify", json!({ "token": token }))
        .await
        .json()
        .await
        .unwrap();
    let access = signed_in["access_token"].as_str().unwrap().to_owned();
    let (status, setup) = app
        .rest(Method::POST, "/api/v1/totp/setup", &access, Some(json!({})))
        .await;
    assert_eq!(status, 200);
    let secret = setup["secret"].as_str().unwrap().to_owned();
    let enable = |body: Value| {
        let app = &app;
        let access = access.clone();
        async move {
            app.status_and_reason(Method::POST, "/api/v1/totp/enable", &access, Some(body))
                .await
        }
    };
    // The registration's password is no longer the account's.
    assert_eq!(
        enable(json!({ "code": code_now(&app, &secret), "password": PASSWORD })).await,
        (400, "REAUTHENTICATION_FAILED".to_owned())
    );

    let (status, _) = app
        .rest(
            Method::POST,
            "/api/v1/totp/enrolment-code",
            &access,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200);
    let subject = "Subject: Your code to turn on two-factor authentication";
    assert_eq!(app.mailbox.wait_for(email, subject, 1).await, 1);
    let message = app
        .mailbox
        .messages_to(email)
        .into_iter()
        .find(|message| message.contains(subject))
        .unwrap();
    let mailed = message
        .lines()
        .map(str::trim)
        .find(|line| line.len() == 6 && line.chars().all(|c| c.is_ascii_digit()))
        .unwrap()
        .to_owned();
    let wrong = if mailed == "000000" {
        "000001"
    } else {
        "000000"
    };
    assert_eq!(
        enable(json!({ "code": code_now(&app, &secret), "email_code": wrong })).await,
        (400, "REAUTHENTICATION_FAILED".to_owned())
    );
    assert_eq!(
        enable(json!({ "code": code_now(&app, &secret), "email_code": mailed })).await,
        (200, String::new())
    );
    let (_, status) = app
        .rest(Method::GET, "/api/v1/totp/status", &access, None)
        .await;
    assert_eq!(status["enabled"], true);
}
