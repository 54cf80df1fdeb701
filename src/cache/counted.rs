//! What a cache does, observed: hit and miss counts (for its health figures, and so for
//! `/metrics`: a read of a key that is there is a hit, of one that is not a miss), and a trace
//! span per call.

use crate::domain::cache::{Cache, Spent};
use crate::domain::error::Result;
use crate::domain::health::HealthProbe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tracing::Instrument;

/// The span of one cache call, within a traced RPC or job.
fn span(operation: &'static str) -> tracing::Span {
    crate::child_span!("cache", db.operation = operation)
}

pub struct Counted<C> {
    inner: Arc<C>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl<C> Counted<C> {
    pub fn new(inner: Arc<C>) -> Self {
        Self {
            inner,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn count<T>(&self, found: &Option<T>) {
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl<C: HealthProbe> HealthProbe for Counted<C> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn check(&self) -> Result<()> {
        self.inner.check().await
    }

    async fn figures(&self) -> Vec<(&'static str, u64)> {
        let mut figures = self.inner.figures().await;
        figures.push(("hits_total", self.hits.load(Ordering::Relaxed)));
        figures.push(("misses_total", self.misses.load(Ordering::Relaxed)));
        figures
    }
}

#[async_trait::async_trait]
impl<C: Cache> Cache for Counted<C> {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let found = self.inner.get(key).instrument(span("get")).await?;
        self.count(&found);
        Ok(found)
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        let found = self
            .inner
            .get_many(keys)
            .instrument(span("get_many"))
            .await?;
        found.iter().for_each(|value| self.count(value));
        Ok(found)
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<()> {
        self.inner
            .set(key, value, ttl)
            .instrument(span("set"))
            .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).instrument(span("delete")).await
    }

    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.inner.take(key).instrument(span("take")).await
    }

    async fn increment(&self, key: &str, by: u64, ttl: Duration) -> Result<u64> {
        self.inner
            .increment(key, by, ttl)
            .instrument(span("increment"))
            .await
    }

    async fn increment_below(&self, key: &str, limit: u64, ttl: Duration) -> Result<Option<u64>> {
        self.inner
            .increment_below(key, limit, ttl)
            .instrument(span("increment_below"))
            .await
    }

    async fn decrement(&self, key: &str) -> Result<()> {
        self.inner
            .decrement(key)
            .instrument(span("decrement"))
            .await
    }

    async fn spend(
        &self,
        key: &str,
        now_ms: i64,
        interval_ms: i64,
        period_ms: i64,
    ) -> Result<Spent> {
        self.inner
            .spend(key, now_ms, interval_ms, period_ms)
            .instrument(span("spend"))
            .await
    }
}
