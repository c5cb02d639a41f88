//! Test harness: boots the real app on 127.0.0.1:0 over a fresh SQLite file
//! or a fresh PostgreSQL database, with its own tenant and SCIM token.

#![allow(dead_code)]

pub mod haproxy;
pub mod receiver;
pub mod slapd;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use rolebridge::app::App;
use rolebridge::domain::{Scope, TenantName};
use rolebridge::store::Store;
use serde_json::Value;
use tokio::sync::OnceCell;

/// Runs a test body once on SQLite and once on PostgreSQL.
#[macro_export]
macro_rules! both_backends {
    ($(#[$meta:meta])* async fn $name:ident($srv:ident) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn run($srv: $crate::support::TestServer) $body
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run($crate::support::TestServer::start($crate::support::Backend::Sqlite).await).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                run($crate::support::TestServer::start($crate::support::Backend::Postgres).await).await
            }
        }
    };
}

/// Runs a test body once per backend, for tests that start their own server.
#[macro_export]
macro_rules! each_backend {
    ($(#[$meta:meta])* async fn $name:ident($backend:ident) $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn run($backend: $crate::support::Backend) $body
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                run($crate::support::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                run($crate::support::Backend::Postgres).await
            }
        }
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// This test process's run: its pid and a random suffix. The pid alone is
/// not enough: pids wrap (32,768 on the CI machine, and a build spends
/// thousands), while SQLite files, PostgreSQL databases and Redis keys outlive
/// the process that made them, so a later run with the same pid would open
/// an earlier run's database and find its tenants already there.
pub fn run_token() -> &'static str {
    static RUN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    RUN.get_or_init(|| format!("{}r{:06x}", std::process::id(), rand::random::<u32>() >> 8))
}

/// A unique name for this run and test: `{prefix}{run}x{n}`.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        run_token(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// `$TMPDIR/rolebridge-tests`, where tests keep their SQLite files, mapping
/// directories and secrets. The first call in a process removes what runs
/// more than six hours old left there, so the directory does not grow
/// without bound on a long-lived machine; a run still going is never that old.
pub fn test_dir() -> std::path::PathBuf {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    let dir = std::env::temp_dir().join("rolebridge-tests");
    std::fs::create_dir_all(&dir).expect("create test dir");
    SWEPT.call_once(|| {
        let cutoff = std::time::SystemTime::now() - Duration::from_secs(6 * 3600);
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < cutoff);
            if old {
                let path = entry.path();
                let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
            }
        }
    });
    dir
}

/// The PostgreSQL server tests use; `.ci/run` makes sure it is up.
pub fn postgres_admin_url() -> String {
    std::env::var("ROLEBRIDGE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string())
}

static PG_CLEANUP: OnceCell<()> = OnceCell::const_new();

/// Whether the test process that named a database `rbtest_{pid}r…` is still
/// running (a recycled pid only delays the cleanup of that database).
fn run_alive(datname: &str) -> bool {
    let pid: String = datname
        .trim_start_matches("rbtest_")
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    !pid.is_empty() && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// A fresh database URL for one test.
pub async fn fresh_database(backend: Backend) -> String {
    match backend {
        Backend::Sqlite => {
            format!("sqlite://{}/{}.db", test_dir().display(), unique("t"))
        }
        Backend::Postgres => {
            use sqlx::Connection;
            let admin = postgres_admin_url();
            let mut conn = sqlx::PgConnection::connect(&admin)
                .await
                .unwrap_or_else(|e| {
                    panic!("PostgreSQL at {admin} is not reachable ({e}); start it (.ci/run does)")
                });
            PG_CLEANUP
                .get_or_init(|| async {
                    // Databases of earlier runs (any other run token): drop
                    // them once per process.
                    let old: Vec<(String,)> = sqlx::query_as(
                        "SELECT datname FROM pg_database WHERE datname LIKE 'rbtest\\_%' \
                         AND datname NOT LIKE $1",
                    )
                    .bind(format!("rbtest\\_{}x%", run_token()))
                    .fetch_all(
                        &mut sqlx::PgConnection::connect(&postgres_admin_url())
                            .await
                            .expect("pg"),
                    )
                    .await
                    .unwrap_or_default();
                    let mut c = sqlx::PgConnection::connect(&postgres_admin_url())
                        .await
                        .expect("pg");
                    for (name,) in old {
                        // Only a run that has ended: another test process
                        // running now (a second `cargo test`, CI beside a
                        // developer's run) keeps its databases.
                        if run_alive(&name) {
                            continue;
                        }
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                        )))
                        .execute(&mut c)
                        .await;
                    }
                })
                .await;
            let name = unique("rbtest_");
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
                .execute(&mut conn)
                .await
                .expect("create test database");
            let mut url = url::Url::parse(&admin).expect("admin url");
            url.set_path(&format!("/{name}"));
            url.to_string()
        }
    }
}

/// A running server with a tenant and a SCIM token.
pub struct TestServer {
    pub backend: Backend,
    pub app: App,
    pub database_url: String,
    pub addr: std::net::SocketAddr,
    pub tenant: String,
    pub token: String,
    /// `http://127.0.0.1:PORT/scim/v2/{tenant}`.
    pub base: String,
    pub client: reqwest::Client,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// A response: status, headers and JSON body (Null when empty).
#[derive(Debug)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Resp {
    /// Status, headers and the JSON body (`Null` when empty) of a response.
    pub async fn read(resp: reqwest::Response) -> Resp {
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("non-JSON body ({e}): {text}"))
        };
        Resp {
            status,
            headers,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    /// Asserts a SCIM error with this status and scimType.
    #[track_caller]
    pub fn assert_error(&self, status: u16, scim_type: Option<&str>) {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.body);
        assert_eq!(
            self.body["schemas"][0], "urn:ietf:params:scim:api:messages:2.0:Error",
            "{}",
            self.body
        );
        assert_eq!(self.body["status"], status.to_string(), "{}", self.body);
        assert_eq!(
            self.body.get("scimType").and_then(Value::as_str),
            scim_type,
            "{}",
            self.body
        );
        assert_eq!(self.header("content-type"), Some("application/scim+json"));
    }
}

impl TestServer {
    pub async fn start(backend: Backend) -> TestServer {
        Self::start_inner(backend, None, None).await
    }

    /// A server whose mappings directory holds the shipped catalogs and
    /// `tenant_yaml` as this test tenant's mapping file.
    pub async fn start_mapped(backend: Backend, tenant_yaml: &str) -> TestServer {
        Self::start_inner(backend, Some(tenant_yaml), None).await
    }

    /// A mapped server whose mappings directory holds only `catalogs`
    /// (`(id, yaml)` pairs, written to `catalogs/{id}.yaml`) and
    /// `tenant_yaml`, loaded before any write.
    pub async fn start_with_catalogs(
        backend: Backend,
        catalogs: &[(&str, &str)],
        tenant_yaml: &str,
    ) -> TestServer {
        let srv = Self::start_inner(backend, Some("catalog: gms\n"), None).await;
        let dir = srv.mappings_dir();
        for entry in std::fs::read_dir(dir.join("catalogs")).expect("catalogs") {
            std::fs::remove_file(entry.expect("entry").path()).expect("remove catalog");
        }
        for (id, yaml) in catalogs {
            std::fs::write(dir.join("catalogs").join(format!("{id}.yaml")), yaml)
                .expect("write catalog");
        }
        std::fs::write(
            dir.join("tenants").join(format!("{}.yaml", srv.tenant)),
            tenant_yaml,
        )
        .expect("write tenant mapping");
        srv.app
            .reload_mappings()
            .unwrap_or_else(|e| panic!("test mapping invalid: {e:?}"));
        srv
    }

    /// A mapped server whose permissions cache is shared through Redis at
    /// `redis_url` under `prefix`.
    pub async fn start_mapped_redis(
        backend: Backend,
        tenant_yaml: &str,
        redis_url: &str,
        prefix: &str,
    ) -> TestServer {
        Self::start_inner(backend, Some(tenant_yaml), Some((redis_url, prefix))).await
    }

    /// Another app on this server's database and mappings, as a second
    /// process would be: its own in-process cache, the same Redis if given.
    pub async fn sibling_app(&self, redis: Option<(&str, &str)>) -> App {
        let store = Store::connect(&self.database_url).await.expect("connect");
        let mappings = rolebridge::app::Mappings::load(&self.mappings_dir()).expect("mappings");
        let app = App::with_mappings(store, mappings);
        match redis {
            Some((url, prefix)) => app.with_redis(url, prefix).expect("redis url"),
            None => app,
        }
    }

    /// The mappings directory of a mapped server.
    pub fn mappings_dir(&self) -> std::path::PathBuf {
        test_dir().join(format!("{}-mappings", self.tenant))
    }

    /// A token of scope `permissions` for this tenant.
    pub async fn permissions_token(&self) -> String {
        let name = TenantName::parse(&self.tenant).expect("name");
        self.app
            .create_token(&name, Scope::Permissions)
            .await
            .expect("token")
            .token
            .expose()
            .to_string()
    }

    async fn start_inner(
        backend: Backend,
        tenant_yaml: Option<&str>,
        redis: Option<(&str, &str)>,
    ) -> TestServer {
        let database_url = fresh_database(backend).await;
        let store = Store::connect(&database_url).await.expect("connect store");
        let tenant = unique("tenant");
        let app = match tenant_yaml {
            None => App::new(store),
            Some(yaml) => {
                let dir = mappings_dir_for(&tenant, yaml);
                let mappings = rolebridge::app::Mappings::load(&dir)
                    .unwrap_or_else(|e| panic!("test mapping invalid: {e:?}"));
                let app = App::with_mappings(store, mappings);
                match redis {
                    Some((url, prefix)) => app.with_redis(url, prefix).expect("redis url"),
                    None => app,
                }
            }
        };
        let name = TenantName::parse(&tenant).expect("tenant name");
        app.store()
            .create_tenant(&name, &rolebridge::app::now())
            .await
            .expect("create tenant");
        let token = app.create_token(&name, Scope::Scim).await.expect("token");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = rolebridge::http::router(app.clone());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        TestServer {
            backend,
            base: format!("http://{addr}/scim/v2/{tenant}"),
            app,
            database_url,
            addr,
            tenant,
            token: token.token.expose().to_string(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
            server,
        }
    }

    /// A server built with `http::router_with`; `settings` is given this
    /// server's tenant name, for `[rate_limit.tenants.NAME]` overrides.
    pub async fn start_with_settings(
        backend: Backend,
        settings: impl FnOnce(&str) -> rolebridge::http::HttpSettings,
    ) -> TestServer {
        let mut srv = Self::start(backend).await;
        srv.server.abort();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = rolebridge::http::router_with(srv.app.clone(), settings(&srv.tenant));
        srv.server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        srv.addr = addr;
        srv.base = format!("http://{addr}/scim/v2/{}", srv.tenant);
        srv
    }

    /// Another token of scope `scim` for this tenant.
    pub async fn scim_token(&self) -> String {
        let name = TenantName::parse(&self.tenant).expect("name");
        self.app
            .create_token(&name, Scope::Scim)
            .await
            .expect("token")
            .token
            .expose()
            .to_string()
    }

    /// A second tenant with its own token, on the same server.
    pub async fn other_tenant(&self) -> (String, String) {
        let tenant = unique("other");
        let name = TenantName::parse(&tenant).expect("name");
        self.app
            .store()
            .create_tenant(&name, &rolebridge::app::now())
            .await
            .expect("tenant");
        let t = self
            .app
            .create_token(&name, Scope::Scim)
            .await
            .expect("token");
        (tenant, t.token.expose().to_string())
    }

    /// Sends a request to `{base}{path}` with this server's token.
    pub async fn send(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        self.send_with(
            method,
            &format!("{}{}", self.base, path),
            body,
            &[],
            Some(&self.token),
        )
        .await
    }

    pub async fn send_with(
        &self,
        method: Method,
        url: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
        token: Option<&str>,
    ) -> Resp {
        let mut req = self.client.request(method, url);
        if let Some(t) = token {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/scim+json")
                .body(b.to_string());
        }
        Resp::read(req.send().await.expect("request")).await
    }

    /// Sends `body` byte for byte (vendor payloads, some not even JSON) to
    /// `base + path_and_query`, which is used as written (no encoding).
    pub async fn send_raw(&self, method: Method, path_and_query: &str, body: Option<&str>) -> Resp {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path_and_query))
            .header("Authorization", format!("Bearer {}", self.token));
        if let Some(b) = body {
            req = req
                .header("Content-Type", "application/scim+json")
                .body(b.to_string());
        }
        Resp::read(req.send().await.expect("request")).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(Method::GET, path, None).await
    }
    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.send(Method::POST, path, Some(body)).await
    }
    pub async fn put(&self, path: &str, body: Value) -> Resp {
        self.send(Method::PUT, path, Some(body)).await
    }
    pub async fn patch(&self, path: &str, body: Value) -> Resp {
        self.send(Method::PATCH, path, Some(body)).await
    }
    pub async fn delete(&self, path: &str) -> Resp {
        self.send(Method::DELETE, path, None).await
    }

    /// GET with a query string built from pairs (percent-encoded).
    pub async fn query(&self, path: &str, params: &[(&str, &str)]) -> Resp {
        let url = reqwest::Url::parse_with_params(&format!("{}{}", self.base, path), params)
            .expect("url");
        self.send_with(Method::GET, url.as_str(), None, &[], Some(&self.token))
            .await
    }

    /// Creates a user and returns its id.
    pub async fn user(&self, user_name: &str) -> String {
        let r = self
            .post(
                "/Users",
                serde_json::json!({
                    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
                    "userName": user_name,
                }),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        r.body["id"].as_str().expect("id").to_string()
    }

    /// Creates a group and returns its id.
    pub async fn group(&self, display_name: &str) -> String {
        let r = self
            .post(
                "/Groups",
                serde_json::json!({
                    "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
                    "displayName": display_name,
                }),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        r.body["id"].as_str().expect("id").to_string()
    }

    /// The member ids of a group, sorted.
    pub async fn member_ids(&self, group: &str) -> Vec<String> {
        let r = self.get(&format!("/Groups/{group}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let mut ids: Vec<String> = r.body["members"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| m["value"].as_str().expect("value").to_string())
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }
}

pub const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
pub const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

/// A mappings directory for one test tenant, `{test_dir}/{tenant}-mappings`:
/// the shipped catalogs and `tenant_yaml` as `tenants/{tenant}.yaml`.
pub fn mappings_dir_for(tenant: &str, tenant_yaml: &str) -> std::path::PathBuf {
    let dir = test_dir().join(format!("{tenant}-mappings"));
    std::fs::create_dir_all(dir.join("catalogs")).expect("mkdir");
    std::fs::create_dir_all(dir.join("tenants")).expect("mkdir");
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mappings/catalogs");
    for entry in std::fs::read_dir(shipped).expect("catalogs") {
        let path = entry.expect("entry").path();
        std::fs::copy(
            &path,
            dir.join("catalogs").join(path.file_name().expect("name")),
        )
        .expect("copy catalog");
    }
    std::fs::write(
        dir.join("tenants").join(format!("{tenant}.yaml")),
        tenant_yaml,
    )
    .expect("write tenant mapping");
    dir
}

/// Removes a backend's test database (a property test shrinking a failure
/// makes many cases, and leftovers slow the next run's cleanup).
pub async fn drop_database(backend: Backend, url: &str) {
    match backend {
        Backend::Sqlite => {
            if let Some(path) = url.strip_prefix("sqlite://") {
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{path}{suffix}"));
                }
            }
        }
        Backend::Postgres => {
            use sqlx::Connection;
            let name = url::Url::parse(url)
                .map(|u| u.path().trim_start_matches('/').to_string())
                .unwrap_or_default();
            if let Ok(mut admin) =
                sqlx::PgConnection::connect(&crate::support::postgres_admin_url()).await
            {
                let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await;
            }
        }
    }
}

/// The runtime a property test drives its async cases on (two workers, as
/// `#[tokio::test]`s here use).
pub fn property_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// A property test's runner: `cases` cases (or proptest's default when
/// `PROPTEST_CASES` is set, which proptest then reads), no failure files,
/// shrinking bounded.
pub fn property_runner(cases: u32) -> proptest::test_runner::TestRunner {
    use proptest::test_runner::{Config, TestRunner};
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() {
        Config::default().cases
    } else {
        cases
    };
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 512,
        max_shrink_time: 180_000,
        ..Config::default()
    })
}

/// Fails the test with proptest's minimal case when the property broke.
pub fn expect_property<T: std::fmt::Debug>(
    outcome: Result<(), proptest::test_runner::TestError<T>>,
    what: &str,
) {
    use proptest::test_runner::TestError;
    match outcome {
        Ok(()) => {}
        Err(TestError::Fail(why, minimal)) => {
            panic!("{what}: {why}\nminimal case: {minimal:#?}")
        }
        Err(TestError::Abort(why)) => panic!("property test aborted: {why}"),
    }
}
