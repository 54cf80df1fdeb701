//! The `IdentityProvider` adapters: OpenID Connect providers found by discovery (any issuer,
//! and the Google and Microsoft presets) with `openidconnect`, and GitHub's plain OAuth2 with
//! `oauth2`.

mod github;
mod oidc;

use crate::domain::auth::{IdentityProvider, IdentityProviders, PROVIDER_REJECTED};
use crate::domain::clock::Clock;
use crate::domain::error::Error;
use crate::domain::tenancy::sso::{ConnectionProviders, SsoConnection};
use crate::outbound::{GuardedResolver, check_literal};
use anyhow::{Context, bail};
use openidconnect::{AsyncHttpClient, HttpClientError, HttpRequest, HttpResponse};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

pub use github::GitHubProvider;
pub use oidc::OidcProvider;

/// One provider's settings as given (`KEEL_OAUTH_<NAME>_<KEY>`, or `[oauth.<name>]` in the
/// config file).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSettings {
    pub issuer: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    /// Space- or comma-separated; `openid` is always asked of OIDC providers.
    pub scopes: Option<String>,
    /// Microsoft: the tenant (`common`, `organizations`, `consumers` or a tenant id).
    pub tenant: Option<String>,
    /// GitHub (Enterprise Server): the web and API base URLs.
    pub url: Option<String>,
    pub api_url: Option<String>,
}

impl ProviderSettings {
    /// The keys, as the environment spells them after `KEEL_OAUTH_<NAME>_`.
    const KEYS: [&str; 7] = [
        "ISSUER",
        "CLIENT_ID",
        "CLIENT_SECRET",
        "SCOPES",
        "TENANT",
        "URL",
        "API_URL",
    ];

    fn set(&mut self, key: &str, value: String) {
        let slot = match key {
            "ISSUER" => &mut self.issuer,
            "CLIENT_ID" => &mut self.client_id,
            "CLIENT_SECRET" => &mut self.client_secret,
            "SCOPES" => &mut self.scopes,
            "TENANT" => &mut self.tenant,
            "URL" => &mut self.url,
            _ => &mut self.api_url,
        };
        *slot = Some(value);
    }

    /// `self`'s values where given, `lower`'s otherwise.
    pub fn over(self, lower: ProviderSettings) -> ProviderSettings {
        ProviderSettings {
            issuer: self.issuer.or(lower.issuer),
            client_id: self.client_id.or(lower.client_id),
            client_secret: self.client_secret.or(lower.client_secret),
            scopes: self.scopes.or(lower.scopes),
            tenant: self.tenant.or(lower.tenant),
            url: self.url.or(lower.url),
            api_url: self.api_url.or(lower.api_url),
        }
    }
}

/// The providers named in environment variables: one for each `KEEL_OAUTH_<NAME>_CLIENT_ID`,
/// its name in lower case.
pub fn providers_from_env(
    variables: impl Iterator<Item = (String, String)>,
) -> BTreeMap<String, ProviderSettings> {
    let variables: Vec<(String, String)> = variables
        .filter(|(name, value)| name.starts_with("KEEL_OAUTH_") && !value.trim().is_empty())
        .collect();
    let names: Vec<String> = variables
        .iter()
        .filter_map(|(name, _)| {
            name.strip_prefix("KEEL_OAUTH_")?
                .strip_suffix("_CLIENT_ID")
                .map(str::to_owned)
        })
        .collect();
    names
        .into_iter()
        .map(|name| {
            let mut settings = ProviderSettings::default();
            for key in ProviderSettings::KEYS {
                let variable = format!("KEEL_OAUTH_{name}_{key}");
                if let Some((_, value)) = variables.iter().find(|(name, _)| *name == variable) {
                    settings.set(key, value.trim().to_owned());
                }
            }
            (name.to_lowercase(), settings)
        })
        .collect()
}

/// A provider, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderConfig {
    Oidc(OidcSettings),
    GitHub(GitHubSettings),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcSettings {
    /// Discovery is at `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    pub scopes: Vec<String>,
    /// Microsoft's multi-tenant endpoints announce the issuer `…/{tenantid}/v2.0`: each token's
    /// issuer must be that with its own `tid`.
    pub issuer_per_tenant: bool,
    /// The claim listing the person's groups, read for organizations' providers.
    pub groups_claim: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitHubSettings {
    pub url: String,
    pub api_url: String,
    pub client_id: String,
    pub client_secret: String,
    pub scopes: Vec<String>,
}

const MICROSOFT_SHARED_TENANTS: [&str; 3] = ["common", "organizations", "consumers"];

impl ProviderConfig {
    /// Validates a provider's settings; `google`, `microsoft` and `github` are presets that
    /// need only the client id and secret.
    pub fn resolve(name: &str, settings: &ProviderSettings) -> anyhow::Result<Self> {
        let setting = |key: &str| format!("KEEL_OAUTH_{}_{key}", name.to_uppercase());
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'_')
        {
            bail!(
                "{}: the provider name must be letters, digits and _",
                setting("CLIENT_ID")
            );
        }
        let required = |value: &Option<String>, key: &str| {
            value
                .clone()
                .filter(|value| !value.trim().is_empty())
                .with_context(|| format!("{}: not set", setting(key)))
        };
        let client_id = required(&settings.client_id, "CLIENT_ID")?;
        let client_secret = required(&settings.client_secret, "CLIENT_SECRET")?;
        let scopes = |default: &[&str]| match &settings.scopes {
            Some(scopes) => scopes
                .split([' ', ','])
                .filter(|scope| !scope.is_empty())
                .map(str::to_owned)
                .collect(),
            None => default.iter().map(|scope| (*scope).to_owned()).collect(),
        };
        let base_url = |value: Option<&str>, key: &str| -> anyhow::Result<String> {
            let url = value.unwrap_or_default().trim_end_matches('/').to_owned();
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                bail!("{}: must be an http(s):// URL", setting(key));
            }
            Ok(url)
        };
        let oidc_scopes = ["email", "profile"];
        Ok(match name {
            "github" => ProviderConfig::GitHub(GitHubSettings {
                url: base_url(
                    Some(settings.url.as_deref().unwrap_or("https://github.com")),
                    "URL",
                )?,
                api_url: base_url(
                    Some(
                        settings
                            .api_url
                            .as_deref()
                            .unwrap_or("https://api.github.com"),
                    ),
                    "API_URL",
                )?,
                client_id,
                client_secret,
                scopes: scopes(&["read:user", "user:email"]),
            }),
            "microsoft" => {
                let tenant = settings.tenant.as_deref().unwrap_or("common");
                ProviderConfig::Oidc(OidcSettings {
                    issuer: format!("https://login.microsoftonline.com/{tenant}/v2.0"),
                    client_id,
                    client_secret,
                    scopes: scopes(&oidc_scopes),
                    issuer_per_tenant: MICROSOFT_SHARED_TENANTS.contains(&tenant),
                    groups_claim: None,
                })
            }
            _ => ProviderConfig::Oidc(OidcSettings {
                issuer: match (name, &settings.issuer) {
                    (_, Some(issuer)) => base_url(Some(issuer), "ISSUER")?,
                    ("google", None) => "https://accounts.google.com".to_owned(),
                    (_, None) => bail!("{}: not set (the OIDC issuer URL)", setting("ISSUER")),
                },
                client_id,
                client_secret,
                scopes: scopes(&oidc_scopes),
                issuer_per_tenant: false,
                groups_claim: None,
            }),
        })
    }
}

/// The HTTP client of provider calls: no redirects (a token request that is redirected must
/// fail, not be replayed elsewhere), bounded in time. Organizations' providers are addresses
/// their admins chose, so their calls go through the SSRF guard (`guarded`); the instance's are
/// the operator's.
#[derive(Clone)]
pub struct ProviderHttp {
    client: reqwest::Client,
    guarded: bool,
}

impl ProviderHttp {
    pub fn new(guarded: bool) -> anyhow::Result<Self> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("keel/", env!("CARGO_PKG_VERSION")));
        if guarded {
            builder = builder
                .no_proxy()
                .dns_resolver(Arc::new(GuardedResolver::new(false)));
        }
        Ok(Self {
            client: builder.build()?,
            guarded,
        })
    }

    fn check(&self, url: &str) -> Result<(), String> {
        if !self.guarded {
            return Ok(());
        }
        let url = reqwest::Url::parse(url).map_err(|error| format!("{url}: {error}"))?;
        check_literal(&url).map_err(|refused| refused.to_string())
    }

    /// A GET whose answer must be 2xx.
    async fn get(&self, url: &str) -> Result<bytes::Bytes, String> {
        self.check(url)?;
        let response = self
            .client
            .get(url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|error| format!("{url}: {error}"))?;
        response
            .bytes()
            .await
            .map_err(|error| format!("{url}: {error}"))
    }
}

impl<'c> AsyncHttpClient<'c> for ProviderHttp {
    type Error = HttpClientError<reqwest::Error>;
    type Future =
        Pin<Box<dyn Future<Output = Result<HttpResponse, Self::Error>> + Send + Sync + 'c>>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(async move {
            self.check(&request.uri().to_string())
                .map_err(HttpClientError::Other)?;
            self.client.call(request).await
        })
    }
}

/// Organizations' providers (enterprise SSO): OpenID Connect by discovery, guarded. A
/// provider is kept (with the discovery document and keys it read) while its settings stay.
pub struct OrganizationOidc {
    http: ProviderHttp,
    clock: Arc<dyn Clock>,
    built: moka::sync::Cache<Uuid, (OidcSettings, Arc<dyn IdentityProvider>)>,
}

impl OrganizationOidc {
    /// `allow_private` lifts the SSRF guard (development and tests).
    pub fn new(allow_private: bool, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        Ok(Self {
            http: ProviderHttp::new(!allow_private)?,
            clock,
            built: moka::sync::Cache::new(10_000),
        })
    }
}

impl ConnectionProviders for OrganizationOidc {
    fn provider(
        &self,
        connection: &SsoConnection,
        client_secret: &str,
    ) -> Arc<dyn IdentityProvider> {
        let settings = OidcSettings {
            issuer: connection.issuer.clone(),
            client_id: connection.client_id.clone(),
            client_secret: client_secret.to_owned(),
            scopes: connection.scopes.clone(),
            issuer_per_tenant: false,
            groups_claim: Some(connection.groups_claim.clone()),
        };
        if let Some((built_from, provider)) = self.built.get(&connection.organization_id)
            && built_from == settings
        {
            return provider;
        }
        let provider: Arc<dyn IdentityProvider> = Arc::new(OidcProvider::new(
            settings.clone(),
            self.http.clone(),
            self.clock.clone(),
        ));
        self.built
            .insert(connection.organization_id, (settings, provider.clone()));
        provider
    }
}

/// The configured providers, ready to use.
pub fn identity_providers(
    configs: &[(String, ProviderConfig)],
    redirect_allowlist: Vec<String>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<IdentityProviders> {
    let http = ProviderHttp::new(false)?;
    let mut providers = IdentityProviders::new(redirect_allowlist);
    for (name, config) in configs {
        let provider: Arc<dyn IdentityProvider> = match config {
            ProviderConfig::Oidc(settings) => Arc::new(OidcProvider::new(
                settings.clone(),
                http.clone(),
                clock.clone(),
            )),
            ProviderConfig::GitHub(settings) => {
                Arc::new(GitHubProvider::new(settings.clone(), http.clone()))
            }
        };
        providers = providers.with(name, provider);
    }
    Ok(providers)
}

/// The provider answered, but not with what the flow needs.
fn rejected(why: impl std::fmt::Display) -> Error {
    Error::unauthenticated(
        PROVIDER_REJECTED,
        format!("the sign-in provider did not confirm this sign-in: {why}"),
    )
}

fn unavailable(error: impl std::fmt::Display) -> Error {
    Error::unavailable("PROVIDER_UNAVAILABLE", error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pairs: &[(&str, &str)]) -> BTreeMap<String, ProviderSettings> {
        providers_from_env(
            pairs
                .iter()
                .map(|(name, value)| ((*name).to_owned(), (*value).to_owned())),
        )
    }

    #[test]
    fn providers_are_named_by_their_client_id_variables() {
        let found = settings(&[
            ("KEEL_OAUTH_REDIRECT_ALLOWLIST", "https://app.example/cb"),
            ("KEEL_OAUTH_MY_IDP_CLIENT_ID", "id"),
            ("KEEL_OAUTH_MY_IDP_CLIENT_SECRET", "secret"),
            ("KEEL_OAUTH_MY_IDP_ISSUER", "https://idp.example/realms/x"),
            ("KEEL_OAUTH_GITHUB_CLIENT_ID", "gh"),
        ]);
        assert_eq!(found.keys().collect::<Vec<_>>(), ["github", "my_idp"]);
        assert_eq!(
            found["my_idp"].issuer.as_deref(),
            Some("https://idp.example/realms/x")
        );
        assert_eq!(found["my_idp"].client_secret.as_deref(), Some("secret"));
        assert_eq!(found["github"].client_secret, None);
    }

    fn resolve(name: &str, extra: &[(&str, &str)]) -> anyhow::Result<ProviderConfig> {
        let upper = name.to_uppercase();
        let mut pairs = vec![
            (format!("KEEL_OAUTH_{upper}_CLIENT_ID"), "id".to_owned()),
            (
                format!("KEEL_OAUTH_{upper}_CLIENT_SECRET"),
                "secret".to_owned(),
            ),
        ];
        pairs.extend(
            extra
                .iter()
                .map(|(key, value)| (format!("KEEL_OAUTH_{upper}_{key}"), (*value).to_owned())),
        );
        let found = providers_from_env(pairs.into_iter());
        ProviderConfig::resolve(name, &found[name])
    }

    #[test]
    fn the_presets_need_only_a_client_id_and_secret() -> anyhow::Result<()> {
        let ProviderConfig::Oidc(google) = resolve("google", &[])? else {
            bail!("google is OIDC");
        };
        assert_eq!(google.issuer, "https://accounts.google.com");
        assert_eq!(google.scopes, ["email", "profile"]);
        assert!(!google.issuer_per_tenant);

        let ProviderConfig::Oidc(microsoft) = resolve("microsoft", &[])? else {
            bail!("microsoft is OIDC");
        };
        assert_eq!(
            microsoft.issuer,
            "https://login.microsoftonline.com/common/v2.0"
        );
        assert!(microsoft.issuer_per_tenant);
        let ProviderConfig::Oidc(one_tenant) =
            resolve("microsoft", &[("TENANT", "contoso.onmicrosoft.com")])?
        else {
            bail!("microsoft is OIDC");
        };
        assert_eq!(
            one_tenant.issuer,
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/v2.0"
        );
        assert!(!one_tenant.issuer_per_tenant);

        assert_eq!(
            resolve("github", &[])?,
            ProviderConfig::GitHub(GitHubSettings {
                url: "https://github.com".into(),
                api_url: "https://api.github.com".into(),
                client_id: "id".into(),
                client_secret: "secret".into(),
                scopes: vec!["read:user".into(), "user:email".into()],
            })
        );
        let ProviderConfig::GitHub(enterprise) = resolve(
            "github",
            &[
                ("URL", "https://github.corp.example/"),
                ("API_URL", "https://github.corp.example/api/v3"),
            ],
        )?
        else {
            bail!("github is OAuth2");
        };
        assert_eq!(enterprise.url, "https://github.corp.example");
        assert_eq!(enterprise.api_url, "https://github.corp.example/api/v3");
        Ok(())
    }

    #[test]
    fn other_providers_need_an_issuer_and_every_provider_a_secret() -> anyhow::Result<()> {
        let error = resolve("keycloak", &[])
            .err()
            .map(|error| error.to_string());
        assert_eq!(
            error.as_deref(),
            Some("KEEL_OAUTH_KEYCLOAK_ISSUER: not set (the OIDC issuer URL)")
        );
        let ProviderConfig::Oidc(keycloak) = resolve(
            "keycloak",
            &[
                ("ISSUER", "http://127.0.0.1:8080/realms/keel"),
                ("SCOPES", "email, profile groups"),
            ],
        )?
        else {
            bail!("keycloak is OIDC");
        };
        assert_eq!(keycloak.scopes, ["email", "profile", "groups"]);
        let no_secret = providers_from_env(
            [("KEEL_OAUTH_OKTA_CLIENT_ID".to_owned(), "id".to_owned())].into_iter(),
        );
        let error = ProviderConfig::resolve("okta", &no_secret["okta"])
            .err()
            .map(|error| error.to_string());
        assert_eq!(
            error.as_deref(),
            Some("KEEL_OAUTH_OKTA_CLIENT_SECRET: not set")
        );
        Ok(())
    }
}
