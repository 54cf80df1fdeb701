//! `keel.admin.v1.AdminService`.

use super::{count_i32, timestamp};
use crate::api::pb::keel::admin::v1::admin_service_server::AdminService;
use crate::api::pb::keel::admin::v1::*;
use crate::domain::dependencies::DependencyService;
use crate::domain::mail::Outbox;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct AdminApi {
    /// The development outbox; none when mail goes out over SMTP.
    outbox: Option<Arc<dyn Outbox>>,
    dependencies: Arc<DependencyService>,
}

impl AdminApi {
    pub fn new(outbox: Option<Arc<dyn Outbox>>, dependencies: Arc<DependencyService>) -> Self {
        Self {
            outbox,
            dependencies,
        }
    }

    async fn dependencies(&self) -> Result<(Vec<Dependency>, i32), Status> {
        let statuses = self.dependencies.list().await?;
        let outdated = statuses.iter().filter(|status| status.outdated).count();
        let dependencies = statuses
            .into_iter()
            .map(|status| Dependency {
                name: status.name,
                current_version: status.current,
                latest_version: status.newest.unwrap_or_default(),
                outdated: status.outdated,
                checked_at: status.checked_at.map(timestamp),
            })
            .collect();
        Ok((dependencies, count_i32(outdated)))
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    async fn list_dependencies(
        &self,
        _request: Request<ListDependenciesRequest>,
    ) -> Result<Response<ListDependenciesResponse>, Status> {
        let (dependencies, outdated_count) = self.dependencies().await?;
        Ok(Response::new(ListDependenciesResponse {
            dependencies,
            outdated_count,
        }))
    }

    async fn check_dependencies(
        &self,
        _request: Request<CheckDependenciesRequest>,
    ) -> Result<Response<CheckDependenciesResponse>, Status> {
        self.dependencies.check().await?;
        let (dependencies, outdated_count) = self.dependencies().await?;
        Ok(Response::new(CheckDependenciesResponse {
            dependencies,
            outdated_count,
        }))
    }

    async fn list_outbox_messages(
        &self,
        _request: Request<ListOutboxMessagesRequest>,
    ) -> Result<Response<ListOutboxMessagesResponse>, Status> {
        let Some(outbox) = &self.outbox else {
            return Ok(Response::new(ListOutboxMessagesResponse {
                messages: Vec::new(),
                delivery: "smtp".to_owned(),
            }));
        };
        Ok(Response::new(ListOutboxMessagesResponse {
            messages: outbox
                .recent()
                .into_iter()
                .map(|kept| OutboxMessage {
                    to: kept.mail.to,
                    subject: kept.mail.subject,
                    text: kept.mail.text,
                    html: kept.mail.html,
                    created_at: Some(timestamp(kept.created_at)),
                })
                .collect(),
            delivery: "outbox".to_owned(),
        }))
    }
}
