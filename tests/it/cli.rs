//! The `keel` binary as an operator runs it.

use crate::harness::{Backend, PASSWORD, TestApp, test_settings};
use serde_json::Value;
use std::process::Command;

crate::backend_tests!(create_superuser_then_sign_in);

fn keel_command(settings: &keel::config::Settings) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keel"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KEEL_DATA_DIR", settings.data_dir.clone().unwrap())
        .env("KEEL_DEPENDENCY_REGISTRY_URL", "off");
    if let Some(url) = &settings.database_url {
        command.env("KEEL_DATABASE_URL", url);
    }
    command
}

async fn create_superuser_then_sign_in(backend: Backend) {
    let data_dir = tempfile::tempdir().unwrap();
    let settings = test_settings(backend, data_dir.path());

    let migrate = keel_command(&settings).arg("migrate").output().unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );

    let created = keel_command(&settings)
        .args([
            "admin",
            "create-superuser",
            "--email",
            "root@example.com",
            "--full-name",
            "Root",
        ])
        .env("KEEL_SUPERUSER_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    assert!(String::from_utf8_lossy(&created.stdout).contains("root@example.com"));

    let again = keel_command(&settings)
        .args([
            "admin",
            "create-superuser",
            "--email",
            "root@example.com",
            "--password",
            PASSWORD,
        ])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));

    let app = TestApp::spawn_settings(settings, data_dir).await;
    let tokens = app.login("root@example.com").await;
    let me: Value = app
        .get_with_token("/api/v1/users/me", &tokens.access)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(me["is_superuser"], true);
    assert_eq!(me["email_verified"], true);

    // Registration never makes a superuser, not even the first account.
    let user = app.register("second@example.com").await;
    assert_eq!(user["is_superuser"], false);
}

#[test]
fn invalid_configuration_fails_naming_the_setting() {
    let data_dir = tempfile::tempdir().unwrap();
    let settings = test_settings(Backend::Embedded, data_dir.path());
    let output = keel_command(&settings)
        .env("KEEL_LISTEN", "not-an-address")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("KEEL_LISTEN"), "{stderr}");
}

#[test]
fn help_lists_the_settings() {
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for setting in [
        "KEEL_LISTEN",
        "KEEL_DATA_DIR",
        "KEEL_DATABASE_URL",
        "KEEL_REDIS_URL",
        "KEEL_PUBLIC_URL",
        "--config",
    ] {
        assert!(help.contains(setting), "{setting} missing from --help");
    }
}

#[test]
fn config_file_is_read_and_validated() {
    let data_dir = tempfile::tempdir().unwrap();
    let file = data_dir.path().join("keel.toml");
    std::fs::write(&file, "listen = \"127.0.0.1:99999\"\n").unwrap();
    let settings = test_settings(Backend::Embedded, data_dir.path());
    let output = keel_command(&settings)
        .args(["--config", file.to_str().unwrap(), "migrate"])
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("KEEL_LISTEN"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one clean line: {stderr}");

    std::fs::write(&file, "listen = \"127.0.0.1:0\"\nno_such_setting = 1\n").unwrap();
    let output = keel_command(&settings)
        .args(["--config", file.to_str().unwrap(), "migrate"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no_such_setting"), "{stderr}");
}

/// The development outbox says in the log that a message went, never its body: mailed links are
/// credentials, and logs travel further than the outbox.
#[tokio::test]
async fn the_log_carries_no_mailed_links() {
    use std::io::{BufRead, BufReader};
    let data_dir = tempfile::tempdir().unwrap();
    let settings = test_settings(Backend::Embedded, data_dir.path());
    let mut server = keel_command(&settings)
        .env("KEEL_LISTEN", "127.0.0.1:0")
        .env("KEEL_ARGON2_MEMORY_KIB", "1024")
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_out, lines) = std::sync::mpsc::channel::<String>();
    let stdout = server.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines_out.send(line).is_err() {
                return;
            }
        }
    });
    let next_line = || {
        lines
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("a log line")
    };
    let address = loop {
        let line = next_line();
        if let Some(rest) = line.split("address=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let response = reqwest::Client::new()
        .post(format!("http://{address}/api/v1/auth/register"))
        .json(&serde_json::json!({ "email": "logged@example.com", "password": PASSWORD, "full_name": "L" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let mut seen = Vec::new();
    let kept = loop {
        let line = next_line();
        seen.push(line.clone());
        if line.contains("kept in the outbox") {
            break line;
        }
    };
    server.kill().unwrap();
    server.wait().unwrap();
    assert!(kept.contains("logged@example.com"), "{kept}");
    assert!(
        seen.iter().all(|line| !line.contains("token=")),
        "{seen:#?}"
    );
}

/// Settings are accepted before or after the subcommand (`keel migrate --data-dir …`).
#[test]
fn flags_go_before_or_after_the_subcommand() {
    let data_dir = tempfile::tempdir().unwrap();
    let directory = data_dir.path().join("after");
    let migrate = Command::new(env!("CARGO_BIN_EXE_keel"))
        .env_clear()
        .args(["migrate", "--data-dir"])
        .arg(&directory)
        .output()
        .unwrap();
    assert!(
        migrate.status.success(),
        "{}",
        String::from_utf8_lossy(&migrate.stderr)
    );
    assert!(directory.join("keel.db").exists());
}

/// The signing key Keel generates is a PEM that OpenSSL reads, as the README's rotation
/// instructions assume.
#[test]
fn the_generated_signing_key_is_readable_by_openssl() {
    let data_dir = tempfile::tempdir().unwrap();
    let settings = test_settings(Backend::Embedded, data_dir.path());
    let migrate = keel_command(&settings).arg("migrate").output().unwrap();
    assert!(migrate.status.success());
    let key = std::fs::read_dir(data_dir.path().join("keys"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|ext| ext == "pem"))
        .expect("a generated key");
    let openssl = Command::new("openssl")
        .args(["pkey", "-noout", "-in"])
        .arg(&key)
        .output()
        .expect("openssl on the PATH");
    assert!(
        openssl.status.success(),
        "{}",
        String::from_utf8_lossy(&openssl.stderr)
    );
}
