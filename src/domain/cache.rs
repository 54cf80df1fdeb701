//! The cache port: short-lived shared state (session status, user records, later rate-limit
//! buckets). In memory by default; Redis when configured, so replicas share it.

use super::error::Result;
use std::time::Duration;

#[async_trait::async_trait]
pub trait Cache: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Several keys in one round trip, answered in the order asked.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>>;
    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<()>;
    async fn delete(&self, key: &str) -> Result<()>;
    /// Reads and deletes an entry at once: of racing takers, one gets it.
    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Adds `by` to a counter (0 reads it) and answers the new count; a new counter lives for
    /// `ttl`. `get` reads a counter as decimal text.
    async fn increment(&self, key: &str, by: u64, ttl: Duration) -> Result<u64>;
    /// Adds one to a counter unless it has reached `limit`, atomically; answers the new count,
    /// or `None` when it was full (and is left as it was). A new counter lives for `ttl`.
    async fn increment_below(&self, key: &str, limit: u64, ttl: Duration) -> Result<Option<u64>>;
    /// Takes one back from a counter, never below zero; a missing counter stays missing.
    async fn decrement(&self, key: &str) -> Result<()>;
    /// Spends one event of the GCRA bucket `key` at `now_ms` (Unix milliseconds), atomically:
    /// the bucket keeps its theoretical arrival time, and the event is admitted (and the time
    /// pushed `interval_ms` on) when that leaves at most `period_ms` of backlog.
    async fn spend(
        &self,
        key: &str,
        now_ms: i64,
        interval_ms: i64,
        period_ms: i64,
    ) -> Result<Spent>;
}

/// What `Cache::spend` found: whether the event was admitted, and the bucket's backlog (how
/// far its theoretical arrival time is ahead of now) counting this event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spent {
    pub admitted: bool,
    pub backlog_ms: i64,
}

/// GCRA for the caches that hold the arrival time themselves (`tat_ms`, absent for a new
/// bucket): the time to store (for `backlog_ms` more) when admitted, and what was spent.
pub fn gcra(tat_ms: Option<i64>, now_ms: i64, interval_ms: i64, period_ms: i64) -> (i64, Spent) {
    let next = tat_ms.unwrap_or(now_ms).max(now_ms) + interval_ms;
    let backlog_ms = next - now_ms;
    let spent = Spent {
        admitted: backlog_ms <= period_ms,
        backlog_ms,
    };
    (next, spent)
}

/// Cached records that a racing reader cannot bring back after they changed.
///
/// A reader that misses the cache reads the store and then writes the cache; a change that
/// lands between the two would be undone by that write for the entry's whole lifetime (a
/// revoked session or key working again, an old role set). So each subject (a user, an API
/// key, a membership) has a generation counter: readers note it *before* reading the store and
/// tag what they cache with it, changes bump it *after* writing the store, and an entry whose
/// tag is not the current generation is a miss.
pub mod generation {
    use super::Cache;
    use crate::domain::error::Result;
    use std::time::Duration;

    /// Outlives every entry it tags; when it lapses, entries tagged before simply miss.
    const LIFETIME: Duration = Duration::from_secs(24 * 3600);

    pub fn key(subject: &str) -> String {
        format!("generation:{subject}")
    }

    /// A generation as `get` answers it (absent is 0).
    pub fn parse(cached: Option<&[u8]>) -> u64 {
        cached
            .and_then(|bytes| std::str::from_utf8(bytes).ok())
            .and_then(|text| text.parse().ok())
            .unwrap_or(0)
    }

    pub async fn current(cache: &dyn Cache, subject: &str) -> Result<u64> {
        Ok(parse(cache.get(&key(subject)).await?.as_deref()))
    }

    /// Marks every entry of `subject` cached so far as stale; answers the new generation.
    pub async fn bump(cache: &dyn Cache, subject: &str) -> Result<u64> {
        cache.increment(&key(subject), 1, LIFETIME).await
    }

    pub fn tag(generation: u64, value: &[u8]) -> Vec<u8> {
        [generation.to_le_bytes().as_slice(), value].concat()
    }

    /// The value of an entry tagged with `generation`; `None` for a stale or foreign entry.
    pub fn untag(entry: Option<Vec<u8>>, generation: u64) -> Option<Vec<u8>> {
        let entry = entry?;
        let (tagged, value) = entry.split_first_chunk::<8>()?;
        (u64::from_le_bytes(*tagged) == generation).then(|| value.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::gcra;

    /// 3 events a minute: a burst of 3, then one every 20 s; a refusal changes nothing.
    #[test]
    fn gcra_allows_a_burst_then_one_event_per_interval() {
        let (interval, period) = (20_000, 60_000);
        let mut tat = None;
        let mut spend = |now: i64| {
            let (next, spent) = gcra(tat, now, interval, period);
            if spent.admitted {
                tat = Some(next);
            }
            spent
        };
        let backlogs: Vec<(bool, i64)> = [0, 1, 2, 3]
            .map(&mut spend)
            .iter()
            .map(|spent| (spent.admitted, spent.backlog_ms))
            .collect();
        assert_eq!(
            backlogs,
            [
                (true, 20_000),
                (true, 39_999),
                (true, 59_998),
                (false, 79_997)
            ]
        );
        // The refused event spent nothing: 20 s after the first, one more fits, not two.
        assert!(spend(20_000).admitted);
        assert!(!spend(20_001).admitted);
        // Idle long enough, the whole burst is back.
        assert_eq!(spend(200_000).backlog_ms, 20_000);
    }
}
