//! An OpenID Connect provider: discovery, the authorization URL, the code exchange with PKCE,
//! and the ID token checked by `openidconnect` (signature against the provider's JWKS,
//! `iss`, `aud`, `azp`, `exp`, `iat`, `nonce`); claims the ID token leaves out come from the
//! userinfo endpoint.

use super::{OidcSettings, ProviderHttp, rejected, unavailable};
use crate::domain::auth::{AuthorizationRequest, IdentityProvider, ProviderIdentity};
use crate::domain::clock::Clock;
use crate::domain::error::Result;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreErrorResponseType, CoreGenderClaim, CoreJsonWebKey,
    CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm, CoreProviderMetadata,
    CoreResponseType, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AdditionalClaims, AuthenticationFlow, AuthorizationCode, ClaimsVerificationError, Client,
    ClientId, ClientSecret, CsrfToken, EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet,
    EndpointSet, IdTokenClaims, IdTokenFields, JsonWebKeySet, Nonce, OAuth2TokenResponse,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope,
    SignatureVerificationError, StandardErrorResponse, StandardTokenResponse, TokenResponse as _,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::RwLock;

/// Claims beyond the standard ones: Microsoft's tenant id (`tid`, which its multi-tenant
/// issuer is spelled with) and an organization's groups claim.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ExtraClaims(serde_json::Map<String, serde_json::Value>);

impl AdditionalClaims for ExtraClaims {}

impl ExtraClaims {
    fn tid(&self) -> &str {
        self.0
            .get("tid")
            .and_then(|tid| tid.as_str())
            .unwrap_or_default()
    }

    /// A claim listing strings (a lone string counts as a list of one).
    fn strings(&self, name: &str) -> Option<Vec<String>> {
        match self.0.get(name)? {
            serde_json::Value::String(one) => Some(vec![one.clone()]),
            serde_json::Value::Array(items) => Some(
                items
                    .iter()
                    .filter_map(|item| item.as_str().map(str::to_owned))
                    .collect(),
            ),
            _ => None,
        }
    }
}

type OidcTokenResponse = StandardTokenResponse<
    IdTokenFields<
        ExtraClaims,
        EmptyExtraTokenFields,
        CoreGenderClaim,
        CoreJweContentEncryptionAlgorithm,
        CoreJwsSigningAlgorithm,
    >,
    CoreTokenType,
>;

type OidcClient = Client<
    ExtraClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    OidcTokenResponse,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// How long a discovery document and its keys are trusted before they are read again.
const REDISCOVER_AFTER: Duration = Duration::from_secs(3600);

struct Discovered {
    metadata: CoreProviderMetadata,
    fetched_at: Instant,
}

pub struct OidcProvider {
    settings: OidcSettings,
    http: ProviderHttp,
    clock: Arc<dyn Clock>,
    discovered: RwLock<Option<Discovered>>,
}

impl OidcProvider {
    pub fn new(settings: OidcSettings, http: ProviderHttp, clock: Arc<dyn Clock>) -> Self {
        Self {
            settings,
            http,
            clock,
            discovered: RwLock::new(None),
        }
    }

    /// The provider's metadata and keys: cached, and read again when stale or when a token
    /// was signed with a key the cached set lacks (`keys_unknown`: the provider rotated its
    /// keys). Tokens come only from the provider's token endpoint, so nobody else can make
    /// Keel read them again.
    async fn metadata(&self, keys_unknown: bool) -> Result<CoreProviderMetadata> {
        let fresh = |discovered: &Option<Discovered>| {
            discovered
                .as_ref()
                .filter(|discovered| {
                    !keys_unknown && discovered.fetched_at.elapsed() < REDISCOVER_AFTER
                })
                .map(|discovered| discovered.metadata.clone())
        };
        if let Some(metadata) = fresh(&*self.discovered.read().await) {
            return Ok(metadata);
        }
        let metadata = self.discover().await?;
        *self.discovered.write().await = Some(Discovered {
            metadata: metadata.clone(),
            fetched_at: Instant::now(),
        });
        Ok(metadata)
    }

    async fn discover(&self) -> Result<CoreProviderMetadata> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.settings.issuer.trim_end_matches('/')
        );
        let body = self
            .http
            .get(&url)
            .await
            .map_err(|error| unavailable(format!("discovery at {error}")))?;
        let metadata: CoreProviderMetadata = serde_json::from_slice(&body)
            .map_err(|error| unavailable(format!("discovery document at {url}: {error}")))?;
        let announced = metadata.issuer().as_str();
        let expected = self.settings.issuer.as_str();
        let matches = if self.settings.issuer_per_tenant {
            announced.contains("{tenantid}")
        } else {
            announced.trim_end_matches('/') == expected.trim_end_matches('/')
        };
        if !matches {
            return Err(unavailable(format!(
                "the provider at {url} announces the issuer {announced}, not {expected}"
            )));
        }
        let jwks = JsonWebKeySet::fetch_async(metadata.jwks_uri(), &self.http)
            .await
            .map_err(|error| unavailable(format!("the provider's keys: {error}")))?;
        Ok(metadata.set_jwks(jwks))
    }

    /// A client for the provider's current metadata, and the issuer it announces.
    async fn client(&self, keys_unknown: bool, redirect_uri: &str) -> Result<(OidcClient, String)> {
        let metadata = self.metadata(keys_unknown).await?;
        let issuer = metadata.issuer().as_str().to_owned();
        let redirect = RedirectUrl::new(redirect_uri.to_owned()).map_err(rejected)?;
        let client = OidcClient::from_provider_metadata(
            metadata,
            ClientId::new(self.settings.client_id.clone()),
            Some(ClientSecret::new(self.settings.client_secret.clone())),
        )
        .set_redirect_uri(redirect);
        Ok((client, issuer))
    }

    /// The ID token's claims, if every check passes.
    fn verify(
        &self,
        (client, issuer): &(OidcClient, String),
        tokens: &OidcTokenResponse,
        nonce: &str,
    ) -> std::result::Result<IdTokenClaims<ExtraClaims, CoreGenderClaim>, ClaimsVerificationError>
    {
        let id_token = tokens.id_token().ok_or_else(|| {
            ClaimsVerificationError::Other("the token response has no ID token".into())
        })?;
        let clock = self.clock.clone();
        let verifier = client
            .id_token_verifier()
            .set_time_fn(move || clock.now())
            .require_issuer_match(!self.settings.issuer_per_tenant);
        let claims = id_token.claims(&verifier, &Nonce::new(nonce.to_owned()))?;
        if self.settings.issuer_per_tenant {
            let tenant = claims.additional_claims().tid();
            let expected = issuer.replace("{tenantid}", tenant);
            if tenant.is_empty() || claims.issuer().as_str() != expected {
                return Err(ClaimsVerificationError::InvalidIssuer(format!(
                    "{} is not the issuer of tenant {tenant:?}",
                    claims.issuer().as_str()
                )));
            }
        }
        Ok(claims.clone())
    }
}

#[async_trait::async_trait]
impl IdentityProvider for OidcProvider {
    fn protocol(&self) -> &'static str {
        "oidc"
    }

    async fn authorization_url(&self, request: &AuthorizationRequest) -> Result<String> {
        let (client, _) = self.client(false, &request.redirect_uri).await?;
        let state = request.state.clone();
        let nonce = request.nonce.clone();
        let verifier = PkceCodeVerifier::new(request.pkce_verifier.clone());
        let (url, _, _) = client
            .authorize_url(
                AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
                move || CsrfToken::new(state),
                move || Nonce::new(nonce),
            )
            .add_scopes(self.settings.scopes.iter().cloned().map(Scope::new))
            .set_pkce_challenge(PkceCodeChallenge::from_code_verifier_sha256(&verifier))
            .url();
        Ok(url.to_string())
    }

    async fn identify(
        &self,
        code: &str,
        request: &AuthorizationRequest,
    ) -> Result<ProviderIdentity> {
        let client = self.client(false, &request.redirect_uri).await?;
        let tokens = client
            .0
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(unavailable)?
            .set_pkce_verifier(PkceCodeVerifier::new(request.pkce_verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(|error| match error {
                RequestTokenError::ServerResponse(response) => rejected(format!(
                    "the token endpoint answered {}",
                    response.error().as_ref()
                )),
                RequestTokenError::Parse(error, _) => rejected(error),
                other => unavailable(other),
            })?;
        let claims = match self.verify(&client, &tokens, &request.nonce) {
            Err(ClaimsVerificationError::SignatureVerification(
                SignatureVerificationError::NoMatchingKey,
            )) => {
                let refreshed = self.client(true, &request.redirect_uri).await?;
                self.verify(&refreshed, &tokens, &request.nonce)
            }
            verified => verified,
        }
        .map_err(|error| rejected(format!("its ID token failed a check: {error}")))?;

        let groups_claim = self.settings.groups_claim.as_deref();
        let groups = groups_claim.and_then(|claim| claims.additional_claims().strings(claim));
        let mut identity = ProviderIdentity {
            subject: claims.subject().as_str().to_owned(),
            email: claims.email().map(|email| email.as_str().to_owned()),
            email_verified: claims.email_verified().unwrap_or(false),
            name: claims
                .name()
                .and_then(|name| name.get(None))
                .map(|name| name.as_str().to_owned()),
            groups: groups.clone().unwrap_or_default(),
        };
        let incomplete = identity.email.is_none() || (groups_claim.is_some() && groups.is_none());
        if incomplete
            && let Ok(request) = client.0.user_info(
                tokens.access_token().clone(),
                Some(claims.subject().clone()),
            )
        {
            let info: openidconnect::UserInfoClaims<ExtraClaims, CoreGenderClaim> = request
                .request_async(&self.http)
                .await
                .map_err(|error| rejected(format!("its userinfo endpoint: {error}")))?;
            if identity.email.is_none() {
                identity.email = info.email().map(|email| email.as_str().to_owned());
                identity.email_verified = info.email_verified().unwrap_or(false);
            }
            if let Some(groups) =
                groups_claim.and_then(|claim| info.additional_claims().strings(claim))
            {
                identity.groups = groups;
            }
            if identity.name.is_none() {
                identity.name = info
                    .name()
                    .and_then(|name| name.get(None))
                    .map(|name| name.as_str().to_owned());
            }
        }
        Ok(identity)
    }
}
