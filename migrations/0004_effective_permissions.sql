-- Effective permissions, kept per user and written in the transaction of the
-- write that changed them (`app::derive`). A check reads one row; nothing
-- recomputes a tenant on the read path.
CREATE TABLE effective_permissions (
    tenant_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    -- The tenant revision (tenants.epoch) of the write that last changed
    -- this row.
    revision BIGINT NOT NULL,
    -- Fingerprint of the mapping set the row was computed under; a row of
    -- another mapping is never served as current.
    mapping TEXT NOT NULL,
    -- 1 when a rule or the default role offers the user a role with
    -- `max_per_tenant`: such users are recomputed together, because slots
    -- depend on each other.
    contends BIGINT NOT NULL,
    -- The served summary (JSON: user, roles, profiles, permissions).
    summary TEXT NOT NULL,
    -- Kinds of limit refusals (comma-separated), NULL when none: the
    -- `rolebridge_mapping_refusals` gauge.
    refused TEXT,
    PRIMARY KEY (tenant_id, user_id)
);
CREATE INDEX effective_permissions_contends ON effective_permissions (tenant_id, contends);
CREATE INDEX effective_permissions_refused ON effective_permissions (tenant_id) WHERE refused IS NOT NULL;

-- The mapping fingerprint every row of the tenant was computed under, NULL
-- before the first computation. A write under another mapping recomputes
-- the whole tenant once (a mapping change, not a directory write).
ALTER TABLE tenants ADD COLUMN mapping TEXT;
