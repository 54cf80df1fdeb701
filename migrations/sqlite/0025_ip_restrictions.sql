-- Organizations' IP restrictions: allow and deny lists of CIDR blocks (JSON arrays of text in
-- network form). No row: no restriction. The audit log says who changed them when.

CREATE TABLE organization_ip_rules (
    organization_id BLOB PRIMARY KEY REFERENCES organizations (id) ON DELETE CASCADE,
    allow_blocks TEXT NOT NULL,
    deny_blocks TEXT NOT NULL
);
