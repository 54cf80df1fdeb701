//! Webhooks: an organization's HTTP endpoints and the deliveries of its events to them, signed
//! the Standard Webhooks way, retried on a schedule, given up to the dead-letter queue, and the
//! operators' tools: a test event, replaying one delivery, recovering every failed one since a
//! time, rotating the secret with a grace period.
//!
//! A delivery row is its own queue entry: the dispatcher writes it in the transaction that
//! hands the event on, and workers claim the due ones. An organization's webhooks receive its
//! events only (those with its `organization_id`); events about a user alone (sign-ins) stay
//! in the audit log.

use super::clock::{Clock, truncate_to_micros};
use super::error::{Error, FieldViolation, Missing, Result, Violations};
use super::events::{Event, EventKind, Origin, StoredEvent, TestEventData, WebhookData};
use super::page::{Page, PageTokens};
use super::rate::{Budget, RateLimits};
use super::secret::{Keyring, signing_secret};
use super::tenancy::access::Access;
use super::text::{Blank, bounded_text, http_url};
use chrono::{DateTime, Duration, Utc};
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

/// The dead-letter job type of a delivery given up.
pub const WEBHOOK_JOB: &str = "webhook";
const SECRET_PURPOSE: &str = "webhook-secret";
const MAX_WEBHOOKS: usize = 20;
/// A response body is kept up to this many bytes.
pub const EXCERPT_BYTES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub url: String,
    pub description: String,
    /// Event types and patterns: `member.added`, `member.*`, `*`.
    pub event_types: Vec<String>,
    pub is_active: bool,
    /// Deliveries per second at most; 0 for no limit.
    pub rate_limit_per_second: u32,
    pub consecutive_failures: u32,
    /// Why Keel turned it off, when it did.
    pub disabled_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Webhook {
    /// Whether it subscribes to events of `kind`.
    pub fn wants(&self, kind: &str) -> bool {
        self.event_types.iter().any(|pattern| {
            pattern == "*"
                || pattern == kind
                || pattern.strip_suffix(".*").is_some_and(|resource| {
                    kind.split_once('.').is_some_and(|(r, _)| r == resource)
                })
        })
    }
}

/// A webhook's secrets as stored: sealed with the instance key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSecrets {
    pub current: Vec<u8>,
    /// The secret before the last rotation, signing too until it expires.
    pub previous: Option<(Vec<u8>, DateTime<Utc>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    Pending,
    Succeeded,
    /// Every attempt failed (or the target was refused); a dead letter holds it.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Pending, Self::Succeeded, Self::Failed]
            .into_iter()
            .find(|status| status.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: Uuid,
    pub webhook_id: Uuid,
    pub organization_id: Uuid,
    /// The event's id: the `webhook-id` header, the same on every attempt and replay, for
    /// receivers to drop duplicates.
    pub event_id: Uuid,
    pub event_type: String,
    /// The JSON body sent.
    pub payload: String,
    pub status: DeliveryStatus,
    pub attempts: u32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub response_status: Option<u16>,
    pub response_excerpt: Option<String>,
    pub latency_ms: Option<u32>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// The id of the request that wrote the event, sent as `x-request-id`.
    pub request_id: Option<String>,
}

/// One attempt of a delivery, as it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryAttempt {
    /// 1 for the first.
    pub attempt: u32,
    pub attempted_at: DateTime<Utc>,
    pub response_status: Option<u16>,
    /// The answer's body, its first KiB.
    pub response_excerpt: Option<String>,
    pub latency_ms: Option<u32>,
    pub error: Option<String>,
}

impl Delivery {
    fn new(webhook: &Webhook, event: &Event, now: DateTime<Utc>) -> Self {
        Self {
            id: Uuid::now_v7(),
            webhook_id: webhook.id,
            organization_id: webhook.organization_id,
            event_id: event.id,
            event_type: event.kind.name().to_owned(),
            payload: payload(event),
            request_id: event.origin.client.request_id.clone(),
            status: DeliveryStatus::Pending,
            attempts: 0,
            next_attempt_at: Some(now),
            response_status: None,
            response_excerpt: None,
            latency_ms: None,
            error: None,
            created_at: now,
            last_attempt_at: None,
        }
    }

    /// The same event again, as a new delivery due now.
    fn replayed(&self, id: Uuid, now: DateTime<Utc>) -> Self {
        Self {
            id,
            status: DeliveryStatus::Pending,
            attempts: 0,
            next_attempt_at: Some(now),
            response_status: None,
            response_excerpt: None,
            latency_ms: None,
            error: None,
            created_at: now,
            last_attempt_at: None,
            ..self.clone()
        }
    }
}

/// The Standard Webhooks body: `{"type", "timestamp", "data"}`.
pub fn payload(event: &Event) -> String {
    let data: serde_json::Value =
        serde_json::from_str(&event.data).unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "type": event.kind.name(),
        "timestamp": event.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "data": data,
    })
    .to_string()
}

/// One attempt as the endpoint answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    /// The response body's first `EXCERPT_BYTES` (lossy UTF-8).
    pub excerpt: String,
    pub latency: std::time::Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendFailure {
    /// The target is not allowed (a private address, a scheme other than http(s)): never
    /// retried.
    Refused(String),
    /// No answer: connection refused or reset, timeout, TLS. Retried.
    Failed(String),
}

/// A message to sign and post.
pub struct Outgoing<'a> {
    pub url: &'a str,
    pub message_id: Uuid,
    pub body: &'a str,
    /// The request that wrote the event, passed on for tracing.
    pub request_id: Option<&'a str>,
    /// Raw secrets that each sign it (the current one, and the previous during its grace).
    pub secrets: &'a [Vec<u8>],
}

/// HTTP delivery, signed per Standard Webhooks, guarded against private targets.
#[async_trait::async_trait]
pub trait WebhookSender: Send + Sync {
    async fn send(&self, outgoing: Outgoing<'_>) -> std::result::Result<Answer, SendFailure>;
}

#[async_trait::async_trait]
pub trait WebhookStore: Send + Sync {
    /// Changes write `events` in their transaction.
    async fn insert_webhook(
        &self,
        webhook: &Webhook,
        secret: &[u8],
        events: &[Event],
    ) -> Result<()>;
    async fn find_webhook(&self, organization_id: Uuid, id: Uuid) -> Result<Option<Webhook>>;
    async fn find_webhook_secrets(&self, id: Uuid) -> Result<Option<StoredSecrets>>;
    /// Webhooks after `after` (by id).
    async fn list_webhooks(
        &self,
        organization_id: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<Webhook>>;
    /// Saves url, description, event types, activity, rate limit and health.
    async fn update_webhook(&self, webhook: &Webhook, events: &[Event]) -> Result<()>;
    async fn delete_webhook(&self, organization_id: Uuid, id: Uuid, events: &[Event])
    -> Result<()>;
    async fn rotate_webhook_secret(
        &self,
        id: Uuid,
        secret: &[u8],
        previous: &[u8],
        previous_expires_at: DateTime<Utc>,
        events: &[Event],
    ) -> Result<()>;
    /// The active webhooks of these organizations.
    async fn active_webhooks(&self, organization_ids: &[Uuid]) -> Result<Vec<Webhook>>;
    async fn insert_deliveries(&self, deliveries: &[Delivery]) -> Result<()>;
    async fn find_delivery(&self, id: Uuid) -> Result<Option<Delivery>>;
    /// A webhook's deliveries, newest first, before `before` (by id).
    async fn list_deliveries(
        &self,
        webhook_id: Uuid,
        before: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<Delivery>>;
    /// A webhook's failed deliveries created at or after `since`.
    async fn failed_deliveries_since(
        &self,
        webhook_id: Uuid,
        since: DateTime<Utc>,
    ) -> Result<Vec<Delivery>>;
    /// Takes up to `limit` pending deliveries due at `now` that no worker holds, holding them
    /// until `lease_until`.
    async fn claim_due_deliveries(
        &self,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<Delivery>>;
    /// Saves a delivery after an attempt (status, attempts, next attempt, the answer) and
    /// releases it; the attempt (when it made one: `last_attempt_at`) joins its history.
    async fn record_attempt(&self, delivery: &Delivery) -> Result<()>;
    /// A delivery's attempts, first first.
    async fn list_delivery_attempts(&self, delivery_id: Uuid) -> Result<Vec<DeliveryAttempt>>;
    /// Counts a delivery's outcome on its webhook: a success clears the run of failures, a
    /// failure adds to it; answers the run.
    async fn count_webhook_outcome(&self, id: Uuid, succeeded: bool) -> Result<u32>;
    /// Deliveries by status, for monitoring.
    async fn delivery_counts(&self) -> Result<Vec<(String, u64)>>;
    /// Deletes finished (succeeded or failed) deliveries created before `cutoff`; answers how
    /// many.
    async fn delete_deliveries_finished_before(&self, cutoff: DateTime<Utc>) -> Result<u64>;
    /// Makes the deliveries held while the webhook was off due at `now`.
    async fn release_held_deliveries(&self, webhook_id: Uuid, now: DateTime<Utc>) -> Result<u64>;
}

#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// The waits before the second, third… attempt; the attempts are one more than the waits.
    pub retry_schedule: Vec<std::time::Duration>,
    /// Failed deliveries in a row that turn a webhook off.
    pub disable_after_failures: u32,
    /// How long a rotated-out secret still signs.
    pub secret_grace: Duration,
    /// How long a worker holds a claimed delivery before another may take it.
    pub lease: Duration,
}

/// A delivery given up, as its dead letter keeps it (to queue it again).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GivenUpDelivery {
    pub delivery_id: Uuid,
    pub webhook_id: Uuid,
    pub event_type: String,
}

/// What one round of deliveries came to.
#[derive(Debug, Default)]
pub struct DeliveryRound {
    /// Deliveries claimed (sent, postponed by the rate limit, or held for an inactive
    /// webhook).
    pub claimed: usize,
    pub sent: usize,
    /// Deliveries given up in this round, for the dead-letter queue.
    pub given_up: Vec<Delivery>,
    /// Deliveries that succeeded, whose dead letters (if retried) are resolved.
    pub succeeded: Vec<Uuid>,
}

/// What `WebhookService` works through.
pub struct WebhookPorts {
    pub store: Arc<dyn WebhookStore>,
    pub sender: Arc<dyn WebhookSender>,
    pub keyring: Arc<dyn Keyring>,
    pub rate_limits: Arc<RateLimits>,
    pub pages: Arc<PageTokens>,
    pub clock: Arc<dyn Clock>,
}

pub struct WebhookService {
    store: Arc<dyn WebhookStore>,
    sender: Arc<dyn WebhookSender>,
    keyring: Arc<dyn Keyring>,
    rate_limits: Arc<RateLimits>,
    pages: Arc<PageTokens>,
    clock: Arc<dyn Clock>,
    settings: WebhookSettings,
}

/// Changes to a webhook; `None` keeps the current value.
#[derive(Debug, Default)]
pub struct WebhookChanges<'a> {
    pub url: Option<&'a str>,
    pub description: Option<&'a str>,
    pub event_types: Option<&'a [String]>,
    pub is_active: Option<bool>,
    pub rate_limit_per_second: Option<u32>,
}

fn parse_event_types(raw: &[String]) -> std::result::Result<Vec<String>, FieldViolation> {
    if raw.is_empty() {
        return Err(FieldViolation::new(
            "events",
            "NO_EVENT_TYPES",
            "name at least one event type, a pattern like member.*, or *",
        ));
    }
    let known = EventKind::patterns();
    let mut types: Vec<String> = Vec::with_capacity(raw.len());
    for pattern in raw.iter().map(|pattern| pattern.trim()) {
        if !known.iter().any(|known| known == pattern) {
            return Err(FieldViolation::new(
                "events",
                "UNKNOWN_EVENT_TYPE",
                format!(
                    "{pattern:?} is no event type of the catalog (GET /api/v1/webhooks/events), \
                     pattern like member.*, or *"
                ),
            ));
        }
        if !types.iter().any(|known| known == pattern) {
            types.push(pattern.to_owned());
        }
    }
    Ok(types)
}

fn parse_description(raw: &str) -> std::result::Result<String, FieldViolation> {
    bounded_text(
        "description",
        "INVALID_DESCRIPTION",
        raw,
        500,
        Blank::Allowed,
    )
}

impl WebhookService {
    pub fn new(ports: WebhookPorts, settings: WebhookSettings) -> Self {
        Self {
            store: ports.store,
            sender: ports.sender,
            keyring: ports.keyring,
            rate_limits: ports.rate_limits,
            pages: ports.pages,
            clock: ports.clock,
            settings,
        }
    }

    fn event(&self, kind: EventKind, origin: &Origin, webhook: &Webhook) -> Event {
        Event::new(
            kind,
            origin,
            self.clock.as_ref(),
            &WebhookData::from(webhook),
        )
    }

    /// Creates a webhook; answers it with its secret (`whsec_…`), shown only now.
    pub async fn create(
        &self,
        access: &Access,
        url: &str,
        description: &str,
        event_types: &[String],
        rate_limit_per_second: u32,
    ) -> Result<(Webhook, String)> {
        let mut violations = Violations::default();
        let url = violations.check(http_url("url", url));
        let description = violations.check(parse_description(description));
        let event_types = violations.check(parse_event_types(event_types));
        let (Some(url), Some(description), Some(event_types)) = (url, description, event_types)
        else {
            return Err(violations.into_error());
        };
        let existing = self
            .store
            .list_webhooks(access.organization_id, None, MAX_WEBHOOKS)
            .await?;
        if existing.len() >= MAX_WEBHOOKS {
            return Err(Error::new(
                super::ErrorKind::ResourceExhausted,
                "TOO_MANY_WEBHOOKS",
                format!("an organization has at most {MAX_WEBHOOKS} webhooks; delete one first"),
            ));
        }
        let now = truncate_to_micros(self.clock.now());
        let mut webhook = Webhook {
            id: Uuid::now_v7(),
            organization_id: access.organization_id,
            url,
            description,
            event_types,
            is_active: true,
            rate_limit_per_second,
            consecutive_failures: 0,
            disabled_reason: None,
            created_at: now,
            updated_at: now,
        };
        let (shown, raw) = signing_secret();
        let sealed = self.keyring.seal(SECRET_PURPOSE, &raw)?;
        let created = self.event(EventKind::WebhookCreated, &access.origin(), &webhook);
        // Made as its own creation happened: it receives only what happens after.
        webhook.created_at = created.occurred_at;
        webhook.updated_at = created.occurred_at;
        self.store
            .insert_webhook(&webhook, &sealed, &[created])
            .await?;
        Ok((webhook, shown))
    }

    pub async fn get(&self, access: &Access, id: Uuid) -> Result<Webhook> {
        Ok(self
            .store
            .find_webhook(access.organization_id, id)
            .await?
            .ok_or(Missing::Webhook)?)
    }

    pub async fn list(
        &self,
        access: &Access,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<Webhook>> {
        let list = format!("webhooks:{}", access.organization_id);
        let request = self.pages.request(&list, page_size, page_token)?;
        let rows = self
            .store
            .list_webhooks(access.organization_id, request.after, request.fetch_limit())
            .await?;
        Ok(self.pages.page(&list, request, rows, |webhook| webhook.id))
    }

    pub async fn update(
        &self,
        access: &Access,
        id: Uuid,
        changes: WebhookChanges<'_>,
    ) -> Result<Webhook> {
        let mut webhook = self.get(access, id).await?;
        let mut violations = Violations::default();
        violations.update(
            &mut webhook.url,
            changes.url.map(|url| http_url("url", url)),
        );
        violations.update(
            &mut webhook.description,
            changes.description.map(parse_description),
        );
        violations.update(
            &mut webhook.event_types,
            changes.event_types.map(parse_event_types),
        );
        violations.finish()?;
        if let Some(rate) = changes.rate_limit_per_second {
            webhook.rate_limit_per_second = rate;
        }
        let turned_on = changes.is_active == Some(true) && !webhook.is_active;
        if let Some(active) = changes.is_active {
            webhook.is_active = active;
        }
        if turned_on {
            // A fresh run of failures.
            webhook.consecutive_failures = 0;
            webhook.disabled_reason = None;
        }
        webhook.updated_at = truncate_to_micros(self.clock.now());
        let updated = self.event(EventKind::WebhookUpdated, &access.origin(), &webhook);
        self.store.update_webhook(&webhook, &[updated]).await?;
        if turned_on {
            self.store
                .release_held_deliveries(webhook.id, webhook.updated_at)
                .await?;
        }
        Ok(webhook)
    }

    pub async fn delete(&self, access: &Access, id: Uuid) -> Result<()> {
        let webhook = self.get(access, id).await?;
        let deleted = self.event(EventKind::WebhookDeleted, &access.origin(), &webhook);
        self.store
            .delete_webhook(access.organization_id, webhook.id, &[deleted])
            .await
    }

    /// A new secret, shown once; the old one keeps signing (beside it) for the grace period.
    pub async fn rotate_secret(&self, access: &Access, id: Uuid) -> Result<(Webhook, String)> {
        let webhook = self.get(access, id).await?;
        let secrets = self
            .store
            .find_webhook_secrets(webhook.id)
            .await?
            .ok_or(Missing::Webhook)?;
        let (shown, raw) = signing_secret();
        let sealed = self.keyring.seal(SECRET_PURPOSE, &raw)?;
        let expires_at = truncate_to_micros(self.clock.now() + self.settings.secret_grace);
        let rotated = self.event(EventKind::WebhookSecretRotated, &access.origin(), &webhook);
        self.store
            .rotate_webhook_secret(
                webhook.id,
                &sealed,
                &secrets.current,
                expires_at,
                &[rotated],
            )
            .await?;
        Ok((webhook, shown))
    }

    /// Sends `test.event` to this endpoint alone; answers the delivery (pending).
    pub async fn send_test(&self, access: &Access, id: Uuid) -> Result<Delivery> {
        let webhook = self.get(access, id).await?;
        let data = TestEventData {
            webhook_id: webhook.id,
            organization_id: webhook.organization_id,
            message: "a test event from Keel".to_owned(),
        };
        let event = Event::new(
            EventKind::TestEvent,
            &access.origin(),
            self.clock.as_ref(),
            &data,
        );
        let delivery = Delivery::new(&webhook, &event, truncate_to_micros(self.clock.now()));
        self.store
            .insert_deliveries(std::slice::from_ref(&delivery))
            .await?;
        Ok(delivery)
    }

    pub async fn list_deliveries(
        &self,
        access: &Access,
        id: Uuid,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<Delivery>> {
        let webhook = self.get(access, id).await?;
        let list = format!("webhook-deliveries:{}", webhook.id);
        let request = self.pages.request(&list, page_size, page_token)?;
        let rows = self
            .store
            .list_deliveries(webhook.id, request.after, request.fetch_limit())
            .await?;
        Ok(self
            .pages
            .page(&list, request, rows, |delivery| delivery.id))
    }

    /// Sends one delivery's event again, as a new delivery due now.
    pub async fn replay(&self, access: &Access, id: Uuid, delivery_id: Uuid) -> Result<Delivery> {
        let delivery = self.delivery(access, id, delivery_id).await?;
        let replay = delivery.replayed(Uuid::now_v7(), truncate_to_micros(self.clock.now()));
        self.store
            .insert_deliveries(std::slice::from_ref(&replay))
            .await?;
        Ok(replay)
    }

    /// A delivery's attempts, first first.
    pub async fn attempts(
        &self,
        access: &Access,
        id: Uuid,
        delivery_id: Uuid,
    ) -> Result<Vec<DeliveryAttempt>> {
        let delivery = self.delivery(access, id, delivery_id).await?;
        self.store.list_delivery_attempts(delivery.id).await
    }

    /// Delivery `delivery_id` of webhook `id`.
    async fn delivery(&self, access: &Access, id: Uuid, delivery_id: Uuid) -> Result<Delivery> {
        let webhook = self.get(access, id).await?;
        self.store
            .find_delivery(delivery_id)
            .await?
            .filter(|delivery| delivery.webhook_id == webhook.id)
            .ok_or_else(|| Missing::WebhookDelivery.into())
    }

    /// Sends again every delivery to this endpoint that failed since `since`; answers the new
    /// deliveries.
    pub async fn recover(
        &self,
        access: &Access,
        id: Uuid,
        since: DateTime<Utc>,
    ) -> Result<Vec<Delivery>> {
        let webhook = self.get(access, id).await?;
        let now = truncate_to_micros(self.clock.now());
        let replays: Vec<Delivery> = self
            .store
            .failed_deliveries_since(webhook.id, since)
            .await?
            .iter()
            .map(|failed| failed.replayed(Uuid::now_v7(), now))
            .collect();
        self.store.insert_deliveries(&replays).await?;
        Ok(replays)
    }

    /// Deliveries by status: `pending`, `succeeded`, `failed`.
    pub async fn delivery_counts(&self) -> Result<Vec<(String, u64)>> {
        self.store.delivery_counts().await
    }

    /// Deletes deliveries finished more than `retention` ago (a failed one's dead letter keeps
    /// what a retry needs until then).
    pub async fn purge_finished(&self, retention: Duration) -> Result<u64> {
        self.store
            .delete_deliveries_finished_before(self.clock.now() - retention)
            .await
    }

    /// A dead letter's retry: the given-up delivery again, as the new delivery `id`.
    pub async fn replay_given_up(&self, delivery_id: Uuid, id: Uuid) -> Result<()> {
        let delivery = self
            .store
            .find_delivery(delivery_id)
            .await?
            .ok_or(Missing::WebhookDelivery)?;
        let replay = delivery.replayed(id, truncate_to_micros(self.clock.now()));
        self.store.insert_deliveries(&[replay]).await
    }

    /// The deliveries of a batch of outbox events: one per event and active webhook of its
    /// organization that subscribes to its type and existed when it happened.
    pub async fn deliveries_for(&self, events: &[StoredEvent]) -> Result<Vec<Delivery>> {
        let mut organizations: Vec<Uuid> = events
            .iter()
            .filter_map(|stored| stored.event.organization_id)
            .collect();
        organizations.sort_unstable();
        organizations.dedup();
        if organizations.is_empty() {
            return Ok(Vec::new());
        }
        let mut webhooks: HashMap<Uuid, Vec<Webhook>> = HashMap::new();
        for webhook in self.store.active_webhooks(&organizations).await? {
            webhooks
                .entry(webhook.organization_id)
                .or_default()
                .push(webhook);
        }
        let now = truncate_to_micros(self.clock.now());
        let mut deliveries = Vec::new();
        for StoredEvent { event, .. } in events {
            let Some(subscribed) = event
                .organization_id
                .and_then(|organization_id| webhooks.get(&organization_id))
            else {
                continue;
            };
            let kind = event.kind.name();
            // A webhook receives what happened after it was made.
            let receiving = subscribed
                .iter()
                .filter(|webhook| webhook.created_at < event.occurred_at && webhook.wants(kind));
            for webhook in receiving {
                deliveries.push(Delivery::new(webhook, event, now));
            }
        }
        Ok(deliveries)
    }

    /// Claims and sends up to `limit` due deliveries, `concurrency` at once.
    pub async fn deliver_due(&self, limit: usize, concurrency: usize) -> Result<DeliveryRound> {
        use futures_util::StreamExt;
        let now = self.clock.now();
        let claimed = self
            .store
            .claim_due_deliveries(now, now + self.settings.lease, limit)
            .await?;
        let outcomes: Vec<Result<(Delivery, bool)>> = futures_util::stream::iter(claimed)
            .map(|delivery| self.attempt(delivery))
            .buffer_unordered(concurrency.max(1))
            .collect()
            .await;
        let mut round = DeliveryRound {
            claimed: outcomes.len(),
            ..DeliveryRound::default()
        };
        for outcome in outcomes {
            let (delivery, sent) = outcome?;
            if sent {
                round.sent += 1;
            }
            match delivery.status {
                DeliveryStatus::Succeeded => round.succeeded.push(delivery.id),
                DeliveryStatus::Failed => round.given_up.push(delivery),
                DeliveryStatus::Pending => {}
            }
        }
        Ok(round)
    }

    /// One attempt at a claimed delivery; answers it as saved, and whether it was sent.
    async fn attempt(&self, mut delivery: Delivery) -> Result<(Delivery, bool)> {
        let now = truncate_to_micros(self.clock.now());
        let webhook = self
            .store
            .find_webhook(delivery.organization_id, delivery.webhook_id)
            .await?;
        let Some(webhook) = webhook.filter(|webhook| webhook.is_active) else {
            // Turned off since: held (pending, not due) until it is turned on again.
            delivery.next_attempt_at = None;
            self.store.record_attempt(&delivery).await?;
            return Ok((delivery, false));
        };
        if webhook.rate_limit_per_second > 0 {
            let budget = Budget {
                limit: webhook.rate_limit_per_second,
                window: std::time::Duration::from_secs(1),
            };
            let admitted = self
                .rate_limits
                .admit(
                    &format!("webhook:{}", webhook.id),
                    budget,
                    "webhook rate limit",
                )
                .await;
            if admitted.is_err() {
                delivery.next_attempt_at = Some(now + Duration::seconds(1));
                self.store.record_attempt(&delivery).await?;
                return Ok((delivery, false));
            }
        }
        let secrets = self.signing_secrets(webhook.id, now).await?;
        let outcome = self
            .sender
            .send(Outgoing {
                url: &webhook.url,
                message_id: delivery.event_id,
                body: &delivery.payload,
                request_id: delivery.request_id.as_deref(),
                secrets: &secrets,
            })
            .await;
        delivery.attempts += 1;
        delivery.last_attempt_at = Some(now);
        delivery.response_status = None;
        delivery.response_excerpt = None;
        delivery.latency_ms = None;
        let retryable = match outcome {
            Ok(answer) => {
                delivery.response_status = Some(answer.status);
                delivery.response_excerpt = Some(answer.excerpt);
                delivery.latency_ms =
                    Some(u32::try_from(answer.latency.as_millis()).unwrap_or(u32::MAX));
                if (200..300).contains(&answer.status) {
                    delivery.error = None;
                    None
                } else {
                    delivery.error = Some(format!("the endpoint answered {}", answer.status));
                    Some(true)
                }
            }
            Err(SendFailure::Failed(error)) => {
                delivery.error = Some(error);
                Some(true)
            }
            Err(SendFailure::Refused(error)) => {
                delivery.error = Some(error);
                Some(false)
            }
        };
        delivery.status = match retryable {
            None => DeliveryStatus::Succeeded,
            Some(true) => match self.wait_after(delivery.attempts) {
                Some(wait) => {
                    delivery.next_attempt_at = Some(now + wait);
                    DeliveryStatus::Pending
                }
                None => DeliveryStatus::Failed,
            },
            Some(false) => DeliveryStatus::Failed,
        };
        if delivery.status != DeliveryStatus::Pending {
            delivery.next_attempt_at = None;
        }
        self.store.record_attempt(&delivery).await?;
        self.count_outcome(&webhook, retryable.is_none()).await?;
        Ok((delivery, true))
    }

    /// The wait before the attempt after `attempts`, or `None` when they are spent.
    fn wait_after(&self, attempts: u32) -> Option<Duration> {
        let index = usize::try_from(attempts).ok()?.checked_sub(1)?;
        self.settings
            .retry_schedule
            .get(index)
            .and_then(|wait| Duration::from_std(*wait).ok())
    }

    async fn signing_secrets(&self, id: Uuid, now: DateTime<Utc>) -> Result<Vec<Vec<u8>>> {
        let stored = self
            .store
            .find_webhook_secrets(id)
            .await?
            .ok_or(Missing::Webhook)?;
        let mut secrets = vec![self.keyring.open(SECRET_PURPOSE, &stored.current)?];
        if let Some((previous, expires_at)) = stored.previous
            && expires_at > now
        {
            secrets.push(self.keyring.open(SECRET_PURPOSE, &previous)?);
        }
        Ok(secrets)
    }

    /// Counts the outcome; the run of failures reaching the setting turns the webhook off,
    /// recorded as `webhook.disabled` (an event its organization's admins see).
    async fn count_outcome(&self, webhook: &Webhook, succeeded: bool) -> Result<()> {
        let run = self
            .store
            .count_webhook_outcome(webhook.id, succeeded)
            .await?;
        // The failure that reaches the setting turns it off, once; attempts already under
        // way then count past it.
        if succeeded || run != self.settings.disable_after_failures {
            return Ok(());
        }
        let mut disabled = webhook.clone();
        disabled.is_active = false;
        disabled.consecutive_failures = run;
        disabled.disabled_reason = Some(format!(
            "{run} deliveries in a row failed; fix the endpoint, then turn the webhook on again \
             and recover what it missed"
        ));
        disabled.updated_at = truncate_to_micros(self.clock.now());
        let event = self.event(EventKind::WebhookDisabled, &Origin::system(), &disabled);
        self.store.update_webhook(&disabled, &[event]).await?;
        tracing::warn!(webhook_id = %webhook.id, organization_id = %webhook.organization_id, run, "webhook disabled after repeated failures");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_types_and_resources() {
        let webhook = |types: &[&str]| Webhook {
            id: Uuid::nil(),
            organization_id: Uuid::nil(),
            url: String::new(),
            description: String::new(),
            event_types: types.iter().map(|t| (*t).to_owned()).collect(),
            is_active: true,
            rate_limit_per_second: 0,
            consecutive_failures: 0,
            disabled_reason: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        assert!(webhook(&["*"]).wants("user.created"));
        assert!(webhook(&["member.*"]).wants("member.added"));
        assert!(!webhook(&["member.*"]).wants("team.member_added"));
        assert!(!webhook(&["member.*"]).wants("membership.added"));
        assert!(webhook(&["team.created", "role.*"]).wants("team.created"));
        assert!(!webhook(&["team.created"]).wants("team.deleted"));
    }

    #[test]
    fn event_types_are_checked_against_the_catalog() {
        let types = |raw: &[&str]| {
            parse_event_types(&raw.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>())
        };
        assert_eq!(
            types(&["member.*", "member.*", "*"]).unwrap(),
            ["member.*", "*"]
        );
        assert!(types(&["member.added", "test.event"]).is_ok());
        for bad in [&["nope.*"][..], &["member.nope"], &[""], &[]] {
            assert!(types(bad).is_err(), "{bad:?}");
        }
    }
}
