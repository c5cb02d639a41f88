-- One migration set for SQLite and PostgreSQL: only portable types
-- (TEXT, BIGINT) and portable constraints. Timestamps are RFC 3339 UTC text
-- with a fixed width, so text order is time order in both databases.

CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL
);

-- API tokens: only the SHA-256 of the secret part is stored.
CREATE TABLE api_tokens (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    scope TEXT NOT NULL,
    secret_sha256 TEXT NOT NULL,
    created TEXT NOT NULL,
    revoked TEXT
);
CREATE INDEX api_tokens_tenant ON api_tokens (tenant_id);

-- SCIM Users. `data` is the whole resource document (schema-driven: every
-- attribute the client sent, known or not) without id, meta and password;
-- the other columns are copies kept for uniqueness, indexes and filters.
CREATE TABLE scim_users (
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    id TEXT NOT NULL,
    user_name TEXT NOT NULL,
    user_name_lc TEXT NOT NULL,
    external_id TEXT,
    active BIGINT NOT NULL,
    data TEXT NOT NULL,
    created TEXT NOT NULL,
    last_modified TEXT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX scim_users_user_name ON scim_users (tenant_id, user_name_lc);
CREATE UNIQUE INDEX scim_users_external_id ON scim_users (tenant_id, external_id);
CREATE INDEX scim_users_order ON scim_users (tenant_id, created, id);

CREATE TABLE scim_groups (
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    id TEXT NOT NULL,
    display_name TEXT NOT NULL,
    display_name_lc TEXT NOT NULL,
    external_id TEXT,
    data TEXT NOT NULL,
    created TEXT NOT NULL,
    last_modified TEXT NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX scim_groups_external_id ON scim_groups (tenant_id, external_id);
CREATE INDEX scim_groups_display_name ON scim_groups (tenant_id, display_name_lc);
CREATE INDEX scim_groups_order ON scim_groups (tenant_id, created, id);

-- Group membership in its own table, so adding or removing N members costs
-- O(N) whatever the group's size, and listing groups need not touch it.
CREATE TABLE group_members (
    tenant_id TEXT NOT NULL,
    group_id TEXT NOT NULL,
    member_id TEXT NOT NULL,
    member_type TEXT NOT NULL,
    PRIMARY KEY (tenant_id, group_id, member_id)
);
CREATE INDEX group_members_member ON group_members (tenant_id, member_id);
