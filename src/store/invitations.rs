//! `InvitationStore` on SQL.

use super::events::{execute_with_events, insert_events};
use super::organizations::{COUNT_MEMBERS, LOCK_ORGANIZATION};
use super::{BeginWrite, SqlStore, database_error, execute, insert_member_roles, with_pool};
use crate::domain::error::Result;
use crate::domain::events::Event;
use crate::domain::tenancy::invitations::{Invitation, InvitationStore};
use crate::domain::tenancy::permissions::RoleKey;
use crate::domain::tenancy::quotas::members_full;
use chrono::{DateTime, Utc};
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct InvitationRow {
    id: Uuid,
    organization_id: Uuid,
    organization_name: String,
    email: String,
    role_keys: String,
    invited_by: Option<Uuid>,
    valid_days: i32,
    created_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    accepted_at: Option<DateTime<Utc>>,
    accepted_by: Option<Uuid>,
    revoked_at: Option<DateTime<Utc>>,
}

impl From<InvitationRow> for Invitation {
    fn from(row: InvitationRow) -> Self {
        Invitation {
            id: row.id,
            organization_id: row.organization_id,
            organization_name: row.organization_name,
            email: row.email,
            role_keys: row
                .role_keys
                .split_whitespace()
                .filter_map(RoleKey::parse)
                .collect(),
            invited_by: row.invited_by,
            valid_days: row.valid_days,
            created_at: row.created_at,
            expires_at: row.expires_at,
            accepted_at: row.accepted_at,
            accepted_by: row.accepted_by,
            revoked_at: row.revoked_at,
        }
    }
}

const SELECT_INVITATION: &str = "SELECT i.id, i.organization_id, o.name AS organization_name, \
     i.email, i.role_keys, i.invited_by, i.valid_days, i.created_at, i.expires_at, \
     i.accepted_at, i.accepted_by, i.revoked_at \
     FROM invitations i JOIN organizations o ON o.id = i.organization_id";

/// An organization's invitations, newest first, along the index `(organization_id, id)`.
pub(super) fn list_invitations_sql() -> String {
    format!(
        "{SELECT_INVITATION} WHERE i.organization_id = $1 AND i.id < $2 \
         ORDER BY i.id DESC LIMIT $3"
    )
}

/// The pending invitations to an address, newest first, along the index `(email, id)`.
pub(super) fn list_pending_invitations_sql() -> String {
    format!(
        "{SELECT_INVITATION} WHERE i.email = $1 AND i.accepted_at IS NULL \
         AND i.revoked_at IS NULL AND i.expires_at > $2 ORDER BY i.id DESC LIMIT 100"
    )
}

#[async_trait::async_trait]
impl InvitationStore for SqlStore {
    async fn delete_invitations_ended_before(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        execute!(
            self,
            sqlx::query(
                "DELETE FROM invitations WHERE accepted_at IS NULL \
                 AND (expires_at < $1 OR revoked_at < $1)",
            )
            .bind(cutoff)
        )
    }

    async fn insert_invitation(
        &self,
        invitation: &Invitation,
        token_digest: &[u8; 32],
        events: &[Event],
    ) -> Result<()> {
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            sqlx::query(
                "UPDATE invitations SET revoked_at = $3 WHERE organization_id = $1 AND email = $2 \
                 AND accepted_at IS NULL AND revoked_at IS NULL",
            )
            .bind(invitation.organization_id)
            .bind(&invitation.email)
            .bind(invitation.created_at)
            .execute(&mut *transaction)
            .await?;
            sqlx::query(
                "INSERT INTO invitations (id, organization_id, email, role_keys, token_digest, \
                 invited_by, valid_days, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(invitation.id)
            .bind(invitation.organization_id)
            .bind(&invitation.email)
            .bind(
                invitation
                    .role_keys
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
            )
            .bind(&token_digest[..])
            .bind(invitation.invited_by)
            .bind(invitation.valid_days)
            .bind(invitation.created_at)
            .bind(invitation.expires_at)
            .execute(&mut *transaction)
            .await?;
            insert_events!(transaction, events);
            transaction.commit().await
        }
        .await)
        .map_err(database_error)
    }

    async fn find_invitation(&self, organization_id: Uuid, id: Uuid) -> Result<Option<Invitation>> {
        let row: Option<InvitationRow> = with_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "{SELECT_INVITATION} WHERE i.id = $1 AND i.organization_id = $2"
            )))
            .bind(id)
            .bind(organization_id)
            .fetch_optional(pool)
            .await
        })
        .map_err(database_error)?;
        Ok(row.map(Invitation::from))
    }

    async fn find_invitation_by_token(
        &self,
        token_digest: &[u8; 32],
    ) -> Result<Option<Invitation>> {
        let row: Option<InvitationRow> = with_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "{SELECT_INVITATION} WHERE i.token_digest = $1"
            )))
            .bind(&token_digest[..])
            .fetch_optional(pool)
            .await
        })
        .map_err(database_error)?;
        Ok(row.map(Invitation::from))
    }

    async fn list_invitations(
        &self,
        organization_id: Uuid,
        before: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<Invitation>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<InvitationRow> = with_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(list_invitations_sql()))
                .bind(organization_id)
                .bind(before.unwrap_or(Uuid::max()))
                .bind(limit)
            .fetch_all(pool)
            .await
        })
        .map_err(database_error)?;
        Ok(rows.into_iter().map(Invitation::from).collect())
    }

    async fn list_pending_invitations(
        &self,
        email: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Invitation>> {
        let rows: Vec<InvitationRow> = with_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(list_pending_invitations_sql()))
            .bind(email)
            .bind(now)
            .fetch_all(pool)
            .await
        })
        .map_err(database_error)?;
        Ok(rows.into_iter().map(Invitation::from).collect())
    }

    async fn renew_invitation(
        &self,
        id: Uuid,
        token_digest: &[u8; 32],
        expires_at: DateTime<Utc>,
    ) -> Result<()> {
        execute!(
            self,
            sqlx::query("UPDATE invitations SET token_digest = $2, expires_at = $3 WHERE id = $1")
                .bind(id)
                .bind(&token_digest[..])
                .bind(expires_at)
        )
        .map(|_| ())
    }

    async fn revoke_invitation(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
        events: &[Event],
    ) -> Result<()> {
        execute_with_events!(
            self,
            events,
            sqlx::query(
                "UPDATE invitations SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL"
            )
            .bind(id)
            .bind(now)
        )
        .map(|_| ())
    }

    async fn accept_invitation(
        &self,
        invitation: &Invitation,
        user_id: Uuid,
        role_keys: &[RoleKey],
        now: DateTime<Utc>,
        max_members: i64,
        events: &[Event],
    ) -> Result<()> {
        let within_limit = with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            sqlx::query(LOCK_ORGANIZATION)
                .bind(invitation.organization_id)
                .execute(&mut *transaction)
                .await?;
            let claimed = sqlx::query(
                "UPDATE invitations SET accepted_at = $2, accepted_by = $3 \
                 WHERE id = $1 AND accepted_at IS NULL AND revoked_at IS NULL",
            )
            .bind(invitation.id)
            .bind(now)
            .bind(user_id)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
            if claimed == 0 {
                // Accepted concurrently: that transaction made the membership.
                return Ok(true);
            }
            let joined = sqlx::query(
                "INSERT INTO organization_members (organization_id, user_id, joined_at) \
                 VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            )
            .bind(invitation.organization_id)
            .bind(user_id)
            .bind(now)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
            if joined == 1 {
                let (members,): (i64,) = sqlx::query_as(COUNT_MEMBERS)
                    .bind(invitation.organization_id)
                    .fetch_one(&mut *transaction)
                    .await?;
                if members > max_members {
                    return Ok(false);
                }
                insert_member_roles!(transaction, invitation.organization_id, user_id, role_keys);
            }
            insert_events!(transaction, events);
            transaction.commit().await?;
            Ok::<_, sqlx::Error>(true)
        }
        .await)
        .map_err(database_error)?;
        if !within_limit {
            return Err(members_full(max_members));
        }
        Ok(())
    }
}
