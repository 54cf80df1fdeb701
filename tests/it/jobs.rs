//! Background jobs: queued mail survives a crash, failed deliveries are retried with backoff,
//! and a job out of attempts is given up (the dead-letter tests follow it further).

use crate::harness::{Backend, PASSWORD, TestApp, test_settings};
use crate::smtp::Mailbox;
use keel::config::Config;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

crate::backend_tests!(
    queued_mail_survives_a_crash_of_the_api,
    a_refused_delivery_is_retried,
    a_job_out_of_attempts_is_given_up,
    a_job_run_twice_has_one_effect,
    cleanup_deletes_what_has_outlived_its_use
);

/// A `keel` process, killed when dropped: a test that fails leaves none behind (one would hold
/// the test's output open, and the test run would never end).
pub struct Process(Child);

impl std::ops::Deref for Process {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `keel <args>` on `settings`'s database, mailing to `smtp_url`; answers the process and, for
/// `serve`, the address it listens on.
pub fn start_keel(
    settings: &keel::config::Settings,
    smtp_url: &str,
    args: &[&str],
) -> (Process, Option<String>) {
    let (child, address, _) = start_keel_logged(settings, smtp_url, args, &[]);
    (child, address)
}

/// As `start_keel`, with more environment variables, answering also the process's log lines
/// (those after the one that says it started).
pub fn start_keel_logged(
    settings: &keel::config::Settings,
    smtp_url: &str,
    args: &[&str],
    environment: &[(&str, &str)],
) -> (Process, Option<String>, std::sync::mpsc::Receiver<String>) {
    // reqwest is built without a default TLS provider: the process uses aws-lc-rs throughout.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let mut command = Command::new(env!("CARGO_BIN_EXE_keel"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KEEL_DATA_DIR", settings.data_dir.clone().unwrap())
        .env("KEEL_LISTEN", "127.0.0.1:0")
        .env("KEEL_ARGON2_MEMORY_KIB", "1024")
        .env("KEEL_SMTP_URL", smtp_url)
        .env("KEEL_JOB_POLL_MILLISECONDS", "20")
        .env("KEEL_DEPENDENCY_REGISTRY_URL", "off")
        .env("RUST_LOG", "info")
        .envs(environment.iter().copied())
        .args(args)
        .stdout(Stdio::piped());
    if let Some(url) = &settings.database_url {
        command.env("KEEL_DATABASE_URL", url);
    }
    if let Some(timeout) = &settings.shutdown_timeout_seconds {
        command.env("KEEL_SHUTDOWN_TIMEOUT_SECONDS", timeout);
    }
    let mut child = Process(command.spawn().expect("keel starts"));
    let stdout = child.stdout.take().unwrap();
    let (lines_out, lines) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_out.send(line);
        }
    });
    let ready = if args.first() == Some(&"worker") {
        "job workers started"
    } else {
        "keel listening"
    };
    let line = loop {
        let line = lines
            .recv_timeout(Duration::from_secs(30))
            .expect("keel logs that it started");
        if line.contains(ready) {
            break line;
        }
    };
    // `address=…` in text, `"address":"…"` in JSON.
    let address = match serde_json::from_str::<serde_json::Value>(&line) {
        Ok(json) => json["fields"]["address"].as_str().map(str::to_owned),
        Err(_) => line
            .split("address=")
            .nth(1)
            .map(|rest| rest.split_whitespace().next().unwrap().to_owned()),
    };
    (child, address, lines)
}

/// The API answers once the message is stored: killed (SIGKILL) before any worker ran, it
/// loses nothing, and a `keel worker` started later sends it.
async fn queued_mail_survives_a_crash_of_the_api(backend: Backend) {
    let data_dir = tempfile::tempdir().unwrap();
    let settings = test_settings(backend, data_dir.path());
    let (smtp_url, mailbox) = Mailbox::start().await;

    let (mut api, address) = start_keel(&settings, &smtp_url, &["serve", "--no-workers"]);
    let address = address.expect("the API's address");
    let response = reqwest::Client::new()
        .post(format!("http://{address}/api/v1/auth/register"))
        .json(&serde_json::json!({ "email": "durable@example.com", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        mailbox.messages_to("durable@example.com").is_empty(),
        "an API without workers sends nothing itself"
    );
    api.kill().unwrap();
    api.wait().unwrap();

    let (mut worker, _) = start_keel(&settings, &smtp_url, &["worker"]);
    let token = mailbox.token("durable@example.com", 1).await;
    worker.kill().unwrap();
    worker.wait().unwrap();
    assert!(!token.is_empty());
}

/// A delivery the mail server refuses for now (4xx) is tried again, after a growing wait.
async fn a_refused_delivery_is_retried(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.mailbox.refuse_next(2);
    app.register("retried@example.com").await;
    // Waits of 1 s then 2 s, each plus up to half again of jitter.
    let mut delivered = 0;
    for _ in 0..100 {
        delivered = app.mailbox.messages_to("retried@example.com").len();
        if delivered > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(delivered, 1, "delivered once, on the third attempt");
}

/// Rows of `sql` (`{jobs}` names apalis's job table) in `config`'s databases.
pub async fn query<Row>(config: &Config, sql: &str) -> Vec<Row>
where
    Row: for<'r> sqlx::FromRow<'r, sqlx::sqlite::SqliteRow>
        + for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>
        + Send
        + Unpin,
{
    use sqlx::Connection;
    if config.database_url.starts_with("sqlite:") {
        // One connection: an attached database is the connection's.
        let mut connection = sqlx::SqliteConnection::connect(&config.database_url)
            .await
            .unwrap();
        let attach = format!(
            "ATTACH DATABASE '{}' AS jobs",
            config.data_dir.join("jobs.db").display()
        );
        sqlx::query(sqlx::AssertSqlSafe(attach))
            .execute(&mut connection)
            .await
            .unwrap();
        let sql = sql.replace("{jobs}", "jobs.Jobs");
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut connection)
            .await
            .unwrap()
    } else {
        let mut connection = sqlx::PgConnection::connect(&config.database_url)
            .await
            .unwrap();
        let sql = sql.replace("{jobs}", "apalis.jobs");
        sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut connection)
            .await
            .unwrap()
    }
}

/// The statuses and attempts of the jobs in `config`'s job store.
async fn stored_jobs(config: &Config) -> Vec<(String, i64, i64)> {
    query(
        config,
        "SELECT status, CAST(attempts AS BIGINT), CAST(max_attempts AS BIGINT) FROM {jobs}",
    )
    .await
}

/// Waits until the job store holds `count` jobs, all done; answers them.
async fn all_done(config: &Config, count: usize) -> Vec<(String, i64, i64)> {
    let mut jobs = Vec::new();
    for _ in 0..100 {
        jobs = stored_jobs(config).await;
        if jobs.len() == count && jobs.iter().all(|(status, ..)| status == "Done") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    jobs
}

/// Rows in the tables the cleanup prunes: sessions, link tokens, invitations, finished jobs.
async fn prunable_rows(config: &Config) -> (i64, i64, i64, i64) {
    query(
        config,
        "SELECT (SELECT COUNT(*) FROM sessions), (SELECT COUNT(*) FROM one_time_tokens), \
         (SELECT COUNT(*) FROM invitations), \
         (SELECT COUNT(*) FROM {jobs} WHERE status = 'Done')",
    )
    .await[0]
}

/// The scheduled cleanup deletes ended sessions, expired link tokens, ended invitations and
/// finished jobs once they are old enough, and nothing before.
async fn cleanup_deletes_what_has_outlived_its_use(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.cleanup_schedule = Some("* * * * * *".into());
    })
    .await;
    let owner = app.verified("owner@example.com").await.access;
    let organization = crate::organizations::create_organization(&app, &owner, "acme").await;
    let (status, invitation) = app
        .rest(
            reqwest::Method::POST,
            &format!("/api/v1/organizations/{organization}/invitations"),
            &owner,
            Some(serde_json::json!({ "email": "invited@example.com", "roles": ["viewer"] })),
        )
        .await;
    assert_eq!(status, 201, "{invitation}");
    app.mailbox
        .wait_for("invited@example.com", "accept-invitation", 1)
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (sessions, tokens, invitations, jobs) = prunable_rows(&app.config).await;
    assert!(
        sessions > 0 && tokens > 0 && jobs > 0,
        "{sessions} {tokens} {jobs}"
    );
    assert_eq!(invitations, 1, "a pending invitation stays");

    // Past every lifetime (sessions 7 days, invitations 7) and the 30 days ended ones are kept.
    app.clock.advance(chrono::Duration::days(40));
    let mut rows = (-1, -1, -1, -1);
    for _ in 0..50 {
        rows = prunable_rows(&app.config).await;
        if rows == (0, 0, 0, 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        rows,
        (0, 0, 0, 0),
        "sessions, tokens, invitations, finished jobs"
    );
    // The session that ran out unrevoked was recorded before it went.
    let mut expired: Vec<(String,)> = Vec::new();
    for _ in 0..50 {
        expired = query(
            &app.config,
            "SELECT action FROM audit_log WHERE action = 'session.expired'",
        )
        .await;
        if !expired.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(expired, [("session.expired".to_owned(),)]);
}

/// A job that fails every attempt is given up: apalis keeps it `Killed` after its last attempt
/// and never runs it again.
async fn a_job_out_of_attempts_is_given_up(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.job_max_attempts = Some("2".into());
    })
    .await;
    app.mailbox.refuse_next(usize::MAX);
    app.register("refused@example.com").await;
    let mut jobs = Vec::new();
    for _ in 0..100 {
        jobs = stored_jobs(&app.config).await;
        if jobs.iter().any(|(status, ..)| status == "Killed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(jobs, vec![("Killed".to_owned(), 2, 2)]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        stored_jobs(&app.config).await,
        vec![("Killed".to_owned(), 2, 2)],
        "not tried again"
    );
    assert!(app.mailbox.messages_to("refused@example.com").is_empty());
}

/// A job runs at least once: one whose worker was lost before it acknowledged is put back and
/// runs again (apalis does this when a worker's heartbeat lapses). Run twice, it has one
/// effect: a reset request's job (which mints the link and queues the message) queues nothing
/// more, and the message jobs send nothing more.
async fn a_job_run_twice_has_one_effect(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let email = "twice@example.com";
    app.register(email).await;
    app.mailbox.wait_for(email, "verify-email", 1).await;
    let response = app
        .post_json(
            "/api/v1/auth/request-password-reset",
            serde_json::json!({ "email": email }),
        )
        .await;
    assert_eq!(response.status(), 200);
    app.mailbox.wait_for(email, "reset-password", 1).await;
    let done = all_done(&app.config, 3).await;
    assert_eq!(
        done.len(),
        3,
        "the verification message, the reset request and its message: {done:?}"
    );
    assert_eq!(app.mailbox.messages_to(email).len(), 2);

    // As apalis re-enqueues the jobs of a worker gone silent.
    query::<(i64,)>(
        &app.config,
        "UPDATE {jobs} SET status = 'Pending', done_at = NULL, lock_by = NULL, lock_at = NULL",
    )
    .await;
    let done = all_done(&app.config, 3).await;
    assert!(
        done.iter().all(|(status, ..)| status == "Done"),
        "all ran again (they were put back as pending): {done:?}"
    );
    assert_eq!(done.len(), 3, "no job queued twice");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.mailbox.messages_to(email).len(),
        2,
        "no message sent twice"
    );
}
