-- The newest release of each of Keel's dependencies, as the last update check found it.

CREATE TABLE dependency_versions (
    name TEXT PRIMARY KEY NOT NULL,
    newest_version TEXT NOT NULL,
    checked_at TIMESTAMPTZ NOT NULL
);
