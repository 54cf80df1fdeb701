-- Two-factor authentication: the TOTP secret sealed under the instance secret, the last time
-- step accepted (replay guard), and single-use backup codes as keyed digests.

CREATE TABLE totp_credentials (
    user_id UUID PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    secret_sealed BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    enabled_at TIMESTAMPTZ,
    last_used_step BIGINT NOT NULL
);

CREATE TABLE totp_backup_codes (
    user_id UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_digest BYTEA NOT NULL,
    used_at TIMESTAMPTZ,
    PRIMARY KEY (user_id, code_digest)
);
