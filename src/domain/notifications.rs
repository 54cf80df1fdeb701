//! In-app notifications: each is one user's, sent by an operator (to one user, to every active
//! user, or to an organization's members). A user reads, marks and deletes only their own.

use super::clock::{Clock, truncate_to_micros};
use super::error::{Error, FieldViolation, Missing, Result};
use super::events::{Event, EventKind, NotificationData, Origin, StoredEvent};
use super::page::{Page, PageTokens};
use super::principal::Principal;
use chrono::{DateTime, Utc};
use std::sync::Arc;
use uuid::Uuid;

/// A notification's `data` is at most this much JSON.
const MAX_DATA_BYTES: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotificationKind {
    Info,
    Success,
    Warning,
    Error,
}

impl NotificationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Success => "success",
            Self::Warning => "warning",
            Self::Error => "error",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Info, Self::Success, Self::Warning, Self::Error]
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub id: Uuid,
    pub user_id: Uuid,
    pub kind: NotificationKind,
    pub title: String,
    pub body: String,
    pub link: Option<String>,
    /// A JSON object for the client.
    pub data: serde_json::Map<String, serde_json::Value>,
    pub read_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// What an operator sends.
#[derive(Debug, Clone, PartialEq)]
pub struct NewNotification {
    pub kind: NotificationKind,
    pub title: String,
    pub body: String,
    pub link: Option<String>,
    pub data: serde_json::Map<String, serde_json::Value>,
}

/// Who a broadcast reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// Every active user.
    Everyone,
    /// The active members of one organization.
    Organization(Uuid),
}

/// The `notification.created` events of `notifications`.
pub fn notification_events(
    notifications: &[Notification],
    origin: &Origin,
    clock: &dyn Clock,
) -> Vec<Event> {
    notifications
        .iter()
        .map(|notification| {
            Event::new(
                EventKind::NotificationCreated,
                origin,
                clock,
                &NotificationData::from(notification),
            )
        })
        .collect()
}

#[async_trait::async_trait]
pub trait NotificationStore: Send + Sync {
    /// Stores `notifications` with their `events`, atomically. Fails with `Missing::User` when
    /// a user does not exist.
    async fn insert_notifications(
        &self,
        notifications: &[Notification],
        events: &[Event],
    ) -> Result<()>;
    /// The users a broadcast to `audience` reaches (the active ones). Fails with
    /// `Missing::Organization` for an unknown organization.
    async fn audience(&self, audience: Audience) -> Result<Vec<Uuid>>;
    async fn find_notification(&self, user_id: Uuid, id: Uuid) -> Result<Option<Notification>>;
    /// A user's notifications, newest first, before `before` (by id), at most `limit`.
    async fn list_notifications(
        &self,
        user_id: Uuid,
        unread_only: bool,
        before: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<Notification>>;
    async fn count_unread_notifications(&self, user_id: Uuid) -> Result<u64>;
    /// Marks one read (if it is not yet); answers whether the user has it.
    async fn mark_notification_read(
        &self,
        user_id: Uuid,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<bool>;
    /// Marks every unread one read; answers how many.
    async fn mark_all_notifications_read(&self, user_id: Uuid, now: DateTime<Utc>) -> Result<u64>;
    /// Answers whether the user had it.
    async fn delete_notification(&self, user_id: Uuid, id: Uuid) -> Result<bool>;
    /// Deletes the read ones; answers how many.
    async fn delete_read_notifications(&self, user_id: Uuid) -> Result<u64>;
}

/// A page of a user's notifications, with how many of all theirs are unread.
pub struct NotificationPage {
    pub page: Page<Notification>,
    pub unread_count: u64,
}

pub struct NotificationService {
    store: Arc<dyn NotificationStore>,
    pages: Arc<PageTokens>,
    clock: Arc<dyn Clock>,
}

fn check_data(notification: &NewNotification) -> Result<()> {
    let size = serde_json::to_vec(&notification.data).map_or(usize::MAX, |json| json.len());
    if size > MAX_DATA_BYTES {
        return Err(Error::invalid_fields(vec![FieldViolation::new(
            "data",
            "INVALID_DATA",
            format!("must be at most {MAX_DATA_BYTES} bytes of JSON"),
        )]));
    }
    Ok(())
}

impl NotificationService {
    pub fn new(
        store: Arc<dyn NotificationStore>,
        pages: Arc<PageTokens>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            pages,
            clock,
        }
    }

    fn stamped(&self, user_id: Uuid, new: NewNotification) -> Notification {
        Notification {
            id: Uuid::now_v7(),
            user_id,
            kind: new.kind,
            title: new.title,
            body: new.body,
            link: new.link,
            data: new.data,
            read_at: None,
            created_at: truncate_to_micros(self.clock.now()),
        }
    }

    /// Sends `new` to user `user_id` (an operator's call: the guard checked the permission).
    pub async fn send(
        &self,
        sender: &Principal,
        user_id: Uuid,
        new: NewNotification,
    ) -> Result<Notification> {
        check_data(&new)?;
        let notification = self.stamped(user_id, new);
        let notifications = [notification];
        let events = notification_events(&notifications, &Origin::from(sender), &*self.clock);
        self.store
            .insert_notifications(&notifications, &events)
            .await?;
        let [notification] = notifications;
        Ok(notification)
    }

    /// Sends `new` to each user of `audience`; answers how many it reached.
    pub async fn broadcast(
        &self,
        sender: &Principal,
        audience: Audience,
        new: NewNotification,
    ) -> Result<u64> {
        check_data(&new)?;
        let notifications: Vec<Notification> = self
            .store
            .audience(audience)
            .await?
            .into_iter()
            .map(|user_id| self.stamped(user_id, new.clone()))
            .collect();
        let events = notification_events(&notifications, &Origin::from(sender), &*self.clock);
        self.store
            .insert_notifications(&notifications, &events)
            .await?;
        Ok(notifications.len() as u64)
    }

    pub async fn list(
        &self,
        caller: &Principal,
        unread_only: bool,
        page_size: i32,
        page_token: &str,
    ) -> Result<NotificationPage> {
        let list = if unread_only {
            "notifications-unread"
        } else {
            "notifications"
        };
        let request = self.pages.request(list, page_size, page_token)?;
        let rows = self
            .store
            .list_notifications(
                caller.user.id,
                unread_only,
                request.after,
                request.fetch_limit(),
            )
            .await?;
        Ok(NotificationPage {
            page: self
                .pages
                .page(list, request, rows, |notification| notification.id),
            unread_count: self.unread_count(caller).await?,
        })
    }

    pub async fn unread_count(&self, caller: &Principal) -> Result<u64> {
        self.store.count_unread_notifications(caller.user.id).await
    }

    pub async fn get(&self, caller: &Principal, id: Uuid) -> Result<Notification> {
        self.store
            .find_notification(caller.user.id, id)
            .await?
            .ok_or_else(|| Missing::Notification.into())
    }

    pub async fn mark_read(&self, caller: &Principal, id: Uuid) -> Result<Notification> {
        let now = truncate_to_micros(self.clock.now());
        if !self
            .store
            .mark_notification_read(caller.user.id, id, now)
            .await?
        {
            return Err(Missing::Notification.into());
        }
        self.get(caller, id).await
    }

    pub async fn mark_all_read(&self, caller: &Principal) -> Result<u64> {
        let now = truncate_to_micros(self.clock.now());
        self.store
            .mark_all_notifications_read(caller.user.id, now)
            .await
    }

    pub async fn delete(&self, caller: &Principal, id: Uuid) -> Result<()> {
        if self.store.delete_notification(caller.user.id, id).await? {
            Ok(())
        } else {
            Err(Missing::Notification.into())
        }
    }

    pub async fn delete_read(&self, caller: &Principal) -> Result<u64> {
        self.store.delete_read_notifications(caller.user.id).await
    }
}

/// Whether a user signed in before, in sessions other than the one in question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EarlierSignIns {
    pub any: bool,
    /// From the same user agent.
    pub same_agent: bool,
}

/// What Keel's own notices look up.
#[async_trait::async_trait]
pub trait NoticeDirectory: Send + Sync {
    /// The active user with this address, if any.
    async fn active_user_by_email(&self, email: &str) -> Result<Option<Uuid>>;
    /// The owners and admins of an organization.
    async fn organization_admins(&self, organization_id: Uuid) -> Result<Vec<Uuid>>;
    async fn earlier_sign_ins(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        user_agent: Option<&str>,
    ) -> Result<EarlierSignIns>;
}

/// Keel's own notices: what a user should know about their account, read from its events by
/// the dispatcher, which stores them with the events' audit entries.
pub struct SecurityNotices {
    directory: Arc<dyn NoticeDirectory>,
}

/// A notice before its recipients are known.
struct Notice {
    kind: NotificationKind,
    title: &'static str,
    body: String,
}

impl SecurityNotices {
    pub fn new(directory: Arc<dyn NoticeDirectory>) -> Self {
        Self { directory }
    }

    /// The notifications these events call for, in event order.
    pub async fn for_events(&self, events: &[StoredEvent]) -> Result<Vec<Notification>> {
        let mut notifications = Vec::new();
        for stored in events {
            let event = &stored.event;
            let Some((recipients, notice)) = self.notice(event).await? else {
                continue;
            };
            let mut data = serde_json::Map::new();
            data.insert("event_id".into(), event.id.to_string().into());
            data.insert("event_type".into(), event.kind.name().into());
            notifications.extend(recipients.into_iter().map(|user_id| Notification {
                id: Uuid::now_v7(),
                user_id,
                kind: notice.kind,
                title: notice.title.to_owned(),
                body: notice.body.clone(),
                link: None,
                data: data.clone(),
                read_at: None,
                created_at: event.occurred_at,
            }));
        }
        Ok(notifications)
    }

    /// Who hears of `event`, and what.
    async fn notice(&self, event: &Event) -> Result<Option<(Vec<Uuid>, Notice)>> {
        use NotificationKind::{Info, Warning};
        let data: serde_json::Value = serde_json::from_str(&event.data).unwrap_or_default();
        let text = |field: &str| data[field].as_str().unwrap_or_default().to_owned();
        let id = |field: &str| {
            data[field]
                .as_str()
                .and_then(|text| Uuid::parse_str(text).ok())
        };
        let to_user = |kind, title, body: &str| {
            id("user_id").map(|user_id| {
                (
                    vec![user_id],
                    Notice {
                        kind,
                        title,
                        body: body.to_owned(),
                    },
                )
            })
        };
        let not_you = "If this was not you, reset your password and sign out your other devices.";
        Ok(match event.kind {
            EventKind::UserPasswordChanged => {
                to_user(Warning, "Your password was changed", not_you)
            }
            EventKind::UserPasswordReset => to_user(Warning, "Your password was reset", not_you),
            EventKind::UserMfaDisabled => to_user(
                Warning,
                "Two-factor authentication was turned off",
                "Your account now signs in with the password alone. If this was not you, \
                 reset your password and turn it on again.",
            ),
            EventKind::ApiKeyCreated => to_user(
                Info,
                "A new API key was created",
                &format!(
                    "\"{}\" ({}…). If this was not you, revoke it and reset your password.",
                    text("name"),
                    text("prefix")
                ),
            ),
            EventKind::SessionCreated => {
                let Some(user_id) = id("user_id") else {
                    return Ok(None);
                };
                let Ok(session_id) = Uuid::parse_str(&event.subject_id) else {
                    return Ok(None);
                };
                let agent = event.origin.client.user_agent.as_deref();
                let earlier = self
                    .directory
                    .earlier_sign_ins(user_id, session_id, agent)
                    .await?;
                // The first sign-in is no news; a known device neither.
                if !earlier.any || earlier.same_agent {
                    return Ok(None);
                }
                let device = super::auth::device::describe(agent);
                let address = event
                    .origin
                    .client
                    .ip_address
                    .as_deref()
                    .unwrap_or("unknown");
                Some((
                    vec![user_id],
                    Notice {
                        kind: Warning,
                        title: "New sign-in from a new device",
                        body: format!(
                            "{} on {} ({}), from {address}. If this was not you, reset your \
                             password and sign out your other devices.",
                            device.browser, device.os, device.device_type
                        ),
                    },
                ))
            }
            EventKind::InvitationCreated => {
                let Some(user_id) = self.directory.active_user_by_email(&text("email")).await?
                else {
                    return Ok(None);
                };
                Some((
                    vec![user_id],
                    Notice {
                        kind: Info,
                        title: "You were invited to an organization",
                        body: "Accept or decline it among your invitations.".to_owned(),
                    },
                ))
            }
            EventKind::WebhookDisabled => {
                let Some(organization_id) = event.organization_id else {
                    return Ok(None);
                };
                let admins = self.directory.organization_admins(organization_id).await?;
                Some((
                    admins,
                    Notice {
                        kind: Warning,
                        title: "A webhook was turned off",
                        body: format!("{}: {}.", text("url"), text("disabled_reason")),
                    },
                ))
            }
            _ => None,
        })
    }
}
