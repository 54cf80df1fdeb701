-- The id of the request that wrote an event (`X-Request-ID`), passed on to its webhook
-- deliveries as their `x-request-id` header.

ALTER TABLE events ADD COLUMN request_id TEXT;
ALTER TABLE webhook_deliveries ADD COLUMN request_id TEXT;
