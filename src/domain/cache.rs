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
    /// Adds `by` to a counter (0 reads it) and answers the new count; a new counter lives for
    /// `ttl`.
    async fn increment(&self, key: &str, by: u64, ttl: Duration) -> Result<u64>;
}
