//! `IpRuleStore` on SQL.

use super::events::execute_with_events;
use super::{SqlStore, database_error, with_pool};
use crate::domain::error::{Error, Result};
use crate::domain::events::Event;
use crate::domain::tenancy::ip_rules::{IpRuleStore, IpRules};
use uuid::Uuid;

#[async_trait::async_trait]
impl IpRuleStore for SqlStore {
    async fn find_ip_rules(&self, organization_id: Uuid) -> Result<IpRules> {
        let row: Option<(String, String)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT allow_blocks, deny_blocks FROM organization_ip_rules \
                 WHERE organization_id = $1",
            )
            .bind(organization_id)
            .fetch_optional(pool)
            .await
        })
        .map_err(database_error)?;
        let Some((allow, deny)) = row else {
            return Ok(IpRules::default());
        };
        Ok(IpRules {
            allow: serde_json::from_str(&allow).map_err(Error::internal)?,
            deny: serde_json::from_str(&deny).map_err(Error::internal)?,
        })
    }

    async fn save_ip_rules(
        &self,
        organization_id: Uuid,
        rules: &IpRules,
        events: &[Event],
    ) -> Result<()> {
        let allow = serde_json::to_string(&rules.allow).map_err(Error::internal)?;
        let deny = serde_json::to_string(&rules.deny).map_err(Error::internal)?;
        execute_with_events!(
            self,
            events,
            sqlx::query(
                "INSERT INTO organization_ip_rules (organization_id, allow_blocks, deny_blocks) \
                 VALUES ($1, $2, $3) \
                 ON CONFLICT (organization_id) DO UPDATE SET allow_blocks = $2, deny_blocks = $3"
            )
            .bind(organization_id)
            .bind(&allow)
            .bind(&deny)
        )
        .map(|_| ())
    }
}
