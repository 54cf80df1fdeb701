//! `keel.apikey.v1.ApiKeyService`.

use super::{id, principal, timestamp};
use crate::api::pb::keel::apikey::v1::api_key_service_server::ApiKeyService;
use crate::api::pb::keel::apikey::v1::*;
use crate::domain::apikey;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct ApiKeyApi {
    api_keys: Arc<apikey::ApiKeyService>,
}

impl ApiKeyApi {
    pub fn new(api_keys: Arc<apikey::ApiKeyService>) -> Self {
        Self { api_keys }
    }
}

fn api_key_to_proto(key: apikey::ApiKey) -> ApiKey {
    ApiKey {
        id: key.id.to_string(),
        name: key.name,
        prefix: key.prefix,
        scopes: key.scopes,
        user_id: key.user_id.to_string(),
        created_at: Some(timestamp(key.created_at)),
        last_used_at: key.last_used_at.map(timestamp),
        expires_at: key.expires_at.map(timestamp),
        organization_id: key
            .organization_id
            .map(|id| id.to_string())
            .unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl ApiKeyService for ApiKeyApi {
    async fn create_api_key(
        &self,
        request: Request<CreateApiKeyRequest>,
    ) -> Result<Response<CreateApiKeyResponse>, Status> {
        let owner = principal(&request)?;
        let body = request.into_inner();
        let (key, secret) = self
            .api_keys
            .create(
                &owner,
                &body.name,
                body.expires_in_days,
                body.scopes,
                body.organization_id
                    .as_deref()
                    .map(|raw| id("organization_id", raw))
                    .transpose()?,
            )
            .await?;
        Ok(Response::new(CreateApiKeyResponse {
            api_key: Some(api_key_to_proto(key)),
            key: secret,
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<ListApiKeysRequest>,
    ) -> Result<Response<ListApiKeysResponse>, Status> {
        let keys = self.api_keys.list(&principal(&request)?).await?;
        Ok(Response::new(ListApiKeysResponse {
            api_keys: keys.into_iter().map(api_key_to_proto).collect(),
        }))
    }

    async fn get_api_key(
        &self,
        request: Request<GetApiKeyRequest>,
    ) -> Result<Response<GetApiKeyResponse>, Status> {
        let key = self
            .api_keys
            .get(
                &principal(&request)?,
                id("api_key_id", &request.get_ref().api_key_id)?,
            )
            .await?;
        Ok(Response::new(GetApiKeyResponse {
            api_key: Some(api_key_to_proto(key)),
        }))
    }

    async fn revoke_api_key(
        &self,
        request: Request<RevokeApiKeyRequest>,
    ) -> Result<Response<RevokeApiKeyResponse>, Status> {
        self.api_keys
            .revoke(
                &principal(&request)?,
                id("api_key_id", &request.get_ref().api_key_id)?,
            )
            .await?;
        Ok(Response::new(RevokeApiKeyResponse {}))
    }
}
