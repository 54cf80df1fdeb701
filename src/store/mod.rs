//! SQL adapters of the store ports, one implementation for SQLite (embedded default) and
//! PostgreSQL (production). The SQL is shared where it is portable: `with_pool!` stamps the same
//! body out for each backend, so each query is type-checked against both drivers.

mod api_keys;
mod archive;
mod dead_letters;
mod dependencies;
mod events;
mod feature_flags;
mod files;
mod identities;
mod integrations;
mod invitations;
mod ip_rules;
mod leases;
mod llm;
mod notifications;
mod one_time_tokens;
mod organizations;
mod passkeys;
mod quotas;
mod sessions;
mod sso;
mod teams;
mod totp;
mod users;
mod webhooks;

use crate::domain::Error;
use crate::domain::error::Result;
use crate::domain::health::HealthProbe;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::str::FromStr;
use std::time::Duration;

pub use archive::DirectoryArchive;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the concrete pool of either backend, in a span of its
/// own (a trace shows each statement under the call that made it).
macro_rules! with_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        tracing::Instrument::instrument(
            async {
                match &$store.pool {
                    crate::store::Pool::Sqlite($pool) => $body,
                    crate::store::Pool::Postgres($pool) => $body,
                }
            },
            crate::store::statement_span(&$store.pool, module_path!()),
        )
        .await
    };
}
use with_pool;

/// The span of a database call made in `module`, within a traced RPC or job.
fn statement_span(pool: &Pool, module: &'static str) -> tracing::Span {
    let system = match pool {
        Pool::Sqlite(_) => "sqlite",
        Pool::Postgres(_) => "postgresql",
    };
    crate::child_span!("db", db.system = system, code.namespace = module)
}

/// Starts a transaction that writes. On SQLite it takes the write lock at once (`BEGIN
/// IMMEDIATE`), waiting up to the busy timeout for it: a deferred transaction that reads
/// before it writes fails at once with `SQLITE_BUSY` when another connection (the event
/// dispatcher, say) wrote in between.
trait BeginWrite {
    type Database: sqlx::Database;
    async fn begin_write(&self) -> sqlx::Result<sqlx::Transaction<'static, Self::Database>>;
}

impl BeginWrite for SqlitePool {
    type Database = sqlx::Sqlite;
    async fn begin_write(&self) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        self.begin_with("BEGIN IMMEDIATE").await
    }
}

impl BeginWrite for PgPool {
    type Database = sqlx::Postgres;
    async fn begin_write(&self) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        self.begin().await
    }
}

/// Gives a member these organization role keys, inside a transaction of either backend.
macro_rules! insert_member_roles {
    ($transaction:expr, $organization_id:expr, $user_id:expr, $role_keys:expr) => {
        for role_key in $role_keys {
            sqlx::query(
                "INSERT INTO member_roles (organization_id, user_id, role_key) \
                 VALUES ($1, $2, $3)",
            )
            .bind($organization_id)
            .bind($user_id)
            .bind(role_key.to_string())
            .execute(&mut *$transaction)
            .await?;
        }
    };
}
use insert_member_roles;

/// Runs one statement on either backend; answers the number of rows it affected.
macro_rules! execute {
    ($store:expr, $query:expr) => {
        with_pool!($store, pool => $query.execute(pool).await.map(|done| done.rows_affected()))
            .map_err(crate::store::database_error)
    };
}
use execute;

#[derive(Clone)]
pub struct SqlStore {
    pool: Pool,
    /// The SQLite database file, for the size of its write-ahead log.
    sqlite_file: Option<std::path::PathBuf>,
}

impl SqlStore {
    /// Connects to `sqlite:…` (the file is created when missing) or `postgres://…`.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let mut sqlite_file = None;
        let pool = if url.starts_with("sqlite:") {
            let options = SqliteConnectOptions::from_str(url)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10));
            // An in-memory database has no file (sqlx names it `file:sqlx-in-memory-N`).
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            if !in_memory {
                crate::security::create_private_file(options.get_filename())?;
                sqlite_file = Some(options.get_filename().to_owned());
            }
            Pool::Sqlite(
                SqlitePoolOptions::new()
                    .max_connections(8)
                    .test_before_acquire(false)
                    .connect_with(options)
                    .await?,
            )
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let options = PgConnectOptions::from_str(url)?;
            Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(5))
                    // A ping on every acquire costs a round trip per query; a connection that
                    // sat idle is pinged instead, so those a database restart killed are
                    // replaced before a request meets them.
                    .test_before_acquire(false)
                    .before_acquire(|connection, metadata| {
                        Box::pin(async move {
                            if metadata.idle_for >= PING_AFTER_IDLE {
                                sqlx::Connection::ping(connection).await?;
                            }
                            Ok(true)
                        })
                    })
                    .connect_with(options)
                    .await?,
            )
        } else {
            anyhow::bail!("KEEL_DATABASE_URL must start with sqlite: or postgres://");
        };
        Ok(Self { pool, sqlite_file })
    }

    /// Keeps SQLite's write-ahead log under `limit` bytes. Readers that never all pause at
    /// once keep the automatic checkpoint from starting the log over, so under steady load it
    /// grows without end (958 MB in a 10-minute mixed run). Past `limit`, a TRUNCATE
    /// checkpoint copies the log into the database and empties the file; it waits for the
    /// readers of older snapshots (at most the busy timeout), while new readers go on. Answers
    /// the log's size before; nothing to do on PostgreSQL.
    pub async fn bound_wal(&self, limit: u64) -> Result<u64> {
        let (Pool::Sqlite(pool), Some(file)) = (&self.pool, &self.sqlite_file) else {
            return Ok(0);
        };
        let mut wal = file.clone().into_os_string();
        wal.push("-wal");
        let size = tokio::fs::metadata(&wal)
            .await
            .map(|metadata| metadata.len())
            .unwrap_or(0);
        if size <= limit {
            return Ok(size);
        }
        let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(pool)
            .await
            .map_err(database_error)?;
        if busy == 0 {
            tracing::info!(
                wal_bytes = size,
                "SQLite write-ahead log checkpointed and emptied"
            );
        } else {
            tracing::warn!(
                wal_bytes = size,
                "SQLite checkpoint waited too long for readers; trying again later"
            );
        }
        Ok(size)
    }

    pub fn backend_name(&self) -> &'static str {
        match self.pool {
            Pool::Sqlite(_) => "sqlite",
            Pool::Postgres(_) => "postgres",
        }
    }

    /// Applies pending migrations of the connected backend.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        match &self.pool {
            Pool::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await?,
            Pool::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await?,
        }
        Ok(())
    }

    pub async fn close(&self) {
        with_pool!(self, pool => pool.close().await)
    }
}

#[async_trait::async_trait]
impl HealthProbe for SqlStore {
    fn name(&self) -> &'static str {
        "database"
    }

    fn backend(&self) -> &'static str {
        self.backend_name()
    }

    async fn check(&self) -> Result<()> {
        with_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))
            .map(|_| ())
            .map_err(database_error)
    }

    /// The pool's connections, and the sessions open now (by the wall clock: a gauge for
    /// operators, not a decision).
    async fn figures(&self) -> Vec<(&'static str, u64)> {
        let (connections, idle) =
            with_pool!(self, pool => (u64::from(pool.size()), pool.num_idle() as u64));
        let mut figures = vec![("connections", connections), ("idle_connections", idle)];
        let sessions: sqlx::Result<i64> = with_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM sessions WHERE revoked_at IS NULL AND expires_at > $1",
            )
            .bind(chrono::Utc::now())
            .fetch_one(pool)
            .await
        });
        match sessions {
            Ok(count) => figures.push(("active_sessions", u64::try_from(count).unwrap_or(0))),
            Err(error) => tracing::warn!(%error, "counting active sessions failed"),
        }
        figures
    }
}

/// A pooled PostgreSQL connection idle this long is pinged before it serves a query.
const PING_AFTER_IDLE: Duration = Duration::from_millis(500);

/// Connection trouble is `Unavailable` (worth a retry, and said so with `Retry-After`);
/// anything else is a bug.
fn database_error(error: sqlx::Error) -> Error {
    if is_connection_trouble(&error) {
        return Error {
            retry_after: Some(Duration::from_secs(1)),
            ..Error::unavailable("DATABASE_UNAVAILABLE", error)
        };
    }
    Error::internal(error)
}

/// The database cannot be reached or dropped the connection: the pool, the network, or
/// PostgreSQL's SQLSTATE classes 08 (connection exception) and 57P (shutdown, restart).
fn is_connection_trouble(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(database) => database
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    }
}

/// Maps a failed statement: a unique violation is the domain's `conflict`, anything else a
/// database error.
fn unique_or(conflict: fn() -> Error) -> impl Fn(sqlx::Error) -> Error {
    move |error| match &error {
        sqlx::Error::Database(database) if database.is_unique_violation() => conflict(),
        _ => database_error(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::{AssertSqlSafe, Connection, Executor};

    /// Every paged list query, by what it lists, with its parameters' PostgreSQL types.
    fn list_queries() -> Vec<(&'static str, String, &'static str)> {
        let keyset = "uuid, uuid, bigint";
        vec![
            (
                "a user's organizations",
                organizations::list_memberships_sql(),
                "uuid, uuid, uuid, bigint",
            ),
            ("members", organizations::list_members_sql(), keyset),
            ("invitations", invitations::list_invitations_sql(), keyset),
            (
                "invitations to an address",
                invitations::list_pending_invitations_sql(),
                "text, timestamptz",
            ),
            ("usage logs", quotas::LIST_USAGE_LOGS.to_owned(), keyset),
            ("teams", teams::list_teams_sql(), keyset),
            ("team members", teams::list_team_members_sql(), keyset),
            (
                "users",
                users::list_users_sql(),
                "uuid, text, boolean, boolean, bigint",
            ),
        ]
    }

    fn placeholders(sql: &str) -> usize {
        sql.split('$')
            .skip(1)
            .filter_map(|rest| {
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                digits.parse::<usize>().ok()
            })
            .max()
            .unwrap_or(0)
    }

    /// A list costs its page, not its collection: SQLite searches an index that yields the
    /// rows in the order asked (no scan, no sort of the whole set).
    #[tokio::test]
    async fn sqlite_lists_walk_an_index_in_order() -> anyhow::Result<()> {
        let directory = tempfile::tempdir()?;
        let url = format!("sqlite://{}", directory.path().join("plans.db").display());
        let store = SqlStore::connect(&url).await?;
        store.migrate().await?;
        let Pool::Sqlite(pool) = &store.pool else {
            anyhow::bail!("not SQLite");
        };
        for (list, sql, _) in list_queries() {
            let mut query = sqlx::query_as::<_, (i64, i64, i64, String)>(AssertSqlSafe(format!(
                "EXPLAIN QUERY PLAN {sql}"
            )));
            for _ in 0..placeholders(&sql) {
                query = query.bind(None::<i64>);
            }
            let plan: Vec<String> = query
                .fetch_all(pool)
                .await?
                .into_iter()
                .map(|(_, _, _, step)| step)
                .collect();
            assert!(
                plan.iter()
                    .all(|step| !step.starts_with("SCAN") && !step.contains("TEMP B-TREE")),
                "{list}: {plan:?}"
            );
        }
        Ok(())
    }

    /// The same on PostgreSQL (with `KEEL_TEST_DATABASE_URL`): with sorts and sequential scans
    /// priced out, the generic plan of every list still has neither.
    #[tokio::test]
    async fn postgres_lists_walk_an_index_in_order() -> anyhow::Result<()> {
        let Ok(admin_url) = std::env::var("KEEL_TEST_DATABASE_URL") else {
            eprintln!("skipped: set KEEL_TEST_DATABASE_URL to check PostgreSQL plans");
            return Ok(());
        };
        let name = format!("keel_test_plans_{}", uuid::Uuid::now_v7().simple());
        let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
        admin
            .execute(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .await?;
        let (base, _) = admin_url
            .rsplit_once('/')
            .ok_or_else(|| anyhow::anyhow!("KEEL_TEST_DATABASE_URL ends with /<database>"))?;
        let url = format!("{base}/{name}");
        let store = SqlStore::connect(&url).await?;
        store.migrate().await?;
        store.close().await;
        let mut connection = sqlx::PgConnection::connect(&url).await?;
        connection
            .execute(
                "SET plan_cache_mode = force_generic_plan; SET enable_sort = off; \
                 SET enable_seqscan = off",
            )
            .await?;
        for (index, (list, sql, types)) in list_queries().into_iter().enumerate() {
            connection
                .execute(AssertSqlSafe(format!(
                    "PREPARE list_{index} ({types}) AS {sql}"
                )))
                .await?;
            let nulls = vec!["NULL"; placeholders(&sql)].join(", ");
            let plan: Vec<(String,)> = sqlx::query_as(AssertSqlSafe(format!(
                "EXPLAIN EXECUTE list_{index}({nulls})"
            )))
            .fetch_all(&mut connection)
            .await?;
            let plan: Vec<String> = plan.into_iter().map(|(line,)| line).collect();
            assert!(
                plan.iter()
                    .all(|line| !line.contains("Sort") && !line.contains("Seq Scan")),
                "{list}: {plan:#?}"
            );
        }
        connection.close().await?;
        admin
            .execute(AssertSqlSafe(format!("DROP DATABASE {name} WITH (FORCE)")))
            .await?;
        Ok(())
    }
}
