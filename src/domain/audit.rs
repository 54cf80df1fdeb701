//! The audit log: security-relevant events (sign-ins and their failures, account and
//! membership changes, keys, roles) kept append-only in a hash chain. Each entry stores the
//! hash of the one before it and a hash over all of its own fields, so changing, removing or
//! reordering any entry breaks every hash after it; `verify` finds the first break.

use super::auth::ClientInfo;
use super::clock::Clock;
use super::error::{Missing, Result};
use super::events::{Actor, Event, EventKind, Origin, Outcome, StoredEvent};
use super::notifications::{Notification, SecurityNotices, notification_events};
use super::page::{Page, PageTokens};
use super::principal::Principal;
use super::realtime::Announcer;
use super::webhooks::{Delivery, WebhookService};
use chrono::{DateTime, SecondsFormat, Utc};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

pub type Hash = [u8; 32];

/// The `previous_hash` of the first entry.
pub const GENESIS: Hash = [0; 32];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Position in the chain: 1, 2, 3…
    pub sequence: i64,
    /// The event's id.
    pub id: Uuid,
    pub occurred_at: DateTime<Utc>,
    /// The event type: `user.login_failed`.
    pub action: String,
    pub outcome: String,
    pub actor: Actor,
    pub client: ClientInfo,
    pub organization_id: Option<Uuid>,
    pub target_type: String,
    pub target_id: String,
    /// The event's data, as JSON.
    pub details: String,
    pub previous_hash: Hash,
    pub hash: Hash,
}

impl AuditEntry {
    /// The entry recording `event` at `sequence`, after the entry whose hash is `previous`.
    pub fn chained(sequence: i64, previous: Hash, event: &Event) -> Self {
        let mut entry = Self {
            sequence,
            id: event.id,
            occurred_at: event.occurred_at,
            action: event.kind.name().to_owned(),
            outcome: event.kind.outcome().as_str().to_owned(),
            actor: event.origin.actor,
            client: ClientInfo {
                request_id: None,
                ..event.origin.client.clone()
            },
            organization_id: event.organization_id,
            target_type: event.subject_type.to_owned(),
            target_id: event.subject_id.clone(),
            details: event.data.clone(),
            previous_hash: previous,
            hash: GENESIS,
        };
        entry.hash = entry.computed_hash();
        entry
    }

    /// SHA-256 over every field but `hash`, each length-prefixed so that no two different
    /// entries encode alike.
    pub fn computed_hash(&self) -> Hash {
        let mut hasher = Sha256::new();
        let mut field = |bytes: Option<&[u8]>| match bytes {
            None => hasher.update([0]),
            Some(bytes) => {
                hasher.update([1]);
                hasher.update((bytes.len() as u64).to_be_bytes());
                hasher.update(bytes);
            }
        };
        let text = |value: &Option<Uuid>| value.map(|id| id.to_string());
        field(Some(b"keel-audit-v1"));
        field(Some(self.sequence.to_string().as_bytes()));
        field(Some(self.id.to_string().as_bytes()));
        field(Some(
            self.occurred_at
                .to_rfc3339_opts(SecondsFormat::Micros, true)
                .as_bytes(),
        ));
        field(Some(self.action.as_bytes()));
        field(Some(self.outcome.as_bytes()));
        field(Some(self.actor.kind().as_bytes()));
        field(text(&self.actor.user_id()).as_deref().map(str::as_bytes));
        field(text(&self.actor.api_key_id()).as_deref().map(str::as_bytes));
        field(self.client.ip_address.as_deref().map(str::as_bytes));
        field(self.client.user_agent.as_deref().map(str::as_bytes));
        field(text(&self.organization_id).as_deref().map(str::as_bytes));
        field(Some(self.target_type.as_bytes()));
        field(Some(self.target_id.as_bytes()));
        field(Some(self.details.as_bytes()));
        field(Some(&self.previous_hash));
        hasher.finalize().into()
    }
}

/// Filters of the audit log; every one given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub organization_id: Option<Uuid>,
    /// The user who acted.
    pub actor_user_id: Option<Uuid>,
    /// Entries a user acted in or was the target of.
    pub involving_user: Option<Uuid>,
    /// Any of these actions (all when empty).
    pub actions: Vec<String>,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub outcome: Option<Outcome>,
    pub occurred_after: Option<DateTime<Utc>>,
    pub occurred_before: Option<DateTime<Utc>>,
    /// Case-insensitive text in the action, target or details.
    pub text: Option<String>,
}

/// Entry counts over a query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditStatistics {
    pub total: u64,
    pub by_action: BTreeMap<String, u64>,
    pub by_outcome: BTreeMap<String, u64>,
}

/// Where a chain check stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Every entry checked out: how many, and the last one's hash.
    Intact { entries: u64, head: Hash },
    /// The first entry that does not: its sequence and id (when it exists) and what is wrong.
    Broken {
        sequence: i64,
        id: Option<Uuid>,
        problem: String,
    },
}

#[async_trait::async_trait]
pub trait AuditStore: Send + Sync {
    /// Entries matching `query`, newest first, older than the entry `before`.
    async fn list_audit_entries(
        &self,
        query: &AuditQuery,
        before: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<AuditEntry>>;
    async fn find_audit_entry(&self, id: Uuid) -> Result<Option<AuditEntry>>;
    async fn audit_statistics(&self, query: &AuditQuery) -> Result<AuditStatistics>;
    /// Entries in chain order after `sequence`.
    async fn audit_entries_after(&self, sequence: i64, limit: usize) -> Result<Vec<AuditEntry>>;
    /// The last entry retention removed (the chain goes on from it), if any.
    async fn audit_anchor(&self) -> Result<Option<(i64, Hash)>>;
    /// Deletes the entries up to `sequence` and records the last one's hash as the anchor,
    /// in one transaction.
    async fn prune_audit_through(&self, sequence: i64, hash: &Hash) -> Result<()>;
}

/// Where entries go before retention deletes them: JSON lines, one file per batch.
#[async_trait::async_trait]
pub trait AuditArchive: Send + Sync {
    /// Writes `lines` durably as `name` (`audit-<first>-<last>.jsonl`); answers where.
    async fn write(&self, name: &str, lines: &str) -> Result<String>;
}

/// An entry as a line of the export: every field, hashes in hex.
fn export_line(entry: &AuditEntry) -> String {
    let hex = super::secret::hex;
    serde_json::json!({
        "sequence": entry.sequence,
        "id": entry.id,
        "occurred_at": entry.occurred_at.to_rfc3339_opts(SecondsFormat::Micros, true),
        "action": entry.action,
        "outcome": entry.outcome,
        "actor_type": entry.actor.kind(),
        "actor_user_id": entry.actor.user_id(),
        "actor_api_key_id": entry.actor.api_key_id(),
        "ip_address": entry.client.ip_address,
        "user_agent": entry.client.user_agent,
        "organization_id": entry.organization_id,
        "target_type": entry.target_type,
        "target_id": entry.target_id,
        "details": entry.details,
        "previous_hash": hex(&entry.previous_hash),
        "hash": hex(&entry.hash),
    })
    .to_string()
}

/// The outbox, as the dispatcher sees it.
#[async_trait::async_trait]
pub trait Outbox: Send + Sync {
    /// The oldest events not yet dispatched, in sequence order.
    async fn pending_events(&self, limit: usize) -> Result<Vec<StoredEvent>>;
    /// The sequence and hash of the audit log's last entry (or its anchor).
    async fn audit_head(&self) -> Result<Option<(i64, Hash)>>;
    /// Writes `settlement` in one transaction and marks its events dispatched. Fails without
    /// effect if another dispatcher appended first (the chain cannot fork).
    async fn settle_events(&self, settlement: &Settlement, now: DateTime<Utc>) -> Result<()>;
    /// Events committed and not yet dispatched.
    async fn pending_count(&self) -> Result<u64>;
    /// Deletes dispatched events older than `cutoff`; answers how many.
    async fn delete_events_dispatched_before(&self, cutoff: DateTime<Utc>) -> Result<u64>;
}

/// What dispatching a batch of events writes.
pub struct Settlement {
    /// Each dispatched event's outbox sequence with its stream position: the number of its
    /// audit entry.
    pub positions: Vec<(i64, i64)>,
    pub entries: Vec<AuditEntry>,
    pub deliveries: Vec<Delivery>,
    pub notifications: Vec<Notification>,
    /// The `notification.created` events of `notifications` (dispatched with a later batch).
    pub notification_events: Vec<Event>,
}

/// Moves events from the outbox to their consumers, oldest first: the audit log, the webhooks
/// of their organization, the notices Keel sends users about their accounts, and (announced
/// once settled) the realtime channels.
pub struct Dispatcher {
    outbox: Arc<dyn Outbox>,
    webhooks: Arc<WebhookService>,
    notices: SecurityNotices,
    announcer: Arc<dyn Announcer>,
    clock: Arc<dyn Clock>,
}

/// Events handed on per transaction.
const DISPATCH_BATCH: usize = 500;

impl Dispatcher {
    pub fn new(
        outbox: Arc<dyn Outbox>,
        webhooks: Arc<WebhookService>,
        notices: SecurityNotices,
        announcer: Arc<dyn Announcer>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            outbox,
            webhooks,
            notices,
            announcer,
            clock,
        }
    }

    /// Dispatches one batch; answers how many events it took (0 when the outbox is empty).
    pub async fn dispatch_batch(&self) -> Result<usize> {
        let pending = self.outbox.pending_events(DISPATCH_BATCH).await?;
        if pending.is_empty() {
            return Ok(0);
        }
        let (mut sequence, mut previous) = self.outbox.audit_head().await?.unwrap_or((0, GENESIS));
        let entries: Vec<AuditEntry> = pending
            .iter()
            .map(|stored| {
                sequence += 1;
                let entry = AuditEntry::chained(sequence, previous, &stored.event);
                previous = entry.hash;
                entry
            })
            .collect();
        let deliveries = self.webhooks.deliveries_for(&pending).await?;
        let notifications = self.notices.for_events(&pending).await?;
        let notification_events =
            notification_events(&notifications, &Origin::system(), &*self.clock);
        let positions = pending
            .iter()
            .zip(&entries)
            .map(|(stored, entry)| (stored.sequence, entry.sequence))
            .collect();
        let settlement = Settlement {
            positions,
            entries,
            deliveries,
            notifications,
            notification_events,
        };
        self.outbox
            .settle_events(&settlement, self.clock.now())
            .await?;
        if let Err(error) = self.announcer.announce(sequence).await {
            // Each process also looks for new events every poll interval.
            tracing::warn!(%error, "announcing dispatched events failed");
        }
        Ok(pending.len())
    }

    /// Events committed and not yet handed on: the outbox's backlog.
    pub async fn backlog(&self) -> Result<u64> {
        self.outbox.pending_count().await
    }

    /// Deletes events dispatched more than `retention` ago.
    pub async fn purge_dispatched(&self, retention: chrono::Duration) -> Result<u64> {
        self.outbox
            .delete_events_dispatched_before(self.clock.now() - retention)
            .await
    }
}

/// Reading and checking the audit log.
pub struct AuditService {
    store: Arc<dyn AuditStore>,
    archive: Arc<dyn AuditArchive>,
    pages: Arc<PageTokens>,
    clock: Arc<dyn Clock>,
}

/// Entries exported and deleted per batch.
const PRUNE_BATCH: usize = 10_000;

/// The sign-in record of an account.
pub const LOGIN_ACTIONS: [EventKind; 3] = [
    EventKind::SessionCreated,
    EventKind::UserLoginFailed,
    EventKind::UserLockedOut,
];

impl AuditService {
    pub fn new(
        store: Arc<dyn AuditStore>,
        archive: Arc<dyn AuditArchive>,
        pages: Arc<PageTokens>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            archive,
            pages,
            clock,
        }
    }

    /// Exports, then deletes, the entries older than `retention` from the start of the chain;
    /// the last one deleted becomes the anchor `verify` starts from. Answers how many.
    pub async fn prune(&self, retention: chrono::Duration) -> Result<u64> {
        let cutoff = self.clock.now() - retention;
        let mut pruned = 0;
        loop {
            let start = self
                .store
                .audit_anchor()
                .await?
                .map_or(0, |(sequence, _)| sequence);
            let old: Vec<AuditEntry> = self
                .store
                .audit_entries_after(start, PRUNE_BATCH)
                .await?
                .into_iter()
                .take_while(|entry| entry.occurred_at < cutoff)
                .collect();
            let (Some(first), Some(last)) = (old.first(), old.last()) else {
                return Ok(pruned);
            };
            let lines: String = old.iter().map(|entry| export_line(entry) + "\n").collect();
            let name = format!("audit-{}-{}.jsonl", first.sequence, last.sequence);
            let written = self.archive.write(&name, &lines).await?;
            self.store
                .prune_audit_through(last.sequence, &last.hash)
                .await?;
            tracing::info!(entries = old.len(), export = %written, "audit entries exported and pruned");
            pruned += old.len() as u64;
        }
    }

    /// Entries matching `query`, newest first. `list` names the listing for its page tokens,
    /// so a token from one listing does not page through another.
    pub async fn list(
        &self,
        list: &str,
        query: AuditQuery,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<AuditEntry>> {
        let request = self.pages.request(list, page_size, page_token)?;
        let entries = self
            .store
            .list_audit_entries(&query, request.after, request.fetch_limit())
            .await?;
        Ok(self.pages.page(list, request, entries, |entry| entry.id))
    }

    /// The caller's own record: what they did and what was done to their account.
    pub async fn list_mine(
        &self,
        caller: &Principal,
        actions: &[EventKind],
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<AuditEntry>> {
        let query = AuditQuery {
            involving_user: Some(caller.user.id),
            actions: actions.iter().map(|kind| kind.name().to_owned()).collect(),
            ..AuditQuery::default()
        };
        let list = format!("audit:mine:{}:{}", caller.user.id, query.actions.join(","));
        self.list(&list, query, page_size, page_token).await
    }

    pub async fn get(&self, id: Uuid) -> Result<AuditEntry> {
        Ok(self
            .store
            .find_audit_entry(id)
            .await?
            .ok_or(Missing::AuditEntry)?)
    }

    pub async fn statistics(&self, query: &AuditQuery) -> Result<AuditStatistics> {
        self.store.audit_statistics(query).await
    }

    /// Walks the whole chain from its start (or retention's anchor), recomputing every hash.
    pub async fn verify(&self) -> Result<Verification> {
        let (mut sequence, mut previous) = self.store.audit_anchor().await?.unwrap_or((0, GENESIS));
        let mut entries = 0;
        loop {
            let batch = self.store.audit_entries_after(sequence, 1000).await?;
            if batch.is_empty() {
                return Ok(Verification::Intact {
                    entries,
                    head: previous,
                });
            }
            for entry in batch {
                let broken = |problem: &str| Verification::Broken {
                    sequence: entry.sequence,
                    id: Some(entry.id),
                    problem: problem.to_owned(),
                };
                if entry.sequence != sequence + 1 {
                    return Ok(Verification::Broken {
                        sequence: sequence + 1,
                        id: None,
                        problem: format!(
                            "entries {} to {} are missing",
                            sequence + 1,
                            entry.sequence - 1
                        ),
                    });
                }
                if entry.previous_hash != previous {
                    return Ok(broken(
                        "its previous_hash is not the hash of the entry before it",
                    ));
                }
                if entry.computed_hash() != entry.hash {
                    return Ok(broken(
                        "its contents do not match its hash (the entry was changed)",
                    ));
                }
                sequence = entry.sequence;
                previous = entry.hash;
                entries += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::events::{Origin, UserData};

    fn event() -> Event {
        let user = crate::domain::user::User {
            id: Uuid::now_v7(),
            email: "ada@example.com".to_owned(),
            full_name: "Ada".to_owned(),
            email_verified: true,
            is_superuser: false,
            is_active: true,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        Event::new(
            EventKind::UserCreated,
            &Origin::system(),
            &crate::domain::clock::SystemClock,
            &UserData::from(&user),
        )
    }

    #[test]
    fn every_field_is_covered_by_the_hash() {
        let entry = AuditEntry::chained(1, GENESIS, &event());
        assert_eq!(entry.computed_hash(), entry.hash);
        let changes: Vec<fn(&mut AuditEntry)> = vec![
            |entry| entry.sequence = 2,
            |entry| entry.id = Uuid::now_v7(),
            |entry| entry.occurred_at += chrono::Duration::microseconds(1),
            |entry| entry.action = "user.deleted".to_owned(),
            |entry| entry.outcome = "failure".to_owned(),
            |entry| entry.actor = Actor::Anonymous,
            |entry| entry.client.ip_address = Some("10.0.0.1".to_owned()),
            |entry| entry.client.user_agent = Some(String::new()),
            |entry| entry.organization_id = Some(Uuid::now_v7()),
            |entry| entry.target_type = "member".to_owned(),
            |entry| entry.target_id.push('x'),
            |entry| entry.details = "{}".to_owned(),
            |entry| entry.previous_hash = [1; 32],
        ];
        for change in changes {
            let mut changed = entry.clone();
            change(&mut changed);
            assert_ne!(changed.computed_hash(), entry.hash, "{changed:?}");
        }
    }
}
