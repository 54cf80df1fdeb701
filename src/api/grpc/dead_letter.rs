//! `keel.job.v1.DeadLetterService`.

use super::{count_i32, id, principal, time, timestamp};
use crate::api::pb::keel::job::v1::dead_letter_service_server::DeadLetterService as DeadLetterRpc;
use crate::api::pb::keel::job::v1::*;
use crate::domain::jobs::{self, DeadLetterQuery, DeadLetterService};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct DeadLetterApi {
    dead_letters: Arc<DeadLetterService>,
}

impl DeadLetterApi {
    pub fn new(dead_letters: Arc<DeadLetterService>) -> Self {
        Self { dead_letters }
    }
}

fn status_to_proto(status: jobs::DeadLetterStatus) -> DeadLetterStatus {
    match status {
        jobs::DeadLetterStatus::Pending => DeadLetterStatus::Pending,
        jobs::DeadLetterStatus::Retried => DeadLetterStatus::Retried,
        jobs::DeadLetterStatus::Resolved => DeadLetterStatus::Resolved,
        jobs::DeadLetterStatus::Ignored => DeadLetterStatus::Ignored,
    }
}

fn status_from_proto(status: DeadLetterStatus) -> Option<jobs::DeadLetterStatus> {
    match status {
        DeadLetterStatus::Unspecified => None,
        DeadLetterStatus::Pending => Some(jobs::DeadLetterStatus::Pending),
        DeadLetterStatus::Retried => Some(jobs::DeadLetterStatus::Retried),
        DeadLetterStatus::Resolved => Some(jobs::DeadLetterStatus::Resolved),
        DeadLetterStatus::Ignored => Some(jobs::DeadLetterStatus::Ignored),
    }
}

fn to_proto(dead_letter: jobs::DeadLetter) -> DeadLetter {
    DeadLetter {
        payload: dead_letter.payload_shown(),
        task_id: dead_letter.id.to_string(),
        job_type: dead_letter.job_type,
        error: dead_letter.error,
        attempts: count_i32(dead_letter.attempts),
        failed_at: Some(timestamp(dead_letter.failed_at)),
        status: status_to_proto(dead_letter.status).into(),
        notes: dead_letter.notes,
        handled_by: dead_letter
            .handled_by
            .map(|user| user.to_string())
            .unwrap_or_default(),
        handled_at: dead_letter.handled_at.map(timestamp),
        retry_task_id: dead_letter
            .retry_id
            .map(|retry| retry.to_string())
            .unwrap_or_default(),
        retry_outcome: match dead_letter.retry_succeeded {
            None => RetryOutcome::Unspecified,
            Some(true) => RetryOutcome::Succeeded,
            Some(false) => RetryOutcome::Failed,
        }
        .into(),
    }
}

fn counts<K: ToString>(
    counts: impl IntoIterator<Item = (K, u64)>,
) -> std::collections::HashMap<String, i64> {
    counts
        .into_iter()
        .map(|(key, count)| (key.to_string(), i64::try_from(count).unwrap_or(i64::MAX)))
        .collect()
}

#[tonic::async_trait]
impl DeadLetterRpc for DeadLetterApi {
    async fn get_dead_letter_statistics(
        &self,
        _request: Request<GetDeadLetterStatisticsRequest>,
    ) -> Result<Response<GetDeadLetterStatisticsResponse>, Status> {
        let statistics = self.dead_letters.statistics().await?;
        Ok(Response::new(GetDeadLetterStatisticsResponse {
            total: i64::try_from(statistics.total).unwrap_or(i64::MAX),
            by_status: counts(
                statistics
                    .by_status
                    .into_iter()
                    .map(|(status, count)| (status.as_str(), count)),
            ),
            by_job_type: counts(statistics.by_job_type),
        }))
    }

    async fn list_dead_letters(
        &self,
        request: Request<ListDeadLettersRequest>,
    ) -> Result<Response<ListDeadLettersResponse>, Status> {
        let body = request.into_inner();
        let query = DeadLetterQuery {
            status: status_from_proto(body.status()),
            job_type: Some(body.job_type).filter(|job_type| !job_type.is_empty()),
            failed_after: time("failed_after", body.failed_after)?,
            failed_before: time("failed_before", body.failed_before)?,
        };
        let page = self
            .dead_letters
            .list(&query, body.page_size, &body.page_token)
            .await?;
        Ok(Response::new(ListDeadLettersResponse {
            dead_letters: page.items.into_iter().map(to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn get_dead_letter(
        &self,
        request: Request<GetDeadLetterRequest>,
    ) -> Result<Response<GetDeadLetterResponse>, Status> {
        let dead_letter = self
            .dead_letters
            .get(id("task_id", &request.get_ref().task_id)?)
            .await?;
        Ok(Response::new(GetDeadLetterResponse {
            dead_letter: Some(to_proto(dead_letter)),
        }))
    }

    async fn retry_dead_letter(
        &self,
        request: Request<RetryDeadLetterRequest>,
    ) -> Result<Response<RetryDeadLetterResponse>, Status> {
        let dead_letter = self
            .dead_letters
            .retry(
                &principal(&request)?,
                id("task_id", &request.get_ref().task_id)?,
            )
            .await?;
        Ok(Response::new(RetryDeadLetterResponse {
            dead_letter: Some(to_proto(dead_letter)),
        }))
    }

    async fn resolve_dead_letter(
        &self,
        request: Request<ResolveDeadLetterRequest>,
    ) -> Result<Response<ResolveDeadLetterResponse>, Status> {
        let body = request.get_ref();
        let dead_letter = self
            .dead_letters
            .resolve(
                &principal(&request)?,
                id("task_id", &body.task_id)?,
                &body.notes,
            )
            .await?;
        Ok(Response::new(ResolveDeadLetterResponse {
            dead_letter: Some(to_proto(dead_letter)),
        }))
    }

    async fn ignore_dead_letter(
        &self,
        request: Request<IgnoreDeadLetterRequest>,
    ) -> Result<Response<IgnoreDeadLetterResponse>, Status> {
        let body = request.get_ref();
        let dead_letter = self
            .dead_letters
            .ignore(
                &principal(&request)?,
                id("task_id", &body.task_id)?,
                &body.notes,
            )
            .await?;
        Ok(Response::new(IgnoreDeadLetterResponse {
            dead_letter: Some(to_proto(dead_letter)),
        }))
    }
}
