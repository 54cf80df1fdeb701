//! Sign-up, sign-in, sessions and the tokens that carry them.

mod accounts;
pub mod device;
mod links;
mod oauth;
mod passkeys;
mod session;
mod sessions;
mod throttle;
mod token;

pub use device::Device;
pub use links::{LinkPurpose, OneTimeTokenStore};
pub use oauth::{
    AuthorizationRequest, AuthorizationStart, IDENTITY_TAKEN, Identity, IdentityProvider,
    IdentityProviders, IdentityStore, LAST_SIGN_IN_METHOD, OrganizationProvider,
    OrganizationProviders, PROVIDER_REJECTED, ProviderCallback, ProviderIdentity,
};
pub use passkeys::{
    PASSKEY_TAKEN, PasskeyCeremony, PasskeyRecord, PasskeyStore, last_sign_in_method, relying_party,
};
pub use session::{ClientInfo, RefreshTokenRecord, Session, SessionStore};
pub use sessions::{SessionStats, SessionView};
pub use throttle::ThrottleSettings;
pub use token::{AccessClaims, AccessTokenCodec};

use crate::domain::apikey::ApiKeyService;
use crate::domain::cache::{Cache, generation};
use crate::domain::clock::{Clock, truncate_to_micros};
use crate::domain::error::{Error, FieldViolation, Result, Violations};
use crate::domain::events::{
    Event, EventKind, EventLog, Origin, SessionData, SignInFailureData, UserData,
};
use crate::domain::mail::{MailJob, Mailer, OutgoingMail, Template};
use crate::domain::password::{
    self, BreachedPasswords, PasswordCheck, PasswordHasher, PasswordPolicy,
};
use crate::domain::principal::{Credential, Principal};
use crate::domain::rate::RateLimits;
use crate::domain::secret::{self, Keyring};
use crate::domain::totp::{TotpService, invalid_code};
use crate::domain::user::{
    EMAIL_TAKEN, EmailAddress, User, UserCredentials, UserStore, parse_full_name,
};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub access_token_ttl: Duration,
    /// How long a session lives without a refresh; each refresh extends it by this much.
    pub refresh_token_ttl: Duration,
    /// How long a session lives at most from sign-in, however often it is refreshed.
    pub session_max_lifetime: Duration,
    pub password_policy: PasswordPolicy,
    pub throttle: ThrottleSettings,
    /// Where mailed links point: `<link_base_url>/verify-email?token=…` and so on.
    pub link_base_url: String,
    /// Refuse sign-in until the email address is verified.
    pub require_verified_email: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPair {
    pub access_token: String,
    pub refresh_token: String,
    pub expires_in: Duration,
}

/// How a sign-in ends: with tokens, or waiting for a second factor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginOutcome {
    SignedIn(TokenPair),
    MfaRequired { mfa_token: String },
}

/// A password-verified sign-in waiting for its second factor (kept in the cache port).
#[derive(Debug, Serialize, Deserialize)]
struct PendingMfa {
    user_id: Uuid,
    client: ClientInfo,
    expires_at: DateTime<Utc>,
}

pub struct Registration<'a> {
    pub email: &'a str,
    pub password: &'a str,
    pub full_name: &'a str,
}

/// The adapters `AuthService` works through.
pub struct AuthPorts {
    pub users: Arc<dyn UserStore>,
    pub sessions: Arc<dyn SessionStore>,
    pub api_keys: Arc<ApiKeyService>,
    pub totp: Arc<TotpService>,
    pub one_time_tokens: Arc<dyn OneTimeTokenStore>,
    pub identities: Arc<dyn IdentityStore>,
    pub identity_providers: IdentityProviders,
    pub organization_providers: Arc<dyn OrganizationProviders>,
    pub passkeys: Arc<dyn PasskeyStore>,
    /// The relying party passkeys are for; none when it cannot be worked out (an IP address).
    pub webauthn: Option<Arc<webauthn_rs::Webauthn>>,
    pub mailer: Arc<dyn Mailer>,
    pub hasher: Arc<dyn PasswordHasher>,
    /// The list of breached passwords new ones are checked against, if configured.
    pub breaches: Option<Arc<dyn BreachedPasswords>>,
    pub tokens: Arc<dyn AccessTokenCodec>,
    /// Keys the digests of short codes.
    pub keyring: Arc<dyn Keyring>,
    pub cache: Arc<dyn Cache>,
    pub rate_limits: Arc<RateLimits>,
    /// Where refusals (failed sign-ins, lockouts) are recorded.
    pub events: Arc<dyn EventLog>,
    pub clock: Arc<dyn Clock>,
}

pub struct AuthService {
    users: Arc<dyn UserStore>,
    sessions: Arc<dyn SessionStore>,
    api_keys: Arc<ApiKeyService>,
    totp: Arc<TotpService>,
    one_time_tokens: Arc<dyn OneTimeTokenStore>,
    identities: Arc<dyn IdentityStore>,
    identity_providers: IdentityProviders,
    organization_providers: Arc<dyn OrganizationProviders>,
    passkeys: Arc<dyn PasskeyStore>,
    webauthn: Option<Arc<webauthn_rs::Webauthn>>,
    mailer: Arc<dyn Mailer>,
    hasher: Arc<dyn PasswordHasher>,
    breaches: Option<Arc<dyn BreachedPasswords>>,
    tokens: Arc<dyn AccessTokenCodec>,
    keyring: Arc<dyn Keyring>,
    cache: Arc<dyn Cache>,
    rate_limits: Arc<RateLimits>,
    events: Arc<dyn EventLog>,
    clock: Arc<dyn Clock>,
    settings: AuthSettings,
    /// A hash of a random password, verified when the email is unknown so that an unknown
    /// account costs the same time as a wrong password.
    decoy_hash: String,
}

const SESSION_LIVE: &[u8] = b"live";
const SESSION_REVOKED: &[u8] = b"revoked";
const USER_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(300);
const TOUCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);
const MFA_TOKEN_MINUTES: i64 = 5;

fn account_disabled() -> Error {
    Error::unauthenticated("ACCOUNT_DISABLED", "this account is disabled")
}

fn invalid_credentials() -> Error {
    Error::unauthenticated("INVALID_CREDENTIALS", "invalid email or password")
}

fn invalid_mfa_token() -> Error {
    Error::unauthenticated(
        "INVALID_MFA_TOKEN",
        "the MFA token is not valid or expired, sign in again",
    )
}

fn session_key(session_id: Uuid) -> String {
    format!("session:{session_id}")
}

fn mfa_key(mfa_token: &str) -> String {
    format!("mfa:{}", secret::digest_hex(mfa_token))
}

fn user_key(user_id: Uuid) -> String {
    format!("user:{user_id}")
}

fn touched_key(session_id: Uuid) -> String {
    format!("session-touched:{session_id}")
}

impl AuthService {
    pub async fn new(ports: AuthPorts, settings: AuthSettings) -> Result<Self> {
        let decoy_hash = ports.hasher.hash(&secret::generate()).await?;
        Ok(Self {
            users: ports.users,
            sessions: ports.sessions,
            api_keys: ports.api_keys,
            totp: ports.totp,
            one_time_tokens: ports.one_time_tokens,
            identities: ports.identities,
            identity_providers: ports.identity_providers,
            organization_providers: ports.organization_providers,
            passkeys: ports.passkeys,
            webauthn: ports.webauthn,
            mailer: ports.mailer,
            hasher: ports.hasher,
            breaches: ports.breaches,
            tokens: ports.tokens,
            keyring: ports.keyring,
            cache: ports.cache,
            rate_limits: ports.rate_limits,
            events: ports.events,
            clock: ports.clock,
            settings,
            decoy_hash,
        })
    }

    /// Creates an account, within the per-minute budgets per address and per client (each
    /// sign-up costs a password hash).
    pub async fn register(
        &self,
        registration: Registration<'_>,
        client: &ClientInfo,
    ) -> Result<User> {
        self.hasher.admit()?;
        self.admit_rate(
            "register",
            &throttle::account_key(registration.email),
            client,
        )
        .await?;
        // The verification mail (or, for a taken address, the owner's notice) is due.
        self.admit_mail_to(registration.email).await?;
        self.create_user(registration, false, Origin::anonymous(client))
            .await
    }

    /// Creates a platform superuser, for the operator's CLI; the email counts as verified.
    pub async fn create_superuser(&self, registration: Registration<'_>) -> Result<User> {
        self.create_user(registration, true, Origin::system()).await
    }

    async fn create_user(
        &self,
        registration: Registration<'_>,
        superuser: bool,
        origin: Origin,
    ) -> Result<User> {
        let mut violations = Violations::default();
        let email = violations.check(EmailAddress::parse(registration.email));
        for violation in self
            .settings
            .password_policy
            .check("password", registration.password)
        {
            violations.push(violation);
        }
        let full_name = violations.check(parse_full_name(registration.full_name));
        let (Some(email), Some(full_name)) = (email, full_name) else {
            return Err(violations.into_error());
        };
        violations.finish()?;
        self.refuse_breached("password", registration.password)
            .await?;

        let password_hash = self.hasher.hash(registration.password).await?;
        let now = truncate_to_micros(self.clock.now());
        let user = User {
            id: Uuid::now_v7(),
            email: email.as_str().to_owned(),
            full_name,
            email_verified: superuser,
            is_superuser: superuser,
            is_active: true,
            created_at: now,
            updated_at: now,
        };
        let created = self.user_event(EventKind::UserCreated, &origin, &user);
        match self
            .users
            .insert_user(&user, &password_hash, &[created])
            .await
        {
            Err(error)
                if error.reason == EMAIL_TAKEN && self.hides_registered_addresses(superuser) =>
            {
                let email = email.as_str().to_owned();
                self.mailer
                    .send_later(MailJob::RegistrationAttempt { email })
                    .await?;
                return Ok(user);
            }
            inserted => inserted?,
        }
        tracing::info!(user_id = %user.id, superuser, "user registered");
        // The queue had room a moment ago (`register`); if it filled since, the account stands
        // and its owner can ask for a new link.
        if !user.email_verified
            && let Err(error) = self.send_verification(&user).await
        {
            tracing::warn!(user_id = %user.id, %error, "verification mail not queued");
        }
        Ok(user)
    }

    /// A new password, against the policy and the list of breached passwords when there is
    /// one.
    pub(super) async fn check_new_password(&self, field: &str, password: &str) -> Result<()> {
        let violations = self.settings.password_policy.check(field, password);
        if !violations.is_empty() {
            return Err(Error::invalid_fields(violations));
        }
        self.refuse_breached(field, password).await
    }

    async fn refuse_breached(&self, field: &str, password: &str) -> Result<()> {
        if let Some(breaches) = &self.breaches
            && breaches.is_breached(password).await?
        {
            return Err(Error::invalid_fields(vec![password::breached(field)]));
        }
        Ok(())
    }

    /// Whether a sign-up for a taken address answers as for a new one. Only when sign-in needs
    /// a verified address: the look-alike account can then never be used, and the owner hears
    /// of the attempt by mail. Otherwise `EMAIL_TAKEN` stays (a registration must be usable at
    /// once, so it cannot pretend).
    fn hides_registered_addresses(&self, superuser: bool) -> bool {
        self.settings.require_verified_email && !superuser
    }

    /// Decides and renders a queued message (see `MailJob`); `None` when none is due.
    pub async fn prepare_mail(&self, job: MailJob) -> Result<Option<OutgoingMail>> {
        match job {
            MailJob::Rendered(mail) => Ok(Some(mail)),
            MailJob::Link { email, purpose } => self.link_mail_for(&email, purpose).await,
            // The owner's name is looked up here, so the request cost the same as a new
            // registration.
            MailJob::RegistrationAttempt { email } => {
                let Ok(email) = EmailAddress::parse(&email) else {
                    return Ok(None);
                };
                let Some(credentials) = self.users.find_credentials_by_email(&email).await? else {
                    return Ok(None);
                };
                let owner = credentials.user;
                Ok(Some(Template::RegistrationAttempt.render(
                    &owner.email,
                    &[("name", owner.full_name.as_str())],
                )))
            }
        }
    }

    /// Checks an email and password and opens a session. Unknown emails, wrong passwords and
    /// malformed emails all answer `INVALID_CREDENTIALS` after the same amount of hashing;
    /// attempts are rate limited and repeated failures lock the account (see `throttle`).
    pub async fn login(
        &self,
        email: &str,
        password: &str,
        client: ClientInfo,
    ) -> Result<LoginOutcome> {
        let missing: Vec<FieldViolation> = [("email", email.trim()), ("password", password)]
            .into_iter()
            .filter(|(_, value)| value.is_empty())
            .map(|(field, _)| FieldViolation::new(field, "REQUIRED", "is required"))
            .collect();
        if !missing.is_empty() {
            return Err(Error::invalid_fields(missing));
        }
        self.refuse_if_sso_enforced(email).await?;
        self.hasher.admit()?;
        let account = throttle::account_key(email);
        self.admit_attempt(&account, &client).await?;
        let (credentials, check) = self
            .judged(&account, self.check_password(email, password))
            .await?;
        let origin = Origin::anonymous(&client);
        let known = credentials.as_ref().map(|credentials| credentials.user.id);
        let Some(credentials) = credentials.filter(|_| check != PasswordCheck::Mismatch) else {
            let failure = SignInFailureData::new(known, email, "invalid_credentials");
            self.record_failure(&account, &origin, failure).await?;
            return Err(invalid_credentials());
        };
        let user = credentials.user;
        let second_factor = self.totp.is_enabled(user.id).await?;
        if !second_factor {
            // The password was the whole proof; with 2FA the count stays until the code.
            self.record_success(&account).await?;
        }
        if !user.is_active {
            let failure = SignInFailureData::new(Some(user.id), email, "account_disabled");
            return Err(self.refused(&origin, failure, account_disabled()).await);
        }
        if let Err(unverified) = self.require_verified(&user) {
            let failure = SignInFailureData::new(Some(user.id), email, "email_not_verified");
            return Err(self.refused(&origin, failure, unverified).await);
        }
        if check == PasswordCheck::MatchNeedsRehash {
            self.rehash(&user, password).await;
        }
        if second_factor {
            return self.start_mfa(&user, client).await;
        }
        Ok(LoginOutcome::SignedIn(
            self.open_session(&user, client).await?,
        ))
    }

    /// The account of `email` and whether `password` is its password; an unknown or malformed
    /// email costs the same hashing as a wrong password.
    async fn check_password(
        &self,
        email: &str,
        password: &str,
    ) -> Result<(Option<UserCredentials>, PasswordCheck)> {
        let credentials = match EmailAddress::parse(email) {
            Ok(email) => self.users.find_credentials_by_email(&email).await?,
            Err(_) => None,
        };
        let check = match &credentials {
            Some(credentials) => {
                self.hasher
                    .verify(password, &credentials.password_hash)
                    .await?
            }
            None => {
                self.hasher.verify(password, &self.decoy_hash).await?;
                PasswordCheck::Mismatch
            }
        };
        Ok((credentials, check))
    }

    /// Parks a password-verified sign-in until its second factor arrives.
    async fn start_mfa(&self, user: &User, client: ClientInfo) -> Result<LoginOutcome> {
        let mfa_token = secret::generate();
        let lifetime = Duration::minutes(MFA_TOKEN_MINUTES);
        let pending = PendingMfa {
            user_id: user.id,
            client,
            expires_at: self.clock.now() + lifetime,
        };
        let encoded = serde_json::to_vec(&pending).map_err(Error::internal)?;
        let ttl = lifetime.to_std().map_err(Error::internal)?;
        self.cache.set(&mfa_key(&mfa_token), &encoded, ttl).await?;
        Ok(LoginOutcome::MfaRequired { mfa_token })
    }

    /// Completes a sign-in with its second factor: an authenticator code or a backup code.
    /// Wrong codes count towards the lockout like wrong passwords.
    pub async fn login_mfa(&self, mfa_token: &str, code: &str) -> Result<TokenPair> {
        let key = mfa_key(mfa_token);
        let pending = self.pending_mfa(mfa_token).await?;
        let user = self.user(pending.user_id).await?;
        let account = throttle::account_key(&user.email);
        self.admit_attempt(&account, &pending.client).await?;
        let verified = self
            .judged(
                &account,
                self.totp.verify_second_factor(user.id, &user.email, code),
            )
            .await?;
        if !verified {
            let origin = Origin::anonymous(&pending.client);
            let failure = SignInFailureData::new(Some(user.id), &user.email, "invalid_code");
            self.record_failure(&account, &origin, failure).await?;
            return Err(invalid_code());
        }
        // Single use: a second request with the same token finds nothing.
        if self.cache.take(&key).await?.is_none() {
            return Err(invalid_mfa_token());
        }
        self.record_success(&account).await?;
        if !user.is_active {
            let origin = Origin::anonymous(&pending.client);
            let failure = SignInFailureData::new(Some(user.id), &user.email, "account_disabled");
            return Err(self.refused(&origin, failure, account_disabled()).await);
        }
        self.open_session(&user, pending.client).await
    }

    /// The password-verified sign-in `mfa_token` stands for, still waiting for its second
    /// factor.
    async fn pending_mfa(&self, mfa_token: &str) -> Result<PendingMfa> {
        self.cache
            .get(&mfa_key(mfa_token))
            .await?
            .and_then(|bytes| serde_json::from_slice::<PendingMfa>(&bytes).ok())
            .filter(|pending| pending.expires_at > self.clock.now())
            .ok_or_else(invalid_mfa_token)
    }

    /// Upgrades a legacy or outdated password hash; a failure only delays the upgrade.
    async fn rehash(&self, user: &User, password: &str) {
        let upgraded = match self.hasher.hash(password).await {
            Ok(hash) => {
                self.users
                    .update_password_hash(user.id, &hash, truncate_to_micros(self.clock.now()), &[])
                    .await
            }
            Err(error) => Err(error),
        };
        match upgraded {
            Ok(()) => tracing::info!(user_id = %user.id, "password hash upgraded"),
            Err(error) => tracing::warn!(user_id = %user.id, %error, "password rehash failed"),
        }
    }

    async fn open_session(&self, user: &User, client: ClientInfo) -> Result<TokenPair> {
        let origin = Origin::user(user.id, &client);
        let now = truncate_to_micros(self.clock.now());
        let session = Session {
            id: Uuid::now_v7(),
            user_id: user.id,
            user_agent: client.user_agent,
            ip_address: client.ip_address,
            created_at: now,
            last_used_at: now,
            expires_at: now
                + self
                    .settings
                    .refresh_token_ttl
                    .min(self.settings.session_max_lifetime),
            revoked_at: None,
        };
        let refresh_token = secret::generate();
        let opened = self.session_event(EventKind::SessionCreated, &origin, session.id, user.id);
        self.sessions
            .insert_session(&session, &secret::digest(&refresh_token), &[opened])
            .await?;
        tracing::info!(user_id = %user.id, session_id = %session.id, "session opened");
        self.token_pair(&session, refresh_token)
    }

    fn token_pair(&self, session: &Session, refresh_token: String) -> Result<TokenPair> {
        let now = self.clock.now();
        let claims = AccessClaims {
            user_id: session.user_id,
            session_id: session.id,
            token_id: Uuid::now_v7(),
            issued_at: now,
            expires_at: now + self.settings.access_token_ttl,
        };
        Ok(TokenPair {
            access_token: self.tokens.sign(&claims)?,
            refresh_token,
            expires_in: self.settings.access_token_ttl,
        })
    }

    /// Spends a refresh token for a new pair. A spent token presented again means it leaked:
    /// the whole session is revoked.
    pub async fn refresh(&self, refresh_token: &str) -> Result<TokenPair> {
        let old_digest = secret::digest(refresh_token);
        let Some(record) = self.sessions.find_refresh_token(&old_digest).await? else {
            return Err(Error::unauthenticated(
                "INVALID_REFRESH_TOKEN",
                "the refresh token is not valid",
            ));
        };
        if record.spent {
            return Err(self.revoke_for_reuse(record.session_id).await);
        }
        let now = truncate_to_micros(self.clock.now());
        let session = self
            .sessions
            .find_session(record.session_id)
            .await?
            .ok_or_else(|| Error::internal("refresh token without a session"))?;
        if session.revoked_at.is_some() {
            return Err(Error::unauthenticated(
                "SESSION_REVOKED",
                "the session was revoked, sign in again",
            ));
        }
        if session.expires_at <= now {
            return Err(Error::unauthenticated(
                "SESSION_EXPIRED",
                "the session expired, sign in again",
            ));
        }
        let user = self.user(session.user_id).await?;
        if !user.is_active {
            return Err(account_disabled());
        }
        let new_token = secret::generate();
        let expires_at = (now + self.settings.refresh_token_ttl)
            .min(session.created_at + self.settings.session_max_lifetime);
        let rotated = self
            .sessions
            .rotate_refresh_token(
                session.id,
                &old_digest,
                &secret::digest(&new_token),
                now,
                expires_at,
            )
            .await?;
        if !rotated {
            return Err(self.revoke_for_reuse(session.id).await);
        }
        self.token_pair(&session, new_token)
    }

    async fn revoke_for_reuse(&self, session_id: Uuid) -> Error {
        tracing::warn!(session_id = %session_id, "refresh token reused, revoking the session");
        let revoked = match self.sessions.find_session(session_id).await {
            Ok(Some(session)) => {
                self.revoke_session(session.id, session.user_id, &Origin::system())
                    .await
            }
            Ok(None) => Ok(()),
            Err(error) => Err(error),
        };
        if let Err(error) = revoked {
            return error;
        }
        Error::unauthenticated(
            "REFRESH_TOKEN_REUSED",
            "the refresh token was already used; the session is revoked, sign in again",
        )
    }

    /// Revokes a session of `user_id`: its tokens stop working on the next request, on every
    /// replica that shares the cache.
    pub async fn revoke_session(
        &self,
        session_id: Uuid,
        user_id: Uuid,
        origin: &Origin,
    ) -> Result<()> {
        let revoked = self.session_event(EventKind::SessionRevoked, origin, session_id, user_id);
        self.sessions
            .revoke_session(session_id, truncate_to_micros(self.clock.now()), &[revoked])
            .await?;
        let generation = self.forget_user(user_id).await?;
        self.mark_revoked(session_id, generation).await
    }

    fn user_event(&self, kind: EventKind, origin: &Origin, user: &User) -> Event {
        Event::new(kind, origin, self.clock.as_ref(), &UserData::from(user))
    }

    fn session_event(
        &self,
        kind: EventKind,
        origin: &Origin,
        session_id: Uuid,
        user_id: Uuid,
    ) -> Event {
        let data = SessionData {
            session_id,
            user_id,
        };
        Event::new(kind, origin, self.clock.as_ref(), &data)
    }

    /// Records a revocation in the cache port, where every request looks, under the user's
    /// generation after the change.
    async fn mark_revoked(&self, session_id: Uuid, generation: u64) -> Result<()> {
        self.cache
            .set(
                &session_key(session_id),
                &generation::tag(generation, SESSION_REVOKED),
                self.status_cache_ttl(),
            )
            .await
    }

    pub async fn logout(&self, principal: &Principal) -> Result<()> {
        let session_id = principal.session_id()?;
        self.revoke_session(session_id, principal.user.id, &principal.into())
            .await?;
        tracing::info!(user_id = %principal.user.id, session_id = %session_id, "signed out");
        Ok(())
    }

    /// Resolves an access token to its caller: signature (cached by the codec), expiry against
    /// the clock, then the session's status and the user record from the cache port in one
    /// round trip. No database round trip on the hot path once both are cached.
    pub async fn authenticate(&self, access_token: &str) -> Result<Principal> {
        let claims = self.tokens.verify(access_token)?;
        if claims.expires_at <= self.clock.now() {
            return Err(Error::unauthenticated(
                "TOKEN_EXPIRED",
                "the access token expired, refresh it",
            ));
        }
        let keys = [
            session_key(claims.session_id),
            user_key(claims.user_id),
            touched_key(claims.session_id),
            generation::key(&user_key(claims.user_id)),
        ];
        let mut cached = self.cache.get_many(&keys).await?.into_iter();
        let (cached_status, cached_user, recently_touched, generation) = (
            cached.next().flatten(),
            cached.next().flatten(),
            cached.next().flatten().is_some(),
            generation::parse(cached.next().flatten().as_deref()),
        );
        let live = match generation::untag(cached_status, generation) {
            Some(status) => status == SESSION_LIVE,
            None => {
                self.load_session_status(claims.session_id, generation)
                    .await?
            }
        };
        if !live {
            return Err(Error::unauthenticated(
                "SESSION_REVOKED",
                "the session was revoked, sign in again",
            ));
        }
        let user = match generation::untag(cached_user, generation)
            .and_then(|bytes| serde_json::from_slice::<User>(&bytes).ok())
        {
            Some(user) => user,
            None => self.load_user_at(claims.user_id, generation).await?,
        };
        if !user.is_active {
            return Err(account_disabled());
        }
        if !recently_touched {
            self.touch(claims.session_id).await?;
        }
        Ok(Principal {
            user: Arc::new(user),
            credential: Credential::Session(claims.session_id),
            client: ClientInfo::default(),
        })
    }

    /// Records a session's activity, at most once per `TOUCH_INTERVAL`, so that listing
    /// sessions shows recent use without a write per request.
    async fn touch(&self, session_id: Uuid) -> Result<()> {
        self.cache
            .set(&touched_key(session_id), b"1", TOUCH_INTERVAL)
            .await?;
        self.sessions
            .touch_session(session_id, truncate_to_micros(self.clock.now()))
            .await
    }

    /// Resolves an API key to its owner, limited to the key's scopes.
    pub async fn authenticate_api_key(&self, presented: &str) -> Result<Principal> {
        let key = self.api_keys.verify(presented).await?;
        let user = self.user(key.user_id).await?;
        if !user.is_active {
            return Err(account_disabled());
        }
        Ok(Principal {
            user: Arc::new(user),
            credential: Credential::ApiKey {
                id: key.id,
                scopes: key.scopes,
                organization_id: key.organization_id,
            },
            client: ClientInfo::default(),
        })
    }

    /// Reads a session's status from the store and caches it under `generation`, the user's
    /// generation as read before the store.
    async fn load_session_status(&self, session_id: Uuid, generation: u64) -> Result<bool> {
        let now = self.clock.now();
        let live = self
            .sessions
            .find_session(session_id)
            .await?
            .is_some_and(|session| session.is_live(now));
        let status = if live { SESSION_LIVE } else { SESSION_REVOKED };
        self.cache
            .set(
                &session_key(session_id),
                &generation::tag(generation, status),
                self.status_cache_ttl(),
            )
            .await?;
        Ok(live)
    }

    /// A cached status outlives every access token issued before it was written, so a
    /// revocation cannot expire from the cache while a token of that session still verifies.
    fn status_cache_ttl(&self) -> std::time::Duration {
        self.settings
            .access_token_ttl
            .to_std()
            .unwrap_or(std::time::Duration::from_secs(900))
    }

    /// The user record, from the cache port when it is there.
    async fn user(&self, user_id: Uuid) -> Result<User> {
        let keys = [user_key(user_id), generation::key(&user_key(user_id))];
        let mut cached = self.cache.get_many(&keys).await?.into_iter();
        let (cached_user, generation) = (
            cached.next().flatten(),
            generation::parse(cached.next().flatten().as_deref()),
        );
        if let Some(user) = generation::untag(cached_user, generation)
            .and_then(|bytes| serde_json::from_slice::<User>(&bytes).ok())
        {
            return Ok(user);
        }
        self.load_user_at(user_id, generation).await
    }

    /// After a change to the user, their sessions or their record: what is cached of them is
    /// dropped, and an older read can no longer be cached. Answers the new generation.
    async fn forget_user(&self, user_id: Uuid) -> Result<u64> {
        let generation = generation::bump(self.cache.as_ref(), &user_key(user_id)).await?;
        self.cache.delete(&user_key(user_id)).await?;
        Ok(generation)
    }

    /// Reads a user from the store and caches it.
    async fn load_user(&self, user_id: Uuid) -> Result<User> {
        let generation = generation::current(self.cache.as_ref(), &user_key(user_id)).await?;
        self.load_user_at(user_id, generation).await
    }

    /// Reads a user from the store and caches it under `generation`, read before the store.
    async fn load_user_at(&self, user_id: Uuid, generation: u64) -> Result<User> {
        let user =
            self.users.find_user(user_id).await?.ok_or_else(|| {
                Error::unauthenticated("USER_NOT_FOUND", "the user no longer exists")
            })?;
        let encoded = serde_json::to_vec(&user).map_err(Error::internal)?;
        self.cache
            .set(
                &user_key(user_id),
                &generation::tag(generation, &encoded),
                USER_CACHE_TTL,
            )
            .await?;
        Ok(user)
    }
}
