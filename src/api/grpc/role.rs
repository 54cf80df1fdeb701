//! `keel.role.v1.RoleService`.

use super::{access, timestamp};
use crate::api::pb::keel::role::v1::role_service_server::RoleService;
use crate::api::pb::keel::role::v1::*;
use crate::domain::tenancy::permissions::CATALOG;
use crate::domain::tenancy::roles::{self, RoleView};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct RoleApi {
    roles: Arc<roles::RoleService>,
}

impl RoleApi {
    pub fn new(roles: Arc<roles::RoleService>) -> Self {
        Self { roles }
    }
}

fn role_to_proto(role: RoleView) -> Role {
    Role {
        id: role.id,
        name: role.name,
        description: role.description,
        permissions: role.permissions.names(),
        system: role.system,
        created_at: role.created_at.map(timestamp),
        updated_at: role.updated_at.map(timestamp),
    }
}

#[tonic::async_trait]
impl RoleService for RoleApi {
    async fn list_permissions(
        &self,
        _request: Request<ListPermissionsRequest>,
    ) -> Result<Response<ListPermissionsResponse>, Status> {
        let permissions = CATALOG
            .iter()
            .map(|info| {
                let (resource, action) = info.name.split_once(':').unwrap_or((info.name, ""));
                Permission {
                    name: info.name.to_owned(),
                    resource: resource.to_owned(),
                    action: action.to_owned(),
                    description: info.description.to_owned(),
                    platform: info.platform,
                }
            })
            .collect();
        Ok(Response::new(ListPermissionsResponse { permissions }))
    }

    async fn list_roles(
        &self,
        request: Request<ListRolesRequest>,
    ) -> Result<Response<ListRolesResponse>, Status> {
        let roles = self.roles.list(&access(&request)?).await?;
        Ok(Response::new(ListRolesResponse {
            roles: roles.into_iter().map(role_to_proto).collect(),
        }))
    }

    async fn get_role(
        &self,
        request: Request<GetRoleRequest>,
    ) -> Result<Response<GetRoleResponse>, Status> {
        let role = self
            .roles
            .get(&access(&request)?, &request.get_ref().role)
            .await?;
        Ok(Response::new(GetRoleResponse {
            role: Some(role_to_proto(role)),
        }))
    }

    async fn create_role(
        &self,
        request: Request<CreateRoleRequest>,
    ) -> Result<Response<CreateRoleResponse>, Status> {
        let body = request.get_ref();
        let role = self
            .roles
            .create(
                &access(&request)?,
                &body.name,
                &body.description,
                &body.permissions,
            )
            .await?;
        Ok(Response::new(CreateRoleResponse {
            role: Some(role_to_proto(role)),
        }))
    }

    async fn update_role(
        &self,
        request: Request<UpdateRoleRequest>,
    ) -> Result<Response<UpdateRoleResponse>, Status> {
        let body = request.get_ref();
        let role = self
            .roles
            .update(
                &access(&request)?,
                &body.role,
                body.name.as_deref(),
                body.description.as_deref(),
            )
            .await?;
        Ok(Response::new(UpdateRoleResponse {
            role: Some(role_to_proto(role)),
        }))
    }

    async fn delete_role(
        &self,
        request: Request<DeleteRoleRequest>,
    ) -> Result<Response<DeleteRoleResponse>, Status> {
        self.roles
            .delete(&access(&request)?, &request.get_ref().role)
            .await?;
        Ok(Response::new(DeleteRoleResponse {}))
    }

    async fn add_role_permission(
        &self,
        request: Request<AddRolePermissionRequest>,
    ) -> Result<Response<AddRolePermissionResponse>, Status> {
        let body = request.get_ref();
        let role = self
            .roles
            .add_permission(&access(&request)?, &body.role, &body.permission)
            .await?;
        Ok(Response::new(AddRolePermissionResponse {
            role: Some(role_to_proto(role)),
        }))
    }

    async fn remove_role_permission(
        &self,
        request: Request<RemoveRolePermissionRequest>,
    ) -> Result<Response<RemoveRolePermissionResponse>, Status> {
        let body = request.get_ref();
        let role = self
            .roles
            .remove_permission(&access(&request)?, &body.role, &body.permission)
            .await?;
        Ok(Response::new(RemoveRolePermissionResponse {
            role: Some(role_to_proto(role)),
        }))
    }
}
