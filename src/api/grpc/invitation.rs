//! `keel.invitation.v1.InvitationService`.

use super::{access, id, principal, timestamp};
use crate::api::pb::keel::invitation::v1::invitation_service_server::InvitationService;
use crate::api::pb::keel::invitation::v1::*;
use crate::domain::tenancy::invitations::{self, InvitationStatus as DomainStatus};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct InvitationApi {
    invitations: Arc<invitations::InvitationService>,
}

impl InvitationApi {
    pub fn new(invitations: Arc<invitations::InvitationService>) -> Self {
        Self { invitations }
    }

    async fn to_proto(&self, invitation: invitations::Invitation) -> Result<Invitation, Status> {
        let roles = self.invitations.role_names(&invitation).await?;
        let status = match self.invitations.status(&invitation) {
            DomainStatus::Pending => InvitationStatus::Pending,
            DomainStatus::Accepted => InvitationStatus::Accepted,
            DomainStatus::Revoked => InvitationStatus::Revoked,
            DomainStatus::Expired => InvitationStatus::Expired,
        };
        Ok(Invitation {
            id: invitation.id.to_string(),
            organization_id: invitation.organization_id.to_string(),
            organization_name: invitation.organization_name,
            email: invitation.email,
            roles,
            status: status.into(),
            invited_by: invitation
                .invited_by
                .map(|id| id.to_string())
                .unwrap_or_default(),
            created_at: Some(timestamp(invitation.created_at)),
            expires_at: Some(timestamp(invitation.expires_at)),
            accepted_at: invitation.accepted_at.map(timestamp),
        })
    }

    async fn all_to_proto(
        &self,
        invitations: Vec<invitations::Invitation>,
    ) -> Result<Vec<Invitation>, Status> {
        let mut converted = Vec::with_capacity(invitations.len());
        for invitation in invitations {
            converted.push(self.to_proto(invitation).await?);
        }
        Ok(converted)
    }
}

#[tonic::async_trait]
impl InvitationService for InvitationApi {
    async fn create_invitation(
        &self,
        request: Request<CreateInvitationRequest>,
    ) -> Result<Response<CreateInvitationResponse>, Status> {
        let body = request.get_ref();
        let invitation = self
            .invitations
            .create(
                &access(&request)?,
                &body.email,
                &body.roles,
                body.expires_in_days,
            )
            .await?;
        Ok(Response::new(CreateInvitationResponse {
            invitation: Some(self.to_proto(invitation).await?),
        }))
    }

    async fn list_invitations(
        &self,
        request: Request<ListInvitationsRequest>,
    ) -> Result<Response<ListInvitationsResponse>, Status> {
        let body = request.get_ref();
        let page = self
            .invitations
            .list(&access(&request)?, body.page_size, &body.page_token)
            .await?;
        Ok(Response::new(ListInvitationsResponse {
            invitations: self.all_to_proto(page.items).await?,
            next_page_token: page.next_page_token,
        }))
    }

    async fn get_invitation(
        &self,
        request: Request<GetInvitationRequest>,
    ) -> Result<Response<GetInvitationResponse>, Status> {
        let invitation = self
            .invitations
            .get(
                &access(&request)?,
                id("invitation_id", &request.get_ref().invitation_id)?,
            )
            .await?;
        Ok(Response::new(GetInvitationResponse {
            invitation: Some(self.to_proto(invitation).await?),
        }))
    }

    async fn resend_invitation(
        &self,
        request: Request<ResendInvitationRequest>,
    ) -> Result<Response<ResendInvitationResponse>, Status> {
        let invitation = self
            .invitations
            .resend(
                &access(&request)?,
                id("invitation_id", &request.get_ref().invitation_id)?,
            )
            .await?;
        Ok(Response::new(ResendInvitationResponse {
            invitation: Some(self.to_proto(invitation).await?),
        }))
    }

    async fn revoke_invitation(
        &self,
        request: Request<RevokeInvitationRequest>,
    ) -> Result<Response<RevokeInvitationResponse>, Status> {
        self.invitations
            .revoke(
                &access(&request)?,
                id("invitation_id", &request.get_ref().invitation_id)?,
            )
            .await?;
        Ok(Response::new(RevokeInvitationResponse {}))
    }

    async fn list_my_invitations(
        &self,
        request: Request<ListMyInvitationsRequest>,
    ) -> Result<Response<ListMyInvitationsResponse>, Status> {
        let invitations = self.invitations.list_mine(&principal(&request)?).await?;
        Ok(Response::new(ListMyInvitationsResponse {
            invitations: self.all_to_proto(invitations).await?,
        }))
    }

    async fn accept_invitation(
        &self,
        request: Request<AcceptInvitationRequest>,
    ) -> Result<Response<AcceptInvitationResponse>, Status> {
        let (organization_id, roles) = self
            .invitations
            .accept(&principal(&request)?, &request.get_ref().token)
            .await?;
        Ok(Response::new(AcceptInvitationResponse {
            organization_id: organization_id.to_string(),
            roles,
        }))
    }
}
