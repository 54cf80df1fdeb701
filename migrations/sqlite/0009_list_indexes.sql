-- Every paged list walks an index in the order it answers and stops at the page size: teams
-- and usage windows of an organization by id, pending invitations of an address by id.

CREATE INDEX teams_organization_id ON teams (organization_id, id);
CREATE INDEX usage_counters_organization_id ON usage_counters (organization_id, id);
DROP INDEX invitations_email;
CREATE INDEX invitations_email ON invitations (email, id);
