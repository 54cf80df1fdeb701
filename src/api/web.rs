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
use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How often gRPC health is brought up to date between readiness requests.
const WATCH_INTERVAL: Duration = Duration::from_secs(5);

/// The server's health: the backing services' probes. Readiness (`/health/ready`) is the
/// database's, the cache's and the storage's, answered the same on `grpc.health.v1` (for the
/// whole server, `""`, and each Keel service); the workers' probe is reported on its own and
/// in `/api/v1/health/all` but does not make an API replica unready (the workers may run in
/// other processes, and an API that is down with them helps nobody).
pub struct Health {
    readiness: Vec<Arc<dyn HealthProbe>>,
    workers: Arc<dyn HealthProbe>,
    reporter: HealthReporter,
    services: Vec<&'static str>,
    /// True once the server is shutting down: never ready again.
    draining: watch::Receiver<bool>,
}

/// One probe's answer.
struct Checked {
    probe: Arc<dyn HealthProbe>,
    healthy: bool,
    latency: Duration,
    figures: Vec<(&'static str, u64)>,
}

impl Checked {
    fn json(&self) -> serde_json::Value {
        let mut report = json!({
            "status": if self.healthy { "healthy" } else { "unhealthy" },
            "backend": self.probe.backend(),
            "latency_ms": (self.latency.as_secs_f64() * 1000.0 * 100.0).round() / 100.0,
        });
        for (name, value) in &self.figures {
            report[*name] = json!(value);
        }
        report
    }
}

impl Health {
    pub fn new(
        readiness: Vec<Arc<dyn HealthProbe>>,
        workers: Arc<dyn HealthProbe>,
        reporter: HealthReporter,
        services: Vec<&'static str>,
        draining: watch::Receiver<bool>,
    ) -> Self {
        Self {
            readiness,
            workers,
            reporter,
            services,
            draining,
        }
    }

    fn draining(&self) -> bool {
        *self.draining.borrow()
    }

    async fn run(probe: &Arc<dyn HealthProbe>) -> Checked {
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(PROBE_TIMEOUT, probe.check()).await;
        let healthy = matches!(outcome, Ok(Ok(())));
        if !healthy {
            tracing::warn!(service = probe.name(), "health check failed");
        }
        Checked {
            probe: probe.clone(),
            healthy,
            latency: started.elapsed(),
            figures: if healthy {
                probe.figures().await
            } else {
                Vec::new()
            },
        }
    }

    /// Runs the readiness probes (at once) and tells gRPC health the outcome: not ready while
    /// shutting down, whatever they say.
    async fn ready(&self) -> (bool, Vec<Checked>) {
        let checked = futures_util::future::join_all(self.readiness.iter().map(Self::run)).await;
        let healthy = !self.draining() && checked.iter().all(|check| check.healthy);
        let status = if healthy {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        for service in std::iter::once("").chain(self.services.iter().copied()) {
            self.reporter.set_service_status(service, status).await;
        }
        (healthy, checked)
    }

    /// Runs the readiness probes and tells gRPC health the outcome.
    pub async fn check(&self) {
        self.ready().await;
    }

    /// Keeps gRPC health current while the server lives, and says NOT_SERVING as soon as it
    /// starts shutting down.
    pub async fn watch(health: Weak<Health>, mut draining: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                () = tokio::time::sleep(WATCH_INTERVAL) => {}
                _ = draining.wait_for(|draining| *draining) => {}
            }
            let Some(health) = health.upgrade() else {
                return;
            };
            health.check().await;
            if health.draining() {
                return;
            }
        }
    }
}

fn health_status(healthy: bool) -> StatusCode {
    if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// `GET /health` and `GET /api/v1/health`: liveness. The process answers; its backing
/// services are readiness's business (a database outage restarts nothing).
pub async fn live() -> Response {
    Json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") })).into_response()
}

/// `GET /health/ready`: 200 when the database, the cache and the storage answer, 503 naming
/// the ones that do not; with what serves each.
pub async fn ready(State(health): State<Arc<Health>>) -> Response {
    let (healthy, checked) = health.ready().await;
    let label = |ok: bool| json!(if ok { "ok" } else { "unavailable" });
    let per_probe = |value: &dyn Fn(&Checked) -> serde_json::Value| {
        (checked.iter())
            .map(|check| (check.probe.name().to_owned(), value(check)))
            .collect::<serde_json::Map<_, _>>()
    };
    let body = json!({
        "status": label(healthy),
        "shutting_down": health.draining(),
        "checks": per_probe(&|check| label(check.healthy)),
        "backends": per_probe(&|check| json!(check.probe.backend())),
    });
    (health_status(healthy), Json(body)).into_response()
}

/// `GET /api/v1/health/{component}` (the original's routes, `db`, `redis` and `celery` among
/// them): one backing service with its latency, or `all` of them, the workers' included; 503
/// when one fails.
pub async fn component(
    State(health): State<Arc<Health>>,
    axum::extract::Path(component): axum::extract::Path<String>,
) -> Response {
    let name = match component.as_str() {
        "db" => "database",
        "redis" => "cache",
        "celery" => "workers",
        other => other,
    };
    let chosen: Vec<_> = (health.readiness.iter().chain([&health.workers]))
        .filter(|probe| name == "all" || probe.name() == name)
        .collect();
    if chosen.is_empty() {
        return not_found(&format!("/api/v1/health/{component}"));
    }
    let checked = futures_util::future::join_all(chosen.into_iter().map(Health::run)).await;
    let healthy = checked.iter().all(|check| check.healthy);
    let body = match checked.as_slice() {
        [one] if name != "all" => {
            let mut body = one.json();
            body["name"] = json!(name);
            body
        }
        all => json!({
            "status": if healthy { "healthy" } else { "unhealthy" },
            "checks": all
                .iter()
                .map(|check| (check.probe.name().to_owned(), check.json()))
                .collect::<serde_json::Map<_, _>>(),
        }),
    };
    (health_status(healthy), Json(body)).into_response()
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
    /// Whose figures are reported as `keel_<name>_<figure>`.
    pub figures: Vec<Arc<dyn HealthProbe>>,
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
    // Counters end in `_total`, as Prometheus names them; the rest are gauges.
    for probe in &endpoint.figures {
        for (figure, value) in probe.figures().await {
            let name = format!("keel_{}_{figure}", probe.name());
            let kind = if figure.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            let _ = writeln!(
                text,
                "# HELP {name} {figure} of the {} ({}).\n# TYPE {name} {kind}\n{name} {value}",
                probe.name(),
                probe.backend()
            );
        }
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
