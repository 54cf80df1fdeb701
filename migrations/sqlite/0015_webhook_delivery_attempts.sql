-- Every attempt of a webhook delivery, as it went (the delivery row keeps only the last).

CREATE TABLE webhook_delivery_attempts (
    delivery_id BLOB NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    attempted_at TEXT NOT NULL,
    response_status INTEGER,
    response_excerpt TEXT,
    latency_ms INTEGER,
    error TEXT,
    PRIMARY KEY (delivery_id, attempt)
);
