//! `OrganizationStore` on SQL. Changes to roles lock the organization row first (a no-op
//! update: a row lock on PostgreSQL, the write lock on SQLite), so two concurrent demotions
//! cannot leave an organization without an owner.

use super::events::{execute_with_events, insert_events};
use super::{BeginWrite, SqlStore, database_error, insert_member_roles, unique_or, with_pool};
use crate::domain::error::{Error, Result};
use crate::domain::events::Event;
use crate::domain::tenancy::access::Owned;
use crate::domain::tenancy::permissions::{PermissionSet, RoleKey, SystemRole};
use crate::domain::tenancy::quotas::members_full;
use crate::domain::tenancy::{
    CustomRole, DeletedOrganization, Member, MemberGrants, Organization, OrganizationStore,
    Settings, last_owner, role_name_taken, slug_taken,
};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct OrganizationRow {
    id: Uuid,
    name: String,
    slug: String,
    settings: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<OrganizationRow> for Organization {
    type Error = Error;

    fn try_from(row: OrganizationRow) -> Result<Self> {
        Ok(Organization {
            id: row.id,
            name: row.name,
            slug: row.slug,
            settings: serde_json::from_str::<Settings>(&row.settings).map_err(Error::internal)?,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct MemberRow {
    pub user_id: Uuid,
    pub email: String,
    pub full_name: String,
    pub joined_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct RoleRow {
    id: Uuid,
    organization_id: Uuid,
    name: String,
    description: String,
    permissions: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<RoleRow> for CustomRole {
    fn from(row: RoleRow) -> Self {
        CustomRole {
            id: row.id,
            organization_id: row.organization_id,
            name: row.name,
            description: row.description,
            permissions: row.permissions.split_whitespace().collect(),
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

fn permission_text(permissions: PermissionSet) -> String {
    permissions.names().join(" ")
}

fn settings_text(settings: &Settings) -> Result<String> {
    serde_json::to_string(settings).map_err(Error::internal)
}

const SELECT_ORGANIZATION: &str =
    "SELECT o.id, o.name, o.slug, o.settings, o.created_at, o.updated_at FROM organizations o";

const SELECT_MEMBER: &str = "SELECT m.user_id, u.email, u.full_name, m.joined_at \
     FROM organization_members m JOIN users u ON u.id = m.user_id";

const SELECT_ROLE: &str = "SELECT id, organization_id, name, description, permissions, \
     created_at, updated_at FROM roles";

/// A user's organizations, a page at a time. Walks the membership index `(user_id,
/// organization_id)` in order from the page token and stops at the page size; the order is on
/// the membership's column, not the organization's, or the whole set is sorted first.
pub(super) fn list_memberships_sql() -> String {
    format!(
        "{SELECT_ORGANIZATION} JOIN organization_members m ON m.organization_id = o.id \
         WHERE m.user_id = $1 AND ($2 IS NULL OR m.organization_id = $2) \
         AND m.organization_id > $3 ORDER BY m.organization_id LIMIT $4"
    )
}

/// An organization's members, a page at a time, along the primary key.
pub(super) fn list_members_sql() -> String {
    format!(
        "{SELECT_MEMBER} WHERE m.organization_id = $1 AND m.user_id > $2 \
         ORDER BY m.user_id LIMIT $3"
    )
}

/// Takes the organization's write lock inside a transaction.
pub(super) const LOCK_ORGANIZATION: &str =
    "UPDATE organizations SET updated_at = updated_at WHERE id = $1";

pub(super) const COUNT_MEMBERS: &str =
    "SELECT COUNT(*) FROM organization_members WHERE organization_id = $1";

const COUNT_OWNERS: &str =
    "SELECT COUNT(*) FROM member_roles WHERE organization_id = $1 AND role_key = 'owner'";

/// Groups (key, role) rows into role lists per key.
fn already_member() -> Error {
    Error::already_exists("ALREADY_MEMBER", "the user is already a member")
}

pub(super) fn group_roles(rows: Vec<(Uuid, String)>) -> HashMap<Uuid, Vec<RoleKey>> {
    let mut grouped: HashMap<Uuid, Vec<RoleKey>> = HashMap::new();
    for (key, role) in rows {
        grouped
            .entry(key)
            .or_default()
            .extend(RoleKey::parse(&role));
    }
    grouped
}

/// Role keys as stored (system role names, custom role ids).
pub(super) fn role_keys(rows: Vec<(String,)>) -> Vec<RoleKey> {
    rows.iter()
        .filter_map(|(role,)| RoleKey::parse(role))
        .collect()
}

#[async_trait::async_trait]
impl OrganizationStore for SqlStore {
    async fn insert_organization(
        &self,
        organization: &Organization,
        owner: Uuid,
        events: &[Event],
    ) -> Result<()> {
        let settings = settings_text(&organization.settings)?;
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            sqlx::query(
                "INSERT INTO organizations (id, name, slug, settings, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(organization.id)
            .bind(&organization.name)
            .bind(&organization.slug)
            .bind(&settings)
            .bind(organization.created_at)
            .bind(organization.updated_at)
            .execute(&mut *transaction)
            .await?;
            sqlx::query(
                "INSERT INTO organization_members (organization_id, user_id, joined_at) \
                 VALUES ($1, $2, $3)",
            )
            .bind(organization.id)
            .bind(owner)
            .bind(organization.created_at)
            .execute(&mut *transaction)
            .await?;
            insert_member_roles!(transaction, organization.id, owner, [RoleKey::System(SystemRole::Owner)]);
            insert_events!(transaction, events);
            transaction.commit().await
        }
        .await)
        .map_err(unique_or(slug_taken))
    }

    async fn find_organization(&self, id: Uuid) -> Result<Option<Organization>> {
        let row: Option<OrganizationRow> = with_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT_ORGANIZATION} WHERE o.id = $1")))
                .bind(id)
                .fetch_optional(pool)
                .await
        })
        .map_err(database_error)?;
        row.map(Organization::try_from).transpose()
    }

    async fn update_organization(
        &self,
        organization: &Organization,
        events: &[Event],
    ) -> Result<()> {
        let settings = settings_text(&organization.settings)?;
        execute_with_events!(
            self,
            events,
            sqlx::query(
                "UPDATE organizations SET name = $2, slug = $3, settings = $4, updated_at = $5 \
                 WHERE id = $1",
            )
            .bind(organization.id)
            .bind(&organization.name)
            .bind(&organization.slug)
            .bind(&settings)
            .bind(organization.updated_at),
            unique_or(slug_taken)
        )
        .map(|_| ())
    }

    async fn delete_organization(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
        events: &[Event],
    ) -> Result<DeletedOrganization> {
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            let member_ids: Vec<(Uuid,)> = sqlx::query_as(
                "SELECT user_id FROM organization_members WHERE organization_id = $1",
            )
            .bind(id)
            .fetch_all(&mut *transaction)
            .await?;
            let prefixes: Vec<(String,)> = sqlx::query_as(
                "UPDATE api_keys SET revoked_at = $2 \
                 WHERE organization_id = $1 AND revoked_at IS NULL RETURNING prefix",
            )
            .bind(id)
            .bind(now)
            .fetch_all(&mut *transaction)
            .await?;
            sqlx::query("DELETE FROM organizations WHERE id = $1")
                .bind(id)
                .execute(&mut *transaction)
                .await?;
            insert_events!(transaction, events);
            transaction.commit().await?;
            Ok(DeletedOrganization {
                member_ids: member_ids.into_iter().map(|(id,)| id).collect(),
                revoked_api_key_prefixes: prefixes.into_iter().map(|(prefix,)| prefix).collect(),
            })
        }
        .await)
        .map_err(database_error)
    }

    async fn list_memberships(
        &self,
        user_id: Uuid,
        only: Option<Uuid>,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<(Organization, Vec<RoleKey>)>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (rows, role_rows): (Vec<OrganizationRow>, Vec<(Uuid, String)>) =
            with_pool!(self, pool => async {
            let rows: Vec<OrganizationRow> =
                sqlx::query_as(sqlx::AssertSqlSafe(list_memberships_sql()))
                    .bind(user_id)
                    .bind(only)
                    .bind(after.unwrap_or(Uuid::nil()))
                    .bind(limit)
            .fetch_all(pool)
            .await?;
            let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
                return Ok((rows, Vec::new()));
            };
            let role_rows = sqlx::query_as(
                "SELECT organization_id, role_key FROM member_roles \
                 WHERE user_id = $1 AND organization_id >= $2 AND organization_id <= $3",
            )
            .bind(user_id)
            .bind(first.id)
            .bind(last.id)
            .fetch_all(pool)
            .await?;
            Ok::<_, sqlx::Error>((rows, role_rows))
        }
        .await)
            .map_err(database_error)?;
        let mut roles = group_roles(role_rows);
        rows.into_iter()
            .map(|row| {
                let role_keys = roles.remove(&row.id).unwrap_or_default();
                Ok((Organization::try_from(row)?, role_keys))
            })
            .collect()
    }

    async fn find_member_grants(
        &self,
        organization_id: Uuid,
        user_id: Uuid,
    ) -> Result<Option<MemberGrants>> {
        let (member, roles, team_roles): (Option<(Uuid,)>, Vec<(String,)>, Vec<(Uuid, String)>) =
            with_pool!(self, pool => async {
            let member = sqlx::query_as(
                "SELECT user_id FROM organization_members \
                 WHERE organization_id = $1 AND user_id = $2",
            )
            .bind(organization_id)
            .bind(user_id)
            .fetch_optional(pool)
            .await?;
            let roles = sqlx::query_as(
                "SELECT role_key FROM member_roles \
                 WHERE organization_id = $1 AND user_id = $2 ORDER BY role_key",
            )
            .bind(organization_id)
            .bind(user_id)
            .fetch_all(pool)
            .await?;
            let team_roles = sqlx::query_as(
                "SELECT r.team_id, r.role_key FROM team_members m \
                 JOIN team_member_roles r ON r.team_id = m.team_id AND r.user_id = m.user_id \
                 WHERE m.organization_id = $1 AND m.user_id = $2 ORDER BY r.role_key",
            )
            .bind(organization_id)
            .bind(user_id)
            .fetch_all(pool)
            .await?;
            Ok::<_, sqlx::Error>((member, roles, team_roles))
        }
        .await)
            .map_err(database_error)?;
        Ok(member.map(|_| MemberGrants {
            role_keys: role_keys(roles),
            team_roles: group_roles(team_roles).into_iter().collect(),
        }))
    }

    async fn list_members(
        &self,
        organization_id: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<Member>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (rows, role_rows): (Vec<MemberRow>, Vec<(Uuid, String)>) =
            with_pool!(self, pool => async {
            let rows: Vec<MemberRow> = sqlx::query_as(sqlx::AssertSqlSafe(list_members_sql()))
                .bind(organization_id)
                .bind(after.unwrap_or(Uuid::nil()))
                .bind(limit)
            .fetch_all(pool)
            .await?;
            let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
                return Ok((rows, Vec::new()));
            };
            let role_rows = sqlx::query_as(
                "SELECT user_id, role_key FROM member_roles \
                 WHERE organization_id = $1 AND user_id >= $2 AND user_id <= $3 \
                 ORDER BY role_key",
            )
            .bind(organization_id)
            .bind(first.user_id)
            .bind(last.user_id)
            .fetch_all(pool)
            .await?;
            Ok::<_, sqlx::Error>((rows, role_rows))
        }
        .await)
            .map_err(database_error)?;
        let mut roles = group_roles(role_rows);
        Ok(rows
            .into_iter()
            .map(|row| Member {
                role_keys: roles.remove(&row.user_id).unwrap_or_default(),
                user_id: row.user_id,
                email: row.email,
                full_name: row.full_name,
                joined_at: row.joined_at,
            })
            .collect())
    }

    async fn count_members(&self, organization_id: Uuid) -> Result<u64> {
        let (count,): (i64,) = with_pool!(self, pool => {
            sqlx::query_as("SELECT COUNT(*) FROM organization_members WHERE organization_id = $1")
                .bind(organization_id)
                .fetch_one(pool)
                .await
        })
        .map_err(database_error)?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn find_member(&self, organization_id: Uuid, user_id: Uuid) -> Result<Option<Member>> {
        let (row, roles): (Option<MemberRow>, Vec<(String,)>) = with_pool!(self, pool => async {
            let row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "{SELECT_MEMBER} WHERE m.organization_id = $1 AND m.user_id = $2"
            )))
            .bind(organization_id)
            .bind(user_id)
            .fetch_optional(pool)
            .await?;
            let roles = sqlx::query_as(
                "SELECT role_key FROM member_roles \
                 WHERE organization_id = $1 AND user_id = $2 ORDER BY role_key",
            )
            .bind(organization_id)
            .bind(user_id)
            .fetch_all(pool)
            .await?;
            Ok::<_, sqlx::Error>((row, roles))
        }
        .await)
        .map_err(database_error)?;
        Ok(row.map(|row| Member {
            user_id: row.user_id,
            email: row.email,
            full_name: row.full_name,
            role_keys: role_keys(roles),
            joined_at: row.joined_at,
        }))
    }

    async fn shares_organization(
        &self,
        user: Uuid,
        other: Uuid,
        within: Option<Uuid>,
    ) -> Result<bool> {
        let found: Option<(Uuid,)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT a.organization_id FROM organization_members a \
                 JOIN organization_members b ON b.organization_id = a.organization_id \
                 WHERE a.user_id = $1 AND b.user_id = $2 \
                 AND ($3 IS NULL OR a.organization_id = $3) LIMIT 1",
            )
            .bind(user)
            .bind(other)
            .bind(within)
            .fetch_optional(pool)
            .await
        })
        .map_err(database_error)?;
        Ok(found.is_some())
    }

    async fn is_member_by_email(&self, organization_id: Uuid, email: &str) -> Result<bool> {
        let found: Option<(Uuid,)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT m.user_id FROM organization_members m JOIN users u ON u.id = m.user_id \
                 WHERE m.organization_id = $1 AND u.email = $2",
            )
            .bind(organization_id)
            .bind(email)
            .fetch_optional(pool)
            .await
        })
        .map_err(database_error)?;
        Ok(found.is_some())
    }

    async fn insert_member(
        &self,
        organization_id: Uuid,
        user_id: Uuid,
        role_keys: &[RoleKey],
        now: DateTime<Utc>,
        max_members: i64,
        events: &[Event],
    ) -> Result<()> {
        let within_limit = with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            sqlx::query(LOCK_ORGANIZATION)
                .bind(organization_id)
                .execute(&mut *transaction)
                .await?;
            sqlx::query(
                "INSERT INTO organization_members (organization_id, user_id, joined_at) \
                 VALUES ($1, $2, $3)",
            )
            .bind(organization_id)
            .bind(user_id)
            .bind(now)
            .execute(&mut *transaction)
            .await?;
            let (members,): (i64,) = sqlx::query_as(COUNT_MEMBERS)
                .bind(organization_id)
                .fetch_one(&mut *transaction)
                .await?;
            if members > max_members {
                return Ok(false);
            }
            insert_member_roles!(transaction, organization_id, user_id, role_keys);
            insert_events!(transaction, events);
            transaction.commit().await?;
            Ok(true)
        }
        .await)
        .map_err(unique_or(already_member))?;
        if !within_limit {
            return Err(members_full(max_members));
        }
        Ok(())
    }

    async fn replace_member_roles(
        &self,
        organization_id: Uuid,
        user_id: Uuid,
        role_keys: &[RoleKey],
        events: &[Event],
    ) -> Result<()> {
        let owners_left: i64 = with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            sqlx::query(LOCK_ORGANIZATION)
                .bind(organization_id)
                .execute(&mut *transaction)
                .await?;
            sqlx::query("DELETE FROM member_roles WHERE organization_id = $1 AND user_id = $2")
                .bind(organization_id)
                .bind(user_id)
                .execute(&mut *transaction)
                .await?;
            insert_member_roles!(transaction, organization_id, user_id, role_keys);
            let (owners,): (i64,) = sqlx::query_as(COUNT_OWNERS)
                .bind(organization_id)
                .fetch_one(&mut *transaction)
                .await?;
            if owners > 0 {
                insert_events!(transaction, events);
                transaction.commit().await?;
            }
            Ok::<_, sqlx::Error>(owners)
        }
        .await)
        .map_err(database_error)?;
        if owners_left == 0 {
            return Err(last_owner());
        }
        Ok(())
    }

    async fn transfer_ownership(
        &self,
        organization_id: Uuid,
        from: Uuid,
        to: Uuid,
        events: &[Event],
    ) -> Result<()> {
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            sqlx::query(LOCK_ORGANIZATION)
                .bind(organization_id)
                .execute(&mut *transaction)
                .await?;
            for (user_id, role_key) in [(to, SystemRole::Owner), (from, SystemRole::Admin)] {
                sqlx::query("DELETE FROM member_roles WHERE organization_id = $1 AND user_id = $2")
                    .bind(organization_id)
                    .bind(user_id)
                    .execute(&mut *transaction)
                    .await?;
                insert_member_roles!(transaction, organization_id, user_id, [RoleKey::System(role_key)]);
            }
            insert_events!(transaction, events);
            transaction.commit().await
        }
        .await)
        .map_err(database_error)
    }

    async fn delete_member(
        &self,
        organization_id: Uuid,
        user_id: Uuid,
        events: &[Event],
    ) -> Result<()> {
        let owners_left: i64 = with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            sqlx::query(LOCK_ORGANIZATION)
                .bind(organization_id)
                .execute(&mut *transaction)
                .await?;
            sqlx::query(
                "DELETE FROM organization_members WHERE organization_id = $1 AND user_id = $2",
            )
            .bind(organization_id)
            .bind(user_id)
            .execute(&mut *transaction)
            .await?;
            let (owners,): (i64,) = sqlx::query_as(COUNT_OWNERS)
                .bind(organization_id)
                .fetch_one(&mut *transaction)
                .await?;
            if owners > 0 {
                insert_events!(transaction, events);
                transaction.commit().await?;
            }
            Ok::<_, sqlx::Error>(owners)
        }
        .await)
        .map_err(database_error)?;
        if owners_left == 0 {
            return Err(last_owner());
        }
        Ok(())
    }

    async fn list_custom_roles(&self, organization_id: Uuid) -> Result<Vec<CustomRole>> {
        let rows: Vec<RoleRow> = with_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "{SELECT_ROLE} WHERE organization_id = $1 ORDER BY name"
            )))
            .bind(organization_id)
            .fetch_all(pool)
            .await
        })
        .map_err(database_error)?;
        Ok(rows.into_iter().map(CustomRole::from).collect())
    }

    async fn find_team_organization(&self, team_id: Uuid) -> Result<Option<Uuid>> {
        let found: Option<(Uuid,)> = with_pool!(self, pool => {
            sqlx::query_as("SELECT organization_id FROM teams WHERE id = $1")
                .bind(team_id)
                .fetch_optional(pool)
                .await
        })
        .map_err(database_error)?;
        Ok(found.map(|(organization_id,)| organization_id))
    }

    async fn find_owning_organization(&self, owned: Owned, id: Uuid) -> Result<Option<Uuid>> {
        let sql = match owned {
            Owned::Invitation => "SELECT organization_id FROM invitations WHERE id = $1",
            Owned::Webhook => "SELECT organization_id FROM webhooks WHERE id = $1",
            Owned::Integration => "SELECT organization_id FROM integrations WHERE id = $1",
        };
        let found: Option<(Uuid,)> = with_pool!(self, pool => {
            sqlx::query_as(sql).bind(id).fetch_optional(pool).await
        })
        .map_err(database_error)?;
        Ok(found.map(|(organization_id,)| organization_id))
    }

    async fn insert_role(&self, role: &CustomRole, events: &[Event]) -> Result<()> {
        execute_with_events!(
            self,
            events,
            sqlx::query(
                "INSERT INTO roles (id, organization_id, name, description, permissions, \
                 created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(role.id)
            .bind(role.organization_id)
            .bind(&role.name)
            .bind(&role.description)
            .bind(permission_text(role.permissions))
            .bind(role.created_at)
            .bind(role.updated_at),
            unique_or(role_name_taken)
        )
        .map(|_| ())
    }

    async fn update_role(&self, role: &CustomRole, events: &[Event]) -> Result<()> {
        execute_with_events!(
            self,
            events,
            sqlx::query(
                "UPDATE roles SET name = $3, description = $4, permissions = $5, updated_at = $6 \
                 WHERE id = $1 AND organization_id = $2",
            )
            .bind(role.id)
            .bind(role.organization_id)
            .bind(&role.name)
            .bind(&role.description)
            .bind(permission_text(role.permissions))
            .bind(role.updated_at),
            unique_or(role_name_taken)
        )
        .map(|_| ())
    }

    async fn delete_role(
        &self,
        organization_id: Uuid,
        role_id: Uuid,
        events: &[Event],
    ) -> Result<Vec<Uuid>> {
        let role_key = role_id.to_string();
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            let mut holders: Vec<(Uuid,)> = sqlx::query_as(
                "DELETE FROM member_roles WHERE organization_id = $1 AND role_key = $2 \
                 RETURNING user_id",
            )
            .bind(organization_id)
            .bind(&role_key)
            .fetch_all(&mut *transaction)
            .await?;
            let team_holders: Vec<(Uuid,)> = sqlx::query_as(
                "DELETE FROM team_member_roles WHERE role_key = $2 \
                 AND team_id IN (SELECT id FROM teams WHERE organization_id = $1) \
                 RETURNING user_id",
            )
            .bind(organization_id)
            .bind(&role_key)
            .fetch_all(&mut *transaction)
            .await?;
            holders.extend(team_holders);
            sqlx::query("DELETE FROM roles WHERE id = $1 AND organization_id = $2")
                .bind(role_id)
                .bind(organization_id)
                .execute(&mut *transaction)
                .await?;
            insert_events!(transaction, events);
            transaction.commit().await?;
            Ok(holders.into_iter().map(|(user_id,)| user_id).collect())
        }
        .await)
        .map_err(database_error)
    }
}
