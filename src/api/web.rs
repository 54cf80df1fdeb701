//! The plain HTTP routes beside the API: health, JWKS, ReDoc, and the JSON 404.

use super::metrics::Metrics;
use super::status::RestError;
use crate::domain::health::HealthProbe;
use axum::Json;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// `GET /health`: 200 when every backing service answers, 503 naming the ones that do not.
pub async fn health(State(probes): State<Arc<Vec<Arc<dyn HealthProbe>>>>) -> Response {
    let mut checks = serde_json::Map::new();
    let mut healthy = true;
    for probe in probes.iter() {
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
    let (status, label) = if healthy {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
    };
    (status, Json(json!({ "status": label, "checks": checks }))).into_response()
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

/// `GET /metrics`, in the Prometheus text format.
pub async fn metrics(State(metrics): State<Arc<Metrics>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
        .into_response()
}
