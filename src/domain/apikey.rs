//! API keys: long-lived credentials for programs, acting for their owner within their scopes.
//!
//! A key reads `keel_<prefix>_<secret>`: the prefix (8 random lower-case letters and digits)
//! finds the record and is shown in listings; the whole key is stored only as a keyed digest
//! (HMAC-SHA256 under the instance secret), compared in constant time. A fast keyed hash is
//! right here: the secret part carries 256 random bits, so there is nothing to brute-force,
//! and the key in the digest means a copy of the database alone cannot even test a guess.

use crate::domain::cache::{Cache, generation};
use crate::domain::clock::{Clock, truncate_to_micros};
use crate::domain::error::{Error, ErrorKind, FieldViolation, Missing, Result, Violations};
use crate::domain::events::{ApiKeyData, Event, EventKind, Origin};
use crate::domain::principal::Principal;
use crate::domain::secret::{self, Keyring};
use crate::domain::tenancy::access::{AccessControl, Scope};
use crate::domain::tenancy::permissions;
use crate::domain::text::{Blank, bounded_text};
use chrono::{DateTime, Duration, Utc};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKey {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub prefix: String,
    pub scopes: Vec<String>,
    /// The one organization the key may act in; unset for a key that acts wherever its owner
    /// may.
    pub organization_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    fn is_usable(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|expires| expires > now)
    }
}

/// A key record with the digest it is verified against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredApiKey {
    pub key: ApiKey,
    pub digest: Vec<u8>,
}

#[async_trait::async_trait]
pub trait ApiKeyStore: Send + Sync {
    /// Changes write `events` in their transaction.
    async fn insert_api_key(&self, key: &ApiKey, digest: &[u8; 32], events: &[Event])
    -> Result<()>;
    /// The user's keys that are neither revoked nor expired at `now`, newest first.
    async fn list_active_api_keys(&self, user_id: Uuid, now: DateTime<Utc>) -> Result<Vec<ApiKey>>;
    async fn find_api_key(&self, id: Uuid) -> Result<Option<ApiKey>>;
    async fn find_api_key_by_prefix(&self, prefix: &str) -> Result<Option<StoredApiKey>>;
    /// Revokes a live key (no event when it was revoked already).
    async fn revoke_api_key(&self, id: Uuid, now: DateTime<Utc>, events: &[Event]) -> Result<()>;
    /// Revokes every live key of the user, writing the event `revoked` makes of each; answers
    /// the keys.
    async fn revoke_user_api_keys(
        &self,
        user_id: Uuid,
        now: DateTime<Utc>,
        revoked: &(dyn for<'key> Fn(&'key ApiKey) -> Event + Sync),
    ) -> Result<Vec<ApiKey>>;
    async fn touch_api_key(&self, id: Uuid, now: DateTime<Utc>) -> Result<()>;
}

const KEY_PREFIX: &str = "keel_";
const PREFIX_LENGTH: usize = 8;
const PREFIX_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
const DIGEST_PURPOSE: &str = "api-key";
const MAX_ACTIVE_KEYS: usize = 100;
const MAX_EXPIRY_DAYS: i32 = 3650;
const RECORD_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(300);
const TOUCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether a presented credential has the shape of a Keel API key (rather than a JWT).
pub fn looks_like_api_key(credential: &str) -> bool {
    credential.starts_with(KEY_PREFIX)
}

fn random_prefix() -> String {
    let mut rng = rand::rng();
    (0..PREFIX_LENGTH)
        .map(|_| char::from(PREFIX_ALPHABET[rng.random_range(0..PREFIX_ALPHABET.len())]))
        .collect()
}

fn record_key(prefix: &str) -> String {
    format!("api-key:{prefix}")
}

fn touched_key(id: Uuid) -> String {
    format!("api-key-touched:{id}")
}

fn invalid_key() -> Error {
    Error::unauthenticated("INVALID_API_KEY", "the API key is not valid")
}

pub struct ApiKeyService {
    store: Arc<dyn ApiKeyStore>,
    keyring: Arc<dyn Keyring>,
    cache: Arc<dyn Cache>,
    clock: Arc<dyn Clock>,
    access: Arc<AccessControl>,
}

impl ApiKeyService {
    pub fn new(
        store: Arc<dyn ApiKeyStore>,
        keyring: Arc<dyn Keyring>,
        cache: Arc<dyn Cache>,
        clock: Arc<dyn Clock>,
        access: Arc<AccessControl>,
    ) -> Self {
        Self {
            store,
            keyring,
            cache,
            clock,
            access,
        }
    }

    /// Creates a key for the caller; answers the record and the whole key, shown only now. The
    /// caller's email address must be verified: a key made before the address is proven would
    /// outlive the proof (account pre-hijacking). A key bound to an organization needs the
    /// `api_key:create` permission there.
    pub async fn create(
        &self,
        owner: &Principal,
        name: &str,
        expires_in_days: Option<i32>,
        scopes: Vec<String>,
        organization_id: Option<Uuid>,
    ) -> Result<(ApiKey, String)> {
        owner.session_id()?;
        if !owner.user.email_verified {
            return Err(Error::new(
                ErrorKind::FailedPrecondition,
                "EMAIL_NOT_VERIFIED",
                "verify your email address before creating API keys",
            ));
        }
        let organization_id = match organization_id {
            Some(organization_id) => Some(
                self.access
                    .authorize(
                        owner.clone(),
                        Scope::Organization(organization_id),
                        "api_key:create",
                    )
                    .await?
                    .organization_id,
            ),
            None => None,
        };
        let mut violations = Violations::default();
        let name = violations
            .check(bounded_text(
                "name",
                "INVALID_NAME",
                name,
                100,
                Blank::Refused,
            ))
            .unwrap_or_default();
        if expires_in_days.is_some_and(|days| !(1..=MAX_EXPIRY_DAYS).contains(&days)) {
            violations.push(FieldViolation::new(
                "expires_in_days",
                "INVALID_EXPIRY",
                format!("must be between 1 and {MAX_EXPIRY_DAYS}"),
            ));
        }
        let scopes: BTreeSet<String> = scopes
            .into_iter()
            .map(|scope| scope.trim().to_owned())
            .collect();
        for scope in scopes
            .iter()
            .filter(|scope| permissions::find(scope).is_none())
        {
            violations.push(FieldViolation::new(
                "scopes",
                "UNKNOWN_SCOPE",
                format!("{scope:?} is not in the permission catalog (GET /api/v1/permissions)"),
            ));
        }
        violations.finish()?;
        let now = truncate_to_micros(self.clock.now());
        if self
            .store
            .list_active_api_keys(owner.user.id, now)
            .await?
            .len()
            >= MAX_ACTIVE_KEYS
        {
            return Err(Error::new(
                ErrorKind::ResourceExhausted,
                "TOO_MANY_API_KEYS",
                format!(
                    "a user may hold at most {MAX_ACTIVE_KEYS} active API keys; revoke one first"
                ),
            ));
        }

        let prefix = random_prefix();
        let whole = format!("{KEY_PREFIX}{prefix}_{}", secret::generate());
        let key = ApiKey {
            id: Uuid::now_v7(),
            user_id: owner.user.id,
            name: name.to_owned(),
            prefix: format!("{KEY_PREFIX}{prefix}"),
            scopes: scopes.into_iter().collect(),
            organization_id,
            created_at: now,
            last_used_at: None,
            expires_at: expires_in_days.map(|days| now + Duration::days(days.into())),
            revoked_at: None,
        };
        let created = self.event(EventKind::ApiKeyCreated, &owner.into(), &key);
        self.store
            .insert_api_key(
                &key,
                &self.keyring.mac(DIGEST_PURPOSE, whole.as_bytes()),
                &[created],
            )
            .await?;
        tracing::info!(user_id = %owner.user.id, api_key_id = %key.id, "API key created");
        Ok((key, whole))
    }

    pub async fn list(&self, owner: &Principal) -> Result<Vec<ApiKey>> {
        owner.session_id()?;
        self.store
            .list_active_api_keys(owner.user.id, self.clock.now())
            .await
    }

    /// One of the caller's keys; another user's key answers not found.
    pub async fn get(&self, owner: &Principal, id: Uuid) -> Result<ApiKey> {
        owner.session_id()?;
        self.store
            .find_api_key(id)
            .await?
            .filter(|key| key.user_id == owner.user.id && key.revoked_at.is_none())
            .ok_or_else(|| Missing::ApiKey.into())
    }

    /// Revokes one of the caller's keys; it stops working on the next request.
    pub async fn revoke(&self, owner: &Principal, id: Uuid) -> Result<()> {
        let key = self.get(owner, id).await?;
        let revoked = self.event(EventKind::ApiKeyRevoked, &owner.into(), &key);
        self.store
            .revoke_api_key(key.id, truncate_to_micros(self.clock.now()), &[revoked])
            .await?;
        self.forget(std::slice::from_ref(&key.prefix)).await?;
        tracing::info!(user_id = %owner.user.id, api_key_id = %key.id, "API key revoked");
        Ok(())
    }

    /// Revokes every key of a user (a password reset, the first proof of the address); answers
    /// how many.
    pub async fn revoke_all_of(&self, user_id: Uuid, origin: &Origin) -> Result<usize> {
        let revoked = |key: &ApiKey| self.event(EventKind::ApiKeyRevoked, origin, key);
        let prefixes: Vec<String> = self
            .store
            .revoke_user_api_keys(user_id, truncate_to_micros(self.clock.now()), &revoked)
            .await?
            .into_iter()
            .map(|key| key.prefix)
            .collect();
        self.forget(&prefixes).await?;
        if !prefixes.is_empty() {
            tracing::info!(user_id = %user_id, count = prefixes.len(), "API keys revoked");
        }
        Ok(prefixes.len())
    }

    fn event(&self, kind: EventKind, origin: &Origin, key: &ApiKey) -> Event {
        let data = ApiKeyData {
            api_key_id: key.id,
            user_id: key.user_id,
            name: key.name.clone(),
            prefix: key.prefix.clone(),
            scopes: key.scopes.clone(),
            organization_id: key.organization_id,
        };
        Event::new(kind, origin, self.clock.as_ref(), &data)
    }

    /// Drops the cached records of revoked keys (here or with their organization), so that
    /// no read from before the revocation can cache them again (see `cache::generation`).
    pub async fn forget(&self, prefixes: &[String]) -> Result<()> {
        for prefix in prefixes {
            generation::bump(self.cache.as_ref(), &record_key(prefix)).await?;
            self.cache.delete(&record_key(prefix)).await?;
        }
        Ok(())
    }

    /// Checks a presented key: known prefix, matching digest (constant time), not revoked or
    /// expired. The record comes from the cache port when it is there.
    pub async fn verify(&self, presented: &str) -> Result<ApiKey> {
        let rest = presented.strip_prefix(KEY_PREFIX).ok_or_else(invalid_key)?;
        let (prefix, _) = rest.split_once('_').ok_or_else(invalid_key)?;
        let prefix = format!("{KEY_PREFIX}{prefix}");
        let keys = [record_key(&prefix), generation::key(&record_key(&prefix))];
        let mut cached = self.cache.get_many(&keys).await?.into_iter();
        let (cached_record, generation) = (
            cached.next().flatten(),
            generation::parse(cached.next().flatten().as_deref()),
        );
        let stored = match generation::untag(cached_record, generation)
            .and_then(|bytes| serde_json::from_slice::<StoredApiKey>(&bytes).ok())
        {
            Some(stored) => stored,
            None => {
                let stored = self
                    .store
                    .find_api_key_by_prefix(&prefix)
                    .await?
                    .ok_or_else(invalid_key)?;
                let encoded = serde_json::to_vec(&stored).map_err(Error::internal)?;
                self.cache
                    .set(
                        &record_key(&prefix),
                        &generation::tag(generation, &encoded),
                        RECORD_CACHE_TTL,
                    )
                    .await?;
                stored
            }
        };
        let expected = self.keyring.mac(DIGEST_PURPOSE, presented.as_bytes());
        if !bool::from(expected.as_slice().ct_eq(stored.digest.as_slice())) {
            return Err(invalid_key());
        }
        let now = self.clock.now();
        if stored.key.revoked_at.is_some() {
            return Err(Error::unauthenticated(
                "API_KEY_REVOKED",
                "the API key was revoked",
            ));
        }
        if !stored.key.is_usable(now) {
            return Err(Error::unauthenticated(
                "API_KEY_EXPIRED",
                "the API key expired",
            ));
        }
        self.touch(stored.key.id).await?;
        Ok(stored.key)
    }

    /// Records use at most once per `TOUCH_INTERVAL`: no write per request.
    async fn touch(&self, id: Uuid) -> Result<()> {
        if self.cache.get(&touched_key(id)).await?.is_some() {
            return Ok(());
        }
        self.cache
            .set(&touched_key(id), b"1", TOUCH_INTERVAL)
            .await?;
        self.store
            .touch_api_key(id, truncate_to_micros(self.clock.now()))
            .await
    }
}
