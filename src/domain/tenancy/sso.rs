//! Enterprise single sign-on: an organization's own OpenID Connect provider, for the email
//! domains it owns. Its people sign in through it (and join the organization the first time),
//! and with `enforce` through it only.

use super::OrganizationStore;
use super::access::{Access, AccessControl};
use super::permissions::{RoleKey, SystemRole};
use super::quotas::QuotaService;
use crate::domain::auth::{
    ClientInfo, IdentityProvider, OrganizationProvider, OrganizationProviders,
};
use crate::domain::clock::{Clock, truncate_to_micros};
use crate::domain::error::{Error, ErrorKind, FieldViolation, Missing, Result};
use crate::domain::events::{
    Event, EventKind, MemberData, Origin, SsoConnectionData, SsoDomainData,
};
use crate::domain::principal::Principal;
use crate::domain::secret::{self, Keyring};
use crate::domain::user::{EmailAddress, User};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsoConnection {
    pub organization_id: Uuid,
    pub issuer: String,
    pub client_id: String,
    pub scopes: Vec<String>,
    /// A system role name or a custom role id.
    pub default_role: String,
    pub enforce: bool,
    /// No second factor after the provider's sign-in.
    pub trust_mfa: bool,
    /// The claim listing the person's groups.
    pub groups_claim: String,
    /// (group, role key): the roles people of a group join with.
    pub role_mappings: Vec<(String, String)>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl SsoConnection {
    pub fn provider_name(&self) -> String {
        provider_name(self.organization_id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsoDomain {
    pub domain: String,
    pub organization_id: Uuid,
    /// What the domain's TXT record must say to prove the claim.
    pub verification_token: String,
    pub created_at: DateTime<Utc>,
    pub approved_at: Option<DateTime<Utc>>,
}

impl SsoDomain {
    /// The TXT record that proves the claim: its name and its text.
    pub fn verification_record(&self) -> (String, String) {
        (
            format!("_keel-challenge.{}", self.domain),
            format!("keel-verification={}", self.verification_token),
        )
    }
}

/// DNS, for the TXT records that prove who owns a domain.
#[async_trait::async_trait]
pub trait TxtRecords: Send + Sync {
    /// The texts of `name`'s TXT records; none for a name that does not exist.
    async fn txt(&self, name: &str) -> Result<Vec<String>>;
}

/// Where connections and domains live.
#[async_trait::async_trait]
pub trait SsoStore: Send + Sync {
    /// The connection and its sealed client secret.
    async fn find_connection(
        &self,
        organization_id: Uuid,
    ) -> Result<Option<(SsoConnection, Vec<u8>)>>;
    /// Creates or replaces the connection; `None` keeps the sealed secret on record.
    async fn put_connection(
        &self,
        connection: &SsoConnection,
        sealed_secret: Option<&[u8]>,
        events: &[Event],
    ) -> Result<()>;
    async fn delete_connection(&self, organization_id: Uuid, events: &[Event]) -> Result<bool>;
    /// Fails with `DOMAIN_TAKEN` when any organization claimed it.
    async fn insert_domain(&self, domain: &SsoDomain, events: &[Event]) -> Result<()>;
    async fn list_domains(&self, organization_id: Uuid) -> Result<Vec<SsoDomain>>;
    async fn delete_domain(
        &self,
        organization_id: Uuid,
        domain: &str,
        events: &[Event],
    ) -> Result<bool>;
    /// Approves a pending claim (the events are written only then); answers the domain.
    async fn approve_domain(
        &self,
        domain: &str,
        now: DateTime<Utc>,
        events: &[Event],
    ) -> Result<Option<SsoDomain>>;
    async fn find_domain(&self, domain: &str) -> Result<Option<SsoDomain>>;
}

/// The provider of a connection (the OIDC adapter, which keeps what a provider learned, its
/// discovery document and keys, while the connection stays the same).
pub trait ConnectionProviders: Send + Sync {
    fn provider(
        &self,
        connection: &SsoConnection,
        client_secret: &str,
    ) -> Arc<dyn IdentityProvider>;
}

pub const DOMAIN_TAKEN: &str = "DOMAIN_TAKEN";
const PROVIDER_PREFIX: &str = "sso-";
const SECRET_PURPOSE: &str = "sso-client-secret";
const MAX_ROLE_MAPPINGS: usize = 50;

fn provider_name(organization_id: Uuid) -> String {
    format!("{PROVIDER_PREFIX}{organization_id}")
}

fn connection_not_found() -> Error {
    Error::not_found(
        "SSO_CONNECTION_NOT_FOUND",
        "this organization has no single sign-on connection",
    )
}

fn domain_not_found() -> Error {
    Error::not_found("SSO_DOMAIN_NOT_FOUND", "no such domain claimed")
}

/// A domain name as claimed: lower case ASCII labels of letters, digits and inner hyphens, at
/// least two of them.
fn parse_domain(raw: &str) -> Result<String> {
    let domain = raw.trim().trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let labels: Vec<&str> = domain.split('.').collect();
    if domain.len() > 253 || labels.len() < 2 || !labels.iter().all(|label| label_ok(label)) {
        return Err(Error::invalid_argument(
            "INVALID_DOMAIN",
            format!(
                "{raw:?} is not a domain name such as example.com (ASCII; punycode for international names)"
            ),
        ));
    }
    Ok(domain)
}

/// What `SsoService` works through.
pub struct SsoPorts {
    pub store: Arc<dyn SsoStore>,
    pub organizations: Arc<dyn OrganizationStore>,
    pub access: Arc<AccessControl>,
    pub quotas: Arc<QuotaService>,
    pub providers: Arc<dyn ConnectionProviders>,
    pub dns: Arc<dyn TxtRecords>,
    pub keyring: Arc<dyn Keyring>,
    pub clock: Arc<dyn Clock>,
}

pub struct SsoService {
    store: Arc<dyn SsoStore>,
    organizations: Arc<dyn OrganizationStore>,
    access: Arc<AccessControl>,
    quotas: Arc<QuotaService>,
    providers: Arc<dyn ConnectionProviders>,
    dns: Arc<dyn TxtRecords>,
    keyring: Arc<dyn Keyring>,
    clock: Arc<dyn Clock>,
}

/// A connection as set by its organization.
pub struct ConnectionSettings {
    pub issuer: String,
    pub client_id: String,
    /// Empty keeps the current one.
    pub client_secret: String,
    pub scopes: Vec<String>,
    pub default_role: String,
    pub enforce: bool,
    pub trust_mfa: bool,
    /// Empty: `groups`.
    pub groups_claim: String,
    /// (group, role name or id).
    pub role_mappings: Vec<(String, String)>,
}

impl SsoService {
    pub fn new(ports: SsoPorts) -> Self {
        Self {
            store: ports.store,
            organizations: ports.organizations,
            access: ports.access,
            quotas: ports.quotas,
            providers: ports.providers,
            dns: ports.dns,
            keyring: ports.keyring,
            clock: ports.clock,
        }
    }

    pub async fn connection(&self, access: &Access) -> Result<SsoConnection> {
        self.store
            .find_connection(access.organization_id)
            .await?
            .map(|(connection, _)| connection)
            .ok_or_else(connection_not_found)
    }

    pub async fn set_connection(
        &self,
        access: &Access,
        settings: ConnectionSettings,
    ) -> Result<SsoConnection> {
        let default_role = match settings.default_role.trim() {
            "" => RoleKey::System(SystemRole::Member),
            role => self.grantable_role(access, "default_role", role).await?,
        };
        if settings.role_mappings.len() > MAX_ROLE_MAPPINGS {
            return Err(Error::invalid_fields(vec![FieldViolation::new(
                "role_mappings",
                "TOO_MANY_MAPPINGS",
                format!("at most {MAX_ROLE_MAPPINGS} role mappings"),
            )]));
        }
        let mut role_mappings = Vec::new();
        for (group, role) in settings.role_mappings {
            if group.is_empty() || group.chars().count() > 256 {
                return Err(Error::invalid_fields(vec![FieldViolation::new(
                    "role_mappings",
                    "INVALID_GROUP",
                    "a group is 1 to 256 characters",
                )]));
            }
            let key = self.grantable_role(access, "role_mappings", &role).await?;
            role_mappings.push((group, key.to_string()));
        }
        let existing = self.store.find_connection(access.organization_id).await?;
        let sealed = match (settings.client_secret.as_str(), &existing) {
            ("", Some(_)) => None,
            ("", None) => {
                return Err(Error::new(
                    ErrorKind::FailedPrecondition,
                    "CLIENT_SECRET_REQUIRED",
                    "there is no connection yet: a new one needs the provider's client secret",
                ));
            }
            (secret, _) => Some(self.keyring.seal(SECRET_PURPOSE, secret.as_bytes())?),
        };
        let now = truncate_to_micros(self.clock.now());
        let scopes = if settings.scopes.is_empty() {
            vec!["email".to_owned(), "profile".to_owned()]
        } else {
            settings.scopes
        };
        let connection = SsoConnection {
            organization_id: access.organization_id,
            issuer: settings.issuer.trim_end_matches('/').to_owned(),
            client_id: settings.client_id,
            scopes,
            default_role: default_role.to_string(),
            enforce: settings.enforce,
            trust_mfa: settings.trust_mfa,
            groups_claim: match settings.groups_claim.trim() {
                "" => "groups".to_owned(),
                claim => claim.to_owned(),
            },
            role_mappings,
            created_at: existing.map_or(now, |(connection, _)| connection.created_at),
            updated_at: now,
        };
        let set = self.connection_event(EventKind::SsoConnectionSet, &access.origin(), &connection);
        self.store
            .put_connection(&connection, sealed.as_deref(), &[set])
            .await?;
        tracing::info!(organization_id = %access.organization_id, by = %access.user_id(), "SSO connection set");
        Ok(connection)
    }

    /// A role of the organization (by name or id) that the caller may grant.
    async fn grantable_role(
        &self,
        access: &Access,
        field: &str,
        reference: &str,
    ) -> Result<RoleKey> {
        let keys = self
            .access
            .resolve_roles(access.organization_id, field, &[reference.to_owned()])
            .await?;
        access.ensure_covers(
            self.access
                .permissions_of(access.organization_id, &keys)
                .await?,
        )?;
        keys.into_iter().next().ok_or_else(|| Missing::Role.into())
    }

    pub async fn delete_connection(&self, access: &Access) -> Result<()> {
        let connection = self.connection(access).await?;
        let deleted = self.connection_event(
            EventKind::SsoConnectionDeleted,
            &access.origin(),
            &connection,
        );
        if !self
            .store
            .delete_connection(access.organization_id, &[deleted])
            .await?
        {
            return Err(connection_not_found());
        }
        Ok(())
    }

    pub async fn add_domain(&self, access: &Access, domain: &str) -> Result<SsoDomain> {
        let domain = SsoDomain {
            domain: parse_domain(domain)?,
            organization_id: access.organization_id,
            verification_token: secret::generate(),
            created_at: truncate_to_micros(self.clock.now()),
            approved_at: None,
        };
        let claimed = self.domain_event(EventKind::SsoDomainClaimed, &access.origin(), &domain);
        self.store.insert_domain(&domain, &[claimed]).await?;
        Ok(domain)
    }

    pub async fn domains(&self, access: &Access) -> Result<Vec<SsoDomain>> {
        self.store.list_domains(access.organization_id).await
    }

    /// The claim of `domain`, by `organization_id` when given.
    async fn claim(&self, domain: &str, organization_id: Option<Uuid>) -> Result<SsoDomain> {
        let domain = parse_domain(domain).map_err(|_| domain_not_found())?;
        self.store
            .find_domain(&domain)
            .await?
            .filter(|claim| organization_id.is_none_or(|id| claim.organization_id == id))
            .ok_or_else(domain_not_found)
    }

    pub async fn remove_domain(&self, access: &Access, domain: &str) -> Result<()> {
        let claim = self.claim(domain, Some(access.organization_id)).await?;
        let removed = self.domain_event(EventKind::SsoDomainRemoved, &access.origin(), &claim);
        if !self
            .store
            .delete_domain(access.organization_id, &claim.domain, &[removed])
            .await?
        {
            return Err(domain_not_found());
        }
        Ok(())
    }

    /// A platform superuser's word that the claiming organization owns the domain.
    pub async fn approve_domain(&self, caller: &Principal, domain: &str) -> Result<SsoDomain> {
        let claim = self.claim(domain, None).await?;
        self.approve(claim, &caller.into()).await
    }

    /// Approves the organization's claim when the domain's TXT record proves it.
    pub async fn verify_domain(&self, access: &Access, domain: &str) -> Result<SsoDomain> {
        let claim = self.claim(domain, Some(access.organization_id)).await?;
        if claim.approved_at.is_some() {
            return Ok(claim);
        }
        let (name, text) = claim.verification_record();
        if !self.dns.txt(&name).await?.contains(&text) {
            return Err(Error::new(
                ErrorKind::FailedPrecondition,
                "DOMAIN_NOT_VERIFIED",
                format!(
                    "no TXT record {name} with the text {text} was found: publish it, then verify again (DNS changes can take a while to spread)"
                ),
            ));
        }
        self.approve(claim, &access.origin()).await
    }

    async fn approve(&self, claim: SsoDomain, origin: &Origin) -> Result<SsoDomain> {
        let now = truncate_to_micros(self.clock.now());
        let domain = claim.domain.clone();
        let approved = SsoDomain {
            approved_at: Some(now),
            ..claim
        };
        let event = self.domain_event(EventKind::SsoDomainApproved, origin, &approved);
        self.store
            .approve_domain(&domain, now, &[event])
            .await?
            .ok_or_else(domain_not_found)
    }

    fn connection_event(
        &self,
        kind: EventKind,
        origin: &Origin,
        connection: &SsoConnection,
    ) -> Event {
        let data = SsoConnectionData {
            organization_id: connection.organization_id,
            issuer: connection.issuer.clone(),
            client_id: connection.client_id.clone(),
            enforce: connection.enforce,
        };
        Event::new(kind, origin, self.clock.as_ref(), &data)
    }

    fn domain_event(&self, kind: EventKind, origin: &Origin, domain: &SsoDomain) -> Event {
        let data = SsoDomainData {
            organization_id: domain.organization_id,
            domain: domain.domain.clone(),
            approved: domain.approved_at.is_some(),
        };
        Event::new(kind, origin, self.clock.as_ref(), &data)
    }

    /// The connection serving an address: its domain approved for an organization that has
    /// one.
    async fn connection_for(&self, email: &EmailAddress) -> Result<Option<SsoConnection>> {
        let Some((_, domain)) = email.as_str().rsplit_once('@') else {
            return Ok(None);
        };
        let Some(claim) = self
            .store
            .find_domain(domain)
            .await?
            .filter(|claim| claim.approved_at.is_some())
        else {
            return Ok(None);
        };
        Ok(self
            .store
            .find_connection(claim.organization_id)
            .await?
            .map(|(connection, _)| connection))
    }

    /// Where a sign-in page sends an address: the organization's provider and its name, and
    /// whether it is the only way in.
    pub async fn discover(&self, email: &str) -> Result<Option<(SsoConnection, String)>> {
        let Ok(email) = EmailAddress::parse(email) else {
            return Ok(None);
        };
        let Some(connection) = self.connection_for(&email).await? else {
            return Ok(None);
        };
        let name = self
            .organizations
            .find_organization(connection.organization_id)
            .await?
            .map(|organization| organization.name)
            .unwrap_or_default();
        Ok(Some((connection, name)))
    }
}

#[async_trait::async_trait]
impl OrganizationProviders for SsoService {
    async fn find(&self, name: &str) -> Result<Option<OrganizationProvider>> {
        let Some(organization_id) = name
            .strip_prefix(PROVIDER_PREFIX)
            .and_then(|id| Uuid::parse_str(id).ok())
        else {
            return Ok(None);
        };
        let Some((connection, sealed)) = self.store.find_connection(organization_id).await? else {
            return Ok(None);
        };
        let secret = self.keyring.open(SECRET_PURPOSE, &sealed)?;
        let secret = String::from_utf8(secret).map_err(Error::internal)?;
        let provider = self.providers.provider(&connection, &secret);
        let domains = self
            .store
            .list_domains(organization_id)
            .await?
            .into_iter()
            .filter(|domain| domain.approved_at.is_some())
            .map(|domain| domain.domain)
            .collect();
        Ok(Some(OrganizationProvider {
            organization_id,
            provider,
            domains,
            trust_mfa: connection.trust_mfa,
        }))
    }

    async fn admit(
        &self,
        organization_id: Uuid,
        user: &User,
        groups: &[String],
        client: &ClientInfo,
    ) -> Result<()> {
        if self
            .organizations
            .find_member_grants(organization_id, user.id)
            .await?
            .is_some()
        {
            return Ok(());
        }
        let Some((connection, _)) = self.store.find_connection(organization_id).await? else {
            return Ok(());
        };
        // Roles deleted since the connection was set are skipped.
        let custom_roles = self.access.custom_roles(organization_id).await?;
        let existing = |text: &str| {
            RoleKey::parse(text).filter(|key| match key {
                RoleKey::System(_) => true,
                RoleKey::Custom(id) => custom_roles.iter().any(|role| role.id == *id),
            })
        };
        let mut role_keys: Vec<RoleKey> = Vec::new();
        for (group, role) in &connection.role_mappings {
            if let Some(key) = existing(role).filter(|key| !role_keys.contains(key))
                && groups.contains(group)
            {
                role_keys.push(key);
            }
        }
        if role_keys.is_empty() {
            role_keys.push(
                existing(&connection.default_role).unwrap_or(RoleKey::System(SystemRole::Member)),
            );
        }
        let max_members = self.quotas.limits(organization_id).await?.max_users;
        let origin = Origin::user(user.id, client);
        let data = MemberData::new(organization_id, user.id, &role_keys);
        let added = Event::new(EventKind::MemberAdded, &origin, self.clock.as_ref(), &data);
        let inserted = self
            .organizations
            .insert_member(
                organization_id,
                user.id,
                &role_keys,
                truncate_to_micros(self.clock.now()),
                max_members,
                &[added],
            )
            .await;
        self.quotas
            .watch_members(&origin, organization_id, max_members, inserted)
            .await?;
        self.access.forget_member(organization_id, user.id).await?;
        tracing::info!(%organization_id, user_id = %user.id, "member joined by single sign-on");
        Ok(())
    }

    async fn enforced_for(&self, email: &EmailAddress) -> Result<Option<String>> {
        Ok(self
            .connection_for(email)
            .await?
            .filter(|connection| connection.enforce)
            .map(|connection| connection.provider_name()))
    }
}

#[cfg(test)]
mod tests {
    use super::parse_domain;

    #[test]
    fn domains_are_plain_lower_case_names() {
        assert_eq!(
            parse_domain(" Example.COM. ").ok().as_deref(),
            Some("example.com")
        );
        assert_eq!(
            parse_domain("xn--bcher-kva.example").ok().as_deref(),
            Some("xn--bcher-kva.example")
        );
        for bad in [
            "localhost",
            "-a.example",
            "a_b.example",
            "a..example",
            "exa mple.com",
            "@example.com",
        ] {
            assert!(parse_domain(bad).is_err(), "{bad}");
        }
    }
}
