//! The in-process cache: a map with per-entry expiry, for a single replica.

use crate::domain::cache::Cache;
use crate::domain::error::Result;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Above this many entries, a write first drops the expired ones.
const PURGE_THRESHOLD: usize = 100_000;

#[derive(Default)]
pub struct MemoryCache {
    entries: Mutex<HashMap<String, (Vec<u8>, Instant)>>,
}

impl MemoryCache {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Vec<u8>, Instant)>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait::async_trait]
impl Cache for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let entries = self.entries();
        Ok(entries
            .get(key)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(value, _)| value.clone()))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        let entries = self.entries();
        let now = Instant::now();
        Ok(keys
            .iter()
            .map(|key| {
                entries
                    .get(key)
                    .filter(|(_, expires)| *expires > now)
                    .map(|(value, _)| value.clone())
            })
            .collect())
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<()> {
        let now = Instant::now();
        let mut entries = self.entries();
        if entries.len() >= PURGE_THRESHOLD {
            entries.retain(|_, (_, expires)| *expires > now);
        }
        entries.insert(key.to_owned(), (value.to_vec(), now + ttl));
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.entries().remove(key);
        Ok(())
    }

    async fn increment(&self, key: &str, by: u64, ttl: Duration) -> Result<u64> {
        let now = Instant::now();
        let mut entries = self.entries();
        let live = entries
            .get(key)
            .filter(|(_, expires)| *expires > now)
            .and_then(|(value, expires)| {
                Some((<[u8; 8]>::try_from(value.as_slice()).ok()?, *expires))
            });
        let (count, expires) = match live {
            Some((bytes, expires)) => (u64::from_le_bytes(bytes).saturating_add(by), expires),
            None => (by, now + ttl),
        };
        entries.insert(key.to_owned(), (count.to_le_bytes().to_vec(), expires));
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn entries_expire() -> Result<()> {
        let cache = MemoryCache::default();
        cache.set("a", b"1", Duration::from_secs(60)).await?;
        cache.set("b", b"2", Duration::ZERO).await?;
        assert_eq!(cache.get("a").await?, Some(b"1".to_vec()));
        assert_eq!(cache.get("b").await?, None);
        let keys = ["b".to_owned(), "a".to_owned(), "c".to_owned()];
        assert_eq!(
            cache.get_many(&keys).await?,
            vec![None, Some(b"1".to_vec()), None]
        );
        assert_eq!(cache.increment("n", 1, Duration::from_secs(60)).await?, 1);
        assert_eq!(cache.increment("n", 5, Duration::from_secs(60)).await?, 6);
        assert_eq!(cache.increment("n", 0, Duration::from_secs(60)).await?, 6);
        assert_eq!(cache.increment("gone", 1, Duration::ZERO).await?, 1);
        assert_eq!(cache.increment("gone", 1, Duration::ZERO).await?, 1);
        cache.delete("a").await?;
        assert_eq!(cache.get("a").await?, None);
        Ok(())
    }
}
