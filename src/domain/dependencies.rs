//! The dependency update check: the crates Keel was built with (their versions embedded from
//! Cargo.lock at build time) against the newest release of each on the registry. A scheduled
//! job records what the registry says; operators read the comparison.

use super::clock::{Clock, truncate_to_micros};
use super::error::{Error, ErrorKind, Result};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::Arc;

/// A crate of the registry, by its newest release.
#[async_trait::async_trait]
pub trait Registry: Send + Sync {
    /// The newest version that is neither yanked nor a pre-release; `None` for a crate the
    /// registry does not know.
    async fn newest_version(&self, name: &str) -> Result<Option<String>>;
}

#[async_trait::async_trait]
pub trait DependencyStore: Send + Sync {
    /// Records the newest version found of each crate.
    async fn save_newest_versions(
        &self,
        versions: &[(String, String)],
        checked_at: DateTime<Utc>,
    ) -> Result<()>;
    /// Each crate's newest version and when it was found.
    async fn newest_versions(&self) -> Result<Vec<(String, String, DateTime<Utc>)>>;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencyStatus {
    pub name: String,
    /// What this build of Keel runs.
    pub current: String,
    /// The newest release, once a check found it.
    pub newest: Option<String>,
    pub outdated: bool,
    pub checked_at: Option<DateTime<Utc>>,
}

/// Whether `newest` is a later version than `current` (by semantic versioning).
fn is_later(newest: &str, current: &str) -> bool {
    match (
        semver::Version::parse(newest),
        semver::Version::parse(current),
    ) {
        (Ok(newest), Ok(current)) => newest > current,
        _ => false,
    }
}

pub struct DependencyService {
    built_with: &'static [(&'static str, &'static str)],
    /// `None` when the check is turned off.
    registry: Option<Arc<dyn Registry>>,
    store: Arc<dyn DependencyStore>,
    clock: Arc<dyn Clock>,
}

/// Registry requests under way at once.
const CHECK_CONCURRENCY: usize = 8;

impl DependencyService {
    pub fn new(
        built_with: &'static [(&'static str, &'static str)],
        registry: Option<Arc<dyn Registry>>,
        store: Arc<dyn DependencyStore>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            built_with,
            registry,
            store,
            clock,
        }
    }

    /// Asks the registry for every dependency's newest version and records the answers; a
    /// crate the registry could not answer for keeps its last answer. Answers how many were
    /// checked.
    pub async fn check(&self) -> Result<usize> {
        use futures_util::StreamExt;
        let Some(registry) = &self.registry else {
            return Err(Error::new(
                ErrorKind::FailedPrecondition,
                "DEPENDENCY_CHECK_OFF",
                "the dependency update check is off (KEEL_DEPENDENCY_REGISTRY_URL=off)",
            ));
        };
        let names: Vec<String> = self
            .built_with
            .iter()
            .map(|(name, _)| (*name).to_owned())
            .collect();
        let answers: Vec<(String, Result<Option<String>>)> = futures_util::stream::iter(names)
            .map(|name: String| {
                let registry = registry.clone();
                async move {
                    let answer = registry.newest_version(&name).await;
                    (name, answer)
                }
            })
            .buffer_unordered(CHECK_CONCURRENCY)
            .collect()
            .await;
        let mut found = Vec::new();
        for (name, answer) in answers {
            match answer {
                Ok(Some(newest)) => found.push((name, newest)),
                Ok(None) => tracing::warn!(%name, "the registry does not know a dependency"),
                Err(error) => tracing::warn!(%name, %error, "asking the registry failed"),
            }
        }
        let checked_at = truncate_to_micros(self.clock.now());
        self.store.save_newest_versions(&found, checked_at).await?;
        let outdated = found
            .iter()
            .filter(|(name, newest)| {
                self.built_with
                    .iter()
                    .any(|(built, current)| built == name && is_later(newest, current))
            })
            .count();
        tracing::info!(
            checked = found.len(),
            outdated,
            "dependency update check done"
        );
        Ok(found.len())
    }

    /// Every dependency with the version running and the newest known, by name.
    pub async fn list(&self) -> Result<Vec<DependencyStatus>> {
        let newest: HashMap<String, (String, DateTime<Utc>)> = self
            .store
            .newest_versions()
            .await?
            .into_iter()
            .map(|(name, version, checked_at)| (name, (version, checked_at)))
            .collect();
        let mut statuses: Vec<DependencyStatus> = self
            .built_with
            .iter()
            .map(|(name, current)| {
                let found = newest.get(*name);
                DependencyStatus {
                    name: (*name).to_owned(),
                    current: (*current).to_owned(),
                    newest: found.map(|(version, _)| version.clone()),
                    outdated: found.is_some_and(|(version, _)| is_later(version, current)),
                    checked_at: found.map(|(_, checked_at)| *checked_at),
                }
            })
            .collect();
        statuses.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(statuses)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_versions_are_told_by_semver() {
        assert!(is_later("1.10.0", "1.9.3"));
        assert!(is_later("2.0.0", "1.99.99"));
        assert!(!is_later("1.0.0", "1.0.0"));
        assert!(!is_later("0.9.0", "0.10.0"));
        assert!(!is_later("not a version", "1.0.0"));
    }
}
