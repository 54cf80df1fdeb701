//! Graceful shutdown of a real `keel serve` process: at SIGTERM readiness turns NOT_SERVING
//! at once, the listener closes, realtime sockets get a close frame, a request in flight and
//! a job running finish, a request that never ends is dropped at the shutdown timeout, and
//! the process exits 0.

use crate::backend_tests;
use crate::harness::{Backend, PASSWORD, test_settings};
use crate::jobs::start_keel;
use crate::realtime::socket_at;
use crate::smtp::Mailbox;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

backend_tests!(a_stopping_server_finishes_its_work);

/// Starts an HTTP/1.1 request by hand and sends its body but for `held` last bytes.
async fn begin(address: &str, head: &str, body: &str, held: usize) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.unwrap();
    let request = format!(
        "{head}\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{}",
        body.len(),
        &body[..body.len() - held]
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

async fn a_stopping_server_finishes_its_work(backend: Backend) {
    let data_dir = tempfile::tempdir().unwrap();
    let mut settings = test_settings(backend, data_dir.path());
    settings.shutdown_timeout_seconds = Some("5".into());
    let (smtp_url, mailbox) = Mailbox::start().await;
    let (mut server, address) = start_keel(&settings, &smtp_url, &["serve"]);
    let address = address.expect("the server's address");
    let base_url = format!("http://{address}");
    let http = reqwest::Client::new();
    let register = http
        .post(format!("{base_url}/api/v1/auth/register"))
        .json(&json!({ "email": "ada@example.com", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(register.status(), 201);
    mailbox.token("ada@example.com", 1).await;
    let login: Value = http
        .post(format!("{base_url}/api/v1/auth/login"))
        .json(&json!({ "email": "ada@example.com", "password": PASSWORD }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap().to_owned();

    // A job running: the mail server takes 3 s to accept a message.
    mailbox.answer_after(Duration::from_secs(3));
    let resend = http
        .post(format!("{base_url}/api/v1/auth/resend-verification"))
        .json(&json!({ "email": "ada@example.com" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resend.status(), 200);
    mailbox.wait_received(2).await;
    // A request in flight (its body not yet all sent), one that will never end, a realtime
    // socket, and a gRPC health watch.
    let change = r#"{"full_name": "Drained"}"#;
    let mut in_flight = begin(
        &address,
        &format!("PUT /api/v1/users/me HTTP/1.1\r\nAuthorization: Bearer {token}"),
        change,
        2,
    )
    .await;
    let _never_ends = begin(&address, "POST /api/v1/auth/refresh HTTP/1.1", "{}", 1).await;
    let mut socket = socket_at(&base_url, &token).await;
    let mut health = HealthClient::new(
        tonic::transport::Endpoint::from_shared(base_url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let mut watch = health
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    let serving = watch.next().await.unwrap().unwrap();
    assert_eq!(serving.status(), ServingStatus::Serving);

    let signalled = Instant::now();
    let pid = libc::pid_t::try_from(server.id()).unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);

    // At once: not serving, and the realtime socket closed with "service restart".
    let status = tokio::time::timeout(Duration::from_secs(2), watch.next())
        .await
        .expect("health says so within 2 s")
        .unwrap()
        .unwrap();
    assert_eq!(status.status(), ServingStatus::NotServing);
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(2), socket.next()).await {
            Ok(Some(Ok(Message::Close(frame)))) => break frame,
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(u16::from(closed.unwrap().code), 1012);
    // The listener is closed: new connections are refused.
    let mut refused = false;
    for _ in 0..40 {
        if TcpStream::connect(&address).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(refused, "the listener still accepts");

    // The request in flight finishes, and its change is made.
    in_flight
        .write_all(&change.as_bytes()[change.len() - 2..])
        .await
        .unwrap();
    let mut answer = String::new();
    in_flight.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("Drained"), "{answer}");

    // The running job finishes: the message is accepted. Then, with a request still
    // unfinished, the process stops at the timeout, and says it stopped well.
    let exited = tokio::task::spawn_blocking(move || server.wait().unwrap())
        .await
        .unwrap();
    let took = signalled.elapsed();
    assert!(exited.success(), "{exited}");
    assert_eq!(mailbox.messages_to("ada@example.com").len(), 2);
    assert!(
        took >= Duration::from_secs(5) && took < Duration::from_secs(20),
        "stopped {took:?} after the signal"
    );
}
