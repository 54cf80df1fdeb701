//! `keel.job.v1.JobService`.

use super::{count_i32, timestamp};
use crate::api::pb::keel::job::v1::job_service_server::JobService as JobRpc;
use crate::api::pb::keel::job::v1::*;
use crate::domain::jobs::JobMonitorService;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct JobApi {
    jobs: Arc<JobMonitorService>,
}

impl JobApi {
    pub fn new(jobs: Arc<JobMonitorService>) -> Self {
        Self { jobs }
    }
}

fn filter(value: &str) -> Option<&str> {
    Some(value).filter(|value| !value.is_empty())
}

#[tonic::async_trait]
impl JobRpc for JobApi {
    async fn get_job_statistics(
        &self,
        _request: Request<GetJobStatisticsRequest>,
    ) -> Result<Response<GetJobStatisticsResponse>, Status> {
        let counts = self
            .jobs
            .counts()
            .await?
            .into_iter()
            .map(|(queue, status, count)| JobCount {
                queue,
                status,
                count: i64::try_from(count).unwrap_or(i64::MAX),
            })
            .collect();
        Ok(Response::new(GetJobStatisticsResponse { counts }))
    }

    async fn list_jobs(
        &self,
        request: Request<ListJobsRequest>,
    ) -> Result<Response<ListJobsResponse>, Status> {
        let body = request.get_ref();
        let page = self
            .jobs
            .list(
                filter(&body.queue),
                filter(&body.status),
                body.page_size,
                &body.page_token,
            )
            .await?;
        Ok(Response::new(ListJobsResponse {
            jobs: page
                .items
                .into_iter()
                .map(|job| Job {
                    id: job.id.to_string(),
                    queue: job.queue,
                    status: job.status,
                    attempts: count_i32(job.attempts),
                    max_attempts: count_i32(job.max_attempts),
                    run_at: Some(timestamp(job.run_at)),
                    done_at: job.done_at.map(timestamp),
                    last_result: job.last_result.unwrap_or_default(),
                })
                .collect(),
            next_page_token: page.next_page_token,
        }))
    }
}
