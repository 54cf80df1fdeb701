-- Per-organization limits (no row: the defaults) and flushed usage counters per window.

CREATE TABLE organization_quotas (
    organization_id BLOB PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    max_users INTEGER NOT NULL,
    max_storage_bytes INTEGER NOT NULL,
    max_api_calls_per_month INTEGER NOT NULL,
    max_file_uploads_per_day INTEGER NOT NULL,
    max_file_size_bytes INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE usage_counters (
    id BLOB NOT NULL UNIQUE,
    organization_id BLOB NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    metric TEXT NOT NULL,
    window_start TEXT NOT NULL,
    window_end TEXT NOT NULL,
    count INTEGER NOT NULL,
    recorded_at TEXT NOT NULL,
    PRIMARY KEY (organization_id, metric, window_start)
);
