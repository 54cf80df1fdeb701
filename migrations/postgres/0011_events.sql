-- The outbox: every event is written in the same transaction as the change it records, then
-- handed to its consumers in `sequence` order by the dispatcher (`dispatched_at` set).

CREATE TABLE events (
    sequence BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id UUID NOT NULL UNIQUE,
    event_type TEXT NOT NULL,
    occurred_at TIMESTAMPTZ NOT NULL,
    organization_id UUID,
    actor_type TEXT NOT NULL,
    actor_user_id UUID,
    actor_api_key_id UUID,
    ip_address TEXT,
    user_agent TEXT,
    subject_type TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    data TEXT NOT NULL,
    dispatched_at TIMESTAMPTZ
);

CREATE INDEX events_pending ON events (sequence) WHERE dispatched_at IS NULL;
CREATE INDEX events_dispatched ON events (dispatched_at) WHERE dispatched_at IS NOT NULL;

-- The audit log: append-only and hash-chained. `sequence` is the entry's position in the chain
-- (1, 2, 3…), `previous_hash` the `hash` of the entry before (zeros for the first; unique, so
-- the chain cannot fork), and `hash` covers every other column (`keel admin audit verify`).

CREATE TABLE audit_log (
    sequence BIGINT PRIMARY KEY,
    id UUID NOT NULL UNIQUE,
    occurred_at TIMESTAMPTZ NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    actor_type TEXT NOT NULL,
    actor_user_id UUID,
    actor_api_key_id UUID,
    ip_address TEXT,
    user_agent TEXT,
    organization_id UUID,
    target_type TEXT NOT NULL,
    target_id TEXT NOT NULL,
    details TEXT NOT NULL,
    previous_hash BYTEA NOT NULL UNIQUE,
    hash BYTEA NOT NULL
);

CREATE INDEX audit_log_organization ON audit_log (organization_id, sequence);
CREATE INDEX audit_log_actor ON audit_log (actor_user_id, sequence);
CREATE INDEX audit_log_target ON audit_log (target_type, target_id, sequence);
CREATE INDEX audit_log_action ON audit_log (action, sequence);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only';
END;
$$;

CREATE TRIGGER audit_log_append_only BEFORE UPDATE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

-- Where the chain starts after retention pruned older entries: the last pruned entry.
CREATE TABLE audit_anchor (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    sequence BIGINT NOT NULL,
    hash BYTEA NOT NULL
);

-- Whether a session's expiry has been recorded (`session.expired`): sessions end by time
-- without a request, so the cleanup job notices them.
ALTER TABLE sessions ADD COLUMN expiry_recorded BOOLEAN NOT NULL DEFAULT FALSE;
CREATE INDEX sessions_unrecorded_expiry ON sessions (expires_at)
    WHERE revoked_at IS NULL AND NOT expiry_recorded;
