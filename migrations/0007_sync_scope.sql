-- An incremental run loads only the links its batch names: by key (the
-- primary key), by DN (sync_links_locator), by userName (posixGroup
-- memberUid) and the users in their grace period. The source's tenant is
-- kept with its cursor, so a run learns the source moved tenants without
-- scanning its links.
CREATE INDEX sync_links_name ON sync_links (source, name_lc);
CREATE INDEX sync_links_missing ON sync_links (source, tenant_id) WHERE missing_since IS NOT NULL;
ALTER TABLE sync_state ADD COLUMN tenant_id TEXT;
