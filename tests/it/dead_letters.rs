//! The dead-letter queue: a job given up is listed for operators, who retry (and see the
//! outcome), resolve or ignore it, over REST and gRPC.

use crate::harness::{Backend, TestApp, grpc_reason, with_token};
use keel::api::pb::keel::job::v1::dead_letter_service_client::DeadLetterServiceClient;
use keel::api::pb::keel::job::v1::{DeadLetterStatus, IgnoreDeadLetterRequest};
use reqwest::Method;
use serde_json::{Value, json};
use std::time::Duration;

crate::backend_tests!(operators_retry_resolve_and_ignore_dead_letters);

/// The dead letters listed at `query`, once there are `count` of them.
async fn wait_for_dead_letters(
    app: &TestApp,
    token: &str,
    query: &str,
    count: usize,
) -> Vec<Value> {
    let mut last = Value::Null;
    for _ in 0..100 {
        let (status, body) = app
            .rest(
                Method::GET,
                &format!("/api/v1/dead-letter{query}"),
                token,
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let items = body["dead_letters"].as_array().cloned().unwrap_or_default();
        if items.len() >= count {
            return items;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{count} dead letters never appeared at {query}: {last}");
}

async fn operators_retry_resolve_and_ignore_dead_letters(backend: Backend) {
    // One attempt: a refused delivery is given up at once.
    let app = TestApp::spawn_with(backend, |settings| {
        settings.job_max_attempts = Some("1".into());
    })
    .await;
    app.create_superuser("root@example.com").await;
    let root = app.login("root@example.com").await.access;
    let member = app.verified("member@example.com").await.access;

    app.mailbox.refuse_next(1);
    app.register("refused@example.com").await;
    let listed = wait_for_dead_letters(&app, &root, "", 1).await;
    let dead = &listed[0];
    assert_eq!(dead["job_type"], "mail");
    assert_eq!(dead["status"], "DEAD_LETTER_STATUS_PENDING");
    assert_eq!(dead["attempts"], 1);
    assert!(dead["error"].as_str().unwrap().contains("451"), "{dead}");
    let payload = dead["payload"].as_str().unwrap();
    assert!(payload.contains("refused@example.com"), "{payload}");
    assert!(
        !payload.contains("token="),
        "a mailed link is a credential: {payload}"
    );
    let task_id = dead["task_id"].as_str().unwrap().to_owned();

    let (status, statistics) = app
        .rest(Method::GET, "/api/v1/dead-letter/statistics", &root, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(statistics["total"], "1");
    assert_eq!(statistics["by_status"]["pending"], "1");
    assert_eq!(statistics["by_job_type"]["mail"], "1");

    // Monitoring sees the job store and the dead letters (apalis marks the job killed just
    // after its dead letter is written).
    let mut metrics = String::new();
    for _ in 0..50 {
        metrics = app
            .http
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("status=\"killed\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        metrics.contains("keel_dead_letters{status=\"pending\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("keel_jobs{queue=\"mail\",status=\"killed\"} 1"),
        "{metrics}"
    );

    // The job monitor lists the job given up, without its payload.
    let (status, killed) = app
        .rest(
            Method::GET,
            "/api/v1/jobs?queue=mail&status=killed",
            &root,
            None,
        )
        .await;
    assert_eq!(status, 200, "{killed}");
    let jobs = killed["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{killed}");
    assert_eq!(jobs[0]["id"], task_id.as_str());
    assert_eq!(
        (jobs[0]["attempts"].clone(), jobs[0]["max_attempts"].clone()),
        (json!(1), json!(1))
    );
    assert!(jobs[0].get("payload").is_none() && !killed.to_string().contains("token="));
    let (_, statistics) = app
        .rest(Method::GET, "/api/v1/jobs/statistics", &root, None)
        .await;
    assert!(
        statistics["counts"]
            .as_array()
            .unwrap()
            .contains(&json!({ "queue": "mail", "status": "killed", "count": "1" })),
        "{statistics}"
    );
    assert_eq!(
        app.status_and_reason(Method::GET, "/api/v1/jobs", &member, None)
            .await
            .0,
        403
    );

    // Operators only.
    assert_eq!(
        app.status_and_reason(Method::GET, "/api/v1/dead-letter", &member, None)
            .await
            .0,
        403
    );

    // A retry queues the job again; once it is delivered, the dead letter is resolved.
    let (status, retried) = app
        .rest(
            Method::POST,
            &format!("/api/v1/dead-letter/{task_id}/retry"),
            &root,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{retried}");
    assert_eq!(retried["status"], "DEAD_LETTER_STATUS_RETRIED");
    assert_ne!(retried["retry_task_id"], "");
    assert!(
        !app.mailbox
            .link_token("refused@example.com", "verify-email")
            .await
            .is_empty()
    );
    let mut outcome = Value::Null;
    for _ in 0..100 {
        let (_, got) = app
            .rest(
                Method::GET,
                &format!("/api/v1/dead-letter/{task_id}"),
                &root,
                None,
            )
            .await;
        outcome = got;
        if outcome["retry_outcome"] == "RETRY_OUTCOME_SUCCEEDED" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        outcome["retry_outcome"], "RETRY_OUTCOME_SUCCEEDED",
        "{outcome}"
    );
    assert_eq!(outcome["status"], "DEAD_LETTER_STATUS_RESOLVED");
    assert_eq!(
        app.status_and_reason(
            Method::POST,
            &format!("/api/v1/dead-letter/{task_id}/retry"),
            &root,
            Some(json!({}))
        )
        .await,
        (409, "DEAD_LETTER_HANDLED".to_owned())
    );

    // Two more given up: one resolved over REST, one ignored over gRPC.
    app.mailbox.refuse_next(2);
    app.register("second@example.com").await;
    app.register("third@example.com").await;
    let pending = wait_for_dead_letters(&app, &root, "?status=DEAD_LETTER_STATUS_PENDING", 2).await;
    let (second, third) = (
        pending[0]["task_id"].as_str().unwrap().to_owned(),
        pending[1]["task_id"].as_str().unwrap().to_owned(),
    );
    let (status, resolved) = app
        .rest(
            Method::POST,
            &format!("/api/v1/dead-letter/{second}/resolve"),
            &root,
            Some(json!({ "notes": "sent by hand" })),
        )
        .await;
    assert_eq!(status, 200, "{resolved}");
    assert_eq!(resolved["status"], "DEAD_LETTER_STATUS_RESOLVED");
    assert_eq!(resolved["notes"], "sent by hand");

    let mut client = DeadLetterServiceClient::new(app.channel().await);
    let ignored = client
        .ignore_dead_letter(with_token(
            IgnoreDeadLetterRequest {
                task_id: third.clone(),
                notes: "address abandoned".into(),
            },
            &root,
        ))
        .await
        .unwrap()
        .into_inner()
        .dead_letter
        .unwrap();
    assert_eq!(ignored.status(), DeadLetterStatus::Ignored);
    assert_eq!(ignored.notes, "address abandoned");
    assert!(!ignored.handled_by.is_empty());
    let again = client
        .ignore_dead_letter(with_token(
            IgnoreDeadLetterRequest {
                task_id: third,
                notes: String::new(),
            },
            &root,
        ))
        .await
        .unwrap_err();
    assert_eq!(again.code(), tonic::Code::FailedPrecondition);
    assert_eq!(grpc_reason(&again), "DEAD_LETTER_HANDLED");

    let ignored_only =
        wait_for_dead_letters(&app, &root, "?status=DEAD_LETTER_STATUS_IGNORED", 1).await;
    assert_eq!(ignored_only.len(), 1);
    let (_, statistics) = app
        .rest(Method::GET, "/api/v1/dead-letter/statistics", &root, None)
        .await;
    assert_eq!(statistics["total"], "3");
    assert_eq!(statistics["by_status"]["resolved"], "2");

    let unknown = uuid::Uuid::now_v7();
    assert_eq!(
        app.status_and_reason(
            Method::GET,
            &format!("/api/v1/dead-letter/{unknown}"),
            &root,
            None
        )
        .await,
        (404, "DEAD_LETTER_NOT_FOUND".to_owned())
    );
    assert_eq!(
        app.status_and_reason(Method::GET, "/api/v1/dead-letter/not-a-uuid", &root, None)
            .await
            .0,
        400
    );
}
