-- The LLM gateway: organizations' providers (their keys sealed with the instance key) and the
-- monthly token quota.

CREATE TABLE llm_providers (
    organization_id BLOB NOT NULL REFERENCES organizations (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    base_url TEXT NOT NULL,
    api_key BLOB NOT NULL,
    api_version TEXT NOT NULL,
    -- Space-separated; empty for any model.
    models TEXT NOT NULL,
    default_model TEXT NOT NULL,
    is_default INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (organization_id, name)
);

ALTER TABLE organization_quotas ADD COLUMN max_llm_tokens_per_month INTEGER NOT NULL DEFAULT 1000000;
