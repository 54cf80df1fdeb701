-- Identities at outside sign-in providers (OAuth2 / OpenID Connect) linked to accounts: one
-- account per provider subject. An account made by a provider sign-in has no password of its
-- own until one is set by a reset (password_set), so its last identity cannot be unlinked.

ALTER TABLE users ADD COLUMN password_set INTEGER NOT NULL DEFAULT 1;

CREATE TABLE user_identities (
    id BLOB PRIMARY KEY NOT NULL,
    user_id BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider TEXT NOT NULL,
    subject TEXT NOT NULL,
    email TEXT NOT NULL,
    created_at TEXT NOT NULL,
    last_used_at TEXT NOT NULL,
    UNIQUE (provider, subject)
);

CREATE INDEX user_identities_user ON user_identities (user_id);
