//! `keel.webhook.v1.WebhookService`.

use super::json_to_struct;
use crate::api::pb::keel::webhook::v1::webhook_service_server::WebhookService as WebhookRpc;
use crate::api::pb::keel::webhook::v1::*;
use crate::domain::events::{DATA_VERSION, EventKind};
use tonic::{Request, Response, Status};

#[derive(Default)]
pub struct WebhookApi;

#[tonic::async_trait]
impl WebhookRpc for WebhookApi {
    async fn list_webhook_event_types(
        &self,
        _request: Request<ListWebhookEventTypesRequest>,
    ) -> Result<Response<ListWebhookEventTypesResponse>, Status> {
        let event_types = EventKind::ALL
            .iter()
            .map(|kind| EventType {
                name: kind.name().to_owned(),
                description: kind.description().to_owned(),
                version: i32::try_from(DATA_VERSION).unwrap_or(i32::MAX),
                data_schema: Some(json_to_struct(match kind.data_schema() {
                    serde_json::Value::Object(schema) => schema,
                    _ => serde_json::Map::new(),
                })),
            })
            .collect();
        Ok(Response::new(ListWebhookEventTypesResponse { event_types }))
    }
}
