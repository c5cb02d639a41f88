-- Directory sync. A link ties a source's stable id for an entry (entryUUID,
-- objectGUID, Graph id) to the resource it created, so renames and moves
-- are updates and only what a source created can be removed by it.
CREATE TABLE sync_links (
    source TEXT NOT NULL,
    kind TEXT NOT NULL,
    external_key TEXT NOT NULL,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    resource_id TEXT NOT NULL,
    -- Lowercased DN (LDAP), to resolve member references; NULL elsewhere.
    locator TEXT,
    -- userName or displayName, to resolve posixGroup memberUid.
    name_lc TEXT NOT NULL,
    -- The base the entry was found under (empty-base detection).
    base TEXT NOT NULL,
    -- SHA-256 of the record last applied: unchanged entries are skipped.
    content_hash TEXT NOT NULL,
    -- When a complete read first missed this user: deactivated since, and
    -- deleted once the grace period has passed.
    missing_since TEXT,
    PRIMARY KEY (source, kind, external_key)
);
CREATE UNIQUE INDEX sync_links_resource ON sync_links (tenant_id, kind, resource_id);
CREATE INDEX sync_links_locator ON sync_links (source, locator);

-- Per source: the cursor of the last applied run and the run lease, which
-- makes overlapping runs of one source impossible across processes.
CREATE TABLE sync_state (
    source TEXT PRIMARY KEY,
    cursor TEXT,
    last_full TEXT,
    lease_owner TEXT,
    lease_until TEXT
);

-- Every run's outcome and summary (JSON), for `sync status` and audits.
CREATE TABLE sync_runs (
    id TEXT PRIMARY KEY,
    source TEXT NOT NULL,
    started TEXT NOT NULL,
    finished TEXT NOT NULL,
    outcome TEXT NOT NULL,
    report TEXT NOT NULL,
    error TEXT
);
CREATE INDEX sync_runs_source ON sync_runs (source, started);
