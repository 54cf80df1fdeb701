//! `keel.integration.v1.IntegrationService`.

use super::{access, client_info, id, timestamp};
use crate::api::pb::keel::integration::v1::integration_service_server::IntegrationService as IntegrationRpc;
use crate::api::pb::keel::integration::v1::*;
use crate::domain::integrations::{
    self, Addressed, Inbound, IntegrationChanges, IntegrationService,
};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct IntegrationApi {
    integrations: Arc<IntegrationService>,
}

impl IntegrationApi {
    pub fn new(integrations: Arc<IntegrationService>) -> Self {
        Self { integrations }
    }
}

fn integration_to_proto(integration: integrations::Integration) -> Integration {
    Integration {
        id: integration.id.to_string(),
        organization_id: integration.organization_id.to_string(),
        name: integration.name,
        integration_type: integration.integration_type,
        description: integration.description,
        is_active: integration.is_active,
        last_event_at: integration.last_event_at.map(timestamp),
        created_at: Some(timestamp(integration.created_at)),
        updated_at: Some(timestamp(integration.updated_at)),
    }
}

fn message_to_proto(message: integrations::ReceivedMessage) -> IntegrationEvent {
    IntegrationEvent {
        id: message.id.to_string(),
        integration_id: message.integration_id.to_string(),
        message_id: message.message_id,
        content_type: message.content_type,
        payload: message.payload,
        authenticated_by: message.authenticated_by.as_str().to_owned(),
        received_at: Some(timestamp(message.received_at)),
    }
}

#[tonic::async_trait]
impl IntegrationRpc for IntegrationApi {
    async fn create_integration(
        &self,
        request: Request<CreateIntegrationRequest>,
    ) -> Result<Response<CreateIntegrationResponse>, Status> {
        let access = access(&request)?;
        let body = request.into_inner();
        let (integration, secret) = self
            .integrations
            .create(
                &access,
                &body.name,
                &body.integration_type,
                &body.description,
            )
            .await?;
        Ok(Response::new(CreateIntegrationResponse {
            integration: Some(integration_to_proto(integration)),
            secret,
        }))
    }

    async fn list_integrations(
        &self,
        request: Request<ListIntegrationsRequest>,
    ) -> Result<Response<ListIntegrationsResponse>, Status> {
        let access = access(&request)?;
        let body = request.get_ref();
        let page = self
            .integrations
            .list(&access, body.page_size, &body.page_token)
            .await?;
        Ok(Response::new(ListIntegrationsResponse {
            integrations: page.items.into_iter().map(integration_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn get_integration(
        &self,
        request: Request<GetIntegrationRequest>,
    ) -> Result<Response<GetIntegrationResponse>, Status> {
        let access = access(&request)?;
        let integration = self
            .integrations
            .get(
                &access,
                id("integration_id", &request.get_ref().integration_id)?,
            )
            .await?;
        Ok(Response::new(GetIntegrationResponse {
            integration: Some(integration_to_proto(integration)),
        }))
    }

    async fn update_integration(
        &self,
        request: Request<UpdateIntegrationRequest>,
    ) -> Result<Response<UpdateIntegrationResponse>, Status> {
        let access = access(&request)?;
        let body = request.into_inner();
        let changes = IntegrationChanges {
            name: body.name.as_deref(),
            description: body.description.as_deref(),
            is_active: body.is_active,
        };
        let integration = self
            .integrations
            .update(
                &access,
                id("integration_id", &body.integration_id)?,
                changes,
            )
            .await?;
        Ok(Response::new(UpdateIntegrationResponse {
            integration: Some(integration_to_proto(integration)),
        }))
    }

    async fn delete_integration(
        &self,
        request: Request<DeleteIntegrationRequest>,
    ) -> Result<Response<DeleteIntegrationResponse>, Status> {
        let access = access(&request)?;
        self.integrations
            .delete(
                &access,
                id("integration_id", &request.get_ref().integration_id)?,
            )
            .await?;
        Ok(Response::new(DeleteIntegrationResponse {}))
    }

    async fn regenerate_integration_secret(
        &self,
        request: Request<RegenerateIntegrationSecretRequest>,
    ) -> Result<Response<RegenerateIntegrationSecretResponse>, Status> {
        let access = access(&request)?;
        let (integration, secret) = self
            .integrations
            .regenerate_secret(
                &access,
                id("integration_id", &request.get_ref().integration_id)?,
            )
            .await?;
        Ok(Response::new(RegenerateIntegrationSecretResponse {
            integration: Some(integration_to_proto(integration)),
            secret,
        }))
    }

    async fn list_integration_events(
        &self,
        request: Request<ListIntegrationEventsRequest>,
    ) -> Result<Response<ListIntegrationEventsResponse>, Status> {
        let access = access(&request)?;
        let body = request.get_ref();
        let page = self
            .integrations
            .list_messages(
                &access,
                id("integration_id", &body.integration_id)?,
                body.page_size,
                &body.page_token,
            )
            .await?;
        Ok(Response::new(ListIntegrationEventsResponse {
            events: page.items.into_iter().map(message_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn receive_integration_event(
        &self,
        request: Request<ReceiveIntegrationEventRequest>,
    ) -> Result<Response<ReceiveIntegrationEventResponse>, Status> {
        let client = client_info(&request);
        let body = request.into_inner();
        let addressed = match (body.integration_id.as_str(), body.integration_type.as_str()) {
            ("", "") => {
                return Err(crate::domain::Error::invalid_argument(
                    "INTEGRATION_REQUIRED",
                    "name the integration: integration_id, or integration_type with its key",
                )
                .into());
            }
            ("", integration_type) => Addressed::Type(integration_type),
            (raw, _) => Addressed::Id(id("integration_id", raw)?),
        };
        let (message, duplicate) = self
            .integrations
            .receive(
                Inbound {
                    addressed,
                    payload: &body.payload,
                    content_type: &body.content_type,
                    key: &body.key,
                    webhook_id: &body.webhook_id,
                    webhook_timestamp: body.webhook_timestamp,
                    webhook_signature: &body.webhook_signature,
                },
                &client,
            )
            .await?;
        Ok(Response::new(ReceiveIntegrationEventResponse {
            event: Some(message_to_proto(message)),
            duplicate,
        }))
    }
}
