//! Teams: groups of an organization's members. Roles given in a team apply to that team only
//! (the authorization layer adds them when a request addresses the team).

use super::access::{Access, AccessControl};
use super::organizations::{parse_name, parse_slug};
use super::parse_description;
use super::permissions::RoleKey;
use super::{Member, OrganizationStore};
use crate::domain::clock::{Clock, truncate_to_micros};
use crate::domain::error::{Missing, Result, Violations};
use crate::domain::events::{Event, EventKind, TeamData, TeamMemberData};
use crate::domain::page::{Page, PageTokens};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Team {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub name: String,
    pub slug: String,
    pub description: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Every change writes its `events` in its own transaction.
#[async_trait::async_trait]
pub trait TeamStore: Send + Sync {
    /// Fails with `TEAM_SLUG_TAKEN`.
    async fn insert_team(&self, team: &Team, events: &[Event]) -> Result<()>;
    async fn find_team(&self, organization_id: Uuid, id: Uuid) -> Result<Option<Team>>;
    /// Teams after `after` (by id).
    async fn list_teams(
        &self,
        organization_id: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<Team>>;
    /// Fails with `TEAM_SLUG_TAKEN`.
    async fn update_team(&self, team: &Team, events: &[Event]) -> Result<()>;
    /// Deletes the team and its memberships; answers the former team members.
    async fn delete_team(
        &self,
        organization_id: Uuid,
        id: Uuid,
        events: &[Event],
    ) -> Result<Vec<Uuid>>;
    /// Team members (with their team role keys) after `after` (by user id).
    async fn list_team_members(
        &self,
        team_id: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<Member>>;
    async fn find_team_member(&self, team_id: Uuid, user_id: Uuid) -> Result<Option<Member>>;
    /// Fails with `ALREADY_TEAM_MEMBER`.
    async fn insert_team_member(
        &self,
        team: &Team,
        user_id: Uuid,
        role_keys: &[RoleKey],
        now: DateTime<Utc>,
        events: &[Event],
    ) -> Result<()>;
    async fn replace_team_member_roles(
        &self,
        team_id: Uuid,
        user_id: Uuid,
        role_keys: &[RoleKey],
        events: &[Event],
    ) -> Result<()>;
    async fn delete_team_member(
        &self,
        team_id: Uuid,
        user_id: Uuid,
        events: &[Event],
    ) -> Result<()>;
}

/// A team member with role names rather than keys.
pub struct TeamMemberView {
    pub member: Member,
    pub roles: Vec<String>,
}

pub struct TeamService {
    store: Arc<dyn TeamStore>,
    organizations: Arc<dyn OrganizationStore>,
    access: Arc<AccessControl>,
    pages: Arc<PageTokens>,
    clock: Arc<dyn Clock>,
}

impl TeamService {
    pub fn new(
        store: Arc<dyn TeamStore>,
        organizations: Arc<dyn OrganizationStore>,
        access: Arc<AccessControl>,
        pages: Arc<PageTokens>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            organizations,
            access,
            pages,
            clock,
        }
    }

    pub async fn create(
        &self,
        access: &Access,
        name: &str,
        slug: &str,
        description: &str,
    ) -> Result<Team> {
        let mut violations = Violations::default();
        let name = violations.check(parse_name(name));
        let slug = violations.check(parse_slug(slug));
        let description = violations.check(parse_description(description));
        let (Some(name), Some(slug), Some(description)) = (name, slug, description) else {
            return Err(violations.into_error());
        };
        let now = truncate_to_micros(self.clock.now());
        let team = Team {
            id: Uuid::now_v7(),
            organization_id: access.organization_id,
            name,
            slug,
            description,
            created_at: now,
            updated_at: now,
        };
        let created = self.team_event(EventKind::TeamCreated, access, &team);
        self.store.insert_team(&team, &[created]).await?;
        tracing::info!(organization_id = %team.organization_id, team_id = %team.id, by = %access.user_id(), "team created");
        Ok(team)
    }

    pub async fn list(
        &self,
        access: &Access,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<Team>> {
        let list = format!("teams:{}", access.organization_id);
        let request = self.pages.request(&list, page_size, page_token)?;
        let rows = self
            .store
            .list_teams(access.organization_id, request.after, request.fetch_limit())
            .await?;
        Ok(self.pages.page(&list, request, rows, |team| team.id))
    }

    /// The team the request addressed.
    pub async fn get(&self, access: &Access) -> Result<Team> {
        let team_id = access.team_id.ok_or(Missing::Team)?;
        self.store
            .find_team(access.organization_id, team_id)
            .await?
            .ok_or_else(|| Missing::Team.into())
    }

    pub async fn update(
        &self,
        access: &Access,
        name: Option<&str>,
        slug: Option<&str>,
        description: Option<&str>,
    ) -> Result<Team> {
        let mut team = self.get(access).await?;
        let mut violations = Violations::default();
        violations.update(&mut team.name, name.map(parse_name));
        violations.update(&mut team.slug, slug.map(parse_slug));
        violations.update(&mut team.description, description.map(parse_description));
        violations.finish()?;
        team.updated_at = truncate_to_micros(self.clock.now());
        let updated = self.team_event(EventKind::TeamUpdated, access, &team);
        self.store.update_team(&team, &[updated]).await?;
        Ok(team)
    }

    pub async fn delete(&self, access: &Access) -> Result<()> {
        let team = self.get(access).await?;
        let members = self
            .store
            .delete_team(
                team.organization_id,
                team.id,
                &[self.team_event(EventKind::TeamDeleted, access, &team)],
            )
            .await?;
        self.access.forget_team(team.id).await?;
        for user_id in members {
            self.access
                .forget_member(team.organization_id, user_id)
                .await?;
        }
        tracing::info!(organization_id = %team.organization_id, team_id = %team.id, by = %access.user_id(), "team deleted");
        Ok(())
    }

    pub async fn list_members(
        &self,
        access: &Access,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<TeamMemberView>> {
        let team = self.get(access).await?;
        let list = format!("team-members:{}", team.id);
        let request = self.pages.request(&list, page_size, page_token)?;
        let rows = self
            .store
            .list_team_members(team.id, request.after, request.fetch_limit())
            .await?;
        let page = self
            .pages
            .page(&list, request, rows, |member| member.user_id);
        let mut members = Vec::with_capacity(page.items.len());
        for member in page.items {
            members.push(self.view(&team, member).await?);
        }
        Ok(Page {
            items: members,
            next_page_token: page.next_page_token,
        })
    }

    async fn view(&self, team: &Team, member: Member) -> Result<TeamMemberView> {
        let roles = self
            .access
            .role_names(team.organization_id, &member.role_keys)
            .await?;
        Ok(TeamMemberView { member, roles })
    }

    async fn find_member(&self, team: &Team, user_id: Uuid) -> Result<Member> {
        self.store
            .find_team_member(team.id, user_id)
            .await?
            .ok_or_else(|| Missing::TeamMember.into())
    }

    /// Team role keys, refusing roles beyond the caller's permissions in the team.
    async fn grantable(&self, access: &Access, roles: &[String]) -> Result<Vec<RoleKey>> {
        if roles.is_empty() {
            return Ok(Vec::new());
        }
        self.access.grantable_roles(access, roles).await
    }

    pub async fn add_member(
        &self,
        access: &Access,
        user_id: Uuid,
        roles: &[String],
    ) -> Result<TeamMemberView> {
        let team = self.get(access).await?;
        let role_keys = self.grantable(access, roles).await?;
        if self
            .organizations
            .find_member(team.organization_id, user_id)
            .await?
            .is_none()
        {
            return Err(Missing::Member.into());
        }
        let added = self.member_event(
            EventKind::TeamMemberAdded,
            access,
            &team,
            user_id,
            &role_keys,
        );
        self.store
            .insert_team_member(
                &team,
                user_id,
                &role_keys,
                truncate_to_micros(self.clock.now()),
                &[added],
            )
            .await?;
        self.access
            .forget_member(team.organization_id, user_id)
            .await?;
        let member = self.find_member(&team, user_id).await?;
        self.view(&team, member).await
    }

    pub async fn update_member(
        &self,
        access: &Access,
        user_id: Uuid,
        roles: &[String],
    ) -> Result<TeamMemberView> {
        let team = self.get(access).await?;
        let member = self.find_member(&team, user_id).await?;
        access.ensure_covers(
            self.access
                .permissions_of(team.organization_id, &member.role_keys)
                .await?,
        )?;
        let role_keys = self.grantable(access, roles).await?;
        let kind = EventKind::TeamMemberRolesChanged;
        let changed = self.member_event(kind, access, &team, member.user_id, &role_keys);
        self.store
            .replace_team_member_roles(team.id, member.user_id, &role_keys, &[changed])
            .await?;
        self.access
            .forget_member(team.organization_id, member.user_id)
            .await?;
        let member = self.find_member(&team, member.user_id).await?;
        self.view(&team, member).await
    }

    pub async fn remove_member(&self, access: &Access, user_id: Uuid) -> Result<()> {
        let team = self.get(access).await?;
        let member = self.find_member(&team, user_id).await?;
        access.ensure_covers(
            self.access
                .permissions_of(team.organization_id, &member.role_keys)
                .await?,
        )?;
        let kind = EventKind::TeamMemberRemoved;
        let removed = self.member_event(kind, access, &team, member.user_id, &member.role_keys);
        self.store
            .delete_team_member(team.id, member.user_id, &[removed])
            .await?;
        self.access
            .forget_member(team.organization_id, member.user_id)
            .await
    }

    fn team_event(&self, kind: EventKind, access: &Access, team: &Team) -> Event {
        let data = TeamData {
            team_id: team.id,
            organization_id: team.organization_id,
            name: team.name.clone(),
        };
        Event::new(kind, &access.origin(), self.clock.as_ref(), &data)
    }

    fn member_event(
        &self,
        kind: EventKind,
        access: &Access,
        team: &Team,
        user_id: Uuid,
        role_keys: &[RoleKey],
    ) -> Event {
        let data = TeamMemberData::new(team.id, team.organization_id, user_id, role_keys);
        Event::new(kind, &access.origin(), self.clock.as_ref(), &data)
    }
}
