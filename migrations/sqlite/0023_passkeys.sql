-- Passkeys (WebAuthn credentials) registered to accounts. `credential` is the public key and
-- its flags as webauthn-rs serialises them (JSON); `sign_count` only moves forward, so a
-- cloned authenticator is caught. A passkey counts as a way to sign in (LAST_SIGN_IN_METHOD).

CREATE TABLE passkeys (
    id BLOB PRIMARY KEY NOT NULL,
    user_id BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    credential_id BLOB NOT NULL UNIQUE,
    name TEXT NOT NULL,
    credential TEXT NOT NULL,
    sign_count INTEGER NOT NULL,
    backup_eligible INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    last_used_at TEXT
);

CREATE INDEX passkeys_user ON passkeys (user_id);
