-- Storage to remove, queued by the database itself whenever a file or an unfinished upload's
-- row goes, however it goes (the retention purge, or a cascade from a deleted organization or
-- user), so that no object outlives its row. The cleanup job works the queue.

CREATE TABLE object_purges (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- The file's or the upload's id: their objects' keys derive from it.
    item_id BLOB NOT NULL,
    -- 'file' or 'upload'.
    kind TEXT NOT NULL,
    -- An upload's object store state (its S3 multipart upload); empty for a file.
    storage_state TEXT NOT NULL
);

CREATE TRIGGER files_purge AFTER DELETE ON files
BEGIN
    INSERT INTO object_purges (item_id, kind, storage_state) VALUES (OLD.id, 'file', '');
END;

CREATE TRIGGER file_uploads_purge AFTER DELETE ON file_uploads
WHEN OLD.received < OLD.length
BEGIN
    INSERT INTO object_purges (item_id, kind, storage_state)
    VALUES (OLD.id, 'upload', OLD.storage_state);
END;
