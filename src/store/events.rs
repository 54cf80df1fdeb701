//! The outbox (`events`) and the audit log on SQL. Stores write events with `insert_events!`
//! inside the transaction of the change they record.

use super::{BeginWrite, SqlStore, database_error, with_pool};
use crate::domain::audit::{
    AuditEntry, AuditQuery, AuditStatistics, AuditStore, Hash, Outbox, Settlement,
};
use crate::domain::auth::ClientInfo;
use crate::domain::error::{Error, Result};
use crate::domain::events::{Actor, Event, EventKind, EventLog, Origin, StoredEvent};
use crate::domain::realtime::{ChannelFilter, EventHistory};
use chrono::{DateTime, Utc};
use sqlx::AssertSqlSafe;
use uuid::Uuid;

/// The statement that writes one event, per backend. On PostgreSQL an organization's events
/// first take a transaction lock on the organization, so they get their sequence numbers in
/// commit order and the dispatcher, reading by sequence, never passes over one still being
/// committed (SQLite commits one writer at a time, so it needs none).
pub(super) trait EventSql: sqlx::Database {
    const INSERT_EVENT: &'static str;
}

const EVENT_COLUMNS: &str = "id, event_type, occurred_at, organization_id, user_id, \
     actor_type, actor_user_id, actor_api_key_id, ip_address, user_agent, subject_type, \
     subject_id, data, request_id";

impl EventSql for sqlx::Sqlite {
    const INSERT_EVENT: &'static str = "INSERT INTO events (id, event_type, occurred_at, \
         organization_id, user_id, actor_type, actor_user_id, actor_api_key_id, ip_address, \
         user_agent, subject_type, subject_id, data, request_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)";
}

impl EventSql for sqlx::Postgres {
    const INSERT_EVENT: &'static str = "INSERT INTO events (id, event_type, occurred_at, \
         organization_id, user_id, actor_type, actor_user_id, actor_api_key_id, ip_address, \
         user_agent, subject_type, subject_id, data, request_id) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14 FROM (SELECT CASE \
         WHEN $4::uuid IS NULL THEN NULL \
         ELSE pg_advisory_xact_lock(hashtextextended($4::uuid::text, 0)) END) AS ordered";
}

/// `change` (an INSERT, UPDATE or DELETE with parameters `$1…$n`) and its events (parameter
/// `$n+1`, a JSON array of `EventRecord`s), as one PostgreSQL statement that writes the events
/// only when the change touched a row, each after the lock on its organization (see
/// `EventSql`), and answers the rows the change touched. The events travel as JSON rather
/// than one array per column: the planner sizes an array it can see, so each call would be
/// planned anew (0.1–0.2 ms), while a JSON set gets one cached plan.
pub(super) fn with_events_sql(change: &str) -> String {
    let events = max_placeholder(change) + 1;
    format!(
        "WITH changed AS ({change} RETURNING 1), \
         written AS (INSERT INTO events ({EVENT_COLUMNS}) \
         SELECT {EVENT_COLUMNS} FROM jsonb_to_recordset(${events}) AS event (id uuid, \
         event_type text, occurred_at timestamptz, organization_id uuid, user_id uuid, actor_type text, \
         actor_user_id uuid, actor_api_key_id uuid, ip_address text, user_agent text, \
         subject_type text, subject_id text, data text, request_id text) \
         CROSS JOIN LATERAL (SELECT CASE WHEN event.organization_id IS NULL THEN NULL \
         ELSE pg_advisory_xact_lock(hashtextextended(event.organization_id::text, 0)) END) \
         AS ordered WHERE EXISTS (SELECT 1 FROM changed)) \
         SELECT COUNT(*) FROM changed"
    )
}

/// The highest `$n` in `sql`.
fn max_placeholder(sql: &str) -> usize {
    sql.split('$')
        .skip(1)
        .filter_map(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .max()
        .unwrap_or(0)
}

/// An event as `with_events_sql` reads it.
#[derive(serde::Serialize)]
pub(super) struct EventRecord<'a> {
    id: Uuid,
    event_type: &'static str,
    occurred_at: DateTime<Utc>,
    organization_id: Option<Uuid>,
    user_id: Option<Uuid>,
    actor_type: &'static str,
    actor_user_id: Option<Uuid>,
    actor_api_key_id: Option<Uuid>,
    ip_address: Option<&'a str>,
    user_agent: Option<&'a str>,
    subject_type: &'static str,
    subject_id: &'a str,
    data: &'a str,
    request_id: Option<&'a str>,
}

pub(super) fn event_records(events: &[Event]) -> sqlx::types::Json<Vec<EventRecord<'_>>> {
    sqlx::types::Json(
        events
            .iter()
            .map(|event| EventRecord {
                id: event.id,
                event_type: event.kind.name(),
                occurred_at: event.occurred_at,
                organization_id: event.organization_id,
                user_id: event.user_id,
                actor_type: event.origin.actor.kind(),
                actor_user_id: event.origin.actor.user_id(),
                actor_api_key_id: event.origin.actor.api_key_id(),
                ip_address: event.origin.client.ip_address.as_deref(),
                user_agent: event.origin.client.user_agent.as_deref(),
                subject_type: event.subject_type,
                subject_id: &event.subject_id,
                data: &event.data,
                request_id: event.origin.client.request_id.as_deref(),
            })
            .collect(),
    )
}

pub(super) fn insert_event_sql<DB: EventSql>(_: &sqlx::Transaction<'_, DB>) -> &'static str {
    DB::INSERT_EVENT
}

/// Writes `$events` to the outbox inside `$transaction`, on either backend.
macro_rules! insert_events {
    ($transaction:expr, $events:expr) => {
        for event in $events {
            let origin = &event.origin;
            sqlx::query(crate::store::events::insert_event_sql(&$transaction))
                .bind(event.id)
                .bind(event.kind.name())
                .bind(event.occurred_at)
                .bind(event.organization_id)
                .bind(event.user_id)
                .bind(origin.actor.kind())
                .bind(origin.actor.user_id())
                .bind(origin.actor.api_key_id())
                .bind(origin.client.ip_address.as_deref())
                .bind(origin.client.user_agent.as_deref())
                .bind(event.subject_type)
                .bind(&event.subject_id)
                .bind(&event.data)
                .bind(origin.client.request_id.as_deref())
                .execute(&mut *$transaction)
                .await?;
        }
    };
}
pub(super) use insert_events;

/// Runs one statement and, when it changed a row, writes `$events` with it, atomically;
/// answers the number of rows it affected. Errors map with `$map_error` (default
/// `database_error`). On SQLite, a transaction of two statements; on PostgreSQL, one
/// statement (`with_events_sql`), so the outbox costs no round trip of its own.
macro_rules! execute_with_events {
    ($store:expr, $events:expr, sqlx::query($sql:expr $(,)?) $(.bind($arg:expr))*) => {
        crate::store::events::execute_with_events!(
            $store,
            $events,
            sqlx::query($sql) $(.bind($arg))*,
            crate::store::database_error
        )
    };
    ($store:expr, $events:expr, sqlx::query($sql:expr $(,)?) $(.bind($arg:expr))*, $map_error:expr) => {
        tracing::Instrument::instrument(async { match &$store.pool {
            crate::store::Pool::Sqlite(pool) => async {
                let mut transaction = crate::store::BeginWrite::begin_write(pool).await?;
                let affected = sqlx::query($sql)
                    $(.bind($arg))*
                    .execute(&mut *transaction)
                    .await?
                    .rows_affected();
                if affected > 0 {
                    crate::store::events::insert_events!(transaction, $events);
                }
                transaction.commit().await?;
                Ok::<u64, sqlx::Error>(affected)
            }
            .await,
            crate::store::Pool::Postgres(pool) => {
                static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
                let sql = SQL.get_or_init(|| crate::store::events::with_events_sql($sql));
                sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql.as_str()))
                    $(.bind($arg))*
                    .bind(crate::store::events::event_records($events))
                    .fetch_one(pool)
                    .await
                    .map(|affected| u64::try_from(affected).unwrap_or_default())
            }
        } }, crate::store::statement_span(&$store.pool, module_path!()))
        .await
        .map_err($map_error)
    };
}
pub(super) use execute_with_events;

#[derive(sqlx::FromRow)]
struct EventRow {
    sequence: i64,
    id: Uuid,
    event_type: String,
    occurred_at: DateTime<Utc>,
    organization_id: Option<Uuid>,
    user_id: Option<Uuid>,
    actor_type: String,
    actor_user_id: Option<Uuid>,
    actor_api_key_id: Option<Uuid>,
    ip_address: Option<String>,
    user_agent: Option<String>,
    subject_type: String,
    subject_id: String,
    data: String,
    request_id: Option<String>,
}

impl TryFrom<EventRow> for StoredEvent {
    type Error = Error;

    fn try_from(row: EventRow) -> Result<Self> {
        let kind = EventKind::parse(&row.event_type).ok_or_else(|| {
            Error::internal(format!("outbox event of unknown type {:?}", row.event_type))
        })?;
        Ok(StoredEvent {
            sequence: row.sequence,
            event: Event {
                id: row.id,
                kind,
                occurred_at: row.occurred_at,
                organization_id: row.organization_id,
                user_id: row.user_id,
                origin: Origin {
                    actor: Actor::from_parts(
                        &row.actor_type,
                        row.actor_user_id,
                        row.actor_api_key_id,
                    ),
                    client: ClientInfo {
                        ip_address: row.ip_address,
                        user_agent: row.user_agent,
                        request_id: row.request_id,
                    },
                },
                subject_type: subject_type(&row.subject_type),
                subject_id: row.subject_id,
                data: row.data,
            },
        })
    }
}

/// The catalog's subject types are static; an unknown one (written by a newer Keel) is kept
/// as `other`.
fn subject_type(stored: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "api_key",
        "invitation",
        "member",
        "notification",
        "organization",
        "quota",
        "role",
        "session",
        "team",
        "team_member",
        "user",
        "webhook",
    ];
    KNOWN
        .iter()
        .find(|known| **known == stored)
        .copied()
        .unwrap_or("other")
}

#[derive(sqlx::FromRow)]
struct AuditRow {
    sequence: i64,
    id: Uuid,
    occurred_at: DateTime<Utc>,
    action: String,
    outcome: String,
    actor_type: String,
    actor_user_id: Option<Uuid>,
    actor_api_key_id: Option<Uuid>,
    ip_address: Option<String>,
    user_agent: Option<String>,
    organization_id: Option<Uuid>,
    target_type: String,
    target_id: String,
    details: String,
    previous_hash: Vec<u8>,
    hash: Vec<u8>,
}

fn hash_of(bytes: &[u8]) -> Hash {
    // A stored hash of the wrong length fails verification like any other change.
    let mut hash = [0; 32];
    if bytes.len() == 32 {
        hash.copy_from_slice(bytes);
    }
    hash
}

impl From<AuditRow> for AuditEntry {
    fn from(row: AuditRow) -> Self {
        AuditEntry {
            sequence: row.sequence,
            id: row.id,
            occurred_at: row.occurred_at,
            action: row.action,
            outcome: row.outcome,
            actor: Actor::from_parts(&row.actor_type, row.actor_user_id, row.actor_api_key_id),
            client: ClientInfo {
                ip_address: row.ip_address,
                user_agent: row.user_agent,
                request_id: None,
            },
            organization_id: row.organization_id,
            target_type: row.target_type,
            target_id: row.target_id,
            details: row.details,
            previous_hash: hash_of(&row.previous_hash),
            hash: hash_of(&row.hash),
        }
    }
}

const AUDIT_COLUMNS: &str = "sequence, id, occurred_at, action, outcome, actor_type, \
     actor_user_id, actor_api_key_id, ip_address, user_agent, organization_id, target_type, \
     target_id, details, previous_hash, hash";

/// The filters of `AuditQuery` as a WHERE clause over parameters $1…$11 (see
/// `bind_audit_query!`); an absent filter is a NULL that matches everything.
const AUDIT_FILTER: &str = "($1 IS NULL OR organization_id = $1) \
     AND ($2 IS NULL OR actor_user_id = $2) \
     AND ($3 IS NULL OR actor_user_id = $3 OR (target_type = 'user' AND target_id = $4)) \
     AND ($5 IS NULL OR (',' || $5 || ',') LIKE ('%,' || REPLACE(action, '_', '\\_') || ',%') ESCAPE '\\') \
     AND ($6 IS NULL OR target_type = $6) \
     AND ($7 IS NULL OR target_id = $7) \
     AND ($8 IS NULL OR outcome = $8) \
     AND ($9 IS NULL OR occurred_at > $9) \
     AND ($10 IS NULL OR occurred_at < $10) \
     AND ($11 IS NULL OR LOWER(action || ' ' || target_id || ' ' || details) LIKE $11 ESCAPE '\\')";

macro_rules! bind_audit_query {
    ($query:expr, $filter:expr) => {{
        let filter: &AuditQuery = $filter;
        let actions = (!filter.actions.is_empty()).then(|| filter.actions.join(","));
        let text = filter.text.as_deref().map(|text| {
            let escaped = text
                .trim()
                .to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("%{escaped}%")
        });
        $query
            .bind(filter.organization_id)
            .bind(filter.actor_user_id)
            .bind(filter.involving_user)
            .bind(filter.involving_user.map(|id| id.to_string()))
            .bind(actions)
            .bind(filter.target_type.clone())
            .bind(filter.target_id.clone())
            .bind(filter.outcome.map(|outcome| outcome.as_str()))
            .bind(filter.occurred_after)
            .bind(filter.occurred_before)
            .bind(text)
    }};
}

#[async_trait::async_trait]
impl EventLog for SqlStore {
    async fn append_events(&self, events: &[Event]) -> Result<()> {
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            insert_events!(transaction, events);
            transaction.commit().await
        }
        .await)
        .map_err(database_error)
    }
}

#[async_trait::async_trait]
impl Outbox for SqlStore {
    async fn pending_events(&self, limit: usize) -> Result<Vec<StoredEvent>> {
        let sql = format!(
            "SELECT sequence, {EVENT_COLUMNS} FROM events WHERE dispatched_at IS NULL \
             ORDER BY sequence LIMIT $1"
        );
        let rows: Vec<EventRow> = with_pool!(self, pool => {
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await
        })
        .map_err(database_error)?;
        rows.into_iter().map(StoredEvent::try_from).collect()
    }

    async fn audit_head(&self) -> Result<Option<(i64, Hash)>> {
        let head: Option<(i64, Vec<u8>)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT sequence, hash FROM audit_log ORDER BY sequence DESC LIMIT 1",
            )
            .fetch_optional(pool)
            .await
        })
        .map_err(database_error)?;
        match head {
            Some((sequence, hash)) => Ok(Some((sequence, hash_of(&hash)))),
            None => self.audit_anchor().await,
        }
    }

    async fn settle_events(&self, settlement: &Settlement, now: DateTime<Utc>) -> Result<()> {
        let insert = format!(
            "INSERT INTO audit_log ({AUDIT_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        );
        if settlement.positions.is_empty() {
            return Ok(());
        }
        // Sequences and positions are numbers Keel worked out, never client input.
        let cases: String = settlement
            .positions
            .iter()
            .map(|(sequence, position)| format!(" WHEN {sequence} THEN {position}"))
            .collect();
        let listed: Vec<String> = settlement
            .positions
            .iter()
            .map(|(sequence, _)| sequence.to_string())
            .collect();
        let mark = format!(
            "UPDATE events SET dispatched_at = $1, position = CASE sequence{cases} END \
             WHERE sequence IN ({})",
            listed.join(",")
        );
        let notifications = &settlement.notifications;
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            for entry in &settlement.entries {
                sqlx::query(AssertSqlSafe(insert.as_str()))
                    .bind(entry.sequence)
                    .bind(entry.id)
                    .bind(entry.occurred_at)
                    .bind(&entry.action)
                    .bind(&entry.outcome)
                    .bind(entry.actor.kind())
                    .bind(entry.actor.user_id())
                    .bind(entry.actor.api_key_id())
                    .bind(entry.client.ip_address.as_deref())
                    .bind(entry.client.user_agent.as_deref())
                    .bind(entry.organization_id)
                    .bind(&entry.target_type)
                    .bind(&entry.target_id)
                    .bind(&entry.details)
                    .bind(&entry.previous_hash[..])
                    .bind(&entry.hash[..])
                    .execute(&mut *transaction)
                    .await?;
            }
            super::webhooks::insert_deliveries!(transaction, &settlement.deliveries);
            for notification in notifications {
                super::notifications::insert_notification!(&mut *transaction, notification)?;
            }
            insert_events!(transaction, &settlement.notification_events);
            sqlx::query(AssertSqlSafe(mark.as_str()))
                .bind(now)
                .execute(&mut *transaction)
                .await?;
            transaction.commit().await
        }
        .await)
        .map_err(database_error)
    }

    async fn pending_count(&self) -> Result<u64> {
        let count: i64 = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE dispatched_at IS NULL")
                .fetch_one(pool)
                .await
        })
        .map_err(database_error)?;
        Ok(u64::try_from(count).unwrap_or_default())
    }

    async fn delete_events_dispatched_before(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        super::execute!(
            self,
            sqlx::query("DELETE FROM events WHERE dispatched_at < $1").bind(cutoff)
        )
    }
}

#[async_trait::async_trait]
impl AuditStore for SqlStore {
    async fn list_audit_entries(
        &self,
        query: &AuditQuery,
        before: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>> {
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE {AUDIT_FILTER} \
             AND ($12 IS NULL OR sequence < (SELECT sequence FROM audit_log WHERE id = $12)) \
             ORDER BY sequence DESC LIMIT $13"
        );
        let rows: Vec<AuditRow> = with_pool!(self, pool => {
            bind_audit_query!(sqlx::query_as(AssertSqlSafe(sql)), query)
                .bind(before)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await
        })
        .map_err(database_error)?;
        Ok(rows.into_iter().map(AuditEntry::from).collect())
    }

    async fn find_audit_entry(&self, id: Uuid) -> Result<Option<AuditEntry>> {
        let sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE id = $1");
        let row: Option<AuditRow> = with_pool!(self, pool => {
            sqlx::query_as(AssertSqlSafe(sql)).bind(id).fetch_optional(pool).await
        })
        .map_err(database_error)?;
        Ok(row.map(AuditEntry::from))
    }

    async fn audit_statistics(&self, query: &AuditQuery) -> Result<AuditStatistics> {
        let sql = format!(
            "SELECT action, outcome, COUNT(*) FROM audit_log WHERE {AUDIT_FILTER} \
             GROUP BY action, outcome"
        );
        let rows: Vec<(String, String, i64)> = with_pool!(self, pool => {
            bind_audit_query!(sqlx::query_as(AssertSqlSafe(sql)), query)
                .fetch_all(pool)
                .await
        })
        .map_err(database_error)?;
        let mut statistics = AuditStatistics::default();
        for (action, outcome, count) in rows {
            let count = u64::try_from(count).unwrap_or_default();
            statistics.total += count;
            *statistics.by_action.entry(action).or_default() += count;
            *statistics.by_outcome.entry(outcome).or_default() += count;
        }
        Ok(statistics)
    }

    async fn audit_entries_after(&self, sequence: i64, limit: usize) -> Result<Vec<AuditEntry>> {
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM audit_log WHERE sequence > $1 ORDER BY sequence LIMIT $2"
        );
        let rows: Vec<AuditRow> = with_pool!(self, pool => {
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(sequence)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await
        })
        .map_err(database_error)?;
        Ok(rows.into_iter().map(AuditEntry::from).collect())
    }

    async fn prune_audit_through(&self, sequence: i64, hash: &Hash) -> Result<()> {
        with_pool!(self, pool => async {
            let mut transaction = pool.begin_write().await?;
            sqlx::query("DELETE FROM audit_log WHERE sequence <= $1")
                .bind(sequence)
                .execute(&mut *transaction)
                .await?;
            sqlx::query(
                "INSERT INTO audit_anchor (id, sequence, hash) VALUES (1, $1, $2) \
                 ON CONFLICT (id) DO UPDATE SET sequence = $1, hash = $2",
            )
            .bind(sequence)
            .bind(&hash[..])
            .execute(&mut *transaction)
            .await?;
            transaction.commit().await
        }
        .await)
        .map_err(database_error)
    }

    async fn audit_anchor(&self) -> Result<Option<(i64, Hash)>> {
        let anchor: Option<(i64, Vec<u8>)> = with_pool!(self, pool => {
            sqlx::query_as("SELECT sequence, hash FROM audit_anchor WHERE id = 1")
                .fetch_optional(pool)
                .await
        })
        .map_err(database_error)?;
        Ok(anchor.map(|(sequence, hash)| (sequence, hash_of(&hash))))
    }
}

#[derive(sqlx::FromRow)]
struct PositionedRow {
    position: i64,
    #[sqlx(flatten)]
    event: EventRow,
}

impl SqlStore {
    /// Dispatched events matching `filter` (over `$1`) after position `$2`, at most `$3`.
    async fn positioned_events(
        &self,
        filter: &'static str,
        key: Option<Uuid>,
        position: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Event)>> {
        let sql = format!(
            "SELECT position, sequence, {EVENT_COLUMNS} FROM events \
             WHERE {filter} AND position > $2 ORDER BY position LIMIT $3"
        );
        let rows: Vec<PositionedRow> = with_pool!(self, pool => {
            sqlx::query_as(AssertSqlSafe(sql))
                .bind(key)
                .bind(position)
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(pool)
                .await
        })
        .map_err(database_error)?;
        rows.into_iter()
            .map(|row| Ok((row.position, StoredEvent::try_from(row.event)?.event)))
            .collect()
    }
}

#[async_trait::async_trait]
impl EventHistory for SqlStore {
    async fn events_after(&self, position: i64, limit: usize) -> Result<Vec<(i64, Event)>> {
        self.positioned_events("$1 IS NULL", None, position, limit)
            .await
    }

    async fn channel_events_after(
        &self,
        filter: ChannelFilter,
        position: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Event)>> {
        match filter {
            ChannelFilter::User(id) => {
                self.positioned_events("user_id = $1", Some(id), position, limit)
                    .await
            }
            ChannelFilter::Organization(id) => {
                self.positioned_events("organization_id = $1", Some(id), position, limit)
                    .await
            }
        }
    }

    async fn event_position(&self, id: Uuid) -> Result<Option<(i64, DateTime<Utc>)>> {
        with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT position, occurred_at FROM events WHERE id = $1 AND position IS NOT NULL",
            )
            .bind(id)
            .fetch_optional(pool)
            .await
        })
        .map_err(database_error)
    }

    async fn last_position(&self) -> Result<i64> {
        with_pool!(self, pool => {
            sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events")
                .fetch_one(pool)
                .await
        })
        .map_err(database_error)
    }
}
