//! `LeaseStore` on SQL.

use super::{SqlStore, database_error, execute, with_pool};
use crate::domain::error::Result;
use crate::domain::jobs::LeaseStore;
use chrono::{DateTime, Utc};
use uuid::Uuid;

#[async_trait::async_trait]
impl LeaseStore for SqlStore {
    async fn take_lease(
        &self,
        name: &str,
        holder: Uuid,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool> {
        execute!(
            self,
            sqlx::query(
                "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
                 ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, \
                 expires_at = excluded.expires_at \
                 WHERE leases.holder = excluded.holder OR leases.expires_at < $4",
            )
            .bind(name)
            .bind(holder)
            .bind(until)
            .bind(now)
        )
        .map(|taken| taken > 0)
    }

    async fn release_lease(&self, name: &str, holder: Uuid) -> Result<()> {
        execute!(
            self,
            sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
                .bind(name)
                .bind(holder)
        )
        .map(|_| ())
    }

    async fn lease_expiry(&self, name: &str) -> Result<Option<DateTime<Utc>>> {
        with_pool!(self, pool => {
            sqlx::query_scalar("SELECT expires_at FROM leases WHERE name = $1")
                .bind(name)
                .fetch_optional(pool)
                .await
        })
        .map_err(database_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::clock::ShiftedClock;
    use crate::domain::jobs::Lease;
    use std::sync::Arc;

    /// One holder at a time: the first to ask keeps the lease while it renews; another takes
    /// it once it runs out, or soon after it is handed on.
    #[tokio::test]
    async fn a_lease_has_one_holder_at_a_time() -> anyhow::Result<()> {
        let directory = tempfile::tempdir()?;
        let url = format!("sqlite://{}", directory.path().join("leases.db").display());
        let store = SqlStore::connect(&url).await?;
        store.migrate().await?;
        let store: Arc<dyn LeaseStore> = Arc::new(store);
        let clock = Arc::new(ShiftedClock::default());
        let term = chrono::Duration::seconds(30);
        let first = Lease::new("work", term, store.clone(), clock.clone());
        let second = Lease::new("work", term, store.clone(), clock.clone());
        let other_work = Lease::new("other", term, store.clone(), clock.clone());

        assert!(first.held().await?);
        assert!(!second.held().await?);
        assert!(other_work.held().await?);
        // Renewed while it asks: 20 s, then 40 s in, it still holds it.
        clock.advance(chrono::Duration::seconds(20));
        assert!(first.held().await?);
        assert!(!second.held().await?);
        clock.advance(chrono::Duration::seconds(20));
        assert!(first.held().await?);
        assert!(!second.held().await?);
        // It stops asking (it died): the lease runs out and the other takes it.
        clock.advance(chrono::Duration::seconds(31));
        assert!(second.held().await?);
        clock.advance(chrono::Duration::seconds(11));
        assert!(!first.held().await?);
        // Handed on: the other takes it the next time it asks (every third of the term),
        // long before the lease would have run out.
        second.release().await?;
        clock.advance(chrono::Duration::seconds(11));
        assert!(first.held().await?);
        assert!(!second.held().await?);
        Ok(())
    }
}
