-- RFC 7643 §3.1 gives `externalId` no uniqueness, and identity providers
-- reuse it: Entra's default matching source (mailNickname) "may not be
-- unique in the directory", and Microsoft's own SCIM test payloads send one
-- value on many users. It stays indexed for `filter=externalId eq "..."`.
-- Directory sync does not rely on it: a source's links (sync_links) carry
-- the identity of what it created.
DROP INDEX scim_users_external_id;
CREATE INDEX scim_users_external_id ON scim_users (tenant_id, external_id);
DROP INDEX scim_groups_external_id;
CREATE INDEX scim_groups_external_id ON scim_groups (tenant_id, external_id);
