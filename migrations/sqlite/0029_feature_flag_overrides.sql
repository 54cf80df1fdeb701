-- Organizations' overrides of feature flags: on or off for checks made within the
-- organization.

CREATE TABLE feature_flag_overrides (
    flag_id BLOB NOT NULL REFERENCES feature_flags (id) ON DELETE CASCADE,
    organization_id BLOB NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    is_enabled INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (flag_id, organization_id)
);

CREATE INDEX feature_flag_overrides_organization ON feature_flag_overrides (organization_id);
