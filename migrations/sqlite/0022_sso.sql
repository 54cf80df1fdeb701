-- Enterprise single sign-on: an organization's OpenID Connect provider (its client secret
-- sealed with the instance keyring), and the email domains organizations claim for it, approved
-- by a DNS TXT record carrying verification_token or by a platform superuser.

CREATE TABLE sso_connections (
    organization_id BLOB PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    issuer TEXT NOT NULL,
    client_id TEXT NOT NULL,
    client_secret_sealed BLOB NOT NULL,
    scopes TEXT NOT NULL,
    default_role TEXT NOT NULL,
    enforce INTEGER NOT NULL DEFAULT 0,
    trust_mfa INTEGER NOT NULL DEFAULT 0,
    groups_claim TEXT NOT NULL,
    -- JSON: [[group, role key], …]
    role_mappings TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

CREATE TABLE sso_domains (
    domain TEXT PRIMARY KEY,
    organization_id BLOB NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    verification_token TEXT NOT NULL,
    created_at TEXT NOT NULL,
    approved_at TEXT
);

CREATE INDEX sso_domains_organization ON sso_domains (organization_id);
