-- Identities at outside sign-in providers (OAuth2 / OpenID Connect) linked to accounts: one
-- account per provider subject. An account made by a provider sign-in has no password of its
-- own until one is set by a reset (password_set), so its last identity cannot be unlinked.

ALTER TABLE users ADD COLUMN password_set BOOLEAN NOT NULL DEFAULT TRUE;

CREATE TABLE user_identities (
    id UUID PRIMARY KEY,
    user_id UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    provider TEXT NOT NULL,
    subject TEXT NOT NULL,
    email TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    last_used_at TIMESTAMPTZ NOT NULL,
    UNIQUE (provider, subject)
);

CREATE INDEX user_identities_user ON user_identities (user_id);
