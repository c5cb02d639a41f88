//! Durable state: tenants, API tokens, SCIM resources and group membership,
//! on SQLite (WAL) or PostgreSQL through one sqlx `Any` pool and one set of
//! migrations.
//!
//! May use: `domain`, `scim` (schema, filter AST and its SQL rendering).
//! Invariant: every resource query takes a [`TenantId`] and is scoped by it;
//! there is no unscoped read or write of tenant data.

mod changes;
mod columns;
mod directory;
mod effective;
mod error;
mod mapping_versions;
mod repairs;
mod resources;
mod sync;
mod sync_scope;
mod tenants;
mod webhooks;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

pub use changes::{ChangeBounds, NewChange, StoredChange};
pub use columns::Columns;
pub use directory::{Directory, DirectoryGroup, DirectoryUser};
pub use effective::{Changes, CheckRow, EffectiveRow, TenantRevision};
pub use error::Error;
pub use mapping_versions::{
    blob_hash, Actor, AuditAction, AuditRecord, NewVersion, StoredVersion, VersionOrigin,
};
pub use resources::{EncodedInsert, MemberRow, Page, Savepoint, StoredResource, WriteTx};
pub use scim::sql::Dialect;
pub use sync::{EncodedLinks, SyncLink, SyncRunRecord, SyncState, RUNS_KEPT};
pub use sync_scope::{LinkTotals, ScopeKeys, SyncScope};
pub use tenants::TokenRecord;
pub use webhooks::{DeadLetter, WebhookRecord, WebhookSecret};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A handle to the database. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// Where write transactions run: on SQLite a pool of one connection,
    /// on PostgreSQL the same pool as `pool`.
    writer: AnyPool,
    dialect: Dialect,
    /// SQLite allows one writer at a time. Write transactions begin
    /// IMMEDIATE, so a writer of another process is waited for in SQLite's
    /// busy handler (sleeping on the driver's thread, up to
    /// `busy_timeout`); this process's own writers queue here instead, on
    /// an async lock. PostgreSQL needs no such lock.
    write_lock: Option<Arc<tokio::sync::Mutex<()>>>,
}

impl Store {
    /// The in-process SQLite writer lock, for a write outside a
    /// [`WriteTx`] (tokens, mapping versions, the audit trail): without it
    /// such a write can make a concurrent write transaction fail with
    /// SQLITE_BUSY when that transaction upgrades from reader to writer.
    /// `None` on PostgreSQL, which needs no such lock.
    pub(crate) async fn exclusive(&self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        match &self.write_lock {
            Some(lock) => Some(lock.clone().lock_owned().await),
            None => None,
        }
    }
}

/// Maps a query's rows as they arrive, for the loads that read a whole
/// tenant (a complete sync run's links and stored directory). `fetch_all`
/// keeps every driver row beside its mapped value until the last one is
/// mapped: at 100,000 users that was 96 MiB of the 238 to 304 MiB a
/// complete run's load and plan added to its peak RSS.
pub(crate) async fn map_rows<T>(
    mut rows: futures_util::stream::BoxStream<
        '_,
        std::result::Result<sqlx::any::AnyRow, sqlx::Error>,
    >,
    mut map: impl FnMut(&sqlx::any::AnyRow) -> Result<T>,
) -> Result<Vec<T>> {
    use futures_util::TryStreamExt;
    let mut out = Vec::new();
    while let Some(row) = rows.try_next().await? {
        out.push(map(&row)?);
    }
    Ok(out)
}

impl Store {
    /// Connects, creating the SQLite file (and its directory) if needed, and
    /// applies pending migrations.
    pub async fn connect(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Dialect::Postgres
        } else {
            return Err(Error::UnsupportedUrl(redact_url(url)));
        };
        let url = match dialect {
            Dialect::Sqlite => prepare_sqlite_url(url)?,
            Dialect::Postgres => url.to_string(),
        };
        let connect_error = |source| Error::Connect {
            url: redact_url(&url),
            source,
        };
        let options = AnyConnectOptions::from_str(&url).map_err(connect_error)?;
        let pool = pool_options(dialect, PoolRole::Readers)
            .max_connections(match dialect {
                Dialect::Sqlite => 8,
                // sqlx's default; several replicas and the test suite share
                // PostgreSQL's max_connections (100 by default).
                Dialect::Postgres => 10,
            })
            .connect_with(options.clone())
            .await
            .map_err(connect_error)?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .map_err(Error::Migrate)?;
        // SQLite has one writer at a time (`write_lock`): one connection of
        // its own, the only one with a large page cache. PostgreSQL's
        // writers share the pool.
        let writer = match dialect {
            // Kept open, so its page cache stays warm between writes.
            Dialect::Sqlite => pool_options(dialect, PoolRole::Writer)
                .max_connections(1)
                .idle_timeout(None)
                .connect_with(options)
                .await
                .map_err(connect_error)?,
            Dialect::Postgres => pool.clone(),
        };
        let store = Store {
            pool,
            writer,
            dialect,
            write_lock: (dialect == Dialect::Sqlite).then(|| Arc::new(tokio::sync::Mutex::new(()))),
        };
        store.run_repairs().await?;
        Ok(store)
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes the pools, waiting for connections to be returned.
    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }
}

/// What a pool's connections are for: SQLite sizes their page cache by it.
#[derive(Clone, Copy, PartialEq)]
enum PoolRole {
    Readers,
    Writer,
}

/// Pool settings and the per-connection session setup of each dialect.
fn pool_options(dialect: Dialect, role: PoolRole) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .acquire_timeout(Duration::from_secs(30))
        .idle_timeout(Duration::from_secs(60))
        .after_connect(move |conn, _meta| {
            Box::pin(async move {
                if dialect == Dialect::Postgres {
                    // Prepared statements otherwise switch to a generic
                    // plan after five runs, costed on the table's size
                    // when the session began: a bulk load into a new
                    // tenant then checks uniqueness with sequential scans.
                    // The bulk inserts opt out (`WriteTx::generic_plans`).
                    conn.execute("SET plan_cache_mode = force_custom_plan")
                        .await?;
                }
                if dialect == Dialect::Sqlite {
                    // WAL lets readers run beside the writer; synchronous=FULL
                    // makes every acknowledged commit survive power loss, not
                    // just a process kill.
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute("PRAGMA synchronous = FULL").await?;
                    conn.execute("PRAGMA busy_timeout = 10000").await?;
                    // A group commit keeps a savepoint open per write,
                    // so each page it changes is first copied to the
                    // statement journal: in memory (a batch's few pages),
                    // not a temp file written per page.
                    conn.execute("PRAGMA temp_store = MEMORY").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    if role == PoolRole::Writer {
                        // 32 MiB of page cache (SQLite's default is 2 MiB),
                        // so the indexes a bulk load inserts into stay hot
                        // (a 100,000-user first sync wrote its users in
                        // 2.8 s with it, 3.5 s without). Readers keep the
                        // default: with 32 MiB each, the loads of an
                        // unchanged full sync left 76 MiB of page cache
                        // behind (323 MiB peak against 247).
                        conn.execute("PRAGMA cache_size = -32768").await?;
                    }
                }
                Ok(())
            })
        })
}

/// Makes sure a SQLite URL creates its file, and that the file's directory
/// exists, so `rolebridge serve` works on a fresh checkout.
fn prepare_sqlite_url(url: &str) -> Result<String> {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() || path == ":memory:" {
        return Err(Error::UnsupportedUrl(
            "sqlite in-memory databases are not durable; give a file path".into(),
        ));
    }
    if let Some(dir) = std::path::Path::new(path).parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir).map_err(|source| Error::CreateDir {
                dir: dir.display().to_string(),
                source,
            })?;
        }
    }
    let query = if query.contains("mode=") {
        query.to_string()
    } else if query.is_empty() {
        "mode=rwc".to_string()
    } else {
        format!("{query}&mode=rwc")
    };
    Ok(format!("sqlite://{path}?{query}"))
}

/// A database URL with any password replaced, for error messages and logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_gets_positional_parameters_only_when_they_are_in_order() {
        let sql = |s: &str, d| resources::positional(d, s.to_string()).0;
        assert_eq!(
            sql("INSERT INTO t VALUES ($1, $2), ($3, $4)", Dialect::Sqlite),
            "INSERT INTO t VALUES (?, ?), (?, ?)"
        );
        assert_eq!(
            sql(
                "SELECT json_extract(data, '$.a') FROM t WHERE a = $1 AND b IN ($2, $3)",
                Dialect::Sqlite
            ),
            "SELECT json_extract(data, '$.a') FROM t WHERE a = ? AND b IN (?, ?)"
        );
        // Reused or out-of-order parameters keep their names.
        for kept in [
            "WHERE a = $1 OR b = $1",
            "VALUES ($2, $1)",
            "VALUES ($1, $3)",
        ] {
            assert_eq!(sql(kept, Dialect::Sqlite), kept);
        }
        assert_eq!(sql("VALUES ($1, $2)", Dialect::Postgres), "VALUES ($1, $2)");
    }

    #[test]
    fn placeholders_number_every_value_once_in_order() {
        assert_eq!(resources::placeholders(2, 3), "$2, $3, $4");
        assert_eq!(resources::placeholders(1, 0), "");
        assert_eq!(
            resources::row_placeholders(3, 2),
            "($1, $2), ($3, $4), ($5, $6)"
        );
        assert_eq!(resources::row_placeholders(0, 4), "");
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_url("postgres://u:s3cret@db:5432/x"),
            "postgres://u:***@db:5432/x"
        );
        assert_eq!(redact_url("sqlite://data/a.db"), "sqlite://data/a.db");
    }

    #[test]
    fn sqlite_urls_create_their_file() {
        let dir = std::env::temp_dir().join(format!("rb-url-{}", uuid::Uuid::new_v4()));
        let url = format!("sqlite://{}/x.db", dir.display());
        let out = prepare_sqlite_url(&url).unwrap();
        assert!(out.ends_with("x.db?mode=rwc"), "{out}");
        assert!(dir.is_dir());
        assert!(prepare_sqlite_url("sqlite::memory:").is_err());
    }

    /// Only SQLite's writer connection holds a large page cache: with
    /// 32 MiB on each of the pool's eight connections, the whole-tenant
    /// loads of a full sync left 76 MiB of cache behind them.
    #[tokio::test]
    async fn sqlite_readers_keep_the_default_page_cache_and_the_writer_a_large_one() {
        let dir = std::env::temp_dir().join(format!("rb-cache-{}", uuid::Uuid::new_v4()));
        let store = Store::connect(&format!("sqlite://{}/c.db", dir.display()))
            .await
            .unwrap();
        async fn cache(conn: &mut sqlx::AnyConnection) -> i64 {
            let (size,): (i64,) = sqlx::query_as("PRAGMA cache_size")
                .fetch_one(conn)
                .await
                .unwrap();
            size
        }
        let mut reader = store.pool.acquire().await.unwrap();
        assert_eq!(cache(&mut reader).await, -2000, "SQLite's default");
        let mut tx = store.begin_write().await.unwrap();
        assert_eq!(cache(tx.conn()).await, -32768);
        drop(tx);
        drop(reader);
        store.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    /// PostgreSQL connections plan every execution afresh
    /// (`force_custom_plan`), except the bulk inserts: the statement of a
    /// 1,400-user insert runs seven times, and from the sixth on reuses its
    /// plan. The setting is back once the insert is done.
    #[tokio::test]
    async fn postgres_bulk_inserts_reuse_their_plan_and_leave_fresh_plans_behind() {
        use sqlx::Connection;
        let admin = std::env::var("ROLEBRIDGE_TEST_POSTGRES")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is not reachable ({e})"));
        // Named like the integration tests' databases, so a run that dies
        // here has it dropped by the next one.
        let name = format!(
            "rbtest_{}lib{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        );
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .unwrap();
        let mut url = url::Url::parse(&admin).unwrap();
        url.set_path(&format!("/{name}"));
        let store = Store::connect(url.as_str()).await.unwrap();
        let tenant = store
            .create_tenant(
                &crate::domain::TenantName::parse("bulk").unwrap(),
                "2026-12-04T00:00:00Z",
            )
            .await
            .unwrap();
        let at = crate::domain::Timestamp::now();
        let users: Vec<StoredResource> = (0..1400)
            .map(|i| StoredResource {
                id: crate::domain::ResourceId::generate(),
                doc: serde_json::json!({
                    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                    "userName": format!("user{i}"),
                }),
                created: at,
                last_modified: at,
                version: 1,
            })
            .collect();
        async fn mode(conn: &mut sqlx::AnyConnection) -> String {
            let (mode,): (String,) = sqlx::query_as("SHOW plan_cache_mode")
                .fetch_one(conn)
                .await
                .unwrap();
            mode
        }
        let mut tx = store.begin_write().await.unwrap();
        assert_eq!(mode(tx.conn()).await, "force_custom_plan");
        let refused = tx
            .insert_many(tenant.id, scim::schema::ResourceKind::User, &users)
            .await
            .unwrap();
        assert!(refused.iter().all(Option::is_none), "{refused:?}");
        assert_eq!(mode(tx.conn()).await, "force_custom_plan");
        let (generic, custom): (i64, i64) = sqlx::query_as(
            "SELECT generic_plans, custom_plans FROM pg_prepared_statements \
             WHERE statement LIKE 'INSERT INTO scim_users%'",
        )
        .fetch_one(tx.conn())
        .await
        .unwrap();
        assert_eq!((generic, custom), (2, 5), "runs 6 and 7 reuse the plan");
        drop(tx);
        store.close().await;
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await;
    }

    /// SQLite 3.51.0 and 3.51.1 can deadlock a process: `unixIsSharingShmNode`
    /// takes the global VFS mutex while holding a file's lock mutex, and
    /// `unixClose` takes them the other way round (fixed in 3.51.2). A pool
    /// closing one WAL connection while another locks the same file hung
    /// every SQLite open in the test process. The bundled library must stay
    /// past it.
    #[tokio::test]
    async fn the_bundled_sqlite_has_the_vfs_deadlock_fix() {
        let dir = std::env::temp_dir().join(format!("rb-ver-{}", uuid::Uuid::new_v4()));
        let store = Store::connect(&format!("sqlite://{}/v.db", dir.display()))
            .await
            .unwrap();
        let (version,): (String,) = sqlx::query_as("SELECT sqlite_version()")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        let parts: Vec<u32> = version.split('.').filter_map(|p| p.parse().ok()).collect();
        assert!(parts >= vec![3, 51, 2], "SQLite {version}");
        store.close().await;
        let _ = std::fs::remove_dir_all(dir);
    }
}
