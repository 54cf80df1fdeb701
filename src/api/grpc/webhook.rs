//! `keel.webhook.v1.WebhookService`.

use super::{access, count_i32, id, json_to_struct, time, timestamp};
use crate::api::pb::keel::webhook::v1::webhook_service_server::WebhookService as WebhookRpc;
use crate::api::pb::keel::webhook::v1::*;
use crate::domain::events::{DATA_VERSION, EventKind};
use crate::domain::webhooks::{self, WebhookChanges, WebhookService};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct WebhookApi {
    webhooks: Arc<WebhookService>,
}

impl WebhookApi {
    pub fn new(webhooks: Arc<WebhookService>) -> Self {
        Self { webhooks }
    }
}

fn webhook_to_proto(webhook: webhooks::Webhook) -> Webhook {
    Webhook {
        id: webhook.id.to_string(),
        organization_id: webhook.organization_id.to_string(),
        url: webhook.url,
        description: webhook.description,
        events: webhook.event_types,
        is_active: webhook.is_active,
        rate_limit_per_second: count_i32(webhook.rate_limit_per_second),
        consecutive_failures: count_i32(webhook.consecutive_failures),
        disabled_reason: webhook.disabled_reason.unwrap_or_default(),
        created_at: Some(timestamp(webhook.created_at)),
        updated_at: Some(timestamp(webhook.updated_at)),
    }
}

fn delivery_to_proto(delivery: webhooks::Delivery) -> WebhookDelivery {
    WebhookDelivery {
        id: delivery.id.to_string(),
        webhook_id: delivery.webhook_id.to_string(),
        event_id: delivery.event_id.to_string(),
        event_type: delivery.event_type,
        payload: delivery.payload,
        status: match delivery.status {
            webhooks::DeliveryStatus::Pending => DeliveryStatus::Pending,
            webhooks::DeliveryStatus::Succeeded => DeliveryStatus::Succeeded,
            webhooks::DeliveryStatus::Failed => DeliveryStatus::Failed,
        }
        .into(),
        attempts: count_i32(delivery.attempts),
        response_status_code: delivery.response_status.map(i32::from).unwrap_or_default(),
        response_excerpt: delivery.response_excerpt.unwrap_or_default(),
        latency_ms: delivery.latency_ms.map(count_i32).unwrap_or_default(),
        error: delivery.error.unwrap_or_default(),
        next_attempt_at: delivery.next_attempt_at.map(timestamp),
        created_at: Some(timestamp(delivery.created_at)),
        last_attempt_at: delivery.last_attempt_at.map(timestamp),
    }
}

fn attempt_to_proto(attempt: webhooks::DeliveryAttempt) -> WebhookDeliveryAttempt {
    WebhookDeliveryAttempt {
        attempt: count_i32(attempt.attempt),
        attempted_at: Some(timestamp(attempt.attempted_at)),
        response_status_code: attempt.response_status.map(i32::from).unwrap_or_default(),
        response_excerpt: attempt.response_excerpt.unwrap_or_default(),
        latency_ms: attempt.latency_ms.map(count_i32).unwrap_or_default(),
        error: attempt.error.unwrap_or_default(),
    }
}

/// A rate the contract bounds to 0..=10000.
fn rate(value: i32) -> u32 {
    u32::try_from(value).unwrap_or_default()
}

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
                version: count_i32(DATA_VERSION),
                data_schema: Some(json_to_struct(match kind.data_schema() {
                    serde_json::Value::Object(schema) => schema,
                    _ => serde_json::Map::new(),
                })),
            })
            .collect();
        Ok(Response::new(ListWebhookEventTypesResponse { event_types }))
    }

    async fn create_webhook(
        &self,
        request: Request<CreateWebhookRequest>,
    ) -> Result<Response<CreateWebhookResponse>, Status> {
        let access = access(&request)?;
        let body = request.into_inner();
        let (webhook, secret) = self
            .webhooks
            .create(
                &access,
                &body.url,
                &body.description,
                &body.events,
                rate(body.rate_limit_per_second),
            )
            .await?;
        Ok(Response::new(CreateWebhookResponse {
            webhook: Some(webhook_to_proto(webhook)),
            secret,
        }))
    }

    async fn list_webhooks(
        &self,
        request: Request<ListWebhooksRequest>,
    ) -> Result<Response<ListWebhooksResponse>, Status> {
        let access = access(&request)?;
        let body = request.get_ref();
        let page = self
            .webhooks
            .list(&access, body.page_size, &body.page_token)
            .await?;
        Ok(Response::new(ListWebhooksResponse {
            webhooks: page.items.into_iter().map(webhook_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn get_webhook(
        &self,
        request: Request<GetWebhookRequest>,
    ) -> Result<Response<GetWebhookResponse>, Status> {
        let access = access(&request)?;
        let webhook = self
            .webhooks
            .get(&access, id("webhook_id", &request.get_ref().webhook_id)?)
            .await?;
        Ok(Response::new(GetWebhookResponse {
            webhook: Some(webhook_to_proto(webhook)),
        }))
    }

    async fn update_webhook(
        &self,
        request: Request<UpdateWebhookRequest>,
    ) -> Result<Response<UpdateWebhookResponse>, Status> {
        let access = access(&request)?;
        let body = request.into_inner();
        let changes = WebhookChanges {
            url: body.url.as_deref(),
            description: body.description.as_deref(),
            event_types: (!body.events.is_empty()).then_some(body.events.as_slice()),
            is_active: body.is_active,
            rate_limit_per_second: body.rate_limit_per_second.map(rate),
        };
        let webhook = self
            .webhooks
            .update(&access, id("webhook_id", &body.webhook_id)?, changes)
            .await?;
        Ok(Response::new(UpdateWebhookResponse {
            webhook: Some(webhook_to_proto(webhook)),
        }))
    }

    async fn delete_webhook(
        &self,
        request: Request<DeleteWebhookRequest>,
    ) -> Result<Response<DeleteWebhookResponse>, Status> {
        let access = access(&request)?;
        self.webhooks
            .delete(&access, id("webhook_id", &request.get_ref().webhook_id)?)
            .await?;
        Ok(Response::new(DeleteWebhookResponse {}))
    }

    async fn test_webhook(
        &self,
        request: Request<TestWebhookRequest>,
    ) -> Result<Response<TestWebhookResponse>, Status> {
        let access = access(&request)?;
        let delivery = self
            .webhooks
            .send_test(&access, id("webhook_id", &request.get_ref().webhook_id)?)
            .await?;
        Ok(Response::new(TestWebhookResponse {
            delivery: Some(delivery_to_proto(delivery)),
        }))
    }

    async fn list_webhook_deliveries(
        &self,
        request: Request<ListWebhookDeliveriesRequest>,
    ) -> Result<Response<ListWebhookDeliveriesResponse>, Status> {
        let access = access(&request)?;
        let body = request.get_ref();
        let page = self
            .webhooks
            .list_deliveries(
                &access,
                id("webhook_id", &body.webhook_id)?,
                body.page_size,
                &body.page_token,
            )
            .await?;
        Ok(Response::new(ListWebhookDeliveriesResponse {
            deliveries: page.items.into_iter().map(delivery_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn list_webhook_delivery_attempts(
        &self,
        request: Request<ListWebhookDeliveryAttemptsRequest>,
    ) -> Result<Response<ListWebhookDeliveryAttemptsResponse>, Status> {
        let access = access(&request)?;
        let body = request.get_ref();
        let attempts = self
            .webhooks
            .attempts(
                &access,
                id("webhook_id", &body.webhook_id)?,
                id("delivery_id", &body.delivery_id)?,
            )
            .await?;
        Ok(Response::new(ListWebhookDeliveryAttemptsResponse {
            attempts: attempts.into_iter().map(attempt_to_proto).collect(),
        }))
    }

    async fn replay_webhook_delivery(
        &self,
        request: Request<ReplayWebhookDeliveryRequest>,
    ) -> Result<Response<ReplayWebhookDeliveryResponse>, Status> {
        let access = access(&request)?;
        let body = request.get_ref();
        let delivery = self
            .webhooks
            .replay(
                &access,
                id("webhook_id", &body.webhook_id)?,
                id("delivery_id", &body.delivery_id)?,
            )
            .await?;
        Ok(Response::new(ReplayWebhookDeliveryResponse {
            delivery: Some(delivery_to_proto(delivery)),
        }))
    }

    async fn recover_webhook_deliveries(
        &self,
        request: Request<RecoverWebhookDeliveriesRequest>,
    ) -> Result<Response<RecoverWebhookDeliveriesResponse>, Status> {
        let access = access(&request)?;
        let body = request.into_inner();
        let since = time("since", body.since)?.unwrap_or_default();
        let deliveries = self
            .webhooks
            .recover(&access, id("webhook_id", &body.webhook_id)?, since)
            .await?;
        Ok(Response::new(RecoverWebhookDeliveriesResponse {
            deliveries: deliveries.into_iter().map(delivery_to_proto).collect(),
        }))
    }

    async fn rotate_webhook_secret(
        &self,
        request: Request<RotateWebhookSecretRequest>,
    ) -> Result<Response<RotateWebhookSecretResponse>, Status> {
        let access = access(&request)?;
        let (webhook, secret) = self
            .webhooks
            .rotate_secret(&access, id("webhook_id", &request.get_ref().webhook_id)?)
            .await?;
        Ok(Response::new(RotateWebhookSecretResponse {
            webhook: Some(webhook_to_proto(webhook)),
            secret,
        }))
    }
}
