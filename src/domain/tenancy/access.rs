//! Who may do what in an organization. The authorization layer calls `authorize` for every
//! organization-scoped RPC; the answer (`Access`) travels with the request to the use case.
//! A member's role keys and the organization's custom roles are cached (one `get_many` per
//! check) and forgotten on every change, so a role change applies on the next request.

use super::ip_rules::{self, IpRuleStore, IpRules};
use super::permissions::{PermissionSet, RoleKey, SystemRole};
use super::{CustomRole, MemberGrants, OrganizationStore};
use crate::domain::cache::{Cache, generation};
use crate::domain::clock::Clock;
use crate::domain::error::{Error, FieldViolation, Missing, Result};
use crate::domain::events::{Event, EventKind, EventLog, IpRefusedData, Origin};
use crate::domain::principal::{Credential, Principal};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

const CACHE_TTL: Duration = Duration::from_secs(300);

/// Where a request acts: the organization or team it names.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    Organization(Uuid),
    Team(Uuid),
    /// The organization of a resource the request names by id alone (the original's
    /// `/api/v1/invitations/{id}`, `/api/v1/webhooks/{id}`, `/api/v1/integrations/{id}`).
    Owned(Owned, Uuid),
}

/// A resource that belongs to one organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owned {
    Invitation,
    Webhook,
    Integration,
}

impl Owned {
    /// The answer when the resource is not there (or not the caller's to see).
    pub fn missing(self) -> Missing {
        match self {
            Self::Invitation => Missing::Invitation,
            Self::Webhook => Missing::Webhook,
            Self::Integration => Missing::Integration,
        }
    }
}

/// A caller admitted to an organization (or one of its teams).
#[derive(Debug, Clone)]
pub struct Access {
    pub principal: Principal,
    pub organization_id: Uuid,
    /// The team the request addressed, for team-scoped calls.
    pub team_id: Option<Uuid>,
    /// What the caller may do here: their roles' permissions (everything for a superuser),
    /// narrowed to an API key's scopes.
    pub permissions: PermissionSet,
    /// The caller's role keys here; empty for a superuser who is not a member.
    pub role_keys: Vec<RoleKey>,
}

impl Access {
    pub fn user_id(&self) -> Uuid {
        self.principal.user.id
    }

    /// The caller, as the origin of the events their changes write.
    pub fn origin(&self) -> Origin {
        Origin::from(&self.principal)
    }

    /// Refuses when `wanted` holds a permission the caller lacks: nobody grants more than
    /// they hold.
    pub fn ensure_covers(&self, wanted: PermissionSet) -> Result<()> {
        if wanted.is_subset_of(self.permissions) {
            return Ok(());
        }
        let missing = wanted
            .names()
            .into_iter()
            .filter(|name| !self.permissions.contains(name))
            .collect::<Vec<_>>()
            .join(", ");
        Err(Error::permission_denied(
            "ROLE_ESCALATION",
            format!("you cannot grant or manage permissions you do not hold: {missing}"),
        ))
    }
}

pub struct AccessControl {
    store: Arc<dyn OrganizationStore>,
    cache: Arc<dyn Cache>,
    ip_rules: Arc<dyn IpRuleStore>,
    /// Where refused addresses are recorded.
    events: Arc<dyn EventLog>,
    clock: Arc<dyn Clock>,
}

/// What `AccessControl` works through.
pub struct AccessPorts {
    pub store: Arc<dyn OrganizationStore>,
    pub cache: Arc<dyn Cache>,
    pub ip_rules: Arc<dyn IpRuleStore>,
    pub events: Arc<dyn EventLog>,
    pub clock: Arc<dyn Clock>,
}

fn member_key(organization_id: Uuid, user_id: Uuid) -> String {
    format!("access:member:{organization_id}:{user_id}")
}

fn roles_key(organization_id: Uuid) -> String {
    format!("access:roles:{organization_id}")
}

fn ip_rules_key(organization_id: Uuid) -> String {
    format!("access:ip-rules:{organization_id}")
}

fn team_key(team_id: Uuid) -> String {
    format!("access:team:{team_id}")
}

fn unknown_role(field: &str, role: &str) -> FieldViolation {
    FieldViolation::new(
        field,
        "UNKNOWN_ROLE",
        format!(
            "{role:?} is neither a system role (owner, admin, member, viewer) nor a custom role of this organization"
        ),
    )
}

/// The permissions of a set of role keys.
pub fn permissions_of(role_keys: &[RoleKey], custom_roles: &[CustomRole]) -> PermissionSet {
    role_keys
        .iter()
        .map(|key| match key {
            RoleKey::System(role) => role.permissions(),
            RoleKey::Custom(id) => custom_roles
                .iter()
                .find(|role| role.id == *id)
                .map_or(PermissionSet::EMPTY, |role| role.permissions),
        })
        .fold(PermissionSet::EMPTY, PermissionSet::union)
}

/// What the credential lets the user exercise: everything for a session, the scopes for a key.
fn narrow_to_credential(held: PermissionSet, principal: &Principal) -> PermissionSet {
    match &principal.credential {
        Credential::Session(_) => held,
        Credential::ApiKey { scopes, .. } => {
            held.intersection(scopes.iter().map(String::as_str).collect())
        }
    }
}

impl AccessControl {
    pub fn new(ports: AccessPorts) -> Self {
        Self {
            store: ports.store,
            cache: ports.cache,
            ip_rules: ports.ip_rules,
            events: ports.events,
            clock: ports.clock,
        }
    }

    /// Admits `principal` to the organization (or team) the request names, for
    /// `permission`. Outsiders (and keys bound to another organization) get NOT_FOUND, so
    /// existence does not leak; members without the permission get PERMISSION_DENIED. In a
    /// team, the member's roles there count too.
    pub async fn authorize(
        &self,
        principal: Principal,
        scope: Scope,
        permission: &str,
    ) -> Result<Access> {
        let (organization_id, team_id, not_found) = match scope {
            Scope::Organization(organization_id) => (organization_id, None, Missing::Organization),
            Scope::Team(team_id) => {
                let organization_id = self
                    .team_organization(team_id)
                    .await?
                    .ok_or(Missing::Team)?;
                (organization_id, Some(team_id), Missing::Team)
            }
            Scope::Owned(owned, id) => {
                let organization_id = self
                    .store
                    .find_owning_organization(owned, id)
                    .await?
                    .ok_or(owned.missing())?;
                (organization_id, None, owned.missing())
            }
        };
        if let Credential::ApiKey {
            organization_id: Some(bound),
            ..
        } = &principal.credential
            && *bound != organization_id
        {
            return Err(not_found.into());
        }
        let (grants, custom_roles, ip_rules) =
            self.grants(organization_id, principal.user.id).await?;
        // Superusers are exempt: they are the instance's operators, and the way back in.
        if grants.is_some()
            && !principal.user.is_superuser
            && !ip_rules.admits(principal.client.ip_address.as_deref())
        {
            return Err(self.refuse_address(&principal, organization_id).await);
        }
        let held = match (&grants, principal.user.is_superuser) {
            (Some(_), true) => PermissionSet::all(),
            // A superuser acts in any organization, but only in one that exists.
            (None, true) => match self.store.find_organization(organization_id).await? {
                Some(_) => PermissionSet::all(),
                None => return Err(not_found.into()),
            },
            (Some(grants), false) => {
                let team_roles = team_id
                    .and_then(|team_id| grants.team_roles.get(&team_id))
                    .into_iter()
                    .flatten();
                let role_keys: Vec<RoleKey> =
                    grants.role_keys.iter().chain(team_roles).copied().collect();
                // Membership itself lets one see the organization (and leave it).
                permissions_of(&role_keys, &custom_roles)
                    .union(["organization:read"].into_iter().collect())
            }
            (None, false) => return Err(not_found.into()),
        };
        let permissions = narrow_to_credential(held, &principal);
        if !permissions.contains(permission) {
            return Err(if held.contains(permission) {
                Error::permission_denied(
                    "SCOPE_MISSING",
                    format!("the API key lacks the {permission} scope"),
                )
            } else {
                Error::permission_denied(
                    "PERMISSION_DENIED",
                    format!("this call needs the {permission} permission here"),
                )
            });
        }
        Ok(Access {
            principal,
            organization_id,
            team_id,
            permissions,
            role_keys: grants.map(|grants| grants.role_keys).unwrap_or_default(),
        })
    }

    /// The organization of a team, cached (a team never moves).
    async fn team_organization(&self, team_id: Uuid) -> Result<Option<Uuid>> {
        let key = team_key(team_id);
        if let Some(organization_id) = self
            .cache
            .get(&key)
            .await?
            .and_then(|bytes| Uuid::from_slice(&bytes).ok())
        {
            return Ok(Some(organization_id));
        }
        let found = self.store.find_team_organization(team_id).await?;
        if let Some(organization_id) = found {
            self.cache
                .set(&key, organization_id.as_bytes(), CACHE_TTL)
                .await?;
        }
        Ok(found)
    }

    /// Admits `principal` to a platform-wide `permission`: superusers only, and an API key
    /// must carry the scope and not be bound to an organization.
    pub fn authorize_platform(&self, principal: &Principal, permission: &str) -> Result<()> {
        let narrowed = narrow_to_credential(PermissionSet::all(), principal);
        if let Credential::ApiKey {
            organization_id: Some(_),
            ..
        } = &principal.credential
        {
            return Err(Error::permission_denied(
                "ORGANIZATION_KEY",
                "an API key bound to an organization cannot make platform calls",
            ));
        }
        if !principal.user.is_superuser {
            return Err(Error::permission_denied(
                "PERMISSION_DENIED",
                format!("this call needs the {permission} permission of platform superusers"),
            ));
        }
        if !narrowed.contains(permission) {
            return Err(Error::permission_denied(
                "SCOPE_MISSING",
                format!("the API key lacks the {permission} scope"),
            ));
        }
        Ok(())
    }

    /// The user's grants in the organization (`None` for a non-member) and the organization's
    /// custom roles, in one cache round trip. Both are cached under their generation (see
    /// `cache::generation`), so a role change cannot be undone by a read that raced it.
    async fn grants(
        &self,
        organization_id: Uuid,
        user_id: Uuid,
    ) -> Result<(Option<MemberGrants>, Vec<CustomRole>, IpRules)> {
        let member = member_key(organization_id, user_id);
        let roles = roles_key(organization_id);
        let ip_rules = ip_rules_key(organization_id);
        let keys = [
            member.clone(),
            roles.clone(),
            ip_rules.clone(),
            generation::key(&member),
            generation::key(&roles),
            generation::key(&ip_rules),
        ];
        let mut cached = self.cache.get_many(&keys).await?.into_iter();
        let (cached_grants, cached_roles, cached_ip_rules) = (
            cached.next().flatten(),
            cached.next().flatten(),
            cached.next().flatten(),
        );
        let member_generation = generation::parse(cached.next().flatten().as_deref());
        let roles_generation = generation::parse(cached.next().flatten().as_deref());
        let ip_rules_generation = generation::parse(cached.next().flatten().as_deref());
        let grants = match generation::untag(cached_grants, member_generation)
            .and_then(|bytes| serde_json::from_slice::<Option<MemberGrants>>(&bytes).ok())
        {
            Some(grants) => grants,
            None => {
                let grants = self
                    .store
                    .find_member_grants(organization_id, user_id)
                    .await?;
                let encoded = serde_json::to_vec(&grants).map_err(Error::internal)?;
                self.cache
                    .set(
                        &member,
                        &generation::tag(member_generation, &encoded),
                        CACHE_TTL,
                    )
                    .await?;
                grants
            }
        };
        let custom_roles = match generation::untag(cached_roles, roles_generation)
            .and_then(|bytes| serde_json::from_slice::<Vec<CustomRole>>(&bytes).ok())
        {
            Some(roles) => roles,
            None => {
                self.load_custom_roles(organization_id, roles_generation)
                    .await?
            }
        };
        let ip_rules = match generation::untag(cached_ip_rules, ip_rules_generation)
            .and_then(|bytes| serde_json::from_slice::<IpRules>(&bytes).ok())
        {
            Some(rules) => rules,
            None => {
                let rules = self.ip_rules.find_ip_rules(organization_id).await?;
                let encoded = serde_json::to_vec(&rules).map_err(Error::internal)?;
                self.cache
                    .set(
                        &ip_rules,
                        &generation::tag(ip_rules_generation, &encoded),
                        CACHE_TTL,
                    )
                    .await?;
                rules
            }
        };
        Ok((grants, custom_roles, ip_rules))
    }

    /// Records a call refused for its address; answers the refusal.
    async fn refuse_address(&self, principal: &Principal, organization_id: Uuid) -> Error {
        let event = Event::new(
            EventKind::OrganizationIpRefused,
            &Origin::from(principal),
            self.clock.as_ref(),
            &IpRefusedData {
                organization_id,
                address: principal.client.ip_address.clone(),
            },
        );
        match self.events.append_events(&[event]).await {
            Ok(()) => ip_rules::not_allowed(),
            Err(not_recorded) => not_recorded,
        }
    }

    async fn load_custom_roles(
        &self,
        organization_id: Uuid,
        roles_generation: u64,
    ) -> Result<Vec<CustomRole>> {
        let roles = self.store.list_custom_roles(organization_id).await?;
        let encoded = serde_json::to_vec(&roles).map_err(Error::internal)?;
        self.cache
            .set(
                &roles_key(organization_id),
                &generation::tag(roles_generation, &encoded),
                CACHE_TTL,
            )
            .await?;
        Ok(roles)
    }

    /// The organization's custom roles, sorted by name.
    pub async fn custom_roles(&self, organization_id: Uuid) -> Result<Vec<CustomRole>> {
        let roles = roles_key(organization_id);
        let keys = [roles.clone(), generation::key(&roles)];
        let mut cached = self.cache.get_many(&keys).await?.into_iter();
        let (cached_roles, roles_generation) = (
            cached.next().flatten(),
            generation::parse(cached.next().flatten().as_deref()),
        );
        match generation::untag(cached_roles, roles_generation)
            .and_then(|bytes| serde_json::from_slice::<Vec<CustomRole>>(&bytes).ok())
        {
            Some(roles) => Ok(roles),
            None => {
                self.load_custom_roles(organization_id, roles_generation)
                    .await
            }
        }
    }

    /// Parses role references (system role names, custom role names or ids) of `field` into
    /// role keys, deduplicated.
    pub async fn resolve_roles(
        &self,
        organization_id: Uuid,
        field: &str,
        references: &[String],
    ) -> Result<Vec<RoleKey>> {
        let custom_roles = self.custom_roles(organization_id).await?;
        let mut keys = Vec::new();
        let mut unknown = Vec::new();
        let mut violations = Vec::new();
        for reference in references {
            let reference = reference.trim();
            let key = match SystemRole::parse(reference) {
                Some(role) => Some(RoleKey::System(role)),
                None => custom_roles
                    .iter()
                    .find(|role| role.name == reference || role.id.to_string() == reference)
                    .map(|role| RoleKey::Custom(role.id)),
            };
            match key {
                Some(key) if !keys.contains(&key) => keys.push(key),
                Some(_) => {}
                None => {
                    unknown.push(format!("{reference:?}"));
                    violations.push(unknown_role(field, reference));
                }
            }
        }
        if !violations.is_empty() {
            // Like a role named in the path: not found in this organization.
            let missing = Error::from(Missing::Role);
            return Err(Error {
                message: format!("{}: {}", missing.message, unknown.join(", ")),
                violations,
                ..missing
            });
        }
        Ok(keys)
    }

    /// Role keys as names, for display; keys of deleted roles are skipped.
    pub async fn role_names(
        &self,
        organization_id: Uuid,
        role_keys: &[RoleKey],
    ) -> Result<Vec<String>> {
        let custom_roles = if role_keys
            .iter()
            .all(|key| matches!(key, RoleKey::System(_)))
        {
            Vec::new()
        } else {
            self.custom_roles(organization_id).await?
        };
        Ok(role_keys
            .iter()
            .filter_map(|key| match key {
                RoleKey::System(role) => Some(role.name().to_owned()),
                RoleKey::Custom(id) => custom_roles
                    .iter()
                    .find(|role| role.id == *id)
                    .map(|role| role.name.clone()),
            })
            .collect())
    }

    /// Role keys for `references` (`member` when empty), refusing roles beyond the caller's
    /// own permissions.
    pub async fn grantable_roles(
        &self,
        access: &Access,
        references: &[String],
    ) -> Result<Vec<RoleKey>> {
        let role_keys = if references.is_empty() {
            vec![RoleKey::System(SystemRole::Member)]
        } else {
            self.resolve_roles(access.organization_id, "roles", references)
                .await?
        };
        access.ensure_covers(
            self.permissions_of(access.organization_id, &role_keys)
                .await?,
        )?;
        Ok(role_keys)
    }

    pub async fn permissions_of(
        &self,
        organization_id: Uuid,
        role_keys: &[RoleKey],
    ) -> Result<PermissionSet> {
        let custom_roles = self.custom_roles(organization_id).await?;
        Ok(permissions_of(role_keys, &custom_roles))
    }

    /// What a member holds in the organization through their organization roles (team roles
    /// count only inside their team); `None` for a non-member.
    pub async fn member_permissions(
        &self,
        organization_id: Uuid,
        user_id: Uuid,
    ) -> Result<Option<PermissionSet>> {
        let (grants, custom_roles, _) = self.grants(organization_id, user_id).await?;
        Ok(grants.map(|grants| permissions_of(&grants.role_keys, &custom_roles)))
    }

    /// Forgets a member's cached roles (after any change to them).
    pub async fn forget_member(&self, organization_id: Uuid, user_id: Uuid) -> Result<()> {
        let member = member_key(organization_id, user_id);
        generation::bump(self.cache.as_ref(), &member).await?;
        self.cache.delete(&member).await
    }

    /// Forgets a deleted team's organization.
    pub async fn forget_team(&self, team_id: Uuid) -> Result<()> {
        self.cache.delete(&team_key(team_id)).await
    }

    /// Forgets the organization's cached IP restrictions (after a change to them).
    pub async fn forget_ip_rules(&self, organization_id: Uuid) -> Result<()> {
        let ip_rules = ip_rules_key(organization_id);
        generation::bump(self.cache.as_ref(), &ip_rules).await?;
        self.cache.delete(&ip_rules).await
    }

    /// Forgets the organization's cached custom roles (after any change to them).
    pub async fn forget_roles(&self, organization_id: Uuid) -> Result<()> {
        let roles = roles_key(organization_id);
        generation::bump(self.cache.as_ref(), &roles).await?;
        self.cache.delete(&roles).await
    }
}
