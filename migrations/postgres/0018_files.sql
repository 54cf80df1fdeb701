-- Files: what each upload is and where its bytes are; a deleted file keeps its row
-- (deleted_at) for the record while its bytes are removed.

CREATE TABLE files (
    id UUID PRIMARY KEY,
    -- NULL for a personal file.
    organization_id UUID REFERENCES organizations (id) ON DELETE CASCADE,
    uploaded_by UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    filename TEXT NOT NULL,
    original_filename TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size BIGINT NOT NULL,
    -- SHA-256, lowercase hex.
    checksum TEXT NOT NULL,
    storage_provider TEXT NOT NULL,
    object_key TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    deleted_at TIMESTAMPTZ
);

CREATE INDEX files_organization ON files (organization_id, id) WHERE deleted_at IS NULL;
CREATE INDEX files_personal ON files (uploaded_by, id)
    WHERE deleted_at IS NULL AND organization_id IS NULL;

-- Bytes of live files per owner: an organization, or a user for their personal files.
CREATE TABLE storage_usage (
    owner_id UUID PRIMARY KEY,
    bytes BIGINT NOT NULL
);
