//! The REST door's handling of bad input: every failure is a 4xx in the one JSON error shape,
//! and nothing is written.

use crate::backend_tests;
use crate::harness::{Backend, PASSWORD, TestApp};
use serde_json::{Value, json};

backend_tests!(
    bad_bodies_get_clear_errors,
    both_field_name_styles_are_accepted,
    routing_errors_use_the_error_shape,
);

async fn send_raw(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (u16, Value) {
    let mut request = app.http.request(method, app.url(path)).body(body);
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("a JSON error body");
    (status, body)
}

fn assert_error_shape(body: &Value) {
    for key in ["code", "message", "reason", "details"] {
        assert!(body.get(key).is_some(), "{key} missing in {body}");
    }
    // The reason also travels as an ErrorInfo detail, as on gRPC.
    assert!(
        body["details"].as_array().unwrap().iter().any(|detail| {
            detail["@type"] == "type.googleapis.com/google.rpc.ErrorInfo"
                && detail["reason"] == body["reason"]
        }),
        "no ErrorInfo in {body}"
    );
}

async fn bad_bodies_get_clear_errors(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.max_body_bytes = Some("4096".into());
    })
    .await;
    let register = "/api/v1/auth/register";
    let json_type = Some("application/json");
    // (case, content type, body, HTTP status, reason)
    #[allow(clippy::type_complexity)]
    let cases: Vec<(&str, Option<&str>, Vec<u8>, u16, &str)> = vec![
        (
            "truncated JSON",
            json_type,
            br#"{"email":"#.to_vec(),
            400,
            "INVALID_BODY",
        ),
        (
            "wrong type",
            json_type,
            br#"{"email":5,"password":"x"}"#.to_vec(),
            400,
            "INVALID_BODY",
        ),
        (
            "unknown field",
            json_type,
            br#"{"email":"a@example.com","pasword":"x"}"#.to_vec(),
            400,
            "INVALID_BODY",
        ),
        (
            "not an object",
            json_type,
            b"[1,2]".to_vec(),
            400,
            "INVALID_BODY",
        ),
        (
            "trailing garbage",
            json_type,
            br#"{"email":"a@example.com"} x"#.to_vec(),
            400,
            "INVALID_BODY",
        ),
        (
            "invalid UTF-8",
            json_type,
            b"{\"email\":\"\xff\xfe\"}".to_vec(),
            400,
            "INVALID_BODY",
        ),
        (
            "oversize",
            json_type,
            format!(r#"{{"full_name":"{}"}}"#, "x".repeat(5000)).into_bytes(),
            413,
            "BODY_TOO_LARGE",
        ),
        (
            "unsupported type",
            Some("text/plain"),
            b"email=a".to_vec(),
            415,
            "UNSUPPORTED_MEDIA_TYPE",
        ),
    ];
    for (name, content_type, body, status, reason) in cases {
        let (actual, error) =
            send_raw(&app, reqwest::Method::POST, register, content_type, body).await;
        assert_eq!(actual, status, "{name}: {error}");
        assert_eq!(error["reason"], reason, "{name}: {error}");
        assert_eq!(error["code"], 3, "{name}: {error}");
        assert_error_shape(&error);
        assert!(!error["message"].as_str().unwrap().is_empty(), "{name}");
    }

    // A GET route takes no body and only known query parameters.
    let tokens = app.signed_in("query@example.com").await;
    let response = app
        .http
        .get(app.url("/api/v1/auth/me?colour=blue"))
        .bearer_auth(&tokens.access)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["reason"], "INVALID_QUERY_PARAMETER");

    // None of it wrote anything: the address is still free.
    app.register("a@example.com").await;
}

async fn both_field_name_styles_are_accepted(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // lowerCamelCase input, an omitted optional field (full_name) and an explicit null.
    let response = app
        .post_json(
            "/api/v1/auth/register",
            json!({ "email": "camel@example.com", "password": PASSWORD, "fullName": null }),
        )
        .await;
    assert_eq!(response.status(), 201);
    let user: Value = response.json().await.unwrap();
    assert_eq!(user["full_name"], "");
    let tokens = app.login("camel@example.com").await;
    let response = app
        .post_json(
            "/api/v1/auth/refresh",
            json!({ "refreshToken": tokens.refresh }),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert!(
        body.get("refresh_token").is_some(),
        "snake_case output: {body}"
    );
}

async fn routing_errors_use_the_error_shape(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (status, error) = send_raw(
        &app,
        reqwest::Method::GET,
        "/api/v1/nothing/here",
        None,
        vec![],
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(error["reason"], "ROUTE_NOT_FOUND");
    assert_error_shape(&error);

    let (status, error) = send_raw(&app, reqwest::Method::GET, "/not-api", None, vec![]).await;
    assert_eq!(status, 404);
    assert_error_shape(&error);

    let response = app
        .http
        .delete(app.url("/api/v1/auth/login"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(
        response.headers()["allow"],
        "POST",
        "RFC 9110 wants Allow on a 405"
    );
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["reason"], "METHOD_NOT_ALLOWED");
    assert_error_shape(&error);
    // The most specific path decides: `stats` is a literal route, not a session id.
    let response = app
        .http
        .delete(app.url("/api/v1/sessions/stats"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (response.status().as_u16(), &response.headers()["allow"]),
        (405, &"GET".parse().unwrap())
    );

    // A plain OPTIONS (not a CORS preflight) names the path's methods.
    for (path, allow) in [
        (
            "/api/v1/teams/0190c9e2-9a7b-7c3d-8e4f-0123456789ab",
            "DELETE, GET, PUT, OPTIONS",
        ),
        ("/api/v1/auth/login", "POST, OPTIONS"),
    ] {
        let response = app
            .http
            .request(reqwest::Method::OPTIONS, app.url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 204, "{path}");
        assert_eq!(response.headers()["allow"], allow, "{path}");
    }
    let response = app
        .http
        .request(reqwest::Method::OPTIONS, app.url("/api/v1/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);

    let (status, error) =
        send_raw(&app, reqwest::Method::GET, "/api/v1/auth/me", None, vec![]).await;
    assert_eq!(status, 401);
    assert_eq!(error["code"], 16);
    assert_eq!(error["reason"], "MISSING_CREDENTIALS");
}
