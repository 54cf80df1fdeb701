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
                let count = std::str::from_utf8(value).ok()?.parse::<u64>().ok()?;
                Some((count, *expires))
            });
        let (count, expires) = match live {
            Some((count, expires)) => (count.saturating_add(by), expires),
            None => (by, now + ttl),
        };
        // Decimal text, as Redis keeps counters, so `get` reads them alike on both.
        entries.insert(key.to_owned(), (count.to_string().into_bytes(), expires));
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::cache::generation::{bump, current, tag, untag};

    /// The race itself: a reader notes the generation and reads the store, a change bumps the
    /// generation, then the reader writes what it read. The entry no longer counts.
    #[tokio::test]
    async fn a_write_from_before_a_change_is_a_miss() -> Result<()> {
        let cache = MemoryCache::default();
        let ttl = Duration::from_secs(60);
        let seen = current(&cache, "user:1").await?;
        let changed = bump(&cache, "user:1").await?;
        cache.set("user:1", &tag(seen, b"stale"), ttl).await?;
        let now = current(&cache, "user:1").await?;
        assert_eq!(now, changed);
        assert_eq!(untag(cache.get("user:1").await?, now), None);
        cache.set("user:1", &tag(now, b"fresh"), ttl).await?;
        assert_eq!(
            untag(cache.get("user:1").await?, now),
            Some(b"fresh".to_vec())
        );
        Ok(())
    }

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
