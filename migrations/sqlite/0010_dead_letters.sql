-- Background jobs that failed every attempt, or failed for good at once: kept for operators to
-- retry, resolve or ignore. `id` is the failed job's id; a retry queues a new job (`retry_id`).

CREATE TABLE dead_letters (
    id BLOB PRIMARY KEY NOT NULL,
    job_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    error TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    failed_at TEXT NOT NULL,
    status TEXT NOT NULL,
    notes TEXT NOT NULL DEFAULT '',
    handled_by BLOB REFERENCES users (id) ON DELETE SET NULL,
    handled_at TEXT,
    retry_id BLOB,
    retry_outcome TEXT
);

CREATE INDEX dead_letters_retry ON dead_letters (retry_id);
