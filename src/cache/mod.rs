//! Adapters of the cache port: in-process memory (default, one replica) and Redis (shared by
//! every replica).

mod counted;
mod memory;
mod redis;

pub use counted::Counted;
pub use memory::MemoryCache;
pub use redis::RedisCache;
