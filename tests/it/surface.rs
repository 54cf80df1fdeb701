//! What sits beside the API: health, JWKS, OpenAPI, Swagger UI, ReDoc, reflection, gRPC health.

use crate::harness::Backend;
use crate::harness::TestApp;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use keel::api::contract::Contract;
use keel::domain::clock::SystemClock;
use serde_json::{Value, json};
use std::sync::Arc;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

crate::backend_tests!(health_reports_the_backends);

async fn health_reports_the_backends(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    // Liveness, at both paths.
    for path in ["/health", "/api/v1/health"] {
        let response = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "ok");
        assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));
    }

    // Readiness names what serves each backing service.
    let response = app.http.get(app.url("/health/ready")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    let backends = match backend {
        Backend::Embedded => json!({"database": "sqlite", "cache": "memory", "storage": "local"}),
        Backend::Services => json!({"database": "postgres", "cache": "redis", "storage": "s3"}),
    };
    assert_eq!(body["backends"], backends);
    assert_eq!(
        body["checks"],
        json!({"database": "ok", "cache": "ok", "storage": "ok"})
    );

    let status = HealthClient::new(app.channel().await)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    // The original's routes: one service each, with its latency; `celery` is the workers.
    let component = |path: &'static str| {
        let http = app.http.clone();
        let url = app.url(&format!("/api/v1/health/{path}"));
        async move {
            let response = http.get(url).send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    for (path, name) in [
        ("db", "database"),
        ("redis", "cache"),
        ("storage", "storage"),
    ] {
        let (status, body) = component(path).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["name"], name);
        assert_eq!(body["status"], "healthy");
        assert_eq!(body["backend"], backends[name]);
        assert!(body["latency_ms"].as_f64().is_some(), "{body}");
    }
    // The workers take the dispatch lease soon after the start.
    let mut workers = component("workers").await;
    for _ in 0..50 {
        if workers.0 == 200 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        workers = component("workers").await;
    }
    let (status, body) = workers;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["backend"], "apalis");
    assert!(body["queued"].as_u64().is_some() && body["running"].as_u64().is_some());
    assert_eq!(component("celery").await.1["name"], "workers");
    let (status, body) = component("all").await;
    assert_eq!(status, 200, "{body}");
    let mut reported: Vec<&String> = body["checks"].as_object().unwrap().keys().collect();
    reported.sort();
    assert_eq!(reported, ["cache", "database", "storage", "workers"]);
    assert_eq!(component("nothing").await.0, 404);
}

/// An API-only process (`keel serve --no-workers`) with no worker anywhere: ready all the same
/// (the API works; events wait in the outbox), but the workers' own check and `all` say 503.
#[tokio::test]
async fn health_tells_when_no_worker_runs() {
    let data_dir = tempfile::tempdir().unwrap();
    let settings = crate::harness::test_settings(Backend::Embedded, data_dir.path());
    let config = keel::config::Config::from_settings(&settings).unwrap();
    let keel = keel::app::Keel::build(&config, Arc::new(SystemClock))
        .await
        .unwrap()
        .without_workers();
    let url = format!("http://{}", keel.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(keel.serve(async move {
        let _ = stopped.await;
    }));
    let http = reqwest::Client::new();
    let status = |path: &'static str| {
        let request = http.get(format!("{url}{path}"));
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status("/health/ready").await, 200);
    assert_eq!(status("/api/v1/health/workers").await, 503);
    assert_eq!(status("/api/v1/health/all").await, 503);
    assert_eq!(status("/api/v1/health/db").await, 200);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn start_fails_naming_an_unreachable_database() {
    let data_dir = tempfile::tempdir().unwrap();
    let unused_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut settings = crate::harness::test_settings(Backend::Embedded, data_dir.path());
    settings.database_url = Some(format!("postgres://postgres@127.0.0.1:{unused_port}/keel"));
    let config = keel::config::Config::from_settings(&settings).unwrap();
    let failure = keel::app::Keel::build(&config, Arc::new(SystemClock)).await;
    let message = format!(
        "{:#}",
        failure.err().expect("start fails without a database")
    );
    assert!(message.contains("KEEL_DATABASE_URL"), "{message}");
}

/// Dropping the database under a running server turns readiness to 503 (PostgreSQL only: an
/// embedded SQLite file cannot be taken away from an open connection).
#[tokio::test]
async fn health_is_503_when_the_database_goes_away() {
    if !crate::harness::services_available() {
        return;
    }
    let app = TestApp::spawn(Backend::Services).await;
    assert_eq!(
        app.http
            .get(app.url("/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let database = app
        .config
        .database_url
        .rsplit('/')
        .next()
        .unwrap()
        .to_owned();
    let admin_url = std::env::var("KEEL_TEST_DATABASE_URL").unwrap();
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url)
        .await
        .unwrap();
    sqlx::Executor::execute(
        &mut admin,
        sqlx::AssertSqlSafe(format!("DROP DATABASE {database} WITH (FORCE)")),
    )
    .await
    .unwrap();
    let response = app.http.get(app.url("/health/ready")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["checks"]["database"], "unavailable");
    let response = app
        .http
        .get(app.url("/api/v1/health/db"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "unhealthy");
}

#[tokio::test]
async fn jwks_publishes_the_signing_key() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let tokens = app.signed_in("jwks@example.com").await;
    let header: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(tokens.access.split('.').next().unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(header["alg"], "EdDSA");
    let jwks: Value = app
        .http
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(key["kid"], header["kid"]);
    assert_eq!(key["kty"], "OKP");
    assert_eq!(key["crv"], "Ed25519");

    // The published key really verifies the token.
    let public = URL_SAFE_NO_PAD.decode(key["x"].as_str().unwrap()).unwrap();
    let mut parts = tokens.access.rsplitn(2, '.');
    let signature = URL_SAFE_NO_PAD.decode(parts.next().unwrap()).unwrap();
    let signed = parts.next().unwrap();
    aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::ED25519, &public)
        .verify(signed.as_bytes(), &signature)
        .expect("the JWKS key verifies the access token");

    // Claims carry what the contract promises.
    let claims: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(tokens.access.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    for claim in ["sub", "sid", "iat", "exp", "iss", "aud", "jti"] {
        assert!(claims.get(claim).is_some(), "{claim} missing from {claims}");
    }
    assert_eq!(claims["iss"], "http://keel.test");
    assert_eq!(claims["aud"], "keel");
}

#[tokio::test]
async fn openapi_covers_every_http_rule() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let document: Value = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let contract = Contract::load().unwrap();
    let mut bindings = 0;
    for rpc in &contract.rpcs {
        for binding in &rpc.bindings {
            bindings += 1;
            let operation = &document["paths"][&binding.template.openapi_path()]
                [binding.method.as_str().to_ascii_lowercase()];
            assert_eq!(
                operation["x-grpc-method"], rpc.grpc_path,
                "{}",
                binding.template.text
            );
            let status = rpc.success_status.as_u16().to_string();
            assert!(
                operation["responses"][&status]["content"]["application/json"]["schema"]
                    .is_object()
            );
            assert!(
                !operation["description"].as_str().unwrap().is_empty(),
                "{} has no doc comment",
                rpc.grpc_path
            );
        }
    }
    assert!(bindings >= 6);
    // The realtime doors are streams, described beside the transcoded RPCs.
    let websocket = &document["paths"]["/api/v1/ws"]["get"];
    assert!(websocket["responses"]["101"].is_object(), "{websocket}");
    let stream = &document["paths"]["/api/v1/events/stream"]["get"];
    assert!(stream["responses"]["200"]["content"]["text/event-stream"].is_object());
    assert_eq!(stream["parameters"][0]["name"], "channels");
    let register = &document["paths"]["/api/v1/auth/register"]["post"];
    assert!(register["responses"]["201"].is_object());
    assert_eq!(register["security"], serde_json::json!([]));
    let me = &document["paths"]["/api/v1/auth/me"]["get"];
    assert_eq!(me["security"][0]["bearerAuth"], serde_json::json!([]));
    assert_eq!(
        document["components"]["securitySchemes"]["bearerAuth"]["scheme"],
        "bearer"
    );
    let schemas = &document["components"]["schemas"];
    let login_request = &schemas["keel.auth.v1.LoginRequest"];
    assert_eq!(login_request["required"], json!(["email", "password"]));
    // The form body is declared where it is meant (the OAuth2 token endpoint), nowhere else,
    // and one media type per operation.
    let form = "application/x-www-form-urlencoded";
    let token = &document["paths"]["/api/v1/auth/token"]["post"];
    assert_eq!(
        token["requestBody"]["content"].as_object().unwrap().len(),
        1
    );
    assert!(token["requestBody"]["content"][form].is_object());
    assert_eq!(token["operationId"], "AuthService_Login2");
    assert!(
        token["description"]
            .as_str()
            .unwrap()
            .starts_with("Alias of `POST /api/v1/auth/login`")
    );
    let login = &document["paths"]["/api/v1/auth/login"]["post"];
    assert!(login["requestBody"]["content"][form].is_null());
    assert_eq!(
        document["components"]["securitySchemes"]["oauth2Password"]["flows"]["password"]["tokenUrl"],
        "/api/v1/auth/token"
    );
    assert_eq!(
        schemas["AuthService_LoginForm"]["required"],
        json!(["username", "password"])
    );
    assert!(register["requestBody"]["content"][form].is_null());
    assert!(register["requestBody"]["content"]["application/json"].is_object());

    // The field rules of the protos, and the configured password policy, are in the schemas.
    let registration = &schemas["keel.auth.v1.RegisterRequest"];
    assert_eq!(registration["additionalProperties"], false);
    assert_eq!(registration["required"], json!(["email", "password"]));
    let email = &registration["properties"]["email"];
    assert_eq!(
        (&email["format"], &email["maxLength"]),
        (&json!("email"), &json!(254))
    );
    let password = &registration["properties"]["password"];
    let policy = &app.config.password_policy;
    assert_eq!(
        (&password["minLength"], &password["maxLength"]),
        (&json!(policy.min_length), &json!(policy.max_length))
    );
    let page_size = &document["paths"]["/api/v1/organizations"]["get"]["parameters"][0];
    assert_eq!(
        (
            &page_size["name"],
            &page_size["schema"]["minimum"],
            &page_size["schema"]["maximum"]
        ),
        (&json!("page_size"), &json!(0), &json!(100))
    );
    let limits = &schemas["keel.quota.v1.UpdateQuotaLimitsRequest"]["properties"]["max_users"];
    assert_eq!(
        (&limits["type"], &limits["pattern"]),
        (&json!("string"), &json!("^[0-9]{1,19}$"))
    );
    let role_permission = &schemas["RoleService_CreateRoleBody"]["properties"]["permissions"];
    assert!(
        role_permission["items"]["enum"]
            .as_array()
            .unwrap()
            .contains(&json!("team:read"))
    );

    // Fields the path binds stay out of the body; the path parameter carries their rule.
    let update_team = &document["paths"]["/api/v1/teams/{team_id}"]["put"];
    assert_eq!(update_team["parameters"][0]["schema"]["format"], "uuid");
    let body = &schemas["TeamService_UpdateTeamBody"];
    assert!(body["properties"]["team_id"].is_null());
    assert!(body["properties"]["name"].is_object());
    assert_eq!(
        update_team["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/TeamService_UpdateTeamBody"
    );

    // Every error status with the error schema; Retry-After where the server sends it.
    for status in ["400", "401", "403", "404", "409", "429", "503"] {
        assert_eq!(
            register["responses"][status]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/Error",
            "{status}"
        );
    }
    assert!(register["responses"]["429"]["headers"]["Retry-After"].is_object());
}

#[tokio::test]
async fn docs_pages_are_served_offline() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let swagger = app.http.get(app.url("/docs/")).send().await.unwrap();
    assert_eq!(swagger.status(), 200);
    assert!(swagger.text().await.unwrap().contains("swagger"));
    let initializer = app
        .http
        .get(app.url("/docs/swagger-initializer.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(initializer.status(), 200);
    assert!(initializer.text().await.unwrap().contains("/openapi.json"));
    let redoc = app.http.get(app.url("/redoc")).send().await.unwrap();
    assert_eq!(redoc.status(), 200);
    assert!(
        redoc
            .text()
            .await
            .unwrap()
            .contains("/redoc/redoc.standalone.js")
    );
    let script = app
        .http
        .get(app.url("/redoc/redoc.standalone.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), 200);
    assert!(script.bytes().await.unwrap().len() > 100_000);
}

#[tokio::test]
async fn reflection_lists_the_services() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let mut client = ServerReflectionClient::new(app.channel().await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = client
        .server_reflection_info(futures_util::stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let reply = replies.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply");
    };
    let names: Vec<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    assert!(
        names.contains(&"keel.auth.v1.AuthService".to_owned()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_owned()),
        "{names:?}"
    );

    // The field rules travel with the descriptors: the file of a request imports the rules'
    // definitions, which reflection serves too, so `buf curl` and `grpcurl` users get them.
    let mut files = Vec::new();
    for message_request in [
        MessageRequest::FileContainingSymbol("keel.auth.v1.RegisterRequest".into()),
        MessageRequest::FileByFilename("buf/validate/validate.proto".into()),
    ] {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(message_request),
        };
        let mut replies = client
            .server_reflection_info(futures_util::stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let reply = replies.message().await.unwrap().unwrap();
        let Some(MessageResponse::FileDescriptorResponse(found)) = reply.message_response else {
            panic!("unexpected reflection reply");
        };
        let file: prost_types::FileDescriptorProto =
            prost::Message::decode(found.file_descriptor_proto[0].as_slice()).unwrap();
        files.push(file);
    }
    assert!(
        files[0]
            .dependency
            .contains(&"buf/validate/validate.proto".to_owned())
    );
    assert_eq!(files[1].package(), "buf.validate");
}

#[tokio::test]
async fn metrics_count_every_door_in_one_place() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let tokens = app.signed_in("metrics@example.com").await;
    app.get_with_token("/api/v1/auth/me", &tokens.access).await;
    app.get_with_token("/api/v1/auth/me", "bad-token").await;
    app.grpc()
        .await
        .get_me(crate::harness::with_token(
            keel::api::pb::keel::auth::v1::GetMeRequest {},
            &tokens.access,
        ))
        .await
        .unwrap();
    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            r#"keel_rpc_requests_total{method="/keel.auth.v1.AuthService/GetMe",code="Ok"} 2"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"keel_rpc_requests_total{method="/keel.auth.v1.AuthService/GetMe",code="Unauthenticated"} 1"#),
        "{text}"
    );
    assert!(text.contains(
        r#"keel_rpc_requests_total{method="/keel.auth.v1.AuthService/Register",code="Ok"} 1"#
    ));
    // The backing services' and the hashing threads' figures.
    let figure = |name: &str| -> u64 {
        let line = text
            .lines()
            .find(|line| line.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name} in {text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert!(text.contains("# TYPE keel_cache_hits_total counter"));
    assert!(text.contains("# TYPE keel_database_connections gauge"));
    assert!(figure("keel_database_connections") >= 1);
    assert_eq!(figure("keel_database_active_sessions"), 1);
    assert!(figure("keel_cache_hits_total") + figure("keel_cache_misses_total") > 0);
    assert!(figure("keel_cache_entries") > 0);
    // A registration's hash and a sign-in's verification.
    assert!(figure("keel_password_hashing_done_total") >= 2);
    assert!(figure("keel_password_hashing_busy_microseconds_total") > 0);
    assert_eq!(figure("keel_password_hashing_waiting"), 0);
    assert_eq!(figure("keel_password_hashing_refused_total"), 0);

    // The Grafana dashboard asks only for series Keel exports.
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/grafana/keel-dashboard.json"
    ))
    .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let names = regex::Regex::new(r"keel_[a-z_]+").unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    for target in panels
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap())
    {
        let expression = target["expr"].as_str().unwrap();
        for name in names.find_iter(expression) {
            assert!(
                text.contains(&format!("# TYPE {} ", name.as_str()))
                    || text.contains(&format!("\n{}", name.as_str())),
                "the dashboard asks for {}, which /metrics does not export",
                name.as_str()
            );
        }
    }
}

#[tokio::test]
async fn cors_allows_only_configured_origins() {
    let app = TestApp::spawn_with(Backend::Embedded, |settings| {
        settings.cors_allowed_origins = Some("https://app.example.com".into());
    })
    .await;
    let preflight = |origin: &'static str| {
        app.http
            .request(
                reqwest::Method::OPTIONS,
                app.url("/keel.auth.v1.AuthService/Login"),
            )
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type,x-grpc-web")
            .send()
    };
    let allowed = preflight("https://app.example.com").await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let refused = preflight("https://evil.example.com").await.unwrap();
    assert!(
        refused
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
}

#[tokio::test]
async fn plain_routes_answer_json_errors_and_security_headers() {
    let app = TestApp::spawn(Backend::Embedded).await;
    let response = app.http.post(app.url("/health")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "GET,HEAD");
    assert_eq!(response.headers()["x-content-type-options"], "nosniff");
    assert_eq!(response.headers()["x-frame-options"], "DENY");
    assert!(response.headers().get("x-request-id").is_some());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "METHOD_NOT_ALLOWED");
}
