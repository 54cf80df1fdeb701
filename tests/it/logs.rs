//! The logs of a whole flow, as `KEEL_LOG_FORMAT=json` writes them from a real process at
//! debug level: one JSON object a line, a line per RPC with its request id, caller and
//! outcome, the jobs a request queued under its request id, and never a password, a token, a
//! key or a mailed link's secret.

use crate::backend_tests;
use crate::harness::{Backend, PASSWORD, test_settings};
use crate::jobs::start_keel_logged;
use crate::smtp::Mailbox;
use serde_json::{Value, json};
use std::time::Duration;

backend_tests!(a_flow_logs_who_did_what_and_no_secret);

async fn a_flow_logs_who_did_what_and_no_secret(backend: Backend) {
    let data_dir = tempfile::tempdir().unwrap();
    let settings = test_settings(backend, data_dir.path());
    let (smtp_url, mailbox) = Mailbox::start().await;
    let (mut server, address, lines) = start_keel_logged(
        &settings,
        &smtp_url,
        &["serve"],
        &[
            ("KEEL_LOG_FORMAT", "json"),
            (
                "RUST_LOG",
                "debug,h2=info,hyper=info,hyper_util=info,tower=info,rustls=info",
            ),
        ],
    );
    let base = format!("http://{}", address.expect("the server's address"));
    let http = reqwest::Client::new();
    let post = |path: &str, token: Option<&str>, body: Value| {
        let mut request = http.post(format!("{base}{path}")).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let email = "logged@example.com";
    let new_password = "An0ther!Passw0rd";

    let registered = post(
        "/api/v1/auth/register",
        None,
        json!({ "email": email, "password": PASSWORD }),
    )
    .await
    .unwrap();
    assert_eq!(registered.status(), 201);
    let verification = mailbox.token(email, 1).await;
    let verified = post(
        "/api/v1/auth/verify-email",
        None,
        json!({ "token": verification }),
    )
    .await
    .unwrap();
    assert_eq!(verified.status(), 200);
    let login = http
        .post(format!("{base}/api/v1/auth/login"))
        .header("x-request-id", "flow-login-1")
        .json(&json!({ "email": email, "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.headers()["x-request-id"], "flow-login-1");
    let login: Value = login.json().await.unwrap();
    let refreshed: Value = post(
        "/api/v1/auth/refresh",
        None,
        json!({ "refresh_token": login["refresh_token"] }),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let access = refreshed["access_token"].as_str().unwrap().to_owned();
    let key: Value = post(
        "/api/v1/api-keys",
        Some(&access),
        json!({ "name": "logged" }),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let me = http
        .get(format!("{base}/api/v1/auth/me"))
        .header("x-api-key", key["key"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    let me: Value = me.json().await.unwrap();
    let requested = http
        .post(format!("{base}/api/v1/auth/request-password-reset"))
        .header("x-request-id", "flow-reset-1")
        .json(&json!({ "email": email }))
        .send()
        .await
        .unwrap();
    assert_eq!(requested.status(), 200);
    let reset = mailbox.link_token(email, "reset-password").await;
    let done = post(
        "/api/v1/auth/reset-password",
        None,
        json!({ "token": reset, "new_password": new_password }),
    )
    .await
    .unwrap();
    assert_eq!(done.status(), 200);
    let again: Value = post(
        "/api/v1/auth/login",
        None,
        json!({ "email": email, "password": new_password }),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let access_again = again["access_token"].as_str().unwrap().to_owned();
    let organization: Value = post(
        "/api/v1/organizations",
        Some(&access_again),
        json!({ "name": "Logged", "slug": "logged" }),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let organization_id = organization["id"].as_str().unwrap().to_owned();
    let members = http
        .get(format!(
            "{base}/api/v1/organizations/{organization_id}/members"
        ))
        .bearer_auth(&access_again)
        .send()
        .await
        .unwrap();
    assert_eq!(members.status(), 200);

    let pid = libc::pid_t::try_from(server.id()).unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let exited = tokio::task::spawn_blocking(move || server.wait().unwrap())
        .await
        .unwrap();
    assert!(exited.success());
    let logged: Vec<String> =
        std::iter::from_fn(|| lines.recv_timeout(Duration::from_secs(5)).ok()).collect();
    let entries: Vec<Value> = logged
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();

    // No secret, whole or as a JWT's signature.
    let mut secrets = vec![
        PASSWORD.to_owned(),
        new_password.to_owned(),
        verification,
        reset,
        key["key"].as_str().unwrap().to_owned(),
    ];
    for tokens in [&login, &refreshed, &again] {
        for name in ["access_token", "refresh_token"] {
            let token = tokens[name].as_str().unwrap();
            secrets.push(token.to_owned());
            secrets.extend(
                token
                    .rsplit_once('.')
                    .map(|(_, signature)| signature.to_owned()),
            );
        }
    }
    for secret in &secrets {
        assert!(secret.len() >= 12, "a secret worth looking for: {secret}");
        if let Some(line) = logged.iter().find(|line| line.contains(secret.as_str())) {
            panic!("a secret in the logs: {line}");
        }
    }

    // A line per RPC: its request id, caller and outcome.
    let rpc = |name: &str| -> Vec<&Value> {
        entries
            .iter()
            .filter(|entry| entry["target"] == "keel::rpc")
            .map(|entry| &entry["fields"])
            .filter(|fields| fields["rpc"] == name)
            .collect()
    };
    let logins = rpc("keel.auth.v1.AuthService/Login");
    assert_eq!(logins.len(), 2, "{logins:?}");
    assert_eq!(logins[0]["request_id"], "flow-login-1");
    assert_eq!(logins[0]["code"], "Ok");
    assert_eq!(logins[0]["client"], "127.0.0.1");
    assert!(logins[0]["latency_ms"].as_f64().unwrap() > 0.0);
    let by_key = rpc("keel.auth.v1.AuthService/GetMe");
    assert_eq!(by_key[0]["api_key_id"], key["api_key"]["id"]);
    assert_eq!(by_key[0]["user_id"], me["id"]);
    let listed = rpc("keel.organization.v1.OrganizationService/ListMembers");
    assert_eq!(listed[0]["organization_id"], organization_id.as_str());
    assert_eq!(listed[0]["user_id"], me["id"]);
    // The jobs a request queued log under its request id.
    assert!(
        entries.iter().any(|entry| {
            (entry["spans"].as_array().into_iter().flatten())
                .any(|span| span["name"] == "job" && span["request_id"] == "flow-reset-1")
        }),
        "no line of the reset mail's job carries the request's id"
    );
    // Every request has an id, generated when the client sent none.
    assert!(
        rpc("keel.auth.v1.AuthService/Register")[0]["request_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
}
