-- Files: what each upload is and where its bytes are; a deleted file keeps its row
-- (deleted_at) for the record while its bytes are removed.

CREATE TABLE files (
    id BLOB PRIMARY KEY NOT NULL,
    -- NULL for a personal file.
    organization_id BLOB REFERENCES organizations (id) ON DELETE CASCADE,
    uploaded_by BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    filename TEXT NOT NULL,
    original_filename TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    -- SHA-256, lowercase hex.
    checksum TEXT NOT NULL,
    storage_provider TEXT NOT NULL,
    object_key TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at TEXT NOT NULL,
    deleted_at TEXT
);

CREATE INDEX files_organization ON files (organization_id, id) WHERE deleted_at IS NULL;
CREATE INDEX files_personal ON files (uploaded_by, id)
    WHERE deleted_at IS NULL AND organization_id IS NULL;

-- Bytes of live files per owner: an organization, or a user for their personal files.
CREATE TABLE storage_usage (
    owner_id BLOB PRIMARY KEY NOT NULL,
    bytes INTEGER NOT NULL
);
