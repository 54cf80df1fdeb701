//! The authorization layer: enforces each RPC's `(keel.options.v1.auth)` rule in front of the
//! tonic services. gRPC, gRPC-web and REST (which dispatches in-process through this same
//! stack) all pass here, so the three doors cannot differ.
//!
//! A request message is decoded here (with the descriptor pool) only when its RPC needs it: to
//! check the contract's field rules, and for organization permissions to read the organization
//! in scope (its `organization_id`, or the `x-organization-id` header when that is empty). The
//! admitted `Access` travels on to the handler.

use super::client_address::{ClientAddress, client_info};
use super::contract::{AuthRule, Contract, ScopeField};
use super::metrics::Metrics;
use super::status::to_status;
use super::validation::RequestValidator;
use crate::domain::apikey::looks_like_api_key;
use crate::domain::auth::AuthService;
use crate::domain::principal::{Credential, Principal};
use crate::domain::rate::{Allowance, Budget, CallerBudgets, RateLimits};
use crate::domain::tenancy::access::{Access, AccessControl, Scope};
use crate::domain::tenancy::ip_rules::{self, AddressBlock};
use crate::domain::tenancy::permissions;
use crate::domain::tenancy::quotas::QuotaService;
use crate::domain::{Error, ErrorKind};
use crate::telemetry::{self, TRACE_TARGET};
use futures_util::future::BoxFuture;
use http::{Request, Response};
use http_body_util::BodyExt;
use prost_reflect::{DynamicMessage, FieldDescriptor, MessageDescriptor};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tokio::sync::Semaphore;
use tonic::Code;
use tonic::body::Body;
use tracing::Instrument;
use uuid::Uuid;

/// The largest request message the guard reads (tonic's own limit).
const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

struct Rule {
    auth: AuthRule,
    scope_field: Option<ScopeField>,
    input: MessageDescriptor,
    /// The request declares field rules.
    validated: bool,
    /// The request is a stream of messages (the guard reads the first).
    streamed: bool,
    /// Counted against the monthly API-call quota (everything but organization management).
    metered: bool,
    /// The further budget of the RPC's group (`KEEL_RATE_LIMIT_GROUPS`), by its prefix.
    group: Option<(String, Budget)>,
}

pub struct Guard {
    rules: HashMap<String, Rule>,
    validator: RequestValidator,
    auth: Arc<AuthService>,
    access: Arc<AccessControl>,
    quotas: Arc<QuotaService>,
    metrics: Arc<Metrics>,
    limits: RequestLimits,
    /// One permit per RPC in flight.
    in_flight: Arc<Semaphore>,
    rate_limits: Arc<RateLimits>,
    budgets: CallerBudgets,
    /// Addresses refused whatever the call (`KEEL_IP_DENY`).
    denied: Vec<AddressBlock>,
}

/// What the guard is told about callers: their budgets and the addresses refused outright.
pub struct CallerPolicy {
    pub rate_limits: Arc<RateLimits>,
    pub budgets: CallerBudgets,
    pub denied: Vec<AddressBlock>,
}

/// How much work the server takes on at once, and how long a caller waits for an answer.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    pub max_in_flight: usize,
    pub timeout: std::time::Duration,
}

impl Guard {
    pub fn new(
        contract: &Contract,
        auth: Arc<AuthService>,
        access: Arc<AccessControl>,
        quotas: Arc<QuotaService>,
        metrics: Arc<Metrics>,
        limits: RequestLimits,
        callers: CallerPolicy,
    ) -> anyhow::Result<Self> {
        let validator = RequestValidator::new(contract)?;
        for (prefix, _) in &callers.budgets.groups {
            if !contract
                .rpcs
                .iter()
                .any(|rpc| rpc.grpc_path[1..].starts_with(prefix.as_str()))
            {
                anyhow::bail!(
                    "KEEL_RATE_LIMIT_GROUPS: `{prefix}` names no RPC (write a service, \
                     keel.file.v1.FileService, or an RPC, keel.auth.v1.AuthService/Register)"
                );
            }
        }
        let rules = contract
            .rpcs
            .iter()
            .map(|rpc| {
                let metered = match &rpc.auth {
                    AuthRule::Permission(permission) => !permissions::is_management(permission),
                    _ => true,
                };
                let input = rpc.descriptor.input();
                // The most specific group: its longest prefix.
                let group = callers
                    .budgets
                    .groups
                    .iter()
                    .filter(|(prefix, _)| rpc.grpc_path[1..].starts_with(prefix.as_str()))
                    .max_by_key(|(prefix, _)| prefix.len())
                    .cloned();
                let rule = Rule {
                    auth: rpc.auth.clone(),
                    scope_field: rpc.scope_field.clone(),
                    validated: validator.checks(&input),
                    streamed: rpc.descriptor.is_client_streaming(),
                    input,
                    metered,
                    group,
                };
                (rpc.grpc_path.clone(), rule)
            })
            .collect();
        Ok(Self {
            rules,
            validator,
            auth,
            access,
            quotas,
            metrics,
            limits,
            in_flight: Arc::new(Semaphore::new(limits.max_in_flight)),
            rate_limits: callers.rate_limits,
            budgets: callers.budgets,
            denied: callers.denied,
        })
    }

    /// Admits or refuses a request, attaching the `Principal` for non-public RPCs. Paths that are
    /// not Keel RPCs (reflection, health, unknown methods) pass through to tonic. `tightest`
    /// ends as the budget the caller has least left of.
    async fn admit(
        &self,
        request: &mut Request<Body>,
        tightest: &mut Option<Allowance>,
    ) -> Result<(), Error> {
        let Some(rule) = self.rules.get(request.uri().path()) else {
            return Ok(());
        };
        let address = request
            .extensions()
            .get::<ClientAddress>()
            .map(|ClientAddress(address)| *address);
        if let Some(address) = address
            && self.denied.iter().any(|block| block.contains(address))
        {
            return Err(ip_rules::not_allowed());
        }
        let anonymous = || match address {
            Some(address) => format!("ip:{address}"),
            None => "ip:unknown".to_owned(),
        };
        // Credentials first: a caller without the right kind learns nothing, not even about
        // field rules.
        let principal = match rule.auth {
            AuthRule::Public => None,
            _ => match authenticate(&self.auth, presented_credential(request.headers())).await {
                Ok(principal) => Some(Principal {
                    client: client_info(request.extensions(), request.headers()),
                    ..principal
                }),
                // Guessed credentials spend the address's budget.
                Err(error) => {
                    self.spend("anonymous", &anonymous(), self.budgets.anonymous, tightest)
                        .await?;
                    return Err(error);
                }
            },
        };
        let (class, caller, budget) = match &principal {
            None => ("anonymous", anonymous(), self.budgets.anonymous),
            Some(Principal {
                credential: Credential::Session(_),
                user,
                ..
            }) => ("user", format!("user:{}", user.id), self.budgets.user),
            Some(Principal {
                credential: Credential::ApiKey { id, .. },
                ..
            }) => ("api_key", format!("key:{id}"), self.budgets.api_key),
        };
        self.spend(class, &caller, budget, tightest).await?;
        if let Some((group, budget)) = &rule.group {
            self.spend("group", &format!("{group}|{caller}"), *budget, tightest)
                .await?;
        }
        if let (AuthRule::Session, Some(principal)) = (&rule.auth, &principal) {
            principal.session_id()?;
        }
        let message = match (rule.validated || rule.scope_field.is_some(), rule.streamed) {
            (false, _) => None,
            (true, false) => Some(read_message(request, &rule.input).await?),
            (true, true) => Some(read_first_message(request, &rule.input).await?),
        };
        if let Some(message) = message.as_ref().filter(|_| rule.validated) {
            self.validator.check(message)?;
        }
        let Some(principal) = principal else {
            return Ok(());
        };
        match (&rule.auth, &rule.scope_field, &message) {
            (AuthRule::Permission(permission), Some(scope_field), Some(message)) => {
                let scope = scope_of(message, scope_field, request.headers())?;
                let access = self
                    .access
                    .authorize(principal.clone(), scope, permission)
                    .await?;
                self.spend(
                    "organization",
                    &format!("org:{}", access.organization_id),
                    self.budgets.organization,
                    tightest,
                )
                .await?;
                if rule.metered {
                    self.quotas.meter_api_call(&access).await?;
                }
                request.extensions_mut().insert(access);
            }
            (AuthRule::Permission(permission), None, _) => {
                self.access.authorize_platform(&principal, permission)?;
            }
            (AuthRule::Permission(_), Some(_), None) => {
                unreachable!("scoped requests are always read")
            }
            (AuthRule::Public | AuthRule::Authenticated | AuthRule::Session, _, _) => {}
        }
        request.extensions_mut().insert::<Principal>(principal);
        Ok(())
    }

    /// Spends one call of `subject`'s budget (of `class`, for the metrics), keeping in
    /// `tightest` the budget with least left.
    async fn spend(
        &self,
        class: &'static str,
        subject: &str,
        budget: Budget,
        tightest: &mut Option<Allowance>,
    ) -> Result<(), Error> {
        let allowance = self.rate_limits.spend(subject, budget).await?;
        if tightest.is_none_or(|tight| {
            allowance.retry_after.is_some() || allowance.remaining < tight.remaining
        }) {
            *tightest = Some(allowance);
        }
        match allowance.retry_after {
            None => Ok(()),
            Some(_) => {
                self.metrics.rate_limited(class);
                Err(allowance.refusal("too many calls lately, try again later"))
            }
        }
    }
}

/// The `RateLimit-*` fields (IETF draft) for `allowance`: the budget, what is left of it, and
/// the seconds until it is whole again.
fn rate_limit_fields(allowance: &Allowance) -> http::HeaderMap {
    let seconds =
        |duration: std::time::Duration| duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    let mut fields = http::HeaderMap::new();
    fields.insert("ratelimit-limit", allowance.budget.limit.into());
    fields.insert("ratelimit-remaining", allowance.remaining.into());
    fields.insert("ratelimit-reset", seconds(allowance.reset).into());
    if let Ok(policy) = http::HeaderValue::from_str(&format!(
        "{};w={}",
        allowance.budget.limit,
        allowance.budget.window.as_secs()
    )) {
        fields.insert("ratelimit-policy", policy);
    }
    fields
}

/// Adds the rate-limit fields to a reply: to its headers when it is trailers-only (an
/// error), else to its trailers, where a gRPC client reads call metadata after the message.
fn with_rate_limit(response: Response<Body>, allowance: Option<Allowance>) -> Response<Body> {
    let Some(allowance) = allowance else {
        return response;
    };
    let fields = rate_limit_fields(&allowance);
    if response.headers().contains_key("grpc-status") {
        let mut response = response;
        response.headers_mut().extend(fields);
        return response;
    }
    response.map(|body| {
        Body::new(body.map_frame(move |frame| match frame.into_trailers() {
            Ok(mut trailers) => {
                trailers.extend(fields.clone());
                http_body::Frame::trailers(trailers)
            }
            Err(frame) => frame,
        }))
    })
}

/// A call's log line (`keel::rpc`, at info): who called what, and how it went. Ids only:
/// never a credential, a token or a message's contents.
struct CallLog {
    request_id: Option<String>,
    client: Option<std::net::IpAddr>,
    user_id: Option<Uuid>,
    api_key_id: Option<Uuid>,
    organization_id: Option<Uuid>,
}

impl CallLog {
    /// What the guard learned of the caller while admitting (or refusing) `request`.
    fn of(request: &Request<Body>) -> Self {
        let principal = request.extensions().get::<Principal>();
        Self {
            request_id: telemetry::request_id().filter(|id| !id.is_empty()),
            client: request
                .extensions()
                .get::<ClientAddress>()
                .map(|ClientAddress(address)| *address),
            user_id: principal.map(|principal| principal.user.id),
            api_key_id: principal.and_then(|principal| match &principal.credential {
                Credential::ApiKey { id, .. } => Some(*id),
                Credential::Session(_) => None,
            }),
            organization_id: request
                .extensions()
                .get::<Access>()
                .map(|access| access.organization_id),
        }
    }

    fn write(&self, rpc: &str, code: Code, latency: std::time::Duration) {
        tracing::info!(
            target: "keel::rpc",
            request_id = self.request_id.as_deref(),
            rpc = rpc.trim_start_matches('/'),
            code = ?code,
            latency_ms = latency.as_secs_f64() * 1000.0,
            client = self.client.map(tracing::field::display),
            user_id = self.user_id.map(tracing::field::display),
            api_key_id = self.api_key_id.map(tracing::field::display),
            organization_id = self.organization_id.map(tracing::field::display),
            "rpc"
        );
    }
}

/// A header's value as text, if it is.
fn header_text(headers: &http::HeaderMap, name: &str) -> Option<String> {
    (headers.get(name))
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// The caller behind `presented`.
pub(super) async fn authenticate(
    auth: &AuthService,
    presented: Option<Presented<'_>>,
) -> Result<Principal, Error> {
    match presented {
        Some(Presented::ApiKey(key)) => auth.authenticate_api_key(key).await,
        Some(Presented::AccessToken(token)) => auth.authenticate(token).await,
        None => Err(Error::unauthenticated(
            "MISSING_CREDENTIALS",
            "this call needs credentials: send authorization: Bearer <access token> \
             or x-api-key: <API key>",
        )),
    }
}

const ORGANIZATION_HEADER: &str = "x-organization-id";

fn server_busy() -> Error {
    Error {
        retry_after: Some(std::time::Duration::from_secs(1)),
        ..Error::new(
            ErrorKind::ResourceExhausted,
            "SERVER_BUSY",
            "the server is at capacity, try again in a moment",
        )
    }
}

fn request_timeout(timeout: std::time::Duration) -> Error {
    Error {
        retry_after: Some(std::time::Duration::from_secs(1)),
        ..Error::new(
            ErrorKind::Unavailable,
            "REQUEST_TIMEOUT",
            format!(
                "no answer within {} s; the request may still complete, check before repeating it",
                timeout.as_secs()
            ),
        )
    }
}

/// Reads the one unary gRPC message of the request, decoded as `input`, and puts its frame
/// back for tonic.
async fn read_message(
    request: &mut Request<Body>,
    input: &MessageDescriptor,
) -> Result<DynamicMessage, Error> {
    let body = std::mem::replace(request.body_mut(), Body::empty());
    let frame = http_body_util::Limited::new(body, MAX_MESSAGE_BYTES)
        .collect()
        .await
        .map_err(|_| {
            Error::invalid_argument(
                "INVALID_MESSAGE",
                "the request body could not be read (or exceeds 4 MiB)",
            )
        })?
        .to_bytes();
    let message = decode_frame(&frame, input)?;
    *request.body_mut() = Body::new(http_body_util::Full::new(frame));
    Ok(message)
}

/// Reads the first message of a client stream, decoded as `input`, and puts it back in front
/// of the rest of the stream, which is left unread.
async fn read_first_message(
    request: &mut Request<Body>,
    input: &MessageDescriptor,
) -> Result<DynamicMessage, Error> {
    let mut body = std::mem::replace(request.body_mut(), Body::empty());
    let mut head = bytes::BytesMut::new();
    let end = loop {
        if let Some(length) = head.get(1..5) {
            let length = u32::from_be_bytes([length[0], length[1], length[2], length[3]]);
            let end = usize::try_from(length).map_or(usize::MAX, |length| length + 5);
            if end > MAX_MESSAGE_BYTES {
                return Err(Error::invalid_argument(
                    "INVALID_MESSAGE",
                    "a message of the stream exceeds 4 MiB",
                ));
            }
            if head.len() >= end {
                break end;
            }
        }
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    head.extend_from_slice(&data);
                }
            }
            Some(Err(_)) => {
                return Err(Error::invalid_argument(
                    "INVALID_MESSAGE",
                    "the request stream could not be read",
                ));
            }
            None => break head.len(),
        }
    };
    let message = decode_frame(&head[..end], input)?;
    let head = futures_util::stream::once(async move {
        Ok::<_, tonic::Status>(http_body::Frame::data(head.freeze()))
    });
    let rest = http_body_util::BodyStream::new(body);
    *request.body_mut() = Body::new(http_body_util::StreamBody::new(
        futures_util::StreamExt::chain(head, rest),
    ));
    Ok(message)
}

/// Decodes the message in one uncompressed gRPC frame.
fn decode_frame(frame: &[u8], input: &MessageDescriptor) -> Result<DynamicMessage, Error> {
    let malformed = || {
        Error::invalid_argument(
            "INVALID_MESSAGE",
            "the request is not one well-formed protobuf message",
        )
    };
    let (&[compressed, length @ ..], payload) =
        frame.split_first_chunk::<5>().ok_or_else(malformed)?;
    if compressed != 0 {
        return Err(Error::invalid_argument(
            "COMPRESSED_MESSAGE",
            "compressed requests are not supported",
        ));
    }
    if usize::try_from(u32::from_be_bytes(length)).ok() != Some(payload.len()) {
        return Err(malformed());
    }
    DynamicMessage::decode(input.clone(), payload).map_err(|_| malformed())
}

/// Where a request acts: the organization its `organization_id` names, else the
/// `x-organization-id` header (both set must agree), else its invitation's; or its team. The
/// message's ids have passed the contract's `string.uuid` rule; the header is checked here.
fn scope_of(
    message: &DynamicMessage,
    scope_field: &ScopeField,
    headers: &http::HeaderMap,
) -> Result<Scope, Error> {
    let violation = |field: &str, reason: &'static str, description: String| {
        Error::invalid_fields(vec![crate::domain::FieldViolation::new(
            field,
            reason,
            description,
        )])
    };
    let uuid = |field: &str, raw: &str| {
        Uuid::parse_str(raw.trim()).map_err(|_| {
            violation(
                field,
                "string.uuid",
                "value must be a valid UUID".to_owned(),
            )
        })
    };
    let named = |field: &FieldDescriptor| {
        let value = message.get_field(field);
        match value.as_str().map(str::trim).filter(|raw| !raw.is_empty()) {
            Some(raw) => uuid(field.name(), raw).map(Some),
            None => Ok(None),
        }
    };
    match scope_field {
        ScopeField::Organization { field, owned } => {
            let header = match headers.get(ORGANIZATION_HEADER).map(|value| value.to_str()) {
                Some(Ok(raw)) if !raw.trim().is_empty() => Some(uuid(ORGANIZATION_HEADER, raw)?),
                Some(Err(_)) => Some(uuid(ORGANIZATION_HEADER, "")?),
                _ => None,
            };
            let owner = match owned {
                Some((owner, owned)) => named(owner)?.map(|id| Scope::Owned(*owned, id)),
                None => None,
            };
            match (named(field)?, header, owner) {
                (Some(named), Some(header), _) if named != header => Err(Error::invalid_argument(
                    "ORGANIZATION_MISMATCH",
                    "organization_id and the x-organization-id header name different organizations",
                )),
                (Some(id), _, _) | (None, Some(id), _) => Ok(Scope::Organization(id)),
                (None, None, Some(scope)) => Ok(scope),
                (None, None, None) => Err(violation(
                    field.name(),
                    "SCOPE_REQUIRED",
                    format!("is required (in the request or the {ORGANIZATION_HEADER} header)"),
                )),
            }
        }
        ScopeField::Team(field) => match named(field)? {
            Some(id) => Ok(Scope::Team(id)),
            None => Err(violation(
                field.name(),
                "SCOPE_REQUIRED",
                "is required".to_owned(),
            )),
        },
    }
}

pub(super) enum Presented<'a> {
    AccessToken(&'a str),
    ApiKey(&'a str),
}

impl<'a> Presented<'a> {
    /// A bearer token: an API key or an access token.
    pub(super) fn bearer(token: &'a str) -> Self {
        if looks_like_api_key(token) {
            Self::ApiKey(token)
        } else {
            Self::AccessToken(token)
        }
    }
}

/// The credential a request carries: `x-api-key`, or a bearer token that is an API key or an
/// access token.
pub(super) fn presented_credential(headers: &http::HeaderMap) -> Option<Presented<'_>> {
    if let Some(key) = headers
        .get("x-api-key")
        .and_then(|value| value.to_str().ok())
    {
        return Some(Presented::ApiKey(key.trim()));
    }
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return None;
    }
    Some(Presented::bearer(token))
}

/// The status of a unary reply: tonic sends errors as trailers-only responses, so a
/// `grpc-status` header is an error and its absence a success.
fn reply_code<B>(response: &Response<B>) -> Code {
    response
        .headers()
        .get("grpc-status")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<i32>().ok())
        .map_or(Code::Ok, Code::from_i32)
}

#[derive(Clone)]
pub struct GuardLayer {
    guard: Arc<Guard>,
}

impl GuardLayer {
    pub fn new(guard: Guard) -> Self {
        Self {
            guard: Arc::new(guard),
        }
    }
}

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guarded {
            inner,
            guard: self.guard.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    guard: Arc<Guard>,
}

impl<S> tower::Service<Request<Body>> for Guarded<S>
where
    S: tower::Service<Request<Body>, Response = Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(context)
    }

    /// Runs the call as its own task, holding one of the in-flight permits: past the limit a
    /// call is refused at once (`SERVER_BUSY`), and past the timeout (but for client streams)
    /// the caller is answered
    /// `REQUEST_TIMEOUT` while the task still runs to its end, so no change is left half made
    /// by a cancelled future.
    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        // The clone is not ready; keep the ready service for this call (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let guard = self.guard.clone();
        Box::pin(async move {
            let started = Instant::now();
            let method = request.uri().path().to_owned();
            // An upload lasts as long as its bytes take; its handler bounds the wait for each.
            let timeout = match guard.rules.get(&method) {
                Some(rule) if rule.streamed => None,
                _ => Some(guard.limits.timeout),
            };
            let request_id = header_text(request.headers(), "x-request-id").unwrap_or_default();
            let traceparent = header_text(request.headers(), "traceparent");
            let span = tracing::info_span!(
                target: TRACE_TARGET,
                "rpc",
                otel.name = method.trim_start_matches('/'),
                otel.kind = "server",
                otel.status_code = tracing::field::Empty,
                rpc.system = "grpc",
                rpc.grpc.status_code = tracing::field::Empty,
                request_id = request_id.as_str(),
            );
            telemetry::adopt_traceparent(&span, traceparent.as_deref());
            let response = match guard.in_flight.clone().try_acquire_owned() {
                Err(_) => to_status(server_busy()).into_http(),
                Ok(permit) => {
                    let admitting = guard.clone();
                    let rpc = method.clone();
                    let work = async move {
                        let _permit = permit;
                        let mut tightest = None;
                        let admitted = admitting.admit(&mut request, &mut tightest).await;
                        let call = CallLog::of(&request);
                        let response = match admitted {
                            Ok(()) => inner.call(request).await?,
                            Err(error) => to_status(error).into_http(),
                        };
                        if admitting.rules.contains_key(&rpc) {
                            call.write(&rpc, reply_code(&response), started.elapsed());
                        }
                        Ok::<_, Infallible>(with_rate_limit(response, tightest))
                    };
                    let work = tokio::spawn(
                        telemetry::with_request_id(request_id, work).instrument(span.clone()),
                    );
                    let answered = match timeout {
                        Some(timeout) => tokio::time::timeout(timeout, work).await,
                        None => Ok(work.await),
                    };
                    match answered {
                        Ok(Ok(Ok(response))) => response,
                        Ok(Ok(Err(infallible))) => match infallible {},
                        Ok(Err(failed)) => {
                            to_status(Error::internal(format!("a request task failed: {failed}")))
                                .into_http()
                        }
                        Err(_) => to_status(request_timeout(guard.limits.timeout)).into_http(),
                    }
                }
            };
            let code = reply_code(&response);
            span.record("rpc.grpc.status_code", code as i32);
            if code != Code::Ok {
                span.record("otel.status_code", "ERROR");
            }
            if guard.rules.contains_key(&method) {
                guard.metrics.record(&method, code, started.elapsed());
            }
            Ok(response)
        })
    }
}
