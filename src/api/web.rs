//! The plain HTTP routes beside the API: health, JWKS, ReDoc, and the JSON 404.

use super::metrics::Metrics;
use super::status::RestError;
use crate::domain::audit::Dispatcher;
use crate::domain::health::HealthProbe;
use crate::domain::jobs::{DeadLetterService, JobMonitor};
use crate::domain::realtime::Hub;
use crate::domain::webhooks::WebhookService;
use axum::Json;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::json;
use std::fmt::Write;
use std::sync::{Arc, Weak};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often gRPC health is brought up to date between `/health` requests.
const WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// The server's readiness: the backing services' probes, reported on `/health` and, with the
/// same answer, on `grpc.health.v1` (for the whole server, `""`, and each Keel service).
pub struct Health {
    probes: Vec<Arc<dyn HealthProbe>>,
    reporter: HealthReporter,
    services: Vec<&'static str>,
}

impl Health {
    pub fn new(
        probes: Vec<Arc<dyn HealthProbe>>,
        reporter: HealthReporter,
        services: Vec<&'static str>,
    ) -> Self {
        Self {
            probes,
            reporter,
            services,
        }
    }

    /// What serves each backing service (`{"database": "postgres", "storage": "s3"}`).
    pub fn backends(&self) -> serde_json::Map<String, serde_json::Value> {
        (self.probes.iter())
            .map(|probe| (probe.name().to_owned(), json!(probe.backend())))
            .collect()
    }

    /// Runs every probe, tells gRPC health the outcome, and answers it per probe.
    pub async fn check(&self) -> (bool, serde_json::Map<String, serde_json::Value>) {
        let mut checks = serde_json::Map::new();
        let mut healthy = true;
        for probe in &self.probes {
            let outcome = tokio::time::timeout(PROBE_TIMEOUT, probe.check()).await;
            let ok = matches!(outcome, Ok(Ok(())));
            if !ok {
                tracing::warn!(service = probe.name(), "health check failed");
            }
            healthy &= ok;
            checks.insert(
                probe.name().to_owned(),
                json!(if ok { "ok" } else { "unavailable" }),
            );
        }
        let status = if healthy {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for service in std::iter::once("").chain(self.services.iter().copied()) {
            self.reporter.set_service_status(service, status).await;
        }
        (healthy, checks)
    }

    /// Keeps gRPC health current while the server lives.
    pub async fn watch(health: Weak<Health>) {
        loop {
            tokio::time::sleep(WATCH_INTERVAL).await;
            let Some(health) = health.upgrade() else {
                return;
            };
            health.check().await;
        }
    }
}

/// `GET /health`: 200 when every backing service answers, 503 naming the ones that do not;
/// with what serves each.
pub async fn health(State(health): State<Arc<Health>>) -> Response {
    let (healthy, checks) = health.check().await;
    let (status, label) = if healthy {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    let backends = health.backends();
    let body = json!({ "status": label, "checks": checks, "backends": backends });
    (status, Json(body)).into_response()
}

/// `GET /.well-known/jwks.json`.
pub async fn jwks(State(keys): State<Arc<serde_json::Value>>) -> Response {
    let mut response = Json(keys.as_ref().clone()).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    response
}

const REDOC_PAGE: &str = r#"<!DOCTYPE html>
<html>
  <head>
    <title>Keel API reference</title>
    <meta charset="utf-8"/>
    <meta name="viewport" content="width=device-width, initial-scale=1">
  </head>
  <body>
    <redoc spec-url="/openapi.json"></redoc>
    <script src="/redoc/redoc.standalone.js"></script>
  </body>
</html>
"#;

/// ReDoc, with its script vendored so that the page works offline.
static REDOC_SCRIPT: &[u8] = include_bytes!("../../assets/redoc/redoc.standalone.js");

pub async fn redoc_page() -> Html<&'static str> {
    Html(REDOC_PAGE)
}

pub async fn redoc_script() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                "application/javascript; charset=utf-8",
            ),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        REDOC_SCRIPT,
    )
        .into_response()
}

pub fn not_found(path: &str) -> Response {
    RestError::not_found_route(path).into_response()
}

pub async fn method_not_allowed(method: http::Method, uri: http::Uri) -> Response {
    RestError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        tonic::Code::Unimplemented,
        "METHOD_NOT_ALLOWED",
        format!("{method} is not allowed on {}", uri.path()),
    )
    .into_response()
}

pub struct MetricsEndpoint {
    pub metrics: Arc<Metrics>,
    pub jobs: Arc<dyn JobMonitor>,
    pub dead_letters: Arc<DeadLetterService>,
    pub dispatcher: Arc<Dispatcher>,
    pub webhooks: Arc<WebhookService>,
    pub hub: Arc<Hub>,
    /// When set, scrapers present it as a bearer token.
    pub token: Option<String>,
}

/// `GET /metrics`, in the Prometheus text format.
pub async fn metrics(State(endpoint): State<Arc<MetricsEndpoint>>, headers: HeaderMap) -> Response {
    if let Some(token) = &endpoint.token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !bool::from(presented.as_bytes().ct_eq(token.as_bytes())) {
            let mut response = RestError::new(
                StatusCode::UNAUTHORIZED,
                tonic::Code::Unauthenticated,
                "METRICS_TOKEN_REQUIRED",
                "/metrics needs the bearer token set in KEEL_METRICS_TOKEN",
            )
            .into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return response;
        }
    }
    let mut text = endpoint.metrics.render();
    // Read from the job store and the database, so they cover every worker process; left out
    // (not failed) while a store is unreachable.
    match endpoint.jobs.job_counts().await {
        Ok(counts) => {
            text.push_str(
                "# HELP keel_jobs Jobs in the job store by queue and status (done and killed ones \
                 are pruned after 7 days).\n# TYPE keel_jobs gauge\n",
            );
            for (queue, status, count) in counts {
                let _ = writeln!(
                    text,
                    "keel_jobs{{queue=\"{queue}\",status=\"{status}\"}} {count}"
                );
            }
        }
        Err(error) => tracing::warn!(%error, "counting jobs for /metrics failed"),
    }
    match endpoint.dead_letters.statistics().await {
        Ok(statistics) => {
            text.push_str(
                "# HELP keel_dead_letters Jobs given up, by status.\n# TYPE keel_dead_letters gauge\n",
            );
            for (status, count) in statistics.by_status {
                let _ = writeln!(
                    text,
                    "keel_dead_letters{{status=\"{}\"}} {count}",
                    status.as_str()
                );
            }
        }
        Err(error) => tracing::warn!(%error, "counting dead letters for /metrics failed"),
    }
    match endpoint.dispatcher.backlog().await {
        Ok(pending) => {
            let _ = writeln!(
                text,
                "# HELP keel_outbox_pending Events committed and not yet dispatched.\n\
                 # TYPE keel_outbox_pending gauge\nkeel_outbox_pending {pending}"
            );
        }
        Err(error) => tracing::warn!(%error, "counting the outbox for /metrics failed"),
    }
    match endpoint.webhooks.delivery_counts().await {
        Ok(counts) => {
            text.push_str(
                "# HELP keel_webhook_deliveries Webhook deliveries by status (finished ones are \
                 deleted after 30 days).\n# TYPE keel_webhook_deliveries gauge\n",
            );
            for (status, count) in counts {
                let _ = writeln!(
                    text,
                    "keel_webhook_deliveries{{status=\"{status}\"}} {count}"
                );
            }
        }
        Err(error) => tracing::warn!(%error, "counting webhook deliveries for /metrics failed"),
    }
    let _ = writeln!(
        text,
        "# HELP keel_realtime_connections Realtime connections open in this process.\n\
         # TYPE keel_realtime_connections gauge\nkeel_realtime_connections {}",
        endpoint.hub.connections()
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
