//! `TeamStore` on SQL.

use super::events::{execute_with_events, insert_events};
use super::organizations::{MemberRow, group_roles, role_keys};
use super::{BeginWrite, SqlStore, database_error, unique_or, with_pool};
use crate::domain::error::{Error, Result};
use crate::domain::events::Event;
use crate::domain::tenancy::Member;
use crate::domain::tenancy::permissions::RoleKey;
use crate::domain::tenancy::teams::{Team, TeamStore};
use chrono::{DateTime, Utc};
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct TeamRow {
    id: Uuid,
    organization_id: Uuid,
    name: String,
    slug: String,
    description: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<TeamRow> for Team {
    fn from(row: TeamRow) -> Self {
        Team {
            id: row.id,
            organization_id: row.organization_id,
            name: row.name,
            slug: row.slug,
            description: row.description,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

const SELECT_TEAM: &str =
    "SELECT id, organization_id, name, slug, description, created_at, updated_at FROM teams";

const SELECT_TEAM_MEMBER: &str = "SELECT m.user_id, u.email, u.full_name, m.joined_at \
     FROM team_members m JOIN users u ON u.id = m.user_id";

fn team_slug_taken() -> Error {
    Error::already_exists(
        "TEAM_SLUG_TAKEN",
        "this organization already has a team with this slug",
    )
}

fn already_team_member() -> Error {
    Error::already_exists("ALREADY_TEAM_MEMBER", "the user is already in this team")
}

fn member(row: MemberRow, role_keys: Vec<RoleKey>) -> Member {
    Member {
        user_id: row.user_id,
        email: row.email,
        full_name: row.full_name,
        role_keys,
        joined_at: row.joined_at,
    }
}

/// An organization's teams, a page at a time, along the index `(organization_id, id)`.
pub(super) fn list_teams_sql() -> String {
    format!("{SELECT_TEAM} WHERE organization_id = $1 AND id > $2 ORDER BY id LIMIT $3")
}

/// A team's members, a page at a time, along the primary key.
pub(super) fn list_team_members_sql() -> String {
    format!(
        "{SELECT_TEAM_MEMBER} WHERE m.team_id = $1 AND m.user_id > $2 \
         ORDER BY m.user_id LIMIT $3"
    )
}

#[async_trait::async_trait]
impl TeamStore for SqlStore {
    async fn insert_team(&self, team: &Team, events: &[Event]) -> Result<()> {
        execute_with_events!(
            self,
            events,
            sqlx::query(
                "INSERT INTO teams (id, organization_id, name, slug, description, created_at, \
                 updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(team.id)
            .bind(team.organization_id)
            .bind(&team.name)
            .bind(&team.slug)
            .bind(&team.description)
            .bind(team.created_at)
            .bind(team.updated_at),
            unique_or(team_slug_taken)
        )
        .map(|_| ())
    }

    async fn find_team(&self, organization_id: Uuid, id: Uuid) -> Result<Option<Team>> {
        let row: Option<TeamRow> = with_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "{SELECT_TEAM} WHERE id = $1 AND organization_id = $2"
            )))
            .bind(id)
            .bind(organization_id)
            .fetch_optional(pool)
            .await
        })
        .map_err(database_error)?;
        Ok(row.map(Team::from))
    }

    async fn list_teams(
        &self,
        organization_id: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<Team>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<TeamRow> = with_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(list_teams_sql()))
            .bind(organization_id)
            .bind(after.unwrap_or(Uuid::nil()))
            .bind(limit)
            .fetch_all(pool)
            .await
        })
        .map_err(database_error)?;
        Ok(rows.into_iter().map(Team::from).collect())
    }

    async fn update_team(&self, team: &Team, events: &[Event]) -> Result<()> {
        execute_with_events!(
            self,
            events,
            sqlx::query(
                "UPDATE teams SET name = $3, slug = $4, description = $5, updated_at = $6 \
                 WHERE id = $1 AND organization_id = $2",
            )
            .bind(team.id)
            .bind(team.organization_id)
            .bind(&team.name)
            .bind(&team.slug)
            .bind(&team.description)
            .bind(team.updated_at),
            unique_or(team_slug_taken)
        )
        .map(|_| ())
    }

    async fn delete_team(
        &self,
        organization_id: Uuid,
        id: Uuid,
        events: &[Event],
    ) -> Result<Vec<Uuid>> {
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            let members: Vec<(Uuid,)> =
                sqlx::query_as("SELECT user_id FROM team_members WHERE team_id = $1")
                    .bind(id)
                    .fetch_all(&mut *transaction)
                    .await?;
            sqlx::query("DELETE FROM teams WHERE id = $1 AND organization_id = $2")
                .bind(id)
                .bind(organization_id)
                .execute(&mut *transaction)
                .await?;
            insert_events!(transaction, events);
            transaction.commit().await?;
            Ok(members.into_iter().map(|(user_id,)| user_id).collect())
        }
        .await)
        .map_err(database_error)
    }

    async fn list_team_members(
        &self,
        team_id: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<Member>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let (rows, role_rows): (Vec<MemberRow>, Vec<(Uuid, String)>) =
            with_pool!(self, pool => async {
            let rows: Vec<MemberRow> = sqlx::query_as(sqlx::AssertSqlSafe(list_team_members_sql()))
            .bind(team_id)
            .bind(after.unwrap_or(Uuid::nil()))
            .bind(limit)
            .fetch_all(pool)
            .await?;
            let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
                return Ok((rows, Vec::new()));
            };
            let role_rows = sqlx::query_as(
                "SELECT user_id, role_key FROM team_member_roles \
                 WHERE team_id = $1 AND user_id >= $2 AND user_id <= $3 ORDER BY role_key",
            )
            .bind(team_id)
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
            .map(|row| {
                let role_keys = roles.remove(&row.user_id).unwrap_or_default();
                member(row, role_keys)
            })
            .collect())
    }

    async fn find_team_member(&self, team_id: Uuid, user_id: Uuid) -> Result<Option<Member>> {
        let (row, roles): (Option<MemberRow>, Vec<(String,)>) = with_pool!(self, pool => async {
            let row = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "{SELECT_TEAM_MEMBER} WHERE m.team_id = $1 AND m.user_id = $2"
            )))
            .bind(team_id)
            .bind(user_id)
            .fetch_optional(pool)
            .await?;
            let roles = sqlx::query_as(
                "SELECT role_key FROM team_member_roles WHERE team_id = $1 AND user_id = $2 \
                 ORDER BY role_key",
            )
            .bind(team_id)
            .bind(user_id)
            .fetch_all(pool)
            .await?;
            Ok::<_, sqlx::Error>((row, roles))
        }
        .await)
        .map_err(database_error)?;
        Ok(row.map(|row| member(row, role_keys(roles))))
    }

    async fn insert_team_member(
        &self,
        team: &Team,
        user_id: Uuid,
        role_keys: &[RoleKey],
        now: DateTime<Utc>,
        events: &[Event],
    ) -> Result<()> {
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            sqlx::query(
                "INSERT INTO team_members (team_id, organization_id, user_id, joined_at) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(team.id)
            .bind(team.organization_id)
            .bind(user_id)
            .bind(now)
            .execute(&mut *transaction)
            .await?;
            for role_key in role_keys {
                sqlx::query(
                    "INSERT INTO team_member_roles (team_id, user_id, role_key) VALUES ($1, $2, $3)",
                )
                .bind(team.id)
                .bind(user_id)
                .bind(role_key.to_string())
                .execute(&mut *transaction)
                .await?;
            }
            insert_events!(transaction, events);
            transaction.commit().await
        }
        .await)
        .map_err(unique_or(already_team_member))
    }

    async fn replace_team_member_roles(
        &self,
        team_id: Uuid,
        user_id: Uuid,
        role_keys: &[RoleKey],
        events: &[Event],
    ) -> Result<()> {
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            sqlx::query("DELETE FROM team_member_roles WHERE team_id = $1 AND user_id = $2")
                .bind(team_id)
                .bind(user_id)
                .execute(&mut *transaction)
                .await?;
            for role_key in role_keys {
                sqlx::query(
                    "INSERT INTO team_member_roles (team_id, user_id, role_key) VALUES ($1, $2, $3)",
                )
                .bind(team_id)
                .bind(user_id)
                .bind(role_key.to_string())
                .execute(&mut *transaction)
                .await?;
            }
            insert_events!(transaction, events);
            transaction.commit().await
        }
        .await)
        .map_err(database_error)
    }

    async fn delete_team_member(
        &self,
        team_id: Uuid,
        user_id: Uuid,
        events: &[Event],
    ) -> Result<()> {
        execute_with_events!(
            self,
            events,
            sqlx::query("DELETE FROM team_members WHERE team_id = $1 AND user_id = $2")
                .bind(team_id)
                .bind(user_id)
        )
        .map(|_| ())
    }
}
