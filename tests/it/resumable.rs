//! Resumable uploads over the tus 1.0 protocol, driven as a tus client drives them: create,
//! append, break off, ask where the upload stands, continue, finish; terminate; expire.

use crate::files::{pdf, photo, sha256};
use crate::harness::{Backend, TestApp};
use crate::organizations::user;
use base64::Engine;
use bytes::Bytes;
use reqwest::{Method, StatusCode};
use std::time::Duration;

crate::backend_tests!(
    interrupted_uploads_continue_where_they_stopped,
    uploads_are_checked_when_complete_and_can_be_terminated,
    abandoned_uploads_expire_and_are_removed,
);

const UPLOADS: &str = "/api/v1/files/uploads";

fn metadata(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(key, value)| {
            format!(
                "{key} {}",
                base64::engine::general_purpose::STANDARD.encode(value)
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A tus request's status: `method` on `path` with the protocol's version and `headers`.
pub async fn tus_status(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    headers: &[(&str, &str)],
) -> u16 {
    let mut request = app
        .http
        .request(method, app.url(path))
        .bearer_auth(token)
        .header("tus-resumable", "1.0.0");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap().status().as_u16()
}

/// `Upload-Metadata` of an upload to `organization_id`.
pub fn organization_metadata(organization_id: &str) -> String {
    metadata(&[("filename", "x.txt"), ("organization_id", organization_id)])
}

/// `POST /api/v1/files/uploads`: the upload's path on this server.
pub async fn create(app: &TestApp, token: &str, length: usize, pairs: &[(&str, &str)]) -> String {
    let response = app
        .http
        .post(app.url(UPLOADS))
        .bearer_auth(token)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", length.to_string())
        .header("upload-metadata", metadata(pairs))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["tus-resumable"], "1.0.0");
    assert!(response.headers().contains_key("upload-expires"));
    let location = response.headers()["location"].to_str().unwrap();
    let path = location.strip_prefix("http://keel.test").unwrap();
    assert!(path.starts_with(&format!("{UPLOADS}/")), "{location}");
    path.to_owned()
}

/// `HEAD`: the upload's status and its `Upload-Offset`.
async fn offset(app: &TestApp, token: &str, path: &str) -> (StatusCode, Option<usize>) {
    let response = app
        .http
        .head(app.url(path))
        .bearer_auth(token)
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .unwrap();
    let offset = response
        .headers()
        .get("upload-offset")
        .map(|value| value.to_str().unwrap().parse().unwrap());
    if response.status() == 200 {
        assert_eq!(response.headers()["cache-control"], "no-store");
    }
    (response.status(), offset)
}

async fn patch(
    app: &TestApp,
    token: &str,
    path: &str,
    at: usize,
    body: reqwest::Body,
) -> Result<reqwest::Response, reqwest::Error> {
    app.http
        .patch(app.url(path))
        .bearer_auth(token)
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", at.to_string())
        .header("content-type", "application/offset+octet-stream")
        .body(body)
        .send()
        .await
}

/// The file a finished upload at `path` became (the upload's id is the file's).
async fn finished_file(app: &TestApp, token: &str, path: &str) -> (String, serde_json::Value) {
    let id = path.rsplit('/').next().unwrap().to_owned();
    let (status, file) = app
        .rest(Method::GET, &format!("/api/v1/files/{id}"), token, None)
        .await;
    assert_eq!(status, 200, "{file}");
    (id, file)
}

/// Sends `bytes[from..]` as a tus client resumes: from the offset the server reports, again
/// while the server still finishes the broken-off request (409 or 423).
async fn resume(app: &TestApp, token: &str, path: &str, bytes: &[u8]) -> reqwest::Response {
    for _ in 0..100 {
        let (status, at) = offset(app, token, path).await;
        assert_eq!(status, 200);
        let at = at.unwrap();
        let response = patch(app, token, path, at, bytes[at..].to_vec().into())
            .await
            .unwrap();
        if response.status() != StatusCode::CONFLICT && response.status() != StatusCode::LOCKED {
            return response;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the upload never became free to continue");
}

/// Holds an append open after 4 bytes and probes with empty appends until one is refused as
/// busy; then the first ends with its 4 bytes. `false` when the probe, not the held append,
/// was first to take the upload and so the held one was refused (run it again).
async fn second_append_is_refused(app: &TestApp, token: &str) -> bool {
    let path = create(app, token, 10, &[("filename", "notes.txt")]).await;
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
    sender.send(Ok(Bytes::from_static(b"0123"))).await.unwrap();
    let body = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|chunk| (chunk, receiver))
    });
    let held = patch(app, token, &path, 0, reqwest::Body::wrap_stream(body));
    let probe = async {
        for _ in 0..100 {
            let probed = patch(app, token, &path, 0, Vec::new().into()).await;
            if probed.unwrap().status() == StatusCode::LOCKED {
                drop(sender);
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    };
    let (held, locked) = tokio::join!(held, probe);
    let held = held.unwrap();
    if held.status() == StatusCode::LOCKED {
        return false;
    }
    assert!(locked, "the probe was never refused");
    assert_eq!(held.status(), 204);
    assert_eq!(held.headers()["upload-offset"], "4");
    true
}

async fn interrupted_uploads_continue_where_they_stopped(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, alice) = user(&app, "alice@example.com").await;
    let (_, bob) = user(&app, "bob@example.com").await;

    // What the server speaks.
    let response = app
        .http
        .request(Method::OPTIONS, app.url(UPLOADS))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(response.headers()["tus-version"], "1.0.0");
    assert_eq!(
        response.headers()["tus-extension"],
        "creation,termination,expiration"
    );
    assert_eq!(response.headers()["tus-max-size"], "52428800");
    // Without the protocol's version, nothing is created.
    let response = app
        .http
        .post(app.url(UPLOADS))
        .bearer_auth(&alice.access)
        .header("upload-length", "10")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 412);
    assert_eq!(response.headers()["tus-version"], "1.0.0");

    // Past two parts of S3's multipart upload (5 MiB), so both the parts and the tail are used.
    let document = {
        let mut document = pdf(11 * 1024 * 1024);
        for (index, byte) in document.iter_mut().enumerate().skip(64) {
            *byte = (index % 251) as u8;
        }
        document
    };
    let path = create(
        &app,
        &alice.access,
        document.len(),
        &[
            ("filename", "big report.pdf"),
            ("filetype", "application/pdf"),
        ],
    )
    .await;
    assert_eq!(
        offset(&app, &alice.access, &path).await,
        (StatusCode::OK, Some(0))
    );
    // Another user's token does not find it.
    assert_eq!(
        offset(&app, &bob.access, &path).await,
        (StatusCode::NOT_FOUND, None)
    );

    // The first 3 MiB, then the connection breaks.
    let sent = 3 * 1024 * 1024;
    let first: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::copy_from_slice(&document[..sent])),
        Err(std::io::Error::other("the train entered a tunnel")),
    ];
    let broken = patch(
        &app,
        &alice.access,
        &path,
        0,
        reqwest::Body::wrap_stream(futures_util::stream::iter(first)),
    )
    .await;
    assert!(broken.is_err(), "{broken:?}");
    // Where it stands, once the server has seen the break.
    let mut kept = 0;
    for _ in 0..100 {
        kept = offset(&app, &alice.access, &path).await.1.unwrap();
        if kept > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(kept > 0 && kept <= sent, "{kept}");

    // A wrong offset or body type is refused, and changes nothing.
    let response = patch(&app, &alice.access, &path, 1, vec![1_u8].into())
        .await
        .unwrap();
    assert!(
        [StatusCode::CONFLICT, StatusCode::LOCKED].contains(&response.status()),
        "{response:?}"
    );
    let response = app
        .http
        .patch(app.url(&path))
        .bearer_auth(&alice.access)
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", "0")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);

    // The rest, from wherever the server says; the upload becomes the file of the same id.
    let response = resume(&app, &alice.access, &path, &document).await;
    assert_eq!(response.status(), 204, "{:?}", response.text().await);
    assert_eq!(
        response.headers()["upload-offset"],
        document.len().to_string().as_str()
    );
    let (id, file) = finished_file(&app, &alice.access, &path).await;
    assert_eq!(file["original_filename"], "big report.pdf");
    assert_eq!(file["content_type"], "application/pdf");
    assert_eq!(file["size"], document.len().to_string());
    assert_eq!(file["checksum"], sha256(&document));
    let url = crate::files::download_url(&app, &alice.access, &id, "").await;
    let downloaded = app.http.get(&url).send().await.unwrap().bytes().await;
    assert!(downloaded.unwrap() == document, "the bytes come back whole");
    // A finished upload is no longer one.
    assert_eq!(
        offset(&app, &alice.access, &path).await,
        (StatusCode::NOT_FOUND, None)
    );
}

async fn uploads_are_checked_when_complete_and_can_be_terminated(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, alice) = user(&app, "alice@example.com").await;

    // Text declared as a PNG: refused once its bytes are all there, and nothing is kept.
    let text = b"not an image at all\n".repeat(100);
    let path = create(
        &app,
        &alice.access,
        text.len(),
        &[("filename", "fake.png"), ("filetype", "image/png")],
    )
    .await;
    let response = patch(&app, &alice.access, &path, 0, text.clone().into())
        .await
        .unwrap();
    assert_eq!(response.status(), 415);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "UNSUPPORTED_FILE_TYPE");
    assert_eq!(offset(&app, &alice.access, &path).await.0, 404);

    // A photo is re-encoded once complete, as an upload in one piece is.
    let original = photo(3000, 2000);
    let path = create(
        &app,
        &alice.access,
        original.len(),
        &[
            ("filename", "holiday.jpg"),
            ("checksum", &sha256(&original)),
        ],
    )
    .await;
    let response = patch(&app, &alice.access, &path, 0, original.clone().into())
        .await
        .unwrap();
    assert_eq!(response.status(), 204, "{:?}", response.text().await);
    // The offset is the client's bytes', whatever size the stored image has.
    assert_eq!(
        response.headers()["upload-offset"],
        original.len().to_string().as_str()
    );
    let (id, file) = finished_file(&app, &alice.access, &path).await;
    let stored = crate::files::stored_bytes(&app, &alice.access, &id).await;
    crate::files::assert_reencoded_photo(&stored, &file);

    // Bytes beyond the declared length are refused.
    let path = create(&app, &alice.access, 10, &[("filename", "notes.txt")]).await;
    let response = patch(
        &app,
        &alice.access,
        &path,
        0,
        b"0123456789ab".to_vec().into(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["reason"], "UPLOAD_TOO_LONG");

    // A length over the limit is refused before any byte is sent.
    let response = app
        .http
        .post(app.url(UPLOADS))
        .bearer_auth(&alice.access)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", (51 * 1024 * 1024).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);

    // While one request appends, another is told the upload is busy (423), and changes nothing.
    let mut refused = false;
    for _ in 0..5 {
        refused = second_append_is_refused(&app, &alice.access).await;
        if refused {
            break;
        }
    }
    assert!(refused, "a second append while the first is under way");

    // Terminated: gone, and its bytes with it.
    let path = create(&app, &alice.access, 100, &[("filename", "notes.txt")]).await;
    let response = patch(&app, &alice.access, &path, 0, vec![b'a'; 40].into())
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(response.headers()["upload-offset"], "40");
    let terminate = || {
        app.http
            .delete(app.url(&path))
            .bearer_auth(&alice.access)
            .header("tus-resumable", "1.0.0")
            .send()
    };
    assert_eq!(terminate().await.unwrap().status(), 204);
    assert_eq!(offset(&app, &alice.access, &path).await.0, 404);
    assert_eq!(terminate().await.unwrap().status(), 404);
    let (_, listed) = app
        .rest(Method::GET, "/api/v1/files", &alice.access, None)
        .await;
    assert_eq!(
        listed["files"].as_array().unwrap().len(),
        1,
        "only the photo"
    );
}

async fn abandoned_uploads_expire_and_are_removed(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.cleanup_schedule = Some("* * * * * *".into());
    })
    .await;
    let (_, alice) = user(&app, "alice@example.com").await;
    let path = create(&app, &alice.access, 100, &[("filename", "notes.txt")]).await;
    let response = patch(&app, &alice.access, &path, 0, vec![b'a'; 40].into())
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let count = || async {
        crate::jobs::query::<(i64,)>(&app.config, "SELECT COUNT(*) FROM file_uploads").await[0].0
    };
    assert_eq!(count().await, 1);

    // A day later the upload is over for its client at once, and removed by the cleanup.
    app.clock.advance(chrono::Duration::hours(25));
    let alice = app.login("alice@example.com").await;
    assert_eq!(offset(&app, &alice.access, &path).await.0, 404);
    for _ in 0..50 {
        if count().await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(count().await, 0);
    if backend == Backend::Embedded {
        let id = path.rsplit('/').next().unwrap().replace('-', "");
        let staged = app
            .config
            .data_dir
            .join(format!("files/objects/{id}.staged"));
        assert!(!staged.exists(), "{staged:?}");
    }
}
