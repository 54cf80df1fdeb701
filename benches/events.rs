//! Event throughput: how fast the dispatcher moves committed events into the audit log
//! (hash-chained, 500 per transaction), and how fast webhook deliveries reach a receiver on
//! loopback, on SQLite and (with `KEEL_BENCH_DATABASE_URL=postgres://…/postgres`, a fresh
//! database is made in it) on PostgreSQL. The floor, measured in the same run on the same
//! database: plain INSERTs of the same number of rows, 500 per transaction, then SELECTs of
//! them back.
//!
//! It also times the cost of the outbox on the request path: a profile change written alone
//! (one UPDATE on a connection of its own), through the store with no event, and through the
//! store with its `user.updated` event (one transaction on SQLite, one statement on
//! PostgreSQL).
//!
//! ```sh
//! cargo bench --bench events -- --events 20000 --deliveries 5000
//! ```

use keel::cache::MemoryCache;
use keel::domain::audit::{Dispatcher, Outbox};
use keel::domain::clock::{Clock, SystemClock};
use keel::domain::events::{Event, EventKind, EventLog, OrganizationData, Origin};
use keel::domain::notifications::SecurityNotices;
use keel::domain::page::PageTokens;
use keel::domain::rate::RateLimits;
use keel::domain::realtime::Beacon;
use keel::domain::secret::Keyring;
use keel::domain::tenancy::{Organization, OrganizationStore};
use keel::domain::user::{User, UserStore};
use keel::domain::webhooks::{
    Webhook, WebhookPorts, WebhookService, WebhookSettings, WebhookStore,
};
use keel::security::keyring::InstanceKeyring;
use keel::store::SqlStore;
use keel::webhooks::HttpSender;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

const BATCH: usize = 500;

fn option(name: &str, default: usize) -> usize {
    let mut args = std::env::args();
    while let Some(arg) = args.next() {
        if arg == name {
            return args
                .next()
                .and_then(|value| value.parse().ok())
                .unwrap_or(default);
        }
    }
    default
}

/// A fresh database: SQLite in a temporary directory, or a new PostgreSQL database.
async fn database(postgres: Option<&str>, directory: &std::path::Path) -> (SqlStore, String) {
    let url = match postgres {
        None => format!("sqlite://{}", directory.join("bench.db").display()),
        Some(admin) => {
            use sqlx::{Connection, Executor};
            let name = format!("keel_bench_{}", Uuid::now_v7().simple());
            let mut connection = sqlx::PgConnection::connect(admin).await.unwrap();
            connection
                .execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .await
                .unwrap();
            let (base, _) = admin.rsplit_once('/').unwrap();
            format!("{base}/{name}")
        }
    };
    let store = SqlStore::connect(&url).await.unwrap();
    store.migrate().await.unwrap();
    (store, url)
}

/// Plain rows, the same number, in transactions of `BATCH`, then read back.
async fn floor(url: &str, rows: usize) -> f64 {
    use sqlx::{Connection, Executor};
    macro_rules! measure {
        ($connection:expr, $id_type:literal) => {{
            let mut connection = $connection;
            connection
                .execute(sqlx::AssertSqlSafe(format!(
                    "CREATE TABLE floor_rows (id {} PRIMARY KEY, body TEXT NOT NULL)",
                    $id_type
                )))
                .await
                .unwrap();
            let started = Instant::now();
            for chunk in 0..rows.div_ceil(BATCH) {
                let first = i64::try_from(chunk * BATCH).unwrap();
                let mut transaction = connection.begin().await.unwrap();
                for row in 0..i64::try_from(BATCH).unwrap() {
                    sqlx::query("INSERT INTO floor_rows (id, body) VALUES ($1, $2)")
                        .bind(first + row)
                        .bind("{\"organization_id\":\"x\",\"name\":\"Org\",\"slug\":\"org\"}")
                        .execute(&mut *transaction)
                        .await
                        .unwrap();
                }
                transaction.commit().await.unwrap();
                let _: Vec<(i64, String)> =
                    sqlx::query_as("SELECT id, body FROM floor_rows WHERE id >= $1 LIMIT $2")
                        .bind(first)
                        .bind(i64::try_from(BATCH).unwrap())
                        .fetch_all(&mut connection)
                        .await
                        .unwrap();
            }
            started.elapsed()
        }};
    }
    let elapsed = if url.starts_with("sqlite:") {
        measure!(
            sqlx::SqliteConnection::connect(url).await.unwrap(),
            "INTEGER"
        )
    } else {
        measure!(sqlx::PgConnection::connect(url).await.unwrap(), "BIGINT")
    };
    rows as f64 / elapsed.as_secs_f64()
}

/// The mean time of `count` profile changes written alone (a plain UPDATE), then through the
/// store without an event, then with their `user.updated` event.
async fn change_cost(
    store: &SqlStore,
    url: &str,
    user: &User,
    clock: &dyn Clock,
    count: usize,
) -> (Duration, Duration, Duration) {
    use sqlx::Connection;
    let sql = "UPDATE users SET full_name = $2, updated_at = $3 WHERE id = $1";
    let started = Instant::now();
    if url.starts_with("sqlite:") {
        let mut connection = sqlx::SqliteConnection::connect(url).await.unwrap();
        for index in 0..count {
            sqlx::query(sql)
                .bind(user.id)
                .bind(format!("Name {index}"))
                .bind(clock.now())
                .execute(&mut connection)
                .await
                .unwrap();
        }
    } else {
        let mut connection = sqlx::PgConnection::connect(url).await.unwrap();
        for index in 0..count {
            sqlx::query(sql)
                .bind(user.id)
                .bind(format!("Name {index}"))
                .bind(clock.now())
                .execute(&mut connection)
                .await
                .unwrap();
        }
    }
    let alone = started.elapsed() / u32::try_from(count).unwrap();
    let started = Instant::now();
    for index in 0..count {
        UserStore::update_full_name(store, user.id, &format!("Name {index}"), clock.now(), &[])
            .await
            .unwrap();
    }
    let no_event = started.elapsed() / u32::try_from(count).unwrap();
    let origin = Origin::system();
    let started = Instant::now();
    for index in 0..count {
        let full_name = format!("Name {index}");
        let changed = User {
            full_name: full_name.clone(),
            ..user.clone()
        };
        let event = Event::new(
            EventKind::UserUpdated,
            &origin,
            clock,
            &keel::domain::events::UserData::from(&changed),
        );
        UserStore::update_full_name(store, user.id, &full_name, clock.now(), &[event])
            .await
            .unwrap();
    }
    let with_event = started.elapsed() / u32::try_from(count).unwrap();
    (alone, no_event, with_event)
}

/// A receiver on loopback answering 200; answers its URL and its count.
async fn receiver() -> (String, Arc<AtomicU64>) {
    let received = Arc::new(AtomicU64::new(0));
    let counter = received.clone();
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::Relaxed);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (format!("http://{address}/hook"), received)
}

async fn run(backend: &str, postgres: Option<&str>, events: usize, deliveries: usize) {
    let directory = tempfile::tempdir().unwrap();
    let (store, url) = database(postgres, directory.path()).await;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let keyring: Arc<dyn Keyring> = Arc::new(
        InstanceKeyring::load_or_create(&directory.path().join("instance-secret.key")).unwrap(),
    );
    let cache = Arc::new(MemoryCache::new(64 * 1024 * 1024));
    let webhooks = Arc::new(WebhookService::new(
        WebhookPorts {
            store: Arc::new(store.clone()),
            sender: Arc::new(HttpSender::new(true, Duration::from_secs(10)).unwrap()),
            keyring: keyring.clone(),
            rate_limits: Arc::new(RateLimits::new(cache, clock.clone())),
            pages: Arc::new(PageTokens::new(keyring.clone())),
            clock: clock.clone(),
        },
        WebhookSettings {
            retry_schedule: vec![Duration::from_secs(1)],
            disable_after_failures: 1_000_000,
            secret_grace: chrono::Duration::hours(24),
            lease: chrono::Duration::seconds(60),
        },
    ));
    let dispatcher = Dispatcher::new(
        Arc::new(store.clone()),
        webhooks.clone(),
        SecurityNotices::new(Arc::new(store.clone())),
        Arc::new(Beacon::default()),
        clock.clone(),
    );
    let floor_rate = floor(&url, events).await;

    // An organization with its owner, and a webhook of it to the receiver.
    let now = keel::domain::clock::truncate_to_micros(clock.now());
    let owner = User {
        id: Uuid::now_v7(),
        email: "owner@example.com".into(),
        full_name: "Owner".into(),
        email_verified: true,
        is_superuser: false,
        is_active: true,
        created_at: now,
        updated_at: now,
    };
    UserStore::insert_user(&store, &owner, "x", &[])
        .await
        .unwrap();
    let organization = Organization {
        id: Uuid::now_v7(),
        name: "Bench".into(),
        slug: "bench".into(),
        settings: Default::default(),
        created_at: now,
        updated_at: now,
    };
    OrganizationStore::insert_organization(&store, &organization, owner.id, &[])
        .await
        .unwrap();
    let changes = option("--changes", 2_000);
    let (alone, no_event, with_event) =
        change_cost(&store, &url, &owner, clock.as_ref(), changes).await;

    let data = OrganizationData {
        organization_id: organization.id,
        name: "Bench".into(),
        slug: "bench".into(),
    };
    let origin = Origin::system();
    let event = || {
        Event::new(
            EventKind::OrganizationUpdated,
            &origin,
            clock.as_ref(),
            &data,
        )
    };

    // Events to the audit log (no webhook yet).
    for _ in 0..events.div_ceil(BATCH) {
        let batch: Vec<Event> = (0..BATCH).map(|_| event()).collect();
        EventLog::append_events(&store, &batch).await.unwrap();
    }
    let started = Instant::now();
    let mut dispatched = 0;
    loop {
        let moved = dispatcher.dispatch_batch().await.unwrap();
        if moved == 0 {
            break;
        }
        dispatched += moved;
    }
    let audit_rate = dispatched as f64 / started.elapsed().as_secs_f64();

    // Webhook deliveries to the receiver.
    let (hook, received) = receiver().await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    let webhook = Webhook {
        id: Uuid::now_v7(),
        organization_id: organization.id,
        url: hook,
        description: String::new(),
        event_types: vec!["*".into()],
        is_active: true,
        rate_limit_per_second: 0,
        consecutive_failures: 0,
        disabled_reason: None,
        created_at: keel::domain::clock::truncate_to_micros(clock.now()),
        updated_at: now,
    };
    let secret = keyring.seal("webhook-secret", &[7; 24]).unwrap();
    WebhookStore::insert_webhook(&store, &webhook, &secret, &[])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    for _ in 0..deliveries.div_ceil(BATCH) {
        let batch: Vec<Event> = (0..BATCH).map(|_| event()).collect();
        EventLog::append_events(&store, &batch).await.unwrap();
    }
    while dispatcher.dispatch_batch().await.unwrap() > 0 {}
    let started = Instant::now();
    let mut sent = 0;
    loop {
        let round = webhooks.deliver_due(256, 64).await.unwrap();
        if round.claimed == 0 {
            break;
        }
        sent += round.sent;
    }
    let delivery_rate = sent as f64 / started.elapsed().as_secs_f64();
    assert_eq!(received.load(Ordering::Relaxed), sent as u64);
    let _ = Outbox::pending_events(&store, 1).await.unwrap();

    println!(
        "{backend:<10} floor {floor_rate:>8.0} rows/s   events→audit {audit_rate:>8.0}/s ({:.2}× floor)   \
         webhook deliveries {delivery_rate:>7.0}/s ({sent} sent)",
        audit_rate / floor_rate
    );
    println!(
        "{backend:<10} a profile change: alone {alone:>7.1?}, through the store without its \
         event {no_event:>7.1?}, with it {with_event:>7.1?} ({:.2}× alone)",
        with_event.as_secs_f64() / alone.as_secs_f64()
    );
    store.close().await;
    if let Some(admin) = postgres {
        use sqlx::{Connection, Executor};
        let (_, name) = url.rsplit_once('/').unwrap();
        let mut connection = sqlx::PgConnection::connect(admin).await.unwrap();
        connection
            .execute(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE {name} WITH (FORCE)"
            )))
            .await
            .unwrap();
    }
}

#[tokio::main]
async fn main() {
    let events = option("--events", 20_000);
    let deliveries = option("--deliveries", 5_000);
    run("sqlite", None, events, deliveries).await;
    if let Ok(admin) = std::env::var("KEEL_BENCH_DATABASE_URL") {
        run("postgres", Some(&admin), events, deliveries).await;
    }
}
