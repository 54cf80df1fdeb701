-- Realtime: the dispatcher gives each event its place in the stream (`position`, the number
-- of its audit entry: gap-free and in dispatch order), and `user_id` names the user whose
-- `user` channel carries it. Dispatched events are the channels' history (recovery).

ALTER TABLE events ADD COLUMN user_id BLOB;
ALTER TABLE events ADD COLUMN position INTEGER;

CREATE UNIQUE INDEX events_position ON events (position) WHERE position IS NOT NULL;
CREATE INDEX events_organization_position ON events (organization_id, position)
    WHERE position IS NOT NULL AND organization_id IS NOT NULL;
CREATE INDEX events_user_position ON events (user_id, position)
    WHERE position IS NOT NULL AND user_id IS NOT NULL;
