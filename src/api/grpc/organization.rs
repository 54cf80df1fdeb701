//! `keel.organization.v1.OrganizationService`.

use super::{access, count_i32, id, json_to_struct, principal, struct_to_json, timestamp};
use crate::api::pb::keel::organization::v1::organization_service_server::OrganizationService;
use crate::api::pb::keel::organization::v1::*;
use crate::domain::tenancy;
use crate::domain::tenancy::ip_rules::{AddressBlock, IpRestrictionService};
use crate::domain::tenancy::organizations::MemberView;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct OrganizationApi {
    organizations: Arc<tenancy::organizations::OrganizationService>,
    ip_restrictions: Arc<IpRestrictionService>,
}

impl OrganizationApi {
    pub fn new(
        organizations: Arc<tenancy::organizations::OrganizationService>,
        ip_restrictions: Arc<IpRestrictionService>,
    ) -> Self {
        Self {
            organizations,
            ip_restrictions,
        }
    }
}

/// Blocks as text, in network form.
fn blocks(list: &[AddressBlock]) -> Vec<String> {
    list.iter().map(AddressBlock::to_string).collect()
}

fn organization_to_proto(organization: tenancy::Organization) -> Organization {
    Organization {
        id: organization.id.to_string(),
        name: organization.name,
        slug: organization.slug,
        settings: Some(json_to_struct(organization.settings)),
        created_at: Some(timestamp(organization.created_at)),
        updated_at: Some(timestamp(organization.updated_at)),
    }
}

fn member_to_proto(view: MemberView) -> Member {
    Member {
        user_id: view.member.user_id.to_string(),
        email: view.member.email,
        full_name: view.member.full_name,
        roles: view.roles,
        joined_at: Some(timestamp(view.member.joined_at)),
    }
}

#[tonic::async_trait]
impl OrganizationService for OrganizationApi {
    async fn create_organization(
        &self,
        request: Request<CreateOrganizationRequest>,
    ) -> Result<Response<CreateOrganizationResponse>, Status> {
        let caller = principal(&request)?;
        let body = request.into_inner();
        let organization = self
            .organizations
            .create(
                &caller,
                &body.name,
                &body.slug,
                body.settings.map(struct_to_json).unwrap_or_default(),
            )
            .await?;
        Ok(Response::new(CreateOrganizationResponse {
            organization: Some(organization_to_proto(organization)),
        }))
    }

    async fn list_organizations(
        &self,
        request: Request<ListOrganizationsRequest>,
    ) -> Result<Response<ListOrganizationsResponse>, Status> {
        let caller = principal(&request)?;
        let body = request.get_ref();
        let page = self
            .organizations
            .list_mine(&caller, body.page_size, &body.page_token)
            .await?;
        Ok(Response::new(ListOrganizationsResponse {
            memberships: page
                .items
                .into_iter()
                .map(|membership| Membership {
                    organization: Some(organization_to_proto(membership.organization)),
                    roles: membership.roles,
                })
                .collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn get_organization(
        &self,
        request: Request<GetOrganizationRequest>,
    ) -> Result<Response<GetOrganizationResponse>, Status> {
        let organization = self.organizations.get(&access(&request)?).await?;
        Ok(Response::new(GetOrganizationResponse {
            organization: Some(organization_to_proto(organization)),
        }))
    }

    async fn update_organization(
        &self,
        request: Request<UpdateOrganizationRequest>,
    ) -> Result<Response<UpdateOrganizationResponse>, Status> {
        let access = access(&request)?;
        let body = request.into_inner();
        let organization = self
            .organizations
            .update(
                &access,
                body.name.as_deref(),
                body.slug.as_deref(),
                body.settings.map(struct_to_json),
            )
            .await?;
        Ok(Response::new(UpdateOrganizationResponse {
            organization: Some(organization_to_proto(organization)),
        }))
    }

    async fn get_ip_restrictions(
        &self,
        request: Request<GetIpRestrictionsRequest>,
    ) -> Result<Response<GetIpRestrictionsResponse>, Status> {
        let rules = self.ip_restrictions.get(&access(&request)?).await?;
        Ok(Response::new(GetIpRestrictionsResponse {
            allow: blocks(&rules.allow),
            deny: blocks(&rules.deny),
        }))
    }

    async fn set_ip_restrictions(
        &self,
        request: Request<SetIpRestrictionsRequest>,
    ) -> Result<Response<SetIpRestrictionsResponse>, Status> {
        let access = access(&request)?;
        let body = request.into_inner();
        let rules = self
            .ip_restrictions
            .set(&access, &body.allow, &body.deny)
            .await?;
        Ok(Response::new(SetIpRestrictionsResponse {
            allow: blocks(&rules.allow),
            deny: blocks(&rules.deny),
        }))
    }

    async fn delete_organization(
        &self,
        request: Request<DeleteOrganizationRequest>,
    ) -> Result<Response<DeleteOrganizationResponse>, Status> {
        self.organizations.delete(&access(&request)?).await?;
        Ok(Response::new(DeleteOrganizationResponse {}))
    }

    async fn transfer_ownership(
        &self,
        request: Request<TransferOwnershipRequest>,
    ) -> Result<Response<TransferOwnershipResponse>, Status> {
        self.organizations
            .transfer_ownership(
                &access(&request)?,
                id("user_id", &request.get_ref().user_id)?,
            )
            .await?;
        Ok(Response::new(TransferOwnershipResponse {}))
    }

    async fn list_members(
        &self,
        request: Request<ListMembersRequest>,
    ) -> Result<Response<ListMembersResponse>, Status> {
        let body = request.get_ref();
        let (page, total) = self
            .organizations
            .list_members(&access(&request)?, body.page_size, &body.page_token)
            .await?;
        Ok(Response::new(ListMembersResponse {
            members: page.items.into_iter().map(member_to_proto).collect(),
            next_page_token: page.next_page_token,
            total_size: count_i32(total),
        }))
    }

    async fn get_member(
        &self,
        request: Request<GetMemberRequest>,
    ) -> Result<Response<GetMemberResponse>, Status> {
        let member = self
            .organizations
            .get_member(
                &access(&request)?,
                id("user_id", &request.get_ref().user_id)?,
            )
            .await?;
        Ok(Response::new(GetMemberResponse {
            member: Some(member_to_proto(member)),
        }))
    }

    async fn add_member(
        &self,
        request: Request<AddMemberRequest>,
    ) -> Result<Response<AddMemberResponse>, Status> {
        let body = request.get_ref();
        let member = self
            .organizations
            .add_member(
                &access(&request)?,
                id("user_id", &body.user_id)?,
                &body.roles,
            )
            .await?;
        Ok(Response::new(AddMemberResponse {
            member: Some(member_to_proto(member)),
        }))
    }

    async fn update_member(
        &self,
        request: Request<UpdateMemberRequest>,
    ) -> Result<Response<UpdateMemberResponse>, Status> {
        let body = request.get_ref();
        let member = self
            .organizations
            .update_member(
                &access(&request)?,
                id("user_id", &body.user_id)?,
                &body.roles,
            )
            .await?;
        Ok(Response::new(UpdateMemberResponse {
            member: Some(member_to_proto(member)),
        }))
    }

    async fn remove_member(
        &self,
        request: Request<RemoveMemberRequest>,
    ) -> Result<Response<RemoveMemberResponse>, Status> {
        self.organizations
            .remove_member(
                &access(&request)?,
                id("user_id", &request.get_ref().user_id)?,
            )
            .await?;
        Ok(Response::new(RemoveMemberResponse {}))
    }

    async fn leave_organization(
        &self,
        request: Request<LeaveOrganizationRequest>,
    ) -> Result<Response<LeaveOrganizationResponse>, Status> {
        self.organizations.leave(&access(&request)?).await?;
        Ok(Response::new(LeaveOrganizationResponse {}))
    }
}
