//! Regression tests for the hostile-input probe's findings: NUL characters
//! (PostgreSQL stores none), Content-Type, Unicode userName uniqueness, the
//! `/api/v1` error format of fallbacks, and logs that stay JSON and
//! colourless where they should, a panic included.

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::both_backends;
use crate::durability::{bin, cli, JsonServer};
use crate::support::{fresh_database, unique, Backend, Resp, GROUP, PATCH_OP, USER};

/// Asserts a 400 `invalidValue` whose detail names `what`.
#[track_caller]
fn assert_nul_refused(r: &Resp, what: &str) {
    r.assert_error(400, Some("invalidValue"));
    let detail = r.body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(what) && detail.contains("NUL"),
        "{what}: {}",
        r.body
    );
}

both_backends! {
    async fn nul_characters_are_refused_everywhere_with_the_attribute_named(srv) {
        let id = srv.user("nul@example.com").await;
        let gid = srv.group("Nul group").await;
        // The probe's PATCH: 200 and stored before, breaking every later
        // filter of the tenant on PostgreSQL.
        let r = srv
            .patch(&format!("/Users/{id}"), json!({"schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": "title", "value": "x\u{0}y"}]}))
            .await;
        assert_nul_refused(&r, "path 'title'");
        for body in [
            json!({"schemas": [USER], "userName": "a\u{0}b"}),
            json!({"schemas": [USER], "userName": "ok@example.com", "externalId": "e\u{0}"}),
            json!({"schemas": [USER], "userName": "ok@example.com", "emails": [{"value": "a@x", "type": "w\u{0}"}]}),
        ] {
            let r = srv.post("/Users", body.clone()).await;
            let named = if body["userName"] == "a\u{0}b" { "userName" } else if body.get("externalId").is_some() { "externalId" } else { "emails[0].type" };
            assert_nul_refused(&r, named);
            let r = srv.put(&format!("/Users/{id}"), body).await;
            assert_nul_refused(&r, named);
        }
        let r = srv.post("/Groups", json!({"schemas": [GROUP], "displayName": "g\u{0}"})).await;
        assert_nul_refused(&r, "displayName");
        // In the path and the query.
        assert_nul_refused(&srv.get("/Users/%00").await, "path");
        assert_nul_refused(&srv.delete("/Groups/a%00b").await, "path");
        assert_nul_refused(&srv.send_raw(Method::GET, "/Users?filter=title%20eq%20%22a%00%22", None).await, "'filter'");
        // A `\u0000` escape inside a filter literal decodes to NUL too.
        let r = srv.query("/Users", &[("filter", "title eq \"a\\u0000b\"")]).await;
        assert_nul_refused(&r, "'title'");
        let r = srv
            .post("/Users/.search", json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"], "filter": "userName eq \"a\\u0000\""}))
            .await;
        assert_nul_refused(&r, "'userName'");
        // Nothing was stored, and every filter and sort still answers.
        assert!(srv.get(&format!("/Users/{id}")).await.body.get("title").is_none());
        for q in [
            &[("filter", "title pr")][..],
            &[("filter", "displayName pr")],
            &[("sortBy", "title")],
        ] {
            let r = srv.query("/Users", q).await;
            assert_eq!(r.status, 200, "{q:?}: {}", r.body);
        }
        let r = srv.post("/.search", json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"], "filter": "title pr"})).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(srv.get(&format!("/Groups/{gid}")).await.status.is_success());

        // The permissions API answers in its own format.
        let token = srv.permissions_token().await;
        let api = format!("http://{}/api/v1/tenants/{}", srv.addr, srv.tenant);
        let r = srv
            .send_with(Method::POST, &format!("{api}/check"), Some(json!({"user": "a\u{0}", "permission": "x"})), &[("Content-Type", "application/json")], Some(&token))
            .await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.body["error"]["message"].as_str().unwrap_or_default().contains("'user'"), "{}", r.body);
        let r = srv.send_with(Method::GET, &format!("{api}/users/a%00b/permissions"), None, &[], Some(&token)).await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert_eq!(r.body["error"]["code"], "invalid_request", "{}", r.body);
    }
}

both_backends! {
    async fn documents_stored_with_nul_before_the_fix_do_not_break_the_tenant(srv) {
        // Put a NUL-escaped document into the store the way the old server
        // did, then run the repair migration again as an upgrade would.
        let id = srv.user("old@example.com").await;
        let pool = sqlx::AnyPool::connect(&srv.database_url).await.unwrap();
        sqlx::query("UPDATE scim_users SET data = $1 WHERE id = $2")
            .bind(r#"{"schemas":["urn:ietf:params:scim:schemas:core:2.0:User"],"userName":"old@example.com","title":"x\u0000y"}"#)
            .bind(&id)
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 6").execute(&pool).await.unwrap();
        sqlx::query("DROP TABLE store_repairs").execute(&pool).await.unwrap();
        pool.close().await;
        let store = rolebridge::store::Store::connect(&srv.database_url).await.unwrap();
        store.close().await;
        let r = srv.query("/Users", &[("filter", "title pr")]).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["Resources"][0]["title"], "x\u{fffd}y", "{}", r.body);
        assert_eq!(srv.query("/Users", &[("sortBy", "title")]).await.status, 200);
    }
}

both_backends! {
    async fn scim_bodies_must_be_declared_as_json(srv) {
        let body = json!({"schemas": [USER], "userName": "ct@example.com"}).to_string();
        for declared in ["text/plain", "application/xml", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
            let r = srv.client.post(format!("{}/Users", srv.base)).bearer_auth(&srv.token)
                .header("Content-Type", declared).body(body.clone()).send().await.unwrap();
            let r = Resp::read(r).await;
            r.assert_error(415, None);
            assert!(r.body["detail"].as_str().unwrap().contains(declared.split(';').next().unwrap()), "{}", r.body);
        }
        for (i, declared) in ["application/scim+json; charset=utf-8", "application/json;charset=UTF-8", "Application/SCIM+JSON"].iter().enumerate() {
            let body = json!({"schemas": [USER], "userName": format!("ct{i}@example.com")}).to_string();
            let r = srv.client.post(format!("{}/Users", srv.base)).bearer_auth(&srv.token)
                .header("Content-Type", *declared).body(body).send().await.unwrap();
            assert_eq!(r.status(), 201, "{declared}");
        }
        assert_eq!(srv.get("/Users").await.body["totalResults"], 3, "nothing stored from a refused body");
    }
}

both_backends! {
    async fn user_name_uniqueness_compares_the_nfc_form_case_folded(srv) {
        let nfc = "Jos\u{e9}.M\u{fc}ller@example.com";
        let nfd = "Jose\u{301}.Mu\u{308}ller@example.com";
        assert_ne!(nfc, nfd);
        let a = srv.post("/Users", json!({"schemas": [USER], "userName": nfc})).await;
        assert_eq!(a.status, 201, "{}", a.body);
        srv.post("/Users", json!({"schemas": [USER], "userName": nfd})).await.assert_error(409, Some("uniqueness"));
        srv.post("/Users", json!({"schemas": [USER], "userName": nfd.to_uppercase()})).await.assert_error(409, Some("uniqueness"));
        // The userName is stored as sent; a filter in the other form finds it.
        let r = srv.query("/Users", &[("filter", &format!("userName eq \"{nfd}\""))]).await;
        assert_eq!(r.body["totalResults"], 1, "{}", r.body);
        assert_eq!(r.body["Resources"][0]["userName"], nfc);
    }
}

both_backends! {
    async fn api_fallbacks_answer_in_the_api_error_format(srv) {
        let api = format!("http://{}/api/v1/tenants/{}", srv.addr, srv.tenant);
        let r = srv.send_with(Method::GET, &format!("{api}/nope"), None, &[], None).await;
        assert_eq!(r.status, 404);
        assert_eq!(r.body["error"]["status"], 404, "{}", r.body);
        assert_eq!(r.body["error"]["code"], "not_found", "{}", r.body);
        assert!(r.body.get("schemas").is_none(), "{}", r.body);
        let r = srv.send_with(Method::DELETE, &format!("{api}/check"), None, &[], None).await;
        assert_eq!(r.status, 405);
        assert_eq!(r.body["error"]["code"], "method_not_allowed", "{}", r.body);
        // SCIM paths keep the SCIM error body.
        srv.get("/Nope").await.assert_error(404, None);
        let r = srv.send(Method::DELETE, "/ServiceProviderConfig", None).await;
        r.assert_error(405, None);
    }
}

/// A hostile LDAP "server" on a thread: answers every request with the
/// malformed BindResponse that made ldap3 panic.
fn hostile_ldap() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ldap://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for conn in listener.incoming().take(64) {
            let Ok(mut conn) = conn else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                conn.set_read_timeout(Some(Duration::from_secs(30))).ok();
                for _ in 0..16 {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {
                            if conn
                                .write_all(&[0x30, 0x05, 0x02, 0x01, 0x01, 0x61, 0x00])
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    url
}

/// `serve --log-format json` with a source whose server panics ldap3:
/// every stderr line is JSON (the panic too, through the panic hook), the
/// schedule goes on, and each run is recorded as failed with its lease
/// released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_source_leaves_json_logs_and_a_free_lease() {
    let db = fresh_database(Backend::Sqlite).await;
    let tenant = unique("panic");
    assert_eq!(cli(&db, &["tenant", "create", &tenant]).0, 0);
    let dir = crate::support::test_dir().join(unique("panic"));
    std::fs::create_dir_all(&dir).unwrap();
    let pw = dir.join("pw");
    std::fs::write(&pw, "secret\n").unwrap();
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[[source]]\nname = \"hostile\"\ntenant = \"{tenant}\"\nkind = \"ldap\"\nschedule = \"1s\"\n\
             url = \"{}\"\nbind_dn = \"cn=x,dc=example,dc=org\"\nbind_password = {{ file = \"{}\" }}\n\
             base_dns = [\"dc=example,dc=org\"]\ntimeout = \"5s\"\n",
            hostile_ldap(),
            pw.display()
        ),
    )
    .unwrap();
    let server = JsonServer::start(&db, "info", &["--config", config.to_str().unwrap()]);
    let lines = server.lines.clone();
    // Two failed scheduled runs: the first did not end the schedule.
    let deadline = Instant::now() + Duration::from_secs(60);
    while lines
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("sync run failed"))
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "no failed runs logged: {:?}",
            lines.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (code, out, err) = cli(
        &db,
        &[
            "--config",
            config.to_str().unwrap(),
            "--mappings",
            "/nonexistent",
            "sync",
            "status",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let s: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    assert_eq!(s[0]["last_run"]["outcome"], "failed", "{s}");
    assert!(
        s[0]["last_run"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("panicked"),
        "{s}"
    );
    let lines = server.stop();
    let mut panics = 0;
    for line in lines.iter() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        if v["fields"]["panic"].is_string() {
            panics += 1;
            assert!(
                v["fields"]["location"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("ldap3"),
                "{line}"
            );
            // Logged inside the run's span, with its id.
            assert_eq!(v["span"]["name"], "sync_run", "{line}");
            assert!(
                v["span"]["run_id"]
                    .as_str()
                    .is_some_and(|id| id.len() == 36),
                "{line}"
            );
        }
    }
    assert!(
        panics >= 2,
        "the panics were not logged through tracing: {lines:?}"
    );
}

/// In text mode, colour codes go to a terminal only: a redirected stderr
/// gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_to_a_file_have_no_colour_codes() {
    let db = fresh_database(Backend::Sqlite).await;
    let mut child = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("ROLEBRIDGE_DATABASE_URL", &db)
        .env("RUST_LOG", "info")
        .env_remove("ROLEBRIDGE_CONFIG")
        .env_remove("ROLEBRIDGE_LOG_FORMAT")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn server");
    let stderr = child.stderr.take().unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
        seen.push(line.clone());
        if line.starts_with("rolebridge listening on") || Instant::now() > deadline {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.iter().any(|l| l.contains("INFO")), "{seen:?}");
    for line in &seen {
        assert!(
            !line.contains('\u{1b}'),
            "ANSI escape in a redirected log: {line:?}"
        );
    }
}
