//! The authorization layer: enforces each RPC's `(keel.options.v1.auth)` rule in front of the
//! tonic services. gRPC, gRPC-web and REST (which dispatches in-process through this same
//! stack) all pass here, so the three doors cannot differ.

use super::contract::{AuthRule, Contract};
use super::metrics::Metrics;
use super::status::to_status;
use crate::domain::Error;
use crate::domain::apikey::looks_like_api_key;
use crate::domain::auth::AuthService;
use crate::domain::principal::Principal;
use futures_util::future::BoxFuture;
use http::{Request, Response};
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;
use tonic::Code;
use tonic::body::Body;

pub struct Guard {
    rules: HashMap<String, AuthRule>,
    auth: Arc<AuthService>,
    metrics: Arc<Metrics>,
}

impl Guard {
    pub fn new(contract: &Contract, auth: Arc<AuthService>, metrics: Arc<Metrics>) -> Self {
        let rules = contract
            .rpcs
            .iter()
            .map(|rpc| (rpc.grpc_path.clone(), rpc.auth.clone()))
            .collect();
        Self {
            rules,
            auth,
            metrics,
        }
    }

    /// Admits or refuses a request, attaching the `Principal` for non-public RPCs. Paths that are
    /// not Keel RPCs (reflection, health, unknown methods) pass through to tonic.
    async fn admit(&self, request: &mut Request<Body>) -> Result<(), Error> {
        let Some(rule) = self.rules.get(request.uri().path()) else {
            return Ok(());
        };
        if *rule == AuthRule::Public {
            return Ok(());
        }
        let principal = match presented_credential(request.headers()) {
            Some(Presented::ApiKey(key)) => self.auth.authenticate_api_key(key).await?,
            Some(Presented::AccessToken(token)) => self.auth.authenticate(token).await?,
            None => {
                return Err(Error::unauthenticated(
                    "MISSING_CREDENTIALS",
                    "this call needs credentials: send authorization: Bearer <access token> \
                     or x-api-key: <API key>",
                ));
            }
        };
        match rule {
            AuthRule::Session => {
                principal.session_id()?;
            }
            AuthRule::Permission(permission) => {
                if !principal.credential_allows(permission) {
                    return Err(Error::permission_denied(
                        "SCOPE_MISSING",
                        format!("the API key lacks the {permission} scope"),
                    ));
                }
                // Until organization roles exist, a permission is held by platform superusers.
                if !principal.user.is_superuser {
                    return Err(Error::permission_denied(
                        "PERMISSION_DENIED",
                        format!("this call needs the {permission} permission"),
                    ));
                }
            }
            AuthRule::Public | AuthRule::Authenticated => {}
        }
        request.extensions_mut().insert::<Principal>(principal);
        Ok(())
    }
}

enum Presented<'a> {
    AccessToken(&'a str),
    ApiKey(&'a str),
}

/// The credential a request carries: `x-api-key`, or a bearer token that is an API key or an
/// access token.
fn presented_credential(headers: &http::HeaderMap) -> Option<Presented<'_>> {
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
    Some(if looks_like_api_key(token) {
        Presented::ApiKey(token)
    } else {
        Presented::AccessToken(token)
    })
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

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        // The clone is not ready; keep the ready service for this call (tower's usual swap).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let guard = self.guard.clone();
        Box::pin(async move {
            let started = Instant::now();
            let method = request.uri().path().to_owned();
            let response = match guard.admit(&mut request).await {
                Ok(()) => inner.call(request).await?,
                Err(error) => to_status(error).into_http(),
            };
            if guard.rules.contains_key(&method) {
                guard
                    .metrics
                    .record(&method, reply_code(&response), started.elapsed());
            }
            Ok(response)
        })
    }
}
