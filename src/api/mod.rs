//! Transport: one axum router serving gRPC, gRPC-web, REST/JSON, docs, health and JWKS on one
//! listener. Handlers convert and delegate to domain services; they hold no logic.

pub mod client_address;
pub mod contract;
mod files;
mod grpc;
mod guard;
mod integrations;
mod llm;
mod metrics;
pub mod openapi;
pub mod pb;
mod realtime;
pub mod rest;
pub mod status;
mod tus;
mod validation;
mod web;

use crate::domain::apikey::ApiKeyService;
use crate::domain::audit::{AuditService, Dispatcher};
use crate::domain::auth::AuthService;
use crate::domain::dependencies::DependencyService;
use crate::domain::files::FileService;
use crate::domain::health::HealthProbe;
use crate::domain::integrations::IntegrationService;
use crate::domain::jobs::{DeadLetterService, JobMonitor, JobMonitorService};
use crate::domain::llm::LlmService;
use crate::domain::mail::Outbox;
use crate::domain::notifications::NotificationService;
use crate::domain::password::PasswordPolicy;
use crate::domain::realtime::Hub;
use crate::domain::tenancy::access::AccessControl;
use crate::domain::tenancy::directory::UserDirectory;
use crate::domain::tenancy::invitations::InvitationService;
use crate::domain::tenancy::organizations::OrganizationService;
use crate::domain::tenancy::quotas::QuotaService;
use crate::domain::tenancy::roles::RoleService;
use crate::domain::tenancy::sso::SsoService;
use crate::domain::tenancy::teams::TeamService;
use crate::domain::totp::TotpService;
use crate::domain::webhooks::WebhookService;
use axum::Router;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, any, get, on, post};
use client_address::TrustedProxies;
use contract::Contract;
pub use guard::{CallerPolicy, RequestLimits};
use guard::{Guard, GuardLayer};
use http::{HeaderName, HeaderValue, Method, header};
use metrics::Metrics;
use pb::keel::admin::v1::admin_service_server::AdminServiceServer;
use pb::keel::apikey::v1::api_key_service_server::ApiKeyServiceServer;
use pb::keel::audit::v1::audit_log_service_server::AuditLogServiceServer;
use pb::keel::auth::v1::auth_service_server::AuthServiceServer;
use pb::keel::auth::v1::o_auth_service_server::OAuthServiceServer;
use pb::keel::auth::v1::passkey_service_server::PasskeyServiceServer;
use pb::keel::file::v1::file_service_server::FileServiceServer;
use pb::keel::flag::v1::feature_flag_service_server::FeatureFlagServiceServer;
use pb::keel::integration::v1::integration_service_server::IntegrationServiceServer;
use pb::keel::invitation::v1::invitation_service_server::InvitationServiceServer;
use pb::keel::job::v1::dead_letter_service_server::DeadLetterServiceServer;
use pb::keel::job::v1::job_service_server::JobServiceServer;
use pb::keel::llm::v1::llm_service_server::LlmServiceServer;
use pb::keel::notification::v1::notification_service_server::NotificationServiceServer;
use pb::keel::organization::v1::organization_service_server::OrganizationServiceServer;
use pb::keel::quota::v1::quota_service_server::QuotaServiceServer;
use pb::keel::realtime::v1::realtime_service_server::RealtimeServiceServer;
use pb::keel::role::v1::role_service_server::RoleServiceServer;
use pb::keel::session::v1::session_service_server::SessionServiceServer;
use pb::keel::sso::v1::sso_service_server::SsoServiceServer;
use pb::keel::team::v1::team_service_server::TeamServiceServer;
use pb::keel::totp::v1::totp_service_server::TotpServiceServer;
use pb::keel::user::v1::user_service_server::UserServiceServer;
use pb::keel::webhook::v1::webhook_service_server::WebhookServiceServer;
use rest::{GrpcStack, Transcoder};
use std::sync::Arc;
use tonic::server::NamedService;
use tower::util::BoxCloneSyncService;
use tower::{Layer, ServiceExt};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;
use utoipa_swagger_ui::SwaggerUi;

/// `google.protobuf.Struct` and JSON objects, both ways (for clients of `Struct` fields).
pub use grpc::{json_to_struct, struct_to_json};

pub struct ApiDependencies {
    pub contract: Arc<Contract>,
    pub auth: Arc<AuthService>,
    pub api_keys: Arc<ApiKeyService>,
    pub totp: Arc<TotpService>,
    pub access: Arc<AccessControl>,
    pub organizations: Arc<OrganizationService>,
    pub roles: Arc<RoleService>,
    pub invitations: Arc<InvitationService>,
    pub teams: Arc<TeamService>,
    pub directory: Arc<UserDirectory>,
    pub quotas: Arc<QuotaService>,
    pub sso: Arc<SsoService>,
    pub outbox: Option<Arc<dyn Outbox>>,
    pub dead_letters: Arc<DeadLetterService>,
    pub audit: Arc<AuditService>,
    pub webhooks: Arc<WebhookService>,
    pub integrations: Arc<IntegrationService>,
    pub llm: Arc<LlmService>,
    pub notifications: Arc<NotificationService>,
    pub files: Arc<FileService>,
    pub hub: Arc<Hub>,
    pub dispatcher: Arc<Dispatcher>,
    pub dependencies: Arc<DependencyService>,
    pub flags: Arc<crate::domain::flags::FeatureFlagService>,
    pub ip_restrictions: Arc<crate::domain::tenancy::ip_rules::IpRestrictionService>,
    pub job_monitor: Arc<dyn JobMonitor>,
    pub jobs: Arc<JobMonitorService>,
    pub jwks: serde_json::Value,
    /// Readiness: the database, the cache, the storage.
    pub probes: Vec<Arc<dyn HealthProbe>>,
    /// The job workers, wherever they run (reported, not part of readiness).
    pub workers_probe: Arc<dyn HealthProbe>,
    /// The password hashing threads (their figures, in /metrics).
    pub hashing: Arc<dyn HealthProbe>,
    pub public_url: String,
    pub max_body_bytes: usize,
    /// The largest file anyone may upload (what resumable uploads announce).
    pub max_file_bytes: i64,
    pub request_limits: RequestLimits,
    /// Callers' budgets and the addresses refused outright.
    pub callers: CallerPolicy,
    /// Turns true when the server starts shutting down.
    pub draining: tokio::sync::watch::Receiver<bool>,
    /// Browser origins allowed to call the API (CORS); empty allows none but the same origin.
    pub cors_allowed_origins: Vec<String>,
    pub trusted_proxies: TrustedProxies,
    /// The bearer token `/metrics` requires, if any.
    pub metrics_token: Option<String>,
    /// Stated in the OpenAPI document on new-password fields.
    pub password_policy: PasswordPolicy,
}

/// The gRPC stack as the listener sees it: gRPC-web translation in front of the guarded
/// services.
type ListenerGrpcStack =
    BoxCloneSyncService<Request, http::Response<tonic::body::Body>, std::convert::Infallible>;

/// Keel's gRPC services as they are registered: their routes and their names.
#[derive(Default)]
struct KeelServices {
    routes: tonic::service::RoutesBuilder,
    names: Vec<&'static str>,
}

impl KeelServices {
    fn add<S>(mut self, service: S) -> Self
    where
        S: tower::Service<
                http::Request<tonic::body::Body>,
                Response = http::Response<tonic::body::Body>,
                Error = std::convert::Infallible,
            > + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes.add_service(service);
        self
    }

    /// Refuses to start when a service of the contract has no implementation registered.
    fn cover(&self, contract: &Contract) -> anyhow::Result<()> {
        for rpc in &contract.rpcs {
            let service = rpc.descriptor.parent_service();
            anyhow::ensure!(
                self.names.contains(&service.full_name()),
                "{} is in the contract but not registered in api::router",
                service.full_name()
            );
        }
        Ok(())
    }
}

pub async fn router(dependencies: ApiDependencies) -> anyhow::Result<Router> {
    let contract = dependencies.contract.clone();

    // The one list of Keel's services: each is routed and reported by gRPC health from here.
    let keel_services = KeelServices::default()
        .add(AuthServiceServer::new(grpc::AuthApi::new(
            dependencies.auth.clone(),
        )))
        .add(OAuthServiceServer::new(grpc::OAuthApi::new(
            dependencies.auth.clone(),
        )))
        .add(PasskeyServiceServer::new(grpc::PasskeyApi::new(
            dependencies.auth.clone(),
        )))
        .add(SessionServiceServer::new(grpc::SessionApi::new(
            dependencies.auth.clone(),
        )))
        .add(ApiKeyServiceServer::new(grpc::ApiKeyApi::new(
            dependencies.api_keys.clone(),
        )))
        .add(TotpServiceServer::new(grpc::TotpApi::new(
            dependencies.totp.clone(),
            dependencies.auth.clone(),
        )))
        .add(AdminServiceServer::new(grpc::AdminApi::new(
            dependencies.outbox.clone(),
            dependencies.dependencies.clone(),
        )))
        .add(OrganizationServiceServer::new(grpc::OrganizationApi::new(
            dependencies.organizations.clone(),
            dependencies.ip_restrictions.clone(),
        )))
        .add(RoleServiceServer::new(grpc::RoleApi::new(
            dependencies.roles.clone(),
        )))
        .add(InvitationServiceServer::new(grpc::InvitationApi::new(
            dependencies.invitations.clone(),
        )))
        .add(TeamServiceServer::new(grpc::TeamApi::new(
            dependencies.teams.clone(),
        )))
        .add(UserServiceServer::new(grpc::UserApi::new(
            dependencies.auth.clone(),
            dependencies.directory.clone(),
        )))
        .add(QuotaServiceServer::new(grpc::QuotaApi::new(
            dependencies.quotas.clone(),
        )))
        .add(SsoServiceServer::new(grpc::SsoApi::new(
            dependencies.sso.clone(),
        )))
        .add(FeatureFlagServiceServer::new(grpc::FeatureFlagApi::new(
            dependencies.flags.clone(),
        )))
        .add(DeadLetterServiceServer::new(grpc::DeadLetterApi::new(
            dependencies.dead_letters.clone(),
        )))
        .add(JobServiceServer::new(grpc::JobApi::new(
            dependencies.jobs.clone(),
        )))
        .add(AuditLogServiceServer::new(grpc::AuditLogApi::new(
            dependencies.audit.clone(),
        )))
        .add(WebhookServiceServer::new(grpc::WebhookApi::new(
            dependencies.webhooks.clone(),
        )))
        .add(IntegrationServiceServer::new(grpc::IntegrationApi::new(
            dependencies.integrations.clone(),
        )))
        .add(LlmServiceServer::new(grpc::LlmApi::new(
            dependencies.llm.clone(),
        )))
        .add(NotificationServiceServer::new(grpc::NotificationApi::new(
            dependencies.notifications.clone(),
        )))
        .add(RealtimeServiceServer::new(grpc::RealtimeApi::new(
            dependencies.hub.clone(),
        )))
        .add(FileServiceServer::new(grpc::FileApi::new(
            dependencies.files.clone(),
            dependencies.request_limits.timeout,
        )));
    keel_services.cover(&contract)?;

    // /metrics reports the figures of the backing services and of the hashing threads.
    let figures: Vec<Arc<dyn HealthProbe>> = (dependencies.probes.iter().cloned())
        .chain([dependencies.hashing.clone()])
        .collect();
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    let health = Arc::new(web::Health::new(
        dependencies.probes,
        dependencies.workers_probe,
        health_reporter,
        keel_services.names,
        dependencies.draining.clone(),
    ));
    health.check().await;
    tokio::spawn(web::Health::watch(
        Arc::downgrade(&health),
        dependencies.draining,
    ));
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let mut routes = keel_services.routes;
    routes
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(health_service);
    let routes = routes.routes().prepare();

    let metrics = Arc::new(Metrics::default());
    let guarded: GrpcStack = BoxCloneSyncService::new(
        GuardLayer::new(Guard::new(
            &contract,
            dependencies.auth.clone(),
            dependencies.access.clone(),
            dependencies.quotas.clone(),
            metrics.clone(),
            dependencies.request_limits,
            dependencies.callers,
        )?)
        .layer(routes),
    );
    let listener_grpc: ListenerGrpcStack =
        BoxCloneSyncService::new(tonic_web::GrpcWebLayer::new().layer(guarded.clone()));
    let transcoder = Arc::new(Transcoder::new(
        contract.clone(),
        guarded,
        dependencies.max_body_bytes,
        vec![
            ("/api/v1/files/upload", "POST"),
            ("/api/v1/files/*/content", "GET"),
            ("/api/v1/ws", "GET"),
            ("/api/v1/events/stream", "GET"),
            ("/api/v1/integrations/*/events", "POST"),
            ("/api/v1/webhooks/*", "POST"),
        ],
    ));
    let openapi = openapi::document(
        &contract,
        &dependencies.public_url,
        &dependencies.password_policy,
    );
    let hsts = dependencies
        .public_url
        .starts_with("https://")
        .then(|| HeaderValue::from_static("max-age=31536000; includeSubDomains"));

    let realtime = Arc::new(realtime::RealtimeDoor {
        hub: dependencies.hub.clone(),
        auth: dependencies.auth.clone(),
        contract: contract.clone(),
    });
    let file_door = Arc::new(files::FileDoor {
        files: dependencies.files.clone(),
        transcoder: transcoder.clone(),
        contract: contract.clone(),
    });
    let tus_door = Arc::new(tus::TusDoor {
        files: dependencies.files.clone(),
        auth: dependencies.auth.clone(),
        contract: contract.clone(),
        public_url: dependencies.public_url.clone(),
        max_file_bytes: dependencies.max_file_bytes,
    });
    let integration_door = Arc::new(integrations::IntegrationDoor {
        transcoder: transcoder.clone(),
        max_payload_bytes: dependencies.integrations.max_payload_bytes(),
    });
    let router = Router::new()
        .route(
            "/api/{*path}",
            any(rest::handle).with_state(transcoder.clone()),
        )
        .route(
            "/api/v1/llm/chat/completions",
            post(llm::chat_completions).with_state(transcoder.clone()),
        )
        // Inbound messages beside the transcoded routes on the same paths.
        .route(
            "/api/v1/integrations/{integration_id}/events",
            post(integrations::receive_by_id)
                .with_state(integration_door.clone())
                .fallback(rest::handle)
                .with_state(transcoder.clone()),
        )
        .route(
            "/api/v1/webhooks/{integration_type}",
            post(integrations::receive_by_type)
                .with_state(integration_door)
                .fallback(rest::handle)
                .with_state(transcoder.clone()),
        )
        .route(
            "/api/v1/files/upload",
            post(files::upload).with_state(file_door.clone()),
        )
        .route(
            "/api/v1/files/{file_id}/content",
            get(files::content).with_state(file_door),
        )
        .route(
            tus::UPLOADS_PATH,
            post(tus::create).with_state(tus_door.clone()),
        )
        .route(
            "/api/v1/files/uploads/{upload_id}",
            on(
                MethodFilter::HEAD
                    .or(MethodFilter::PATCH)
                    .or(MethodFilter::DELETE),
                tus::upload,
            )
            .with_state(tus_door.clone()),
        )
        .route(
            "/api/v1/ws",
            get(realtime::websocket).with_state(realtime.clone()),
        )
        .route(
            "/api/v1/events/stream",
            get(realtime::event_stream).with_state(realtime),
        )
        .route("/health", get(web::live))
        .route("/api/v1/health", get(web::live))
        .route("/health/ready", get(web::ready).with_state(health.clone()))
        .route(
            "/api/v1/health/{component}",
            get(web::component).with_state(health),
        )
        .route(
            "/.well-known/jwks.json",
            get(web::jwks).with_state(Arc::new(dependencies.jwks)),
        )
        .route(
            "/metrics",
            get(web::metrics).with_state(Arc::new(web::MetricsEndpoint {
                metrics,
                jobs: dependencies.job_monitor.clone(),
                dead_letters: dependencies.dead_letters.clone(),
                dispatcher: dependencies.dispatcher.clone(),
                webhooks: dependencies.webhooks.clone(),
                hub: dependencies.hub.clone(),
                figures,
                token: dependencies.metrics_token.clone(),
            })),
        )
        .route("/redoc", get(web::redoc_page))
        .route("/redoc/redoc.standalone.js", get(web::redoc_script))
        .merge(SwaggerUi::new("/docs").external_url_unchecked("/openapi.json", openapi))
        .fallback(grpc_or_not_found)
        .method_not_allowed_fallback(web::method_not_allowed)
        .with_state(listener_grpc)
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(dependencies.trusted_proxies),
            client_address::attach,
        ))
        .layer(PropagateRequestIdLayer::x_request_id())
        // The path only: a query may carry a token (`/api/v1/ws?token=`).
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                tracing::debug_span!("request", method = %request.method(), path = %request.uri().path())
            }),
        )
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        // Every response: no MIME sniffing, no framing, no referrer leaks.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ))
        // Browsers that reached Keel over https keep to https.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::STRICT_TRANSPORT_SECURITY,
            move |_: &Response| hsts.clone(),
        ))
        .layer(cors(&dependencies.cors_allowed_origins)?)
        .layer(axum::middleware::from_fn_with_state(
            transcoder,
            rest::plain_options,
        ))
        .layer(axum::middleware::from_fn_with_state(
            tus_door,
            tus::capabilities,
        ));
    Ok(router)
}

/// CORS for browsers on other origins (gRPC-web and REST). Nothing is allowed unless configured.
fn cors(origins: &[String]) -> anyhow::Result<CorsLayer> {
    let origins = origins
        .iter()
        .map(|origin| {
            HeaderValue::from_str(origin).map_err(|_| {
                anyhow::anyhow!("KEEL_CORS_ALLOWED_ORIGINS: invalid origin {origin:?}")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let headers = |names: &[&'static str]| -> Vec<HeaderName> {
        names
            .iter()
            .map(|name| HeaderName::from_static(name))
            .collect()
    };
    Ok(CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([
            Method::HEAD,
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers(headers(
            &[
                [
                    "authorization",
                    "content-type",
                    "x-api-key",
                    "x-organization-id",
                    "x-request-id",
                    "x-grpc-web",
                    "x-user-agent",
                    "grpc-timeout",
                ]
                .as_slice(),
                &tus::REQUEST_HEADERS,
            ]
            .concat(),
        ))
        .expose_headers(headers(
            &[
                [
                    "grpc-status",
                    "grpc-message",
                    "grpc-status-details-bin",
                    "x-request-id",
                    "retry-after",
                    "ratelimit-limit",
                    "ratelimit-remaining",
                    "ratelimit-reset",
                    "ratelimit-policy",
                ]
                .as_slice(),
                &tus::RESPONSE_HEADERS,
            ]
            .concat(),
        ))
        .max_age(std::time::Duration::from_secs(3600)))
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
