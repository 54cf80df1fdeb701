//! The permission catalog and the system roles. Every `resource:action` Keel knows is listed
//! here once; the protos' `(keel.options.v1.auth)` permissions must all be in it (checked at
//! start). Sets of permissions are bitsets over the catalog, so checks and subset tests are a
//! few instructions.

use serde::{Deserialize, Serialize};

pub struct PermissionInfo {
    pub name: &'static str,
    pub description: &'static str,
    /// Held by platform superusers only, never through an organization role.
    pub platform: bool,
    /// Governing the organization itself (its members, roles, invitations, quotas): calls
    /// needing it are not metered and never refused for the monthly API-call quota, so a
    /// member who spent the quota cannot lock the owners out of removing them.
    pub management: bool,
}

const fn organization(name: &'static str, description: &'static str) -> PermissionInfo {
    PermissionInfo {
        name,
        description,
        platform: false,
        management: false,
    }
}

const fn management(name: &'static str, description: &'static str) -> PermissionInfo {
    PermissionInfo {
        management: true,
        ..organization(name, description)
    }
}

const fn platform(name: &'static str, description: &'static str) -> PermissionInfo {
    PermissionInfo {
        name,
        description,
        platform: true,
        management: true,
    }
}

/// Sorted by name.
pub const CATALOG: &[PermissionInfo] = &[
    organization(
        "api_key:create",
        "create API keys bound to the organization",
    ),
    organization("audit:read", "read the organization's audit log"),
    platform(
        "audit:read_all",
        "read the whole audit log, of every user and organization",
    ),
    platform(
        "dependency:read",
        "see which of Keel's dependencies have newer releases, and check now",
    ),
    platform(
        "feature_flag:manage",
        "create, change and delete feature flags",
    ),
    organization("file:create", "upload files"),
    organization("file:delete", "delete files"),
    organization("file:read", "list and download files"),
    organization(
        "flag:manage",
        "turn feature flags on or off for checks made within the organization",
    ),
    organization(
        "integration:create",
        "create integrations (outside systems that send events)",
    ),
    organization("integration:delete", "delete integrations"),
    organization(
        "integration:read",
        "list integrations and the messages they sent",
    ),
    organization(
        "integration:update",
        "change integrations and regenerate their secrets",
    ),
    organization(
        "invitation:create",
        "invite people by email and resend invitations",
    ),
    management("invitation:delete", "revoke invitations"),
    management(
        "invitation:read",
        "list the invitations sent by the organization",
    ),
    platform(
        "job:read",
        "see failed background jobs (the dead-letter queue)",
    ),
    platform(
        "job:update",
        "retry, resolve or ignore failed background jobs",
    ),
    organization(
        "llm:manage",
        "add, change and remove the organization's LLM providers",
    ),
    organization(
        "llm:use",
        "ask the LLM gateway for chat completions (tokens count against the quota)",
    ),
    platform("mail:read", "read the development mail outbox"),
    management("member:create", "add users as members"),
    management("member:delete", "remove members"),
    management("member:read", "list members and their roles"),
    management("member:update", "change members' roles"),
    platform(
        "notification:send",
        "send notifications to a user, to everyone or to an organization's members",
    ),
    management("organization:delete", "delete the organization"),
    management("organization:read", "see the organization"),
    management("organization:transfer", "transfer ownership"),
    management(
        "organization:update",
        "rename the organization and change its settings",
    ),
    management("quota:read", "see the organization's quotas and usage"),
    platform("quota:update", "change an organization's quota limits"),
    management("role:create", "create custom roles"),
    management("role:delete", "delete custom roles"),
    management("role:read", "list roles and their permissions"),
    management("role:update", "change custom roles and their permissions"),
    platform(
        "sso:approve",
        "approve the email domains organizations claim for single sign-on",
    ),
    management(
        "sso:manage",
        "set the organization's single sign-on provider and claim its email domains",
    ),
    organization("team:create", "create teams"),
    organization("team:delete", "delete teams"),
    organization("team:read", "list teams and their members"),
    organization("team:update", "change teams and their members"),
    platform("user:delete", "delete user accounts"),
    platform("user:read", "list and read every user account"),
    platform("user:update", "grant and revoke superuser rights"),
    organization("webhook:create", "create webhooks"),
    organization("webhook:delete", "delete webhooks"),
    organization("webhook:read", "list webhooks and their deliveries"),
    organization("webhook:update", "change webhooks"),
];

const _: () = assert!(
    CATALOG.len() <= 128,
    "PermissionSet holds at most 128 permissions"
);

/// Whether calls needing `name` escape the monthly API-call quota (see `management`).
pub fn is_management(name: &str) -> bool {
    find(name).is_some_and(|index| CATALOG[index].management)
}

pub fn find(name: &str) -> Option<usize> {
    CATALOG.binary_search_by(|info| info.name.cmp(name)).ok()
}

/// A set of catalog permissions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PermissionSet(u128);

impl PermissionSet {
    pub const EMPTY: Self = Self(0);

    /// Every permission, platform ones included: what a superuser holds.
    pub fn all() -> Self {
        Self(u128::MAX >> (128 - CATALOG.len()))
    }

    /// Every permission an organization role can carry.
    pub fn organization_wide() -> Self {
        CATALOG
            .iter()
            .filter(|info| !info.platform)
            .map(|info| info.name)
            .collect()
    }

    pub fn contains(self, name: &str) -> bool {
        find(name).is_some_and(|index| self.0 & (1 << index) != 0)
    }

    pub fn insert(&mut self, name: &str) -> bool {
        match find(name) {
            Some(index) => {
                self.0 |= 1 << index;
                true
            }
            None => false,
        }
    }

    pub fn remove(&mut self, name: &str) {
        if let Some(index) = find(name) {
            self.0 &= !(1 << index);
        }
    }

    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    pub fn intersection(self, other: Self) -> Self {
        Self(self.0 & other.0)
    }

    pub fn is_subset_of(self, other: Self) -> bool {
        self.0 & !other.0 == 0
    }

    /// Names in catalog (alphabetical) order.
    pub fn names(self) -> Vec<String> {
        CATALOG
            .iter()
            .enumerate()
            .filter(|(index, _)| self.0 & (1 << index) != 0)
            .map(|(_, info)| info.name.to_owned())
            .collect()
    }
}

impl<'a> FromIterator<&'a str> for PermissionSet {
    /// Unknown names are skipped; callers validate input against the catalog first.
    fn from_iter<I: IntoIterator<Item = &'a str>>(names: I) -> Self {
        let mut set = Self::EMPTY;
        for name in names {
            set.insert(name);
        }
        set
    }
}

/// A role as a membership records it: a system role (stored by name) or an organization's
/// custom role (stored by id). Stored and cached as that text, so the formats stay as they were.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RoleKey {
    System(SystemRole),
    Custom(uuid::Uuid),
}

impl RoleKey {
    /// The key of a stored or cached text; `None` for text that is neither.
    pub fn parse(text: &str) -> Option<Self> {
        SystemRole::parse(text)
            .map(Self::System)
            .or_else(|| uuid::Uuid::parse_str(text).ok().map(Self::Custom))
    }
}

impl From<SystemRole> for RoleKey {
    fn from(role: SystemRole) -> Self {
        Self::System(role)
    }
}

impl std::fmt::Display for RoleKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::System(role) => formatter.write_str(role.name()),
            Self::Custom(id) => write!(formatter, "{id}"),
        }
    }
}

impl serde::Serialize for RoleKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for RoleKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is no role key")))
    }
}

/// The roles every organization has, defined here and not editable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SystemRole {
    Owner,
    Admin,
    Member,
    Viewer,
}

const VIEWER_PERMISSIONS: &[&str] = &[
    "file:read",
    "integration:read",
    "member:read",
    "organization:read",
    "quota:read",
    "role:read",
    "team:read",
    "webhook:read",
];

const MEMBER_EXTRA_PERMISSIONS: &[&str] =
    &["api_key:create", "file:create", "file:delete", "llm:use"];

const OWNER_ONLY_PERMISSIONS: &[&str] = &["organization:delete", "organization:transfer"];

impl SystemRole {
    pub const ALL: [Self; 4] = [Self::Owner, Self::Admin, Self::Member, Self::Viewer];

    pub fn name(self) -> &'static str {
        match self {
            Self::Owner => "owner",
            Self::Admin => "admin",
            Self::Member => "member",
            Self::Viewer => "viewer",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|role| role.name() == name)
    }

    pub fn description(self) -> &'static str {
        match self {
            Self::Owner => "everything, including deleting the organization and transferring it",
            Self::Admin => "everything but deleting or transferring the organization",
            Self::Member => "read the organization and work with its files and API keys",
            Self::Viewer => "read-only access",
        }
    }

    pub fn permissions(self) -> PermissionSet {
        match self {
            Self::Owner => PermissionSet::organization_wide(),
            Self::Admin => {
                let mut set = PermissionSet::organization_wide();
                for name in OWNER_ONLY_PERMISSIONS {
                    set.remove(name);
                }
                set
            }
            Self::Member => VIEWER_PERMISSIONS
                .iter()
                .chain(MEMBER_EXTRA_PERMISSIONS)
                .copied()
                .collect(),
            Self::Viewer => VIEWER_PERMISSIONS.iter().copied().collect(),
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn role_keys_read_and_write_as_stored() {
        let id = uuid::Uuid::now_v7();
        for (key, text) in [
            (RoleKey::System(SystemRole::Owner), "owner".to_owned()),
            (RoleKey::Custom(id), id.to_string()),
        ] {
            assert_eq!(key.to_string(), text);
            assert_eq!(RoleKey::parse(&text), Some(key));
            let json = serde_json::to_string(&key).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<RoleKey>(&json).unwrap(), key);
        }
        assert_eq!(RoleKey::parse("wizard"), None);
    }

    use super::*;

    #[test]
    fn catalog_is_sorted_and_well_formed() {
        for pair in CATALOG.windows(2) {
            assert!(
                pair[0].name < pair[1].name,
                "{} is out of order",
                pair[1].name
            );
        }
        for info in CATALOG {
            let (resource, action) = info.name.split_once(':').expect("resource:action");
            assert!(!resource.is_empty() && !action.is_empty(), "{}", info.name);
        }
    }

    #[test]
    fn system_roles_nest_and_hold_no_platform_permission() {
        let [owner, admin, member, viewer] = SystemRole::ALL.map(SystemRole::permissions);
        assert!(viewer.is_subset_of(member));
        assert!(member.is_subset_of(admin));
        assert!(admin.is_subset_of(owner));
        assert!(!admin.contains("organization:delete"));
        assert!(owner.contains("organization:delete"));
        assert!(!owner.contains("mail:read"));
        assert!(owner.is_subset_of(PermissionSet::organization_wide()));
        assert!(PermissionSet::all().contains("mail:read"));
    }

    #[test]
    fn sets_round_trip_through_names() {
        let set: PermissionSet = ["team:read", "member:create", "no:such"]
            .into_iter()
            .collect();
        assert_eq!(set.names(), vec!["member:create", "team:read"]);
        assert!(!set.contains("no:such"));
    }
}
