-- Jobs that have had their effect, by id. apalis runs a job at least once: one whose worker
-- was lost before it could acknowledge runs again, finds itself here and does nothing.
-- Kept as long as finished jobs are (7 days).

CREATE TABLE finished_jobs (
    id UUID PRIMARY KEY,
    job_type TEXT NOT NULL,
    finished_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX finished_jobs_finished_at ON finished_jobs (finished_at);

-- Work one process at a time should do (handing the outbox on): the holder renews its lease
-- while it lives; when it stops renewing, the lease expires and another process takes it.
CREATE TABLE leases (
    name TEXT PRIMARY KEY NOT NULL,
    holder UUID NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
