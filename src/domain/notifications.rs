//! In-app notifications: each is one user's, sent by an operator (to one user, to every active
//! user, or to an organization's members). A user reads, marks and deletes only their own.

use super::clock::{Clock, truncate_to_micros};
use super::error::{Error, FieldViolation, Missing, Result};
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
    /// The members of one organization.
    Organization(Uuid),
}

#[async_trait::async_trait]
pub trait NotificationStore: Send + Sync {
    /// Fails with `Missing::User` when its user does not exist.
    async fn insert_notification(&self, notification: &Notification) -> Result<()>;
    /// Sends `template` (its id and user ignored) to each user of `audience`, each with a new
    /// id; answers how many.
    async fn broadcast_notification(
        &self,
        template: &Notification,
        audience: Audience,
    ) -> Result<u64>;
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
    pub async fn send(&self, user_id: Uuid, new: NewNotification) -> Result<Notification> {
        check_data(&new)?;
        let notification = self.stamped(user_id, new);
        self.store.insert_notification(&notification).await?;
        Ok(notification)
    }

    /// Sends `new` to each user of `audience`; answers how many it reached.
    pub async fn broadcast(&self, audience: Audience, new: NewNotification) -> Result<u64> {
        check_data(&new)?;
        let template = self.stamped(Uuid::nil(), new);
        self.store.broadcast_notification(&template, audience).await
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
