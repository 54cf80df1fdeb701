-- Feature flags: on for everyone, for the users, addresses, domains and organizations of
-- `targeting` (JSON), or for a stable share of users (`rollout`, 0 to 1).

CREATE TABLE feature_flags (
    id UUID PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL,
    is_enabled BOOLEAN NOT NULL,
    rollout DOUBLE PRECISION NOT NULL,
    targeting TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
