//! Sign-in with outside identity providers (OAuth2 and OpenID Connect), and the provider
//! identities linked to accounts.
//!
//! Keel keeps the flow's secrets (`state`, the PKCE verifier, the OIDC nonce) in the cache,
//! bound to the provider and the `redirect_uri`, and spends them once. The protocol itself
//! (discovery, the code exchange, ID-token checks) is the `IdentityProvider` adapter's.

use super::{AuthService, ClientInfo, LoginOutcome, account_disabled};
use crate::domain::clock::truncate_to_micros;
use crate::domain::error::{Error, ErrorKind, Missing, Result};
use crate::domain::events::{Event, EventKind, IdentityData, Origin, SignInFailureData};
use crate::domain::secret;
use crate::domain::user::{EmailAddress, User, parse_full_name};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

/// What a flow asks the provider for; the adapter turns it into the authorization URL and
/// presents it again with the code.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthorizationRequest {
    pub state: String,
    pub nonce: String,
    pub pkce_verifier: String,
    pub redirect_uri: String,
}

/// Who the provider says signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderIdentity {
    /// Stable and unique at the provider (`sub`, or GitHub's numeric id).
    pub subject: String,
    pub email: Option<String>,
    /// The provider vouches for the address.
    pub email_verified: bool,
    pub name: Option<String>,
    /// The groups the provider lists for the person (organizations' providers, by the
    /// connection's claim).
    pub groups: Vec<String>,
}

/// One configured provider (the adapter speaks its protocol).
#[async_trait::async_trait]
pub trait IdentityProvider: Send + Sync {
    /// `oidc` or `oauth2`.
    fn protocol(&self) -> &'static str;
    /// The URL to send the browser to.
    async fn authorization_url(&self, request: &AuthorizationRequest) -> Result<String>;
    /// Trades `code` for the identity, with every check the protocol allows: for OIDC the
    /// ID token's signature, issuer, audience, expiry and nonce. A refusal is
    /// `PROVIDER_REJECTED`; a provider that cannot be reached, `PROVIDER_UNAVAILABLE`.
    async fn identify(
        &self,
        code: &str,
        request: &AuthorizationRequest,
    ) -> Result<ProviderIdentity>;
}

/// The configured providers by name, and where they may send browsers back to.
#[derive(Default)]
pub struct IdentityProviders {
    providers: BTreeMap<String, Arc<dyn IdentityProvider>>,
    redirect_allowlist: Vec<String>,
}

impl IdentityProviders {
    pub fn new(redirect_allowlist: Vec<String>) -> Self {
        Self {
            providers: BTreeMap::new(),
            redirect_allowlist,
        }
    }

    pub fn with(mut self, name: &str, provider: Arc<dyn IdentityProvider>) -> Self {
        self.providers.insert(name.to_owned(), provider);
        self
    }

    /// The providers' names and protocols, by name.
    pub fn list(&self) -> Vec<(String, &'static str)> {
        self.providers
            .iter()
            .map(|(name, provider)| (name.clone(), provider.protocol()))
            .collect()
    }

    fn get(&self, name: &str) -> Result<&Arc<dyn IdentityProvider>> {
        self.providers.get(name).ok_or_else(|| {
            Error::not_found(
                "PROVIDER_NOT_FOUND",
                format!("no sign-in provider named {name:?} is configured on this instance"),
            )
        })
    }

    /// Exact matches only: anything else could send the code to someone else's page.
    fn check_redirect(&self, redirect_uri: &str) -> Result<()> {
        if self
            .redirect_allowlist
            .iter()
            .any(|allowed| allowed == redirect_uri)
        {
            return Ok(());
        }
        Err(Error::invalid_argument(
            "REDIRECT_URI_NOT_ALLOWED",
            "redirect_uri is not one of this instance's allowed redirect URIs \
             (KEEL_OAUTH_REDIRECT_ALLOWLIST)",
        ))
    }
}

/// An organization's own provider (enterprise single sign-on).
pub struct OrganizationProvider {
    pub organization_id: Uuid,
    pub provider: Arc<dyn IdentityProvider>,
    /// The email domains approved for the organization: the only addresses it signs in.
    pub domains: Vec<String>,
    /// Its sign-in counts as both factors.
    pub trust_mfa: bool,
}

/// Organizations' own providers, named `sso-<organization id>`.
#[async_trait::async_trait]
pub trait OrganizationProviders: Send + Sync {
    async fn find(&self, name: &str) -> Result<Option<OrganizationProvider>>;
    /// Makes a user who signed in through the organization's provider (in `groups` there) a
    /// member of it.
    async fn admit(
        &self,
        organization_id: Uuid,
        user: &User,
        groups: &[String],
        client: &ClientInfo,
    ) -> Result<()>;
    /// The provider `email` must sign in through, when its organization refuses passwords.
    async fn enforced_for(&self, email: &EmailAddress) -> Result<Option<String>>;
}

/// A password or magic-link sign-in refused: the address's organization signs its people in
/// through its own provider.
pub fn sso_required(provider: &str) -> Error {
    Error::new(
        ErrorKind::FailedPrecondition,
        "SSO_REQUIRED",
        format!(
            "your organization signs you in with single sign-on: start with the provider {provider}"
        ),
    )
}

/// A provider identity linked to an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub id: Uuid,
    pub user_id: Uuid,
    pub provider: String,
    pub subject: String,
    pub email: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
}

/// Where linked identities live.
#[async_trait::async_trait]
pub trait IdentityStore: Send + Sync {
    async fn find_identity(&self, provider: &str, subject: &str) -> Result<Option<Identity>>;
    /// Links an identity; `IDENTITY_TAKEN` when it is linked already.
    async fn insert_identity(&self, identity: &Identity, events: &[Event]) -> Result<()>;
    /// Creates an account without a password, and its first identity, at once.
    async fn insert_user_with_identity(
        &self,
        user: &User,
        unusable_password_hash: &str,
        identity: &Identity,
        events: &[Event],
    ) -> Result<()>;
    async fn record_identity_use(&self, id: Uuid, email: &str, now: DateTime<Utc>) -> Result<()>;
    async fn list_identities(&self, user_id: Uuid) -> Result<Vec<Identity>>;
    /// Unlinks `id` if it is `user_id`'s (`false` when there is no such identity of theirs),
    /// unless it is the account's last way to sign in (no password, no other identity):
    /// `LAST_SIGN_IN_METHOD`.
    async fn delete_identity(&self, user_id: Uuid, id: Uuid, events: &[Event]) -> Result<bool>;
}

pub const IDENTITY_TAKEN: &str = "IDENTITY_TAKEN";
/// The provider refused the code, or its answer failed a check.
pub const PROVIDER_REJECTED: &str = "PROVIDER_REJECTED";
pub const LAST_SIGN_IN_METHOD: &str = "LAST_SIGN_IN_METHOD";

const STATE_LIFETIME_MINUTES: i64 = 10;

/// A started flow waiting for its code (in the cache port, under the state's digest).
#[derive(Serialize, Deserialize)]
struct PendingAuthorization {
    provider: String,
    request: AuthorizationRequest,
    expires_at: DateTime<Utc>,
}

fn state_key(state: &str) -> String {
    format!("oauth-state:{}", secret::digest_hex(state))
}

fn invalid_state() -> Error {
    Error::invalid_argument(
        "INVALID_STATE",
        "the sign-in state is unknown, spent or expired, or belongs to another provider or \
         redirect_uri: start the sign-in again",
    )
}

/// An organization's provider speaks only for addresses of the domains approved for it.
fn check_domain(identity: &ProviderIdentity, domains: &[String]) -> Result<()> {
    let domain = identity
        .email
        .as_deref()
        .and_then(|email| email.rsplit_once('@'))
        .map(|(_, domain)| domain.to_ascii_lowercase());
    if domain.is_some_and(|domain| domains.contains(&domain)) {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::FailedPrecondition,
        "DOMAIN_NOT_APPROVED",
        "the organization's provider signs in only addresses of the domains approved for it",
    ))
}

/// A started flow: where to send the browser, and the `state` that comes back.
pub struct AuthorizationStart {
    pub authorization_url: String,
    pub state: String,
}

/// What the provider's redirect brought back to the app.
pub struct ProviderCallback<'a> {
    pub provider: &'a str,
    pub code: &'a str,
    pub state: &'a str,
    pub redirect_uri: &'a str,
}

impl AuthService {
    pub fn oauth_providers(&self) -> Vec<(String, &'static str)> {
        self.identity_providers.list()
    }

    /// A provider by name: the instance's, or an organization's (`sso-<organization id>`).
    async fn provider(
        &self,
        name: &str,
    ) -> Result<(Arc<dyn IdentityProvider>, Option<OrganizationProvider>)> {
        if let Some(organization) = self.organization_providers.find(name).await? {
            return Ok((organization.provider.clone(), Some(organization)));
        }
        Ok((self.identity_providers.get(name)?.clone(), None))
    }

    pub async fn start_oauth(
        &self,
        provider: &str,
        redirect_uri: &str,
        client: &ClientInfo,
    ) -> Result<AuthorizationStart> {
        let (identity_provider, _) = self.provider(provider).await?;
        self.identity_providers.check_redirect(redirect_uri)?;
        self.admit_client("oauth", client).await?;
        let request = AuthorizationRequest {
            state: secret::generate(),
            nonce: secret::generate(),
            pkce_verifier: secret::generate(),
            redirect_uri: redirect_uri.to_owned(),
        };
        let authorization_url = identity_provider.authorization_url(&request).await?;
        let lifetime = Duration::minutes(STATE_LIFETIME_MINUTES);
        let state = request.state.clone();
        let pending = PendingAuthorization {
            provider: provider.to_owned(),
            request,
            expires_at: self.clock.now() + lifetime,
        };
        let encoded = serde_json::to_vec(&pending).map_err(Error::internal)?;
        let ttl = lifetime.to_std().map_err(Error::internal)?;
        self.cache.set(&state_key(&state), &encoded, ttl).await?;
        Ok(AuthorizationStart {
            authorization_url,
            state,
        })
    }

    /// Spends the state and asks `identity_provider` who signed in.
    async fn identify(
        &self,
        identity_provider: &dyn IdentityProvider,
        callback: &ProviderCallback<'_>,
        client: &ClientInfo,
    ) -> Result<ProviderIdentity> {
        self.admit_client("oauth", client).await?;
        let pending: PendingAuthorization = self
            .cache
            .take(&state_key(callback.state))
            .await?
            .and_then(|bytes| serde_json::from_slice::<PendingAuthorization>(&bytes).ok())
            .filter(|pending| {
                pending.expires_at > self.clock.now()
                    && pending.provider == callback.provider
                    && pending.request.redirect_uri == callback.redirect_uri
            })
            .ok_or_else(invalid_state)?;
        identity_provider
            .identify(callback.code, &pending.request)
            .await
    }

    /// Signs in with the identity the provider vouches for: the account it is linked to, the
    /// verified account with its verified address, or a new account. Refusals once the
    /// provider answered are recorded as failed sign-ins (`user.login_failed`, the reason in
    /// lower case: `provider_rejected`, `link_required`, `email_not_verified`…).
    pub async fn finish_oauth(
        &self,
        callback: ProviderCallback<'_>,
        client: ClientInfo,
    ) -> Result<LoginOutcome> {
        let (identity_provider, organization) = self.provider(callback.provider).await?;
        let origin = Origin::anonymous(&client);
        let refused = |email: &str, error: Error| {
            let reason = error.reason.to_ascii_lowercase();
            self.refused(&origin, SignInFailureData::new(None, email, &reason), error)
        };
        let identity = match self
            .identify(identity_provider.as_ref(), &callback, &client)
            .await
        {
            Err(error) if error.reason == PROVIDER_REJECTED => return Err(refused("", error).await),
            identified => identified?,
        };
        match self
            .sign_in_identity(callback.provider, &identity, organization, client)
            .await
        {
            Err(error)
                if matches!(
                    error.kind,
                    ErrorKind::FailedPrecondition | ErrorKind::Unauthenticated
                ) =>
            {
                Err(refused(identity.email.as_deref().unwrap_or_default(), error).await)
            }
            outcome => outcome,
        }
    }

    async fn sign_in_identity(
        &self,
        provider: &str,
        identity: &ProviderIdentity,
        organization: Option<OrganizationProvider>,
        client: ClientInfo,
    ) -> Result<LoginOutcome> {
        // An organization's provider speaks for the domains approved for it: there its word
        // on an address is the owner's, whether or not it sends `email_verified` (Entra ID
        // does not).
        let vouched;
        let identity = match &organization {
            Some(organization) => {
                check_domain(identity, &organization.domains)?;
                vouched = ProviderIdentity {
                    email_verified: true,
                    ..identity.clone()
                };
                &vouched
            }
            None => identity,
        };
        let now = truncate_to_micros(self.clock.now());
        let linked = self
            .identities
            .find_identity(provider, &identity.subject)
            .await?;
        let user = match linked {
            Some(linked) => {
                let email = identity.email.as_deref().unwrap_or(&linked.email);
                self.identities
                    .record_identity_use(linked.id, email, now)
                    .await?;
                self.user(linked.user_id).await?
            }
            None => self.join_or_create(provider, identity, &client).await?,
        };
        if !user.is_active {
            return Err(account_disabled());
        }
        self.require_verified(&user)?;
        let trusted_for_mfa = organization.as_ref().is_some_and(|found| found.trust_mfa);
        if let Some(organization) = organization {
            self.organization_providers
                .admit(
                    organization.organization_id,
                    &user,
                    &identity.groups,
                    &client,
                )
                .await?;
        }
        tracing::info!(user_id = %user.id, provider, "signed in with a provider");
        if !trusted_for_mfa && self.totp.is_enabled(user.id).await? {
            return self.start_mfa(&user, client).await;
        }
        Ok(LoginOutcome::SignedIn(
            self.open_session(&user, client).await?,
        ))
    }

    /// A first sign-in with an identity: it joins the account of its address when both
    /// sides have proven the address, or makes a new account.
    async fn join_or_create(
        &self,
        provider: &str,
        identity: &ProviderIdentity,
        client: &ClientInfo,
    ) -> Result<User> {
        let email = identity
            .email
            .as_deref()
            .filter(|_| identity.email_verified)
            .and_then(|email| EmailAddress::parse(email).ok())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::FailedPrecondition,
                    "EMAIL_NOT_VERIFIED",
                    "the provider does not vouch for an email address of this identity: \
                     verify it there, or sign in here and link the identity",
                )
            })?;
        let now = truncate_to_micros(self.clock.now());
        if let Some(existing) = self.users.find_credentials_by_email(&email).await? {
            let user = existing.user;
            if !user.is_active {
                return Err(account_disabled());
            }
            if !user.email_verified {
                return Err(Error::new(
                    ErrorKind::FailedPrecondition,
                    "LINK_REQUIRED",
                    "an account with this address exists: sign in to it, then link this identity",
                ));
            }
            let linked = self.new_identity(user.id, provider, identity, email.as_str());
            let event = self.identity_event(
                EventKind::UserIdentityLinked,
                &Origin::user(user.id, client),
                &linked,
            );
            self.identities.insert_identity(&linked, &[event]).await?;
            return Ok(user);
        }
        let user = User {
            id: Uuid::now_v7(),
            email: email.as_str().to_owned(),
            full_name: identity
                .name
                .as_deref()
                .and_then(|name| parse_full_name(name).ok())
                .unwrap_or_default(),
            email_verified: true,
            is_superuser: false,
            is_active: true,
            created_at: now,
            updated_at: now,
        };
        let linked = self.new_identity(user.id, provider, identity, email.as_str());
        let origin = Origin::user(user.id, client);
        let events = [
            self.user_event(EventKind::UserCreated, &origin, &user),
            self.identity_event(EventKind::UserIdentityLinked, &origin, &linked),
        ];
        let unusable = self.hasher.hash(&secret::generate()).await?;
        self.identities
            .insert_user_with_identity(&user, &unusable, &linked, &events)
            .await?;
        tracing::info!(user_id = %user.id, provider, "user registered with a provider");
        Ok(user)
    }

    /// Links the identity of a finished flow to the caller's account.
    pub async fn link_identity(
        &self,
        user_id: Uuid,
        callback: ProviderCallback<'_>,
        client: &ClientInfo,
    ) -> Result<Identity> {
        // Organizations' providers sign their people in; they link nothing.
        let identity_provider = self.identity_providers.get(callback.provider)?.clone();
        let identity = self
            .identify(identity_provider.as_ref(), &callback, client)
            .await?;
        let email = identity.email.clone().unwrap_or_default();
        let linked = self.new_identity(user_id, callback.provider, &identity, &email);
        let event = self.identity_event(
            EventKind::UserIdentityLinked,
            &Origin::user(user_id, client),
            &linked,
        );
        self.identities.insert_identity(&linked, &[event]).await?;
        Ok(linked)
    }

    pub async fn list_identities(&self, user_id: Uuid) -> Result<Vec<Identity>> {
        self.identities.list_identities(user_id).await
    }

    pub async fn unlink_identity(
        &self,
        user_id: Uuid,
        identity_id: Uuid,
        client: &ClientInfo,
    ) -> Result<()> {
        let Some(identity) = self
            .identities
            .list_identities(user_id)
            .await?
            .into_iter()
            .find(|identity| identity.id == identity_id)
        else {
            return Err(Missing::Identity.into());
        };
        let event = self.identity_event(
            EventKind::UserIdentityUnlinked,
            &Origin::user(user_id, client),
            &identity,
        );
        if !self
            .identities
            .delete_identity(user_id, identity_id, &[event])
            .await?
        {
            return Err(Missing::Identity.into());
        }
        Ok(())
    }

    /// Refuses password and magic-link sign-ins of addresses whose organization enforces SSO.
    pub(super) async fn refuse_if_sso_enforced(&self, email: &str) -> Result<()> {
        let Ok(email) = EmailAddress::parse(email) else {
            return Ok(());
        };
        match self.organization_providers.enforced_for(&email).await? {
            Some(provider) => Err(sso_required(&provider)),
            None => Ok(()),
        }
    }

    fn new_identity(
        &self,
        user_id: Uuid,
        provider: &str,
        identity: &ProviderIdentity,
        email: &str,
    ) -> Identity {
        let now = truncate_to_micros(self.clock.now());
        Identity {
            id: Uuid::now_v7(),
            user_id,
            provider: provider.to_owned(),
            subject: identity.subject.clone(),
            email: email.to_owned(),
            created_at: now,
            last_used_at: now,
        }
    }

    fn identity_event(&self, kind: EventKind, origin: &Origin, identity: &Identity) -> Event {
        let data = IdentityData {
            identity_id: identity.id,
            user_id: identity.user_id,
            provider: identity.provider.clone(),
        };
        Event::new(kind, origin, self.clock.as_ref(), &data)
    }
}
