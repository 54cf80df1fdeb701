//! Organization and membership use cases. The caller arrives already admitted (`Access`) for
//! the permission the RPC declares; what remains here is the rules within: no one grants more
//! than they hold, and an organization always keeps an owner.

use super::access::{Access, AccessControl};
use super::permissions::{RoleKey, SystemRole};
use super::quotas::QuotaService;
use super::{DeletedOrganization, Member, Organization, OrganizationStore, Settings};
use crate::domain::apikey::ApiKeyService;
use crate::domain::clock::{Clock, truncate_to_micros};
use crate::domain::error::{Error, ErrorKind, FieldViolation, Missing, Result, Violations};
use crate::domain::events::{Event, EventKind, MemberData, OrganizationData, Origin};
use crate::domain::page::{Page, PageTokens};
use crate::domain::principal::{Credential, Principal};
use crate::domain::text::{Blank, bounded_text};
use crate::domain::user::UserStore;
use std::sync::Arc;
use uuid::Uuid;

const MAX_SETTINGS_BYTES: usize = 16 * 1024;

/// An organization with the caller's role names in it.
pub struct Membership {
    pub organization: Organization,
    pub roles: Vec<String>,
}

/// A member with role names rather than keys.
pub struct MemberView {
    pub member: Member,
    pub roles: Vec<String>,
}

pub struct OrganizationService {
    store: Arc<dyn OrganizationStore>,
    users: Arc<dyn UserStore>,
    access: Arc<AccessControl>,
    api_keys: Arc<ApiKeyService>,
    quotas: Arc<QuotaService>,
    pages: Arc<PageTokens>,
    clock: Arc<dyn Clock>,
}

pub fn parse_name(raw: &str) -> Result<String, FieldViolation> {
    bounded_text("name", "INVALID_NAME", raw, 200, Blank::Refused)
}

pub fn parse_slug(raw: &str) -> Result<String, FieldViolation> {
    let slug = raw.trim();
    let well_formed = (2..=63).contains(&slug.len())
        && slug
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-');
    if !well_formed {
        return Err(FieldViolation::new(
            "slug",
            "INVALID_SLUG",
            "must be 2 to 63 characters of a-z, 0-9 and -",
        ));
    }
    Ok(slug.to_owned())
}

fn check_settings(settings: Settings) -> Result<Settings, FieldViolation> {
    let size = serde_json::to_vec(&settings).map_or(usize::MAX, |encoded| encoded.len());
    if size > MAX_SETTINGS_BYTES {
        return Err(FieldViolation::new(
            "settings",
            "INVALID_SETTINGS",
            format!("must be at most {MAX_SETTINGS_BYTES} bytes of JSON"),
        ));
    }
    Ok(settings)
}

impl OrganizationService {
    pub fn new(
        store: Arc<dyn OrganizationStore>,
        users: Arc<dyn UserStore>,
        access: Arc<AccessControl>,
        api_keys: Arc<ApiKeyService>,
        quotas: Arc<QuotaService>,
        pages: Arc<PageTokens>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            users,
            access,
            api_keys,
            quotas,
            pages,
            clock,
        }
    }

    pub async fn create(
        &self,
        caller: &Principal,
        name: &str,
        slug: &str,
        settings: Settings,
    ) -> Result<Organization> {
        caller.session_id()?;
        let mut violations = Violations::default();
        let name = violations.check(parse_name(name));
        let slug = violations.check(parse_slug(slug));
        let settings = violations.check(check_settings(settings));
        let (Some(name), Some(slug), Some(settings)) = (name, slug, settings) else {
            return Err(violations.into_error());
        };
        let now = truncate_to_micros(self.clock.now());
        let organization = Organization {
            id: Uuid::now_v7(),
            name,
            slug,
            settings,
            created_at: now,
            updated_at: now,
        };
        let origin = Origin::from(caller);
        let events = [
            self.organization_event(EventKind::OrganizationCreated, &origin, &organization),
            self.member_event(
                EventKind::MemberAdded,
                &origin,
                organization.id,
                caller.user.id,
                &[RoleKey::System(SystemRole::Owner)],
            ),
        ];
        self.store
            .insert_organization(&organization, caller.user.id, &events)
            .await?;
        self.access
            .forget_member(organization.id, caller.user.id)
            .await?;
        tracing::info!(organization_id = %organization.id, user_id = %caller.user.id, "organization created");
        Ok(organization)
    }

    /// The caller's organizations, oldest first.
    pub async fn list_mine(
        &self,
        caller: &Principal,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<Membership>> {
        let list = format!("organizations:{}", caller.user.id);
        let request = self.pages.request(&list, page_size, page_token)?;
        let only = match &caller.credential {
            Credential::ApiKey {
                organization_id, ..
            } => *organization_id,
            Credential::Session(_) => None,
        };
        let rows = self
            .store
            .list_memberships(caller.user.id, only, request.after, request.fetch_limit())
            .await?;
        let page = self
            .pages
            .page(&list, request, rows, |(organization, _)| organization.id);
        let mut memberships = Vec::with_capacity(page.items.len());
        for (organization, role_keys) in page.items {
            let roles = self.access.role_names(organization.id, &role_keys).await?;
            memberships.push(Membership {
                organization,
                roles,
            });
        }
        Ok(Page {
            items: memberships,
            next_page_token: page.next_page_token,
        })
    }

    pub async fn get(&self, access: &Access) -> Result<Organization> {
        self.store
            .find_organization(access.organization_id)
            .await?
            .ok_or_else(|| Missing::Organization.into())
    }

    pub async fn update(
        &self,
        access: &Access,
        name: Option<&str>,
        slug: Option<&str>,
        settings: Option<Settings>,
    ) -> Result<Organization> {
        let mut organization = self.get(access).await?;
        let mut violations = Violations::default();
        violations.update(&mut organization.name, name.map(parse_name));
        violations.update(&mut organization.slug, slug.map(parse_slug));
        violations.update(&mut organization.settings, settings.map(check_settings));
        violations.finish()?;
        organization.updated_at = truncate_to_micros(self.clock.now());
        let updated = self.organization_event(
            EventKind::OrganizationUpdated,
            &access.origin(),
            &organization,
        );
        self.store
            .update_organization(&organization, &[updated])
            .await?;
        Ok(organization)
    }

    pub async fn delete(&self, access: &Access) -> Result<()> {
        let organization = self.get(access).await?;
        let deleted = self.organization_event(
            EventKind::OrganizationDeleted,
            &access.origin(),
            &organization,
        );
        let DeletedOrganization {
            member_ids,
            revoked_api_key_prefixes,
        } = self
            .store
            .delete_organization(
                access.organization_id,
                truncate_to_micros(self.clock.now()),
                &[deleted],
            )
            .await?;
        for member_id in member_ids {
            self.access
                .forget_member(access.organization_id, member_id)
                .await?;
        }
        self.access.forget_roles(access.organization_id).await?;
        self.api_keys.forget(&revoked_api_key_prefixes).await?;
        tracing::info!(organization_id = %access.organization_id, user_id = %access.user_id(), "organization deleted");
        Ok(())
    }

    pub async fn transfer_ownership(&self, access: &Access, to: Uuid) -> Result<()> {
        if !access
            .role_keys
            .contains(&RoleKey::System(SystemRole::Owner))
        {
            return Err(Error::new(
                ErrorKind::FailedPrecondition,
                "NOT_AN_OWNER",
                "only an owner can transfer ownership",
            ));
        }
        self.find_member(access, to).await?;
        if to == access.user_id() {
            return Ok(());
        }
        let origin = access.origin();
        let roles_changed = |user_id, role| {
            let roles = [RoleKey::System(role)];
            let kind = EventKind::MemberRolesChanged;
            self.member_event(kind, &origin, access.organization_id, user_id, &roles)
        };
        let events = [
            roles_changed(to, SystemRole::Owner),
            roles_changed(access.user_id(), SystemRole::Admin),
        ];
        self.store
            .transfer_ownership(access.organization_id, access.user_id(), to, &events)
            .await?;
        self.access
            .forget_member(access.organization_id, access.user_id())
            .await?;
        self.access
            .forget_member(access.organization_id, to)
            .await?;
        tracing::info!(organization_id = %access.organization_id, from = %access.user_id(), to = %to, "ownership transferred");
        Ok(())
    }

    pub async fn list_members(
        &self,
        access: &Access,
        page_size: i32,
        page_token: &str,
    ) -> Result<(Page<MemberView>, u64)> {
        let list = format!("members:{}", access.organization_id);
        let request = self.pages.request(&list, page_size, page_token)?;
        let rows = self
            .store
            .list_members(access.organization_id, request.after, request.fetch_limit())
            .await?;
        let page = self
            .pages
            .page(&list, request, rows, |member| member.user_id);
        let total = self.store.count_members(access.organization_id).await?;
        let mut members = Vec::with_capacity(page.items.len());
        for member in page.items {
            members.push(self.view(access.organization_id, member).await?);
        }
        Ok((
            Page {
                items: members,
                next_page_token: page.next_page_token,
            },
            total,
        ))
    }

    async fn view(&self, organization_id: Uuid, member: Member) -> Result<MemberView> {
        let roles = self
            .access
            .role_names(organization_id, &member.role_keys)
            .await?;
        Ok(MemberView { member, roles })
    }

    async fn find_member(&self, access: &Access, user_id: Uuid) -> Result<Member> {
        self.store
            .find_member(access.organization_id, user_id)
            .await?
            .ok_or_else(|| Missing::Member.into())
    }

    pub async fn get_member(&self, access: &Access, user_id: Uuid) -> Result<MemberView> {
        let member = self.find_member(access, user_id).await?;
        self.view(access.organization_id, member).await
    }

    pub async fn add_member(
        &self,
        access: &Access,
        user_id: Uuid,
        roles: &[String],
    ) -> Result<MemberView> {
        let role_keys = self.access.grantable_roles(access, roles).await?;
        self.users
            .find_user(user_id)
            .await?
            .filter(|user| user.is_active)
            .ok_or(Missing::User)?;
        let max_members = self.quotas.limits(access.organization_id).await?.max_users;
        let origin = access.origin();
        let added = self.member_event(
            EventKind::MemberAdded,
            &origin,
            access.organization_id,
            user_id,
            &role_keys,
        );
        let inserted = self
            .store
            .insert_member(
                access.organization_id,
                user_id,
                &role_keys,
                truncate_to_micros(self.clock.now()),
                max_members,
                &[added],
            )
            .await;
        self.quotas
            .watch_members(&origin, access.organization_id, max_members, inserted)
            .await?;
        self.access
            .forget_member(access.organization_id, user_id)
            .await?;
        tracing::info!(organization_id = %access.organization_id, user_id = %user_id, by = %access.user_id(), "member added");
        self.get_member(access, user_id).await
    }

    /// Refuses to touch a member whose permissions exceed the caller's.
    async fn ensure_outranks(&self, access: &Access, member: &Member) -> Result<()> {
        access.ensure_covers(
            self.access
                .permissions_of(access.organization_id, &member.role_keys)
                .await?,
        )
    }

    pub async fn update_member(
        &self,
        access: &Access,
        user_id: Uuid,
        roles: &[String],
    ) -> Result<MemberView> {
        if roles.is_empty() {
            return Err(Error::invalid_fields(vec![FieldViolation::new(
                "roles",
                "NO_ROLES",
                "a member holds at least one role; remove the member instead",
            )]));
        }
        let member = self.find_member(access, user_id).await?;
        self.ensure_outranks(access, &member).await?;
        let role_keys = self.access.grantable_roles(access, roles).await?;
        let changed = self.member_event(
            EventKind::MemberRolesChanged,
            &access.origin(),
            access.organization_id,
            member.user_id,
            &role_keys,
        );
        self.store
            .replace_member_roles(
                access.organization_id,
                member.user_id,
                &role_keys,
                &[changed],
            )
            .await?;
        self.access
            .forget_member(access.organization_id, member.user_id)
            .await?;
        tracing::info!(organization_id = %access.organization_id, user_id = %member.user_id, by = %access.user_id(), "member roles changed");
        self.get_member(access, member.user_id).await
    }

    pub async fn remove_member(&self, access: &Access, user_id: Uuid) -> Result<()> {
        let member = self.find_member(access, user_id).await?;
        self.ensure_outranks(access, &member).await?;
        self.remove(access, &member).await?;
        tracing::info!(organization_id = %access.organization_id, user_id = %member.user_id, by = %access.user_id(), "member removed");
        Ok(())
    }

    /// The caller leaves. A user session only: leaving is a write, and a key (even a read-only
    /// one) must not end its owner's membership.
    pub async fn leave(&self, access: &Access) -> Result<()> {
        access.principal.session_id()?;
        let member = self.find_member(access, access.user_id()).await?;
        self.remove(access, &member).await?;
        tracing::info!(organization_id = %access.organization_id, user_id = %access.user_id(), "member left");
        Ok(())
    }

    async fn remove(&self, access: &Access, member: &Member) -> Result<()> {
        let organization_id = access.organization_id;
        let removed = self.member_event(
            EventKind::MemberRemoved,
            &access.origin(),
            organization_id,
            member.user_id,
            &member.role_keys,
        );
        self.store
            .delete_member(organization_id, member.user_id, &[removed])
            .await?;
        self.access
            .forget_member(organization_id, member.user_id)
            .await
    }

    fn organization_event(
        &self,
        kind: EventKind,
        origin: &Origin,
        organization: &Organization,
    ) -> Event {
        let data = OrganizationData {
            organization_id: organization.id,
            name: organization.name.clone(),
            slug: organization.slug.clone(),
        };
        Event::new(kind, origin, self.clock.as_ref(), &data)
    }

    fn member_event(
        &self,
        kind: EventKind,
        origin: &Origin,
        organization_id: Uuid,
        user_id: Uuid,
        role_keys: &[RoleKey],
    ) -> Event {
        let data = MemberData::new(organization_id, user_id, role_keys);
        Event::new(kind, origin, self.clock.as_ref(), &data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_lower_case_letters_digits_and_hyphens() {
        assert_eq!(parse_slug(" acme-2 "), Ok("acme-2".to_owned()));
        for bad in [
            "",
            "a",
            "Acme",
            "acme corp",
            "acme_corp",
            "ácme",
            &"a".repeat(64),
        ] {
            assert!(parse_slug(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
