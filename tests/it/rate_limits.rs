//! Rate limits for every caller: anonymous callers per address, users, API keys and
//! organizations each have a budget (and RPC groups a further one), told in `RateLimit-*`
//! headers on REST and in the call's metadata on gRPC; replicas share them through Redis.

use crate::backend_tests;
use crate::harness::{Backend, TestApp, grpc_reason, test_settings, with_token};
use crate::organizations::with_viewer;
use keel::api::pb::keel::auth::v1::GetMeRequest;
use reqwest::Method;
use serde_json::{Value, json};
use tonic::Code;

backend_tests!(
    anonymous_callers_are_limited_per_address,
    users_and_api_keys_have_their_own_budgets,
    organizations_and_rpc_groups_have_budgets,
);

/// A refresh with a token that is none: a public call that costs the server little.
async fn anonymous_call(app: &TestApp, address: &str) -> reqwest::Response {
    app.http
        .post(app.url("/api/v1/auth/refresh"))
        .header("x-forwarded-for", address)
        .json(&json!({ "refresh_token": "not-a-token" }))
        .send()
        .await
        .unwrap()
}

fn field(response: &reqwest::Response, name: &str) -> Option<u64> {
    response.headers().get(name)?.to_str().ok()?.parse().ok()
}

/// `(status, ratelimit-limit, ratelimit-remaining)`, with the reset and policy checked.
fn figures(response: &reqwest::Response) -> (u16, Option<u64>, Option<u64>) {
    if let Some(reset) = field(response, "ratelimit-reset") {
        assert!(reset <= 60, "resets within the minute: {reset}");
        let limit = field(response, "ratelimit-limit").unwrap();
        assert_eq!(
            response.headers()["ratelimit-policy"].to_str().unwrap(),
            format!("{limit};w=60")
        );
    }
    (
        response.status().as_u16(),
        field(response, "ratelimit-limit"),
        field(response, "ratelimit-remaining"),
    )
}

async fn assert_limited(response: reqwest::Response) {
    assert_eq!(figures(&response).2, Some(0));
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(response.status(), 429);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "RATE_LIMITED");
}

async fn anonymous_callers_are_limited_per_address(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.trusted_proxies = Some("127.0.0.0/8".into());
        settings.rate_limit_anonymous_per_minute = Some("3".into());
    })
    .await;
    for remaining in [2, 1, 0] {
        let response = anonymous_call(&app, "203.0.113.10").await;
        assert_eq!(figures(&response), (401, Some(3), Some(remaining)));
    }
    assert_limited(anonymous_call(&app, "203.0.113.10").await).await;
    let metrics = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert!(
        metrics
            .text()
            .await
            .unwrap()
            .contains("keel_rate_limited_total{class=\"anonymous\"} 1\n")
    );
    // Another address has its own budget.
    let response = anonymous_call(&app, "203.0.113.11").await;
    assert_eq!(figures(&response), (401, Some(3), Some(2)));

    // Guessed credentials spend the address's budget too, on every door.
    let me = |token: &'static str| {
        app.http
            .get(app.url("/api/v1/auth/me"))
            .header("x-forwarded-for", "203.0.113.12")
            .bearer_auth(token)
            .send()
    };
    for _ in 0..3 {
        assert_eq!(me("forged").await.unwrap().status(), 401);
    }
    assert_limited(me("forged").await.unwrap()).await;

    // Health and metrics are exempt.
    for _ in 0..5 {
        let response = app
            .http
            .get(app.url("/health/ready"))
            .header("x-forwarded-for", "203.0.113.10")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(!response.headers().contains_key("ratelimit-limit"));
    }

    // A new minute, a full budget.
    app.clock.advance(chrono::Duration::minutes(1));
    let response = anonymous_call(&app, "203.0.113.10").await;
    assert_eq!(figures(&response), (401, Some(3), Some(2)));
}

async fn users_and_api_keys_have_their_own_budgets(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.rate_limit_user_per_minute = Some("4".into());
        settings.rate_limit_api_key_per_minute = Some("3".into());
    })
    .await;
    let ada = app.signed_in("ada@example.com").await;
    for remaining in [3, 2, 1] {
        let response = app.get_with_token("/api/v1/auth/me", &ada.access).await;
        assert_eq!(figures(&response), (200, Some(4), Some(remaining)));
    }
    // gRPC carries the same figures in the call's metadata (trailers, merged by the client).
    let reply = app
        .grpc()
        .await
        .get_me(with_token(GetMeRequest {}, &ada.access))
        .await
        .unwrap();
    assert_eq!(reply.metadata().get("ratelimit-remaining").unwrap(), "0");
    assert_eq!(reply.metadata().get("ratelimit-limit").unwrap(), "4");
    let refused = app
        .grpc()
        .await
        .get_me(with_token(GetMeRequest {}, &ada.access))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(grpc_reason(&refused), "RATE_LIMITED");
    assert_eq!(refused.metadata().get("ratelimit-remaining").unwrap(), "0");
    assert_limited(app.get_with_token("/api/v1/auth/me", &ada.access).await).await;

    // An API key has a budget of its own, apart from its owner's.
    let grace = app.verified("grace@example.com").await;
    let (status, key) = app
        .rest(
            Method::POST,
            "/api/v1/api-keys",
            &grace.access,
            Some(json!({ "name": "ci" })),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let secret = key["key"].as_str().unwrap();
    let with_key = || {
        app.http
            .get(app.url("/api/v1/auth/me"))
            .header("x-api-key", secret)
            .send()
    };
    for remaining in [2, 1, 0] {
        let response = with_key().await.unwrap();
        assert_eq!(figures(&response), (200, Some(3), Some(remaining)));
    }
    assert_limited(with_key().await.unwrap()).await;
    let response = app.get_with_token("/api/v1/auth/me", &grace.access).await;
    assert_eq!(figures(&response), (200, Some(4), Some(2)));
}

async fn organizations_and_rpc_groups_have_budgets(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.rate_limit_organization_per_minute = Some("6".into());
        settings.rate_limit_groups = Some("keel.team.v1.TeamService/ListTeams=2".into());
    })
    .await;
    // Adding the viewer is the first call into the organization.
    let (organization_id, owner, viewer) = with_viewer(&app, "budgets").await;

    // A group's budget is per caller, apart from the caller's others.
    let teams = format!("/api/v1/organizations/{organization_id}/teams");
    for remaining in [1, 0] {
        let response = app.get_with_token(&teams, &viewer.access).await;
        assert_eq!(figures(&response), (200, Some(2), Some(remaining)));
    }
    assert_limited(app.get_with_token(&teams, &viewer.access).await).await;
    let response = app.get_with_token(&teams, &owner.access).await;
    assert_eq!(
        figures(&response).0,
        200,
        "the owner's group budget is whole"
    );

    // The organization's budget is shared by all its callers: 4 spent so far (the refused
    // call cost nothing), so one each for the viewer and the owner, then none for anyone.
    let members = format!("/api/v1/organizations/{organization_id}/members");
    let response = app.get_with_token(&members, &viewer.access).await;
    assert_eq!(figures(&response), (200, Some(6), Some(1)));
    let response = app.get_with_token(&members, &owner.access).await;
    assert_eq!(figures(&response), (200, Some(6), Some(0)));
    assert_limited(app.get_with_token(&members, &viewer.access).await).await;
    // Calls outside the organization are not its to limit.
    let response = app.get_with_token("/api/v1/auth/me", &viewer.access).await;
    assert_eq!(response.status(), 200);
}

/// Two replicas on one Redis spend the same budgets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_the_budgets() {
    if !crate::harness::services_available() {
        return;
    }
    let (first, second) = TestApp::two_replicas(
        |settings| {
            settings.trusted_proxies = Some("127.0.0.0/8".into());
            settings.rate_limit_anonymous_per_minute = Some("3".into());
        },
        |_| {},
    )
    .await;

    let response = anonymous_call(&first, "198.51.100.20").await;
    assert_eq!(figures(&response), (401, Some(3), Some(2)));
    let response = anonymous_call(&second, "198.51.100.20").await;
    assert_eq!(figures(&response), (401, Some(3), Some(1)));
    let response = anonymous_call(&first, "198.51.100.20").await;
    assert_eq!(figures(&response), (401, Some(3), Some(0)));
    assert_limited(anonymous_call(&second, "198.51.100.20").await).await;
}

/// A group that names no RPC is a mistake the server refuses to start with.
#[tokio::test]
async fn a_group_naming_no_rpc_stops_the_start() {
    let data_dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(Backend::Embedded, data_dir.path());
    settings.rate_limit_groups = Some("keel.team.v1.TeamServce=10".into());
    let config = keel::config::Config::from_settings(&settings).unwrap();
    let error = match keel::app::Keel::build(
        &config,
        std::sync::Arc::new(keel::domain::clock::SystemClock),
    )
    .await
    {
        Ok(_) => panic!("started with a group that names no RPC"),
        Err(error) => error.to_string(),
    };
    assert!(error.contains("KEEL_RATE_LIMIT_GROUPS"), "{error}");
    assert!(error.contains("TeamServce"), "{error}");
}
