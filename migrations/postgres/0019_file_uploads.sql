-- Resumable uploads under way: who started each and what it will be, how many bytes it holds,
-- the object store's state of it (an S3 multipart upload), and the lease of the one request
-- appending to it. The id becomes the file's; the cleanup job ends uploads past expires_at.

CREATE TABLE file_uploads (
    id UUID PRIMARY KEY,
    organization_id UUID REFERENCES organizations (id) ON DELETE CASCADE,
    uploaded_by UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    filename TEXT NOT NULL,
    declared_type TEXT,
    description TEXT NOT NULL,
    checksum TEXT,
    length BIGINT NOT NULL,
    received BIGINT NOT NULL,
    storage_state TEXT NOT NULL,
    appending_until TIMESTAMPTZ,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX file_uploads_expiry ON file_uploads (expires_at);
