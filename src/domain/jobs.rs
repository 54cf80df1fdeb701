//! The dead-letter queue: background jobs that failed every attempt, or failed for good at
//! once, kept with their payload, last error and attempts until an operator retries, resolves
//! or ignores them.

use super::clock::{Clock, truncate_to_micros};
use super::error::{Error, ErrorKind, Missing, Result};
use super::mail::{MailJob, QueuedMail};
use super::page::{Page, PageTokens};
use super::principal::Principal;
use chrono::{DateTime, Utc};
use std::collections::BTreeMap;
use std::sync::Arc;
use uuid::Uuid;

/// The job type (and queue) of mail.
pub const MAIL_JOB: &str = "mail";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeadLetterStatus {
    /// Waiting for an operator.
    Pending,
    /// Queued again; `retry_outcome` tells how that went once it is known.
    Retried,
    Resolved,
    Ignored,
}

impl DeadLetterStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Retried => "retried",
            Self::Resolved => "resolved",
            Self::Ignored => "ignored",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Pending, Self::Retried, Self::Resolved, Self::Ignored]
            .into_iter()
            .find(|status| status.as_str() == text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The failed job's id.
    pub id: Uuid,
    /// The job's queue: `mail`.
    pub job_type: String,
    /// The job as it was queued (JSON), to queue it again.
    pub payload: String,
    pub error: String,
    pub attempts: u32,
    pub failed_at: DateTime<Utc>,
    pub status: DeadLetterStatus,
    pub notes: String,
    pub handled_by: Option<Uuid>,
    pub handled_at: Option<DateTime<Utc>>,
    /// The job a retry queued.
    pub retry_id: Option<Uuid>,
    /// Whether that job succeeded, once it ran.
    pub retry_succeeded: Option<bool>,
}

impl DeadLetter {
    /// The payload as operators see it: a mail's body is left out (its links are credentials;
    /// a retry sends it as it was).
    pub fn payload_shown(&self) -> String {
        match serde_json::from_str::<QueuedMail>(&self.payload).map(|queued| queued.job) {
            Ok(MailJob::Rendered(mail)) if self.job_type == MAIL_JOB => {
                serde_json::json!({ "Rendered": { "to": mail.to, "subject": mail.subject } })
                    .to_string()
            }
            _ => self.payload.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterQuery {
    pub status: Option<DeadLetterStatus>,
    pub job_type: Option<String>,
    pub failed_after: Option<DateTime<Utc>>,
    pub failed_before: Option<DateTime<Utc>>,
}

/// Counts by status and by job type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterStatistics {
    pub total: u64,
    pub by_status: BTreeMap<DeadLetterStatus, u64>,
    pub by_job_type: BTreeMap<String, u64>,
}

#[async_trait::async_trait]
pub trait DeadLetterStore: Send + Sync {
    /// Keeps a failed job; a job already kept stays as it is.
    async fn insert_dead_letter(&self, dead_letter: &DeadLetter) -> Result<()>;
    async fn find_dead_letter(&self, id: Uuid) -> Result<Option<DeadLetter>>;
    /// In id order, after `after`, at most `limit`.
    async fn list_dead_letters(
        &self,
        query: &DeadLetterQuery,
        after: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>>;
    /// `(status, job type, count)` for every pair present.
    async fn count_dead_letters(&self) -> Result<Vec<(DeadLetterStatus, String, u64)>>;
    /// Saves status, notes, handler and retry of a kept job, if its status is still `from`;
    /// answers whether it was.
    async fn update_dead_letter(
        &self,
        dead_letter: &DeadLetter,
        from: DeadLetterStatus,
    ) -> Result<bool>;
    /// Records how the job a retry queued went; a success resolves its dead letter.
    async fn record_retry_outcome(
        &self,
        retry_id: Uuid,
        succeeded: bool,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Whether job `id` has had its effect.
    async fn job_finished(&self, id: Uuid) -> Result<bool>;
    /// Records that job `id` has had its effect (again: no change).
    async fn record_job_finished(&self, id: Uuid, job_type: &str, now: DateTime<Utc>)
    -> Result<()>;
    /// Forgets the jobs that finished before `before`; answers how many.
    async fn purge_finished_jobs(&self, before: DateTime<Utc>) -> Result<u64>;
}

/// Leases on work one process at a time should do.
#[async_trait::async_trait]
pub trait LeaseStore: Send + Sync {
    /// Gives lease `name` to `holder` until `until`, unless another holder has it past `now`;
    /// answers whether `holder` has it.
    async fn take_lease(
        &self,
        name: &str,
        holder: Uuid,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool>;
    /// Gives up lease `name`, if `holder` has it.
    async fn release_lease(&self, name: &str, holder: Uuid) -> Result<()>;
    /// Until when lease `name` is held, if anyone took it.
    async fn lease_expiry(&self, name: &str) -> Result<Option<DateTime<Utc>>>;
}

/// This process's lease on work one process at a time should do (handing the outbox on: two
/// dispatchers would race for every batch). The first process to ask takes it and keeps it
/// while it asks again; when it stops (it died), the lease runs out and another takes over.
pub struct Lease {
    name: &'static str,
    holder: Uuid,
    term: chrono::Duration,
    store: Arc<dyn LeaseStore>,
    clock: Arc<dyn Clock>,
    /// When the store was last asked, and its answer.
    last: std::sync::Mutex<Option<(DateTime<Utc>, bool)>>,
}

impl Lease {
    pub fn new(
        name: &'static str,
        term: chrono::Duration,
        store: Arc<dyn LeaseStore>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            name,
            holder: Uuid::now_v7(),
            term,
            store,
            clock,
            last: std::sync::Mutex::new(None),
        }
    }

    /// Whether this process holds the lease. The store is asked (taking or renewing it) once
    /// a third of the term has passed since it last was, so an answer is never stale.
    pub async fn held(&self) -> Result<bool> {
        let now = self.clock.now();
        if let Some((asked, held)) = *self.last()
            && now >= asked
            && now < asked + self.term / 3
        {
            return Ok(held);
        }
        let until = truncate_to_micros(now + self.term);
        let held = self
            .store
            .take_lease(self.name, self.holder, truncate_to_micros(now), until)
            .await?;
        *self.last() = Some((now, held));
        Ok(held)
    }

    /// Hands the lease on (at shutdown): another process takes it the next time it asks,
    /// rather than when it runs out.
    pub async fn release(&self) -> Result<()> {
        *self.last() = None;
        self.store.release_lease(self.name, self.holder).await
    }

    fn last(&self) -> std::sync::MutexGuard<'_, Option<(DateTime<Utc>, bool)>> {
        self.last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A job as the monitor shows it: never its payload (a mail's links are credentials).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSummary {
    pub id: Uuid,
    pub queue: String,
    /// `pending`, `queued`, `running`, `done`, `failed` or `killed`.
    pub status: String,
    pub attempts: u32,
    pub max_attempts: u32,
    pub run_at: DateTime<Utc>,
    pub done_at: Option<DateTime<Utc>>,
    /// The last attempt's outcome as the job store recorded it (an error, for failures).
    pub last_result: Option<String>,
}

/// The job store, for operators.
#[async_trait::async_trait]
pub trait JobMonitor: Send + Sync {
    /// `(queue, status, jobs)` for every pair present.
    async fn job_counts(&self) -> Result<Vec<(String, String, u64)>>;
    /// Jobs newest first, older than the job `before`, optionally of one queue and status.
    async fn list_jobs(
        &self,
        queue: Option<&str>,
        status: Option<&str>,
        before: Option<Uuid>,
        limit: usize,
    ) -> Result<Vec<JobSummary>>;
}

/// Lists jobs for operators.
pub struct JobMonitorService {
    monitor: Arc<dyn JobMonitor>,
    pages: Arc<PageTokens>,
}

impl JobMonitorService {
    pub fn new(monitor: Arc<dyn JobMonitor>, pages: Arc<PageTokens>) -> Self {
        Self { monitor, pages }
    }

    pub async fn list(
        &self,
        queue: Option<&str>,
        status: Option<&str>,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<JobSummary>> {
        let list = format!("jobs:{}:{}", queue.unwrap_or(""), status.unwrap_or(""));
        let request = self.pages.request(&list, page_size, page_token)?;
        let jobs = self
            .monitor
            .list_jobs(queue, status, request.after, request.fetch_limit())
            .await?;
        Ok(self.pages.page(&list, request, jobs, |job| job.id))
    }

    pub async fn counts(&self) -> Result<Vec<(String, String, u64)>> {
        self.monitor.job_counts().await
    }
}

/// Queues a job again from its stored payload, as the job `id`.
#[async_trait::async_trait]
pub trait JobQueue: Send + Sync {
    async fn requeue(&self, job_type: &str, payload: &str, id: Uuid) -> Result<()>;
}

pub struct DeadLetterService {
    store: Arc<dyn DeadLetterStore>,
    queue: Arc<dyn JobQueue>,
    pages: Arc<PageTokens>,
    clock: Arc<dyn Clock>,
}

fn already_handled(dead_letter: &DeadLetter) -> Error {
    Error::new(
        ErrorKind::FailedPrecondition,
        "DEAD_LETTER_HANDLED",
        format!(
            "this job was already {}; only pending ones can be retried, resolved or ignored",
            dead_letter.status.as_str()
        ),
    )
}

impl DeadLetterService {
    pub fn new(
        store: Arc<dyn DeadLetterStore>,
        queue: Arc<dyn JobQueue>,
        pages: Arc<PageTokens>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            store,
            queue,
            pages,
            clock,
        }
    }

    /// Called by a worker when a job is given up: after its last attempt, or at once when it
    /// can never succeed.
    pub async fn job_failed(
        &self,
        id: Uuid,
        job_type: &str,
        payload: String,
        error: String,
        attempts: u32,
    ) -> Result<()> {
        tracing::error!(job_id = %id, job_type, attempts, %error, "job given up: kept as a dead letter");
        let now = truncate_to_micros(self.clock.now());
        self.store
            .insert_dead_letter(&DeadLetter {
                id,
                job_type: job_type.to_owned(),
                payload,
                error,
                attempts,
                failed_at: now,
                status: DeadLetterStatus::Pending,
                notes: String::new(),
                handled_by: None,
                handled_at: None,
                retry_id: None,
                retry_succeeded: None,
            })
            .await?;
        self.store.record_retry_outcome(id, false, now).await
    }

    /// Called by a worker when a job succeeded: resolves the dead letter it retried, if any.
    pub async fn job_succeeded(&self, id: Uuid) -> Result<()> {
        let now = truncate_to_micros(self.clock.now());
        self.store.record_retry_outcome(id, true, now).await
    }

    /// Called by a worker when a job of the job store has had its effect: run again (a job
    /// runs at least once), it finds it has (`has_finished`) and does nothing.
    pub async fn job_finished(&self, id: Uuid, job_type: &str) -> Result<()> {
        let now = truncate_to_micros(self.clock.now());
        self.store.record_job_finished(id, job_type, now).await?;
        self.job_succeeded(id).await
    }

    pub async fn has_finished(&self, id: Uuid) -> Result<bool> {
        self.store.job_finished(id).await
    }

    /// Forgets the jobs that finished longer than `age` ago; answers how many.
    pub async fn purge_finished(&self, age: chrono::Duration) -> Result<u64> {
        self.store.purge_finished_jobs(self.clock.now() - age).await
    }

    pub async fn list(
        &self,
        query: &DeadLetterQuery,
        page_size: i32,
        page_token: &str,
    ) -> Result<Page<DeadLetter>> {
        let request = self.pages.request("dead-letters", page_size, page_token)?;
        let rows = self
            .store
            .list_dead_letters(query, request.after, request.fetch_limit())
            .await?;
        Ok(self
            .pages
            .page("dead-letters", request, rows, |dead_letter| dead_letter.id))
    }

    pub async fn get(&self, id: Uuid) -> Result<DeadLetter> {
        self.store
            .find_dead_letter(id)
            .await?
            .ok_or_else(|| Missing::DeadLetter.into())
    }

    pub async fn statistics(&self) -> Result<DeadLetterStatistics> {
        let mut statistics = DeadLetterStatistics::default();
        for (status, job_type, count) in self.store.count_dead_letters().await? {
            statistics.total += count;
            *statistics.by_status.entry(status).or_default() += count;
            *statistics.by_job_type.entry(job_type).or_default() += count;
        }
        Ok(statistics)
    }

    /// Queues the job again (a new job, with the same payload); its outcome is recorded here.
    /// Marked retried first, so that two operators at once queue it once.
    pub async fn retry(&self, caller: &Principal, id: Uuid) -> Result<DeadLetter> {
        let dead_letter = self.pending(id).await?;
        let retry_id = Uuid::now_v7();
        let retried = self
            .handle(
                caller,
                dead_letter.clone(),
                DeadLetterStatus::Retried,
                None,
                Some(retry_id),
            )
            .await?;
        if let Err(error) = self
            .queue
            .requeue(&dead_letter.job_type, &dead_letter.payload, retry_id)
            .await
        {
            self.store
                .update_dead_letter(&dead_letter, DeadLetterStatus::Retried)
                .await?;
            return Err(error);
        }
        Ok(retried)
    }

    pub async fn resolve(&self, caller: &Principal, id: Uuid, notes: &str) -> Result<DeadLetter> {
        let dead_letter = self.pending(id).await?;
        self.handle(
            caller,
            dead_letter,
            DeadLetterStatus::Resolved,
            Some(notes),
            None,
        )
        .await
    }

    pub async fn ignore(&self, caller: &Principal, id: Uuid, notes: &str) -> Result<DeadLetter> {
        let dead_letter = self.pending(id).await?;
        self.handle(
            caller,
            dead_letter,
            DeadLetterStatus::Ignored,
            Some(notes),
            None,
        )
        .await
    }

    async fn pending(&self, id: Uuid) -> Result<DeadLetter> {
        let dead_letter = self.get(id).await?;
        if dead_letter.status != DeadLetterStatus::Pending {
            return Err(already_handled(&dead_letter));
        }
        Ok(dead_letter)
    }

    async fn handle(
        &self,
        caller: &Principal,
        dead_letter: DeadLetter,
        status: DeadLetterStatus,
        notes: Option<&str>,
        retry_id: Option<Uuid>,
    ) -> Result<DeadLetter> {
        let handled = DeadLetter {
            status,
            notes: notes.map_or(dead_letter.notes.clone(), str::to_owned),
            handled_by: Some(caller.user.id),
            handled_at: Some(truncate_to_micros(self.clock.now())),
            retry_id: retry_id.or(dead_letter.retry_id),
            ..dead_letter.clone()
        };
        // Two operators at once: the second finds it handled.
        if !self
            .store
            .update_dead_letter(&handled, DeadLetterStatus::Pending)
            .await?
        {
            return Err(already_handled(&self.get(dead_letter.id).await?));
        }
        tracing::info!(
            dead_letter = %handled.id,
            status = status.as_str(),
            by = %caller.user.id,
            "dead letter handled"
        );
        Ok(handled)
    }
}
