-- Feature flags: on for everyone, for the users, addresses, domains and organizations of
-- `targeting` (JSON), or for a stable share of users (`rollout`, 0 to 1).

CREATE TABLE feature_flags (
    id BLOB PRIMARY KEY NOT NULL,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    is_enabled INTEGER NOT NULL,
    rollout REAL NOT NULL,
    targeting TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
