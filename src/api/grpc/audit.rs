//! `keel.audit.v1.AuditLogService`.

use super::{access, id, json_to_struct, principal, time, timestamp};
use crate::api::pb::keel::audit::v1::audit_log_service_server::AuditLogService as AuditLogRpc;
use crate::api::pb::keel::audit::v1::*;
use crate::domain::audit::{AuditEntry, AuditQuery, AuditService, LOGIN_ACTIONS};
use crate::domain::events::{EventKind, Outcome};
use crate::domain::page::Page;
use crate::domain::secret::hex;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct AuditLogApi {
    audit: Arc<AuditService>,
}

impl AuditLogApi {
    pub fn new(audit: Arc<AuditService>) -> Self {
        Self { audit }
    }
}

fn to_proto(entry: AuditEntry) -> AuditLog {
    let optional = |id: Option<uuid::Uuid>| id.map(|id| id.to_string()).unwrap_or_default();
    let details = match serde_json::from_str(&entry.details) {
        Ok(serde_json::Value::Object(object)) => object,
        _ => serde_json::Map::new(),
    };
    AuditLog {
        id: entry.id.to_string(),
        sequence: entry.sequence,
        occurred_at: Some(timestamp(entry.occurred_at)),
        outcome: match Outcome::parse(&entry.outcome) {
            Some(Outcome::Success) => AuditOutcome::Success,
            Some(Outcome::Failure) => AuditOutcome::Failure,
            None => AuditOutcome::Unspecified,
        }
        .into(),
        action: entry.action,
        actor: Some(AuditActor {
            r#type: entry.actor.kind().to_owned(),
            user_id: optional(entry.actor.user_id()),
            api_key_id: optional(entry.actor.api_key_id()),
        }),
        ip_address: entry.client.ip_address.unwrap_or_default(),
        user_agent: entry.client.user_agent.unwrap_or_default(),
        organization_id: optional(entry.organization_id),
        target_type: entry.target_type,
        target_id: entry.target_id,
        details: Some(json_to_struct(details)),
        previous_hash: hex(&entry.previous_hash),
        hash: hex(&entry.hash),
    }
}

fn entries(page: Page<AuditEntry>) -> (Vec<AuditLog>, String) {
    (
        page.items.into_iter().map(to_proto).collect(),
        page.next_page_token,
    )
}

impl AuditLogApi {
    /// A page of the listing `list`: its entries as the protos carry them, and the next token.
    async fn page(
        &self,
        list: &str,
        query: AuditQuery,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Vec<AuditLog>, String), Status> {
        Ok(entries(
            self.audit.list(list, query, page_size, page_token).await?,
        ))
    }
}

fn outcome(outcome: AuditOutcome) -> Option<Outcome> {
    match outcome {
        AuditOutcome::Unspecified => None,
        AuditOutcome::Success => Some(Outcome::Success),
        AuditOutcome::Failure => Some(Outcome::Failure),
    }
}

fn text(value: String) -> Option<String> {
    Some(value).filter(|value| !value.is_empty())
}

fn optional_id(field: &str, raw: &str) -> Result<Option<uuid::Uuid>, Status> {
    (!raw.is_empty()).then(|| id(field, raw)).transpose()
}

fn actions(kinds: &[EventKind]) -> Vec<String> {
    kinds.iter().map(|kind| kind.name().to_owned()).collect()
}

#[tonic::async_trait]
impl AuditLogRpc for AuditLogApi {
    async fn list_audit_logs(
        &self,
        request: Request<ListAuditLogsRequest>,
    ) -> Result<Response<ListAuditLogsResponse>, Status> {
        let body = request.into_inner();
        let query = AuditQuery {
            organization_id: optional_id("organization_id", &body.organization_id)?,
            actor_user_id: optional_id("actor_user_id", &body.actor_user_id)?,
            actions: text(body.action.clone()).into_iter().collect(),
            outcome: outcome(body.outcome()),
            target_type: text(body.target_type),
            target_id: text(body.target_id),
            occurred_after: time("occurred_after", body.occurred_after)?,
            occurred_before: time("occurred_before", body.occurred_before)?,
            ..AuditQuery::default()
        };
        let (audit_logs, next_page_token) = self
            .page("audit", query, body.page_size, &body.page_token)
            .await?;
        Ok(Response::new(ListAuditLogsResponse {
            audit_logs,
            next_page_token,
        }))
    }

    async fn list_organization_audit_logs(
        &self,
        request: Request<ListOrganizationAuditLogsRequest>,
    ) -> Result<Response<ListOrganizationAuditLogsResponse>, Status> {
        let organization_id = access(&request)?.organization_id;
        let body = request.into_inner();
        let query = AuditQuery {
            organization_id: Some(organization_id),
            actor_user_id: optional_id("actor_user_id", &body.actor_user_id)?,
            actions: text(body.action.clone()).into_iter().collect(),
            outcome: outcome(body.outcome()),
            target_type: text(body.target_type),
            target_id: text(body.target_id),
            occurred_after: time("occurred_after", body.occurred_after)?,
            occurred_before: time("occurred_before", body.occurred_before)?,
            ..AuditQuery::default()
        };
        let list = format!("audit:organization:{organization_id}");
        let (audit_logs, next_page_token) = self
            .page(&list, query, body.page_size, &body.page_token)
            .await?;
        Ok(Response::new(ListOrganizationAuditLogsResponse {
            audit_logs,
            next_page_token,
        }))
    }

    async fn list_my_audit_logs(
        &self,
        request: Request<ListMyAuditLogsRequest>,
    ) -> Result<Response<ListMyAuditLogsResponse>, Status> {
        let caller = principal(&request)?;
        let body = request.into_inner();
        let page = self
            .audit
            .list_mine(&caller, &[], body.page_size, &body.page_token)
            .await?;
        let (audit_logs, next_page_token) = entries(page);
        Ok(Response::new(ListMyAuditLogsResponse {
            audit_logs,
            next_page_token,
        }))
    }

    async fn list_my_login_history(
        &self,
        request: Request<ListMyLoginHistoryRequest>,
    ) -> Result<Response<ListMyLoginHistoryResponse>, Status> {
        let caller = principal(&request)?;
        let body = request.into_inner();
        let page = self
            .audit
            .list_mine(&caller, &LOGIN_ACTIONS, body.page_size, &body.page_token)
            .await?;
        let (audit_logs, next_page_token) = entries(page);
        Ok(Response::new(ListMyLoginHistoryResponse {
            audit_logs,
            next_page_token,
        }))
    }

    async fn list_resource_audit_logs(
        &self,
        request: Request<ListResourceAuditLogsRequest>,
    ) -> Result<Response<ListResourceAuditLogsResponse>, Status> {
        let body = request.into_inner();
        let list = format!("audit:resource:{}:{}", body.resource_type, body.resource_id);
        let query = AuditQuery {
            target_type: Some(body.resource_type),
            target_id: Some(body.resource_id),
            ..AuditQuery::default()
        };
        let (audit_logs, next_page_token) = self
            .page(&list, query, body.page_size, &body.page_token)
            .await?;
        Ok(Response::new(ListResourceAuditLogsResponse {
            audit_logs,
            next_page_token,
        }))
    }

    async fn search_audit_logs(
        &self,
        request: Request<SearchAuditLogsRequest>,
    ) -> Result<Response<SearchAuditLogsResponse>, Status> {
        let body = request.into_inner();
        let list = format!("audit:search:{}", body.query);
        let query = AuditQuery {
            text: Some(body.query),
            occurred_after: time("occurred_after", body.occurred_after)?,
            occurred_before: time("occurred_before", body.occurred_before)?,
            ..AuditQuery::default()
        };
        let (audit_logs, next_page_token) = self
            .page(&list, query, body.page_size, &body.page_token)
            .await?;
        Ok(Response::new(SearchAuditLogsResponse {
            audit_logs,
            next_page_token,
        }))
    }

    async fn get_audit_log_statistics(
        &self,
        request: Request<GetAuditLogStatisticsRequest>,
    ) -> Result<Response<GetAuditLogStatisticsResponse>, Status> {
        let body = request.into_inner();
        let query = AuditQuery {
            organization_id: optional_id("organization_id", &body.organization_id)?,
            occurred_after: time("occurred_after", body.occurred_after)?,
            occurred_before: time("occurred_before", body.occurred_before)?,
            ..AuditQuery::default()
        };
        let statistics = self.audit.statistics(&query).await?;
        let counts = |counts: std::collections::BTreeMap<String, u64>| {
            counts
                .into_iter()
                .map(|(key, count)| (key, i64::try_from(count).unwrap_or(i64::MAX)))
                .collect()
        };
        Ok(Response::new(GetAuditLogStatisticsResponse {
            total: i64::try_from(statistics.total).unwrap_or(i64::MAX),
            by_action: counts(statistics.by_action),
            by_outcome: counts(statistics.by_outcome),
        }))
    }

    async fn list_failed_logins(
        &self,
        request: Request<ListFailedLoginsRequest>,
    ) -> Result<Response<ListFailedLoginsResponse>, Status> {
        let body = request.into_inner();
        let user_id = id("user_id", &body.user_id)?;
        let query = AuditQuery {
            target_type: Some("user".to_owned()),
            target_id: Some(user_id.to_string()),
            actions: actions(&[EventKind::UserLoginFailed, EventKind::UserLockedOut]),
            ..AuditQuery::default()
        };
        let list = format!("audit:failed-logins:{user_id}");
        let (audit_logs, next_page_token) = self
            .page(&list, query, body.page_size, &body.page_token)
            .await?;
        Ok(Response::new(ListFailedLoginsResponse {
            audit_logs,
            next_page_token,
        }))
    }

    async fn get_audit_log(
        &self,
        request: Request<GetAuditLogRequest>,
    ) -> Result<Response<GetAuditLogResponse>, Status> {
        let entry = self
            .audit
            .get(id("audit_log_id", &request.get_ref().audit_log_id)?)
            .await?;
        Ok(Response::new(GetAuditLogResponse {
            audit_log: Some(to_proto(entry)),
        }))
    }
}
