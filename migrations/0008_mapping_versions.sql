-- Mapping sets versioned in the store (GitOps `mappings apply`, the admin
-- API). Each version is the whole set: a manifest of file name → SHA-256,
-- the texts kept once per content in mapping_blobs (catalogs rarely
-- change, so most versions share them). Version numbers are consecutive:
-- two concurrent applies on one base both try base+1 and the primary key
-- lets exactly one win.
CREATE TABLE mapping_blobs (
    sha256 TEXT PRIMARY KEY,
    text TEXT NOT NULL
);
CREATE TABLE mapping_versions (
    version BIGINT PRIMARY KEY,
    -- The version the change was planned against (NULL for the first).
    parent BIGINT,
    -- SHA-256 (16 hex) of the set: the stamp of effective_permissions rows.
    fingerprint TEXT NOT NULL,
    -- JSON object: file name (catalogs/x.yaml, tenants/y.yaml) → sha256.
    manifest TEXT NOT NULL,
    created TEXT NOT NULL,
    -- import | apply | rollback
    origin TEXT NOT NULL,
    rollback_of BIGINT,
    -- Who: a token id and its label, or the operator's CLI.
    actor TEXT NOT NULL,
    actor_label TEXT,
    -- The plan the change was applied with: its hash and totals (JSON).
    plan_hash TEXT,
    totals TEXT
);

-- Every mapping change attempted, applied or refused, with its plan's
-- totals: the audit trail admins and auditors read.
CREATE TABLE mapping_audit (
    id TEXT PRIMARY KEY,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    actor_label TEXT,
    -- The tenant whose file the change edits; NULL for an operator change.
    tenant TEXT,
    -- applied | refused | conflict
    action TEXT NOT NULL,
    base BIGINT,
    version BIGINT,
    plan_hash TEXT,
    totals TEXT,
    detail TEXT
);
CREATE INDEX mapping_audit_at ON mapping_audit (at);
CREATE INDEX mapping_audit_tenant ON mapping_audit (tenant, at);

-- Tokens an admin issues for an IdP connection carry a label and may
-- expire; when each was last used tells a stale connection.
ALTER TABLE api_tokens ADD COLUMN label TEXT;
ALTER TABLE api_tokens ADD COLUMN expires TEXT;
ALTER TABLE api_tokens ADD COLUMN last_used TEXT;
