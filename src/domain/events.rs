//! Events: what changed, who did it and from where. A state change writes its events in the
//! same transaction as the change (the outbox); the dispatcher then hands them, in order, to
//! their consumers (the audit log, webhooks). The catalog below is the contract: every event
//! type with the JSON schema of its `data`.

use super::auth::ClientInfo;
use super::clock::{Clock, truncate_to_micros};
pub use super::files::FileData;
use super::principal::{Credential, Principal};
use super::tenancy::permissions::RoleKey;
use super::user::User;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The version of every `data` schema; a breaking change to one gets a new event type.
pub const DATA_VERSION: u32 = 1;

/// Who caused an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Actor {
    /// A signed-in user (session).
    User { user_id: Uuid },
    /// A user's API key.
    ApiKey { user_id: Uuid, api_key_id: Uuid },
    /// Someone not signed in: a sign-up, a sign-in attempt, a link from a mail.
    Anonymous,
    /// Keel itself: a scheduled job, the operator's CLI.
    System,
}

impl Actor {
    pub fn kind(self) -> &'static str {
        match self {
            Self::User { .. } => "user",
            Self::ApiKey { .. } => "api_key",
            Self::Anonymous => "anonymous",
            Self::System => "system",
        }
    }

    /// The user behind the actor, if any.
    pub fn user_id(self) -> Option<Uuid> {
        match self {
            Self::User { user_id } | Self::ApiKey { user_id, .. } => Some(user_id),
            Self::Anonymous | Self::System => None,
        }
    }

    pub fn api_key_id(self) -> Option<Uuid> {
        match self {
            Self::ApiKey { api_key_id, .. } => Some(api_key_id),
            _ => None,
        }
    }

    /// The inverse of `kind` with the ids as stored.
    pub fn from_parts(kind: &str, user_id: Option<Uuid>, api_key_id: Option<Uuid>) -> Self {
        match (kind, user_id, api_key_id) {
            ("user", Some(user_id), _) => Self::User { user_id },
            ("api_key", Some(user_id), Some(api_key_id)) => Self::ApiKey {
                user_id,
                api_key_id,
            },
            ("anonymous", _, _) => Self::Anonymous,
            _ => Self::System,
        }
    }
}

/// Who caused an event and where the request came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub actor: Actor,
    pub client: ClientInfo,
}

impl Origin {
    pub fn system() -> Self {
        Self {
            actor: Actor::System,
            client: ClientInfo::default(),
        }
    }

    pub fn anonymous(client: &ClientInfo) -> Self {
        Self {
            actor: Actor::Anonymous,
            client: client.clone(),
        }
    }

    /// A user acting for themselves without a credential yet (signing in, following a link).
    pub fn user(user_id: Uuid, client: &ClientInfo) -> Self {
        Self {
            actor: Actor::User { user_id },
            client: client.clone(),
        }
    }
}

impl From<&Principal> for Origin {
    fn from(principal: &Principal) -> Self {
        let user_id = principal.user.id;
        let actor = match &principal.credential {
            Credential::Session(_) => Actor::User { user_id },
            Credential::ApiKey { id, .. } => Actor::ApiKey {
                user_id,
                api_key_id: *id,
            },
        };
        Self {
            actor,
            client: principal.client.clone(),
        }
    }
}

/// Whether what an event records went through or was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Success, Self::Failure]
            .into_iter()
            .find(|outcome| outcome.as_str() == text)
    }
}

/// The `data` of an event: what it is about (its subject) and, when it belongs to one, its
/// organization.
pub trait EventData: Serialize + JsonSchema {
    /// The subject's type: `user`, `organization`, `member`…
    const SUBJECT: &'static str;
    fn subject_id(&self) -> String;
    fn organization_id(&self) -> Option<Uuid> {
        None
    }
    /// The user the event concerns, whose `user` realtime channel carries it.
    fn user_id(&self) -> Option<Uuid> {
        None
    }
}

macro_rules! catalog {
    ($($kind:ident = $name:literal, $data:ty, $outcome:ident, $description:literal;)+) => {
        /// Every event type Keel emits.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum EventKind {
            $($kind,)+
        }

        impl EventKind {
            pub const ALL: &[EventKind] = &[$(Self::$kind,)+];

            /// The dotted name: `user.created`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$kind => $name,)+
                }
            }

            pub fn description(self) -> &'static str {
                match self {
                    $(Self::$kind => $description,)+
                }
            }

            pub fn outcome(self) -> Outcome {
                match self {
                    $(Self::$kind => Outcome::$outcome,)+
                }
            }

            /// The JSON schema of the event's `data`.
            pub fn data_schema(self) -> serde_json::Value {
                let schema = match self {
                    $(Self::$kind => schemars::schema_for!($data),)+
                };
                serde_json::to_value(schema).unwrap_or_default()
            }

            fn data_type(self) -> &'static str {
                match self {
                    $(Self::$kind => std::any::type_name::<$data>(),)+
                }
            }
        }
    };
}

catalog! {
    ApiKeyCreated = "api_key.created", ApiKeyData, Success,
        "An API key was created; its secret is never part of an event.";
    ApiKeyRevoked = "api_key.revoked", ApiKeyData, Success, "An API key was revoked.";
    FeatureFlagCreated = "feature_flag.created", FeatureFlagData, Success,
        "A feature flag was created.";
    FeatureFlagDeleted = "feature_flag.deleted", FeatureFlagData, Success,
        "A feature flag was deleted.";
    FeatureFlagOverrideDeleted = "feature_flag.override_deleted", FeatureFlagOverrideData,
        Success, "An organization removed its override of a feature flag.";
    FeatureFlagOverrideSet = "feature_flag.override_set", FeatureFlagOverrideData, Success,
        "An organization turned a feature flag on or off for checks made within it.";
    FeatureFlagUpdated = "feature_flag.updated", FeatureFlagData, Success,
        "A feature flag was switched, its rollout or its targeting changed.";
    FileDeleted = "file.deleted", FileData, Success,
        "A file was deleted: no longer listed or served, its bytes released.";
    FileUploaded = "file.uploaded", FileData, Success,
        "A file was uploaded (personal, or an organization's).";
    IntegrationCreated = "integration.created", IntegrationData, Success,
        "An integration was created; its secret is never part of an event.";
    IntegrationDeleted = "integration.deleted", IntegrationData, Success,
        "An integration was deleted with the messages it sent.";
    IntegrationEventReceived = "integration.event_received", IntegrationMessageData, Success,
        "An integration sent a message, authenticated by its signature or key (`payload`: the \
         body, as JSON when it was sent as JSON, else as text).";
    IntegrationSecretRegenerated = "integration.secret_regenerated", IntegrationData, Success,
        "An integration's secret was replaced; the old one stopped working.";
    IntegrationUpdated = "integration.updated", IntegrationData, Success,
        "An integration's name or description changed, or it was turned on or off.";
    InvitationAccepted = "invitation.accepted", InvitationData, Success,
        "An invitation was accepted: its invitee is now a member.";
    InvitationCreated = "invitation.created", InvitationData, Success,
        "Someone was invited to an organization by email.";
    InvitationRevoked = "invitation.revoked", InvitationData, Success,
        "A pending invitation was revoked.";
    LlmProviderDeleted = "llm.provider_deleted", LlmProviderData, Success,
        "An organization removed an LLM provider.";
    LlmProviderSet = "llm.provider_set", LlmProviderData, Success,
        "An organization added or changed an LLM provider; its key is never part of an event.";
    MemberAdded = "member.added", MemberData, Success,
        "A user became a member of an organization.";
    MemberRemoved = "member.removed", MemberData, Success,
        "A member left or was removed from an organization.";
    MemberRolesChanged = "member.roles_changed", MemberData, Success,
        "A member's organization-wide roles changed (`roles` holds the new ones).";
    NotificationCreated = "notification.created", NotificationData, Success,
        "A user received an in-app notification (from an operator or from Keel).";
    OrganizationCreated = "organization.created", OrganizationData, Success,
        "An organization was created.";
    OrganizationDeleted = "organization.deleted", OrganizationData, Success,
        "An organization was deleted with everything scoped to it.";
    OrganizationIpRefused = "organization.ip_refused", IpRefusedData, Failure,
        "A call into an organization was refused: the caller's address is outside its IP \
         restrictions.";
    OrganizationIpRestrictionsUpdated = "organization.ip_restrictions_updated",
        IpRestrictionsData, Success,
        "An organization's IP allow or deny list changed (`allow` and `deny` hold the new ones).";
    OrganizationUpdated = "organization.updated", OrganizationData, Success,
        "An organization's name, slug or settings changed.";
    QuotaExceeded = "quota.exceeded", QuotaData, Failure,
        "A request was refused because it would exceed an organization's quota.";
    RoleCreated = "role.created", RoleData, Success, "A custom role was created.";
    RoleDeleted = "role.deleted", RoleData, Success,
        "A custom role was deleted and taken from everyone who held it.";
    RoleUpdated = "role.updated", RoleData, Success,
        "A custom role's name, description or permissions changed.";
    SessionCreated = "session.created", SessionData, Success,
        "A user signed in: a session was opened.";
    SessionExpired = "session.expired", SessionData, Success,
        "A session reached its end of life unrevoked (noticed by the cleanup job, within the \
         hour by default).";
    SessionRevoked = "session.revoked", SessionData, Success,
        "A session was ended: signed out, revoked, or closed by a password change.";
    SsoConnectionDeleted = "sso.connection_deleted", SsoConnectionData, Success,
        "An organization removed its single sign-on provider.";
    SsoConnectionSet = "sso.connection_set", SsoConnectionData, Success,
        "An organization set (or changed) its single sign-on provider.";
    SsoDomainApproved = "sso.domain_approved", SsoDomainData, Success,
        "A platform superuser approved a domain an organization claimed for single sign-on.";
    SsoDomainClaimed = "sso.domain_claimed", SsoDomainData, Success,
        "An organization claimed an email domain for single sign-on.";
    SsoDomainRemoved = "sso.domain_removed", SsoDomainData, Success,
        "An organization gave up an email domain.";
    TeamCreated = "team.created", TeamData, Success, "A team was created.";
    TeamDeleted = "team.deleted", TeamData, Success, "A team was deleted.";
    TeamMemberAdded = "team.member_added", TeamMemberData, Success,
        "A member joined a team.";
    TeamMemberRemoved = "team.member_removed", TeamMemberData, Success,
        "A member left a team.";
    TeamMemberRolesChanged = "team.member_roles_changed", TeamMemberData, Success,
        "A team member's roles within the team changed.";
    TeamUpdated = "team.updated", TeamData, Success, "A team's name or description changed.";
    TestEvent = "test.event", TestEventData, Success,
        "A test event, sent to one webhook on request (POST /api/v1/webhooks/{id}/test).";
    UserCreated = "user.created", UserData, Success,
        "An account was created (sign-up or the operator's CLI).";
    UserDeleted = "user.deleted", UserData, Success,
        "An account was deleted (deactivated; its sessions and keys revoked).";
    UserIdentityLinked = "user.identity_linked", IdentityData, Success,
        "A sign-in provider's identity was linked to an account (by a sign-in or by the user).";
    UserIdentityUnlinked = "user.identity_unlinked", IdentityData, Success,
        "A sign-in provider's identity was unlinked from an account.";
    UserLockedOut = "user.locked_out", SignInFailureData, Failure,
        "Repeated failures locked an account's sign-in for a while.";
    UserLoginFailed = "user.login_failed", SignInFailureData, Failure,
        "A sign-in attempt failed (`reason` says why).";
    UserMfaDisabled = "user.mfa_disabled", UserData, Success,
        "Two-factor authentication was turned off (by the user or a superuser).";
    UserMfaEnabled = "user.mfa_enabled", UserData, Success,
        "Two-factor authentication was turned on.";
    UserPasskeyAdded = "user.passkey_added", PasskeyData, Success,
        "A passkey was registered to an account.";
    UserPasskeyRemoved = "user.passkey_removed", PasskeyData, Success,
        "A passkey was removed from an account.";
    UserPasswordChanged = "user.password_changed", UserData, Success,
        "A user changed their password.";
    UserPasswordReset = "user.password_reset", UserData, Success,
        "A password was reset with a link from a mail.";
    UserSuperuserGranted = "user.superuser_granted", UserData, Success,
        "A user became a platform superuser.";
    UserSuperuserRevoked = "user.superuser_revoked", UserData, Success,
        "A user stopped being a platform superuser.";
    UserUpdated = "user.updated", UserData, Success,
        "A user's profile changed or their email address was verified.";
    WebhookCreated = "webhook.created", WebhookData, Success, "A webhook was created.";
    WebhookDeleted = "webhook.deleted", WebhookData, Success, "A webhook was deleted.";
    WebhookDisabled = "webhook.disabled", WebhookData, Failure,
        "Keel turned a webhook off after a run of failed deliveries (`disabled_reason`).";
    WebhookSecretRotated = "webhook.secret_rotated", WebhookData, Success,
        "A webhook's signing secret was replaced; the old one signs too for a grace period.";
    WebhookUpdated = "webhook.updated", WebhookData, Success,
        "A webhook's URL, event types, rate limit or state changed.";
}

impl EventKind {
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|kind| kind.name() == name)
    }

    /// What a webhook may subscribe to: `*`, a resource's events (`member.*`), or one type.
    pub fn patterns() -> Vec<String> {
        let mut patterns = vec!["*".to_owned()];
        for kind in Self::ALL {
            let resource = kind
                .name()
                .split_once('.')
                .map_or("", |(resource, _)| resource);
            let pattern = format!("{resource}.*");
            if !patterns.contains(&pattern) {
                patterns.push(pattern);
            }
        }
        patterns.extend(Self::ALL.iter().map(|kind| kind.name().to_owned()));
        patterns
    }
}

/// One event, as written to the outbox.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: Uuid,
    pub kind: EventKind,
    pub occurred_at: DateTime<Utc>,
    pub organization_id: Option<Uuid>,
    /// The user the event concerns (see `EventData::user_id`).
    pub user_id: Option<Uuid>,
    pub origin: Origin,
    pub subject_type: &'static str,
    pub subject_id: String,
    /// `data` as JSON, in the shape of the kind's schema.
    pub data: String,
}

impl Event {
    /// The event of `kind` about `data`, happening now.
    pub fn new<D: EventData>(
        kind: EventKind,
        origin: &Origin,
        clock: &dyn Clock,
        data: &D,
    ) -> Self {
        debug_assert_eq!(
            kind.data_type(),
            std::any::type_name::<D>(),
            "{} carries the data of its catalog entry",
            kind.name()
        );
        Self {
            id: Uuid::now_v7(),
            kind,
            occurred_at: truncate_to_micros(clock.now()),
            organization_id: data.organization_id(),
            user_id: data.user_id(),
            origin: origin.clone(),
            subject_type: D::SUBJECT,
            subject_id: data.subject_id(),
            data: serde_json::to_string(data).unwrap_or_else(|_| "{}".to_owned()),
        }
    }
}

/// An event read back from the outbox with its position.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    /// Commit order within this database; the dispatcher hands events on in this order.
    pub sequence: i64,
    pub event: Event,
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct UserData {
    pub user_id: Uuid,
    pub email: String,
    pub full_name: String,
    pub email_verified: bool,
    pub is_superuser: bool,
    pub is_active: bool,
}

impl From<&User> for UserData {
    fn from(user: &User) -> Self {
        Self {
            user_id: user.id,
            email: user.email.clone(),
            full_name: user.full_name.clone(),
            email_verified: user.email_verified,
            is_superuser: user.is_superuser,
            is_active: user.is_active,
        }
    }
}

impl EventData for UserData {
    const SUBJECT: &'static str = "user";
    fn subject_id(&self) -> String {
        self.user_id.to_string()
    }
    fn user_id(&self) -> Option<Uuid> {
        Some(self.user_id)
    }
}

/// A failed sign-in. `user_id` is absent when the address matches no account.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SignInFailureData {
    pub user_id: Option<Uuid>,
    /// The address as typed, up to 254 characters.
    pub email: String,
    /// `invalid_credentials`, `invalid_code`, `account_disabled`, `email_not_verified`,
    /// `locked_out`, or a provider sign-in's refusal (`provider_rejected`, `link_required`,
    /// `domain_not_approved`…).
    pub reason: String,
}

impl SignInFailureData {
    /// `email` as typed (at most 254 characters); `user_id` when it names an account.
    pub fn new(user_id: Option<Uuid>, email: &str, reason: &str) -> Self {
        Self {
            user_id,
            email: email
                .trim()
                .chars()
                .take(super::user::EmailAddress::MAX_LENGTH)
                .collect(),
            reason: reason.to_owned(),
        }
    }
}

impl EventData for SignInFailureData {
    const SUBJECT: &'static str = "user";
    fn subject_id(&self) -> String {
        self.user_id
            .map_or_else(|| self.email.clone(), |user_id| user_id.to_string())
    }
    fn user_id(&self) -> Option<Uuid> {
        self.user_id
    }
}

/// A session; where it was opened from is the event's `client`.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SessionData {
    pub session_id: Uuid,
    pub user_id: Uuid,
}

impl EventData for SessionData {
    const SUBJECT: &'static str = "session";
    fn subject_id(&self) -> String {
        self.session_id.to_string()
    }
    fn user_id(&self) -> Option<Uuid> {
        Some(self.user_id)
    }
}

/// A provider identity of an account.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct IdentityData {
    pub identity_id: Uuid,
    pub user_id: Uuid,
    /// The provider's name (`google`, `keycloak`…).
    pub provider: String,
}

impl EventData for IdentityData {
    const SUBJECT: &'static str = "identity";
    fn subject_id(&self) -> String {
        self.identity_id.to_string()
    }
    fn user_id(&self) -> Option<Uuid> {
        Some(self.user_id)
    }
}

/// A feature flag, as it is after the change.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FeatureFlagData {
    pub flag_id: Uuid,
    pub name: String,
    pub is_enabled: bool,
    pub rollout_percentage: f64,
}

impl EventData for FeatureFlagData {
    const SUBJECT: &'static str = "feature_flag";
    fn subject_id(&self) -> String {
        self.flag_id.to_string()
    }
}

/// A passkey of an account.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct PasskeyData {
    pub passkey_id: Uuid,
    pub user_id: Uuid,
    /// The name the user gave it.
    pub name: String,
}

impl EventData for PasskeyData {
    const SUBJECT: &'static str = "passkey";
    fn subject_id(&self) -> String {
        self.passkey_id.to_string()
    }
    fn user_id(&self) -> Option<Uuid> {
        Some(self.user_id)
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct ApiKeyData {
    pub api_key_id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    /// The key's public prefix (how it is recognised in lists), never its secret.
    pub prefix: String,
    pub scopes: Vec<String>,
    pub organization_id: Option<Uuid>,
}

impl EventData for ApiKeyData {
    const SUBJECT: &'static str = "api_key";
    fn subject_id(&self) -> String {
        self.api_key_id.to_string()
    }
    fn organization_id(&self) -> Option<Uuid> {
        self.organization_id
    }
    fn user_id(&self) -> Option<Uuid> {
        Some(self.user_id)
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct OrganizationData {
    pub organization_id: Uuid,
    pub name: String,
    pub slug: String,
}

impl EventData for OrganizationData {
    const SUBJECT: &'static str = "organization";
    fn subject_id(&self) -> String {
        self.organization_id.to_string()
    }
    fn organization_id(&self) -> Option<Uuid> {
        Some(self.organization_id)
    }
}

/// An organization's IP restrictions, in network form.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct IpRestrictionsData {
    pub organization_id: Uuid,
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

impl EventData for IpRestrictionsData {
    const SUBJECT: &'static str = "organization";
    fn subject_id(&self) -> String {
        self.organization_id.to_string()
    }
    fn organization_id(&self) -> Option<Uuid> {
        Some(self.organization_id)
    }
}

/// A call an organization's IP restrictions refused.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct IpRefusedData {
    pub organization_id: Uuid,
    /// The caller's address, as Keel saw it (after trusted proxies).
    pub address: Option<String>,
}

impl EventData for IpRefusedData {
    const SUBJECT: &'static str = "organization";
    fn subject_id(&self) -> String {
        self.organization_id.to_string()
    }
    fn organization_id(&self) -> Option<Uuid> {
        Some(self.organization_id)
    }
}

/// An organization's single sign-on provider (never its client secret).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SsoConnectionData {
    pub organization_id: Uuid,
    pub issuer: String,
    pub client_id: String,
    pub enforce: bool,
}

impl EventData for SsoConnectionData {
    const SUBJECT: &'static str = "sso_connection";
    fn subject_id(&self) -> String {
        self.organization_id.to_string()
    }
    fn organization_id(&self) -> Option<Uuid> {
        Some(self.organization_id)
    }
}

/// An email domain claimed for single sign-on.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct SsoDomainData {
    pub organization_id: Uuid,
    pub domain: String,
    pub approved: bool,
}

impl EventData for SsoDomainData {
    const SUBJECT: &'static str = "sso_domain";
    fn subject_id(&self) -> String {
        self.domain.clone()
    }
    fn organization_id(&self) -> Option<Uuid> {
        Some(self.organization_id)
    }
}

/// Role names: system role names (`owner`, `admin`…) or custom role ids.
fn role_names(role_keys: &[RoleKey]) -> Vec<String> {
    role_keys.iter().map(ToString::to_string).collect()
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct MemberData {
    pub organization_id: Uuid,
    pub user_id: Uuid,
    /// System role names or custom role ids.
    pub roles: Vec<String>,
}

impl MemberData {
    pub fn new(organization_id: Uuid, user_id: Uuid, role_keys: &[RoleKey]) -> Self {
        Self {
            organization_id,
            user_id,
            roles: role_names(role_keys),
        }
    }
}

impl EventData for MemberData {
    const SUBJECT: &'static str = "member";
    fn subject_id(&self) -> String {
        self.user_id.to_string()
    }
    fn organization_id(&self) -> Option<Uuid> {
        Some(self.organization_id)
    }
    fn user_id(&self) -> Option<Uuid> {
        Some(self.user_id)
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct InvitationData {
    pub invitation_id: Uuid,
    pub organization_id: Uuid,
    pub email: String,
    pub roles: Vec<String>,
}

impl InvitationData {
    pub fn new(
        invitation_id: Uuid,
        organization_id: Uuid,
        email: &str,
        role_keys: &[RoleKey],
    ) -> Self {
        Self {
            invitation_id,
            organization_id,
            email: email.to_owned(),
            roles: role_names(role_keys),
        }
    }
}

impl EventData for InvitationData {
    const SUBJECT: &'static str = "invitation";
    fn subject_id(&self) -> String {
        self.invitation_id.to_string()
    }
    fn organization_id(&self) -> Option<Uuid> {
        Some(self.organization_id)
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct RoleData {
    pub role_id: Uuid,
    pub organization_id: Uuid,
    pub name: String,
    pub permissions: Vec<String>,
}

impl EventData for RoleData {
    const SUBJECT: &'static str = "role";
    fn subject_id(&self) -> String {
        self.role_id.to_string()
    }
    fn organization_id(&self) -> Option<Uuid> {
        Some(self.organization_id)
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TeamData {
    pub team_id: Uuid,
    pub organization_id: Uuid,
    pub name: String,
}

impl EventData for TeamData {
    const SUBJECT: &'static str = "team";
    fn subject_id(&self) -> String {
        self.team_id.to_string()
    }
    fn organization_id(&self) -> Option<Uuid> {
        Some(self.organization_id)
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TeamMemberData {
    pub team_id: Uuid,
    pub organization_id: Uuid,
    pub user_id: Uuid,
    pub roles: Vec<String>,
}

impl TeamMemberData {
    pub fn new(team_id: Uuid, organization_id: Uuid, user_id: Uuid, roles: &[RoleKey]) -> Self {
        Self {
            team_id,
            organization_id,
            user_id,
            roles: role_names(roles),
        }
    }
}

impl EventData for TeamMemberData {
    const SUBJECT: &'static str = "team_member";
    fn subject_id(&self) -> String {
        format!("{}:{}", self.team_id, self.user_id)
    }
    fn organization_id(&self) -> Option<Uuid> {
        Some(self.organization_id)
    }
    fn user_id(&self) -> Option<Uuid> {
        Some(self.user_id)
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct QuotaData {
    pub organization_id: Uuid,
    /// `members`, `teams`, `api_calls`…
    pub resource: String,
    pub limit: i64,
}

impl EventData for QuotaData {
    const SUBJECT: &'static str = "quota";
    fn subject_id(&self) -> String {
        format!("{}:{}", self.organization_id, self.resource)
    }
    fn organization_id(&self) -> Option<Uuid> {
        Some(self.organization_id)
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct WebhookData {
    pub webhook_id: Uuid,
    pub organization_id: Uuid,
    pub url: String,
    pub event_types: Vec<String>,
    pub is_active: bool,
    /// Why Keel turned it off (`webhook.disabled`).
    pub disabled_reason: Option<String>,
}

impl From<&super::webhooks::Webhook> for WebhookData {
    fn from(webhook: &super::webhooks::Webhook) -> Self {
        Self {
            webhook_id: webhook.id,
            organization_id: webhook.organization_id,
            url: webhook.url.clone(),
            event_types: webhook.event_types.clone(),
            is_active: webhook.is_active,
            disabled_reason: webhook.disabled_reason.clone(),
        }
    }
}

impl EventData for WebhookData {
    const SUBJECT: &'static str = "webhook";
    fn subject_id(&self) -> String {
        self.webhook_id.to_string()
    }
    fn organization_id(&self) -> Option<Uuid> {
        Some(self.organization_id)
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct IntegrationData {
    pub integration_id: Uuid,
    pub organization_id: Uuid,
    pub name: String,
    pub integration_type: String,
    pub is_active: bool,
}

impl From<&super::integrations::Integration> for IntegrationData {
    fn from(integration: &super::integrations::Integration) -> Self {
        Self {
            integration_id: integration.id,
            organization_id: integration.organization_id,
            name: integration.name.clone(),
            integration_type: integration.integration_type.clone(),
            is_active: integration.is_active,
        }
    }
}

impl EventData for IntegrationData {
    const SUBJECT: &'static str = "integration";
    fn subject_id(&self) -> String {
        self.integration_id.to_string()
    }
    fn organization_id(&self) -> Option<Uuid> {
        Some(self.organization_id)
    }
}

/// A message an integration sent.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct IntegrationMessageData {
    pub integration_id: Uuid,
    pub organization_id: Uuid,
    pub integration_type: String,
    /// The sender's message id (`webhook-id`), or one Keel gave it.
    pub message_id: String,
    pub content_type: String,
    /// `signature` or `key`.
    pub authenticated_by: String,
    /// The body: as JSON when it was sent as JSON, else as text.
    pub payload: serde_json::Value,
}

impl EventData for IntegrationMessageData {
    const SUBJECT: &'static str = "integration";
    fn subject_id(&self) -> String {
        self.integration_id.to_string()
    }
    fn organization_id(&self) -> Option<Uuid> {
        Some(self.organization_id)
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct LlmProviderData {
    pub organization_id: Uuid,
    pub name: String,
    pub kind: String,
    pub base_url: String,
    pub models: Vec<String>,
    pub is_default: bool,
}

impl From<&super::llm::LlmProvider> for LlmProviderData {
    fn from(provider: &super::llm::LlmProvider) -> Self {
        Self {
            organization_id: provider.organization_id,
            name: provider.name.clone(),
            kind: provider.kind.as_str().to_owned(),
            base_url: provider.base_url.clone(),
            models: provider.models.clone(),
            is_default: provider.is_default,
        }
    }
}

impl EventData for LlmProviderData {
    const SUBJECT: &'static str = "llm_provider";
    fn subject_id(&self) -> String {
        self.name.clone()
    }
    fn organization_id(&self) -> Option<Uuid> {
        Some(self.organization_id)
    }
}

#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct FeatureFlagOverrideData {
    pub flag_id: Uuid,
    pub name: String,
    pub organization_id: Uuid,
    pub is_enabled: bool,
}

impl EventData for FeatureFlagOverrideData {
    const SUBJECT: &'static str = "feature_flag";
    fn subject_id(&self) -> String {
        self.flag_id.to_string()
    }
    fn organization_id(&self) -> Option<Uuid> {
        Some(self.organization_id)
    }
}

/// The `data` of `test.event`, sent to one endpoint on request.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct TestEventData {
    pub webhook_id: Uuid,
    pub organization_id: Uuid,
    pub message: String,
}

impl EventData for TestEventData {
    const SUBJECT: &'static str = "webhook";
    fn subject_id(&self) -> String {
        self.webhook_id.to_string()
    }
    fn organization_id(&self) -> Option<Uuid> {
        Some(self.organization_id)
    }
}

/// A notification as its user's realtime channel carries it.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct NotificationData {
    pub notification_id: Uuid,
    pub user_id: Uuid,
    /// `info`, `success`, `warning` or `error`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub body: String,
    pub link: Option<String>,
    /// The notification's JSON object for the client.
    pub data: serde_json::Map<String, serde_json::Value>,
}

impl From<&super::notifications::Notification> for NotificationData {
    fn from(notification: &super::notifications::Notification) -> Self {
        Self {
            notification_id: notification.id,
            user_id: notification.user_id,
            kind: notification.kind.as_str().to_owned(),
            title: notification.title.clone(),
            body: notification.body.clone(),
            link: notification.link.clone(),
            data: notification.data.clone(),
        }
    }
}

impl EventData for NotificationData {
    const SUBJECT: &'static str = "notification";
    fn subject_id(&self) -> String {
        self.notification_id.to_string()
    }
    fn user_id(&self) -> Option<Uuid> {
        Some(self.user_id)
    }
}

/// Events recorded on their own, with no change in the same transaction: refusals such as a
/// failed sign-in or an exceeded quota.
#[async_trait::async_trait]
pub trait EventLog: Send + Sync {
    async fn append_events(&self, events: &[Event]) -> super::error::Result<()>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_names_are_unique_dotted_and_parse_back() {
        let mut names: Vec<&str> = EventKind::ALL.iter().map(|kind| kind.name()).collect();
        let sorted = {
            let mut sorted = names.clone();
            sorted.sort_unstable();
            sorted
        };
        assert_eq!(names, sorted, "the catalog is kept sorted by name");
        names.dedup();
        assert_eq!(names.len(), EventKind::ALL.len());
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.name()), Some(*kind));
            let (resource, action) = kind.name().split_once('.').expect("dotted");
            assert!(!resource.is_empty() && !action.is_empty());
            let schema = kind.data_schema();
            assert_eq!(schema["type"], "object", "{}", kind.name());
            assert!(schema["properties"].is_object(), "{}", kind.name());
        }
        assert_eq!(EventKind::parse("user.nonexistent"), None);
    }

    #[test]
    fn actors_round_trip_through_their_parts() {
        let user_id = Uuid::now_v7();
        let api_key_id = Uuid::now_v7();
        for actor in [
            Actor::User { user_id },
            Actor::ApiKey {
                user_id,
                api_key_id,
            },
            Actor::Anonymous,
            Actor::System,
        ] {
            assert_eq!(
                Actor::from_parts(actor.kind(), actor.user_id(), actor.api_key_id()),
                actor
            );
        }
    }
}
