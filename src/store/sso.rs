//! `SsoStore` on SQL.

use super::events::execute_with_events;
use super::{SqlStore, database_error, unique_or, with_pool};
use crate::domain::error::{Error, Result};
use crate::domain::events::Event;
use crate::domain::tenancy::sso::{DOMAIN_TAKEN, SsoConnection, SsoDomain, SsoStore};
use chrono::{DateTime, Utc};
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct ConnectionRow {
    organization_id: Uuid,
    issuer: String,
    client_id: String,
    client_secret_sealed: Vec<u8>,
    /// Space-separated.
    scopes: String,
    default_role: String,
    enforce: bool,
    trust_mfa: bool,
    groups_claim: String,
    /// JSON `[[group, role key], …]`.
    role_mappings: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct DomainRow {
    domain: String,
    organization_id: Uuid,
    verification_token: String,
    created_at: DateTime<Utc>,
    approved_at: Option<DateTime<Utc>>,
}

impl From<DomainRow> for SsoDomain {
    fn from(row: DomainRow) -> Self {
        SsoDomain {
            domain: row.domain,
            organization_id: row.organization_id,
            verification_token: row.verification_token,
            created_at: row.created_at,
            approved_at: row.approved_at,
        }
    }
}

const SELECT_DOMAIN: &str = "SELECT domain, organization_id, verification_token, created_at, \
     approved_at FROM sso_domains";

fn domain_taken() -> Error {
    Error::already_exists(
        DOMAIN_TAKEN,
        "this domain is claimed by an organization already",
    )
}

#[async_trait::async_trait]
impl SsoStore for SqlStore {
    async fn find_connection(
        &self,
        organization_id: Uuid,
    ) -> Result<Option<(SsoConnection, Vec<u8>)>> {
        let row: Option<ConnectionRow> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT organization_id, issuer, client_id, client_secret_sealed, scopes, \
                 default_role, enforce, trust_mfa, groups_claim, role_mappings, created_at, \
                 updated_at FROM sso_connections WHERE organization_id = $1",
            )
            .bind(organization_id)
            .fetch_optional(pool)
            .await
        })
        .map_err(database_error)?;
        row.map(|row| {
            let role_mappings =
                serde_json::from_str(&row.role_mappings).map_err(Error::internal)?;
            let connection = SsoConnection {
                organization_id: row.organization_id,
                issuer: row.issuer,
                client_id: row.client_id,
                scopes: row.scopes.split(' ').map(str::to_owned).collect(),
                default_role: row.default_role,
                enforce: row.enforce,
                trust_mfa: row.trust_mfa,
                groups_claim: row.groups_claim,
                role_mappings,
                created_at: row.created_at,
                updated_at: row.updated_at,
            };
            Ok((connection, row.client_secret_sealed))
        })
        .transpose()
    }

    async fn put_connection(
        &self,
        connection: &SsoConnection,
        sealed_secret: Option<&[u8]>,
        events: &[Event],
    ) -> Result<()> {
        // A new connection always comes with its secret; `COALESCE` keeps the stored one.
        execute_with_events!(
            self,
            events,
            sqlx::query(
                "INSERT INTO sso_connections (organization_id, issuer, client_id, \
                 client_secret_sealed, scopes, default_role, enforce, trust_mfa, groups_claim, \
                 role_mappings, created_at, updated_at) \
                 VALUES ($1, $2, $3, COALESCE($4, ''), $5, $6, $7, $8, $9, $10, $11, $12) \
                 ON CONFLICT (organization_id) DO UPDATE SET issuer = $2, client_id = $3, \
                 client_secret_sealed = COALESCE($4, sso_connections.client_secret_sealed), \
                 scopes = $5, default_role = $6, enforce = $7, trust_mfa = $8, \
                 groups_claim = $9, role_mappings = $10, updated_at = $12"
            )
            .bind(connection.organization_id)
            .bind(&connection.issuer)
            .bind(&connection.client_id)
            .bind(sealed_secret)
            .bind(connection.scopes.join(" "))
            .bind(&connection.default_role)
            .bind(connection.enforce)
            .bind(connection.trust_mfa)
            .bind(&connection.groups_claim)
            .bind(serde_json::json!(connection.role_mappings).to_string())
            .bind(connection.created_at)
            .bind(connection.updated_at)
        )
        .map(|_| ())
    }

    async fn delete_connection(&self, organization_id: Uuid, events: &[Event]) -> Result<bool> {
        execute_with_events!(
            self,
            events,
            sqlx::query("DELETE FROM sso_connections WHERE organization_id = $1")
                .bind(organization_id)
        )
        .map(|deleted| deleted > 0)
    }

    async fn insert_domain(&self, domain: &SsoDomain, events: &[Event]) -> Result<()> {
        execute_with_events!(
            self,
            events,
            sqlx::query(
                "INSERT INTO sso_domains (domain, organization_id, verification_token, \
                 created_at, approved_at) VALUES ($1, $2, $3, $4, $5)"
            )
            .bind(&domain.domain)
            .bind(domain.organization_id)
            .bind(&domain.verification_token)
            .bind(domain.created_at)
            .bind(domain.approved_at),
            unique_or(domain_taken)
        )
        .map(|_| ())
    }

    async fn list_domains(&self, organization_id: Uuid) -> Result<Vec<SsoDomain>> {
        let rows: Vec<DomainRow> = with_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "{SELECT_DOMAIN} WHERE organization_id = $1 ORDER BY domain"
            )))
            .bind(organization_id)
            .fetch_all(pool)
            .await
        })
        .map_err(database_error)?;
        Ok(rows.into_iter().map(SsoDomain::from).collect())
    }

    async fn delete_domain(
        &self,
        organization_id: Uuid,
        domain: &str,
        events: &[Event],
    ) -> Result<bool> {
        execute_with_events!(
            self,
            events,
            sqlx::query("DELETE FROM sso_domains WHERE organization_id = $1 AND domain = $2")
                .bind(organization_id)
                .bind(domain)
        )
        .map(|deleted| deleted > 0)
    }

    async fn approve_domain(
        &self,
        domain: &str,
        now: DateTime<Utc>,
        events: &[Event],
    ) -> Result<Option<SsoDomain>> {
        execute_with_events!(
            self,
            events,
            sqlx::query(
                "UPDATE sso_domains SET approved_at = $2 WHERE domain = $1 AND approved_at IS NULL"
            )
            .bind(domain)
            .bind(now)
        )?;
        self.find_domain(domain).await
    }

    async fn find_domain(&self, domain: &str) -> Result<Option<SsoDomain>> {
        let row: Option<DomainRow> = with_pool!(self, pool => {
            sqlx::query_as(sqlx::AssertSqlSafe(format!("{SELECT_DOMAIN} WHERE domain = $1")))
                .bind(domain)
                .fetch_optional(pool)
                .await
        })
        .map_err(database_error)?;
        Ok(row.map(SsoDomain::from))
    }
}
