-- Jobs that have had their effect, by id. apalis runs a job at least once: one whose worker
-- was lost before it could acknowledge runs again, finds itself here and does nothing.
-- Kept as long as finished jobs are (7 days).

CREATE TABLE finished_jobs (
    id BLOB PRIMARY KEY NOT NULL,
    job_type TEXT NOT NULL,
    finished_at TEXT NOT NULL
);

CREATE INDEX finished_jobs_finished_at ON finished_jobs (finished_at);

-- Work one process at a time should do (handing the outbox on): the holder renews its lease
-- while it lives; when it stops renewing, the lease expires and another process takes it.
CREATE TABLE leases (
    name TEXT PRIMARY KEY NOT NULL,
    holder BLOB NOT NULL,
    expires_at TEXT NOT NULL
);
