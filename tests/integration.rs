//! The one integration-test binary (one link step for every test).

// Harness: real servers on 127.0.0.1, a fresh database per test.
mod support;

// The rolebridge CLI: tenants, tokens, config errors, `serve` defaults.
mod cli;
// Discovery endpoints, auth, errors, unknown routes.
mod scim_discovery;
// Users: CRUD, meta/ETag, uniqueness, round-trip, password.
mod scim_users;
// Groups and membership at scale.
mod scim_groups;
// Filtering, sorting, paging and projection.
mod scim_list;
// PATCH semantics and atomicity.
mod scim_patch;
// Bulk with bulkId references and failOnErrors.
mod scim_bulk;
// Exact request shapes of Microsoft Entra ID and Okta.
mod idp_entra;
mod idp_okta;
// Hostile input: NUL, Content-Type, Unicode, error formats, logs and panics.
mod hostile_input;
// A malformed-request corpus against the binary: 4xx in the API's format, no 5xx or panic logged.
mod malformed_corpus;
// The vendors' own test material (Microsoft SCIMReferenceCode, Entra docs), replayed.
mod vendor_suites;
// Effective permissions through the HTTP API, per catalog, and reload.
mod permissions_api;
// The incremental derivation against the whole-tenant oracle (property test).
mod permissions_incremental;
// The permissions cache: Redis, invalidation, revocation cycles, outages.
mod cache;
// Acknowledged writes survive kill -9.
mod durability;
// scim2-tester conformance run against a fresh server.
mod conformance;
// Provisioning quotas (429, Retry-After, per tenant and token) and the in-flight cap.
mod rate_limits;
// Cluster-wide quotas in Redis: the GCRA script, three serve processes, Redis down, metrics.
mod quota_cluster;
// /metrics per route template, /readyz, JSON logs without tokens.
mod observability;
// The directory-sync runner: apply, failure, guard, dry run, lease, permissions.
mod sync_framework;
// An incremental run's scoped load against the full load (property test).
mod sync_scope;
// `rolebridge sync` and `sync status` through the binary, against slapd.
mod sync_cli;
// The LDAP source against a real slapd.
mod sync_ldap;
// The Entra ID source against a local Microsoft Graph stand-in.
mod sync_entra;
// Versioned mappings: plan, guarded apply, rollback, audit, admin API, replicas switching.
mod mapping_admin;
// The /admin page in headless Chromium.
mod admin_page;
// Revisions, at_least_as_fresh, batch checks, atomic mapping switches over HTTP.
mod permissions_consistency;
// The SQL filter path (SQLite, PostgreSQL) against the in-memory evaluator (property test).
mod filter_property;
// The effective-permission change feed: events, causes, paging, long-poll, retention.
mod changes_feed;
// Webhooks against a real receiver: signatures, retries, dead letters, kill -9, two replicas.
mod webhooks;
// Group commit: queued writes share a commit, a failing one fails alone, kill -9 under load.
mod group_commit;
// SIGTERM: readiness off, requests still served for the delay, in-flight ones drained within the grace.
mod graceful_shutdown;
// Three serve processes behind a real HAProxy: kill -9 and SIGTERM under an IdP's load, quotas, schedules.
mod multi_replica;
