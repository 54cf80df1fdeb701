//! Transport: one axum router serving gRPC, gRPC-web, REST/JSON, docs, health and JWKS on one
//! listener. Handlers convert and delegate to domain services; they hold no logic.

pub mod contract;
mod grpc;
mod guard;
pub mod openapi;
pub mod pb;
pub mod rest;
pub mod status;
mod web;

use crate::domain::auth::AuthService;
use crate::domain::health::HealthProbe;
use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use contract::Contract;
use guard::{Guard, GuardLayer};
use pb::keel::auth::v1::auth_service_server::AuthServiceServer;
use rest::{GrpcStack, Transcoder};
use std::sync::Arc;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa_swagger_ui::SwaggerUi;

pub struct ApiDependencies {
    pub auth: Arc<AuthService>,
    pub jwks: serde_json::Value,
    pub probes: Vec<Arc<dyn HealthProbe>>,
    pub public_url: String,
    pub max_body_bytes: usize,
}

/// The gRPC stack as the listener sees it: gRPC-web translation in front of the guarded
/// services.
type ListenerGrpcStack =
    BoxCloneSyncService<Request, http::Response<tonic::body::Body>, std::convert::Infallible>;

pub async fn router(dependencies: ApiDependencies) -> anyhow::Result<Router> {
    let contract = Arc::new(Contract::load()?);

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AuthServiceServer<grpc::AuthApi>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let routes = tonic::service::Routes::new(AuthServiceServer::new(grpc::AuthApi::new(
        dependencies.auth.clone(),
    )))
    .add_service(reflection().build_v1()?)
    .add_service(reflection().build_v1alpha()?)
    .add_service(health_service)
    .prepare();

    let guarded: GrpcStack = BoxCloneSyncService::new(
        GuardLayer::new(Guard::new(&contract, dependencies.auth.clone())).layer(routes),
    );
    let listener_grpc: ListenerGrpcStack =
        BoxCloneSyncService::new(tonic_web::GrpcWebLayer::new().layer(guarded.clone()));
    let transcoder = Arc::new(Transcoder::new(
        contract.clone(),
        guarded,
        dependencies.max_body_bytes,
    ));
    let openapi = openapi::document(&contract, &dependencies.public_url);

    let router = Router::new()
        .route("/api/{*path}", any(rest::handle).with_state(transcoder))
        .route(
            "/health",
            get(web::health).with_state(Arc::new(dependencies.probes)),
        )
        .route(
            "/.well-known/jwks.json",
            get(web::jwks).with_state(Arc::new(dependencies.jwks)),
        )
        .route("/redoc", get(web::redoc_page))
        .route("/redoc/redoc.standalone.js", get(web::redoc_script))
        .merge(SwaggerUi::new("/docs").external_url_unchecked("/openapi.json", openapi))
        .fallback(grpc_or_not_found)
        .with_state(listener_grpc)
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid));
    Ok(router)
}

/// gRPC and gRPC-web requests (by content type) go to tonic; anything else is an unknown route.
async fn grpc_or_not_found(State(grpc): State<ListenerGrpcStack>, request: Request) -> Response {
    let is_grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"));
    if !is_grpc {
        return web::not_found(request.uri().path());
    }
    let Ok(response) = grpc.oneshot(request).await;
    response.map(axum::body::Body::new).into_response()
}
