//! The dependency update check against a fake crate registry on loopback (a Cargo sparse
//! index): the scheduled job and the on-demand check both record each dependency's newest
//! release, skipping yanked and pre-release versions.

use crate::harness::{Backend, TestApp};
use axum::extract::Path;
use reqwest::Method;
use serde_json::Value;
use std::time::Duration;

crate::backend_tests!(outdated_dependencies_are_reported);

/// The crate the fake registry has a newer release of.
const BEHIND: &str = "anyhow";

/// An index file per crate: every crate at the version Keel was built with; `anyhow` also at
/// 99.0.0, a yanked 100.0.0 and a 101.0.0-rc.1; `regex` unknown.
async fn index_file(Path(path): Path<String>) -> (http::StatusCode, String) {
    let name = path.rsplit('/').next().unwrap_or_default();
    let Some((_, current)) = keel::build_info::DEPENDENCIES
        .iter()
        .find(|(dependency, _)| *dependency == name && name != "regex")
    else {
        return (http::StatusCode::NOT_FOUND, String::new());
    };
    let release = |version: &str, yanked: bool| {
        format!(
            r#"{{"name":"{name}","vers":"{version}","deps":[],"cksum":"","features":{{}},"yanked":{yanked}}}"#
        )
    };
    let mut lines = vec![release(current, false)];
    if name == BEHIND {
        lines.extend([
            release("99.0.0", false),
            release("100.0.0", true),
            release("101.0.0-rc.1", false),
        ]);
    }
    (http::StatusCode::OK, lines.join("\n"))
}

async fn outdated_dependencies_are_reported(backend: Backend) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let registry = format!("http://{}", listener.local_addr().unwrap());
    let router = axum::Router::new().route("/{*path}", axum::routing::get(index_file));
    tokio::spawn(async move { axum::serve(listener, router).await });

    let app = TestApp::spawn_with(backend, |settings| {
        settings.dependency_registry_url = Some(registry.clone());
        settings.dependency_check_schedule = Some("* * * * * *".into());
    })
    .await;
    app.create_superuser("root@example.com").await;
    let root = app.login("root@example.com").await.access;

    // The scheduled check.
    let mut listed = Value::Null;
    for _ in 0..100 {
        let (status, body) = app
            .rest(Method::GET, "/api/v1/admin/dependencies", &root, None)
            .await;
        assert_eq!(status, 200, "{body}");
        listed = body;
        if listed["outdated_count"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dependencies = listed["dependencies"].as_array().unwrap();
    assert_eq!(dependencies.len(), keel::build_info::DEPENDENCIES.len());
    let behind = dependencies
        .iter()
        .find(|dependency| dependency["name"] == BEHIND)
        .unwrap();
    assert_eq!(behind["latest_version"], "99.0.0", "{behind}");
    assert_eq!(behind["outdated"], true);
    assert!(behind["checked_at"].is_string());
    let unknown = dependencies
        .iter()
        .find(|dependency| dependency["name"] == "regex")
        .unwrap();
    assert_eq!(unknown["latest_version"], "");
    assert_eq!(unknown["outdated"], false);
    for dependency in dependencies {
        if dependency["name"] != BEHIND && dependency["name"] != "regex" {
            assert_eq!(dependency["latest_version"], dependency["current_version"]);
            assert_eq!(dependency["outdated"], false);
        }
    }

    // On demand, for superusers only.
    let (status, checked) = app
        .rest(
            Method::POST,
            "/api/v1/admin/dependencies/check",
            &root,
            Some(serde_json::json!({})),
        )
        .await;
    assert_eq!(status, 200, "{checked}");
    assert_eq!(checked["outdated_count"], 1);
    let member = app.verified("member@example.com").await.access;
    let (status, _) = app
        .rest(Method::GET, "/api/v1/admin/dependencies", &member, None)
        .await;
    assert_eq!(status, 403);
}

/// Without a registry the check is off, and says so.
#[tokio::test]
async fn the_check_is_off_without_a_registry() {
    let app = TestApp::spawn(Backend::Embedded).await;
    app.create_superuser("root@example.com").await;
    let root = app.login("root@example.com").await.access;
    let (status, body) = app
        .rest(
            Method::POST,
            "/api/v1/admin/dependencies/check",
            &root,
            Some(serde_json::json!({})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["reason"], "DEPENDENCY_CHECK_OFF");
}
