//! Clients generated from the served OpenAPI document, as a new user would make them, run a
//! first flow against the server: register, sign in, create an organization, list members.
//! Python: `openapi-python-client`; TypeScript: `openapi-typescript` types with
//! `openapi-fetch`, type-checked by `tsc`. The flows are `tests/clients/flow.{py,mts}`.

use crate::harness::{Backend, TestApp, tool};
use std::path::Path;
use tokio::process::Command;

const FLOWS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_python_client_runs_a_flow() {
    let Some(venv) = tool("KEEL_TEST_PYTHON_VENV", "Python virtualenv") else {
        return;
    };
    let app = TestApp::spawn(Backend::Embedded).await;
    let work = tempfile::tempdir().unwrap();
    let document = served_document(&app, work.path()).await;
    run(Command::new(venv.join("bin/openapi-python-client"))
        .current_dir(work.path())
        // Its post-hooks run `ruff` from the path.
        .env("PATH", with_path(&venv.join("bin")))
        .args([
            "generate",
            "--meta",
            "none",
            "--output-path",
            "keel_client",
            "--path",
        ])
        .arg(&document))
    .await;
    let output = run(Command::new(venv.join("bin/python"))
        .current_dir(work.path())
        .env("PYTHONPATH", work.path())
        .arg(Path::new(FLOWS).join("flow.py"))
        .args([&app.base_url, "py@example.com"]))
    .await;
    assert!(output.contains("python client flow: ok"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_typescript_client_runs_a_flow() {
    let Some(node_modules) = tool("KEEL_TEST_NODE_MODULES", "node_modules") else {
        return;
    };
    let app = TestApp::spawn(Backend::Embedded).await;
    let work = tempfile::tempdir().unwrap();
    let document = served_document(&app, work.path()).await;
    std::os::unix::fs::symlink(&node_modules, work.path().join("node_modules")).unwrap();
    std::fs::copy(
        Path::new(FLOWS).join("flow.mts"),
        work.path().join("flow.mts"),
    )
    .unwrap();
    std::fs::write(
        work.path().join("tsconfig.json"),
        r#"{
  "compilerOptions": {
    "target": "es2022", "module": "nodenext", "moduleResolution": "nodenext",
    "strict": true, "skipLibCheck": true, "types": ["node"]
  },
  "files": ["flow.mts"]
}"#,
    )
    .unwrap();
    let bin = node_modules.join(".bin");
    run(Command::new(bin.join("openapi-typescript"))
        .current_dir(work.path())
        .arg(&document)
        .args(["--output", "keel.d.ts"]))
    .await;
    run(Command::new(bin.join("tsc"))
        .current_dir(work.path())
        .args(["-p", "."]))
    .await;
    let output = run(Command::new("node").current_dir(work.path()).args([
        "flow.mjs",
        &app.base_url,
        "ts@example.com",
    ]))
    .await;
    assert!(output.contains("typescript client flow: ok"), "{output}");
}

fn with_path(dir: &Path) -> std::ffi::OsString {
    let mut dirs = vec![dir.to_path_buf()];
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    std::env::join_paths(dirs).unwrap()
}

async fn served_document(app: &TestApp, dir: &Path) -> std::path::PathBuf {
    let document = app
        .http
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let path = dir.join("keel.json");
    std::fs::write(&path, document).unwrap();
    path
}

/// Runs a step, failing the test with its output when it fails; answers its standard output.
async fn run(command: &mut Command) -> String {
    let output = command.output().await.expect("the step starts");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{command:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
