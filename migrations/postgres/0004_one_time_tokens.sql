-- Single-use tokens mailed as links (email verification, password reset, magic link), stored
-- as SHA-256 digests. A newer token of the same purpose replaces the older ones.

CREATE TABLE one_time_tokens (
    token_digest BYTEA PRIMARY KEY,
    user_id UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    used_at TIMESTAMPTZ
);

CREATE INDEX one_time_tokens_user_purpose ON one_time_tokens (user_id, purpose);
