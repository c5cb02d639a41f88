-- The effective-permission change feed (an outbox) and webhooks.
--
-- Every change to a user's effective permissions appends one row here in
-- the transaction that made it, so no committed change is without its
-- event. `seq` is the tenant's own counter (tenants.change_seq), taken in
-- that transaction while the tenant row is locked: one tenant's events are
-- numbered in commit order, with no gaps a reader could skip past, on
-- every replica alike. That number is the feed's cursor.
ALTER TABLE tenants ADD COLUMN change_seq BIGINT NOT NULL DEFAULT 0;
-- Events up to this seq may have been pruned (retention): a cursor below
-- it is answered 410 with how to resync.
ALTER TABLE tenants ADD COLUMN changes_pruned_through BIGINT NOT NULL DEFAULT 0;

CREATE TABLE permission_changes (
    tenant_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    -- The tenant revision of the write (the user's new revision).
    revision BIGINT NOT NULL,
    user_id TEXT NOT NULL,
    user_name TEXT NOT NULL,
    at TEXT NOT NULL,
    -- JSON: what caused it (a SCIM request, a sync run, a mapping version).
    cause TEXT NOT NULL,
    -- JSON: roles, profiles and permissions added and removed; active, deleted.
    diff TEXT NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);
CREATE INDEX permission_changes_at ON permission_changes (at);

-- A tenant's webhook endpoints. Signing secrets must be readable to sign
-- (HMAC), so they are stored as given; they never reach logs or API
-- listings. `position` is the seq of the last event delivered or
-- dead-lettered: delivery is in seq order, so per-user order holds.
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    url TEXT NOT NULL,
    created TEXT NOT NULL,
    -- JSON array of {secret, created, expires}: the newest signs first;
    -- a rotated-out secret keeps signing until it expires.
    secrets TEXT NOT NULL,
    position BIGINT NOT NULL,
    -- One replica delivers an endpoint at a time.
    lease_owner TEXT,
    lease_until TEXT,
    -- The batch at the head: attempts so far and when to try again.
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt TEXT,
    last_error TEXT,
    last_success TEXT,
    delivered BIGINT NOT NULL DEFAULT 0,
    dead_lettered BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX webhooks_tenant ON webhooks (tenant_id);

-- Batches given up after the configured attempts, with the body that was
-- sent, so they can be inspected and replayed after retention pruned the
-- events.
CREATE TABLE webhook_dead_letters (
    webhook_id TEXT NOT NULL,
    first_seq BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    at TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_error TEXT NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (webhook_id, first_seq)
);
