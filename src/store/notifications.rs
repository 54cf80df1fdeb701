//! `NotificationStore` and `NoticeDirectory` on SQL.

use super::{BeginWrite, SqlStore, database_error, execute, with_pool};
use crate::domain::error::{Error, Missing, Result};
use crate::domain::events::Event;
use crate::domain::notifications::{
    Audience, EarlierSignIns, NoticeDirectory, Notification, NotificationKind, NotificationStore,
};
use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;
use uuid::Uuid;

#[derive(sqlx::FromRow)]
struct NotificationRow {
    id: Uuid,
    user_id: Uuid,
    kind: String,
    title: String,
    body: String,
    link: Option<String>,
    data: String,
    read_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
}

impl TryFrom<NotificationRow> for Notification {
    type Error = Error;

    fn try_from(row: NotificationRow) -> Result<Self> {
        Ok(Notification {
            kind: NotificationKind::parse(&row.kind).ok_or_else(|| {
                Error::internal(format!("notification of an unknown kind {:?}", row.kind))
            })?,
            data: serde_json::from_str(&row.data).map_err(Error::internal)?,
            id: row.id,
            user_id: row.user_id,
            title: row.title,
            body: row.body,
            link: row.link,
            read_at: row.read_at,
            created_at: row.created_at,
        })
    }
}

const COLUMNS: &str = "id, user_id, kind, title, body, link, data, read_at, created_at";

pub(super) const INSERT: &str = "INSERT INTO notifications (id, user_id, kind, title, body, link, data, \
     created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// Inserts `$notification` through `$executor`.
macro_rules! insert_notification {
    ($executor:expr, $notification:expr) => {
        sqlx::query(crate::store::notifications::INSERT)
            .bind($notification.id)
            .bind($notification.user_id)
            .bind($notification.kind.as_str())
            .bind(&$notification.title)
            .bind(&$notification.body)
            .bind(&$notification.link)
            .bind(crate::store::notifications::data($notification))
            .bind($notification.created_at)
            .execute($executor)
            .await
    };
}

pub(super) use insert_notification;

pub(super) fn data(notification: &Notification) -> String {
    serde_json::Value::Object(notification.data.clone()).to_string()
}

#[async_trait::async_trait]
impl NotificationStore for SqlStore {
    async fn insert_notifications(
        &self,
        notifications: &[Notification],
        events: &[Event],
    ) -> Result<()> {
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            for notification in notifications {
                insert_notification!(&mut *transaction, notification)?;
            }
            super::events::insert_events!(transaction, events);
            transaction.commit().await
        }
        .await)
        .map_err(|error| match &error {
            sqlx::Error::Database(database) if database.is_foreign_key_violation() => {
                Missing::User.into()
            }
            _ => database_error(error),
        })
    }

    async fn audience(&self, audience: Audience) -> Result<Vec<Uuid>> {
        match audience {
            Audience::Everyone => with_pool!(self, pool => {
                sqlx::query_scalar("SELECT id FROM users WHERE is_active ORDER BY id")
                    .fetch_all(pool)
                    .await
            })
            .map_err(database_error),
            Audience::Organization(id) => {
                let found: Option<Uuid> = with_pool!(self, pool => {
                    sqlx::query_scalar("SELECT id FROM organizations WHERE id = $1")
                        .bind(id)
                        .fetch_optional(pool)
                        .await
                })
                .map_err(database_error)?;
                found.ok_or(Missing::Organization)?;
                with_pool!(self, pool => {
                    sqlx::query_scalar(
                        "SELECT members.user_id FROM organization_members AS members \
                         JOIN users ON users.id = members.user_id \
                         WHERE members.organization_id = $1 AND users.is_active \
                         ORDER BY members.user_id",
                    )
                    .bind(id)
                    .fetch_all(pool)
                    .await
                })
                .map_err(database_error)
            }
        }
    }

    async fn find_notification(&self, user_id: Uuid, id: Uuid) -> Result<Option<Notification>> {
        let sql = format!("SELECT {COLUMNS} FROM notifications WHERE id = $1 AND user_id = $2");
        let row: Option<NotificationRow> = with_pool!(self, pool => {
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(id)
                .bind(user_id)
                .fetch_optional(pool)
                .await
        })
        .map_err(database_error)?;
        row.map(Notification::try_from).transpose()
    }

    async fn list_notifications(
        &self,
        user_id: Uuid,
        unread_only: bool,
        before: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<Notification>> {
        let unread = if unread_only {
            " AND read_at IS NULL"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM notifications WHERE user_id = $1{unread} \
             AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
        );
        let rows: Vec<NotificationRow> = with_pool!(self, pool => {
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(user_id)
                .bind(before)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await
        })
        .map_err(database_error)?;
        rows.into_iter().map(Notification::try_from).collect()
    }

    async fn count_unread_notifications(&self, user_id: Uuid) -> Result<u64> {
        let sql = "SELECT COUNT(*) FROM notifications WHERE user_id = $1 AND read_at IS NULL";
        let count: i64 = with_pool!(self, pool => {
            sqlx::query_scalar(sql).bind(user_id).fetch_one(pool).await
        })
        .map_err(database_error)?;
        Ok(u64::try_from(count).unwrap_or_default())
    }

    async fn mark_notification_read(
        &self,
        user_id: Uuid,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        execute!(
            self,
            sqlx::query(
                "UPDATE notifications SET read_at = COALESCE(read_at, $3) \
                 WHERE id = $1 AND user_id = $2",
            )
            .bind(id)
            .bind(user_id)
            .bind(now)
        )
        .map(|updated| updated > 0)
    }

    async fn mark_all_notifications_read(&self, user_id: Uuid, now: DateTime<Utc>) -> Result<u64> {
        execute!(
            self,
            sqlx::query(
                "UPDATE notifications SET read_at = $2 WHERE user_id = $1 AND read_at IS NULL",
            )
            .bind(user_id)
            .bind(now)
        )
    }

    async fn delete_notification(&self, user_id: Uuid, id: Uuid) -> Result<bool> {
        execute!(
            self,
            sqlx::query("DELETE FROM notifications WHERE id = $1 AND user_id = $2")
                .bind(id)
                .bind(user_id)
        )
        .map(|deleted| deleted > 0)
    }

    async fn delete_read_notifications(&self, user_id: Uuid) -> Result<u64> {
        execute!(
            self,
            sqlx::query("DELETE FROM notifications WHERE user_id = $1 AND read_at IS NOT NULL")
                .bind(user_id)
        )
    }
}

#[async_trait::async_trait]
impl NoticeDirectory for SqlStore {
    async fn active_user_by_email(&self, email: &str) -> Result<Option<Uuid>> {
        let sql = "SELECT id FROM users WHERE email = $1 AND is_active";
        with_pool!(self, pool => {
            sqlx::query_scalar(sql).bind(email).fetch_optional(pool).await
        })
        .map_err(database_error)
    }

    async fn organization_admins(&self, organization_id: Uuid) -> Result<Vec<Uuid>> {
        let sql = "SELECT DISTINCT user_id FROM member_roles \
             WHERE organization_id = $1 AND role_key IN ('owner', 'admin') ORDER BY user_id";
        with_pool!(self, pool => {
            sqlx::query_scalar(sql).bind(organization_id).fetch_all(pool).await
        })
        .map_err(database_error)
    }

    async fn earlier_sign_ins(
        &self,
        user_id: Uuid,
        session_id: Uuid,
        user_agent: Option<&str>,
    ) -> Result<EarlierSignIns> {
        let sql = "SELECT COUNT(*), \
             CAST(COALESCE(SUM(CASE WHEN user_agent IS NOT DISTINCT FROM $3 THEN 1 ELSE 0 END), \
             0) AS BIGINT) FROM sessions WHERE user_id = $1 AND id <> $2";
        let (any, same_agent): (i64, i64) = with_pool!(self, pool => {
            sqlx::query_as(sql)
                .bind(user_id)
                .bind(session_id)
                .bind(user_agent)
                .fetch_one(pool)
                .await
        })
        .map_err(database_error)?;
        Ok(EarlierSignIns {
            any: any > 0,
            same_agent: same_agent > 0,
        })
    }
}
