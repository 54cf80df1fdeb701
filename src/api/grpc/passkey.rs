//! `keel.auth.v1.PasskeyService`.

use super::{client_info, id, json_to_struct, principal, struct_to_json, timestamp};
use crate::api::pb::keel::auth::v1::passkey_service_server::PasskeyService;
use crate::api::pb::keel::auth::v1::*;
use crate::domain::auth::{self, PasskeyRecord};
use base64::Engine;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct PasskeyApi {
    auth: Arc<auth::AuthService>,
}

impl PasskeyApi {
    pub fn new(auth: Arc<auth::AuthService>) -> Self {
        Self { auth }
    }
}

fn passkey_to_proto(passkey: PasskeyRecord) -> Passkey {
    Passkey {
        credential_id: base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(passkey.credential_id()),
        id: passkey.id.to_string(),
        name: passkey.name,
        backup_eligible: passkey.backup_eligible,
        created_at: Some(timestamp(passkey.created_at)),
        last_used_at: passkey.last_used_at.map(timestamp),
    }
}

/// The authenticator's answer as the domain takes it (the guard has checked it is present).
fn answer(credential: Option<prost_types::Struct>) -> serde_json::Value {
    serde_json::Value::Object(credential.map(struct_to_json).unwrap_or_default())
}

#[tonic::async_trait]
impl PasskeyService for PasskeyApi {
    async fn start_passkey_registration(
        &self,
        request: Request<StartPasskeyRegistrationRequest>,
    ) -> Result<Response<StartPasskeyRegistrationResponse>, Status> {
        let caller = principal(&request)?;
        let ceremony = self.auth.start_passkey_registration(&caller).await?;
        Ok(Response::new(StartPasskeyRegistrationResponse {
            registration_id: ceremony.id,
            options: Some(json_to_struct(ceremony.options)),
        }))
    }

    async fn finish_passkey_registration(
        &self,
        request: Request<FinishPasskeyRegistrationRequest>,
    ) -> Result<Response<FinishPasskeyRegistrationResponse>, Status> {
        let caller = principal(&request)?;
        let body = request.into_inner();
        let passkey = self
            .auth
            .finish_passkey_registration(
                &caller,
                &body.registration_id,
                &body.name,
                answer(body.credential),
            )
            .await?;
        Ok(Response::new(FinishPasskeyRegistrationResponse {
            passkey: Some(passkey_to_proto(passkey)),
        }))
    }

    async fn list_passkeys(
        &self,
        request: Request<ListPasskeysRequest>,
    ) -> Result<Response<ListPasskeysResponse>, Status> {
        let caller = principal(&request)?;
        let passkeys = self.auth.list_passkeys(caller.user.id).await?;
        Ok(Response::new(ListPasskeysResponse {
            passkeys: passkeys.into_iter().map(passkey_to_proto).collect(),
        }))
    }

    async fn rename_passkey(
        &self,
        request: Request<RenamePasskeyRequest>,
    ) -> Result<Response<RenamePasskeyResponse>, Status> {
        let caller = principal(&request)?;
        let body = request.get_ref();
        let passkey_id = id("passkey_id", &body.passkey_id)?;
        let passkey = self
            .auth
            .rename_passkey(caller.user.id, passkey_id, &body.name)
            .await?;
        Ok(Response::new(RenamePasskeyResponse {
            passkey: Some(passkey_to_proto(passkey)),
        }))
    }

    async fn delete_passkey(
        &self,
        request: Request<DeletePasskeyRequest>,
    ) -> Result<Response<DeletePasskeyResponse>, Status> {
        let caller = principal(&request)?;
        let passkey_id = id("passkey_id", &request.get_ref().passkey_id)?;
        self.auth.delete_passkey(&caller, passkey_id).await?;
        Ok(Response::new(DeletePasskeyResponse {}))
    }

    async fn start_passkey_sign_in(
        &self,
        request: Request<StartPasskeySignInRequest>,
    ) -> Result<Response<StartPasskeySignInResponse>, Status> {
        let ceremony = self
            .auth
            .start_passkey_sign_in(&client_info(&request))
            .await?;
        Ok(Response::new(StartPasskeySignInResponse {
            sign_in_id: ceremony.id,
            options: Some(json_to_struct(ceremony.options)),
        }))
    }

    async fn finish_passkey_sign_in(
        &self,
        request: Request<FinishPasskeySignInRequest>,
    ) -> Result<Response<FinishPasskeySignInResponse>, Status> {
        let client = client_info(&request);
        let body = request.into_inner();
        let tokens = self
            .auth
            .finish_passkey_sign_in(&body.sign_in_id, answer(body.credential), client)
            .await?;
        Ok(Response::new(token_reply!(
            FinishPasskeySignInResponse,
            tokens
        )))
    }

    async fn start_passkey_mfa(
        &self,
        request: Request<StartPasskeyMfaRequest>,
    ) -> Result<Response<StartPasskeyMfaResponse>, Status> {
        let options = self
            .auth
            .start_passkey_mfa(&request.get_ref().mfa_token)
            .await?;
        Ok(Response::new(StartPasskeyMfaResponse {
            options: Some(json_to_struct(options)),
        }))
    }

    async fn finish_passkey_mfa(
        &self,
        request: Request<FinishPasskeyMfaRequest>,
    ) -> Result<Response<FinishPasskeyMfaResponse>, Status> {
        let body = request.into_inner();
        let tokens = self
            .auth
            .finish_passkey_mfa(&body.mfa_token, answer(body.credential))
            .await?;
        Ok(Response::new(token_reply!(
            FinishPasskeyMfaResponse,
            tokens
        )))
    }
}
