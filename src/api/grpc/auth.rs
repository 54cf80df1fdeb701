//! `keel.auth.v1.AuthService`.

use super::{client_info, count_i32, principal, user_to_proto};
use crate::api::pb::keel::auth::v1::auth_service_server::AuthService;
use crate::api::pb::keel::auth::v1::*;
use crate::domain::auth::{self, Registration};
use crate::domain::user::User;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct AuthApi {
    auth: Arc<auth::AuthService>,
}

impl AuthApi {
    pub fn new(auth: Arc<auth::AuthService>) -> Self {
        Self { auth }
    }
}

/// The answer to every request for a link: the same whether or not a message goes out.
const LINK_SENT: &str = "if the address belongs to an account, a message is on its way";

#[tonic::async_trait]
impl AuthService for AuthApi {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let client = client_info(&request);
        let body = request.into_inner();
        let user = self
            .auth
            .register(
                Registration {
                    email: &body.email,
                    password: &body.password,
                    full_name: &body.full_name,
                },
                &client,
            )
            .await?;
        Ok(Response::new(RegisterResponse {
            user: Some(user_to_proto(user)),
        }))
    }

    async fn login(
        &self,
        request: Request<LoginRequest>,
    ) -> Result<Response<LoginResponse>, Status> {
        let client = client_info(&request);
        let body = request.into_inner();
        let email = if body.email.is_empty() {
            &body.username
        } else {
            &body.email
        };
        let outcome = self.auth.login(email, &body.password, client).await?;
        Ok(Response::new(login_reply!(LoginResponse, outcome)))
    }

    async fn login_mfa(
        &self,
        request: Request<LoginMfaRequest>,
    ) -> Result<Response<LoginMfaResponse>, Status> {
        let body = request.into_inner();
        let tokens = self.auth.login_mfa(&body.mfa_token, &body.code).await?;
        Ok(Response::new(token_reply!(LoginMfaResponse, tokens)))
    }

    async fn refresh(
        &self,
        request: Request<RefreshRequest>,
    ) -> Result<Response<RefreshResponse>, Status> {
        let tokens = self
            .auth
            .refresh(&request.into_inner().refresh_token)
            .await?;
        Ok(Response::new(token_reply!(RefreshResponse, tokens)))
    }

    async fn logout(
        &self,
        request: Request<LogoutRequest>,
    ) -> Result<Response<LogoutResponse>, Status> {
        self.auth.logout(&principal(&request)?).await?;
        Ok(Response::new(LogoutResponse {}))
    }

    async fn verify_email(
        &self,
        request: Request<VerifyEmailRequest>,
    ) -> Result<Response<VerifyEmailResponse>, Status> {
        self.auth
            .verify_email(&request.get_ref().token, &client_info(&request))
            .await?;
        Ok(Response::new(VerifyEmailResponse { verified: true }))
    }

    async fn resend_verification(
        &self,
        request: Request<ResendVerificationRequest>,
    ) -> Result<Response<ResendVerificationResponse>, Status> {
        let client = client_info(&request);
        self.auth
            .resend_verification(&request.get_ref().email, &client)
            .await?;
        Ok(Response::new(ResendVerificationResponse {
            message: LINK_SENT.to_owned(),
        }))
    }

    async fn request_password_reset(
        &self,
        request: Request<RequestPasswordResetRequest>,
    ) -> Result<Response<RequestPasswordResetResponse>, Status> {
        let client = client_info(&request);
        self.auth
            .request_password_reset(&request.get_ref().email, &client)
            .await?;
        Ok(Response::new(RequestPasswordResetResponse {
            message: LINK_SENT.to_owned(),
        }))
    }

    async fn reset_password(
        &self,
        request: Request<ResetPasswordRequest>,
    ) -> Result<Response<ResetPasswordResponse>, Status> {
        let client = client_info(&request);
        let body = request.get_ref();
        self.auth
            .reset_password(&body.token, &body.new_password, &client)
            .await?;
        Ok(Response::new(ResetPasswordResponse {}))
    }

    async fn request_magic_link(
        &self,
        request: Request<RequestMagicLinkRequest>,
    ) -> Result<Response<RequestMagicLinkResponse>, Status> {
        let client = client_info(&request);
        self.auth
            .request_magic_link(&request.get_ref().email, &client)
            .await?;
        Ok(Response::new(RequestMagicLinkResponse {
            message: LINK_SENT.to_owned(),
        }))
    }

    async fn verify_magic_link(
        &self,
        request: Request<VerifyMagicLinkRequest>,
    ) -> Result<Response<VerifyMagicLinkResponse>, Status> {
        let client = client_info(&request);
        let outcome = self
            .auth
            .verify_magic_link(&request.get_ref().token, client)
            .await?;
        Ok(Response::new(login_reply!(
            VerifyMagicLinkResponse,
            outcome
        )))
    }

    async fn change_password(
        &self,
        request: Request<ChangePasswordRequest>,
    ) -> Result<Response<ChangePasswordResponse>, Status> {
        let caller = principal(&request)?;
        let body = request.into_inner();
        let revoked = self
            .auth
            .change_password(&caller, &body.current_password, &body.new_password)
            .await?;
        Ok(Response::new(ChangePasswordResponse {
            revoked_sessions: count_i32(revoked),
        }))
    }

    async fn get_me(
        &self,
        request: Request<GetMeRequest>,
    ) -> Result<Response<GetMeResponse>, Status> {
        let user = principal(&request)?.user;
        Ok(Response::new(GetMeResponse {
            user: Some(user_to_proto(User::clone(&user))),
        }))
    }
}
