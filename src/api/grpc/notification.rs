//! `keel.notification.v1.NotificationService`.

use super::{count_i32, id, json_to_struct, principal, struct_to_json, timestamp};
use crate::api::pb::keel::notification::v1::notification_service_server::NotificationService as NotificationRpc;
use crate::api::pb::keel::notification::v1::*;
use crate::domain::notifications::{
    self, Audience, NewNotification, NotificationKind, NotificationService,
};
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct NotificationApi {
    notifications: Arc<NotificationService>,
}

impl NotificationApi {
    pub fn new(notifications: Arc<NotificationService>) -> Self {
        Self { notifications }
    }
}

fn notification_to_proto(notification: notifications::Notification) -> Notification {
    Notification {
        id: notification.id.to_string(),
        user_id: notification.user_id.to_string(),
        r#type: notification.kind.as_str().to_owned(),
        title: notification.title,
        body: notification.body,
        link: notification.link.unwrap_or_default(),
        data: Some(json_to_struct(notification.data)),
        is_read: notification.read_at.is_some(),
        read_at: notification.read_at.map(timestamp),
        created_at: Some(timestamp(notification.created_at)),
    }
}

/// What the operator sends; the contract checked the fields (`type` one of the four, or
/// empty for `info`).
fn content(
    kind: &str,
    title: String,
    body: String,
    link: String,
    data: Option<prost_types::Struct>,
) -> NewNotification {
    NewNotification {
        kind: NotificationKind::parse(kind).unwrap_or(NotificationKind::Info),
        title,
        body,
        link: Some(link).filter(|link| !link.is_empty()),
        data: data.map(struct_to_json).unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl NotificationRpc for NotificationApi {
    async fn create_notification(
        &self,
        request: Request<CreateNotificationRequest>,
    ) -> Result<Response<CreateNotificationResponse>, Status> {
        let sender = principal(&request)?;
        let body = request.into_inner();
        let user_id = id("user_id", &body.user_id)?;
        let new = content(&body.r#type, body.title, body.body, body.link, body.data);
        let notification = self.notifications.send(&sender, user_id, new).await?;
        Ok(Response::new(CreateNotificationResponse {
            notification: Some(notification_to_proto(notification)),
        }))
    }

    async fn broadcast_notification(
        &self,
        request: Request<BroadcastNotificationRequest>,
    ) -> Result<Response<BroadcastNotificationResponse>, Status> {
        let sender = principal(&request)?;
        let body = request.into_inner();
        let audience = if body.organization_id.is_empty() {
            Audience::Everyone
        } else {
            Audience::Organization(id("organization_id", &body.organization_id)?)
        };
        let new = content(&body.r#type, body.title, body.body, body.link, body.data);
        let recipients = self.notifications.broadcast(&sender, audience, new).await?;
        Ok(Response::new(BroadcastNotificationResponse {
            recipients: count_i32(recipients),
        }))
    }

    async fn list_notifications(
        &self,
        request: Request<ListNotificationsRequest>,
    ) -> Result<Response<ListNotificationsResponse>, Status> {
        let caller = principal(&request)?;
        let body = request.get_ref();
        let listed = self
            .notifications
            .list(&caller, body.unread_only, body.page_size, &body.page_token)
            .await?;
        Ok(Response::new(ListNotificationsResponse {
            notifications: listed
                .page
                .items
                .into_iter()
                .map(notification_to_proto)
                .collect(),
            next_page_token: listed.page.next_page_token,
            unread_count: count_i32(listed.unread_count),
        }))
    }

    async fn get_unread_notification_count(
        &self,
        request: Request<GetUnreadNotificationCountRequest>,
    ) -> Result<Response<GetUnreadNotificationCountResponse>, Status> {
        let unread = self
            .notifications
            .unread_count(&principal(&request)?)
            .await?;
        Ok(Response::new(GetUnreadNotificationCountResponse {
            unread_count: count_i32(unread),
        }))
    }

    async fn get_notification(
        &self,
        request: Request<GetNotificationRequest>,
    ) -> Result<Response<GetNotificationResponse>, Status> {
        let caller = principal(&request)?;
        let notification_id = id("notification_id", &request.get_ref().notification_id)?;
        let notification = self.notifications.get(&caller, notification_id).await?;
        Ok(Response::new(GetNotificationResponse {
            notification: Some(notification_to_proto(notification)),
        }))
    }

    async fn mark_notification_read(
        &self,
        request: Request<MarkNotificationReadRequest>,
    ) -> Result<Response<MarkNotificationReadResponse>, Status> {
        let caller = principal(&request)?;
        let notification_id = id("notification_id", &request.get_ref().notification_id)?;
        let notification = self
            .notifications
            .mark_read(&caller, notification_id)
            .await?;
        Ok(Response::new(MarkNotificationReadResponse {
            notification: Some(notification_to_proto(notification)),
        }))
    }

    async fn mark_all_notifications_read(
        &self,
        request: Request<MarkAllNotificationsReadRequest>,
    ) -> Result<Response<MarkAllNotificationsReadResponse>, Status> {
        let marked = self
            .notifications
            .mark_all_read(&principal(&request)?)
            .await?;
        Ok(Response::new(MarkAllNotificationsReadResponse {
            marked: count_i32(marked),
        }))
    }

    async fn delete_read_notifications(
        &self,
        request: Request<DeleteReadNotificationsRequest>,
    ) -> Result<Response<DeleteReadNotificationsResponse>, Status> {
        let deleted = self
            .notifications
            .delete_read(&principal(&request)?)
            .await?;
        Ok(Response::new(DeleteReadNotificationsResponse {
            deleted: count_i32(deleted),
        }))
    }

    async fn delete_notification(
        &self,
        request: Request<DeleteNotificationRequest>,
    ) -> Result<Response<DeleteNotificationResponse>, Status> {
        let caller = principal(&request)?;
        let notification_id = id("notification_id", &request.get_ref().notification_id)?;
        self.notifications.delete(&caller, notification_id).await?;
        Ok(Response::new(DeleteNotificationResponse {}))
    }
}
