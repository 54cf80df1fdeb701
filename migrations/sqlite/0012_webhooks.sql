-- Webhooks: an organization's endpoints, and the deliveries of its events to them. A delivery
-- row is the queue: workers claim due ones (`next_attempt_at`, with a lease in
-- `locked_until`), send them and record the outcome of the last attempt.

CREATE TABLE webhooks (
    id BLOB PRIMARY KEY NOT NULL,
    organization_id BLOB NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    url TEXT NOT NULL,
    description TEXT NOT NULL,
    -- Space-separated event types or patterns (`member.*`, `*`).
    event_types TEXT NOT NULL,
    -- Sealed with the instance key; the previous secret also signs until it expires.
    secret BLOB NOT NULL,
    previous_secret BLOB,
    previous_secret_expires_at TEXT,
    is_active INTEGER NOT NULL,
    -- Deliveries per second at most; 0 for no limit.
    rate_limit_per_second INTEGER NOT NULL,
    consecutive_failures INTEGER NOT NULL,
    disabled_reason TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE INDEX webhooks_organization ON webhooks (organization_id, id);

CREATE TABLE webhook_deliveries (
    id BLOB PRIMARY KEY NOT NULL,
    webhook_id BLOB NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    organization_id BLOB NOT NULL,
    event_id BLOB NOT NULL,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at TEXT,
    locked_until TEXT,
    response_status INTEGER,
    response_excerpt TEXT,
    latency_ms INTEGER,
    error TEXT,
    created_at TEXT NOT NULL,
    last_attempt_at TEXT
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_webhook ON webhook_deliveries (webhook_id, id);
