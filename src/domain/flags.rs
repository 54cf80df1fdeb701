//! Feature flags: on for everyone, for targeted users, domains and organizations, or for a
//! stable share of users.
//!
//! Each replica evaluates from a snapshot of every flag in memory, tagged with the flags'
//! generation in the cache port; a change anywhere bumps the generation, so the next check on
//! any replica reloads. A user's share of a rollout is a hash of the flag's name and the user's
//! id: the same answer on every replica and after every restart, and a user inside 10% stays
//! inside at 20%.
//!
//! An organization's admins can override a flag for checks made within their organization
//! (on or off, whatever its targeting and rollout); a flag switched off stays off.

use crate::domain::cache::{Cache, generation};
use crate::domain::clock::{Clock, truncate_to_micros};
use crate::domain::error::{Error, ErrorKind, FieldViolation, Result};
use crate::domain::events::{Event, EventKind, FeatureFlagData, FeatureFlagOverrideData, Origin};
use crate::domain::principal::{Credential, Principal};
use crate::domain::tenancy::access::{Access, AccessControl};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use uuid::Uuid;

/// Who a flag is on for, besides everyone's rollout share. Sets, so that a check costs a few
/// lookups however long the lists.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Targeting {
    pub user_ids: BTreeSet<Uuid>,
    /// Lower case.
    pub emails: BTreeSet<String>,
    /// Lower case, without the `@`.
    pub email_domains: BTreeSet<String>,
    pub organization_ids: BTreeSet<Uuid>,
}

impl Targeting {
    /// Addresses and domains compare in lower case.
    pub fn normalized(self) -> Self {
        let lower = |items: BTreeSet<String>| {
            (items.into_iter())
                .map(|item| item.trim().to_ascii_lowercase())
                .collect()
        };
        Self {
            emails: lower(self.emails),
            email_domains: lower(self.email_domains),
            ..self
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FeatureFlag {
    pub id: Uuid,
    pub name: String,
    pub description: String,
    /// Off is off for everyone, targeted or not.
    pub is_enabled: bool,
    /// The share of all users (0.0 to 1.0) it is on for, besides the targeted ones.
    pub rollout: f64,
    pub targeting: Targeting,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Who asks.
pub struct Subject<'a> {
    pub user_id: Uuid,
    pub email: &'a str,
    pub organization_id: Option<Uuid>,
}

impl FeatureFlag {
    pub fn is_on_for(&self, subject: &Subject<'_>) -> bool {
        if !self.is_enabled {
            return false;
        }
        let targeting = &self.targeting;
        let email = subject.email.to_ascii_lowercase();
        let domain = email.rsplit_once('@').map(|(_, domain)| domain);
        targeting.user_ids.contains(&subject.user_id)
            || targeting.emails.contains(&email)
            || domain.is_some_and(|domain| targeting.email_domains.contains(domain))
            || subject
                .organization_id
                .is_some_and(|organization| targeting.organization_ids.contains(&organization))
            || rollout_position(&self.name, subject.user_id) < self.rollout
    }
}

/// Where a user falls in a flag's rollout, in [0, 1): the first 8 bytes of
/// SHA-256(flag name, user id).
pub fn rollout_position(flag: &str, user_id: Uuid) -> f64 {
    let digest = Sha256::new()
        .chain_update(flag.as_bytes())
        .chain_update([0])
        .chain_update(user_id.as_bytes())
        .finalize();
    let mut head = [0u8; 8];
    head.copy_from_slice(&digest[..8]);
    // 53 bits: every value is exactly a double below 1.
    (u64::from_be_bytes(head) >> 11) as f64 / (1u64 << 53) as f64
}

/// What an update changes (`None`: kept).
#[derive(Default)]
pub struct FlagChange {
    pub description: Option<String>,
    pub is_enabled: Option<bool>,
    pub rollout: Option<f64>,
    pub targeting: Option<Targeting>,
}

/// An organization's decision about a flag, for checks made within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlagOverride {
    pub flag_id: Uuid,
    pub organization_id: Uuid,
    pub is_enabled: bool,
    pub updated_at: DateTime<Utc>,
}

#[async_trait::async_trait]
pub trait FeatureFlagStore: Send + Sync {
    /// `FEATURE_FLAG_EXISTS` when the name is taken.
    async fn insert_flag(&self, flag: &FeatureFlag, events: &[Event]) -> Result<()>;
    async fn list_flags(&self) -> Result<Vec<FeatureFlag>>;
    /// False when there is no such flag.
    async fn update_flag(&self, flag: &FeatureFlag, events: &[Event]) -> Result<bool>;
    async fn delete_flag(&self, id: Uuid, events: &[Event]) -> Result<bool>;
    async fn list_flag_overrides(&self) -> Result<Vec<FlagOverride>>;
    /// Inserts or replaces it; false when its flag is gone.
    async fn set_flag_override(&self, flag: &FlagOverride, events: &[Event]) -> Result<bool>;
    async fn delete_flag_override(
        &self,
        flag_id: Uuid,
        organization_id: Uuid,
        events: &[Event],
    ) -> Result<bool>;
}

const GENERATION: &str = "feature-flags";

fn not_found() -> Error {
    Error::not_found("FEATURE_FLAG_NOT_FOUND", "no such feature flag")
}

fn override_not_found() -> Error {
    Error::not_found(
        "FEATURE_FLAG_OVERRIDE_NOT_FOUND",
        "the organization has not overridden this flag",
    )
}

fn check_rollout(rollout: f64) -> Result<f64> {
    if (0.0..=1.0).contains(&rollout) {
        return Ok(rollout);
    }
    Err(Error::invalid_fields(vec![FieldViolation::new(
        "rollout_percentage",
        "double.gte_lte",
        "value must be greater than or equal to 0 and less than or equal to 1",
    )]))
}

/// The flags as evaluated: a snapshot by name with the organizations' overrides, and the
/// generation it was loaded at.
struct Snapshot {
    generation: u64,
    by_name: HashMap<String, FeatureFlag>,
    /// By flag and organization.
    overrides: HashMap<(Uuid, Uuid), FlagOverride>,
}

impl Snapshot {
    fn flag(&self, name: &str) -> Result<&FeatureFlag> {
        self.by_name.get(name).ok_or_else(not_found)
    }
}

pub struct FeatureFlagService {
    store: Arc<dyn FeatureFlagStore>,
    access: Arc<AccessControl>,
    cache: Arc<dyn Cache>,
    clock: Arc<dyn Clock>,
    snapshot: RwLock<Option<Arc<Snapshot>>>,
}

impl FeatureFlagService {
    pub fn new(
        store: Arc<dyn FeatureFlagStore>,
        access: Arc<AccessControl>,
        cache: Arc<dyn Cache>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            access,
            cache,
            clock,
            snapshot: RwLock::new(None),
        }
    }

    pub async fn create(
        &self,
        caller: &Principal,
        name: &str,
        description: &str,
        is_enabled: bool,
        rollout: f64,
        targeting: Targeting,
    ) -> Result<FeatureFlag> {
        let now = truncate_to_micros(self.clock.now());
        let flag = FeatureFlag {
            id: Uuid::now_v7(),
            name: name.to_owned(),
            description: description.to_owned(),
            is_enabled,
            rollout: check_rollout(rollout)?,
            targeting: targeting.normalized(),
            created_at: now,
            updated_at: now,
        };
        let event = self.event(EventKind::FeatureFlagCreated, caller, &flag);
        self.store.insert_flag(&flag, &[event]).await?;
        self.changed().await?;
        Ok(flag)
    }

    pub async fn list(&self) -> Result<Vec<FeatureFlag>> {
        let mut flags = self.store.list_flags().await?;
        flags.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(flags)
    }

    pub async fn get(&self, id: Uuid) -> Result<FeatureFlag> {
        (self.store.list_flags().await?.into_iter())
            .find(|flag| flag.id == id)
            .ok_or_else(not_found)
    }

    pub async fn update(
        &self,
        caller: &Principal,
        id: Uuid,
        change: FlagChange,
    ) -> Result<FeatureFlag> {
        let mut flag = self.get(id).await?;
        if let Some(description) = change.description {
            flag.description = description;
        }
        if let Some(is_enabled) = change.is_enabled {
            flag.is_enabled = is_enabled;
        }
        if let Some(rollout) = change.rollout {
            flag.rollout = check_rollout(rollout)?;
        }
        if let Some(targeting) = change.targeting {
            flag.targeting = targeting.normalized();
        }
        flag.updated_at = truncate_to_micros(self.clock.now());
        let event = self.event(EventKind::FeatureFlagUpdated, caller, &flag);
        if !self.store.update_flag(&flag, &[event]).await? {
            return Err(not_found());
        }
        self.changed().await?;
        Ok(flag)
    }

    pub async fn delete(&self, caller: &Principal, id: Uuid) -> Result<()> {
        let flag = self.get(id).await?;
        let event = self.event(EventKind::FeatureFlagDeleted, caller, &flag);
        if !self.store.delete_flag(id, &[event]).await? {
            return Err(not_found());
        }
        self.changed().await
    }

    /// Whether each flag of `names` is on for the caller (unknown flags are off), within
    /// `organization_id` when given: one of the caller's organizations.
    pub async fn check(
        &self,
        caller: &Principal,
        names: &[String],
        organization_id: Option<Uuid>,
    ) -> Result<Vec<(String, bool)>> {
        if let Some(organization_id) = organization_id {
            self.require_member(caller, organization_id).await?;
        }
        let snapshot = self.snapshot().await?;
        let subject = Subject {
            user_id: caller.user.id,
            email: &caller.user.email,
            organization_id,
        };
        let overridden = |flag: &FeatureFlag| {
            let organization_id = organization_id?;
            let decided = snapshot.overrides.get(&(flag.id, organization_id))?;
            Some(decided.is_enabled)
        };
        Ok(names
            .iter()
            .map(|name| {
                let on = snapshot.by_name.get(name).is_some_and(|flag| {
                    flag.is_enabled && overridden(flag).unwrap_or_else(|| flag.is_on_for(&subject))
                });
                (name.clone(), on)
            })
            .collect())
    }

    /// The organization's overrides, by flag name.
    pub async fn overrides(&self, access: &Access) -> Result<Vec<(String, FlagOverride)>> {
        let snapshot = self.snapshot().await?;
        let mut overrides: Vec<(String, FlagOverride)> = (snapshot.by_name.values())
            .filter_map(|flag| {
                let decided = snapshot.overrides.get(&(flag.id, access.organization_id))?;
                Some((flag.name.clone(), *decided))
            })
            .collect();
        overrides.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(overrides)
    }

    /// Turns flag `name` on or off for checks made within the caller's organization.
    pub async fn set_override(
        &self,
        access: &Access,
        name: &str,
        is_enabled: bool,
    ) -> Result<FlagOverride> {
        let snapshot = self.snapshot().await?;
        let flag = snapshot.flag(name)?;
        let decided = FlagOverride {
            flag_id: flag.id,
            organization_id: access.organization_id,
            is_enabled,
            updated_at: truncate_to_micros(self.clock.now()),
        };
        let event = self.override_event(EventKind::FeatureFlagOverrideSet, access, flag, &decided);
        if !self.store.set_flag_override(&decided, &[event]).await? {
            return Err(not_found());
        }
        self.changed().await?;
        Ok(decided)
    }

    /// Lets flag `name`'s own rules decide again within the caller's organization.
    pub async fn delete_override(&self, access: &Access, name: &str) -> Result<()> {
        let snapshot = self.snapshot().await?;
        let flag = snapshot.flag(name)?;
        let decided = (snapshot.overrides.get(&(flag.id, access.organization_id)))
            .ok_or_else(override_not_found)?;
        let event =
            self.override_event(EventKind::FeatureFlagOverrideDeleted, access, flag, decided);
        if !self
            .store
            .delete_flag_override(flag.id, access.organization_id, &[event])
            .await?
        {
            return Err(override_not_found());
        }
        self.changed().await
    }

    fn override_event(
        &self,
        kind: EventKind,
        access: &Access,
        flag: &FeatureFlag,
        decided: &FlagOverride,
    ) -> Event {
        let data = FeatureFlagOverrideData {
            flag_id: flag.id,
            name: flag.name.clone(),
            organization_id: decided.organization_id,
            is_enabled: decided.is_enabled,
        };
        Event::new(kind, &access.origin(), self.clock.as_ref(), &data)
    }

    async fn require_member(&self, caller: &Principal, organization_id: Uuid) -> Result<()> {
        let bound_elsewhere = matches!(
            caller.credential,
            Credential::ApiKey { organization_id: Some(bound), .. } if bound != organization_id
        );
        let member = self
            .access
            .member_permissions(organization_id, caller.user.id)
            .await?
            .is_some();
        if bound_elsewhere || !member {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                "NOT_A_MEMBER",
                "organization_id must be one of your organizations",
            ));
        }
        Ok(())
    }

    /// The flags as of the current generation: the one in memory, or a fresh load.
    async fn snapshot(&self) -> Result<Arc<Snapshot>> {
        let current = generation::current(self.cache.as_ref(), GENERATION).await?;
        // A snapshot is replaced whole: a panic elsewhere cannot leave one half written.
        let held = (self.snapshot.read())
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        if let Some(held) = held.filter(|held| held.generation == current) {
            return Ok(held);
        }
        // Loaded after reading the generation: a change in between bumps it again.
        let by_name = (self.store.list_flags().await?.into_iter())
            .map(|flag| (flag.name.clone(), flag))
            .collect();
        let overrides = (self.store.list_flag_overrides().await?.into_iter())
            .map(|decided| ((decided.flag_id, decided.organization_id), decided))
            .collect();
        let fresh = Arc::new(Snapshot {
            generation: current,
            by_name,
            overrides,
        });
        *(self.snapshot.write()).unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Some(fresh.clone());
        Ok(fresh)
    }

    /// Makes every replica reload at its next check.
    async fn changed(&self) -> Result<()> {
        generation::bump(self.cache.as_ref(), GENERATION).await?;
        Ok(())
    }

    fn event(&self, kind: EventKind, caller: &Principal, flag: &FeatureFlag) -> Event {
        let data = FeatureFlagData {
            flag_id: flag.id,
            name: flag.name.clone(),
            is_enabled: flag.is_enabled,
            rollout_percentage: flag.rollout,
        };
        Event::new(kind, &Origin::from(caller), self.clock.as_ref(), &data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag(rollout: f64, targeting: Targeting) -> FeatureFlag {
        let now = Utc::now();
        FeatureFlag {
            id: Uuid::now_v7(),
            name: "new-checkout".into(),
            description: String::new(),
            is_enabled: true,
            rollout,
            targeting,
            created_at: now,
            updated_at: now,
        }
    }

    fn subject(user_id: Uuid, email: &str) -> Subject<'_> {
        Subject {
            user_id,
            email,
            organization_id: None,
        }
    }

    #[test]
    fn rollout_is_stable_and_grows_monotonically() {
        let users: Vec<Uuid> = (0..10_000).map(|_| Uuid::new_v4()).collect();
        let share = |rollout: f64| {
            let flag = flag(rollout, Targeting::default());
            (users.iter())
                .filter(|user| flag.is_on_for(&subject(**user, "someone@example.com")))
                .count()
        };
        let (tenth, fifth) = (share(0.1), share(0.2));
        assert!((800..1200).contains(&tenth), "{tenth}");
        assert!((1700..2300).contains(&fifth), "{fifth}");
        assert_eq!(share(0.0), 0);
        assert_eq!(share(1.0), users.len());
        // The same user, the same answer; inside 10% means inside 20%.
        for user in &users {
            let position = rollout_position("new-checkout", *user);
            assert_eq!(position, rollout_position("new-checkout", *user));
            assert!((0.0..1.0).contains(&position));
        }
        // A known value pins the hash: replicas and releases must agree on it.
        let pinned = Uuid::parse_str("0190a5a4-7b1e-7cc0-8d1e-3f6a2b4c5d6e").unwrap();
        assert_eq!(
            format!("{:.6}", rollout_position("new-checkout", pinned)),
            PINNED_POSITION
        );
    }

    const PINNED_POSITION: &str = "0.458248";

    #[test]
    fn targeting_matches_users_addresses_domains_and_organizations() {
        let (ada, org) = (Uuid::now_v7(), Uuid::now_v7());
        let targeted = flag(
            0.0,
            Targeting {
                user_ids: [ada].into(),
                emails: ["grace@example.com".to_owned()].into(),
                email_domains: ["acme.test".to_owned()].into(),
                organization_ids: [org].into(),
            },
        );
        let other = Uuid::now_v7();
        assert!(targeted.is_on_for(&subject(ada, "ada@elsewhere.test")));
        assert!(targeted.is_on_for(&subject(other, "Grace@Example.com")));
        assert!(targeted.is_on_for(&subject(other, "wile@ACME.test")));
        assert!(!targeted.is_on_for(&subject(other, "wile@notacme.test")));
        assert!(targeted.is_on_for(&Subject {
            organization_id: Some(org),
            ..subject(other, "x@y.test")
        }));
        assert!(!targeted.is_on_for(&subject(other, "x@y.test")));
        let off = FeatureFlag {
            is_enabled: false,
            ..targeted
        };
        assert!(!off.is_on_for(&subject(ada, "ada@elsewhere.test")));
    }
}
