//! `keel.admin.v1.AdminService`.

use super::timestamp;
use crate::api::pb::keel::admin::v1::admin_service_server::AdminService;
use crate::api::pb::keel::admin::v1::*;
use crate::domain::mail::Outbox;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct AdminApi {
    /// The development outbox; none when mail goes out over SMTP.
    outbox: Option<Arc<dyn Outbox>>,
}

impl AdminApi {
    pub fn new(outbox: Option<Arc<dyn Outbox>>) -> Self {
        Self { outbox }
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
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
