-- Enterprise single sign-on: an organization's OpenID Connect provider (its client secret
-- sealed with the instance keyring), and the email domains organizations claim for it, approved
-- by a DNS TXT record carrying verification_token or by a platform superuser.

CREATE TABLE sso_connections (
    organization_id UUID PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    issuer TEXT NOT NULL,
    client_id TEXT NOT NULL,
    client_secret_sealed BYTEA NOT NULL,
    scopes TEXT NOT NULL,
    default_role TEXT NOT NULL,
    enforce BOOLEAN NOT NULL DEFAULT FALSE,
    trust_mfa BOOLEAN NOT NULL DEFAULT FALSE,
    groups_claim TEXT NOT NULL,
    -- JSON: [[group, role key], …]
    role_mappings TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE sso_domains (
    domain TEXT PRIMARY KEY,
    organization_id UUID NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    verification_token TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    approved_at TIMESTAMPTZ
);

CREATE INDEX sso_domains_organization ON sso_domains (organization_id);
