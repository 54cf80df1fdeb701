//! GitHub (and GitHub Enterprise Server) sign-in: plain OAuth2, so who signed in comes from
//! the API: `/user` for the id and name, `/user/emails` for the primary verified address.

use super::{GitHubSettings, ProviderHttp, rejected, unavailable};
use crate::domain::auth::{AuthorizationRequest, IdentityProvider, ProviderIdentity};
use crate::domain::error::Result;
use oauth2::basic::BasicClient;
use oauth2::{
    AuthUrl, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointNotSet, EndpointSet,
    PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope, TokenResponse,
    TokenUrl,
};
use serde::Deserialize;

type GitHubClient =
    BasicClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointSet>;

pub struct GitHubProvider {
    settings: GitHubSettings,
    http: ProviderHttp,
}

#[derive(Deserialize)]
struct GitHubUser {
    id: u64,
    name: Option<String>,
}

#[derive(Deserialize)]
struct GitHubEmail {
    email: String,
    primary: bool,
    verified: bool,
}

impl GitHubProvider {
    pub fn new(settings: GitHubSettings, http: ProviderHttp) -> Self {
        Self { settings, http }
    }

    fn client(&self, redirect_uri: &str) -> Result<GitHubClient> {
        let url = |path: &str| format!("{}{path}", self.settings.url);
        Ok(
            BasicClient::new(ClientId::new(self.settings.client_id.clone()))
                .set_client_secret(ClientSecret::new(self.settings.client_secret.clone()))
                .set_auth_uri(AuthUrl::new(url("/login/oauth/authorize")).map_err(unavailable)?)
                .set_token_uri(
                    TokenUrl::new(url("/login/oauth/access_token")).map_err(unavailable)?,
                )
                .set_redirect_uri(RedirectUrl::new(redirect_uri.to_owned()).map_err(rejected)?),
        )
    }

    async fn api<T: serde::de::DeserializeOwned>(&self, path: &str, token: &str) -> Result<T> {
        let url = format!("{}{path}", self.settings.api_url);
        let response = self
            .http
            .client
            .get(&url)
            .bearer_auth(token)
            .header(reqwest::header::ACCEPT, "application/vnd.github+json")
            .send()
            .await
            .map_err(unavailable)?;
        if !response.status().is_success() {
            return Err(rejected(format!("{path} answered {}", response.status())));
        }
        response
            .json()
            .await
            .map_err(|error| rejected(format!("{path}: {error}")))
    }
}

#[async_trait::async_trait]
impl IdentityProvider for GitHubProvider {
    fn protocol(&self) -> &'static str {
        "oauth2"
    }

    async fn authorization_url(&self, request: &AuthorizationRequest) -> Result<String> {
        let state = request.state.clone();
        let verifier = PkceCodeVerifier::new(request.pkce_verifier.clone());
        let (url, _) = self
            .client(&request.redirect_uri)?
            .authorize_url(move || CsrfToken::new(state))
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
        let tokens = self
            .client(&request.redirect_uri)?
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(request.pkce_verifier.clone()))
            .request_async(&self.http)
            .await
            .map_err(|error| match error {
                RequestTokenError::ServerResponse(response) => rejected(format!(
                    "the token endpoint answered {}",
                    response.error().as_ref()
                )),
                // GitHub answers a refused code with 200 and an `error` field.
                RequestTokenError::Parse(..) => rejected("the token endpoint refused the code"),
                other => unavailable(other),
            })?;
        let token = tokens.access_token().secret();
        let user: GitHubUser = self.api("/user", token).await?;
        let emails: Vec<GitHubEmail> = self.api("/user/emails", token).await?;
        let primary = emails
            .into_iter()
            .find(|email| email.primary && email.verified);
        Ok(ProviderIdentity {
            subject: user.id.to_string(),
            email_verified: primary.is_some(),
            email: primary.map(|email| email.email),
            name: user.name,
            groups: Vec::new(),
        })
    }
}
