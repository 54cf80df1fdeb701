//! The outbox and the audit log: state changes and refusals become events in the same
//! transaction, the dispatcher chains them into the audit log (even after a crash between
//! commit and dispatch), each reader sees what they may, and `keel admin audit verify` finds
//! an entry edited in the database.

use crate::harness::{Backend, PASSWORD, TestApp, test_settings, with_token};
use crate::jobs::start_keel;
use crate::smtp::Mailbox;
use keel::api::pb::keel::audit::v1::GetAuditLogRequest;
use keel::api::pb::keel::audit::v1::audit_log_service_client::AuditLogServiceClient;
use keel::api::pb::keel::webhook::v1::ListWebhookEventTypesRequest;
use keel::api::pb::keel::webhook::v1::webhook_service_client::WebhookServiceClient;
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

crate::backend_tests!(
    old_entries_are_exported_then_pruned,
    security_events_reach_the_audit_log,
    verify_names_the_entry_edited_in_the_database,
    events_committed_before_a_crash_are_dispatched_after_it
);

/// The entries at `path` once `ready` holds for them (the dispatcher runs every 20 ms here).
pub async fn wait_for_entries(
    app: &TestApp,
    token: &str,
    path: &str,
    ready: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let mut last = Value::Null;
    for _ in 0..100 {
        let (status, body) = app.rest(Method::GET, path, token, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        let entries = body["audit_logs"].as_array().cloned().unwrap_or_default();
        if ready(&entries) {
            return entries;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{path} never got there: {last}");
}

fn actions(entries: &[Value]) -> Vec<&str> {
    entries
        .iter()
        .map(|entry| entry["action"].as_str().unwrap())
        .collect()
}

fn has(entries: &[Value], wanted: &[&str]) -> bool {
    let found = actions(entries);
    wanted.iter().all(|action| found.contains(action))
}

async fn failed_login(app: &TestApp, email: &str) {
    let response = app
        .http
        .post(app.url("/api/v1/auth/login"))
        .header("user-agent", "audit-test/1.0")
        .json(&json!({ "email": email, "password": "wrong-password" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
}

async fn security_events_reach_the_audit_log(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create_superuser("root@example.com").await;
    let root = app.login("root@example.com").await.access;
    let alice = app.verified("alice@example.com").await.access;
    let (_, me) = app.rest(Method::GET, "/api/v1/auth/me", &alice, None).await;
    let alice_id = me["id"].as_str().unwrap().to_owned();
    failed_login(&app, "alice@example.com").await;
    failed_login(&app, "nobody@example.com").await;
    let (status, organization) = app
        .rest(
            Method::POST,
            "/api/v1/organizations",
            &alice,
            Some(json!({ "name": "Acme", "slug": "acme" })),
        )
        .await;
    assert_eq!(status, 201, "{organization}");
    let organization_id = organization["id"].as_str().unwrap().to_owned();
    let (status, key) = app
        .rest(
            Method::POST,
            "/api/v1/api-keys",
            &alice,
            Some(json!({ "name": "ci", "scopes": ["organization:read"], "organization_id": organization_id })),
        )
        .await;
    assert_eq!(status, 201, "{key}");

    // Everything, for a superuser, newest first, each entry chained to the one before.
    // The notice of the new API key is recorded a batch after the key itself.
    let everything = wait_for_entries(&app, &root, "/api/v1/audit-logs?page_size=100", |entries| {
        has(
            entries,
            &["api_key.created", "member.added", "notification.created"],
        )
    })
    .await;
    for wanted in [
        "user.created",
        "user.updated",
        "session.created",
        "user.login_failed",
        "organization.created",
        "member.added",
        "api_key.created",
    ] {
        assert!(
            actions(&everything).contains(&wanted),
            "{wanted} in {everything:#?}"
        );
    }
    for pair in everything.windows(2) {
        let (newer, older) = (&pair[0], &pair[1]);
        assert_eq!(
            newer["sequence"].as_str().unwrap().parse::<i64>().unwrap(),
            older["sequence"].as_str().unwrap().parse::<i64>().unwrap() + 1
        );
        assert_eq!(newer["previous_hash"], older["hash"]);
    }
    let failures: Vec<&Value> = everything
        .iter()
        .filter(|entry| entry["action"] == "user.login_failed")
        .collect();
    assert_eq!(failures.len(), 2, "{failures:#?}");
    for failure in &failures {
        assert_eq!(failure["outcome"], "AUDIT_OUTCOME_FAILURE");
        assert_eq!(failure["actor"]["type"], "anonymous");
        assert_eq!(failure["ip_address"], "127.0.0.1");
        assert_eq!(failure["user_agent"], "audit-test/1.0");
        assert_eq!(failure["details"]["reason"], "invalid_credentials");
    }
    let unknown = failures
        .iter()
        .find(|entry| entry["details"]["email"] == "nobody@example.com")
        .expect("the unknown address is recorded");
    assert_eq!(unknown["details"]["user_id"], Value::Null);
    let created = everything
        .iter()
        .find(|entry| entry["action"] == "organization.created")
        .unwrap();
    assert_eq!(created["actor"]["type"], "user");
    assert_eq!(created["actor"]["user_id"], alice_id.as_str());
    assert_eq!(created["organization_id"], organization_id.as_str());
    assert_eq!(created["details"]["slug"], "acme");
    let key_event = everything
        .iter()
        .find(|entry| entry["action"] == "api_key.created")
        .unwrap();
    assert!(
        !key_event.to_string().contains(key["key"].as_str().unwrap()),
        "an API key's secret never reaches the audit log"
    );

    // The caller's own record and sign-in history; nobody else's.
    let mine = wait_for_entries(&app, &alice, "/api/v1/audit-logs/me", |_| true).await;
    assert!(has(
        &mine,
        &["user.created", "user.login_failed", "organization.created"]
    ));
    assert!(mine.iter().all(|entry| {
        entry["actor"]["user_id"] == alice_id.as_str() || entry["target_id"] == alice_id.as_str()
    }));
    let history = wait_for_entries(&app, &alice, "/api/v1/audit-logs/me/login-history", |_| {
        true
    })
    .await;
    assert_eq!(
        actions(&history),
        ["user.login_failed", "session.created"],
        "{history:#?}"
    );

    // An organization's admins read its entries; a member without `audit:read` does not.
    let organization_log = wait_for_entries(
        &app,
        &alice,
        &format!("/api/v1/organizations/{organization_id}/audit-logs"),
        |_| true,
    )
    .await;
    assert_eq!(
        actions(&organization_log),
        ["api_key.created", "member.added", "organization.created"]
    );
    let (status, _) = app
        .rest(Method::GET, "/api/v1/audit-logs", &alice, None)
        .await;
    assert_eq!(status, 403, "the whole log is for superusers");

    // Filters, search, statistics and one entry, for superusers.
    let failed = wait_for_entries(
        &app,
        &root,
        &format!("/api/v1/audit-logs/users/{alice_id}/failed-logins"),
        |_| true,
    )
    .await;
    assert_eq!(actions(&failed), ["user.login_failed"]);
    let about_alice = wait_for_entries(
        &app,
        &root,
        &format!("/api/v1/audit-logs/resource/user/{alice_id}"),
        |_| true,
    )
    .await;
    assert!(has(&about_alice, &["user.created", "user.updated"]));
    let found = wait_for_entries(&app, &root, "/api/v1/audit-logs/search?query=ACME", |_| {
        true
    })
    .await;
    assert!(has(&found, &["organization.created"]), "{found:#?}");
    let filtered = wait_for_entries(
        &app,
        &root,
        "/api/v1/audit-logs?outcome=AUDIT_OUTCOME_FAILURE&action=user.login_failed",
        |_| true,
    )
    .await;
    assert_eq!(filtered.len(), 2);
    let (status, statistics) = app
        .rest(Method::GET, "/api/v1/audit-logs/statistics", &root, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(statistics["by_outcome"]["failure"], "2");
    assert_eq!(statistics["by_action"]["user.login_failed"], "2");
    assert_eq!(
        statistics["total"]
            .as_str()
            .unwrap()
            .parse::<usize>()
            .unwrap(),
        everything.len()
    );
    let entry_id = created["id"].as_str().unwrap();
    let (status, one) = app
        .rest(
            Method::GET,
            &format!("/api/v1/audit-logs/{entry_id}"),
            &root,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(&one, created);

    // The same over gRPC.
    let mut grpc = AuditLogServiceClient::new(app.channel().await);
    let entry = grpc
        .get_audit_log(with_token(
            GetAuditLogRequest {
                audit_log_id: entry_id.to_owned(),
            },
            &root,
        ))
        .await
        .unwrap()
        .into_inner()
        .audit_log
        .unwrap();
    assert_eq!(entry.hash, created["hash"].as_str().unwrap());
    let missing = grpc
        .get_audit_log(with_token(
            GetAuditLogRequest {
                audit_log_id: uuid::Uuid::now_v7().to_string(),
            },
            &root,
        ))
        .await
        .unwrap_err();
    assert_eq!(crate::harness::grpc_reason(&missing), "AUDIT_LOG_NOT_FOUND");

    // The catalog, with a schema for each type's data.
    let catalog = WebhookServiceClient::new(app.channel().await)
        .list_webhook_event_types(with_token(ListWebhookEventTypesRequest {}, &alice))
        .await
        .unwrap()
        .into_inner()
        .event_types;
    let names: Vec<&str> = catalog.iter().map(|kind| kind.name.as_str()).collect();
    for action in actions(&everything) {
        assert!(names.contains(&action), "{action} is in the catalog");
    }
    let (status, rest_catalog) = app
        .rest(Method::GET, "/api/v1/webhooks/events", &alice, None)
        .await;
    assert_eq!(status, 200);
    let member_added = rest_catalog["event_types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|kind| kind["name"] == "member.added")
        .unwrap();
    assert_eq!(member_added["version"], 1);
    let required = member_added["data_schema"]["required"].as_array().unwrap();
    assert!(
        required.contains(&json!("organization_id")),
        "{member_added}"
    );
}

/// Runs `statement` on Keel's database directly, as someone with database access would.
async fn tamper(database_url: &str, statements: &[&str]) -> Result<(), sqlx::Error> {
    use sqlx::{Connection, Executor};
    if database_url.starts_with("sqlite:") {
        let mut connection = sqlx::SqliteConnection::connect(database_url).await?;
        for statement in statements {
            connection.execute(sqlx::AssertSqlSafe(*statement)).await?;
        }
    } else {
        let mut connection = sqlx::PgConnection::connect(database_url).await?;
        for statement in statements {
            connection.execute(sqlx::AssertSqlSafe(*statement)).await?;
        }
    }
    Ok(())
}

/// `keel admin audit verify` on `app`'s database: exit status and output.
fn verify(app: &TestApp) -> (bool, String) {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .env_clear()
        .env("KEEL_DATA_DIR", &app.config.data_dir)
        .env("KEEL_DATABASE_URL", &app.config.database_url)
        .args(["admin", "audit", "verify"])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

async fn verify_names_the_entry_edited_in_the_database(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create_superuser("root@example.com").await;
    let root = app.login("root@example.com").await.access;
    app.verified("bob@example.com").await;
    failed_login(&app, "bob@example.com").await;
    let entries = wait_for_entries(&app, &root, "/api/v1/audit-logs", |entries| {
        has(entries, &["user.login_failed"])
    })
    .await;

    let (intact, output) = verify(&app);
    assert!(intact, "{output}");
    assert!(
        output.contains(&format!("{} entries", entries.len())),
        "{output}"
    );

    // The log refuses changes outright; someone who drops that guard is still found out.
    let database = app.config.database_url.clone();
    let edit = "UPDATE audit_log SET details = '{\"reason\": \"none\"}' WHERE sequence = 2";
    let refused = tamper(&database, &[edit]).await.unwrap_err();
    assert!(refused.to_string().contains("append-only"), "{refused}");
    let drop_guard = if database.starts_with("sqlite:") {
        "DROP TRIGGER audit_log_append_only"
    } else {
        "DROP TRIGGER audit_log_append_only ON audit_log"
    };
    tamper(&database, &[drop_guard, edit]).await.unwrap();
    let (intact, output) = verify(&app);
    assert!(!intact, "{output}");
    let second = entries
        .iter()
        .find(|entry| entry["sequence"] == "2")
        .unwrap();
    assert!(
        output.contains(&format!(
            "audit log broken at entry 2 ({})",
            second["id"].as_str().unwrap()
        )),
        "{output}"
    );
    assert!(output.contains("changed"), "{output}");

    // A deleted entry breaks the chain where it was.
    tamper(
        &database,
        &["DELETE FROM audit_log WHERE sequence IN (1, 2)"],
    )
    .await
    .unwrap();
    let (intact, output) = verify(&app);
    assert!(!intact);
    assert!(output.contains("entries 1 to 2 are missing"), "{output}");
}

/// An API without workers commits a change and its event, then dies (SIGKILL) before any
/// dispatcher ran; a worker started afterwards dispatches the event to the audit log.
async fn events_committed_before_a_crash_are_dispatched_after_it(backend: Backend) {
    let data_dir = tempfile::tempdir().unwrap();
    let settings = test_settings(backend, data_dir.path());
    let (smtp_url, _mailbox) = Mailbox::start().await;
    let (mut api, address) = start_keel(&settings, &smtp_url, &["serve", "--no-workers"]);
    let address = address.expect("the API's address");
    let response = reqwest::Client::new()
        .post(format!("http://{address}/api/v1/auth/register"))
        .json(&json!({ "email": "crash@example.com", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    api.kill().unwrap();
    api.wait().unwrap();

    let config = keel::config::Config::from_settings(&settings).unwrap();
    let audited = || async {
        let url = &config.database_url;
        let sql = "SELECT action FROM audit_log ORDER BY sequence";
        use sqlx::Connection;
        if url.starts_with("sqlite:") {
            let mut connection = sqlx::SqliteConnection::connect(url).await.unwrap();
            sqlx::query_scalar::<_, String>(sql)
                .fetch_all(&mut connection)
                .await
                .unwrap()
        } else {
            let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
            sqlx::query_scalar::<_, String>(sql)
                .fetch_all(&mut connection)
                .await
                .unwrap()
        }
    };
    assert!(audited().await.is_empty(), "nothing dispatched before");

    let (mut worker, _) = start_keel(&settings, &smtp_url, &["worker"]);
    let mut dispatched = Vec::new();
    for _ in 0..100 {
        dispatched = audited().await;
        if !dispatched.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert_eq!(dispatched, ["user.created"]);
}

/// Audit entries in `database_url`'s log, by sequence.
async fn stored_sequences(database_url: &str) -> Vec<i64> {
    use sqlx::Connection;
    let sql = "SELECT sequence FROM audit_log ORDER BY sequence";
    if database_url.starts_with("sqlite:") {
        let mut connection = sqlx::SqliteConnection::connect(database_url).await.unwrap();
        sqlx::query_scalar(sql)
            .fetch_all(&mut connection)
            .await
            .unwrap()
    } else {
        let mut connection = sqlx::PgConnection::connect(database_url).await.unwrap();
        sqlx::query_scalar(sql)
            .fetch_all(&mut connection)
            .await
            .unwrap()
    }
}

async fn old_entries_are_exported_then_pruned(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.cleanup_schedule = Some("* * * * * *".into());
        settings.audit_retention_days = Some("30".into());
    })
    .await;
    app.create_superuser("root@example.com").await;
    let root = app.login("root@example.com").await.access;
    app.verified("old@example.com").await;
    let old = wait_for_entries(&app, &root, "/api/v1/audit-logs?page_size=100", |entries| {
        has(entries, &["session.created", "user.updated"]) && entries.len() >= 5
    })
    .await;
    let last_old: i64 = old[0]["sequence"].as_str().unwrap().parse().unwrap();

    app.clock.advance(chrono::Duration::days(31));
    let mut kept = Vec::new();
    for _ in 0..100 {
        kept = stored_sequences(&app.config.database_url).await;
        if kept.first().is_none_or(|first| *first > last_old) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(kept.iter().all(|sequence| *sequence > last_old), "{kept:?}");

    // Exported first, every field, in chain order.
    let exports = app.config.data_dir.join("audit-exports");
    let mut lines = Vec::new();
    for file in std::fs::read_dir(&exports).unwrap() {
        let text = std::fs::read_to_string(file.unwrap().path()).unwrap();
        lines.extend(
            text.lines()
                .map(|line| serde_json::from_str::<Value>(line).unwrap()),
        );
    }
    lines.sort_by_key(|line| line["sequence"].as_i64().unwrap());
    let exported: Vec<i64> = lines
        .iter()
        .map(|line| line["sequence"].as_i64().unwrap())
        .filter(|sequence| *sequence <= last_old)
        .collect();
    assert_eq!(exported, (1..=last_old).collect::<Vec<_>>());
    let newest_old = lines
        .iter()
        .find(|line| line["sequence"] == last_old)
        .unwrap();
    assert_eq!(newest_old["hash"], old[0]["hash"]);
    assert_eq!(newest_old["action"], old[0]["action"]);

    // The chain still checks out from the anchor on.
    let (intact, output) = verify(&app);
    assert!(intact, "{output}");
}
