//! Invitations by email. The link's token is stored only as a digest; only the user whose
//! verified email is the invited address can accept, and accepting again changes nothing.

use super::OrganizationStore;
use super::access::{Access, AccessControl};
use super::permissions::{RoleKey, SystemRole};
use super::quotas::QuotaService;
use crate::domain::clock::{Clock, truncate_to_micros};
use crate::domain::error::{Error, ErrorKind, FieldViolation, Missing, Result, Violations};
use crate::domain::events::{Event, EventKind, InvitationData, MemberData, Origin};
use crate::domain::mail::{MailJob, Mailer, Template};
use crate::domain::page::{Page, PageTokens};
use crate::domain::principal::Principal;
use crate::domain::rate::{Budget, RateLimits};
use crate::domain::secret;
use crate::domain::user::{EmailAddress, UserStore};
use chrono::{DateTime, Duration, Utc};
use std::sync::Arc;
use uuid::Uuid;

const DEFAULT_VALID_DAYS: i32 = 7;
const MAX_VALID_DAYS: i32 = 30;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invitation {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub organization_name: String,
    pub email: String,
    pub role_keys: Vec<RoleKey>,
    pub invited_by: Option<Uuid>,
    pub valid_days: i32,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub accepted_at: Option<DateTime<Utc>>,
    pub accepted_by: Option<Uuid>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvitationStatus {
    Pending,
    Accepted,
    Revoked,
    Expired,
}

impl Invitation {
    pub fn status(&self, now: DateTime<Utc>) -> InvitationStatus {
        if self.accepted_at.is_some() {
            InvitationStatus::Accepted
        } else if self.revoked_at.is_some() {
            InvitationStatus::Revoked
        } else if self.expires_at <= now {
            InvitationStatus::Expired
        } else {
            InvitationStatus::Pending
        }
    }
}

#[async_trait::async_trait]
pub trait InvitationStore: Send + Sync {
    /// Inserts the invitation, revoking any pending one to the same address in the
    /// organization.
    async fn insert_invitation(
        &self,
        invitation: &Invitation,
        token_digest: &[u8; 32],
        events: &[Event],
    ) -> Result<()>;
    async fn find_invitation(&self, organization_id: Uuid, id: Uuid) -> Result<Option<Invitation>>;
    async fn find_invitation_by_token(&self, token_digest: &[u8; 32])
    -> Result<Option<Invitation>>;
    /// Newest first, before `before` (by id).
    async fn list_invitations(
        &self,
        organization_id: Uuid,
        before: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<Invitation>>;
    /// Pending invitations to `email` at `now`, newest first.
    async fn list_pending_invitations(
        &self,
        email: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Invitation>>;
    /// A new token and expiry.
    async fn renew_invitation(
        &self,
        id: Uuid,
        token_digest: &[u8; 32],
        expires_at: DateTime<Utc>,
    ) -> Result<()>;
    async fn revoke_invitation(&self, id: Uuid, now: DateTime<Utc>, events: &[Event])
    -> Result<()>;
    /// Marks the invitation accepted and makes the user a member with `role_keys` (an
    /// existing member keeps their roles), atomically; fails with `QUOTA_EXCEEDED` (nothing
    /// written) when the organization would have more than `max_members`.
    async fn accept_invitation(
        &self,
        invitation: &Invitation,
        user_id: Uuid,
        role_keys: &[RoleKey],
        now: DateTime<Utc>,
        max_members: i64,
        events: &[Event],
    ) -> Result<()>;
    /// Deletes the invitations never accepted that expired, or were revoked, before `cutoff`
    /// (accepted ones stay: they tell how a member joined); answers how many.
    async fn delete_invitations_ended_before(&self, cutoff: DateTime<Utc>) -> Result<u64>;
}

fn invitation_closed() -> Error {
    Error::new(
        ErrorKind::FailedPrecondition,
        "INVITATION_CLOSED",
        "the invitation was already accepted or revoked",
    )
}

/// What the invitation use cases work with.
pub struct InvitationPorts {
    pub store: Arc<dyn InvitationStore>,
    pub users: Arc<dyn UserStore>,
    pub organizations: Arc<dyn OrganizationStore>,
    pub access: Arc<AccessControl>,
    pub quotas: Arc<QuotaService>,
    pub mailer: Arc<dyn Mailer>,
    pub pages: Arc<PageTokens>,
    pub rate_limits: Arc<RateLimits>,
    pub clock: Arc<dyn Clock>,
}

/// How much mail invitations may cause.
#[derive(Debug, Clone, Copy)]
pub struct InvitationBudgets {
    /// Invitations (new or resent) per organization.
    pub per_organization: Budget,
    /// Messages of any kind to one address.
    pub per_recipient: Budget,
}

pub struct InvitationService {
    store: Arc<dyn InvitationStore>,
    users: Arc<dyn UserStore>,
    organizations: Arc<dyn OrganizationStore>,
    access: Arc<AccessControl>,
    quotas: Arc<QuotaService>,
    mailer: Arc<dyn Mailer>,
    pages: Arc<PageTokens>,
    rate_limits: Arc<RateLimits>,
    budgets: InvitationBudgets,
    clock: Arc<dyn Clock>,
    /// Where mailed links point: `<link_base_url>/accept-invitation?token=…`.
    link_base_url: String,
}

impl InvitationService {
    /// Deletes invitations that ended (expired or revoked, never accepted) more than
    /// `retention` ago.
    pub async fn purge_ended(&self, retention: chrono::Duration) -> Result<u64> {
        let cutoff = truncate_to_micros(self.clock.now() - retention);
        let deleted = self.store.delete_invitations_ended_before(cutoff).await?;
        if deleted > 0 {
            tracing::info!(deleted, "ended invitations purged");
        }
        Ok(deleted)
    }

    pub fn new(ports: InvitationPorts, budgets: InvitationBudgets, link_base_url: String) -> Self {
        Self {
            store: ports.store,
            users: ports.users,
            organizations: ports.organizations,
            access: ports.access,
            quotas: ports.quotas,
            mailer: ports.mailer,
            pages: ports.pages,
            rate_limits: ports.rate_limits,
            budgets,
            clock: ports.clock,
            link_base_url,
        }
    }

    pub async fn create(
        &self,
        access: &Access,
        email: &str,
        roles: &[String],
        expires_in_days: Option<i32>,
    ) -> Result<Invitation> {
        let valid_days = expires_in_days.unwrap_or(DEFAULT_VALID_DAYS);
        let mut violations = Violations::default();
        let email = violations.check(EmailAddress::parse(email));
        if !(1..=MAX_VALID_DAYS).contains(&valid_days) {
            violations.push(FieldViolation::new(
                "expires_in_days",
                "INVALID_EXPIRY",
                format!("must be between 1 and {MAX_VALID_DAYS}"),
            ));
        }
        let Some(email) = email else {
            return Err(violations.into_error());
        };
        violations.finish()?;
        let role_keys = self.access.grantable_roles(access, roles).await?;
        let organization = self
            .organizations
            .find_organization(access.organization_id)
            .await?
            .ok_or(Missing::Organization)?;
        if self
            .organizations
            .is_member_by_email(access.organization_id, email.as_str())
            .await?
        {
            return Err(Error::already_exists(
                "ALREADY_MEMBER",
                "this address belongs to a member already",
            ));
        }
        self.admit_mail(organization.id, email.as_str()).await?;
        let now = truncate_to_micros(self.clock.now());
        let invitation = Invitation {
            id: Uuid::now_v7(),
            organization_id: organization.id,
            organization_name: organization.name,
            email: email.as_str().to_owned(),
            role_keys,
            invited_by: Some(access.user_id()),
            valid_days,
            created_at: now,
            expires_at: now + Duration::days(valid_days.into()),
            accepted_at: None,
            accepted_by: None,
            revoked_at: None,
        };
        let token = secret::generate();
        let created = self.event(EventKind::InvitationCreated, &access.origin(), &invitation);
        self.store
            .insert_invitation(&invitation, &secret::digest(&token), &[created])
            .await?;
        self.mail(access, &invitation, &token).await;
        tracing::info!(organization_id = %invitation.organization_id, invitation_id = %invitation.id, by = %access.user_id(), "invitation sent");
        Ok(invitation)
    }

    /// One more invitation mail from the organization to `email`: within both budgets,
    /// checked before the invitation is stored.
    async fn admit_mail(&self, organization_id: Uuid, email: &str) -> Result<()> {
        self.rate_limits
            .admit(
                &format!("invitations:{organization_id}"),
                self.budgets.per_organization,
                "the organization sent too many invitations lately, try again later",
            )
            .await?;
        self.rate_limits
            .admit_mail_to(email, self.budgets.per_recipient)
            .await
    }

    /// Queues the invitation's mail; if that fails, the invitation stands and can be resent.
    async fn mail(&self, access: &Access, invitation: &Invitation, token: &str) {
        let inviter = &access.principal.user;
        let inviter = if inviter.full_name.is_empty() {
            inviter.email.clone()
        } else {
            format!("{} ({})", inviter.full_name, inviter.email)
        };
        let link = format!("{}/accept-invitation?token={token}", self.link_base_url);
        let mail = Template::Invitation.render(
            &invitation.email,
            &[
                ("inviter", &inviter),
                ("organization", &invitation.organization_name),
                ("link", &link),
                ("days", &invitation.valid_days.to_string()),
            ],
        );
        if let Err(error) = self.mailer.send_later(MailJob::Rendered(mail)).await {
            tracing::warn!(invitation_id = %invitation.id, %error, "invitation mail not queued");
        }
    }

    pub async fn list(
        &self,
        access: &Access,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<Invitation>> {
        let list = format!("invitations:{}", access.organization_id);
        let request = self.pages.request(&list, page_size, page_token)?;
        let rows = self
            .store
            .list_invitations(access.organization_id, request.after, request.fetch_limit())
            .await?;
        Ok(self
            .pages
            .page(&list, request, rows, |invitation| invitation.id))
    }

    pub async fn get(&self, access: &Access, id: Uuid) -> Result<Invitation> {
        self.store
            .find_invitation(access.organization_id, id)
            .await?
            .ok_or_else(|| Missing::Invitation.into())
    }

    pub async fn resend(&self, access: &Access, id: Uuid) -> Result<Invitation> {
        let mut invitation = self.get(access, id).await?;
        let now = truncate_to_micros(self.clock.now());
        if matches!(
            invitation.status(now),
            InvitationStatus::Accepted | InvitationStatus::Revoked
        ) {
            return Err(invitation_closed());
        }
        self.admit_mail(invitation.organization_id, &invitation.email)
            .await?;
        let token = secret::generate();
        invitation.expires_at = now + Duration::days(invitation.valid_days.into());
        self.store
            .renew_invitation(
                invitation.id,
                &secret::digest(&token),
                invitation.expires_at,
            )
            .await?;
        self.mail(access, &invitation, &token).await;
        Ok(invitation)
    }

    pub async fn revoke(&self, access: &Access, id: Uuid) -> Result<()> {
        let invitation = self.get(access, id).await?;
        let now = truncate_to_micros(self.clock.now());
        if matches!(
            invitation.status(now),
            InvitationStatus::Accepted | InvitationStatus::Revoked
        ) {
            return Err(invitation_closed());
        }
        let revoked = self.event(EventKind::InvitationRevoked, &access.origin(), &invitation);
        self.store
            .revoke_invitation(invitation.id, now, &[revoked])
            .await?;
        tracing::info!(organization_id = %access.organization_id, invitation_id = %invitation.id, by = %access.user_id(), "invitation revoked");
        Ok(())
    }

    fn event(&self, kind: EventKind, origin: &Origin, invitation: &Invitation) -> Event {
        let data = InvitationData::new(
            invitation.id,
            invitation.organization_id,
            &invitation.email,
            &invitation.role_keys,
        );
        Event::new(kind, origin, self.clock.as_ref(), &data)
    }

    fn ensure_verified(caller: &Principal) -> Result<()> {
        if caller.user.email_verified {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::FailedPrecondition,
            "EMAIL_NOT_VERIFIED",
            "verify your email address first: invitations go to verified addresses only",
        ))
    }

    pub async fn list_mine(&self, caller: &Principal) -> Result<Vec<Invitation>> {
        caller.session_id()?;
        Self::ensure_verified(caller)?;
        self.store
            .list_pending_invitations(&caller.user.email, self.clock.now())
            .await
    }

    /// The roles of a pending invitation that its inviter may still grant: an invitation
    /// never grants more than its inviter holds when it is accepted. An inviter who left the
    /// organization or lost `invitation:create` withdraws it, as does the loss of every role
    /// it grants.
    async fn still_grantable(
        &self,
        invitation: &Invitation,
        role_keys: Vec<RoleKey>,
    ) -> Result<Vec<RoleKey>> {
        let withdrawn = || {
            Error::new(
                ErrorKind::FailedPrecondition,
                "INVITATION_WITHDRAWN",
                "whoever invited you may no longer grant this invitation: ask for a new one",
            )
        };
        let inviter = match invitation.invited_by {
            Some(id) => self.users.find_user(id).await?,
            None => None,
        };
        let Some(inviter) = inviter.filter(|inviter| inviter.is_active) else {
            return Err(withdrawn());
        };
        if inviter.is_superuser {
            return Ok(role_keys);
        }
        let organization_id = invitation.organization_id;
        let Some(held) = self
            .access
            .member_permissions(organization_id, inviter.id)
            .await?
            .filter(|held| held.contains("invitation:create"))
        else {
            return Err(withdrawn());
        };
        let mut grantable = Vec::new();
        for key in role_keys {
            let wanted = self
                .access
                .permissions_of(organization_id, std::slice::from_ref(&key))
                .await?;
            if wanted.is_subset_of(held) {
                grantable.push(key);
            }
        }
        if grantable.is_empty() {
            return Err(withdrawn());
        }
        Ok(grantable)
    }

    /// Joins the caller to the invitation's organization; answers it with the caller's role
    /// names there.
    pub async fn accept(&self, caller: &Principal, token: &str) -> Result<(Uuid, Vec<String>)> {
        caller.session_id()?;
        let invitation = self
            .store
            .find_invitation_by_token(&secret::digest(token.trim()))
            .await?
            .ok_or(Missing::Invitation)?;
        if invitation.email != caller.user.email {
            return Err(Error::permission_denied(
                "INVITATION_EMAIL_MISMATCH",
                "this invitation is for another email address",
            ));
        }
        Self::ensure_verified(caller)?;
        let now = truncate_to_micros(self.clock.now());
        match invitation.status(now) {
            InvitationStatus::Revoked => return Err(Missing::Invitation.into()),
            InvitationStatus::Accepted if invitation.accepted_by != Some(caller.user.id) => {
                return Err(Missing::Invitation.into());
            }
            InvitationStatus::Expired => {
                return Err(Error::new(
                    ErrorKind::FailedPrecondition,
                    "INVITATION_EXPIRED",
                    "the invitation expired: ask for a new one",
                ));
            }
            InvitationStatus::Accepted => {}
            InvitationStatus::Pending => {
                let custom_roles = self.access.custom_roles(invitation.organization_id).await?;
                let mut role_keys: Vec<RoleKey> = invitation
                    .role_keys
                    .iter()
                    .filter(|key| match key {
                        RoleKey::System(_) => true,
                        RoleKey::Custom(id) => custom_roles.iter().any(|role| role.id == *id),
                    })
                    .copied()
                    .collect();
                if role_keys.is_empty() {
                    role_keys.push(RoleKey::System(SystemRole::Member));
                }
                let role_keys = self.still_grantable(&invitation, role_keys).await?;
                let max_members = self
                    .quotas
                    .limits(invitation.organization_id)
                    .await?
                    .max_users;
                let origin = Origin::from(caller);
                let mut events =
                    vec![self.event(EventKind::InvitationAccepted, &origin, &invitation)];
                let organization_id = invitation.organization_id;
                let already_member = self
                    .organizations
                    .find_member_grants(organization_id, caller.user.id)
                    .await?
                    .is_some();
                if !already_member {
                    let data = MemberData::new(organization_id, caller.user.id, &role_keys);
                    let kind = EventKind::MemberAdded;
                    events.push(Event::new(kind, &origin, self.clock.as_ref(), &data));
                }
                let accepted = self
                    .store
                    .accept_invitation(
                        &invitation,
                        caller.user.id,
                        &role_keys,
                        now,
                        max_members,
                        &events,
                    )
                    .await;
                self.quotas
                    .watch_members(&origin, organization_id, max_members, accepted)
                    .await?;
                self.access
                    .forget_member(invitation.organization_id, caller.user.id)
                    .await?;
                tracing::info!(organization_id = %invitation.organization_id, invitation_id = %invitation.id, user_id = %caller.user.id, "invitation accepted");
            }
        }
        let role_keys = self
            .organizations
            .find_member_grants(invitation.organization_id, caller.user.id)
            .await?
            .map(|grants| grants.role_keys)
            .unwrap_or_default();
        let roles = self
            .access
            .role_names(invitation.organization_id, &role_keys)
            .await?;
        Ok((invitation.organization_id, roles))
    }

    /// Where the invitation stands now.
    pub fn status(&self, invitation: &Invitation) -> InvitationStatus {
        invitation.status(self.clock.now())
    }

    /// Role keys as names, for display.
    pub async fn role_names(&self, invitation: &Invitation) -> Result<Vec<String>> {
        self.access
            .role_names(invitation.organization_id, &invitation.role_keys)
            .await
    }
}
