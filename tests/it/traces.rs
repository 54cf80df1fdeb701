//! Traces over OTLP from a real `keel serve` process to a real OTLP/gRPC receiver on loopback
//! (the collector's `TraceService`, from opentelemetry-proto): the caller's `traceparent` is
//! the RPC span's parent, database statements and cache calls are spans of that trace, and
//! the mail job the call queued runs in it too, with its request id. Background loops start no
//! traces of their own. Spans still buffered go out when the process stops.

use crate::backend_tests;
use crate::harness::{Backend, PASSWORD, test_settings};
use crate::jobs::start_keel_logged;
use crate::smtp::Mailbox;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::sync::{Arc, Mutex};

backend_tests!(a_call_and_its_jobs_are_one_trace);

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Span>>>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans = request
            .into_inner()
            .resource_spans
            .into_iter()
            .flat_map(|resource| resource.scope_spans)
            .flat_map(|scope| scope.spans);
        self.spans.lock().unwrap().extend(spans);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// The receiver on an ephemeral loopback port; answers its endpoint.
async fn start_receiver() -> (Receiver, String) {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let service = TraceServiceServer::new(receiver.clone());
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
    });
    (receiver, format!("http://{address}"))
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span
        .attributes
        .iter()
        .find(|attribute| attribute.key == key)?
        .value
        .as_ref()?
        .value
        .as_ref()?;
    Some(match value {
        AnyValue::StringValue(text) => text.clone(),
        AnyValue::IntValue(number) => number.to_string(),
        other => format!("{other:?}"),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

async fn a_call_and_its_jobs_are_one_trace(backend: Backend) {
    let (receiver, endpoint) = start_receiver().await;
    let data_dir = tempfile::tempdir().unwrap();
    let settings = test_settings(backend, data_dir.path());
    let (smtp_url, mailbox) = Mailbox::start().await;
    let (mut server, address, _lines) = start_keel_logged(
        &settings,
        &smtp_url,
        &["serve"],
        &[("KEEL_OTLP_ENDPOINT", endpoint.as_str())],
    );
    let base = format!("http://{}", address.expect("the server's address"));

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let registered = reqwest::Client::new()
        .post(format!("{base}/api/v1/auth/register"))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .header("x-request-id", "traced-register-1")
        .json(&serde_json::json!({ "email": "traced@example.com", "password": PASSWORD }))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);
    // The verification mail, sent by a job.
    mailbox.token("traced@example.com", 1).await;
    let refused = reqwest::Client::new()
        .post(format!("{base}/api/v1/auth/login"))
        .json(&serde_json::json!({ "email": "traced@example.com", "password": "wrong" }))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    // Stopped, the process sends what it still holds.
    let pid = i32::try_from(server.id()).unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let stopped = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap();
    assert!(stopped.unwrap().success());
    let spans = receiver.spans.lock().unwrap().clone();
    let in_trace: Vec<&Span> = spans
        .iter()
        .filter(|span| hex(&span.trace_id) == trace_id)
        .collect();
    let names: Vec<&str> = in_trace.iter().map(|span| span.name.as_str()).collect();

    let rpc = in_trace
        .iter()
        .find(|span| span.name == "keel.auth.v1.AuthService/Register")
        .unwrap_or_else(|| panic!("no RPC span in the caller's trace: {names:?}"));
    assert_eq!(hex(&rpc.parent_span_id), caller_span);
    assert_eq!(
        attribute(rpc, "request_id").as_deref(),
        Some("traced-register-1")
    );
    assert_eq!(attribute(rpc, "rpc.grpc.status_code").as_deref(), Some("0"));
    let system = match backend {
        Backend::Embedded => "sqlite",
        Backend::Services => "postgresql",
    };
    let statements: Vec<&&Span> = in_trace.iter().filter(|span| span.name == "db").collect();
    assert!(!statements.is_empty(), "no database spans: {names:?}");
    assert!(
        statements
            .iter()
            .all(|span| attribute(span, "db.system").as_deref() == Some(system))
    );
    assert!(
        statements
            .iter()
            .any(|span| span.parent_span_id == rpc.span_id),
        "a statement of the RPC's own: {names:?}"
    );
    assert!(
        in_trace.iter().any(|span| span.name == "cache"),
        "no cache spans: {names:?}"
    );
    let jobs: Vec<&&Span> = in_trace
        .iter()
        .filter(|span| span.name == "job mail")
        .collect();
    assert_eq!(jobs.len(), 1, "the verification mail: {names:?}");
    for job in jobs {
        assert_eq!(
            attribute(job, "request_id").as_deref(),
            Some("traced-register-1")
        );
    }
    // Every span belongs to a call or a job: the loops that poll the database (events,
    // deliveries) start no traces.
    let roots: Vec<&str> = spans
        .iter()
        .filter(|span| span.parent_span_id.is_empty())
        .map(|span| span.name.as_str())
        .collect();
    assert!(
        roots
            .iter()
            .all(|name| name.starts_with("keel.") || name.starts_with("job ")),
        "{roots:?}"
    );
    // A call without a traceparent starts a trace of its own; a refusal is an error span.
    let login = spans
        .iter()
        .find(|span| span.name == "keel.auth.v1.AuthService/Login")
        .unwrap_or_else(|| panic!("no span of the sign-in: {names:?}"));
    assert_ne!(hex(&login.trace_id), trace_id);
    assert!(login.parent_span_id.is_empty());
    assert_eq!(
        attribute(login, "rpc.grpc.status_code").as_deref(),
        Some("16")
    );
    assert_eq!(
        login.status.as_ref().map(|status| status.code),
        Some(opentelemetry_proto::tonic::trace::v1::status::StatusCode::Error as i32)
    );
}
