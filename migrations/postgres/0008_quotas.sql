-- Per-organization limits (no row: the defaults) and flushed usage counters per window.

CREATE TABLE organization_quotas (
    organization_id UUID PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    max_users BIGINT NOT NULL,
    max_storage_bytes BIGINT NOT NULL,
    max_api_calls_per_month BIGINT NOT NULL,
    max_file_uploads_per_day BIGINT NOT NULL,
    max_file_size_bytes BIGINT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE usage_counters (
    id UUID NOT NULL UNIQUE,
    organization_id UUID NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    metric TEXT NOT NULL,
    window_start TIMESTAMPTZ NOT NULL,
    window_end TIMESTAMPTZ NOT NULL,
    count BIGINT NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (organization_id, metric, window_start)
);
