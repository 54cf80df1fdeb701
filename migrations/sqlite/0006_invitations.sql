-- Invitations to organizations. The mailed token is stored only as its SHA-256 digest.

CREATE TABLE invitations (
    id BLOB PRIMARY KEY NOT NULL,
    organization_id BLOB NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    email TEXT NOT NULL,
    -- Space-separated role keys granted on acceptance.
    role_keys TEXT NOT NULL,
    token_digest BLOB NOT NULL UNIQUE,
    invited_by BLOB REFERENCES users (id) ON DELETE SET NULL,
    valid_days INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    accepted_at TEXT,
    accepted_by BLOB REFERENCES users (id) ON DELETE SET NULL,
    revoked_at TEXT
);

CREATE INDEX invitations_organization_id ON invitations (organization_id, id);
CREATE INDEX invitations_email ON invitations (email);
