//! Health of a backing service, for `/health/ready`, `/api/v1/health/…` and `grpc.health.v1`.

use super::error::Result;

#[async_trait::async_trait]
pub trait HealthProbe: Send + Sync {
    /// A short name for reports (`database`, `cache`).
    fn name(&self) -> &'static str;
    /// What serves it (`postgres`, `redis`, `s3`…), as health reports it.
    fn backend(&self) -> &'static str;
    async fn check(&self) -> Result<()>;
    /// Figures reported beside a passing check (the job queue's depth, say).
    async fn figures(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
}
