-- Passkeys (WebAuthn credentials) registered to accounts. `credential` is the public key and
-- its flags as webauthn-rs serialises them (JSON); `sign_count` only moves forward, so a
-- cloned authenticator is caught. A passkey counts as a way to sign in (LAST_SIGN_IN_METHOD).

CREATE TABLE passkeys (
    id UUID PRIMARY KEY,
    user_id UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    credential_id BYTEA NOT NULL UNIQUE,
    name TEXT NOT NULL,
    credential TEXT NOT NULL,
    sign_count BIGINT NOT NULL,
    backup_eligible BOOLEAN NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    last_used_at TIMESTAMPTZ
);

CREATE INDEX passkeys_user ON passkeys (user_id);
