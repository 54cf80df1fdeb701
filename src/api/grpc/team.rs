//! `keel.team.v1.TeamService`.

use super::{access, id, timestamp};
use crate::api::pb::keel::team::v1::team_service_server::TeamService;
use crate::api::pb::keel::team::v1::*;
use crate::domain::tenancy::teams::{self, TeamMemberView};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct TeamApi {
    teams: Arc<teams::TeamService>,
}

impl TeamApi {
    pub fn new(teams: Arc<teams::TeamService>) -> Self {
        Self { teams }
    }
}

fn team_to_proto(team: teams::Team) -> Team {
    Team {
        id: team.id.to_string(),
        organization_id: team.organization_id.to_string(),
        name: team.name,
        slug: team.slug,
        description: team.description,
        created_at: Some(timestamp(team.created_at)),
        updated_at: Some(timestamp(team.updated_at)),
    }
}

fn member_to_proto(view: TeamMemberView) -> TeamMember {
    TeamMember {
        user_id: view.member.user_id.to_string(),
        email: view.member.email,
        full_name: view.member.full_name,
        roles: view.roles,
        joined_at: Some(timestamp(view.member.joined_at)),
    }
}

#[tonic::async_trait]
impl TeamService for TeamApi {
    async fn create_team(
        &self,
        request: Request<CreateTeamRequest>,
    ) -> Result<Response<CreateTeamResponse>, Status> {
        let body = request.get_ref();
        let team = self
            .teams
            .create(
                &access(&request)?,
                &body.name,
                &body.slug,
                &body.description,
            )
            .await?;
        Ok(Response::new(CreateTeamResponse {
            team: Some(team_to_proto(team)),
        }))
    }

    async fn list_teams(
        &self,
        request: Request<ListTeamsRequest>,
    ) -> Result<Response<ListTeamsResponse>, Status> {
        let body = request.get_ref();
        let page = self
            .teams
            .list(&access(&request)?, body.page_size, &body.page_token)
            .await?;
        Ok(Response::new(ListTeamsResponse {
            teams: page.items.into_iter().map(team_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn get_team(
        &self,
        request: Request<GetTeamRequest>,
    ) -> Result<Response<GetTeamResponse>, Status> {
        let team = self.teams.get(&access(&request)?).await?;
        Ok(Response::new(GetTeamResponse {
            team: Some(team_to_proto(team)),
        }))
    }

    async fn update_team(
        &self,
        request: Request<UpdateTeamRequest>,
    ) -> Result<Response<UpdateTeamResponse>, Status> {
        let body = request.get_ref();
        let team = self
            .teams
            .update(
                &access(&request)?,
                body.name.as_deref(),
                body.slug.as_deref(),
                body.description.as_deref(),
            )
            .await?;
        Ok(Response::new(UpdateTeamResponse {
            team: Some(team_to_proto(team)),
        }))
    }

    async fn delete_team(
        &self,
        request: Request<DeleteTeamRequest>,
    ) -> Result<Response<DeleteTeamResponse>, Status> {
        self.teams.delete(&access(&request)?).await?;
        Ok(Response::new(DeleteTeamResponse {}))
    }

    async fn list_team_members(
        &self,
        request: Request<ListTeamMembersRequest>,
    ) -> Result<Response<ListTeamMembersResponse>, Status> {
        let body = request.get_ref();
        let page = self
            .teams
            .list_members(&access(&request)?, body.page_size, &body.page_token)
            .await?;
        Ok(Response::new(ListTeamMembersResponse {
            members: page.items.into_iter().map(member_to_proto).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    async fn add_team_member(
        &self,
        request: Request<AddTeamMemberRequest>,
    ) -> Result<Response<AddTeamMemberResponse>, Status> {
        let body = request.get_ref();
        let member = self
            .teams
            .add_member(
                &access(&request)?,
                id("user_id", &body.user_id)?,
                &body.roles,
            )
            .await?;
        Ok(Response::new(AddTeamMemberResponse {
            member: Some(member_to_proto(member)),
        }))
    }

    async fn update_team_member(
        &self,
        request: Request<UpdateTeamMemberRequest>,
    ) -> Result<Response<UpdateTeamMemberResponse>, Status> {
        let body = request.get_ref();
        let member = self
            .teams
            .update_member(
                &access(&request)?,
                id("user_id", &body.user_id)?,
                &body.roles,
            )
            .await?;
        Ok(Response::new(UpdateTeamMemberResponse {
            member: Some(member_to_proto(member)),
        }))
    }

    async fn remove_team_member(
        &self,
        request: Request<RemoveTeamMemberRequest>,
    ) -> Result<Response<RemoveTeamMemberResponse>, Status> {
        self.teams
            .remove_member(
                &access(&request)?,
                id("user_id", &request.get_ref().user_id)?,
            )
            .await?;
        Ok(Response::new(RemoveTeamMemberResponse {}))
    }
}
