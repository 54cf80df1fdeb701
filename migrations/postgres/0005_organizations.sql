-- Organizations (tenants), their members, custom roles and role assignments. A role key is a
-- system role name (`owner`, `admin`, `member`, `viewer`) or a custom role id.

CREATE TABLE organizations (
    id UUID PRIMARY KEY,
    name TEXT NOT NULL,
    slug TEXT NOT NULL UNIQUE,
    -- A JSON object.
    settings TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE organization_members (
    organization_id UUID NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    user_id UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    joined_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (organization_id, user_id)
);

CREATE INDEX organization_members_user_id ON organization_members (user_id, organization_id);

CREATE TABLE member_roles (
    organization_id UUID NOT NULL,
    user_id UUID NOT NULL,
    role_key TEXT NOT NULL,
    PRIMARY KEY (organization_id, user_id, role_key),
    FOREIGN KEY (organization_id, user_id)
        REFERENCES organization_members (organization_id, user_id) ON DELETE CASCADE
);

CREATE TABLE roles (
    id UUID PRIMARY KEY,
    organization_id UUID NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    -- Space-separated `resource:action` permissions.
    permissions TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    UNIQUE (organization_id, name)
);

-- An API key may be bound to one organization; it is revoked when the organization goes.
ALTER TABLE api_keys ADD COLUMN organization_id UUID REFERENCES organizations (id) ON DELETE SET NULL;
