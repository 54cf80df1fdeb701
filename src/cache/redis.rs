//! The Redis cache (fred): shared by every replica, so a revocation seen by one is seen by all.

use crate::domain::Error;
use crate::domain::cache::{Cache, Spent};
use crate::domain::error::Result;
use crate::domain::health::HealthProbe;
use crate::domain::realtime::{Announcer, Beacon};
use fred::clients::SubscriberClient;
use fred::prelude::{
    Builder, Client, ClientLike, Config, EventInterface, Expiration, KeysInterface, LuaInterface,
    PubsubInterface, ReconnectPolicy,
};
use std::time::Duration;

pub struct RedisCache {
    client: Client,
    /// Receives the announcements of dispatched events (its own connection: a connection
    /// that subscribes can do nothing else).
    subscriber: SubscriberClient,
    /// Prepended to every key, so several deployments (or test runs) can share one Redis.
    prefix: String,
}

impl RedisCache {
    /// Connects, then keeps reconnecting with backoff whenever the connection drops. While Redis
    /// is away, each command fails after `COMMAND_TIMEOUT` (the request answers UNAVAILABLE)
    /// instead of waiting for it.
    pub async fn connect(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let config = Config::from_url(url)
            .map_err(|error| anyhow::anyhow!("KEEL_REDIS_URL is not a Redis URL: {error}"))?;
        let mut builder = Builder::from_config(config);
        builder
            .with_performance_config(|performance| {
                performance.default_command_timeout = COMMAND_TIMEOUT;
            })
            .with_connection_config(|connection| {
                connection.connection_timeout = COMMAND_TIMEOUT;
                connection.internal_command_timeout = COMMAND_TIMEOUT;
                connection.unresponsive.max_timeout = Some(COMMAND_TIMEOUT);
            })
            // Forever, from 100 ms doubling to 2 s between attempts.
            .set_policy(ReconnectPolicy::new_exponential(0, 100, 2_000, 2));
        let client = builder.build()?;
        client.init().await?;
        let subscriber = builder.build_subscriber_client()?;
        subscriber.init().await?;
        // Subscribes again after each reconnection (a task that lasts as long as the client).
        drop(subscriber.manage_subscriptions());
        Ok(Self {
            client,
            subscriber,
            prefix: prefix.to_owned(),
        })
    }

    /// Relays the announcements of every process (this one's included) to `beacon`, until
    /// the connection closes.
    pub async fn relay_announcements(&self, beacon: Beacon) -> anyhow::Result<()> {
        let mut messages = self.subscriber.message_rx();
        self.subscriber.subscribe(self.key(ANNOUNCEMENTS)).await?;
        tokio::spawn(async move {
            loop {
                match messages.recv().await {
                    Ok(message) => match message.value.convert::<i64>() {
                        Ok(position) => beacon.signal(position),
                        Err(error) => {
                            tracing::debug!(%error, "an announcement that is no position")
                        }
                    },
                    // Missed announcements: the hub's next read catches up anyway.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(())
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    pub async fn close(&self) {
        let (client, subscriber) = tokio::join!(self.client.quit(), self.subscriber.quit());
        if let Err(error) = client.and(subscriber) {
            tracing::debug!(%error, "closing the Redis connections");
        }
    }
}

/// The pub/sub channel of announcements of dispatched events (under the prefix).
const ANNOUNCEMENTS: &str = "realtime:dispatched";

#[async_trait::async_trait]
impl Announcer for RedisCache {
    async fn announce(&self, position: i64) -> Result<()> {
        self.client
            .publish::<(), _, _>(self.key(ANNOUNCEMENTS), position)
            .await
            .map_err(redis_error)
    }
}

const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

fn redis_error(error: fred::error::Error) -> Error {
    Error {
        retry_after: Some(Duration::from_secs(2)),
        ..Error::unavailable("CACHE_UNAVAILABLE", error)
    }
}

#[async_trait::async_trait]
impl Cache for RedisCache {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.client
            .get::<Option<Vec<u8>>, _>(self.key(key))
            .await
            .map_err(redis_error)
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        let prefixed: Vec<String> = keys.iter().map(|key| self.key(key)).collect();
        // MGET of one key answers a bare value rather than an array.
        if let [key] = prefixed.as_slice() {
            return Ok(vec![
                self.client
                    .get::<Option<Vec<u8>>, _>(key.as_str())
                    .await
                    .map_err(redis_error)?,
            ]);
        }
        self.client
            .mget::<Vec<Option<Vec<u8>>>, _>(prefixed)
            .await
            .map_err(redis_error)
    }

    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<()> {
        let millis = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        self.client
            .set::<(), _, _>(
                self.key(key),
                value,
                Some(Expiration::PX(millis)),
                None,
                false,
            )
            .await
            .map_err(redis_error)
    }

    async fn increment(&self, key: &str, by: u64, ttl: Duration) -> Result<u64> {
        let millis = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        let by = i64::try_from(by).unwrap_or(i64::MAX);
        self.client
            .eval::<u64, _, _, _>(INCREMENT_SCRIPT, vec![self.key(key)], vec![millis, by])
            .await
            .map_err(redis_error)
    }

    async fn increment_below(&self, key: &str, limit: u64, ttl: Duration) -> Result<Option<u64>> {
        let millis = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX).max(1);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let count = self
            .client
            .eval::<i64, _, _, _>(
                INCREMENT_BELOW_SCRIPT,
                vec![self.key(key)],
                vec![millis, limit],
            )
            .await
            .map_err(redis_error)?;
        Ok(u64::try_from(count).ok())
    }

    async fn decrement(&self, key: &str) -> Result<()> {
        self.client
            .eval::<i64, _, _, _>(DECREMENT_SCRIPT, vec![self.key(key)], Vec::<i64>::new())
            .await
            .map(|_| ())
            .map_err(redis_error)
    }

    async fn spend(
        &self,
        key: &str,
        now_ms: i64,
        interval_ms: i64,
        period_ms: i64,
    ) -> Result<Spent> {
        let (admitted, backlog_ms) = self
            .client
            .eval::<(i64, i64), _, _, _>(
                SPEND_SCRIPT,
                vec![self.key(key)],
                vec![now_ms, interval_ms, period_ms],
            )
            .await
            .map_err(redis_error)?;
        Ok(Spent {
            admitted: admitted == 1,
            backlog_ms,
        })
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.client
            .del::<i64, _>(self.key(key))
            .await
            .map(|_| ())
            .map_err(redis_error)
    }

    async fn take(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.client
            .getdel::<Option<Vec<u8>>, _>(self.key(key))
            .await
            .map_err(redis_error)
    }
}

/// INCRBY that sets the expiry when the counter has none (it was just created), atomically
/// and in one round trip.
const INCREMENT_SCRIPT: &str = "local count = redis.call('INCRBY', KEYS[1], ARGV[2]) \
    if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end \
    return count";

/// INCR unless the counter has reached ARGV[2] (then -1), setting the expiry of a new one.
const INCREMENT_BELOW_SCRIPT: &str = "local count = tonumber(redis.call('GET', KEYS[1]) or '0') \
    if count >= tonumber(ARGV[2]) then return -1 end \
    count = redis.call('INCR', KEYS[1]) \
    if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end \
    return count";

/// GCRA (as `domain::cache::gcra`): ARGV now, interval and period in milliseconds; answers
/// {admitted, backlog}. Times are formatted with %d: Lua's default number format would round
/// a millisecond timestamp.
const SPEND_SCRIPT: &str = "local now = tonumber(ARGV[1]) \
    local tat = tonumber(redis.call('GET', KEYS[1]) or ARGV[1]) \
    if tat < now then tat = now end \
    local next = tat + tonumber(ARGV[2]) \
    local backlog = next - now \
    if backlog > tonumber(ARGV[3]) then return {0, backlog} end \
    redis.call('SET', KEYS[1], string.format('%d', next), 'PX', string.format('%d', math.max(backlog, 1))) \
    return {1, backlog}";

/// DECR of a counter above zero (keeping its expiry); a missing counter is left alone.
const DECREMENT_SCRIPT: &str = "local count = tonumber(redis.call('GET', KEYS[1]) or '0') \
    if count > 0 then return redis.call('DECR', KEYS[1]) end \
    return 0";

#[async_trait::async_trait]
impl HealthProbe for RedisCache {
    fn name(&self) -> &'static str {
        "cache"
    }

    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn check(&self) -> Result<()> {
        self.client
            .ping::<String>(None)
            .await
            .map(|_| ())
            .map_err(redis_error)
    }
}
