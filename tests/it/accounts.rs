//! Registration, sign-in and the current user, over REST, gRPC and gRPC-web.

use crate::backend_tests;
use crate::harness::{Backend, PASSWORD, TestApp, grpc_reason, with_token};
use keel::api::pb::keel::auth::v1::{GetMeRequest, LoginRequest, RegisterRequest};
use keel::domain::user::{EmailAddress, User, UserStore};
use keel::store::SqlStore;
use serde_json::{Value, json};
use tonic::Code;

backend_tests!(
    register_login_and_me_over_rest,
    login_takes_the_oauth2_password_form,
    register_login_and_me_over_grpc,
    login_and_me_over_grpc_web,
    wrong_password_and_unknown_email_answer_alike,
    duplicate_email_conflicts,
    weak_password_lists_every_violation,
    legacy_bcrypt_hash_is_upgraded_on_login,
);

async fn register_login_and_me_over_rest(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let response = app
        .post_json(
            "/api/v1/auth/register",
            json!({ "email": "Ada@Example.com", "password": PASSWORD, "full_name": "Ada" }),
        )
        .await;
    assert_eq!(response.status(), 201);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["email"], "ada@example.com");
    assert_eq!(user["full_name"], "Ada");
    assert_eq!(user["email_verified"], false);
    assert_eq!(user["is_superuser"], false);
    assert!(user.get("password").is_none());
    assert!(user["created_at"].as_str().unwrap().ends_with('Z'));

    let response = app
        .post_json(
            "/api/v1/auth/login",
            json!({ "email": "ada@example.com", "password": PASSWORD }),
        )
        .await;
    assert_eq!(response.status(), 200);
    let tokens: Value = response.json().await.unwrap();
    assert_eq!(tokens["token_type"], "bearer");
    assert_eq!(tokens["expires_in"], 900);
    let access = tokens["access_token"].as_str().unwrap();

    for path in ["/api/v1/auth/me", "/api/v1/users/me"] {
        let response = app.get_with_token(path, access).await;
        assert_eq!(response.status(), 200, "{path}");
        let me: Value = response.json().await.unwrap();
        assert_eq!(me["id"], user["id"], "{path}");
        assert_eq!(me["email"], "ada@example.com");
    }
}

async fn login_takes_the_oauth2_password_form(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("form@example.com").await;
    // The OAuth2 token endpoint, and the original's sign-in route.
    for path in ["/api/v1/auth/token", "/api/v1/auth/login"] {
        let response = app
            .http
            .post(app.url(path))
            .form(&[
                ("grant_type", "password"),
                ("username", "form@example.com"),
                ("password", PASSWORD),
                ("scope", ""),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let tokens: Value = response.json().await.unwrap();
        let me = app
            .get_with_token("/api/v1/auth/me", tokens["access_token"].as_str().unwrap())
            .await;
        assert_eq!(me.status(), 200);
    }
}

async fn register_login_and_me_over_grpc(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let mut client = app.grpc().await;
    let user = client
        .register(RegisterRequest {
            email: "grace@example.com".into(),
            password: PASSWORD.into(),
            full_name: "Grace".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(user.email, "grace@example.com");

    let tokens = client
        .login(LoginRequest {
            email: "grace@example.com".into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(tokens.token_type, "bearer");
    let me = client
        .get_me(with_token(GetMeRequest {}, &tokens.access_token))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(me.id, user.id);

    let missing = client.get_me(GetMeRequest {}).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    assert_eq!(grpc_reason(&missing), "MISSING_CREDENTIALS");
}

async fn login_and_me_over_grpc_web(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let registered = app.register("web@example.com").await;
    let mut client = app.grpc_web();
    let tokens = client
        .login(LoginRequest {
            email: "web@example.com".into(),
            password: PASSWORD.into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let me = client
        .get_me(with_token(GetMeRequest {}, &tokens.access_token))
        .await
        .unwrap()
        .into_inner()
        .user
        .unwrap();
    assert_eq!(me.id, registered["id"].as_str().unwrap());

    let denied = client
        .get_me(with_token(GetMeRequest {}, "not-a-token"))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::Unauthenticated);
    assert_eq!(grpc_reason(&denied), "INVALID_TOKEN");
}

async fn wrong_password_and_unknown_email_answer_alike(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("known@example.com").await;
    let mut bodies = Vec::new();
    for (email, password) in [
        ("known@example.com", "Wr0ng!Password"),
        ("unknown@example.com", PASSWORD),
    ] {
        let response = app
            .post_json(
                "/api/v1/auth/login",
                json!({ "email": email, "password": password }),
            )
            .await;
        assert_eq!(response.status(), 401, "{email}");
        bodies.push(response.json::<Value>().await.unwrap());
    }
    assert_eq!(bodies[0]["reason"], "INVALID_CREDENTIALS");
    assert!(bodies.iter().all(|body| *body == bodies[0]), "{bodies:?}");

    let mut client = app.grpc().await;
    let status = client
        .login(LoginRequest {
            email: "known@example.com".into(),
            password: "Wr0ng!Password".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(grpc_reason(&status), "INVALID_CREDENTIALS");

    // Nothing to check is no failed sign-in: a 400 naming what is missing or malformed.
    for (body, missing) in [
        (json!({}), json!(["email", "password"])),
        (json!({ "email": "known@example.com" }), json!(["password"])),
        (
            json!({ "email": "not an email", "password": PASSWORD }),
            json!(["email"]),
        ),
    ] {
        let response = app.post_json("/api/v1/auth/login", body).await;
        assert_eq!(response.status(), 400);
        let error: Value = response.json().await.unwrap();
        let fields: Vec<&Value> = error["details"][1]["field_violations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|violation| &violation["field"])
            .collect();
        assert_eq!(json!(fields), missing, "{error}");
    }
}

async fn duplicate_email_conflicts(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("twice@example.com").await;
    let response = app
        .post_json(
            "/api/v1/auth/register",
            json!({ "email": "TWICE@example.com", "password": PASSWORD }),
        )
        .await;
    assert_eq!(response.status(), 409);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "EMAIL_TAKEN");
    assert_eq!(body["code"], 6);

    let status = app
        .grpc()
        .await
        .register(RegisterRequest {
            email: "twice@example.com".into(),
            password: PASSWORD.into(),
            full_name: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(grpc_reason(&status), "EMAIL_TAKEN");
}

/// The seed's policy (composition rules) stays available by configuration; the default is
/// ASVS's length-only rule (see hardening::breached_and_short_passwords_are_refused).
async fn weak_password_lists_every_violation(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.password_min_length = Some("8".into());
        settings.password_require_lowercase = Some("true".into());
        settings.password_require_uppercase = Some("true".into());
        settings.password_require_digit = Some("true".into());
    })
    .await;
    let response = app
        .post_json(
            "/api/v1/auth/register",
            json!({ "email": "weak@example.com", "password": "short" }),
        )
        .await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], 3);
    let violations = body["details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|detail| detail["@type"] == "type.googleapis.com/google.rpc.BadRequest")
        .expect("a BadRequest detail")["field_violations"]
        .as_array()
        .unwrap()
        .clone();
    let reasons: Vec<&str> = violations
        .iter()
        .map(|violation| {
            assert_eq!(violation["field"], "password");
            violation["reason"].as_str().unwrap()
        })
        .collect();
    assert_eq!(
        reasons,
        [
            "PASSWORD_TOO_SHORT",
            "PASSWORD_NEEDS_UPPERCASE",
            "PASSWORD_NEEDS_DIGIT"
        ]
    );

    // Nothing was written: the same email registers fine with a strong password.
    app.register("weak@example.com").await;
}

async fn legacy_bcrypt_hash_is_upgraded_on_login(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let store = SqlStore::connect(&app.config.database_url).await.unwrap();
    let now = keel::domain::clock::truncate_to_micros(chrono::Utc::now());
    let legacy = User {
        id: uuid::Uuid::now_v7(),
        email: "legacy@example.com".into(),
        full_name: "Legacy".into(),
        email_verified: true,
        is_superuser: false,
        is_active: true,
        created_at: now,
        updated_at: now,
    };
    store
        .insert_user(&legacy, &bcrypt::hash(PASSWORD, 4).unwrap(), &[])
        .await
        .unwrap();

    let tokens = app.login("legacy@example.com").await;
    assert_eq!(
        app.get_with_token("/api/v1/auth/me", &tokens.access)
            .await
            .status(),
        200
    );
    let email = EmailAddress::parse("legacy@example.com").unwrap();
    let stored = store
        .find_credentials_by_email(&email)
        .await
        .unwrap()
        .unwrap();
    assert!(
        stored.password_hash.starts_with("$argon2id$"),
        "{}",
        stored.password_hash
    );
    // And the upgraded hash still signs in.
    app.login("legacy@example.com").await;
}
