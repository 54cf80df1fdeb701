-- Resumable uploads under way: who started each and what it will be, how many bytes it holds,
-- the object store's state of it (an S3 multipart upload), and the lease of the one request
-- appending to it. The id becomes the file's; the cleanup job ends uploads past expires_at.

CREATE TABLE file_uploads (
    id BLOB PRIMARY KEY NOT NULL,
    organization_id BLOB REFERENCES organizations (id) ON DELETE CASCADE,
    uploaded_by BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    filename TEXT NOT NULL,
    declared_type TEXT,
    description TEXT NOT NULL,
    checksum TEXT,
    length INTEGER NOT NULL,
    received INTEGER NOT NULL,
    storage_state TEXT NOT NULL,
    appending_until TEXT,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);

CREATE INDEX file_uploads_expiry ON file_uploads (expires_at);
