//! Realtime: dispatched events streamed to connected clients on channels. The dispatcher gives
//! each event a position (its audit entry's number: gap-free, in dispatch order) and announces
//! the newest; each process's `Hub` then reads what it has not seen from the store and fans it
//! out to its connections. The store's dispatched events are also each channel's history, so a
//! client that reconnects with the last event id it saw receives what it missed.
//!
//! Channels: `user` (events about the caller: their account, sessions, keys, memberships and
//! notifications) and `organization:{id}` (an organization's events, for those who may read its
//! audit log). A subscription is checked when made and again when the subscriber's membership,
//! roles or rights change; a connection ends when its session or key does.

use super::clock::Clock;
use super::error::{Error, ErrorKind, Result};
use super::events::{Event, EventKind};
use super::principal::{Credential, Principal};
use super::tenancy::access::{AccessControl, Scope};
use super::user::User;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

/// What reading an organization's channel takes: what its audit log shows, it shows live.
pub const ORGANIZATION_CHANNEL_PERMISSION: &str = "audit:read";

/// Events read from the store per round.
const READ_BATCH: usize = 1_000;

/// Channels one connection may hold at once.
pub const MAX_CHANNELS_PER_CONNECTION: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    User,
    Organization(Uuid),
}

impl Channel {
    pub fn parse(text: &str) -> Result<Self> {
        let text = text.trim();
        if text == "user" {
            return Ok(Self::User);
        }
        text.strip_prefix("organization:")
            .and_then(|id| Uuid::parse_str(id).ok())
            .map(Self::Organization)
            .ok_or_else(|| {
                Error::invalid_argument(
                    "INVALID_CHANNEL",
                    format!(
                        "{text:?} is not a channel: use \"user\" or \"organization:<organization id>\""
                    ),
                )
            })
    }

    pub fn name(&self) -> String {
        match self {
            Self::User => "user".to_owned(),
            Self::Organization(id) => format!("organization:{id}"),
        }
    }
}

/// Which events a channel carries, for one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelFilter {
    User(Uuid),
    Organization(Uuid),
}

/// Dispatched events, read back in position order.
#[async_trait::async_trait]
pub trait EventHistory: Send + Sync {
    /// Dispatched events after `position`, oldest first, at most `limit`.
    async fn events_after(&self, position: i64, limit: usize) -> Result<Vec<(i64, Event)>>;
    /// The events of one channel after `position`, oldest first, at most `limit`.
    async fn channel_events_after(
        &self,
        filter: ChannelFilter,
        position: i64,
        limit: usize,
    ) -> Result<Vec<(i64, Event)>>;
    /// Where a dispatched event stands, with when it happened; `None` when it is not (or no
    /// longer) in the store, or not yet dispatched.
    async fn event_position(
        &self,
        id: Uuid,
    ) -> Result<Option<(i64, chrono::DateTime<chrono::Utc>)>>;
    /// The newest position (0 before the first event).
    async fn last_position(&self) -> Result<i64>;
}

/// Tells every process's hub that events up to a position are dispatched.
#[async_trait::async_trait]
pub trait Announcer: Send + Sync {
    async fn announce(&self, position: i64) -> Result<()>;
}

/// The announcer within one process: the hub watches it. (With Redis, announcements travel
/// through Redis and land here in each process.)
#[derive(Clone)]
pub struct Beacon {
    sender: Arc<watch::Sender<i64>>,
}

impl Default for Beacon {
    fn default() -> Self {
        Self {
            sender: Arc::new(watch::Sender::new(0)),
        }
    }
}

impl Beacon {
    pub fn signal(&self, position: i64) {
        self.sender.send_if_modified(|newest| {
            let newer = position > *newest;
            if newer {
                *newest = position;
            }
            newer
        });
    }

    pub fn watch(&self) -> watch::Receiver<i64> {
        self.sender.subscribe()
    }
}

#[async_trait::async_trait]
impl Announcer for Beacon {
    async fn announce(&self, position: i64) -> Result<()> {
        self.signal(position);
        Ok(())
    }
}

/// One dispatched event as the channels carry it.
#[derive(Debug)]
pub struct StreamEvent {
    pub position: i64,
    pub id: Uuid,
    pub kind: EventKind,
    pub organization_id: Option<Uuid>,
    pub user_id: Option<Uuid>,
    pub occurred_at: chrono::DateTime<chrono::Utc>,
    /// The event as clients receive it, serialized once for every subscriber: `{id, type,
    /// occurred_at, organization_id, actor, data}` (never the IP address or user agent of
    /// whoever caused it).
    pub json: String,
}

impl StreamEvent {
    pub fn new(position: i64, event: &Event) -> Self {
        let data: serde_json::Value =
            serde_json::from_str(&event.data).unwrap_or(serde_json::Value::Null);
        let json = serde_json::json!({
            "id": event.id,
            "type": event.kind.name(),
            "occurred_at": event.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "organization_id": event.organization_id,
            "actor": event.origin.actor,
            "data": data,
        })
        .to_string();
        Self {
            position,
            id: event.id,
            kind: event.kind,
            organization_id: event.organization_id,
            user_id: event.user_id,
            occurred_at: event.occurred_at,
            json,
        }
    }

    /// The event as a JSON object.
    pub fn value(&self) -> serde_json::Map<String, serde_json::Value> {
        serde_json::from_str(&self.json).unwrap_or_default()
    }

    fn data_id(&self, field: &str) -> Option<Uuid> {
        self.value()
            .get("data")
            .and_then(|data| data.get(field))
            .and_then(serde_json::Value::as_str)
            .and_then(|text| Uuid::parse_str(text).ok())
    }
}

/// Why the server ends a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The session or API key it was opened with was revoked or ended, or the user deleted.
    CredentialRevoked,
    /// It fell too far behind the events sent to it.
    SlowConsumer,
    /// The server is stopping.
    ShuttingDown,
}

impl CloseReason {
    pub fn message(self) -> &'static str {
        match self {
            Self::CredentialRevoked => "the session or API key of this connection has ended",
            Self::SlowConsumer => "too slow: the connection fell too far behind its events",
            Self::ShuttingDown => "the server is restarting; reconnect with the last event id",
        }
    }

    /// The machine-readable reason.
    pub fn code(self) -> &'static str {
        match self {
            Self::CredentialRevoked => "CREDENTIAL_REVOKED",
            Self::SlowConsumer => "SLOW_CONSUMER",
            Self::ShuttingDown => "SERVER_SHUTTING_DOWN",
        }
    }
}

/// What a connection receives from the hub.
#[derive(Debug, Clone)]
pub enum Outgoing {
    Event {
        channel: Channel,
        event: Arc<StreamEvent>,
    },
    /// The server ended a subscription (the subscriber may no longer read the channel).
    Unsubscribed {
        channel: Channel,
        reason: &'static str,
    },
}

#[derive(Debug, Clone)]
pub struct RealtimeSettings {
    /// Events of a channel a reconnecting client may have missed and still recover.
    pub history_events: usize,
    /// How old the last event a client saw may be for it to recover what followed.
    pub history_age: chrono::Duration,
    /// Messages waiting for one connection before it counts as too slow.
    pub queue: usize,
    pub max_connections_per_user: usize,
    pub max_connections_per_ip: usize,
    /// How often the server checks that a connection is alive.
    pub heartbeat: Duration,
    /// A connection that sends nothing (not even a pong) for this long is closed.
    pub idle_timeout: Duration,
}

/// A connection as the hub routes to it.
struct Member {
    /// Who the connection acts for, as it now stands (a revoked superuser is demoted here).
    principal: Principal,
    ip: Option<String>,
    /// Shared messages: a queue slot is one pointer, however large a message.
    sender: mpsc::Sender<Arc<Outgoing>>,
    closed: Arc<OnceLock<CloseReason>>,
    channels: HashSet<Channel>,
}

#[derive(Default)]
struct Registry {
    members: HashMap<u64, Member>,
    /// Subscribers of each organization's channel, of each user's channel.
    organizations: HashMap<Uuid, HashSet<u64>>,
    users: HashMap<Uuid, HashSet<u64>>,
    /// Open connections per user and per client address.
    per_user: HashMap<Uuid, usize>,
    per_ip: HashMap<String, usize>,
    next_id: u64,
    /// The server is stopping: no new connections.
    closed: bool,
}

/// Counts one less of `key`, forgetting it at zero.
fn decrement<K: std::hash::Hash + Eq>(counts: &mut HashMap<K, usize>, key: K) {
    if let std::collections::hash_map::Entry::Occupied(mut entry) = counts.entry(key) {
        *entry.get_mut() -= 1;
        if *entry.get() == 0 {
            entry.remove();
        }
    }
}

impl Registry {
    fn routes(&mut self, channel: Channel, user_id: Uuid) -> &mut HashSet<u64> {
        match channel {
            Channel::User => self.users.entry(user_id).or_default(),
            Channel::Organization(id) => self.organizations.entry(id).or_default(),
        }
    }

    fn unroute(&mut self, id: u64, channel: Channel, user_id: Uuid) {
        let (map, key) = match channel {
            Channel::User => (&mut self.users, user_id),
            Channel::Organization(organization_id) => (&mut self.organizations, organization_id),
        };
        if let Some(routes) = map.get_mut(&key) {
            routes.remove(&id);
            if routes.is_empty() {
                map.remove(&key);
            }
        }
    }

    fn remove(&mut self, id: u64) -> Option<Member> {
        let member = self.members.remove(&id)?;
        let user_id = member.principal.user.id;
        for channel in &member.channels {
            self.unroute(id, *channel, user_id);
        }
        decrement(&mut self.per_user, user_id);
        if let Some(ip) = &member.ip {
            decrement(&mut self.per_ip, ip.clone());
        }
        Some(member)
    }

    /// Ends a connection: it stops receiving, and learns why once it has read what was sent.
    fn close(&mut self, id: u64, reason: CloseReason) {
        if let Some(member) = self.remove(id) {
            let _ = member.closed.set(reason);
        }
    }
}

pub struct Hub {
    history: Arc<dyn EventHistory>,
    access: Arc<AccessControl>,
    clock: Arc<dyn Clock>,
    settings: RealtimeSettings,
    registry: Mutex<Registry>,
}

/// A subscription as made: whether missed events were recovered (`None` when none were asked
/// for).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscribed {
    pub channel: Channel,
    pub recovered: Option<bool>,
}

impl Hub {
    pub fn new(
        history: Arc<dyn EventHistory>,
        access: Arc<AccessControl>,
        clock: Arc<dyn Clock>,
        settings: RealtimeSettings,
    ) -> Self {
        Self {
            history,
            access,
            clock,
            settings,
            registry: Mutex::new(Registry::default()),
        }
    }

    pub fn settings(&self) -> &RealtimeSettings {
        &self.settings
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens a connection for `principal`, within the per-user and per-address limits.
    pub fn connect(self: &Arc<Self>, principal: Principal) -> Result<Connection> {
        let too_many = |what: &str, limit: usize| {
            Error::new(
                ErrorKind::ResourceExhausted,
                "TOO_MANY_CONNECTIONS",
                format!("at most {limit} realtime connections per {what}; close one first"),
            )
        };
        let (sender, receiver) = mpsc::channel(self.settings.queue);
        let closed = Arc::new(OnceLock::new());
        let user_id = principal.user.id;
        let ip = principal.client.ip_address.clone();
        let mut registry = self.registry();
        if registry.closed {
            return Err(Error::new(
                ErrorKind::Unavailable,
                "SERVER_SHUTTING_DOWN",
                CloseReason::ShuttingDown.message(),
            ));
        }
        let limit = self.settings.max_connections_per_user;
        if registry.per_user.get(&user_id).copied().unwrap_or(0) >= limit {
            return Err(too_many("user", limit));
        }
        let limit = self.settings.max_connections_per_ip;
        if let Some(ip) = &ip {
            if registry.per_ip.get(ip).copied().unwrap_or(0) >= limit {
                return Err(too_many("client address", limit));
            }
            *registry.per_ip.entry(ip.clone()).or_default() += 1;
        }
        *registry.per_user.entry(user_id).or_default() += 1;
        registry.next_id += 1;
        let id = registry.next_id;
        registry.members.insert(
            id,
            Member {
                principal,
                ip,
                sender,
                closed: closed.clone(),
                channels: HashSet::new(),
            },
        );
        Ok(Connection {
            id,
            hub: self.clone(),
            user_id,
            receiver,
            closed,
            channels: HashMap::new(),
            recovered: VecDeque::new(),
        })
    }

    /// Connections open in this process.
    pub fn connections(&self) -> usize {
        self.registry().members.len()
    }

    /// May `principal` read `channel`?
    async fn authorize(&self, principal: &Principal, channel: Channel) -> Result<()> {
        match channel {
            Channel::User => Ok(()),
            Channel::Organization(id) => self
                .access
                .authorize(
                    principal.clone(),
                    Scope::Organization(id),
                    ORGANIZATION_CHANNEL_PERMISSION,
                )
                .await
                .map(|_| ()),
        }
    }

    /// Ends every connection (the server is stopping).
    pub fn close_all(&self) {
        let mut registry = self.registry();
        registry.closed = true;
        let ids: Vec<u64> = registry.members.keys().copied().collect();
        for id in ids {
            registry.close(id, CloseReason::ShuttingDown);
        }
    }

    /// Follows the announcements until `stop`: reads what was dispatched since the last
    /// round and fans it out (also every `poll`, in case an announcement was lost). At `stop`
    /// it ends every connection.
    pub async fn run(
        self: Arc<Self>,
        mut announced: watch::Receiver<i64>,
        poll: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut last = loop {
            match self.history.last_position().await {
                Ok(position) => break position,
                Err(error) => {
                    tracing::warn!(%error, "reading the event stream's position failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(poll) => {}
                        _ = stop.wait_for(|stop| *stop) => return self.close_all(),
                    }
                }
            }
        };
        loop {
            match self.history.events_after(last, READ_BATCH).await {
                Ok(events) => {
                    let full = events.len() == READ_BATCH;
                    for (position, event) in events {
                        self.publish(Arc::new(StreamEvent::new(position, &event)))
                            .await;
                        last = position;
                    }
                    if full {
                        continue;
                    }
                }
                Err(error) => tracing::warn!(%error, "reading dispatched events failed; retrying"),
            }
            tokio::select! {
                _ = announced.changed() => {}
                () = tokio::time::sleep(poll) => {}
                _ = stop.wait_for(|stop| *stop) => return self.close_all(),
            }
        }
    }

    /// Applies what `event` changes for connections, then delivers it to its channels.
    pub async fn publish(&self, event: Arc<StreamEvent>) {
        self.follow_changes(&event).await;
        let mut registry = self.registry();
        let mut deliveries: Vec<(u64, Arc<Outgoing>)> = Vec::new();
        let mut route = |routes: Option<&HashSet<u64>>, channel: Channel| {
            let outgoing = Arc::new(Outgoing::Event {
                channel,
                event: event.clone(),
            });
            deliveries.extend(
                routes
                    .into_iter()
                    .flatten()
                    .map(|id| (*id, outgoing.clone())),
            );
        };
        if let Some(id) = event.organization_id {
            route(registry.organizations.get(&id), Channel::Organization(id));
        }
        if let Some(id) = event.user_id {
            route(registry.users.get(&id), Channel::User);
        }
        for (member, outgoing) in deliveries {
            let sent = registry
                .members
                .get(&member)
                .map(|member| member.sender.try_send(outgoing));
            if let Some(Err(mpsc::error::TrySendError::Full(_))) = sent {
                registry.close(member, CloseReason::SlowConsumer);
            }
        }
    }

    /// Ends connections whose credential `event` ends, and re-checks subscriptions whose
    /// grounds it changes.
    async fn follow_changes(&self, event: &StreamEvent) {
        let organization = event.organization_id;
        // The user a user, member or session event is about (no parsing on the hot path).
        let subject_user = event.user_id;
        match event.kind {
            EventKind::SessionRevoked | EventKind::SessionExpired => {
                let session = event.data_id("session_id");
                self.close_where(|principal| {
                    matches!(principal.credential, Credential::Session(id) if Some(id) == session)
                });
            }
            EventKind::ApiKeyRevoked => {
                let key = event.data_id("api_key_id");
                self.close_where(|principal| {
                    matches!(principal.credential, Credential::ApiKey { id, .. } if Some(id) == key)
                });
            }
            EventKind::UserDeleted => {
                self.close_where(|principal| Some(principal.user.id) == subject_user);
            }
            EventKind::UserSuperuserRevoked => {
                if let Some(user_id) = subject_user {
                    self.demote(user_id);
                    self.recheck(|_, user| user == user_id).await;
                }
            }
            // The change's writer forgets the cached grants after its commit; forgetting them
            // here too means the re-check reads what was committed, whoever runs first.
            EventKind::MemberRemoved | EventKind::MemberRolesChanged => {
                if let (Some(organization_id), Some(user_id)) = (organization, subject_user) {
                    self.forget(self.access.forget_member(organization_id, user_id).await);
                    self.recheck(|channel, user| channel == organization_id && user == user_id)
                        .await;
                }
            }
            EventKind::RoleUpdated | EventKind::RoleDeleted | EventKind::OrganizationDeleted => {
                if let Some(organization_id) = organization {
                    self.forget(self.access.forget_roles(organization_id).await);
                    self.recheck(|channel, _| channel == organization_id).await;
                }
            }
            EventKind::OrganizationIpRestrictionsUpdated => {
                if let Some(organization_id) = organization {
                    self.forget(self.access.forget_ip_rules(organization_id).await);
                    self.recheck(|channel, _| channel == organization_id).await;
                }
            }
            _ => {}
        }
    }

    fn forget(&self, forgotten: Result<()>) {
        if let Err(error) = forgotten {
            tracing::warn!(%error, "forgetting cached grants before a re-check failed");
        }
    }

    fn close_where(&self, ended: impl Fn(&Principal) -> bool) {
        let mut registry = self.registry();
        let ids: Vec<u64> = registry
            .members
            .iter()
            .filter(|(_, member)| ended(&member.principal))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            registry.close(id, CloseReason::CredentialRevoked);
        }
    }

    /// A user who stopped being a superuser keeps only what their memberships give.
    fn demote(&self, user_id: Uuid) {
        let mut registry = self.registry();
        for member in registry.members.values_mut() {
            if member.principal.user.id == user_id && member.principal.user.is_superuser {
                member.principal.user = Arc::new(User {
                    is_superuser: false,
                    ..(*member.principal.user).clone()
                });
            }
        }
    }

    /// Checks again the organization subscriptions `affected(organization, user)` picks, and
    /// ends those no longer allowed.
    async fn recheck(&self, affected: impl Fn(Uuid, Uuid) -> bool) {
        let subscriptions: Vec<(u64, Principal, Channel)> = {
            let registry = self.registry();
            registry
                .organizations
                .iter()
                .flat_map(|(organization_id, members)| {
                    members.iter().map(move |id| (*organization_id, *id))
                })
                .filter_map(|(organization_id, id)| {
                    let member = registry.members.get(&id)?;
                    affected(organization_id, member.principal.user.id).then(|| {
                        (
                            id,
                            member.principal.clone(),
                            Channel::Organization(organization_id),
                        )
                    })
                })
                .collect()
        };
        for (id, principal, channel) in subscriptions {
            let Err(refused) = self.authorize(&principal, channel).await else {
                continue;
            };
            if refused.kind == ErrorKind::Internal || refused.kind == ErrorKind::Unavailable {
                tracing::warn!(error = %refused, "re-checking a realtime subscription failed");
                continue;
            }
            let mut registry = self.registry();
            let user_id = principal.user.id;
            let Some(member) = registry.members.get_mut(&id) else {
                continue;
            };
            member.channels.remove(&channel);
            let sent = member.sender.try_send(Arc::new(Outgoing::Unsubscribed {
                channel,
                reason: "you may no longer read this organization's events",
            }));
            registry.unroute(id, channel, user_id);
            if sent.is_err() {
                registry.close(id, CloseReason::SlowConsumer);
            }
        }
    }
}

/// One client's connection: subscribe, unsubscribe, and read what arrives. Dropping it
/// unregisters it.
pub struct Connection {
    id: u64,
    hub: Arc<Hub>,
    user_id: Uuid,
    receiver: mpsc::Receiver<Arc<Outgoing>>,
    closed: Arc<OnceLock<CloseReason>>,
    /// Each subscribed channel with the last position recovered on it: live events up to it
    /// were sent already.
    channels: HashMap<Channel, i64>,
    /// Recovered events, sent before what arrives live.
    recovered: VecDeque<Outgoing>,
}

impl Connection {
    pub fn user_id(&self) -> Uuid {
        self.user_id
    }

    fn closed_error() -> Error {
        Error::new(
            ErrorKind::Unavailable,
            "CONNECTION_CLOSED",
            "this connection has been closed",
        )
    }

    /// Subscribes to `channel`; with `since` (the last event id the client saw), what it
    /// missed comes first, if the history still holds it.
    pub async fn subscribe(&mut self, channel: Channel, since: Option<Uuid>) -> Result<Subscribed> {
        if !self.channels.contains_key(&channel)
            && self.channels.len() >= MAX_CHANNELS_PER_CONNECTION
        {
            return Err(Error::new(
                ErrorKind::ResourceExhausted,
                "TOO_MANY_CHANNELS",
                format!("at most {MAX_CHANNELS_PER_CONNECTION} channels per connection"),
            ));
        }
        let principal = {
            let mut registry = self.hub.registry();
            let member = (registry.members.get_mut(&self.id)).ok_or_else(Self::closed_error)?;
            member.channels.insert(channel);
            let principal = member.principal.clone();
            registry.routes(channel, self.user_id).insert(self.id);
            principal
        };
        // Routed before the check: a change of rights committed meanwhile is either seen by the
        // check, or re-checked by the hub with this subscription in view. What arrives before
        // the check ends is held back by `next` until the channel is accepted.
        if let Err(refused) = self.hub.authorize(&principal, channel).await {
            self.channels.remove(&channel);
            self.unroute(channel);
            return Err(refused);
        }
        // Registered first, read second: whatever is dispatched meanwhile is either in what
        // is read or arrives live after it (and is dropped if it was both).
        let (recovered, floor) = match since {
            None => (None, 0),
            Some(since) => self.recover(channel, since).await?,
        };
        self.channels.insert(channel, floor);
        Ok(Subscribed { channel, recovered })
    }

    /// Queues the events of `channel` after `since`; answers whether they could all be
    /// recovered, and the last position queued.
    async fn recover(&mut self, channel: Channel, since: Uuid) -> Result<(Option<bool>, i64)> {
        let settings = &self.hub.settings;
        let Some((position, occurred_at)) = self.hub.history.event_position(since).await? else {
            return Ok((Some(false), 0));
        };
        if occurred_at < self.hub.clock.now() - settings.history_age {
            return Ok((Some(false), 0));
        }
        let filter = match channel {
            Channel::User => ChannelFilter::User(self.user_id),
            Channel::Organization(id) => ChannelFilter::Organization(id),
        };
        let missed = self
            .hub
            .history
            .channel_events_after(filter, position, settings.history_events + 1)
            .await?;
        if missed.len() > settings.history_events {
            return Ok((Some(false), 0));
        }
        let floor = missed.last().map_or(position, |(position, _)| *position);
        self.recovered
            .extend(missed.iter().map(|(position, event)| Outgoing::Event {
                channel,
                event: Arc::new(StreamEvent::new(*position, event)),
            }));
        Ok((Some(true), floor))
    }

    /// Answers whether the connection was subscribed to `channel`.
    pub fn unsubscribe(&mut self, channel: Channel) -> bool {
        let subscribed = self.channels.remove(&channel).is_some();
        if subscribed {
            self.unroute(channel);
        }
        subscribed
    }

    fn unroute(&self, channel: Channel) {
        let mut registry = self.hub.registry();
        if let Some(member) = registry.members.get_mut(&self.id) {
            member.channels.remove(&channel);
        }
        registry.unroute(self.id, channel, self.user_id);
    }

    /// The next message for the client; `None` once the server closed the connection
    /// (`close_reason` says why). Cancel-safe.
    pub async fn next(&mut self) -> Option<Outgoing> {
        if let Some(recovered) = self.recovered.pop_front() {
            return Some(recovered);
        }
        loop {
            let outgoing = Arc::unwrap_or_clone(self.receiver.recv().await?);
            match &outgoing {
                Outgoing::Event { channel, event } => match self.channels.get(channel) {
                    Some(floor) if event.position > *floor => return Some(outgoing),
                    // Sent already (recovered), or for a channel left since.
                    _ => continue,
                },
                Outgoing::Unsubscribed { channel, .. } => {
                    self.channels.remove(channel);
                    return Some(outgoing);
                }
            }
        }
    }

    /// Why the server closed the connection, once `next` answered `None`.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.closed.get().copied()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.hub.registry().remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::MemoryCache;
    use crate::domain::clock::SystemClock;
    use crate::domain::events::{Origin, UserData};
    use crate::domain::tenancy::access::AccessPorts;
    use crate::store::SqlStore;

    async fn hub(queue: usize, max_connections_per_user: usize) -> anyhow::Result<Arc<Hub>> {
        let store = SqlStore::connect("sqlite::memory:").await?;
        store.migrate().await?;
        let access = Arc::new(AccessControl::new(AccessPorts {
            store: Arc::new(store.clone()),
            cache: Arc::new(MemoryCache::new(1 << 20)),
            ip_rules: Arc::new(store.clone()),
            events: Arc::new(store.clone()),
            clock: Arc::new(SystemClock),
        }));
        let settings = RealtimeSettings {
            history_events: 1_000,
            history_age: chrono::Duration::minutes(10),
            queue,
            max_connections_per_user,
            max_connections_per_ip: 100,
            heartbeat: Duration::from_secs(25),
            idle_timeout: Duration::from_secs(60),
        };
        Ok(Arc::new(Hub::new(
            Arc::new(store),
            access,
            Arc::new(SystemClock),
            settings,
        )))
    }

    fn principal() -> Principal {
        let now = chrono::Utc::now();
        Principal {
            user: Arc::new(User {
                id: Uuid::now_v7(),
                email: "someone@example.com".into(),
                full_name: "Someone".into(),
                email_verified: true,
                is_superuser: false,
                is_active: true,
                created_at: now,
                updated_at: now,
            }),
            credential: Credential::Session(Uuid::now_v7()),
            client: Default::default(),
        }
    }

    fn event_about(user: &User, position: i64) -> Arc<StreamEvent> {
        let event = Event::new(
            EventKind::UserUpdated,
            &Origin::system(),
            &SystemClock,
            &UserData::from(user),
        );
        Arc::new(StreamEvent::new(position, &event))
    }

    /// Backpressure: the hub never waits for a client, and a client's backlog never grows
    /// past its queue; the connection is closed instead.
    #[tokio::test]
    async fn a_slow_connection_is_closed_with_a_bounded_backlog() -> anyhow::Result<()> {
        let hub = hub(4, 10).await?;
        let principal = principal();
        let mut slow = hub.connect(principal.clone())?;
        slow.subscribe(Channel::User, None).await?;
        let mut keeping_up = hub.connect(principal.clone())?;
        keeping_up.subscribe(Channel::User, None).await?;
        for position in 1..=6 {
            hub.publish(event_about(&principal.user, position)).await;
            let Some(Outgoing::Event { event, .. }) = keeping_up.next().await else {
                panic!("the reading connection gets every event");
            };
            assert_eq!(event.position, position);
        }
        for position in 1..=4 {
            let Some(Outgoing::Event { event, .. }) = slow.next().await else {
                panic!("what was queued before the overflow is delivered");
            };
            assert_eq!(event.position, position);
        }
        assert!(slow.next().await.is_none());
        assert_eq!(slow.close_reason(), Some(CloseReason::SlowConsumer));
        assert_eq!(hub.connections(), 1);
        Ok(())
    }

    #[tokio::test]
    async fn connections_per_user_are_limited_and_freed_on_close() -> anyhow::Result<()> {
        let hub = hub(16, 2).await?;
        let principal = principal();
        let first = hub.connect(principal.clone())?;
        let _second = hub.connect(principal.clone())?;
        let refused = hub.connect(principal.clone()).map(|_| ()).unwrap_err();
        assert_eq!(refused.reason, "TOO_MANY_CONNECTIONS");
        // Someone else is not held back by it.
        hub.connect(self::principal())?;
        drop(first);
        hub.connect(principal)?;
        Ok(())
    }

    /// A subscription made with a last event id gets what followed it from the history, and
    /// a live event it already received that way is not sent twice.
    #[tokio::test]
    async fn recovered_events_are_not_sent_twice() -> anyhow::Result<()> {
        let hub = hub(16, 10).await?;
        let principal = principal();
        let mut connection = hub.connect(principal.clone())?;
        connection.subscribe(Channel::User, None).await?;
        // A live event at or below the floor is dropped; one above it passes.
        connection.channels.insert(Channel::User, 5);
        hub.publish(event_about(&principal.user, 5)).await;
        hub.publish(event_about(&principal.user, 6)).await;
        let Some(Outgoing::Event { event, .. }) = connection.next().await else {
            panic!("an event");
        };
        assert_eq!(event.position, 6);
        // Unknown ids cannot be recovered.
        let subscribed = connection
            .subscribe(Channel::User, Some(Uuid::now_v7()))
            .await?;
        assert_eq!(subscribed.recovered, Some(false));
        Ok(())
    }
}
