//! `keel.user.v1.UserService`.

use super::{id, principal, user_to_proto};
use crate::api::pb::keel::user::v1::user_service_server::UserService;
use crate::api::pb::keel::user::v1::*;
use crate::domain::auth::AuthService;
use crate::domain::tenancy::directory::UserDirectory;
use crate::domain::user::UserQuery;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct UserApi {
    auth: Arc<AuthService>,
    directory: Arc<UserDirectory>,
}

impl UserApi {
    pub fn new(auth: Arc<AuthService>, directory: Arc<UserDirectory>) -> Self {
        Self { auth, directory }
    }
}

#[tonic::async_trait]
impl UserService for UserApi {
    async fn update_me(
        &self,
        request: Request<UpdateMeRequest>,
    ) -> Result<Response<UpdateMeResponse>, Status> {
        let user = self
            .auth
            .update_profile(
                &principal(&request)?,
                request.get_ref().full_name.as_deref(),
            )
            .await?;
        Ok(Response::new(UpdateMeResponse {
            user: Some(user_to_proto(user)),
        }))
    }

    async fn list_users(
        &self,
        request: Request<ListUsersRequest>,
    ) -> Result<Response<ListUsersResponse>, Status> {
        let body = request.into_inner();
        let query = UserQuery {
            text: body.query,
            is_active: body.is_active,
            is_superuser: body.is_superuser,
        };
        let page = self
            .directory
            .list(&query, body.page_size, &body.page_token)
            .await?;
        Ok(Response::new(ListUsersResponse {
            users: page.items.into_iter().map(user_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn get_user(
        &self,
        request: Request<GetUserRequest>,
    ) -> Result<Response<GetUserResponse>, Status> {
        let user = self
            .directory
            .get(
                &principal(&request)?,
                id("user_id", &request.get_ref().user_id)?,
            )
            .await?;
        Ok(Response::new(GetUserResponse {
            user: Some(user_to_proto(user)),
        }))
    }

    async fn delete_user(
        &self,
        request: Request<DeleteUserRequest>,
    ) -> Result<Response<DeleteUserResponse>, Status> {
        self.auth
            .delete_user(
                &principal(&request)?,
                id("user_id", &request.get_ref().user_id)?,
            )
            .await?;
        Ok(Response::new(DeleteUserResponse {}))
    }

    async fn grant_superuser(
        &self,
        request: Request<GrantSuperuserRequest>,
    ) -> Result<Response<GrantSuperuserResponse>, Status> {
        let user = self
            .auth
            .set_superuser(
                &principal(&request)?,
                id("user_id", &request.get_ref().user_id)?,
                true,
            )
            .await?;
        Ok(Response::new(GrantSuperuserResponse {
            user: Some(user_to_proto(user)),
        }))
    }

    async fn revoke_superuser(
        &self,
        request: Request<RevokeSuperuserRequest>,
    ) -> Result<Response<RevokeSuperuserResponse>, Status> {
        let user = self
            .auth
            .set_superuser(
                &principal(&request)?,
                id("user_id", &request.get_ref().user_id)?,
                false,
            )
            .await?;
        Ok(Response::new(RevokeSuperuserResponse {
            user: Some(user_to_proto(user)),
        }))
    }

    async fn reset_user_totp(
        &self,
        request: Request<ResetUserTotpRequest>,
    ) -> Result<Response<ResetUserTotpResponse>, Status> {
        self.auth
            .reset_totp(
                &principal(&request)?,
                id("user_id", &request.get_ref().user_id)?,
            )
            .await?;
        Ok(Response::new(ResetUserTotpResponse {}))
    }
}
