//! The user directory: who may see which accounts. Superusers see everyone; other users see
//! themselves and the people they share an organization with (within its organization for a
//! bound API key); anyone else is not found.

use super::OrganizationStore;
use crate::domain::error::{Missing, Result};
use crate::domain::page::{Page, PageTokens};
use crate::domain::principal::{Credential, Principal};
use crate::domain::user::{User, UserQuery, UserStore};
use std::sync::Arc;
use uuid::Uuid;

pub struct UserDirectory {
    users: Arc<dyn UserStore>,
    organizations: Arc<dyn OrganizationStore>,
    pages: Arc<PageTokens>,
}

impl UserDirectory {
    pub fn new(
        users: Arc<dyn UserStore>,
        organizations: Arc<dyn OrganizationStore>,
        pages: Arc<PageTokens>,
    ) -> Self {
        Self {
            users,
            organizations,
            pages,
        }
    }

    /// Every user matching `query` (the caller was admitted as a superuser).
    pub async fn list(
        &self,
        query: &UserQuery,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<User>> {
        let request = self.pages.request("users", page_size, page_token)?;
        let rows = self
            .users
            .list_users(query, request.after, request.fetch_limit())
            .await?;
        Ok(self.pages.page("users", request, rows, |user| user.id))
    }

    pub async fn get(&self, caller: &Principal, user_id: Uuid) -> Result<User> {
        let bound = match &caller.credential {
            Credential::ApiKey {
                organization_id, ..
            } => *organization_id,
            Credential::Session(_) => None,
        };
        let visible = user_id == caller.user.id
            || (caller.user.is_superuser && bound.is_none())
            || self
                .organizations
                .shares_organization(caller.user.id, user_id, bound)
                .await?;
        if !visible {
            return Err(Missing::User.into());
        }
        self.users
            .find_user(user_id)
            .await?
            .ok_or_else(|| Missing::User.into())
    }
}
