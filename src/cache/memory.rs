//! The in-process cache (moka): per-entry expiry and a bound on its size, for a single
//! replica. Past the bound the least useful entries are evicted (TinyLFU), so memory stays flat
//! however many distinct keys (addresses, sessions, rate-limit windows) pass through.

use crate::domain::cache::{Cache, Spent, gcra};
use crate::domain::error::Result;
use crate::domain::health::HealthProbe;
use moka::Expiry;
use moka::ops::compute::{CompResult, Op};
use moka::sync::Cache as Moka;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What an entry costs beyond its key and value (moka's bookkeeping, roughly).
const ENTRY_OVERHEAD: usize = 96;

#[derive(Clone)]
struct Stored {
    value: Arc<[u8]>,
    /// The lifetime this write gives the entry; `None` keeps the one it has (a counter's
    /// increment does not extend its window).
    ttl: Option<Duration>,
}

struct PerEntryLifetime;

impl Expiry<String, Stored> for PerEntryLifetime {
    fn expire_after_create(&self, _: &String, stored: &Stored, _: Instant) -> Option<Duration> {
        stored.ttl
    }

    fn expire_after_update(
        &self,
        _: &String,
        stored: &Stored,
        _: Instant,
        remaining: Option<Duration>,
    ) -> Option<Duration> {
        stored.ttl.or(remaining)
    }
}

pub struct MemoryCache {
    entries: Moka<String, Stored>,
}

impl MemoryCache {
    /// A cache holding at most about `max_bytes` of keys and values.
    pub fn new(max_bytes: u64) -> Self {
        Self {
            entries: Moka::builder()
                .max_capacity(max_bytes)
                .weigher(|key: &String, stored: &Stored| {
                    u32::try_from(key.len() + stored.value.len() + ENTRY_OVERHEAD)
                        .unwrap_or(u32::MAX)
                })
                .expire_after(PerEntryLifetime)
                .build(),
        }
    }
}

fn counter(stored: &Stored) -> Option<u64> {
    std::str::from_utf8(&stored.value).ok()?.parse().ok()
}

/// In the process itself: up whenever the process is.
#[async_trait::async_trait]
impl HealthProbe for MemoryCache {
    fn name(&self) -> &'static str {
        "cache"
    }

    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn check(&self) -> Result<()> {
        Ok(())
    }

    async fn figures(&self) -> Vec<(&'static str, u64)> {
        // moka settles its counts lazily.
        self.entries.run_pending_tasks();
        vec![
            ("entries", self.entries.entry_count()),
            ("bytes", self.entries.weighted_size()),
        ]
    }
}

#[async_trait::async_trait]
impl Cache for MemoryCache {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.entries.get(key).map(|stored| stored.value.to_vec()))
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        Ok(keys
            .iter()
            .map(|key| self.entries.get(key).map(|stored| stored.value.to_vec()))
            .collect())
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<()> {
        self.entries.insert(
            key.to_owned(),
            Stored {
                value: value.into(),
                ttl: Some(ttl),
            },
        );
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.entries.invalidate(key);
        Ok(())
    }

    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.entries.remove(key).map(|stored| stored.value.to_vec()))
    }

    async fn increment_below(&self, key: &str, limit: u64, ttl: Duration) -> Result<Option<u64>> {
        let outcome =
            self.entries
                .entry(key.to_owned())
                .and_compute_with(|existing| {
                    match existing.as_ref().map(|entry| counter(entry.value())) {
                        Some(Some(count)) if count >= limit => Op::Nop,
                        Some(Some(count)) => Op::Put(Stored {
                            value: (count + 1).to_string().as_bytes().into(),
                            ttl: None,
                        }),
                        _ if limit == 0 => Op::Nop,
                        _ => Op::Put(Stored {
                            value: b"1".as_slice().into(),
                            ttl: Some(ttl),
                        }),
                    }
                });
        Ok(match outcome {
            CompResult::Inserted(entry) | CompResult::ReplacedWith(entry) => counter(entry.value()),
            _ => None,
        })
    }

    async fn decrement(&self, key: &str) -> Result<()> {
        self.entries
            .entry(key.to_owned())
            .and_compute_with(|existing| {
                match existing.as_ref().and_then(|entry| counter(entry.value())) {
                    Some(count) if count > 0 => Op::Put(Stored {
                        value: (count - 1).to_string().as_bytes().into(),
                        ttl: None,
                    }),
                    _ => Op::Nop,
                }
            });
        Ok(())
    }

    async fn spend(
        &self,
        key: &str,
        now_ms: i64,
        interval_ms: i64,
        period_ms: i64,
    ) -> Result<Spent> {
        let mut spent = None;
        self.entries
            .entry(key.to_owned())
            .and_compute_with(|existing| {
                let tat = existing
                    .as_ref()
                    .and_then(|entry| counter(entry.value()))
                    .and_then(|tat| i64::try_from(tat).ok());
                let (next, outcome) = gcra(tat, now_ms, interval_ms, period_ms);
                spent = Some(outcome);
                if !outcome.admitted {
                    return Op::Nop;
                }
                Op::Put(Stored {
                    value: next.to_string().as_bytes().into(),
                    ttl: Some(Duration::from_millis(
                        u64::try_from(outcome.backlog_ms).unwrap_or(1).max(1),
                    )),
                })
            });
        spent.ok_or_else(|| crate::domain::Error::internal("the bucket was not computed"))
    }

    async fn increment(&self, key: &str, by: u64, ttl: Duration) -> Result<u64> {
        // One atomic read-modify-write per key. Decimal text, as Redis keeps counters, so
        // `get` reads them alike on both.
        let entry = self
            .entries
            .entry(key.to_owned())
            .and_upsert_with(|existing| {
                match existing.as_ref().and_then(|entry| counter(entry.value())) {
                    Some(count) => Stored {
                        value: count.saturating_add(by).to_string().as_bytes().into(),
                        ttl: None,
                    },
                    None => Stored {
                        value: by.to_string().as_bytes().into(),
                        ttl: Some(ttl),
                    },
                }
            });
        Ok(counter(entry.value()).unwrap_or(by))
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
        let cache = MemoryCache::new(1024 * 1024);
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
    async fn the_size_stays_bounded() -> Result<()> {
        let cache = MemoryCache::new(1024 * 1024);
        for index in 0..100_000 {
            cache
                .set(&format!("key:{index}"), &[0; 100], Duration::from_secs(600))
                .await?;
        }
        cache.entries.run_pending_tasks();
        assert!(
            cache.entries.weighted_size() <= 1024 * 1024,
            "{} bytes",
            cache.entries.weighted_size()
        );
        Ok(())
    }

    #[tokio::test]
    async fn entries_expire() -> Result<()> {
        let cache = MemoryCache::new(1024 * 1024);
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
        cache.decrement("n").await?;
        assert_eq!(cache.increment("n", 0, Duration::from_secs(60)).await?, 5);
        let minute = Duration::from_secs(60);
        assert_eq!(cache.increment_below("b", 2, minute).await?, Some(1));
        assert_eq!(cache.increment_below("b", 2, minute).await?, Some(2));
        assert_eq!(cache.increment_below("b", 2, minute).await?, None);
        assert_eq!(cache.increment("b", 0, minute).await?, 2);
        cache.decrement("missing").await?;
        assert_eq!(cache.get("missing").await?, None);
        assert_eq!(cache.increment("gone", 1, Duration::ZERO).await?, 1);
        assert_eq!(cache.increment("gone", 1, Duration::ZERO).await?, 1);
        cache.delete("a").await?;
        assert_eq!(cache.get("a").await?, None);
        Ok(())
    }
}
