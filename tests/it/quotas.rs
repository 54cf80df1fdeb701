//! Quotas: limits only platform superusers change, member and monthly API-call limits enforced
//! with RESOURCE_EXHAUSTED / 429, calendar windows, and usage counted in the cache and flushed
//! to the database (where a restarted cache picks it up again).

use crate::backend_tests;
use crate::harness::{Backend, TestApp, Tokens};
use crate::invitations::verified_user;
use crate::organizations::{add_member, create_organization, user};
use keel::app::Keel;
use reqwest::Method;
use serde_json::{Value, json};

backend_tests!(
    members_and_calls_are_limited,
    usage_is_flushed_to_the_database,
    shutdown_writes_the_last_counts,
);

fn usage<'a>(status: &'a Value, metric: &str) -> &'a Value {
    status["usage"]
        .as_array()
        .unwrap()
        .iter()
        .find(|usage| usage["metric"] == metric)
        .unwrap()
}

async fn status(app: &TestApp, token: &str, organization_id: &str) -> Value {
    let (status, body) = app
        .rest(
            Method::GET,
            &format!("/api/v1/quota/status?organization_id={organization_id}"),
            token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

async fn set_limits(app: &TestApp, token: &str, body: Value) -> (u16, Value) {
    let (status, answer) = app
        .rest(Method::PUT, "/api/v1/quota/limits", token, Some(body))
        .await;
    (status.as_u16(), answer)
}

async fn members_and_calls_are_limited(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create_superuser("root@example.com").await;
    let root = app.login("root@example.com").await;
    let (_, alice) = user(&app, "alice@example.com").await;
    let (bob_id, _) = user(&app, "bob@example.com").await;
    let (carol_id, carol) = verified_user(&app, "carol@example.com").await;
    let organization_id = create_organization(&app, &alice.access, "acme").await;

    let initial = status(&app, &alice.access, &organization_id).await;
    assert_eq!(initial["limits"]["max_users"], "10");
    assert_eq!(initial["limits"]["max_storage_bytes"], "1073741824");
    assert_eq!(usage(&initial, "members")["used"], "1");
    assert_eq!(usage(&initial, "members")["percent"], 10.0);

    // Only platform superusers change limits, partially.
    let (code, body) = set_limits(
        &app,
        &alice.access,
        json!({ "organization_id": organization_id, "max_users": 100 }),
    )
    .await;
    assert_eq!(
        (code, body["reason"].as_str()),
        (403, Some("PERMISSION_DENIED"))
    );
    let (code, body) = set_limits(
        &app,
        &root.access,
        json!({ "organization_id": organization_id, "max_users": -1 }),
    )
    .await;
    assert_eq!(
        (code, body["reason"].as_str()),
        (400, Some("INVALID_FIELDS"))
    );
    let (code, body) = set_limits(
        &app,
        &root.access,
        json!({ "organization_id": uuid::Uuid::now_v7(), "max_users": 1 }),
    )
    .await;
    assert_eq!(code, 404, "{body}");
    let (code, limits) = set_limits(
        &app,
        &root.access,
        json!({ "organization_id": organization_id, "max_users": 2 }),
    )
    .await;
    assert_eq!(code, 200, "{limits}");
    assert_eq!(
        (&limits["max_users"], &limits["max_api_calls_per_month"]),
        (&json!("2"), &json!("10000"))
    );

    add_member(&app, &alice.access, &organization_id, &bob_id, json!([])).await;
    let (code, body) = app
        .rest(
            Method::POST,
            &format!("/api/v1/organizations/{organization_id}/members"),
            &alice.access,
            Some(json!({ "user_id": carol_id })),
        )
        .await;
    assert_eq!(
        (code.as_u16(), body["reason"].as_str()),
        (429, Some("QUOTA_EXCEEDED"))
    );
    let (code, _) = app
        .rest(
            Method::POST,
            &format!("/api/v1/organizations/{organization_id}/invitations"),
            &alice.access,
            Some(json!({ "email": "carol@example.com" })),
        )
        .await;
    assert_eq!(code, 201);
    let token = app.mailbox.token("carol@example.com", 2).await;
    let (code, body) = app
        .rest(
            Method::POST,
            "/api/v1/invitations/accept",
            &carol.access,
            Some(json!({ "token": token })),
        )
        .await;
    assert_eq!(
        (code.as_u16(), body["reason"].as_str()),
        (429, Some("QUOTA_EXCEEDED"))
    );
    let (_, members) = app
        .rest(
            Method::GET,
            &format!("/api/v1/organizations/{organization_id}/members"),
            &alice.access,
            None,
        )
        .await;
    assert_eq!(members["total_size"], 2);
    let (_, mine) = app
        .rest(Method::GET, "/api/v1/invitations", &carol.access, None)
        .await;
    assert_eq!(
        mine["invitations"].as_array().unwrap().len(),
        1,
        "the invitation stays pending"
    );

    // API calls in the organization's scope: the limit holds for the month, then resets.
    let used = usage(
        &status(&app, &alice.access, &organization_id).await,
        "api_calls",
    )["used"]
        .as_str()
        .unwrap()
        .parse::<i64>()
        .unwrap();
    set_limits(
        &app,
        &root.access,
        json!({ "organization_id": organization_id, "max_api_calls_per_month": used + 2 }),
    )
    .await;
    let get = |tokens: &Tokens| {
        let request = app
            .http
            .get(app.url(&format!("/api/v1/organizations/{organization_id}/teams")))
            .bearer_auth(tokens.access.clone());
        async move { request.send().await.unwrap() }
    };
    assert_eq!(get(&alice).await.status(), 200);
    assert_eq!(get(&alice).await.status(), 200);
    let refused = get(&alice).await;
    assert_eq!(refused.status(), 429);
    assert!(refused.headers().get("retry-after").is_some());
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["reason"], "QUOTA_EXCEEDED");
    assert_eq!(get(&alice).await.status(), 429);
    let over = status(&app, &alice.access, &organization_id).await;
    assert!(usage(&over, "api_calls")["percent"].as_f64().unwrap() > 100.0);
    // Each refused member is recorded, and the month's calls once however often refused.
    let exceeded = crate::audit::wait_for_entries(
        &app,
        &root.access,
        "/api/v1/audit-logs?action=quota.exceeded",
        |entries| entries.len() >= 3,
    )
    .await;
    let resources: Vec<&str> = exceeded
        .iter()
        .map(|entry| entry["details"]["resource"].as_str().unwrap())
        .collect();
    assert_eq!(resources, ["api_calls", "members", "members"]);
    assert!(exceeded.iter().all(|entry| {
        entry["organization_id"] == organization_id.as_str()
            && entry["outcome"] == "AUDIT_OUTCOME_FAILURE"
    }));
    // Over the quota, the owners still govern: reading the organization and removing the
    // member who spent it are never refused.
    let (code, _) = app
        .rest(
            Method::GET,
            &format!("/api/v1/organizations/{organization_id}"),
            &alice.access,
            None,
        )
        .await;
    assert_eq!(code, 200);
    let (code, _) = app
        .rest(
            Method::DELETE,
            &format!("/api/v1/organizations/{organization_id}/members/{bob_id}"),
            &alice.access,
            None,
        )
        .await;
    assert_eq!(code, 200);

    app.clock.advance(chrono::Duration::days(32));
    let alice = app.login("alice@example.com").await;
    assert_eq!(get(&alice).await.status(), 200);
    assert_eq!(
        usage(
            &status(&app, &alice.access, &organization_id).await,
            "api_calls"
        )["used"],
        "1"
    );
}

async fn usage_is_flushed_to_the_database(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.usage_flush_seconds = Some("1".into())
    })
    .await;
    let (_, alice) = user(&app, "alice@example.com").await;
    let organization_id = create_organization(&app, &alice.access, "acme").await;
    // Listing teams is metered (governing the organization itself is not).
    let teams = format!("/api/v1/organizations/{organization_id}/teams");
    for _ in 0..3 {
        assert_eq!(
            app.rest(Method::GET, &teams, &alice.access, None).await.0,
            200
        );
    }

    let logs_path = format!("/api/v1/quota/usage-logs?organization_id={organization_id}");
    let mut flushed = Value::Null;
    for _ in 0..100 {
        let (_, logs) = app.rest(Method::GET, &logs_path, &alice.access, None).await;
        if logs["usage_logs"][0]["count"] == "3" {
            flushed = logs;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        flushed["usage_logs"][0]["metric"], "api_calls",
        "no flush of 3 calls arrived: {flushed}"
    );

    // A second server on the same database (and, for the embedded backend, an empty memory
    // cache) continues from the flushed count.
    let second = Keel::build(&app.config, app.clock.clone()).await.unwrap();
    let base_url = format!("http://{}", second.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(second.serve(async move {
        let _ = stopped.await;
    }));
    let response = app
        .http
        .get(format!("{base_url}{teams}"))
        .bearer_auth(&alice.access)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let status: Value = app
        .http
        .get(format!(
            "{base_url}/api/v1/quota/status?organization_id={organization_id}"
        ))
        .bearer_auth(&alice.access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(usage(&status, "api_calls")["used"], "4", "{status}");
    let _ = stop.send(());
}

/// Counts taken just before a shutdown reach the database: the server stops accepting, lets
/// requests finish, lets a flush under way finish, then writes what is left.
async fn shutdown_writes_the_last_counts(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.usage_flush_seconds = Some("3600".into())
    })
    .await;
    let (_, alice) = user(&app, "alice@example.com").await;
    let organization_id = create_organization(&app, &alice.access, "acme").await;
    let teams = format!("/api/v1/organizations/{organization_id}/teams");
    for _ in 0..3 {
        assert_eq!(
            app.rest(Method::GET, &teams, &alice.access, None).await.0,
            200
        );
    }
    let (config, clock) = (app.config.clone(), app.clock.clone());
    let _data_dir = app.stop().await;

    let next = Keel::build(&config, clock).await.unwrap();
    let base_url = format!("http://{}", next.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(next.serve(async move {
        let _ = stopped.await;
    }));
    let logs: Value = reqwest::Client::new()
        .get(format!(
            "{base_url}/api/v1/quota/usage-logs?organization_id={organization_id}"
        ))
        .bearer_auth(&alice.access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(logs["usage_logs"][0]["count"], "3", "{logs}");
    let _ = stop.send(());
}
