-- Two-factor authentication: the TOTP secret sealed under the instance secret, the last time
-- step accepted (replay guard), and single-use backup codes as keyed digests.

CREATE TABLE totp_credentials (
    user_id BLOB PRIMARY KEY NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    secret_sealed BLOB NOT NULL,
    created_at TEXT NOT NULL,
    enabled_at TEXT,
    last_used_step INTEGER NOT NULL
);

CREATE TABLE totp_backup_codes (
    user_id BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_digest BLOB NOT NULL,
    used_at TEXT,
    PRIMARY KEY (user_id, code_digest)
);
