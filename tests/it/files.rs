//! Files: uploads over REST (multipart) and gRPC (client streaming), checked by content and
//! hashed; signed download URLs served with ranges; quotas counted exactly under concurrency.

use crate::audit::wait_for_entries;
use crate::harness::{Backend, TestApp, rest_violations, with_token};
use crate::organizations::{add_member, create_organization, user};
use keel::api::pb::keel::file::v1::file_service_client::FileServiceClient;
use keel::api::pb::keel::file::v1::{
    DownloadFileRequest, UploadFileRequest, UploadHeader, download_file_response,
    upload_file_request,
};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

crate::backend_tests!(
    api_keys_reach_personal_files_by_their_scopes,
    storage_goes_after_retention_and_with_its_organization,
    images_are_stored_upright_bounded_and_without_metadata,
    files_round_trip_on_every_door,
    contents_decide_what_a_file_is,
    quotas_hold_under_concurrent_uploads,
);

/// A JPEG's first bytes: enough for its type, not an image.
const JPEG: &[u8] = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00";

/// `size` bytes that are a PDF by their first bytes (PDFs are stored as sent).
pub fn pdf(size: usize) -> Vec<u8> {
    let mut bytes = b"%PDF-1.7\n".to_vec();
    bytes.resize(size, 7);
    bytes
}

/// A real JPEG photo of `width` × `height`, with an EXIF block that says "rotate 90°" and
/// carries a GPS position.
pub fn photo(width: u32, height: u32) -> Vec<u8> {
    let pixels = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 90])
    });
    let mut jpeg = Vec::new();
    image::DynamicImage::ImageRgb8(pixels)
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    let mut tiff = b"II*\0\x08\0\0\0\x01\0\x12\x01\x03\0\x01\0\0\0\x06\0\0\0\0\0\0\0".to_vec();
    tiff.extend_from_slice(b"GPS 48.8584 N 2.2945 E");
    let mut exif = b"Exif\0\0".to_vec();
    exif.extend_from_slice(&tiff);
    let length = u16::try_from(exif.len() + 2).unwrap().to_be_bytes();
    let mut photo = jpeg[..2].to_vec();
    photo.extend_from_slice(&[0xFF, 0xE1, length[0], length[1]]);
    photo.extend_from_slice(&exif);
    photo.extend_from_slice(&jpeg[2..]);
    photo
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// `POST /api/v1/files/upload` with text `fields` first, then the file.
pub async fn upload(
    app: &TestApp,
    token: &str,
    fields: &[(&str, &str)],
    filename: &str,
    content_type: &str,
    bytes: Vec<u8>,
) -> (u16, Value) {
    let mut form = reqwest::multipart::Form::new();
    for (name, value) in fields {
        form = form.text(name.to_string(), value.to_string());
    }
    let part = reqwest::multipart::Part::bytes(bytes)
        .file_name(filename.to_owned())
        .mime_str(content_type)
        .unwrap();
    form = form.part("file", part);
    let response = app
        .http
        .post(app.url("/api/v1/files/upload"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn grpc_upload(
    app: &TestApp,
    token: &str,
    header: UploadHeader,
    chunks: Vec<Vec<u8>>,
) -> Result<keel::api::pb::keel::file::v1::File, tonic::Status> {
    let mut messages = vec![UploadFileRequest {
        part: Some(upload_file_request::Part::Header(header)),
    }];
    messages.extend(chunks.into_iter().map(|chunk| UploadFileRequest {
        part: Some(upload_file_request::Part::Chunk(chunk.into())),
    }));
    let mut client = FileServiceClient::new(app.channel().await);
    let request = with_token(futures_util::stream::iter(messages), token);
    client
        .upload_file(request)
        .await
        .map(|response| response.into_inner().file.unwrap())
}

pub async fn download_url(app: &TestApp, token: &str, file_id: &str, query: &str) -> String {
    let (status, body) = app
        .rest(
            Method::GET,
            &format!("/api/v1/files/{file_id}/download{query}"),
            token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // Made for the configured public URL, served by this test's server.
    let url = body["download_url"].as_str().unwrap();
    url.replace("http://keel.test", &app.base_url)
}

/// The value of `name` in `url`'s query.
fn query_value(url: &str, name: &str) -> String {
    let query = url.split_once('?').unwrap().1;
    form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == name)
        .unwrap()
        .1
        .into_owned()
}

async fn files_round_trip_on_every_door(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, alice) = user(&app, "alice@example.com").await;
    let (bob_id, bob) = user(&app, "bob@example.com").await;

    // REST: a personal document, its name cleaned, its checksum checked.
    let document = pdf(100_000);
    let checksum = sha256(&document);
    let (status, file) = upload(
        &app,
        &alice.access,
        &[("description", "a report"), ("checksum", &checksum)],
        "../../etc/report.pdf",
        "application/pdf",
        document.clone(),
    )
    .await;
    assert_eq!(status, 201, "{file}");
    let id = file["id"].as_str().unwrap().to_owned();
    assert_eq!(file["original_filename"], "report.pdf");
    assert_eq!(file["content_type"], "application/pdf");
    assert_eq!(file["size"], "100000");
    assert_eq!(file["checksum"], checksum.as_str());
    assert_eq!(file["organization_id"], "");
    assert_eq!(file["description"], "a report");
    assert_eq!(file["filename"], format!("{}.pdf", id.replace('-', "")));
    let (status, listed) = app
        .rest(Method::GET, "/api/v1/files", &alice.access, None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(listed["files"][0], file);
    let (status, got) = app
        .rest(
            Method::GET,
            &format!("/api/v1/files/{id}"),
            &alice.access,
            None,
        )
        .await;
    assert_eq!((status.as_u16(), &got), (200, &file));
    // Nobody else sees a personal file.
    let (status, body) = app
        .rest(
            Method::GET,
            &format!("/api/v1/files/{id}"),
            &bob.access,
            None,
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["reason"].as_str()),
        (404, Some("FILE_NOT_FOUND"))
    );

    // The download URL serves the bytes without credentials, whole or in ranges: a URL Keel
    // signs and serves on local disk, the bucket's own presigned URL on S3.
    let on_s3 = backend == Backend::Services;
    assert_eq!(file["storage_provider"], if on_s3 { "s3" } else { "local" });
    let url = download_url(&app, &alice.access, &id, "").await;
    if on_s3 {
        let endpoint = std::env::var("KEEL_TEST_S3_ENDPOINT").unwrap();
        assert!(url.starts_with(&endpoint), "{url}");
        assert!(url.contains("X-Amz-Signature="), "{url}");
    } else {
        assert!(url.starts_with(&app.base_url), "{url}");
    }
    let response = app.http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "application/pdf");
    assert!(
        headers["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment; filename=\"report.pdf\""),
        "{headers:?}"
    );
    if !on_s3 {
        assert_eq!(headers["etag"], format!("\"{checksum}\"").as_str());
        assert_eq!(headers["x-content-type-options"], "nosniff");
    }
    assert_eq!(
        response.bytes().await.unwrap().as_ref(),
        document.as_slice()
    );
    let partial = app
        .http
        .get(&url)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(partial.status(), 206);
    assert_eq!(partial.headers()["content-range"], "bytes 10-19/100000");
    assert_eq!(partial.bytes().await.unwrap().as_ref(), &document[10..20]);
    let unsatisfiable = app
        .http
        .get(&url)
        .header("range", "bytes=100000-")
        .send()
        .await
        .unwrap();
    assert_eq!(unsatisfiable.status(), 416);
    // A tampered URL (a later expiry, another disposition, another file, a changed signature)
    // is refused.
    let later = if on_s3 {
        url.replace("X-Amz-Expires=3600", "X-Amz-Expires=7200")
    } else {
        let expires = query_value(&url, "expires");
        url.replace(
            &format!("expires={expires}"),
            &format!("expires={}", expires.parse::<i64>().unwrap() + 3600),
        )
    };
    let other = uuid::Uuid::now_v7();
    let signature = query_value(
        &url,
        if on_s3 {
            "X-Amz-Signature"
        } else {
            "signature"
        },
    );
    let forged = format!("{}{}", &signature[1..], &signature[..1]);
    for tampered in [
        later,
        url.replacen("attachment", "inline", 1),
        url.replace(&id, &other.to_string())
            .replace(&id.replace('-', ""), &other.simple().to_string()),
        url.replace(&signature, &forged),
    ] {
        assert_ne!(tampered, url);
        let response = app.http.get(&tampered).send().await.unwrap();
        assert_eq!(response.status(), 403, "{tampered}");
    }
    // A URL for a minute, issued two hours ago, has expired.
    app.clock.advance(chrono::Duration::hours(-2));
    let stale = download_url(&app, &alice.access, &id, "?expires_in=60").await;
    app.clock.advance(chrono::Duration::hours(2));
    let response = app.http.get(&stale).send().await.unwrap();
    assert_eq!(response.status(), 403, "{stale}");
    let (status, body) = app
        .rest(
            Method::GET,
            &format!("/api/v1/files/{id}/download?expires_in=30"),
            &alice.access,
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(rest_violations(&body)[0].0, "expires_in", "{body}");

    // gRPC: an organization's file in chunks, then streamed back.
    let org = create_organization(&app, &alice.access, "acme").await;
    add_member(&app, &alice.access, &org, &bob_id, json!(["viewer"])).await;
    let text = "name,team\nada,core\n".repeat(5000).into_bytes();
    let chunks: Vec<Vec<u8>> = text.chunks(30_000).map(<[u8]>::to_vec).collect();
    let header = UploadHeader {
        filename: "people.csv".into(),
        organization_id: org.clone(),
        ..Default::default()
    };
    let shared = grpc_upload(&app, &alice.access, header, chunks)
        .await
        .unwrap();
    assert_eq!(shared.content_type, "text/csv");
    assert_eq!(shared.checksum, sha256(&text));
    assert_eq!(shared.organization_id, org);
    // The viewer reads it through the gRPC stream, and may not delete it.
    let mut client = FileServiceClient::new(app.channel().await);
    let mut stream = client
        .download_file(with_token(
            DownloadFileRequest {
                file_id: shared.id.clone(),
            },
            &bob.access,
        ))
        .await
        .unwrap()
        .into_inner();
    let mut received = Vec::new();
    let mut described = None;
    while let Some(message) = stream.message().await.unwrap() {
        match message.part.unwrap() {
            download_file_response::Part::File(file) => described = Some(file),
            download_file_response::Part::Chunk(chunk) => received.extend_from_slice(&chunk),
        }
    }
    assert_eq!(described.unwrap().id, shared.id);
    assert_eq!(received, text);
    let (status, listed) = app
        .rest(
            Method::GET,
            &format!("/api/v1/files?organization_id={org}&content_type=text/"),
            &bob.access,
            None,
        )
        .await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed["files"].as_array().unwrap().len(), 1);
    let (status, body) = app
        .rest(
            Method::DELETE,
            &format!("/api/v1/files/{}", shared.id),
            &bob.access,
            None,
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["reason"].as_str()),
        (403, Some("PERMISSION_DENIED"))
    );

    // Longer than a part of S3's multipart upload (5 MiB): sent in parts, back whole and in
    // order.
    let mut big = pdf(11 * 1024 * 1024 + 3);
    for (index, byte) in big.iter_mut().enumerate().skip(16) {
        *byte = (index % 251) as u8;
    }
    let chunks: Vec<Vec<u8>> = big.chunks(1024 * 1024).map(<[u8]>::to_vec).collect();
    let header = UploadHeader {
        filename: "big.pdf".into(),
        ..Default::default()
    };
    let stored = grpc_upload(&app, &alice.access, header, chunks)
        .await
        .unwrap();
    assert_eq!(stored.checksum, sha256(&big));
    let big_url = download_url(&app, &alice.access, &stored.id, "").await;
    let back = app
        .http
        .get(&big_url)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert!(back == big, "the bytes come back whole");
    let (status, _) = app
        .rest(
            Method::DELETE,
            &format!("/api/v1/files/{}", stored.id),
            &alice.access,
            None,
        )
        .await;
    assert_eq!(status, 200);

    // The organization's record shows the upload, by whom, with its checksum.
    let recorded = wait_for_entries(
        &app,
        &alice.access,
        &format!("/api/v1/organizations/{org}/audit-logs?action=file.uploaded"),
        |entries| !entries.is_empty(),
    )
    .await;
    assert_eq!(
        recorded[0]["details"]["checksum"],
        shared.checksum.as_str(),
        "{recorded:?}"
    );

    // Deleted: gone from every door, its URL included.
    let (status, _) = app
        .rest(
            Method::DELETE,
            &format!("/api/v1/files/{id}"),
            &alice.access,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .rest(
            Method::GET,
            &format!("/api/v1/files/{id}"),
            &alice.access,
            None,
        )
        .await;
    assert_eq!(status, 404);
    // Keel refuses its URL for a deleted file; the bucket no longer has the object.
    let gone = app.http.get(&url).send().await.unwrap().status();
    assert_eq!(gone, if on_s3 { 404 } else { 403 });
    let (_, listed) = app
        .rest(Method::GET, "/api/v1/files", &alice.access, None)
        .await;
    assert_eq!(listed["files"], json!([]));
}

/// A new API key of the caller's, with `body`'s scopes and organization.
async fn api_key(app: &TestApp, token: &str, body: Value) -> String {
    let (status, key) = app
        .rest(Method::POST, "/api/v1/api-keys", token, Some(body))
        .await;
    assert_eq!(status, 201, "{key}");
    key["key"].as_str().unwrap().to_owned()
}

async fn api_keys_reach_personal_files_by_their_scopes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let alice = app.verified("alice@example.com").await;
    let org = create_organization(&app, &alice.access, "acme").await;
    let (status, file) = upload(
        &app,
        &alice.access,
        &[],
        "a.pdf",
        "application/pdf",
        pdf(99),
    )
    .await;
    assert_eq!(status, 201, "{file}");
    let file_path = format!("/api/v1/files/{}", file["id"].as_str().unwrap());

    let unscoped = api_key(&app, &alice.access, json!({ "name": "none" })).await;
    let reader = api_key(
        &app,
        &alice.access,
        json!({ "name": "r", "scopes": ["file:read"] }),
    )
    .await;
    let writer = api_key(
        &app,
        &alice.access,
        json!({ "name": "w", "scopes": ["file:create"] }),
    )
    .await;
    let bound = api_key(
        &app,
        &alice.access,
        json!({ "name": "b", "scopes": ["file:read", "file:create"], "organization_id": org }),
    )
    .await;
    let outcomes = [
        (&unscoped, 403, 403, 403),
        (&reader, 200, 200, 403),
        (&writer, 403, 403, 201),
        (&bound, 403, 403, 403),
    ];
    for (key, lists, reads, uploads) in outcomes {
        let (status, body) = app.rest(Method::GET, "/api/v1/files", key, None).await;
        assert_eq!(status, lists, "{body}");
        assert_eq!(app.rest(Method::GET, &file_path, key, None).await.0, reads);
        let (status, body) = upload(&app, key, &[], "b.pdf", "application/pdf", pdf(9)).await;
        assert_eq!(status, uploads, "{body}");
    }
}

/// The size of the object under `key` in the test server's storage, if there is one.
pub async fn object_size(app: &TestApp, key: &str) -> Option<u64> {
    use keel::domain::files::ObjectStore;
    match &app.config.s3 {
        Some(s3) => {
            keel::objects::S3Objects::connect(s3)
                .await
                .unwrap()
                .size(key)
                .await
        }
        None => {
            keel::objects::LocalObjects::open(&app.config.data_dir.join("files"))
                .unwrap()
                .size(key)
                .await
        }
    }
    .unwrap()
}

async fn storage_goes_after_retention_and_with_its_organization(backend: Backend) {
    let app = TestApp::spawn_with(backend, |settings| {
        settings.cleanup_schedule = Some("* * * * * *".into());
    })
    .await;
    let (_, alice) = user(&app, "alice@example.com").await;
    let org = create_organization(&app, &alice.access, "acme").await;
    let mut ids = Vec::new();
    for organization in ["", org.as_str()] {
        let (status, file) = upload(
            &app,
            &alice.access,
            &[("organization_id", organization)],
            "a.pdf",
            "application/pdf",
            pdf(1000),
        )
        .await;
        assert_eq!(status, 201, "{file}");
        ids.push(file["id"].as_str().unwrap().replace('-', ""));
    }
    // An organization's upload, left unfinished.
    let unfinished = crate::resumable::create(
        &app,
        &alice.access,
        100,
        &[("organization_id", org.as_str()), ("filename", "b.txt")],
    )
    .await;
    let (personal, shared) = (&ids[0], &ids[1]);
    let rows = |sql: &'static str| crate::jobs::query::<(i64,)>(&app.config, sql);
    let eventually = |sql: &'static str, expected: i64| async move {
        for _ in 0..100 {
            if rows(sql).await[0].0 == expected {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("{sql} never reached {expected}");
    };

    // Deleted: out of reach at once, its bytes kept for the retention period.
    let (status, _) = app
        .rest(
            Method::DELETE,
            &format!("/api/v1/files/{}", uuid::Uuid::parse_str(personal).unwrap()),
            &alice.access,
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        object_size(&app, &format!("objects/{personal}")).await,
        None
    );
    assert_eq!(
        object_size(&app, &format!("trash/{personal}")).await,
        Some(1000)
    );
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(rows("SELECT COUNT(*) FROM files").await[0].0, 2);
    // Past it (7 days), the row and the bytes go.
    app.clock.advance(chrono::Duration::days(8));
    eventually("SELECT COUNT(*) FROM files", 1).await;
    eventually("SELECT COUNT(*) FROM object_purges", 0).await;
    assert_eq!(object_size(&app, &format!("trash/{personal}")).await, None);

    // The organization's file and unfinished upload go with the organization.
    let alice = app.login("alice@example.com").await;
    let (status, body) = app
        .rest(
            Method::DELETE,
            &format!("/api/v1/organizations/{org}"),
            &alice.access,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eventually("SELECT COUNT(*) FROM files", 0).await;
    eventually("SELECT COUNT(*) FROM file_uploads", 0).await;
    eventually("SELECT COUNT(*) FROM object_purges", 0).await;
    assert_eq!(object_size(&app, &format!("objects/{shared}")).await, None);
    if backend == Backend::Embedded {
        let id = unfinished.rsplit('/').next().unwrap().replace('-', "");
        let staged = app
            .config
            .data_dir
            .join(format!("files/objects/{id}.staged"));
        assert!(!staged.exists(), "{staged:?}");
    }
}

/// The stored image's bytes, through its download URL.
pub async fn stored_bytes(app: &TestApp, token: &str, file_id: &str) -> Vec<u8> {
    let url = download_url(app, token, file_id, "").await;
    let response = app.http.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.bytes().await.unwrap().to_vec()
}

/// The checks of an image stored from `photo(3000, 2000)`: turned upright by its EXIF
/// orientation (2000 × 3000), shrunk to fit 1920, re-encoded without the EXIF block.
pub fn assert_reencoded_photo(stored: &[u8], file: &Value) {
    use image::GenericImageView;
    let decoded = image::load_from_memory(stored).unwrap();
    assert_eq!(decoded.dimensions(), (1280, 1920));
    assert!(!stored.windows(4).any(|window| window == b"Exif"));
    assert!(!stored.windows(3).any(|window| window == b"GPS"));
    assert_eq!(file["content_type"], "image/jpeg");
    assert_eq!(file["size"], stored.len().to_string());
    assert_eq!(file["checksum"], sha256(stored));
}

async fn images_are_stored_upright_bounded_and_without_metadata(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, alice) = user(&app, "alice@example.com").await;

    // The client's checksum is of what it sent; the file's is of what is stored.
    let original = photo(3000, 2000);
    let (status, file) = upload(
        &app,
        &alice.access,
        &[("checksum", &sha256(&original))],
        "holiday.jpg",
        "image/jpeg",
        original.clone(),
    )
    .await;
    assert_eq!(status, 201, "{file}");
    let id = file["id"].as_str().unwrap().to_owned();
    let stored = stored_bytes(&app, &alice.access, &id).await;
    assert_reencoded_photo(&stored, &file);
    assert_ne!(file["checksum"], sha256(&original));

    // Thumbnails of the configured sizes, made once, fitted inside their box.
    let thumb_url = download_url(&app, &alice.access, &id, "?thumb=100x100").await;
    let thumb = app.http.get(&thumb_url).send().await.unwrap();
    assert_eq!(thumb.status(), 200);
    assert_eq!(thumb.headers()["content-type"], "image/jpeg");
    let thumb = image::load_from_memory(&thumb.bytes().await.unwrap()).unwrap();
    assert_eq!((thumb.width(), thumb.height()), (67, 100));
    // A size not configured, and not a size at all.
    for query in ["?thumb=123x45", "?thumb=big"] {
        let (status, body) = app
            .rest(
                Method::GET,
                &format!("/api/v1/files/{id}/download{query}"),
                &alice.access,
                None,
            )
            .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(rest_violations(&body)[0].0, "thumb", "{body}");
    }
    if backend == Backend::Embedded {
        // The box is signed into Keel's URL.
        let other = thumb_url.replace("thumb=100x100", "thumb=300x300");
        assert_eq!(app.http.get(&other).send().await.unwrap().status(), 403);
    }
    let document = upload(
        &app,
        &alice.access,
        &[],
        "a.pdf",
        "application/pdf",
        pdf(50),
    )
    .await;
    let (status, body) = app
        .rest(
            Method::GET,
            &format!(
                "/api/v1/files/{}/download?thumb=100x100",
                document.1["id"].as_str().unwrap()
            ),
            &alice.access,
            None,
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["reason"].as_str()),
        (400, Some("NOT_AN_IMAGE"))
    );
    // Deleting the image removes its thumbnails.
    let (status, _) = app
        .rest(
            Method::DELETE,
            &format!("/api/v1/files/{id}"),
            &alice.access,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let gone = app.http.get(&thumb_url).send().await.unwrap().status();
    assert_eq!(
        gone,
        if backend == Backend::Services {
            404
        } else {
            403
        }
    );
    if backend == Backend::Embedded {
        let kept = app
            .config
            .data_dir
            .join(format!("files/thumbs/{}", id.replace('-', "")));
        assert_eq!(std::fs::read_dir(kept).unwrap().count(), 0);
    }

    // A PNG stays a PNG, shrunk to fit.
    let wide = image::RgbaImage::from_pixel(2500, 100, image::Rgba([10, 20, 30, 128]));
    let mut png = Vec::new();
    image::DynamicImage::ImageRgba8(wide)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let (status, file) = upload(&app, &alice.access, &[], "banner.png", "image/png", png).await;
    assert_eq!(status, 201, "{file}");
    assert_eq!(file["content_type"], "image/png");
    let stored = stored_bytes(&app, &alice.access, file["id"].as_str().unwrap()).await;
    let decoded = image::load_from_memory_with_format(&stored, image::ImageFormat::Png).unwrap();
    assert_eq!((decoded.width(), decoded.height()), (1920, 77));
}

async fn contents_decide_what_a_file_is(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let (_, alice) = user(&app, "alice@example.com").await;
    let reason = |body: &Value| body["reason"].as_str().unwrap_or_default().to_owned();

    // JPEG bytes labelled PNG: refused, naming what they are.
    let (status, body) = upload(
        &app,
        &alice.access,
        &[],
        "cat.png",
        "image/png",
        JPEG.to_vec(),
    )
    .await;
    assert_eq!(
        (status, reason(&body).as_str()),
        (415, "UNSUPPORTED_FILE_TYPE"),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("image/jpeg"),
        "{body}"
    );
    // Unlabelled JPEG bytes are a JPEG, whatever their name; what only starts like one is not.
    let (status, body) = upload(
        &app,
        &alice.access,
        &[],
        "cat.png",
        "application/octet-stream",
        photo(40, 30),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["content_type"], "image/jpeg");
    assert_eq!(
        body["filename"].as_str().unwrap().rsplit('.').next(),
        Some("jpg")
    );
    let (status, body) = upload(
        &app,
        &alice.access,
        &[],
        "cat.jpg",
        "image/jpeg",
        JPEG.to_vec(),
    )
    .await;
    assert_eq!(
        (status, reason(&body).as_str()),
        (415, "UNSUPPORTED_FILE_TYPE"),
        "{body}"
    );
    // A type outside the allow-list (an executable), and bytes of no known kind.
    let elf = b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x3e\x00".to_vec();
    let (status, body) = upload(&app, &alice.access, &[], "tool.txt", "text/plain", elf).await;
    assert_eq!(
        (status, reason(&body).as_str()),
        (415, "UNSUPPORTED_FILE_TYPE"),
        "{body}"
    );
    let (status, body) = upload(
        &app,
        &alice.access,
        &[],
        "x.bin",
        "application/octet-stream",
        vec![0, 1, 2, 3, 0, 9],
    )
    .await;
    assert_eq!(
        (status, reason(&body).as_str()),
        (415, "UNSUPPORTED_FILE_TYPE"),
        "{body}"
    );
    // A wrong checksum stores nothing; a malformed one is a field violation.
    let (status, body) = upload(
        &app,
        &alice.access,
        &[("checksum", &sha256(b"other"))],
        "a.pdf",
        "application/pdf",
        pdf(500),
    )
    .await;
    assert_eq!(
        (status, reason(&body).as_str()),
        (400, "CHECKSUM_MISMATCH"),
        "{body}"
    );
    let (status, body) = upload(
        &app,
        &alice.access,
        &[("checksum", "abc")],
        "a.pdf",
        "application/pdf",
        pdf(500),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(rest_violations(&body)[0].0, "header.checksum", "{body}");
    // Fields after the file come too late, unknown fields are refused, an empty file too.
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(pdf(500)).file_name("a.pdf"),
        )
        .text("organization_id", uuid::Uuid::now_v7().to_string());
    let response = app
        .http
        .post(app.url("/api/v1/files/upload"))
        .bearer_auth(&alice.access)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let (status, body) = upload(
        &app,
        &alice.access,
        &[("folder", "x")],
        "a.pdf",
        "application/pdf",
        pdf(500),
    )
    .await;
    assert_eq!(
        (status, reason(&body).as_str()),
        (400, "UNKNOWN_FIELD"),
        "{body}"
    );
    let (status, body) = upload(&app, &alice.access, &[], "a.txt", "text/plain", Vec::new()).await;
    assert_eq!(
        (status, reason(&body).as_str()),
        (400, "EMPTY_FILE"),
        "{body}"
    );
    // Not multipart at all.
    let (status, body) = app
        .rest(
            Method::POST,
            "/api/v1/files/upload",
            &alice.access,
            Some(json!({})),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["reason"].as_str()),
        (415, Some("MULTIPART_REQUIRED"))
    );
    // Without credentials.
    let response = app
        .http
        .post(app.url("/api/v1/files/upload"))
        .multipart(
            reqwest::multipart::Form::new().part("file", reqwest::multipart::Part::bytes(pdf(10))),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    // The upload's route says what it takes.
    let options = app
        .http
        .request(Method::OPTIONS, app.url("/api/v1/files/upload"))
        .send()
        .await
        .unwrap();
    assert_eq!(options.status(), 204);
    assert_eq!(options.headers()["allow"], "POST, OPTIONS");
    // Only the JPEG stayed.
    let (_, listed) = app
        .rest(Method::GET, "/api/v1/files", &alice.access, None)
        .await;
    assert_eq!(listed["files"].as_array().unwrap().len(), 1, "{listed}");
}

async fn quotas_hold_under_concurrent_uploads(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.create_superuser("root@example.com").await;
    let root = app.login("root@example.com").await;
    let (_, alice) = user(&app, "alice@example.com").await;
    let org = create_organization(&app, &alice.access, "acme").await;
    let (status, body) = app
        .rest(
            Method::PUT,
            "/api/v1/quota/limits",
            &root.access,
            Some(json!({ "organization_id": org, "max_file_size_bytes": 2000, "max_storage_bytes": 3000, "max_file_uploads_per_day": 12 })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let fields = [("organization_id", org.as_str())];

    let (status, body) = upload(
        &app,
        &alice.access,
        &fields,
        "big.pdf",
        "application/pdf",
        pdf(2001),
    )
    .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (413, Some("FILE_TOO_LARGE")),
        "{body}"
    );

    // Eight uploads of 900 bytes race for 3000: three fit, never a fourth.
    let uploads = (0..8).map(|index| {
        let (app, token, fields) = (&app, &alice.access, &fields);
        async move {
            upload(
                app,
                token,
                fields,
                &format!("{index}.pdf"),
                "application/pdf",
                pdf(900),
            )
            .await
        }
    });
    let results = futures_util::future::join_all(uploads).await;
    let stored: Vec<&Value> = results
        .iter()
        .filter(|(status, _)| *status == 201)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(stored.len(), 3, "{results:?}");
    for (status, body) in results.iter().filter(|(status, _)| *status != 201) {
        assert_eq!(
            (*status, body["reason"].as_str()),
            (429, Some("QUOTA_EXCEEDED")),
            "{body}"
        );
    }
    let used = |status: &Value| {
        status["usage"]
            .as_array()
            .unwrap()
            .iter()
            .find(|usage| usage["metric"] == "storage_bytes")
            .unwrap()["used"]
            .clone()
    };
    let (_, quota) = app
        .rest(
            Method::GET,
            &format!("/api/v1/quota/status?organization_id={org}"),
            &alice.access,
            None,
        )
        .await;
    assert_eq!(used(&quota), "2700");

    // Deleting gives the bytes back at once.
    let id = stored[0]["id"].as_str().unwrap();
    let (status, _) = app
        .rest(
            Method::DELETE,
            &format!("/api/v1/files/{id}"),
            &alice.access,
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (_, quota) = app
        .rest(
            Method::GET,
            &format!("/api/v1/quota/status?organization_id={org}"),
            &alice.access,
            None,
        )
        .await;
    assert_eq!(used(&quota), "1800");
    let (status, body) = upload(
        &app,
        &alice.access,
        &fields,
        "again.pdf",
        "application/pdf",
        pdf(900),
    )
    .await;
    assert_eq!(status, 201, "{body}");

    // The day's uploads (every attempt counts: 1 + 8 + 1 so far) run out.
    let (status, _) = upload(
        &app,
        &alice.access,
        &fields,
        "a.txt",
        "text/plain",
        b"hi".to_vec(),
    )
    .await;
    assert_eq!(status, 201);
    let (status, _) = upload(
        &app,
        &alice.access,
        &fields,
        "b.txt",
        "text/plain",
        b"hi".to_vec(),
    )
    .await;
    assert_eq!(status, 201);
    let (status, body) = upload(
        &app,
        &alice.access,
        &fields,
        "c.txt",
        "text/plain",
        b"hi".to_vec(),
    )
    .await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (429, Some("QUOTA_EXCEEDED")),
        "{body}"
    );
}
