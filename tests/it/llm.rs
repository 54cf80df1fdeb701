//! The LLM gateway against a small OpenAI-compatible server on loopback (whole and streamed
//! completions, Azure's form, refusals): the instance's provider and organizations' own, keys
//! that callers never see, tokens metered against the monthly quota, streams over SSE and
//! gRPC, and the SSRF guard on organizations' endpoints.

use crate::harness::{Backend, TestApp, Tokens, grpc_reason, with_token};
use crate::organizations::with_viewer;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use keel::api::pb::keel::llm::v1::llm_service_client::LlmServiceClient;
use keel::api::pb::keel::llm::v1::{
    ChatMessage, CreateChatCompletionRequest, StreamChatCompletionRequest,
};
use reqwest::Method;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

crate::backend_tests!(
    the_instance_provider_answers_and_tokens_count_against_the_quota,
    completions_stream_over_sse_and_grpc,
    organizations_bring_their_own_providers,
    organization_endpoints_must_be_public
);

/// A request the fake provider got.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    authorization: String,
    api_key: String,
    body: Value,
}

/// An OpenAI-compatible chat completions server: answers "Hello" (7 prompt and 2 completion
/// tokens), whole or as chunks; refuses keys other than `sk-good` / `az-good` with OpenAI's
/// error shape.
#[derive(Default)]
struct Fake {
    seen: Mutex<Vec<Seen>>,
}

const CHUNKS: [&str; 5] = [
    r#"{"id":"chatcmpl-9","object":"chat.completion.chunk","model":"fake-1","choices":[{"index":0,"delta":{"role":"assistant"},"finish_reason":null}]}"#,
    r#"{"id":"chatcmpl-9","object":"chat.completion.chunk","model":"fake-1","choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}"#,
    r#"{"id":"chatcmpl-9","object":"chat.completion.chunk","model":"fake-1","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":null}]}"#,
    r#"{"id":"chatcmpl-9","object":"chat.completion.chunk","model":"fake-1","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#,
    r#"{"id":"chatcmpl-9","object":"chat.completion.chunk","model":"fake-1","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}"#,
];

async fn completions(
    State(fake): State<Arc<Fake>>,
    uri: http::Uri,
    headers: http::HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let seen = Seen {
        path: uri.to_string(),
        authorization: header("authorization"),
        api_key: header("api-key"),
        body: body.0.clone(),
    };
    fake.seen.lock().unwrap().push(seen.clone());
    if seen.authorization != "Bearer sk-good" && seen.api_key != "az-good" {
        return (
            http::StatusCode::UNAUTHORIZED,
            axum::Json(json!({ "error": { "message": "Incorrect API key provided", "type": "invalid_request_error" } })),
        )
            .into_response();
    }
    if body["stream"] == true {
        let events: String = CHUNKS
            .iter()
            .map(|chunk| format!("data: {chunk}\n\n"))
            .chain(["data: [DONE]\n\n".to_owned()])
            .collect();
        return ([(http::header::CONTENT_TYPE, "text/event-stream")], events).into_response();
    }
    axum::Json(json!({
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1_764_000_000,
        "model": body["model"],
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": "Hello" }, "finish_reason": "stop" }],
        "usage": { "prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9 },
    }))
    .into_response()
}

async fn azure(
    State(fake): State<Arc<Fake>>,
    Path(_deployment): Path<String>,
    uri: http::Uri,
    headers: http::HeaderMap,
    body: axum::Json<Value>,
) -> Response {
    completions(State(fake), uri, headers, body).await
}

/// The fake on an ephemeral loopback port; answers its base URL (`http://127.0.0.1:port`).
async fn start_fake() -> (Arc<Fake>, String) {
    let fake = Arc::new(Fake::default());
    let router = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(completions))
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            axum::routing::post(azure),
        )
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (fake, format!("http://{address}"))
}

impl Fake {
    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn hello(organization_id: &str) -> Value {
    json!({
        "organization_id": organization_id,
        "messages": [{ "role": "system", "content": "Be brief." }, { "role": "user", "content": "Hi" }],
    })
}

async fn complete(app: &TestApp, token: &str, body: Value) -> (http::StatusCode, Value) {
    app.rest(
        Method::POST,
        "/api/v1/llm/chat/completions",
        token,
        Some(body),
    )
    .await
}

async fn tokens_used(app: &TestApp, token: &str, organization_id: &str) -> String {
    let (status, quota) = app
        .rest(
            Method::GET,
            &format!("/api/v1/quota/status?organization_id={organization_id}"),
            token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{quota}");
    let usage = quota["usage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|usage| usage["metric"] == "llm_tokens")
        .unwrap_or_else(|| panic!("no llm_tokens in {quota}"))
        .clone();
    usage["used"].as_str().unwrap().to_owned()
}

async fn set_provider(
    app: &TestApp,
    owner: &Tokens,
    organization_id: &str,
    name: &str,
    body: Value,
) -> (http::StatusCode, Value) {
    app.rest(
        Method::PUT,
        &format!("/api/v1/organizations/{organization_id}/llm/providers/{name}"),
        &owner.access,
        Some(body),
    )
    .await
}

async fn the_instance_provider_answers_and_tokens_count_against_the_quota(backend: Backend) {
    let (fake, base) = start_fake().await;
    let app = TestApp::spawn_with(backend, |settings| {
        settings.llm_openai_base_url = Some(format!("{base}/v1"));
        settings.llm_openai_api_key = Some("sk-good".into());
        settings.llm_openai_model = Some("gpt-test".into());
    })
    .await;
    app.create_superuser("root@example.com").await;
    let root = app.login("root@example.com").await;
    let (organization_id, owner, viewer) = with_viewer(&app, "acme").await;

    let (status, answered) = complete(&app, &owner.access, hello(&organization_id)).await;
    assert_eq!(status, 200, "{answered}");
    assert_eq!(answered["message"]["content"], "Hello");
    assert_eq!(answered["message"]["role"], "assistant");
    assert_eq!(answered["finish_reason"], "stop");
    assert_eq!(answered["provider"], "default");
    assert_eq!(answered["model"], "gpt-test");
    assert_eq!(answered["usage"]["total_tokens"], 9);
    let sent = &fake.seen()[0];
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.authorization, "Bearer sk-good");
    assert_eq!(sent.body["model"], "gpt-test");
    assert_eq!(
        sent.body["messages"][1],
        json!({ "role": "user", "content": "Hi" })
    );
    assert_eq!(sent.body["stream"], false);

    // gRPC, the same; viewers lack llm:use.
    let mut client = LlmServiceClient::new(app.channel().await);
    let request = CreateChatCompletionRequest {
        organization_id: organization_id.clone(),
        model: "gpt-other".to_owned(),
        messages: vec![ChatMessage {
            role: "user".to_owned(),
            content: "Hi".to_owned(),
        }],
        max_tokens: Some(5),
        ..Default::default()
    };
    let answered = client
        .create_chat_completion(with_token(request.clone(), &owner.access))
        .await
        .unwrap()
        .into_inner()
        .completion
        .unwrap();
    assert_eq!(answered.model, "gpt-other");
    assert_eq!(fake.seen()[1].body["max_tokens"], 5);
    let refused = client
        .create_chat_completion(with_token(request.clone(), &viewer.access))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    assert_eq!(fake.seen().len(), 2, "a refused call sends nothing");
    assert_eq!(
        tokens_used(&app, &owner.access, &organization_id).await,
        "18"
    );

    // Bad input is refused before anything is sent.
    for (body, field) in [
        (
            json!({ "organization_id": organization_id, "messages": [] }),
            "messages",
        ),
        (
            json!({ "organization_id": organization_id, "messages": [{ "role": "wizard", "content": "x" }] }),
            "messages[0].role",
        ),
        (
            json!({ "organization_id": organization_id, "messages": [{ "role": "user", "content": "x" }], "temperature": 3 }),
            "temperature",
        ),
    ] {
        let (status, refused) = complete(&app, &owner.access, body).await;
        assert_eq!(status, 400, "{refused}");
        assert_eq!(
            crate::harness::rest_violations(&refused)[0].0,
            field,
            "{refused}"
        );
    }
    assert_eq!(fake.seen().len(), 2);

    // The quota: a call is admitted while tokens remain; past the limit, 429.
    let (status, _) = app
        .rest(
            Method::PUT,
            "/api/v1/quota/limits",
            &root.access,
            Some(json!({ "organization_id": organization_id, "max_llm_tokens_per_month": 20 })),
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = complete(&app, &owner.access, hello(&organization_id)).await;
    assert_eq!(status, 200);
    assert_eq!(
        tokens_used(&app, &owner.access, &organization_id).await,
        "27"
    );
    let (status, refused) = complete(&app, &owner.access, hello(&organization_id)).await;
    assert_eq!(status, 429, "{refused}");
    assert_eq!(refused["reason"], "QUOTA_EXCEEDED");
    assert_eq!(fake.seen().len(), 3);
}

/// The data of each SSE event of a response body.
fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|event| {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

async fn completions_stream_over_sse_and_grpc(backend: Backend) {
    let (fake, base) = start_fake().await;
    let app = TestApp::spawn_with(backend, |settings| {
        settings.llm_openai_base_url = Some(format!("{base}/v1"));
        settings.llm_openai_api_key = Some("sk-good".into());
    })
    .await;
    let (organization_id, owner, _) = with_viewer(&app, "acme").await;

    // Without a default model, a request names one.
    let (status, refused) = complete(&app, &owner.access, hello(&organization_id)).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(
        crate::harness::rest_violations(&refused)[0].1,
        "MODEL_REQUIRED"
    );

    let mut body = hello(&organization_id);
    body["model"] = json!("fake-1");
    body["stream"] = json!(true);
    let response = app
        .http
        .post(app.url("/api/v1/llm/chat/completions"))
        .bearer_auth(&owner.access)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = sse_data(&response.text().await.unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]", "{events:?}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|data| serde_json::from_str(data).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .map(|chunk| chunk["delta"].as_str().unwrap())
        .collect();
    assert_eq!(text, "Hello");
    assert!(chunks.iter().all(|chunk| chunk["provider"] == "default"));
    assert!(chunks.iter().any(|chunk| chunk["finish_reason"] == "stop"));
    assert_eq!(chunks.last().unwrap()["usage"]["total_tokens"], 9);
    let sent = &fake.seen()[0];
    assert_eq!(sent.body["stream"], true);
    assert_eq!(sent.body["stream_options"]["include_usage"], true);

    // gRPC: the same chunks.
    let mut client = LlmServiceClient::new(app.channel().await);
    let mut stream = client
        .stream_chat_completion(with_token(
            StreamChatCompletionRequest {
                organization_id: organization_id.clone(),
                model: "fake-1".to_owned(),
                messages: vec![ChatMessage {
                    role: "user".to_owned(),
                    content: "Hi".to_owned(),
                }],
                ..Default::default()
            },
            &owner.access,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut text = String::new();
    let mut usage = None;
    while let Some(chunk) = stream.message().await.unwrap() {
        text.push_str(&chunk.delta);
        usage = chunk.usage.or(usage);
    }
    assert_eq!(text, "Hello");
    assert_eq!(usage.unwrap().total_tokens, 9);
    // Each stream counted the tokens its provider reported.
    assert_eq!(
        tokens_used(&app, &owner.access, &organization_id).await,
        "18"
    );

    // The unary RPC points streams to the streaming one.
    let refused = client
        .create_chat_completion(with_token(
            CreateChatCompletionRequest {
                organization_id: organization_id.clone(),
                model: "fake-1".to_owned(),
                messages: vec![ChatMessage {
                    role: "user".to_owned(),
                    content: "Hi".to_owned(),
                }],
                stream: true,
                ..Default::default()
            },
            &owner.access,
        ))
        .await
        .unwrap_err();
    assert_eq!(grpc_reason(&refused), "USE_STREAMING");
}

async fn organizations_bring_their_own_providers(backend: Backend) {
    let (fake, base) = start_fake().await;
    let app = TestApp::spawn_with(backend, |settings| {
        settings.llm_allow_private_endpoints = Some("true".into());
    })
    .await;
    let (organization_id, owner, viewer) = with_viewer(&app, "acme").await;

    let (status, refused) = complete(&app, &owner.access, hello(&organization_id)).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["reason"], "NO_LLM_PROVIDER");

    let (status, set) = set_provider(
        &app,
        &owner,
        &organization_id,
        "acme-openai",
        json!({
            "kind": "openai",
            "base_url": format!("{base}/v1/"),
            "api_key": "sk-good",
            "models": ["gpt-a", "gpt-b"],
            "default_model": "gpt-a",
        }),
    )
    .await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(set["base_url"], format!("{base}/v1"));
    assert!(set.get("api_key").is_none(), "{set}");
    // Viewers cannot change providers.
    let (status, _) = set_provider(
        &app,
        &viewer,
        &organization_id,
        "mine",
        json!({ "kind": "openai", "base_url": "https://api.example.com/v1", "api_key": "x" }),
    )
    .await;
    assert_eq!(status, 403);

    // The only provider serves requests that name none, with its default model; its list of
    // models is enforced.
    let (status, answered) = complete(&app, &owner.access, hello(&organization_id)).await;
    assert_eq!(status, 200, "{answered}");
    assert_eq!(answered["provider"], "acme-openai");
    assert_eq!(fake.seen()[0].body["model"], "gpt-a");
    assert_eq!(fake.seen()[0].authorization, "Bearer sk-good");
    let mut other_model = hello(&organization_id);
    other_model["model"] = json!("gpt-c");
    let (status, refused) = complete(&app, &owner.access, other_model).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(
        crate::harness::rest_violations(&refused)[0].1,
        "MODEL_NOT_ALLOWED"
    );
    let mut unknown = hello(&organization_id);
    unknown["provider"] = json!("nope");
    let (status, refused) = complete(&app, &owner.access, unknown).await;
    assert_eq!(status, 404, "{refused}");
    assert_eq!(refused["reason"], "LLM_PROVIDER_NOT_FOUND");

    // Azure OpenAI: the deployment in the path, api-version, the api-key header.
    let (status, set) = set_provider(
        &app,
        &owner,
        &organization_id,
        "azure",
        json!({ "kind": "azure_openai", "base_url": base, "api_key": "az-good", "api_version": "2024-10-21" }),
    )
    .await;
    assert_eq!(status, 200, "{set}");
    let mut on_azure = hello(&organization_id);
    on_azure["provider"] = json!("azure");
    on_azure["model"] = json!("prod-gpt");
    let (status, answered) = complete(&app, &owner.access, on_azure.clone()).await;
    assert_eq!(status, 200, "{answered}");
    let sent = fake.seen().last().unwrap().clone();
    assert_eq!(
        sent.path,
        "/openai/deployments/prod-gpt/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(
        (sent.api_key.as_str(), sent.authorization.as_str()),
        ("az-good", "")
    );
    // With two providers and no default, a request names one.
    let (status, refused) = complete(&app, &owner.access, hello(&organization_id)).await;
    assert_eq!(status, 400, "{refused}");
    assert_eq!(refused["reason"], "PROVIDER_REQUIRED");

    // Replaced without a key: the stored one is kept. With a wrong key: the provider's
    // refusal is a precondition, not the caller's 401.
    let (status, _) = set_provider(
        &app,
        &owner,
        &organization_id,
        "azure",
        json!({ "kind": "azure_openai", "base_url": base, "api_version": "2024-10-21", "default_model": "prod-gpt", "is_default": true }),
    )
    .await;
    assert_eq!(status, 200);
    let (status, answered) = complete(&app, &owner.access, hello(&organization_id)).await;
    assert_eq!(status, 200, "{answered}");
    assert_eq!(answered["provider"], "azure");
    let (status, _) = set_provider(
        &app,
        &owner,
        &organization_id,
        "azure",
        json!({ "kind": "azure_openai", "base_url": base, "api_key": "az-wrong", "api_version": "2024-10-21" }),
    )
    .await;
    assert_eq!(status, 200);
    let (status, refused) = complete(&app, &owner.access, on_azure).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["reason"], "LLM_PROVIDER_REJECTED");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("Incorrect API key"),
        "{refused}"
    );

    // Keys are stored sealed, never in clear, and no event carries them.
    let stored: Vec<(Vec<u8>,)> =
        crate::jobs::query(&app.config, "SELECT api_key FROM llm_providers").await;
    assert_eq!(stored.len(), 2);
    for (sealed,) in &stored {
        let text = String::from_utf8_lossy(sealed);
        assert!(!text.contains("sk-good") && !text.contains("az-"), "{text}");
    }
    let (status, listed) = app
        .rest(
            Method::GET,
            &format!("/api/v1/organizations/{organization_id}/llm/providers"),
            &viewer.access,
            None,
        )
        .await;
    assert_eq!(status, 403, "viewers lack llm:use: {listed}");
    let (status, listed) = app
        .rest(
            Method::GET,
            &format!("/api/v1/organizations/{organization_id}/llm/providers"),
            &owner.access,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(!listed.to_string().contains("az-wrong"));
    let entries = crate::audit::wait_for_entries(
        &app,
        &owner.access,
        &format!("/api/v1/organizations/{organization_id}/audit-logs?page_size=100"),
        |entries| {
            entries
                .iter()
                .filter(|entry| entry["action"] == "llm.provider_set")
                .count()
                >= 4
        },
    )
    .await;
    let text = serde_json::to_string(&entries).unwrap();
    assert!(!text.contains("sk-good") && !text.contains("az-good"));

    let path = format!("/api/v1/organizations/{organization_id}/llm/providers/azure");
    let (status, _) = app.rest(Method::DELETE, &path, &owner.access, None).await;
    assert_eq!(status, 200);
    let (status, gone) = app.rest(Method::DELETE, &path, &owner.access, None).await;
    assert_eq!(status, 404, "{gone}");
}

async fn organization_endpoints_must_be_public(backend: Backend) {
    let (fake, base) = start_fake().await;
    let app = TestApp::spawn(backend).await;
    let (organization_id, owner, _) = with_viewer(&app, "acme").await;
    let (status, _) = set_provider(
        &app,
        &owner,
        &organization_id,
        "inside",
        json!({ "kind": "openai", "base_url": format!("{base}/v1"), "api_key": "sk-good", "default_model": "m" }),
    )
    .await;
    assert_eq!(status, 200);
    let (status, refused) = complete(&app, &owner.access, hello(&organization_id)).await;
    assert_eq!(status, 409, "{refused}");
    assert_eq!(refused["reason"], "LLM_ENDPOINT_REFUSED");
    assert!(fake.seen().is_empty());
}
