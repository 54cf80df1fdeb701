//! Integrations: outside systems that send an organization events (seed 003), and the
//! inbound door they send through.
//!
//! Each integration has one secret (`whsec_<base64>`, the Standard Webhooks format, so
//! senders' libraries take it as it is). A message proves itself either by a Standard
//! Webhooks signature under the secret (the secret never travels) or by the secret itself as
//! a key. The secret is stored sealed with the instance key, to check signatures, and as a
//! keyed digest, to find the integration a key names without trying each one.
//!
//! A message is received once per message id: the row that records it is unique on
//! (integration, id) and is written in the transaction of its event, so a repeat (a sender's
//! retry, a replayed capture within the timestamp window) changes nothing and is answered as
//! a success.

use super::auth::ClientInfo;
use super::clock::{Clock, truncate_to_micros};
use super::error::{Error, ErrorKind, FieldViolation, Missing, Result, Violations};
use super::events::{Event, EventKind, IntegrationData, IntegrationMessageData, Origin};
use super::page::{Page, PageTokens};
use super::secret::{Keyring, signing_secret};
use super::tenancy::access::Access;
use super::text::{Blank, bounded_text};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Duration, Utc};
use std::sync::Arc;
use uuid::Uuid;

const SECRET_PURPOSE: &str = "integration-secret";
const KEY_PURPOSE: &str = "integration-key";
const MAX_INTEGRATIONS: usize = 50;
/// How far a signed message's timestamp may be from Keel's clock, either way (Standard
/// Webhooks' recommendation).
const TIMESTAMP_TOLERANCE_SECONDS: i64 = 5 * 60;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Integration {
    pub id: Uuid,
    pub organization_id: Uuid,
    pub name: String,
    /// `stripe`, `github`, `custom`…: the `{integration_type}` of the original's route.
    pub integration_type: String,
    pub description: String,
    pub is_active: bool,
    /// When it last sent a message Keel accepted.
    pub last_event_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// How a received message proved where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthenticatedBy {
    Signature,
    Key,
}

impl AuthenticatedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Signature => "signature",
            Self::Key => "key",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Signature, Self::Key]
            .into_iter()
            .find(|how| how.as_str() == text)
    }
}

/// A message an integration sent, as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    pub id: Uuid,
    pub integration_id: Uuid,
    /// The sender's message id (`webhook-id`), or one Keel gave it.
    pub message_id: String,
    pub content_type: String,
    pub payload: String,
    pub authenticated_by: AuthenticatedBy,
    pub received_at: DateTime<Utc>,
}

/// How an inbound message names its integration.
#[derive(Debug, Clone, Copy)]
pub enum Addressed<'a> {
    Id(Uuid),
    /// The original's `/api/v1/webhooks/{integration_type}`: only a key says which one.
    Type(&'a str),
}

/// An inbound message with what authenticates it; empty fields are absent.
#[derive(Debug, Clone, Copy)]
pub struct Inbound<'a> {
    pub addressed: Addressed<'a>,
    pub payload: &'a [u8],
    pub content_type: &'a str,
    pub key: &'a str,
    pub webhook_id: &'a str,
    pub webhook_timestamp: i64,
    pub webhook_signature: &'a str,
}

/// An integration with its secret, sealed as stored.
pub struct StoredIntegration {
    pub integration: Integration,
    pub sealed_secret: Vec<u8>,
}

#[async_trait::async_trait]
pub trait IntegrationStore: Send + Sync {
    /// Changes write `events` in their transaction.
    async fn insert_integration(
        &self,
        integration: &Integration,
        sealed_secret: &[u8],
        secret_digest: &[u8],
        events: &[Event],
    ) -> Result<()>;
    async fn find_integration(
        &self,
        organization_id: Uuid,
        id: Uuid,
    ) -> Result<Option<Integration>>;
    /// Any organization's integration, with its sealed secret (for checking a signature).
    async fn find_integration_with_secret(&self, id: Uuid) -> Result<Option<StoredIntegration>>;
    /// The integration whose secret has this keyed digest.
    async fn find_integration_by_secret(&self, secret_digest: &[u8])
    -> Result<Option<Integration>>;
    /// Integrations after `after` (by id).
    async fn list_integrations(
        &self,
        organization_id: Uuid,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<Integration>>;
    /// Saves name, description and activity.
    async fn update_integration(&self, integration: &Integration, events: &[Event]) -> Result<()>;
    async fn delete_integration(
        &self,
        organization_id: Uuid,
        id: Uuid,
        events: &[Event],
    ) -> Result<()>;
    async fn replace_integration_secret(
        &self,
        id: Uuid,
        sealed_secret: &[u8],
        secret_digest: &[u8],
        events: &[Event],
    ) -> Result<()>;
    /// Records a message with its events; `false` (and nothing written) when its message id
    /// was received before.
    async fn insert_received_message(
        &self,
        message: &ReceivedMessage,
        events: &[Event],
    ) -> Result<bool>;
    async fn find_received_message(
        &self,
        integration_id: Uuid,
        message_id: &str,
    ) -> Result<Option<ReceivedMessage>>;
    /// An integration's messages, newest first, before `before` (by id).
    async fn list_received_messages(
        &self,
        integration_id: Uuid,
        before: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<ReceivedMessage>>;
    /// Deletes messages received before `cutoff`; answers how many.
    async fn delete_received_messages_before(&self, cutoff: DateTime<Utc>) -> Result<u64>;
}

/// What `IntegrationService` works through.
pub struct IntegrationPorts {
    pub store: Arc<dyn IntegrationStore>,
    pub keyring: Arc<dyn Keyring>,
    pub pages: Arc<PageTokens>,
    pub clock: Arc<dyn Clock>,
}

pub struct IntegrationService {
    store: Arc<dyn IntegrationStore>,
    keyring: Arc<dyn Keyring>,
    pages: Arc<PageTokens>,
    clock: Arc<dyn Clock>,
    /// The largest payload accepted, in bytes.
    max_payload_bytes: usize,
}

/// Changes to an integration; `None` keeps the current value.
#[derive(Debug, Default)]
pub struct IntegrationChanges<'a> {
    pub name: Option<&'a str>,
    pub description: Option<&'a str>,
    pub is_active: Option<bool>,
}

fn parse_name(raw: &str) -> std::result::Result<String, FieldViolation> {
    bounded_text("name", "INVALID_NAME", raw, 100, Blank::Refused)
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

/// The contract's pattern: `^[a-z][a-z0-9_-]{0,39}$`.
fn parse_type(raw: &str) -> std::result::Result<String, FieldViolation> {
    let valid = raw.len() <= 40
        && raw
            .bytes()
            .next()
            .is_some_and(|first| first.is_ascii_lowercase())
        && raw.bytes().all(|byte| {
            byte.is_ascii_lowercase() || byte.is_ascii_digit() || b"_-".contains(&byte)
        });
    if valid {
        Ok(raw.to_owned())
    } else {
        Err(FieldViolation::new(
            "integration_type",
            "INVALID_INTEGRATION_TYPE",
            "must be 1 to 40 lower case letters, digits, - and _, starting with a letter",
        ))
    }
}

/// The one answer to every failed authentication: which part was wrong is not said.
fn auth_failed() -> Error {
    Error::new(
        ErrorKind::Unauthenticated,
        "INTEGRATION_AUTH_FAILED",
        "the message is not authenticated: send it with the integration's key \
         (Authorization: Bearer whsec_…) or a Standard Webhooks signature under its secret",
    )
}

/// Whether one of the `v1,<base64>` signatures in `header` is the HMAC-SHA256 under `secret`
/// of `id.timestamp.payload`; compared in constant time.
fn signature_matches(
    secret: &[u8],
    message_id: &str,
    timestamp: i64,
    payload: &[u8],
    header: &str,
) -> bool {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let mut content = Vec::with_capacity(message_id.len() + payload.len() + 24);
    content.extend_from_slice(format!("{message_id}.{timestamp}.").as_bytes());
    content.extend_from_slice(payload);
    header
        .split_whitespace()
        .filter_map(|signature| signature.strip_prefix("v1,"))
        .filter_map(|encoded| STANDARD.decode(encoded).ok())
        .any(|signature| aws_lc_rs::hmac::verify(&key, &content, &signature).is_ok())
}

fn is_json(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence.ends_with("+json")
}

impl IntegrationService {
    pub fn new(ports: IntegrationPorts, max_payload_bytes: usize) -> Self {
        Self {
            store: ports.store,
            keyring: ports.keyring,
            pages: ports.pages,
            clock: ports.clock,
            max_payload_bytes,
        }
    }

    /// The largest payload accepted, in bytes.
    pub fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }

    fn event(&self, kind: EventKind, origin: &Origin, integration: &Integration) -> Event {
        Event::new(
            kind,
            origin,
            self.clock.as_ref(),
            &IntegrationData::from(integration),
        )
    }

    /// A new secret: the text shown once, sealed, and its keyed digest.
    fn issue_secret(&self) -> Result<(String, Vec<u8>, [u8; 32])> {
        let (shown, raw) = signing_secret();
        let sealed = self.keyring.seal(SECRET_PURPOSE, &raw)?;
        let digest = self.keyring.mac(KEY_PURPOSE, shown.as_bytes());
        Ok((shown, sealed, digest))
    }

    /// Creates an integration; answers it with its secret, shown only now.
    pub async fn create(
        &self,
        access: &Access,
        name: &str,
        integration_type: &str,
        description: &str,
    ) -> Result<(Integration, String)> {
        let mut violations = Violations::default();
        let name = violations.check(parse_name(name));
        let integration_type = violations.check(parse_type(integration_type));
        let description = violations.check(parse_description(description));
        let (Some(name), Some(integration_type), Some(description)) =
            (name, integration_type, description)
        else {
            return Err(violations.into_error());
        };
        let existing = self
            .store
            .list_integrations(access.organization_id, None, MAX_INTEGRATIONS)
            .await?;
        if existing.len() >= MAX_INTEGRATIONS {
            return Err(Error::new(
                ErrorKind::ResourceExhausted,
                "TOO_MANY_INTEGRATIONS",
                format!(
                    "an organization has at most {MAX_INTEGRATIONS} integrations; delete one first"
                ),
            ));
        }
        let now = truncate_to_micros(self.clock.now());
        let integration = Integration {
            id: Uuid::now_v7(),
            organization_id: access.organization_id,
            name,
            integration_type,
            description,
            is_active: true,
            last_event_at: None,
            created_at: now,
            updated_at: now,
        };
        let (shown, sealed, digest) = self.issue_secret()?;
        let created = self.event(
            EventKind::IntegrationCreated,
            &access.origin(),
            &integration,
        );
        self.store
            .insert_integration(&integration, &sealed, &digest, &[created])
            .await?;
        Ok((integration, shown))
    }

    pub async fn get(&self, access: &Access, id: Uuid) -> Result<Integration> {
        Ok(self
            .store
            .find_integration(access.organization_id, id)
            .await?
            .ok_or(Missing::Integration)?)
    }

    pub async fn list(
        &self,
        access: &Access,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<Integration>> {
        let list = format!("integrations:{}", access.organization_id);
        let request = self.pages.request(&list, page_size, page_token)?;
        let rows = self
            .store
            .list_integrations(access.organization_id, request.after, request.fetch_limit())
            .await?;
        Ok(self
            .pages
            .page(&list, request, rows, |integration| integration.id))
    }

    pub async fn update(
        &self,
        access: &Access,
        id: Uuid,
        changes: IntegrationChanges<'_>,
    ) -> Result<Integration> {
        let mut integration = self.get(access, id).await?;
        let mut violations = Violations::default();
        violations.update(&mut integration.name, changes.name.map(parse_name));
        violations.update(
            &mut integration.description,
            changes.description.map(parse_description),
        );
        violations.finish()?;
        if let Some(active) = changes.is_active {
            integration.is_active = active;
        }
        integration.updated_at = truncate_to_micros(self.clock.now());
        let updated = self.event(
            EventKind::IntegrationUpdated,
            &access.origin(),
            &integration,
        );
        self.store
            .update_integration(&integration, &[updated])
            .await?;
        Ok(integration)
    }

    pub async fn delete(&self, access: &Access, id: Uuid) -> Result<()> {
        let integration = self.get(access, id).await?;
        let deleted = self.event(
            EventKind::IntegrationDeleted,
            &access.origin(),
            &integration,
        );
        self.store
            .delete_integration(access.organization_id, integration.id, &[deleted])
            .await
    }

    /// A new secret, shown once; the old one stops working with this call.
    pub async fn regenerate_secret(
        &self,
        access: &Access,
        id: Uuid,
    ) -> Result<(Integration, String)> {
        let integration = self.get(access, id).await?;
        let (shown, sealed, digest) = self.issue_secret()?;
        let regenerated = self.event(
            EventKind::IntegrationSecretRegenerated,
            &access.origin(),
            &integration,
        );
        self.store
            .replace_integration_secret(integration.id, &sealed, &digest, &[regenerated])
            .await?;
        Ok((integration, shown))
    }

    pub async fn list_messages(
        &self,
        access: &Access,
        id: Uuid,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<ReceivedMessage>> {
        let integration = self.get(access, id).await?;
        let list = format!("integration-events:{}", integration.id);
        let request = self.pages.request(&list, page_size, page_token)?;
        let rows = self
            .store
            .list_received_messages(integration.id, request.after, request.fetch_limit())
            .await?;
        Ok(self.pages.page(&list, request, rows, |message| message.id))
    }

    /// The integration `inbound` names, if what authenticates it is right.
    async fn authenticate(&self, inbound: &Inbound<'_>) -> Result<(Integration, AuthenticatedBy)> {
        if !inbound.key.is_empty() {
            let digest = self.keyring.mac(KEY_PURPOSE, inbound.key.as_bytes());
            let integration = self
                .store
                .find_integration_by_secret(&digest)
                .await?
                .filter(|integration| match inbound.addressed {
                    Addressed::Id(id) => integration.id == id,
                    Addressed::Type(kind) => integration.integration_type == kind,
                })
                .ok_or_else(auth_failed)?;
            return Ok((integration, AuthenticatedBy::Key));
        }
        let Addressed::Id(id) = inbound.addressed else {
            return Err(auth_failed());
        };
        if inbound.webhook_signature.is_empty() {
            return Err(auth_failed());
        }
        let stored = self
            .store
            .find_integration_with_secret(id)
            .await?
            .ok_or_else(auth_failed)?;
        let secret = self.keyring.open(SECRET_PURPOSE, &stored.sealed_secret)?;
        if !signature_matches(
            &secret,
            inbound.webhook_id,
            inbound.webhook_timestamp,
            inbound.payload,
            inbound.webhook_signature,
        ) {
            return Err(auth_failed());
        }
        if inbound.webhook_id.is_empty() {
            return Err(Error::invalid_argument(
                "MESSAGE_ID_REQUIRED",
                "a signed message needs its id in the webhook-id header",
            ));
        }
        let age = self.clock.now().timestamp() - inbound.webhook_timestamp;
        if age.abs() > TIMESTAMP_TOLERANCE_SECONDS {
            return Err(Error::invalid_argument(
                "TIMESTAMP_OUT_OF_RANGE",
                format!(
                    "webhook-timestamp is {age} s from Keel's clock; it may be \
                     {TIMESTAMP_TOLERANCE_SECONDS} s at most (send messages as they happen)"
                ),
            ));
        }
        Ok((stored.integration, AuthenticatedBy::Signature))
    }

    /// Receives a message: authenticated, then stored and published as
    /// `integration.event_received` unless its id was received before. Answers the stored
    /// message and whether it was a repeat.
    pub async fn receive(
        &self,
        inbound: Inbound<'_>,
        client: &ClientInfo,
    ) -> Result<(ReceivedMessage, bool)> {
        if inbound.payload.len() > self.max_payload_bytes {
            return Err(Error::new(
                ErrorKind::ResourceExhausted,
                "PAYLOAD_TOO_LARGE",
                format!("messages are limited to {} bytes", self.max_payload_bytes),
            ));
        }
        let (integration, authenticated_by) = self.authenticate(&inbound).await?;
        if !integration.is_active {
            return Err(Error::new(
                ErrorKind::FailedPrecondition,
                "INTEGRATION_INACTIVE",
                "this integration is turned off; an organization admin can turn it on again",
            ));
        }
        let invalid =
            |message: &str| Error::invalid_argument("INVALID_PAYLOAD", message.to_owned());
        let text = std::str::from_utf8(inbound.payload)
            .map_err(|_| invalid("the body must be JSON or other UTF-8 text"))?;
        let payload = if is_json(inbound.content_type) {
            serde_json::from_str(text).map_err(|error| {
                Error::invalid_argument(
                    "INVALID_PAYLOAD",
                    format!("the body is sent as JSON but is not JSON: {error}"),
                )
            })?
        } else {
            serde_json::Value::String(text.to_owned())
        };
        let message = ReceivedMessage {
            id: Uuid::now_v7(),
            integration_id: integration.id,
            message_id: match inbound.webhook_id {
                "" => Uuid::now_v7().to_string(),
                given => given.to_owned(),
            },
            content_type: inbound.content_type.to_owned(),
            payload: text.to_owned(),
            authenticated_by,
            received_at: truncate_to_micros(self.clock.now()),
        };
        let received = Event::new(
            EventKind::IntegrationEventReceived,
            &Origin::anonymous(client),
            self.clock.as_ref(),
            &IntegrationMessageData {
                integration_id: integration.id,
                organization_id: integration.organization_id,
                integration_type: integration.integration_type,
                message_id: message.message_id.clone(),
                content_type: message.content_type.clone(),
                authenticated_by: authenticated_by.as_str().to_owned(),
                payload,
            },
        );
        if self
            .store
            .insert_received_message(&message, &[received])
            .await?
        {
            return Ok((message, false));
        }
        let first = self
            .store
            .find_received_message(integration.id, &message.message_id)
            .await?
            .ok_or_else(|| Error::internal("a repeated message whose first is gone"))?;
        Ok((first, true))
    }

    /// Deletes messages received more than `retention` ago; answers how many.
    pub async fn purge_received(&self, retention: Duration) -> Result<u64> {
        let cutoff = truncate_to_micros(self.clock.now() - retention);
        self.store.delete_received_messages_before(cutoff).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Standard Webhooks specification's example, received.
    #[test]
    fn signatures_are_checked_as_the_specification_signs() {
        let secret = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let payload = br#"{"test": 2432232314}"#;
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let good = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
        assert!(signature_matches(&secret, id, 1614265330, payload, good));
        let rotated = format!("v1,bm90IGl0 {good}");
        assert!(signature_matches(
            &secret, id, 1614265330, payload, &rotated
        ));
        assert!(!signature_matches(&secret, id, 1614265331, payload, good));
        assert!(!signature_matches(&secret, id, 1614265330, b"{}", good));
        assert!(!signature_matches(
            &secret,
            id,
            1614265330,
            payload,
            "v2,g0hM9SsE"
        ));
        assert!(!signature_matches(&secret, id, 1614265330, payload, ""));
    }

    #[test]
    fn json_media_types_are_recognised() {
        assert!(is_json("application/json"));
        assert!(is_json("Application/JSON; charset=utf-8"));
        assert!(is_json("application/vnd.github+json"));
        assert!(!is_json("text/plain"));
        assert!(!is_json(""));
    }
}
