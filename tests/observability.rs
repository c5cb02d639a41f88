//! `/metrics` per route template, `/readyz`, and JSON logs that never carry a
//! token.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::durability::{bin, cli};
use crate::support::{fresh_database, Backend, TestServer, USER};

async fn metrics(srv: &TestServer) -> String {
    let r = srv
        .client
        .get(format!("http://{}/metrics", srv.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    r.text().await.unwrap()
}

/// The value of the sample named exactly `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

crate::both_backends! {
    async fn metrics_count_requests_per_route_template(srv) {
        let a = srv.user("metrics.a").await;
        let b = srv.user("metrics.b").await;
        assert_eq!(srv.get(&format!("/Users/{a}")).await.status, 200);
        assert_eq!(srv.get(&format!("/Users/{b}")).await.status, 200);
        assert_eq!(srv.get("/Users/no-such-id").await.status, 404);
        let text = metrics(&srv).await;
        let route = "/scim/v2/{tenant}/Users/{id}";
        let ok = format!(r#"method="GET",route="{route}",status="200""#);
        assert_eq!(sample(&text, &format!("rolebridge_http_requests_total{{{ok}}}")), Some(2.0), "{text}");
        assert_eq!(
            sample(&text, &format!(r#"rolebridge_http_requests_total{{method="GET",route="{route}",status="404"}}"#)),
            Some(1.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, &format!("rolebridge_http_request_duration_seconds_count{{{ok}}}")),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            sample(&text, &format!(r#"rolebridge_http_request_duration_seconds_bucket{{{ok},le="+Inf"}}"#)),
            Some(2.0),
            "{text}"
        );
        assert_eq!(
            sample(
                &text,
                r#"rolebridge_http_requests_total{method="POST",route="/scim/v2/{tenant}/Users",status="201"}"#
            ),
            Some(2.0),
            "{text}"
        );
        // SCIM operations per tenant and operation.
        let ops = |op: &str| format!(r#"rolebridge_scim_operations_total{{operation="{op}",tenant="{}"}}"#, srv.tenant);
        assert_eq!(sample(&text, &ops("POST /Users")), Some(2.0), "{text}");
        assert_eq!(sample(&text, &ops("GET /Users/{id}")), Some(3.0), "{text}");
        // Raw paths never become labels.
        assert!(!text.contains(&a) && !text.contains("no-such-id"), "{text}");
        assert!(!text.contains(&format!("/scim/v2/{}/", srv.tenant)), "{text}");
        // The application's metrics follow the HTTP ones.
        assert!(text.contains("# TYPE rolebridge_mapping_refusals"), "{text}");
        // Unmatched paths share one label.
        let r = srv.client.get(format!("http://{}/nope/{a}", srv.addr)).send().await.unwrap();
        assert_eq!(r.status(), 404);
        let text = metrics(&srv).await;
        assert!(text.contains(r#"route="unmatched",status="404""#), "{text}");
    }
}

crate::both_backends! {
    async fn readyz_follows_the_store(srv) {
        let url = format!("http://{}/readyz", srv.addr);
        let r = srv.client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.json::<Value>().await.unwrap()["status"], "ready");
        srv.app.store().close().await;
        let r = srv.client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 503);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], "unavailable");
        assert_eq!(body["failing"], "store");
        // Liveness does not depend on the store.
        let r = srv.client.get(format!("http://{}/healthz", srv.addr)).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
}

/// `serve --log-format json` at debug level: every log line is a JSON
/// object, and neither a valid token nor a rejected one appears in any line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_never_contain_tokens() {
    let db = fresh_database(Backend::Sqlite).await;
    let tenant = crate::support::unique("logs");
    assert_eq!(cli(&db, &["tenant", "create", &tenant]).0, 0);
    let token = crate::durability::cli_token(&db, &tenant, "scim");
    let secret = token
        .split_once('.')
        .expect("rb_<id>.<secret>")
        .1
        .to_string();
    let bogus_secret = "Zm9yZ2VkLXNlY3JldC10aGF0LW11c3Qtbm90LWxlYWs";

    let server = crate::durability::JsonServer::start(&db, "debug", &[]);
    let addr = server.addr.clone();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let base = format!("{addr}/scim/v2/{tenant}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let r = client
        .post(format!("{base}/Users"))
        .bearer_auth(&token)
        .header("content-type", "application/scim+json")
        .body(
            json!({"schemas": [USER], "userName": "logs.user", "password": "Pa55-word!"})
                .to_string(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    for bad in [
        format!("rb_nope.{bogus_secret}"),
        format!("{}.{bogus_secret}", token.split_once('.').unwrap().0),
    ] {
        let r = client
            .get(format!("{base}/Users"))
            .bearer_auth(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    // Every request gets an id, echoed back (the client's own when sent).
    let r = client
        .get(format!("{base}/Users"))
        .bearer_auth(&token)
        .header("x-request-id", "req-7f3a")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "req-7f3a");
    let r = client.get(format!("{addr}/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["x-request-id"].to_str().unwrap().len() == 36,
        "{:?}",
        r.headers()
    );
    assert!(Instant::now() < deadline);
    let lines = server.stop();
    let mut json_lines = 0;
    for line in lines.iter() {
        for needle in [secret.as_str(), bogus_secret, "Pa55-word!"] {
            assert!(!line.contains(needle), "secret in log line: {line}");
        }
        // Every line is JSON in this mode, the start-up line included.
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        json_lines += 1;
    }
    // At debug level, requests produce log lines: the check saw real ones.
    assert!(json_lines >= 3, "{lines:?}");
    // Lines logged while serving a request carry its span: id and tenant.
    let in_request = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["span"]["request_id"] == "req-7f3a")
        .unwrap_or_else(|| panic!("no line in the request's span: {lines:?}"));
    assert_eq!(
        in_request["span"]["tenant"],
        tenant.as_str(),
        "{in_request}"
    );
}

#[test]
fn unknown_log_format_is_a_one_line_error() {
    let out = Command::new(bin())
        .args(["tenant", "list", "--log-format", "xml"])
        .env_remove("ROLEBRIDGE_LOG_FORMAT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("xml"), "{err}");
}
