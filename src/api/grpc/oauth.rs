//! `keel.auth.v1.OAuthService`.

use super::{client_info, id, principal, timestamp};
use crate::api::pb::keel::auth::v1::o_auth_service_server::OAuthService;
use crate::api::pb::keel::auth::v1::*;
use crate::domain::auth::{self, ProviderCallback};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct OAuthApi {
    auth: Arc<auth::AuthService>,
}

impl OAuthApi {
    pub fn new(auth: Arc<auth::AuthService>) -> Self {
        Self { auth }
    }
}

fn identity_to_proto(identity: auth::Identity) -> Identity {
    Identity {
        id: identity.id.to_string(),
        provider: identity.provider,
        subject: identity.subject,
        email: identity.email,
        created_at: Some(timestamp(identity.created_at)),
        last_used_at: Some(timestamp(identity.last_used_at)),
    }
}

/// The fields every callback request carries.
macro_rules! callback {
    ($body:expr) => {
        ProviderCallback {
            provider: &$body.provider,
            code: &$body.code,
            state: &$body.state,
            redirect_uri: &$body.redirect_uri,
        }
    };
}

#[tonic::async_trait]
impl OAuthService for OAuthApi {
    async fn list_o_auth_providers(
        &self,
        _request: Request<ListOAuthProvidersRequest>,
    ) -> Result<Response<ListOAuthProvidersResponse>, Status> {
        let providers = self
            .auth
            .oauth_providers()
            .into_iter()
            .map(|(name, protocol)| OAuthProvider {
                name,
                protocol: protocol.to_owned(),
            })
            .collect();
        Ok(Response::new(ListOAuthProvidersResponse { providers }))
    }

    async fn start_o_auth(
        &self,
        request: Request<StartOAuthRequest>,
    ) -> Result<Response<StartOAuthResponse>, Status> {
        let client = client_info(&request);
        let body = request.get_ref();
        let start = self
            .auth
            .start_oauth(&body.provider, &body.redirect_uri, &client)
            .await?;
        Ok(Response::new(StartOAuthResponse {
            authorization_url: start.authorization_url,
            state: start.state,
        }))
    }

    async fn finish_o_auth(
        &self,
        request: Request<FinishOAuthRequest>,
    ) -> Result<Response<FinishOAuthResponse>, Status> {
        let client = client_info(&request);
        let body = request.get_ref();
        let outcome = self.auth.finish_oauth(callback!(body), client).await?;
        Ok(Response::new(login_reply!(FinishOAuthResponse, outcome)))
    }

    async fn list_identities(
        &self,
        request: Request<ListIdentitiesRequest>,
    ) -> Result<Response<ListIdentitiesResponse>, Status> {
        let caller = principal(&request)?;
        let identities = self.auth.list_identities(caller.user.id).await?;
        Ok(Response::new(ListIdentitiesResponse {
            identities: identities.into_iter().map(identity_to_proto).collect(),
        }))
    }

    async fn link_identity(
        &self,
        request: Request<LinkIdentityRequest>,
    ) -> Result<Response<LinkIdentityResponse>, Status> {
        let caller = principal(&request)?;
        let body = request.get_ref();
        let identity = self
            .auth
            .link_identity(caller.user.id, callback!(body), &caller.client)
            .await?;
        Ok(Response::new(LinkIdentityResponse {
            identity: Some(identity_to_proto(identity)),
        }))
    }

    async fn unlink_identity(
        &self,
        request: Request<UnlinkIdentityRequest>,
    ) -> Result<Response<UnlinkIdentityResponse>, Status> {
        let caller = principal(&request)?;
        let identity_id = id("identity_id", &request.get_ref().identity_id)?;
        self.auth
            .unlink_identity(caller.user.id, identity_id, &caller.client)
            .await?;
        Ok(Response::new(UnlinkIdentityResponse {}))
    }
}
