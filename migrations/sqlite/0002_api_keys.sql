-- API keys: the whole key is stored only as a keyed digest; the prefix finds the record.

CREATE TABLE api_keys (
    id BLOB PRIMARY KEY NOT NULL,
    user_id BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    prefix TEXT NOT NULL UNIQUE,
    key_digest BLOB NOT NULL,
    -- Space-separated `resource:action` permissions.
    scopes TEXT NOT NULL,
    created_at TEXT NOT NULL,
    last_used_at TEXT,
    expires_at TEXT,
    revoked_at TEXT
);

CREATE INDEX api_keys_user_id ON api_keys (user_id);
