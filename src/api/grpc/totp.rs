//! `keel.totp.v1.TotpService`.

use super::{count_i32, principal, timestamp};
use crate::api::pb::keel::totp::v1::totp_service_server::TotpService;
use crate::api::pb::keel::totp::v1::*;
use crate::domain::auth::AuthService;
use crate::domain::totp::{self, Reauthentication};
use std::sync::Arc;
use tonic::{Request, Response, Status};

/// Enrolment and status go to the TOTP use cases; changes that re-authenticate go through
/// `AuthService`, so wrong passwords and codes count towards the lockout.
pub struct TotpApi {
    totp: Arc<totp::TotpService>,
    auth: Arc<AuthService>,
}

impl TotpApi {
    pub fn new(totp: Arc<totp::TotpService>, auth: Arc<AuthService>) -> Self {
        Self { totp, auth }
    }
}

#[tonic::async_trait]
impl TotpService for TotpApi {
    async fn setup_totp(
        &self,
        request: Request<SetupTotpRequest>,
    ) -> Result<Response<SetupTotpResponse>, Status> {
        let enrolment = self.totp.setup(&principal(&request)?).await?;
        Ok(Response::new(SetupTotpResponse {
            secret: enrolment.secret_base32,
            provisioning_uri: enrolment.provisioning_uri,
            qr_code: enrolment.qr_code_data_uri,
            backup_codes: enrolment.backup_codes,
        }))
    }

    async fn enable_totp(
        &self,
        request: Request<EnableTotpRequest>,
    ) -> Result<Response<EnableTotpResponse>, Status> {
        let caller = principal(&request)?;
        let body = request.get_ref();
        self.auth
            .enable_totp(&caller, &body.code, &body.password, &body.email_code)
            .await?;
        Ok(Response::new(EnableTotpResponse { enabled: true }))
    }

    async fn send_enrolment_code(
        &self,
        request: Request<SendEnrolmentCodeRequest>,
    ) -> Result<Response<SendEnrolmentCodeResponse>, Status> {
        self.auth.send_enrolment_code(&principal(&request)?).await?;
        Ok(Response::new(SendEnrolmentCodeResponse {}))
    }

    async fn get_totp_status(
        &self,
        request: Request<GetTotpStatusRequest>,
    ) -> Result<Response<GetTotpStatusResponse>, Status> {
        let status = self.totp.status(&principal(&request)?).await?;
        Ok(Response::new(GetTotpStatusResponse {
            enabled: status.enabled,
            backup_codes_remaining: count_i32(status.backup_codes_remaining),
            enabled_at: status.enabled_at.map(timestamp),
        }))
    }

    async fn disable_totp(
        &self,
        request: Request<DisableTotpRequest>,
    ) -> Result<Response<DisableTotpResponse>, Status> {
        let caller = principal(&request)?;
        let body = request.get_ref();
        self.auth
            .disable_totp(
                &caller,
                Reauthentication {
                    password: &body.password,
                    code: &body.code,
                },
            )
            .await?;
        Ok(Response::new(DisableTotpResponse { enabled: false }))
    }

    async fn regenerate_backup_codes(
        &self,
        request: Request<RegenerateBackupCodesRequest>,
    ) -> Result<Response<RegenerateBackupCodesResponse>, Status> {
        let caller = principal(&request)?;
        let body = request.get_ref();
        let backup_codes = self
            .auth
            .regenerate_backup_codes(
                &caller,
                Reauthentication {
                    password: &body.password,
                    code: &body.code,
                },
            )
            .await?;
        Ok(Response::new(RegenerateBackupCodesResponse {
            backup_codes,
        }))
    }
}
