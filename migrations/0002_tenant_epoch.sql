-- A per-tenant counter bumped in the same transaction as every write to the
-- tenant's users, groups or memberships. Cached permissions are keyed by it,
-- so a committed write makes every older cache entry unreachable at once,
-- in every process that shares the database.
ALTER TABLE tenants ADD COLUMN epoch BIGINT NOT NULL DEFAULT 0;
