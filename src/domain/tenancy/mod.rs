//! Tenancy: organizations, their members and roles, and the access checks every
//! organization-scoped call passes. A user may belong to many organizations with different
//! roles in each.

pub mod access;
pub mod directory;
pub mod invitations;
pub mod ip_rules;
pub mod organizations;
pub mod permissions;
pub mod quotas;
pub mod roles;
pub mod sso;
pub mod teams;

use super::error::{Error, Result};
use super::events::Event;
use chrono::{DateTime, Utc};
use permissions::{PermissionSet, RoleKey};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub type Settings = serde_json::Map<String, serde_json::Value>;

#[derive(Debug, Clone, PartialEq)]
pub struct Organization {
    pub id: Uuid,
    pub name: String,
    pub slug: String,
    pub settings: Settings,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A member with their organization-wide role keys (system role names or custom role ids).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub user_id: Uuid,
    pub email: String,
    pub full_name: String,
    pub role_keys: Vec<RoleKey>,
    pub joined_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomRole {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub name: String,
    pub description: String,
    pub permissions: PermissionSet,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Everything a member holds in an organization: organization-wide role keys and, per team,
/// the role keys that apply within that team.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberGrants {
    pub role_keys: Vec<RoleKey>,
    pub team_roles: std::collections::BTreeMap<Uuid, Vec<RoleKey>>,
}

/// What deleting an organization took with it, for the caches to forget.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeletedOrganization {
    pub member_ids: Vec<Uuid>,
    /// Prefixes of the API keys bound to it, now revoked.
    pub revoked_api_key_prefixes: Vec<String>,
}

/// Every change writes its `events` in its own transaction (none when it fails).
#[async_trait::async_trait]
pub trait OrganizationStore: Send + Sync {
    /// Inserts the organization with `owner` as its first member, holding the owner role.
    /// Fails with `SLUG_TAKEN`.
    async fn insert_organization(
        &self,
        organization: &Organization,
        owner: Uuid,
        events: &[Event],
    ) -> Result<()>;
    async fn find_organization(&self, id: Uuid) -> Result<Option<Organization>>;
    /// Fails with `SLUG_TAKEN`.
    async fn update_organization(
        &self,
        organization: &Organization,
        events: &[Event],
    ) -> Result<()>;
    /// Deletes the organization and everything scoped to it; revokes the API keys bound to it.
    async fn delete_organization(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
        events: &[Event],
    ) -> Result<DeletedOrganization>;
    /// The user's organizations after `after` (by id), with the user's role keys in each.
    async fn list_memberships(
        &self,
        user_id: Uuid,
        only: Option<Uuid>,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<(Organization, Vec<RoleKey>)>>;
    /// The member's grants; `None` when the user is not a member.
    async fn find_member_grants(
        &self,
        organization_id: Uuid,
        user_id: Uuid,
    ) -> Result<Option<MemberGrants>>;
    /// Members after `after` (by user id).
    async fn list_members(
        &self,
        organization_id: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<Member>>;
    async fn count_members(&self, organization_id: Uuid) -> Result<u64>;
    async fn find_member(&self, organization_id: Uuid, user_id: Uuid) -> Result<Option<Member>>;
    /// Whether two users are members of a common organization (of `within`, when given).
    async fn shares_organization(
        &self,
        user: Uuid,
        other: Uuid,
        within: Option<Uuid>,
    ) -> Result<bool>;
    /// Whether a member's account has this (normalized) email address.
    async fn is_member_by_email(&self, organization_id: Uuid, email: &str) -> Result<bool>;
    /// Fails with `ALREADY_MEMBER`, or `QUOTA_EXCEEDED` (nothing written) when the
    /// organization would have more than `max_members`.
    async fn insert_member(
        &self,
        organization_id: Uuid,
        user_id: Uuid,
        role_keys: &[RoleKey],
        now: DateTime<Utc>,
        max_members: i64,
        events: &[Event],
    ) -> Result<()>;
    /// Replaces the member's roles, atomically refusing (`LAST_OWNER`) to leave the organization
    /// without an owner.
    async fn replace_member_roles(
        &self,
        organization_id: Uuid,
        user_id: Uuid,
        role_keys: &[RoleKey],
        events: &[Event],
    ) -> Result<()>;
    /// Makes `to` an owner and `from` an admin, atomically.
    async fn transfer_ownership(
        &self,
        organization_id: Uuid,
        from: Uuid,
        to: Uuid,
        events: &[Event],
    ) -> Result<()>;
    /// Removes the member, atomically refusing (`LAST_OWNER`) to remove the last owner.
    async fn delete_member(
        &self,
        organization_id: Uuid,
        user_id: Uuid,
        events: &[Event],
    ) -> Result<()>;
    async fn list_custom_roles(&self, organization_id: Uuid) -> Result<Vec<CustomRole>>;
    /// The organization a team belongs to.
    async fn find_team_organization(&self, team_id: Uuid) -> Result<Option<Uuid>>;
    /// The organization a resource belongs to.
    async fn find_owning_organization(
        &self,
        owned: access::Owned,
        id: Uuid,
    ) -> Result<Option<Uuid>>;
    /// Fails with `ROLE_NAME_TAKEN`.
    async fn insert_role(&self, role: &CustomRole, events: &[Event]) -> Result<()>;
    /// Fails with `ROLE_NAME_TAKEN`.
    async fn update_role(&self, role: &CustomRole, events: &[Event]) -> Result<()>;
    /// Deletes the role and its assignments (organization-wide and in teams); answers the
    /// members who held it.
    async fn delete_role(
        &self,
        organization_id: Uuid,
        role_id: Uuid,
        events: &[Event],
    ) -> Result<Vec<Uuid>>;
}

pub fn last_owner() -> Error {
    Error::new(
        super::error::ErrorKind::FailedPrecondition,
        "LAST_OWNER",
        "an organization keeps at least one owner: make another member an owner first",
    )
}

/// A team's or a role's description.
pub fn parse_description(raw: &str) -> Result<String, super::error::FieldViolation> {
    super::text::bounded_text(
        "description",
        "INVALID_DESCRIPTION",
        raw,
        500,
        super::text::Blank::Allowed,
    )
}

pub fn role_name_taken() -> Error {
    Error::already_exists(
        "ROLE_NAME_TAKEN",
        "this organization already has a role with this name",
    )
}

pub fn slug_taken() -> Error {
    Error::already_exists(
        "SLUG_TAKEN",
        "an organization with this slug already exists",
    )
}
