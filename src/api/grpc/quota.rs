//! `keel.quota.v1.QuotaService`.

use super::{access, id, timestamp};
use crate::api::pb::keel::quota::v1::quota_service_server::QuotaService;
use crate::api::pb::keel::quota::v1::*;
use crate::domain::tenancy::quotas::{self, LimitChanges};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct QuotaApi {
    quotas: Arc<quotas::QuotaService>,
}

impl QuotaApi {
    pub fn new(quotas: Arc<quotas::QuotaService>) -> Self {
        Self { quotas }
    }
}

fn limits_to_proto(limits: quotas::QuotaLimits) -> QuotaLimits {
    QuotaLimits {
        max_users: limits.max_users,
        max_storage_bytes: limits.max_storage_bytes,
        max_api_calls_per_month: limits.max_api_calls_per_month,
        max_file_uploads_per_day: limits.max_file_uploads_per_day,
        max_file_size_bytes: limits.max_file_size_bytes,
        max_llm_tokens_per_month: limits.max_llm_tokens_per_month,
    }
}

#[tonic::async_trait]
impl QuotaService for QuotaApi {
    async fn get_quota_status(
        &self,
        request: Request<GetQuotaStatusRequest>,
    ) -> Result<Response<GetQuotaStatusResponse>, Status> {
        let access = access(&request)?;
        let status = self.quotas.status(&access).await?;
        Ok(Response::new(GetQuotaStatusResponse {
            organization_id: access.organization_id.to_string(),
            limits: Some(limits_to_proto(status.limits)),
            usage: status
                .usage
                .into_iter()
                .map(|usage| QuotaUsage {
                    metric: usage.metric.to_owned(),
                    used: usage.used,
                    limit: usage.limit,
                    percent: usage.percent(),
                    resets_at: usage.resets_at.map(timestamp),
                })
                .collect(),
        }))
    }

    async fn update_quota_limits(
        &self,
        request: Request<UpdateQuotaLimitsRequest>,
    ) -> Result<Response<UpdateQuotaLimitsResponse>, Status> {
        let body = request.into_inner();
        let changes = LimitChanges {
            max_users: body.max_users,
            max_storage_bytes: body.max_storage_bytes,
            max_api_calls_per_month: body.max_api_calls_per_month,
            max_file_uploads_per_day: body.max_file_uploads_per_day,
            max_file_size_bytes: body.max_file_size_bytes,
            max_llm_tokens_per_month: body.max_llm_tokens_per_month,
        };
        let limits = self
            .quotas
            .update_limits(id("organization_id", &body.organization_id)?, changes)
            .await?;
        Ok(Response::new(UpdateQuotaLimitsResponse {
            limits: Some(limits_to_proto(limits)),
        }))
    }

    async fn list_usage_logs(
        &self,
        request: Request<ListUsageLogsRequest>,
    ) -> Result<Response<ListUsageLogsResponse>, Status> {
        let body = request.get_ref();
        let page = self
            .quotas
            .usage_logs(&access(&request)?, body.page_size, &body.page_token)
            .await?;
        Ok(Response::new(ListUsageLogsResponse {
            usage_logs: page
                .items
                .into_iter()
                .map(|log| UsageLog {
                    metric: log.metric,
                    period_start: Some(timestamp(log.window_start)),
                    period_end: Some(timestamp(log.window_end)),
                    count: log.count,
                    recorded_at: Some(timestamp(log.recorded_at)),
                })
                .collect(),
            next_page_token: page.next_page_token,
        }))
    }
}
