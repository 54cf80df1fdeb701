-- Invitations to organizations. The mailed token is stored only as its SHA-256 digest.

CREATE TABLE invitations (
    id UUID PRIMARY KEY,
    organization_id UUID NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    email TEXT NOT NULL,
    -- Space-separated role keys granted on acceptance.
    role_keys TEXT NOT NULL,
    token_digest BYTEA NOT NULL UNIQUE,
    invited_by UUID REFERENCES users (id) ON DELETE SET NULL,
    valid_days INTEGER NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    accepted_at TIMESTAMPTZ,
    accepted_by UUID REFERENCES users (id) ON DELETE SET NULL,
    revoked_at TIMESTAMPTZ
);

CREATE INDEX invitations_organization_id ON invitations (organization_id, id);
CREATE INDEX invitations_email ON invitations (email);
