-- Teams inside organizations; team members are organization members, and their team roles
-- (role keys, as in member_roles) apply within the team only.

CREATE TABLE teams (
    id BLOB PRIMARY KEY NOT NULL,
    organization_id BLOB NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    slug TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (organization_id, slug)
);

CREATE TABLE team_members (
    team_id BLOB NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    organization_id BLOB NOT NULL,
    user_id BLOB NOT NULL,
    joined_at TEXT NOT NULL,
    PRIMARY KEY (team_id, user_id),
    FOREIGN KEY (organization_id, user_id)
        REFERENCES organization_members (organization_id, user_id) ON DELETE CASCADE
);

CREATE INDEX team_members_member ON team_members (organization_id, user_id);

CREATE TABLE team_member_roles (
    team_id BLOB NOT NULL,
    user_id BLOB NOT NULL,
    role_key TEXT NOT NULL,
    PRIMARY KEY (team_id, user_id, role_key),
    FOREIGN KEY (team_id, user_id) REFERENCES team_members (team_id, user_id) ON DELETE CASCADE
);
