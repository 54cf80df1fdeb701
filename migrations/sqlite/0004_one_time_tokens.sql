-- Single-use tokens mailed as links (email verification, password reset, magic link), stored
-- as SHA-256 digests. A newer token of the same purpose replaces the older ones.

CREATE TABLE one_time_tokens (
    token_digest BLOB PRIMARY KEY NOT NULL,
    user_id BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_at TEXT
);

CREATE INDEX one_time_tokens_user_purpose ON one_time_tokens (user_id, purpose);
