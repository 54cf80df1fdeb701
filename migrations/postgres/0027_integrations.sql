-- Integrations: outside systems that send an organization events, authenticated by a secret
-- (sealed with the instance key, to check signatures; its keyed digest finds the integration
-- a key names), and the messages they sent, each received once per message id.

CREATE TABLE integrations (
    id UUID PRIMARY KEY,
    organization_id UUID NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    integration_type TEXT NOT NULL,
    description TEXT NOT NULL,
    secret BYTEA NOT NULL,
    secret_digest BYTEA NOT NULL UNIQUE,
    is_active BOOLEAN NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX integrations_organization ON integrations (organization_id, id);

CREATE TABLE integration_events (
    id UUID PRIMARY KEY,
    integration_id UUID NOT NULL REFERENCES integrations (id) ON DELETE CASCADE,
    message_id TEXT NOT NULL,
    content_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    authenticated_by TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    UNIQUE (integration_id, message_id)
);

CREATE INDEX integration_events_by_integration ON integration_events (integration_id, id);
CREATE INDEX integration_events_received ON integration_events (received_at);
