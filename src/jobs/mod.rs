//! Background work on apalis. Jobs are kept in their own SQLite file beside Keel's database
//! (apalis and Keel would each trip over the other's migrations in one file), or in the
//! `apalis` schema of Keel's PostgreSQL database. A job is stored before the request that
//! queued it answers, so a crash loses nothing: the next worker to start runs it.
//!
//! Failed jobs are retried in the worker with exponential backoff and jitter; a job that
//! fails every attempt, or fails for good at once, becomes a dead letter (`domain::jobs`).
//! Job ids are UUID v7s, carried as ULIDs (what apalis stores), so a dead letter's id is its
//! job's.

use crate::domain::audit::{AuditService, Dispatcher};
use crate::domain::auth::AuthService;
use crate::domain::clock::Clock;
use crate::domain::dependencies::DependencyService;
use crate::domain::error::{Error, Result};
use crate::domain::files::FileService;
use crate::domain::health::HealthProbe;
use crate::domain::integrations::IntegrationService;
use crate::domain::jobs::{
    DeadLetterService, JobMonitor, JobQueue, JobSummary, Lease, LeaseStore, MAIL_JOB,
};
use crate::domain::mail::{MailJob, Mailer, QueuedMail};
use crate::domain::tenancy::invitations::InvitationService;
use crate::domain::webhooks::{DeliveryRound, GivenUpDelivery, WEBHOOK_JOB, WebhookService};
use crate::mail::{Delivery, DeliveryError};
use crate::telemetry::JOBS_TARGET;
use anyhow::Context;
use apalis::layers::retry::HasherRng;
use apalis::layers::retry::backoff::{ExponentialBackoff, ExponentialBackoffMaker, MakeBackoff};
use apalis::prelude::*;
use apalis_cron::{CronScheduler, Tick};
use apalis_postgres::PostgresStorage;
use apalis_sqlite::SqliteStorage;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::path::Path;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tracing::Instrument;
use ulid::Ulid;
use uuid::Uuid;

/// Messages delivered at once by one worker process.
const MAIL_CONCURRENCY: usize = 4;
/// The longest wait between two attempts, however many came before.
const LONGEST_RETRY_WAIT: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct JobSettings {
    /// The wait before the second attempt; each later wait doubles (plus up to half again of
    /// jitter), up to an hour.
    pub retry_base: Duration,
    pub max_attempts: u32,
    /// How often an idle worker looks for new jobs.
    pub poll_interval: Duration,
    /// How often an idle dispatcher looks for new events.
    pub dispatch_poll_interval: Duration,
    pub cleanup_schedule: cron::Schedule,
    pub dependency_check_schedule: cron::Schedule,
    /// How long a worker finishes the jobs in hand once asked to stop; past it they are left
    /// to be picked up again once their heartbeat lapses.
    pub shutdown_timeout: Duration,
}

/// Where jobs are kept.
#[derive(Clone)]
pub enum JobStore {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl JobStore {
    /// The store that goes with `database_url`: `<data dir>/jobs.db` for SQLite, the same
    /// database for PostgreSQL.
    pub async fn connect(database_url: &str, data_dir: &Path) -> anyhow::Result<Self> {
        if database_url.starts_with("sqlite:") {
            let file = data_dir.join("jobs.db");
            crate::security::create_private_file(&file)?;
            let options = SqliteConnectOptions::new()
                .filename(&file)
                .journal_mode(SqliteJournalMode::Wal)
                // As Keel's own database: a commit survives the process (kill -9), not
                // necessarily the machine losing power.
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10));
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(options)
                .await
                .with_context(|| format!("opening the job store {}", file.display()))?;
            Ok(Self::Sqlite(pool))
        } else {
            let options = sqlx::postgres::PgConnectOptions::from_str(database_url)?;
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options)
                .await
                .context("connecting the job store")?;
            Ok(Self::Postgres(pool))
        }
    }

    pub async fn migrate(&self) -> anyhow::Result<()> {
        match self {
            Self::Sqlite(pool) => SqliteStorage::<()>::migrations().run(pool).await?,
            Self::Postgres(pool) => PostgresStorage::<()>::migrations().run(pool).await?,
        }
        Ok(())
    }

    pub async fn close(&self) {
        match self {
            Self::Sqlite(pool) => pool.close().await,
            Self::Postgres(pool) => pool.close().await,
        }
    }

    /// Deletes the jobs that finished (done, or given up: their dead letters keep them) before
    /// `cutoff`, and the records of workers gone since, holding no job. apalis has no API for
    /// either on both backends; its tables are read here and nowhere else.
    async fn prune(&self, cutoff: DateTime<Utc>) -> Result<u64> {
        let jobs = "DELETE FROM {jobs} WHERE status IN ('Done', 'Killed') AND done_at < $1";
        let workers = "DELETE FROM {workers} WHERE last_seen < $1 \
             AND id NOT IN (SELECT lock_by FROM {jobs} WHERE lock_by IS NOT NULL)";
        let sqlite = |sql: &str| {
            sql.replace("{jobs}", "Jobs")
                .replace("{workers}", "Workers")
        };
        let postgres = |sql: &str| {
            sql.replace("{jobs}", "apalis.jobs")
                .replace("{workers}", "apalis.workers")
        };
        let deleted = match self {
            Self::Sqlite(pool) => {
                let deleted = sqlx::query(sqlx::AssertSqlSafe(sqlite(jobs)))
                    .bind(cutoff.timestamp())
                    .execute(pool)
                    .await;
                sqlx::query(sqlx::AssertSqlSafe(sqlite(workers)))
                    .bind(cutoff.timestamp())
                    .execute(pool)
                    .await
                    .and(deleted)
                    .map(|done| done.rows_affected())
            }
            Self::Postgres(pool) => {
                let deleted = sqlx::query(sqlx::AssertSqlSafe(postgres(jobs)))
                    .bind(cutoff)
                    .execute(pool)
                    .await;
                sqlx::query(sqlx::AssertSqlSafe(postgres(workers)))
                    .bind(cutoff)
                    .execute(pool)
                    .await
                    .and(deleted)
                    .map(|done| done.rows_affected())
            }
        };
        deleted.map_err(Error::internal)
    }
}

#[async_trait::async_trait]
impl JobMonitor for JobStore {
    async fn job_counts(&self) -> Result<Vec<(String, String, u64)>> {
        let sql = "SELECT job_type, LOWER(status), COUNT(*) FROM {jobs} GROUP BY job_type, status";
        let rows: Vec<(String, String, i64)> = match self {
            Self::Sqlite(pool) => {
                sqlx::query_as(sqlx::AssertSqlSafe(sql.replace("{jobs}", "Jobs")))
                    .fetch_all(pool)
                    .await
            }
            Self::Postgres(pool) => {
                sqlx::query_as(sqlx::AssertSqlSafe(sql.replace("{jobs}", "apalis.jobs")))
                    .fetch_all(pool)
                    .await
            }
        }
        .map_err(Error::internal)?;
        Ok(rows
            .into_iter()
            .map(|(queue, status, count)| (queue, status, u64::try_from(count).unwrap_or(0)))
            .collect())
    }

    async fn list_jobs(
        &self,
        queue: Option<&str>,
        status: Option<&str>,
        before: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<JobSummary>> {
        // Job ids are ULIDs (text that sorts by time); times are seconds.
        let before = before.map(|id| Ulid::from(id.as_u128()).to_string());
        let status = status.map(|status| {
            let mut letters = status.chars();
            letters
                .next()
                .map(|first| first.to_uppercase().chain(letters).collect::<String>())
                .unwrap_or_default()
        });
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let filter = "WHERE ($1 IS NULL OR job_type = $1) AND ($2 IS NULL OR status = $2) \
             AND ($3 IS NULL OR id < $3) ORDER BY id DESC LIMIT $4";
        type Row = (
            String,
            String,
            String,
            i32,
            i32,
            i64,
            Option<i64>,
            Option<String>,
        );
        let rows: Vec<Row> = match self {
            Self::Sqlite(pool) => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT id, job_type, status, attempts, max_attempts, run_at, done_at, \
                     last_result FROM Jobs {filter}"
                )))
                .bind(queue)
                .bind(status)
                .bind(before)
                .bind(limit)
                .fetch_all(pool)
                .await
            }
            Self::Postgres(pool) => {
                sqlx::query_as(sqlx::AssertSqlSafe(format!(
                    "SELECT id, job_type, status, attempts, max_attempts, \
                     EXTRACT(EPOCH FROM run_at)::BIGINT, EXTRACT(EPOCH FROM done_at)::BIGINT, \
                     last_result::TEXT FROM apalis.jobs {filter}"
                )))
                .bind(queue)
                .bind(status)
                .bind(before)
                .bind(limit)
                .fetch_all(pool)
                .await
            }
        }
        .map_err(Error::internal)?;
        let time = |seconds: i64| DateTime::from_timestamp(seconds, 0).unwrap_or_default();
        Ok(rows
            .into_iter()
            .filter_map(
                |(id, queue, status, attempts, max_attempts, run_at, done_at, last)| {
                    let id = Uuid::from_u128(u128::from(Ulid::from_string(&id).ok()?));
                    Some(JobSummary {
                        id,
                        queue,
                        status: status.to_lowercase(),
                        attempts: u32::try_from(attempts).unwrap_or_default(),
                        max_attempts: u32::try_from(max_attempts).unwrap_or_default(),
                        run_at: time(run_at),
                        done_at: done_at.map(time),
                        last_result: last,
                    })
                },
            )
            .collect())
    }
}

/// A job store's queue of one job type, on either backend.
#[derive(Clone)]
enum Queue<T> {
    Sqlite(SqliteStorage<T>),
    Postgres(PostgresStorage<T>),
}

impl<T> Queue<T> {
    fn open(store: &JobStore, name: &str) -> Self {
        match store {
            JobStore::Sqlite(pool) => Self::Sqlite(
                SqliteStorage::new(pool).with_config(apalis_sqlite::Config::default().queue(name)),
            ),
            JobStore::Postgres(pool) => Self::Postgres(
                PostgresStorage::new(pool)
                    .with_config(apalis_postgres::Config::default().queue(name)),
            ),
        }
    }
}

impl Queue<QueuedMail> {
    /// Stores `job` as job `id`; a job of that id stored already stays as it is (queuing one
    /// job twice queues it once).
    async fn push(&self, job: QueuedMail, id: Uuid, max_attempts: u32) -> Result<()> {
        let task = TaskBuilder::new(job)
            .task_id(TaskId::from_ulid(Ulid::from(id.as_u128())))
            .max_attempts(max_attempts as usize)
            .build();
        match self.clone() {
            Queue::Sqlite(mut storage) => match storage.push_task(task).await {
                Err(TaskSinkError::PushError(apalis_sqlite::Error::Database(error)))
                    if already_stored(&error) =>
                {
                    Ok(())
                }
                pushed => pushed.map_err(Error::internal),
            },
            Queue::Postgres(mut storage) => match storage.push_task(task).await {
                Err(TaskSinkError::PushError(apalis_postgres::Error::Database(error)))
                    if already_stored(&error) =>
                {
                    Ok(())
                }
                pushed => pushed.map_err(Error::internal),
            },
        }
    }
}

fn already_stored(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(database) if database.is_unique_violation())
}

/// The id of the job that job `parent` queues as its `step`: the same every time the parent
/// runs, so a parent run twice queues it once; a UUID v7 of the parent's time, so jobs still
/// sort by when they were queued.
fn derived_job_id(parent: Uuid, step: &str) -> Uuid {
    use sha2::{Digest, Sha256};
    let digest = Sha256::new()
        .chain_update(parent.as_bytes())
        .chain_update(step.as_bytes())
        .finalize();
    let mut bytes = *parent.as_bytes();
    bytes[6..].copy_from_slice(&digest[..10]);
    uuid::Builder::from_bytes(bytes)
        .with_version(uuid::Version::SortRand)
        .with_variant(uuid::Variant::RFC4122)
        .into_uuid()
}

/// Every queue Keel pushes to.
#[derive(Clone)]
pub struct Queues {
    mail: Queue<QueuedMail>,
    max_attempts: u32,
}

impl Queues {
    pub fn new(store: &JobStore, settings: &JobSettings) -> Self {
        Self {
            mail: Queue::open(store, MAIL_JOB),
            max_attempts: settings.max_attempts,
        }
    }
}

/// The `Mailer` port: each message becomes a stored job.
#[async_trait::async_trait]
impl Mailer for Queues {
    async fn send_later(&self, job: MailJob) -> Result<()> {
        let queued = QueuedMail {
            job,
            request_id: crate::telemetry::request_id(),
            traceparent: crate::telemetry::traceparent(),
        };
        self.mail
            .push(queued, Uuid::now_v7(), self.max_attempts)
            .await
    }
}

/// The `JobQueue` port: a dead letter's job queued again, by its type.
pub struct Requeue {
    pub queues: Queues,
    pub webhooks: Arc<WebhookService>,
}

#[async_trait::async_trait]
impl JobQueue for Requeue {
    async fn requeue(&self, job_type: &str, payload: &str, id: Uuid) -> Result<()> {
        match job_type {
            MAIL_JOB => {
                let job: QueuedMail = serde_json::from_str(payload).map_err(Error::internal)?;
                self.queues
                    .mail
                    .push(job, id, self.queues.max_attempts)
                    .await
            }
            WEBHOOK_JOB => {
                let job: GivenUpDelivery =
                    serde_json::from_str(payload).map_err(Error::internal)?;
                self.webhooks.replay_given_up(job.delivery_id, id).await
            }
            other => Err(Error::internal(format!(
                "no queue for jobs of type {other:?}"
            ))),
        }
    }
}

/// What the workers need.
#[derive(Clone)]
pub struct JobContext {
    pub store: JobStore,
    pub clock: Arc<dyn Clock>,
    pub invitations: Arc<InvitationService>,
    pub auth: Arc<AuthService>,
    pub delivery: Arc<Delivery>,
    pub queues: Queues,
    pub dead_letters: Arc<DeadLetterService>,
    pub dispatcher: Arc<Dispatcher>,
    /// Where the dispatcher's lease is kept.
    pub leases: Arc<dyn LeaseStore>,
    pub webhooks: Arc<WebhookService>,
    pub integrations: Arc<IntegrationService>,
    pub files: Arc<FileService>,
    pub audit: Arc<AuditService>,
    /// `None` keeps the audit log forever.
    pub audit_retention: Option<chrono::Duration>,
    pub dependencies: Arc<DependencyService>,
    /// Whether the dependency update check runs on its schedule.
    pub check_dependencies: bool,
}

async fn send_mail(
    job: QueuedMail,
    context: Data<JobContext>,
    attempt: Attempt,
    id: TaskId,
) -> Result<(), BoxDynError> {
    let id = job_id(&id)?;
    // In the trace of the request that queued it, and logged with its request id.
    // A root: the job's trace is the request's, not that of whatever polled for it.
    let span = tracing::info_span!(
        target: JOBS_TARGET,
        parent: None,
        "job",
        otel.name = "job mail",
        job.queue = MAIL_JOB,
        job.id = %id,
        job.attempt = attempt.current(),
        request_id = job.request_id.as_deref(),
    );
    crate::telemetry::adopt_traceparent(&span, job.traceparent.as_deref());
    async {
        // A job runs at least once: one whose worker was lost before it acknowledged runs
        // again.
        if context.dead_letters.has_finished(id).await? {
            tracing::info!(job_id = %id, "job already done; not run again");
            return Ok(());
        }
        let outcome = mail(&context, &job, id).await;
        settle(&context, MAIL_JOB, id, &job, attempt.current(), outcome).await
    }
    .instrument(span)
    .await
}

fn job_id(id: &TaskId) -> Result<Uuid, BoxDynError> {
    match id {
        TaskId::Ulid(ulid) => Ok(Uuid::from_u128(u128::from(*ulid))),
        other => Err(AbortError::new(format!("a job id that is no ULID: {other}")).into()),
    }
}

async fn mail(context: &JobContext, queued: &QueuedMail, id: Uuid) -> Result<(), DeliveryError> {
    let transient = |error: Error| DeliveryError::Transient(error.to_string());
    let mail = match queued.job.clone() {
        MailJob::Rendered(mail) => mail,
        decided => {
            // Decided once, then queued as rendered: a retry sends this message again rather
            // than minting another link.
            if let Some(mail) = context
                .auth
                .prepare_mail(decided)
                .await
                .map_err(transient)?
            {
                context
                    .queues
                    .mail
                    .push(
                        QueuedMail {
                            job: MailJob::Rendered(mail),
                            ..queued.clone()
                        },
                        derived_job_id(id, "rendered"),
                        context.queues.max_attempts,
                    )
                    .await
                    .map_err(transient)?;
            }
            return Ok(());
        }
    };
    context.delivery.deliver(&mail).await
}

/// Ends an attempt: an error that may pass is handed back for the retry layer, unless the
/// attempts are spent; a job given up becomes a dead letter and is not tried again.
async fn settle<J: serde::Serialize>(
    context: &JobContext,
    job_type: &str,
    id: Uuid,
    job: &J,
    attempt: usize,
    outcome: Result<(), DeliveryError>,
) -> Result<(), BoxDynError> {
    let error = match outcome {
        Ok(()) => return Ok(context.dead_letters.job_finished(id, job_type).await?),
        Err(DeliveryError::Transient(error)) if attempt < context.queues.max_attempts as usize => {
            return Err(error.into());
        }
        Err(DeliveryError::Transient(error) | DeliveryError::Permanent(error)) => error,
    };
    let payload = serde_json::to_string(job)?;
    let attempts = u32::try_from(attempt).unwrap_or(u32::MAX);
    context
        .dead_letters
        .job_failed(id, job_type, payload, error.clone(), attempts)
        .await?;
    Err(AbortError::new(error).into())
}

/// Wakes an idle worker every period to look for jobs. apalis's own interval strategy arms its
/// next timer without polling it; when the timer and a fetch finish in the same wake-up, the
/// worker then sleeps until its 30 s heartbeat (seen on PostgreSQL under load). This one
/// always leaves a timer armed.
struct Every {
    period: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Every {
    fn new(period: Duration) -> Self {
        Self {
            period,
            timer: None,
        }
    }
}

impl PollStrategy for Every {
    fn poll_drive(
        &mut self,
        cx: &mut std::task::Context<'_>,
        _: &PollSnapshot,
    ) -> Poll<Option<()>> {
        let mut fired = false;
        loop {
            let period = self.period;
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(period)));
            match timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    self.timer = None;
                    fired = true;
                }
                Poll::Pending if fired => return Poll::Ready(Some(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Ended sessions stay listable (`include_inactive`), ended invitations listed, and finished
/// webhook deliveries and messages received from integrations kept, this long.
const ENDED_RETENTION_DAYS: i64 = 30;
/// Finished jobs stay in the job store this long (`keel_jobs` in /metrics counts them).
const FINISHED_JOB_RETENTION_DAYS: i64 = 7;
/// Dispatched events stay in the outbox this long (the audit log keeps its own copy).
const DISPATCHED_EVENT_RETENTION_DAYS: i64 = 7;

/// Deletes what has outlived its use; every step is idempotent, so replicas running it at the
/// same tick do no harm.
async fn cleanup(_tick: Tick, context: Data<JobContext>) -> Result<(), BoxDynError> {
    let span =
        tracing::info_span!(target: JOBS_TARGET, parent: None, "job", otel.name = "job cleanup");
    clean_up(&context).instrument(span).await
}

async fn clean_up(context: &JobContext) -> Result<(), BoxDynError> {
    let ended = chrono::Duration::days(ENDED_RETENTION_DAYS);
    context.auth.record_expired_sessions().await?;
    context.auth.purge_ended_sessions(ended).await?;
    context
        .auth
        .purge_expired_links(chrono::Duration::zero())
        .await?;
    context.invitations.purge_ended(ended).await?;
    let finished = context.clock.now() - chrono::Duration::days(FINISHED_JOB_RETENTION_DAYS);
    let pruned = context.store.prune(finished).await?;
    context
        .dead_letters
        .purge_finished(chrono::Duration::days(FINISHED_JOB_RETENTION_DAYS))
        .await?;
    if pruned > 0 {
        tracing::info!(pruned, "finished jobs pruned");
    }
    if let Some(retention) = context.audit_retention {
        context.audit.prune(retention).await?;
    }
    let finished = chrono::Duration::days(ENDED_RETENTION_DAYS);
    let purged = context.webhooks.purge_finished(finished).await?;
    if purged > 0 {
        tracing::info!(purged, "finished webhook deliveries purged");
    }
    let purged = context.integrations.purge_received(finished).await?;
    if purged > 0 {
        tracing::info!(purged, "messages received from integrations purged");
    }
    let expired = context.files.expire_uploads().await?;
    if expired > 0 {
        tracing::info!(expired, "unfinished uploads expired");
    }
    let purged = context.files.purge().await?;
    if purged > 0 {
        tracing::info!(purged, "storage of deleted files and ended uploads removed");
    }
    let dispatched = chrono::Duration::days(DISPATCHED_EVENT_RETENTION_DAYS);
    let purged = context.dispatcher.purge_dispatched(dispatched).await?;
    if purged > 0 {
        tracing::info!(purged, "dispatched events purged");
    }
    Ok(())
}

/// Deliveries claimed per round, and sent at once, by one worker process.
const DELIVERY_BATCH: usize = 64;
const DELIVERY_CONCURRENCY: usize = 16;

/// Sends due webhook deliveries: a round at once while there are any, then a look every
/// `poll` until `stop`. A delivery given up becomes a dead letter; one that succeeds resolves
/// the dead letter whose retry it was.
async fn deliver_webhooks(
    context: JobContext,
    poll: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let idle = match context
            .webhooks
            .deliver_due(DELIVERY_BATCH, DELIVERY_CONCURRENCY)
            .await
        {
            Ok(round) => {
                if let Err(error) = settle_deliveries(&context, &round).await {
                    tracing::warn!(%error, "recording the outcome of webhook deliveries failed");
                }
                round.claimed == 0
            }
            Err(error) => {
                tracing::warn!(%error, "delivering webhooks failed; trying again");
                true
            }
        };
        if idle {
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
    }
}

async fn settle_deliveries(context: &JobContext, round: &DeliveryRound) -> Result<()> {
    for delivery in &round.given_up {
        let job = GivenUpDelivery {
            delivery_id: delivery.id,
            webhook_id: delivery.webhook_id,
            event_type: delivery.event_type.clone(),
        };
        let payload = serde_json::to_string(&job).map_err(Error::internal)?;
        let error = delivery.error.clone().unwrap_or_default();
        context
            .dead_letters
            .job_failed(delivery.id, WEBHOOK_JOB, payload, error, delivery.attempts)
            .await?;
    }
    for id in &round.succeeded {
        context.dead_letters.job_succeeded(*id).await?;
    }
    Ok(())
}

/// The lease of the process that hands the outbox on.
const DISPATCH_LEASE: &str = "dispatch-events";
/// How long a dispatcher that stopped renewing keeps its lease (a process killed holding it
/// delays dispatch this long at most).
const DISPATCH_LEASE_TERM: chrono::Duration = chrono::Duration::seconds(30);

/// The job workers as health sees them: running when a process holds the event dispatch
/// lease (every worker process contends for it, and its holder renews it while it runs),
/// with the jobs queued and running.
pub struct WorkersProbe {
    pub leases: Arc<dyn LeaseStore>,
    pub jobs: Arc<dyn JobMonitor>,
    pub clock: Arc<dyn Clock>,
}

#[async_trait::async_trait]
impl HealthProbe for WorkersProbe {
    fn name(&self) -> &'static str {
        "workers"
    }

    fn backend(&self) -> &'static str {
        "apalis"
    }

    async fn check(&self) -> Result<()> {
        match self.leases.lease_expiry(DISPATCH_LEASE).await? {
            Some(until) if until > self.clock.now() => Ok(()),
            _ => Err(Error::unavailable(
                "NO_WORKERS",
                "no job worker is running (none holds the event dispatch lease)",
            )),
        }
    }

    async fn figures(&self) -> Vec<(&'static str, u64)> {
        let counts = self.jobs.job_counts().await.unwrap_or_default();
        let total = |wanted: &str| {
            (counts.iter())
                .filter(|(_, status, _)| status == wanted)
                .map(|(_, _, count)| count)
                .sum()
        };
        vec![("queued", total("pending")), ("running", total("running"))]
    }
}

/// Hands outbox events on to their consumers: a batch at once while there are any, then a
/// look every `poll` until `stop`. Every worker process runs one and the one holding the
/// lease works (two would race for every batch; the audit chain would let only one append
/// it); at `stop` it hands the lease on.
async fn dispatch_events(
    dispatcher: Arc<Dispatcher>,
    lease: Lease,
    poll: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let idle = match lease.held().await {
            Ok(true) => match dispatcher.dispatch_batch().await {
                Ok(dispatched) => dispatched == 0,
                Err(error) => {
                    tracing::warn!(%error, "dispatching events failed; trying again");
                    true
                }
            },
            Ok(false) => true,
            Err(error) => {
                tracing::warn!(%error, "taking the dispatch lease failed; trying again");
                true
            }
        };
        if idle {
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                _ = stop.wait_for(|stop| *stop) => break,
            }
        }
    }
    if let Err(error) = lease.release().await {
        tracing::warn!(%error, "handing the dispatch lease on failed; it runs out by itself");
    }
}

/// Asks the registry for the newest release of each dependency.
async fn check_dependencies(_tick: Tick, context: Data<JobContext>) -> Result<(), BoxDynError> {
    context.dependencies.check().await?;
    Ok(())
}

fn backoff(settings: &JobSettings) -> anyhow::Result<ExponentialBackoff> {
    Ok(ExponentialBackoffMaker::new(
        settings.retry_base,
        LONGEST_RETRY_WAIT.max(settings.retry_base),
        0.5,
        HasherRng::default(),
    )?
    .make_backoff())
}

/// The workers of every queue, run until a shutdown signal.
pub struct Workers {
    monitor: Monitor,
    context: JobContext,
    poll: Duration,
    dispatch_poll: Duration,
}

impl Workers {
    pub fn new(
        store: &JobStore,
        settings: &JobSettings,
        context: JobContext,
    ) -> anyhow::Result<Self> {
        // Worker names must be unique among live workers, across processes and restarts.
        let boot = uuid::Uuid::now_v7().simple();
        let retries = settings.max_attempts.saturating_sub(1) as usize;
        let backoff = backoff(settings)?;
        let poll = settings.poll_interval;
        let queue = Queue::<QueuedMail>::open(store, MAIL_JOB);
        macro_rules! mail_worker {
            ($storage:expr, $run:expr) => {
                WorkerBuilder::new(format!("keel-mail-{boot}-{}", $run))
                    .backend(PollWith::new($storage, Every::new(poll)))
                    .data(context.clone())
                    .concurrency(MAIL_CONCURRENCY)
                    .retry(RetryPolicy::retries(retries).with_backoff(backoff.clone()))
                    .catch_panic()
                    .build(send_mail)
            };
        }
        let schedule = settings.cleanup_schedule.clone();
        let loops_context = context.clone();
        let cleanup_context = context.clone();
        let mut monitor = Monitor::new()
            .shutdown_timeout(settings.shutdown_timeout)
            .register(move |run| {
                WorkerBuilder::new(format!("keel-cleanup-{boot}-{run}"))
                    .backend(CronScheduler::new(schedule.clone()))
                    .data(cleanup_context.clone())
                    .build(cleanup)
            });
        if context.check_dependencies {
            let schedule = settings.dependency_check_schedule.clone();
            let check_context = context.clone();
            monitor = monitor.register(move |run| {
                WorkerBuilder::new(format!("keel-dependencies-{boot}-{run}"))
                    .backend(CronScheduler::new(schedule.clone()))
                    .data(check_context.clone())
                    .build(check_dependencies)
            });
        }
        let monitor = match queue {
            Queue::Sqlite(storage) => {
                monitor.register(move |run| mail_worker!(storage.clone(), run))
            }
            Queue::Postgres(storage) => {
                monitor.register(move |run| mail_worker!(storage.clone(), run))
            }
        };
        Ok(Self {
            monitor,
            context: loops_context,
            poll,
            dispatch_poll: settings.dispatch_poll_interval,
        })
    }

    /// Runs the workers until `shutdown`, then lets the jobs in hand finish (for a while).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        tracing::info!("job workers started");
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let lease = Lease::new(
            DISPATCH_LEASE,
            DISPATCH_LEASE_TERM,
            self.context.leases.clone(),
            self.context.clock.clone(),
        );
        let dispatch = tokio::spawn(dispatch_events(
            self.context.dispatcher.clone(),
            lease,
            self.dispatch_poll,
            stopping.clone(),
        ));
        let deliver = tokio::spawn(deliver_webhooks(self.context, self.poll, stopping));
        let monitored = self
            .monitor
            .should_restart(|worker, error| {
                tracing::error!(worker = %worker.name(), %error, "a job worker stopped; restarting");
                true
            })
            .run_with_signal(async move {
                shutdown.await;
                let _ = stop.send(true);
                Ok(())
            })
            .await
            .context("job workers");
        if let Err(error) = dispatch.await {
            tracing::warn!(%error, "the event dispatcher panicked");
        }
        if let Err(error) = deliver.await {
            tracing::warn!(%error, "the webhook deliverer panicked");
        }
        monitored
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::mail::OutgoingMail;

    /// Queuing a job of an id already stored queues nothing, and says so quietly.
    #[tokio::test]
    async fn a_job_queued_twice_is_stored_once() -> anyhow::Result<()> {
        let directory = tempfile::tempdir()?;
        let store = JobStore::connect("sqlite::memory:", directory.path()).await?;
        store.migrate().await?;
        let queue = Queue::<QueuedMail>::open(&store, MAIL_JOB);
        let job = QueuedMail {
            job: MailJob::Rendered(OutgoingMail {
                to: "someone@example.com".into(),
                subject: "Hello".into(),
                text: "Hello".into(),
                html: "<p>Hello</p>".into(),
            }),
            request_id: None,
            traceparent: None,
        };
        let id = Uuid::now_v7();
        queue.push(job.clone(), id, 3).await?;
        queue.push(job.clone(), id, 3).await?;
        queue.push(job, Uuid::now_v7(), 3).await?;
        assert_eq!(
            store.job_counts().await?,
            [(MAIL_JOB.to_owned(), "pending".to_owned(), 2)]
        );
        Ok(())
    }

    #[test]
    fn a_derived_job_id_is_stable_and_keeps_the_parent_time() {
        let parent = Uuid::now_v7();
        let rendered = derived_job_id(parent, "rendered");
        assert_eq!(rendered, derived_job_id(parent, "rendered"));
        assert_ne!(rendered, derived_job_id(parent, "other"));
        assert_ne!(rendered, parent);
        assert_eq!(rendered.get_version(), Some(uuid::Version::SortRand));
        assert_eq!(rendered.get_timestamp(), parent.get_timestamp());
    }
}
