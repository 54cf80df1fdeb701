//! Custom roles of an organization, next to the fixed system roles. A caller may create, change
//! or delete only roles whose permissions they hold, so a role can never be a way up.

use super::access::{Access, AccessControl};
use super::permissions::{self, PermissionSet, SystemRole};
use super::{CustomRole, OrganizationStore, parse_description, role_name_taken};
use crate::domain::clock::{Clock, truncate_to_micros};
use crate::domain::error::{Error, ErrorKind, FieldViolation, Missing, Result, Violations};
use crate::domain::events::{Event, EventKind, RoleData};
use chrono::{DateTime, Utc};
use std::sync::Arc;
use uuid::Uuid;

const MAX_CUSTOM_ROLES: usize = 100;

/// A system or custom role as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleView {
    /// The name for system roles, the UUID for custom roles.
    pub id: String,
    pub name: String,
    pub description: String,
    pub permissions: PermissionSet,
    pub system: bool,
    pub created_at: Option<DateTime<Utc>>,
    pub updated_at: Option<DateTime<Utc>>,
}

impl From<SystemRole> for RoleView {
    fn from(role: SystemRole) -> Self {
        Self {
            id: role.name().to_owned(),
            name: role.name().to_owned(),
            description: role.description().to_owned(),
            permissions: role.permissions(),
            system: true,
            created_at: None,
            updated_at: None,
        }
    }
}

impl From<CustomRole> for RoleView {
    fn from(role: CustomRole) -> Self {
        Self {
            id: role.id.to_string(),
            name: role.name,
            description: role.description,
            permissions: role.permissions,
            system: false,
            created_at: Some(role.created_at),
            updated_at: Some(role.updated_at),
        }
    }
}

/// The system roles' names are taken in every organization.
fn refuse_system_name(name: &str) -> Result<()> {
    match SystemRole::parse(name) {
        Some(_) => Err(role_name_taken()),
        None => Ok(()),
    }
}

fn system_role() -> Error {
    Error::new(
        ErrorKind::FailedPrecondition,
        "SYSTEM_ROLE",
        "system roles (owner, admin, member, viewer) cannot be changed or deleted",
    )
}

fn parse_role_name(raw: &str) -> Result<String, FieldViolation> {
    let name = raw.trim();
    let well_formed = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !well_formed {
        return Err(FieldViolation::new(
            "name",
            "INVALID_ROLE_NAME",
            "must be 1 to 64 characters of a-z, 0-9, - and _, starting with a letter or digit",
        ));
    }
    if Uuid::parse_str(name).is_ok() {
        return Err(FieldViolation::new(
            "name",
            "INVALID_ROLE_NAME",
            "must not look like a role id",
        ));
    }
    Ok(name.to_owned())
}

/// Parses permission names that an organization role may carry.
fn parse_permissions(field: &str, names: &[String]) -> Result<PermissionSet, Vec<FieldViolation>> {
    let mut set = PermissionSet::EMPTY;
    let mut violations = Vec::new();
    for name in names {
        let name = name.trim();
        match permissions::find(name).map(|index| &permissions::CATALOG[index]) {
            Some(info) if !info.platform => {
                set.insert(name);
            }
            Some(_) => violations.push(FieldViolation::new(
                field,
                "UNKNOWN_PERMISSION",
                format!("{name} is a platform permission, held by superusers only"),
            )),
            None => violations.push(FieldViolation::new(
                field,
                "UNKNOWN_PERMISSION",
                format!("{name:?} is not in the permission catalog (GET /api/v1/permissions)"),
            )),
        }
    }
    if violations.is_empty() {
        Ok(set)
    } else {
        Err(violations)
    }
}

pub struct RoleService {
    store: Arc<dyn OrganizationStore>,
    access: Arc<AccessControl>,
    clock: Arc<dyn Clock>,
}

impl RoleService {
    pub fn new(
        store: Arc<dyn OrganizationStore>,
        access: Arc<AccessControl>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            access,
            clock,
        }
    }

    /// System roles first, then custom roles by name.
    pub async fn list(&self, access: &Access) -> Result<Vec<RoleView>> {
        let mut custom_roles = self.access.custom_roles(access.organization_id).await?;
        custom_roles.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(SystemRole::ALL
            .into_iter()
            .map(RoleView::from)
            .chain(custom_roles.into_iter().map(RoleView::from))
            .collect())
    }

    /// A role by id or name.
    pub async fn get(&self, access: &Access, reference: &str) -> Result<RoleView> {
        let reference = reference.trim();
        if let Some(role) = SystemRole::parse(reference) {
            return Ok(role.into());
        }
        self.find_custom(access, reference)
            .await
            .map(RoleView::from)
    }

    async fn find_custom(&self, access: &Access, reference: &str) -> Result<CustomRole> {
        let reference = reference.trim();
        if SystemRole::parse(reference).is_some() {
            return Err(system_role());
        }
        self.access
            .custom_roles(access.organization_id)
            .await?
            .into_iter()
            .find(|role| role.name == reference || role.id.to_string() == reference)
            .ok_or_else(|| Missing::Role.into())
    }

    pub async fn create(
        &self,
        access: &Access,
        name: &str,
        description: &str,
        permission_names: &[String],
    ) -> Result<RoleView> {
        let mut violations = Violations::default();
        let name = violations.check(parse_role_name(name));
        let description = violations.check(parse_description(description));
        let permissions = parse_permissions("permissions", permission_names)
            .map_err(|found| found.into_iter().for_each(|v| violations.push(v)))
            .ok();
        let (Some(name), Some(description), Some(permissions)) = (name, description, permissions)
        else {
            return Err(violations.into_error());
        };
        refuse_system_name(&name)?;
        access.ensure_covers(permissions)?;
        if self
            .access
            .custom_roles(access.organization_id)
            .await?
            .len()
            >= MAX_CUSTOM_ROLES
        {
            return Err(Error::new(
                ErrorKind::ResourceExhausted,
                "TOO_MANY_ROLES",
                format!("an organization has at most {MAX_CUSTOM_ROLES} custom roles"),
            ));
        }
        let now = truncate_to_micros(self.clock.now());
        let role = CustomRole {
            id: Uuid::now_v7(),
            organization_id: access.organization_id,
            name,
            description,
            permissions,
            created_at: now,
            updated_at: now,
        };
        let created = self.event(EventKind::RoleCreated, access, &role);
        self.store.insert_role(&role, &[created]).await?;
        self.access.forget_roles(access.organization_id).await?;
        tracing::info!(organization_id = %access.organization_id, role_id = %role.id, "role created");
        Ok(role.into())
    }

    pub async fn update(
        &self,
        access: &Access,
        reference: &str,
        name: Option<&str>,
        description: Option<&str>,
    ) -> Result<RoleView> {
        let mut role = self.find_custom(access, reference).await?;
        access.ensure_covers(role.permissions)?;
        let mut violations = Violations::default();
        violations.update(&mut role.name, name.map(parse_role_name));
        violations.update(&mut role.description, description.map(parse_description));
        violations.finish()?;
        refuse_system_name(&role.name)?;
        self.save(access, role).await
    }

    async fn save(&self, access: &Access, mut role: CustomRole) -> Result<RoleView> {
        role.updated_at = truncate_to_micros(self.clock.now());
        let updated = self.event(EventKind::RoleUpdated, access, &role);
        self.store.update_role(&role, &[updated]).await?;
        self.access.forget_roles(access.organization_id).await?;
        Ok(role.into())
    }

    pub async fn delete(&self, access: &Access, reference: &str) -> Result<()> {
        let role = self.find_custom(access, reference).await?;
        access.ensure_covers(role.permissions)?;
        let holders = self
            .store
            .delete_role(
                access.organization_id,
                role.id,
                &[self.event(EventKind::RoleDeleted, access, &role)],
            )
            .await?;
        self.access.forget_roles(access.organization_id).await?;
        for user_id in holders {
            self.access
                .forget_member(access.organization_id, user_id)
                .await?;
        }
        tracing::info!(organization_id = %access.organization_id, role_id = %role.id, "role deleted");
        Ok(())
    }

    fn event(&self, kind: EventKind, access: &Access, role: &CustomRole) -> Event {
        let data = RoleData {
            role_id: role.id,
            organization_id: role.organization_id,
            name: role.name.clone(),
            permissions: role.permissions.names(),
        };
        Event::new(kind, &access.origin(), self.clock.as_ref(), &data)
    }

    pub async fn add_permission(
        &self,
        access: &Access,
        reference: &str,
        permission: &str,
    ) -> Result<RoleView> {
        let mut role = self.find_custom(access, reference).await?;
        // Named in the path: a permission outside the catalog is not found.
        let added = parse_permissions("permission", &[permission.to_owned()]).map_err(|_| {
            Error::not_found(
                "PERMISSION_NOT_FOUND",
                format!("{permission:?} is no organization permission (GET /api/v1/permissions)"),
            )
        })?;
        access.ensure_covers(role.permissions.union(added))?;
        if added.is_subset_of(role.permissions) {
            return Ok(role.into());
        }
        role.permissions = role.permissions.union(added);
        self.save(access, role).await
    }

    pub async fn remove_permission(
        &self,
        access: &Access,
        reference: &str,
        permission: &str,
    ) -> Result<RoleView> {
        let mut role = self.find_custom(access, reference).await?;
        access.ensure_covers(role.permissions)?;
        if !role.permissions.contains(permission.trim()) {
            return Ok(role.into());
        }
        role.permissions.remove(permission.trim());
        self.save(access, role).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_keys_distinct_from_ids() {
        assert_eq!(
            parse_role_name("billing-manager"),
            Ok("billing-manager".to_owned())
        );
        for bad in ["", "Billing", "-x", "a b", &Uuid::now_v7().to_string()] {
            assert!(parse_role_name(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn system_role_names_are_taken() {
        assert_eq!(
            refuse_system_name("owner").map_err(|error| error.reason),
            Err("ROLE_NAME_TAKEN")
        );
        assert!(refuse_system_name("billing-manager").is_ok());
    }

    #[test]
    fn roles_carry_only_organization_permissions() {
        let set = parse_permissions("permissions", &["team:read".into(), "member:read".into()]);
        assert_eq!(
            set.map(PermissionSet::names),
            Ok(vec!["member:read".into(), "team:read".into()])
        );
        let errors = parse_permissions("permissions", &["mail:read".into(), "nope".into()]);
        assert_eq!(errors.map_err(|v| v.len()), Err(2));
    }
}
