//! `keel.session.v1.SessionService`.

use super::{count_i32, id, principal, timestamp};
use crate::api::pb::keel::session::v1::session_service_server::SessionService;
use crate::api::pb::keel::session::v1::*;
use crate::domain::auth::{AuthService, SessionView};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct SessionApi {
    auth: Arc<AuthService>,
}

impl SessionApi {
    pub fn new(auth: Arc<AuthService>) -> Self {
        Self { auth }
    }
}

fn session_to_proto(view: SessionView) -> Session {
    let session = view.session;
    Session {
        id: session.id.to_string(),
        is_current: view.is_current,
        device_type: view.device.device_type.to_owned(),
        os: view.device.os,
        browser: view.device.browser,
        ip_address: session.ip_address.unwrap_or_default(),
        user_agent: session.user_agent.unwrap_or_default(),
        created_at: Some(timestamp(session.created_at)),
        last_activity: Some(timestamp(session.last_used_at)),
        expires_at: Some(timestamp(session.expires_at)),
        is_active: view.is_active,
        revoked_at: session.revoked_at.map(timestamp),
    }
}

#[tonic::async_trait]
impl SessionService for SessionApi {
    async fn list_sessions(
        &self,
        request: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        let caller = principal(&request)?;
        let views = self
            .auth
            .list_sessions(&caller, request.get_ref().include_inactive)
            .await?;
        let active = views.iter().filter(|view| view.is_active).count();
        Ok(Response::new(ListSessionsResponse {
            total: count_i32(views.len()),
            active: count_i32(active),
            sessions: views.into_iter().map(session_to_proto).collect(),
        }))
    }

    async fn get_session_stats(
        &self,
        request: Request<GetSessionStatsRequest>,
    ) -> Result<Response<GetSessionStatsResponse>, Status> {
        let stats = self.auth.session_stats(&principal(&request)?).await?;
        Ok(Response::new(GetSessionStatsResponse {
            active_sessions: count_i32(stats.active),
            revoked_sessions: count_i32(stats.revoked),
            expired_sessions: count_i32(stats.expired),
            active_by_device_type: stats
                .active_by_device_type
                .into_iter()
                .map(|(device_type, sessions)| (device_type.to_owned(), count_i32(sessions)))
                .collect(),
            last_activity: stats.last_activity.map(timestamp),
        }))
    }

    async fn revoke_session(
        &self,
        request: Request<RevokeSessionRequest>,
    ) -> Result<Response<RevokeSessionResponse>, Status> {
        self.auth
            .revoke_own_session(
                &principal(&request)?,
                id("session_id", &request.get_ref().session_id)?,
            )
            .await?;
        Ok(Response::new(RevokeSessionResponse {}))
    }

    async fn revoke_all_sessions(
        &self,
        request: Request<RevokeAllSessionsRequest>,
    ) -> Result<Response<RevokeAllSessionsResponse>, Status> {
        let revoked = self
            .auth
            .revoke_all_sessions(&principal(&request)?, request.get_ref().keep_current)
            .await?;
        Ok(Response::new(RevokeAllSessionsResponse {
            revoked_count: count_i32(revoked),
        }))
    }
}
