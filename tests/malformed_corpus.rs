//! A corpus of malformed and edge-case requests against the real binary
//! (`serve --log-format json`), on SQLite and PostgreSQL. Every answer must
//! be a 4xx in its API's error format (the SCIM error body under `/scim`,
//! `{"error": ...}` under `/api/v1`), and the server's log must hold no 5xx
//! and no panic.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};

use crate::durability::{cli, JsonServer};
use crate::support::{fresh_database, unique, Backend};

/// One request of the corpus: method, path below the tenant's base (or an
/// absolute path when it starts with `//`), body bytes, content type.
struct Case {
    method: Method,
    path: String,
    body: Option<Vec<u8>>,
    content_type: &'static str,
}

fn case(method: Method, path: &str, body: Option<&str>) -> Case {
    Case {
        method,
        path: path.to_string(),
        body: body.map(|b| b.as_bytes().to_vec()),
        content_type: "application/scim+json",
    }
}

const USER: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
const GROUP: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
const PATCH: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";

fn scim_corpus(user: &str, group: &str) -> Vec<Case> {
    let mut c = Vec::new();
    let post_user = |body: Value| case(Method::POST, "/Users", Some(&body.to_string()));
    // Bodies that are not JSON objects, or not JSON.
    for raw in [
        "",
        "{",
        "[]",
        "null",
        "42",
        "\"x\"",
        "{\"schemas\": [}",
        "\u{feff}{}",
        "{\"a\":1}{\"b\":2}",
        &"[".repeat(5000),
        &format!("{}1{}", "[".repeat(200), "]".repeat(200)),
        "{\"userName\": \"\\ud800\"}",
        "{\"userName\": 1e999999}",
    ] {
        c.push(case(Method::POST, "/Users", Some(raw)));
        c.push(case(Method::POST, "/Groups", Some(raw)));
        c.push(case(Method::PUT, &format!("/Users/{user}"), Some(raw)));
        c.push(case(Method::PATCH, &format!("/Users/{user}"), Some(raw)));
        c.push(case(Method::POST, "/Bulk", Some(raw)));
        c.push(case(Method::POST, "/Users/.search", Some(raw)));
    }
    // Wrong shapes for known attributes.
    for body in [
        json!({"userName": "x"}),
        json!({"schemas": "x", "userName": "x"}),
        json!({"schemas": [GROUP], "userName": "x"}),
        json!({"schemas": [USER]}),
        json!({"schemas": [USER], "userName": 5}),
        json!({"schemas": [USER], "userName": ""}),
        json!({"schemas": [USER], "userName": "a", "active": "maybe"}),
        json!({"schemas": [USER], "userName": "a", "name": "x"}),
        json!({"schemas": [USER], "userName": "a", "name": [1]}),
        json!({"schemas": [USER], "userName": "a", "emails": "x"}),
        json!({"schemas": [USER], "userName": "a", "emails": [{"value": "a", "primary": true}, {"value": "b", "primary": true}]}),
        json!({"schemas": [USER], "userName": "a", "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User": 5}),
        json!({"schemas": [USER], "userName": "a", "urn:example:custom:2.0:User": "not an object"}),
        json!({"schemas": [USER], "userName": "a", "title": "x\u{0}"}),
        json!({"schemas": [USER], "userName": "x".repeat(100_000)}),
        // Incompressible, so PostgreSQL's index could not take it either.
        json!({"schemas": [USER], "userName": (0..3000u32).map(|i| char::from_u32(0x4e00 + (i * 7919) % 20000).unwrap()).collect::<String>()}),
        json!({"schemas": [USER], "userName": "a", "externalId": "e".repeat(513)}),
    ] {
        c.push(post_user(body));
    }
    for body in [
        json!({"schemas": [GROUP]}),
        json!({"schemas": [GROUP], "displayName": "g", "members": "x"}),
        json!({"schemas": [GROUP], "displayName": "g", "members": ["bare-string"]}),
        json!({"schemas": [GROUP], "displayName": "g", "members": [{"value": 5}]}),
        json!({"schemas": [GROUP], "displayName": "g", "members": [{"value": "no-such-user"}]}),
    ] {
        c.push(case(Method::POST, "/Groups", Some(&body.to_string())));
    }
    // PATCH requests that must be refused whole.
    for ops in [
        json!({"Operations": [{"op": "add", "path": "title", "value": "x"}]}),
        json!({"schemas": [PATCH]}),
        json!({"schemas": [PATCH], "Operations": "x"}),
        json!({"schemas": [PATCH], "Operations": [5]}),
        json!({"schemas": [PATCH], "Operations": [{"op": "frobnicate", "path": "title"}]}),
        json!({"schemas": [PATCH], "Operations": [{"op": "remove"}]}),
        json!({"schemas": [PATCH], "Operations": [{"op": "add"}]}),
        json!({"schemas": [PATCH], "Operations": [{"op": "add", "path": "emails[", "value": "x"}]}),
        json!({"schemas": [PATCH], "Operations": [{"op": "add", "path": "]]", "value": "x"}]}),
        json!({"schemas": [PATCH], "Operations": [{"op": "add", "path": "", "value": "x"}]}),
        json!({"schemas": [PATCH], "Operations": [{"op": "add", "path": "urn:", "value": "x"}]}),
        json!({"schemas": [PATCH], "Operations": [{"op": "add", "path": "a..b", "value": "x"}]}),
        json!({"schemas": [PATCH], "Operations": [{"op": "replace", "path": "userName", "value": null}]}),
        json!({"schemas": [PATCH], "Operations": [{"op": "replace", "path": "id", "value": "x"}]}),
        json!({"schemas": [PATCH], "Operations": [{"op": "replace", "path": "active", "value": [true, false]}]}),
        json!({"schemas": [PATCH], "Operations": [{"op": "replace", "path": "emails[value eq]", "value": "x"}]}),
        json!({"schemas": [PATCH], "Operations": [{"op": "replace", "path": "urn:rolebridge:params:sync:1.0:User:source", "value": "x"}]}),
        json!({"schemas": [PATCH], "Operations": [{"op": "replace", "path": "title", "value": "x\u{0}y"}]}),
    ] {
        c.push(case(
            Method::PATCH,
            &format!("/Users/{user}"),
            Some(&ops.to_string()),
        ));
        // userName and active are no Group attributes: on a group those
        // operations are ignored (unknown attributes), not errors.
        let text = ops.to_string();
        if !text.contains("\"userName\"") && !text.contains("\"active\"") {
            c.push(case(
                Method::PATCH,
                &format!("/Groups/{group}"),
                Some(&text),
            ));
        }
    }
    for ops in [
        json!({"schemas": [PATCH], "Operations": [{"op": "replace", "path": "displayName", "value": null}]}),
        json!({"schemas": [PATCH], "Operations": [{"op": "remove", "path": "displayName"}]}),
        json!({"schemas": [PATCH], "Operations": [{"op": "add", "path": "members", "value": "bare"}]}),
        json!({"schemas": [PATCH], "Operations": [{"op": "add", "path": "members", "value": [{"value": "no-such-user"}]}]}),
        json!({"schemas": [PATCH], "Operations": [{"op": "remove", "path": "members[display eq \"x\"]"}]}),
    ] {
        c.push(case(
            Method::PATCH,
            &format!("/Groups/{group}"),
            Some(&ops.to_string()),
        ));
    }
    // Filters, sorting and paging.
    for q in [
        "filter=userName%20eq",
        "filter=userName%20xx%20%22a%22",
        "filter=(userName%20eq%20%22a%22",
        "filter=noSuchAttribute%20eq%20%22a%22",
        "filter=emails%5Btype%20eq%20%22work%22",
        "filter=userName%20eq%20bjensen",
        "filter=title%20eq%20%22a%00%22",
        "filter=title%20eq%20%22a%5Cu0000%22",
        "filter=%5C",
        "filter=%22",
        "filter=%FF%FE",
        "filter=active%20gt%20true",
        "filter=name%20eq%20%22x%22",
        "filter=urn:ietf:params:scim:schemas:extension:enterprise:2.0:User.manager%20eq%20%22x%22",
        "sortBy=emails%5B",
        "sortBy=name",
        "sortBy=noSuch",
        "sortOrder=sideways",
        // (count=-1 and startIndex=-5 are not errors: RFC 7644 §3.4.2.4 reads
        // them as 0 and 1.)
        "count=abc",
        "count=99999999999999999999",
        "startIndex=abc",
    ] {
        c.push(case(Method::GET, &format!("/Users?{q}"), None));
        c.push(case(Method::GET, &format!("/Groups?{q}"), None));
    }
    let deep = format!("{}userName pr{}", "(".repeat(2000), ")".repeat(2000));
    let long = vec!["userName eq \"a\""; 5000].join(" or ");
    for f in [deep, long] {
        let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"], "filter": f});
        c.push(case(
            Method::POST,
            "/Users/.search",
            Some(&body.to_string()),
        ));
        c.push(case(Method::POST, "/.search", Some(&body.to_string())));
    }
    // Paths, ids and methods.
    for (m, p) in [
        (Method::GET, "/Users/%00".to_string()),
        (Method::DELETE, "/Groups/a%00b".to_string()),
        (Method::GET, "/Users/no-such-id".to_string()),
        (Method::DELETE, format!("/Users/{}", "x".repeat(10_000))),
        (Method::GET, "/Users/..%2F..%2Fetc%2Fpasswd".to_string()),
        (Method::GET, "/Nope".to_string()),
        (Method::POST, "/ServiceProviderConfig".to_string()),
        (Method::DELETE, "/Schemas".to_string()),
        (Method::PUT, "/Users".to_string()),
        (Method::GET, "/Schemas/urn:nope".to_string()),
        (Method::GET, "/ResourceTypes/Nope".to_string()),
    ] {
        c.push(case(m, &p, Some("{}")));
    }
    // If-Match that matches nothing.
    let mut stale = case(
        Method::PUT,
        &format!("/Users/{user}"),
        Some(&json!({"schemas": [USER], "userName": "corpus-user"}).to_string()),
    );
    stale.path.push_str("#if-match");
    c.push(stale);
    // Declared as something else than JSON.
    for ct in [
        "text/plain",
        "application/xml",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let mut k = post_user(json!({"schemas": [USER], "userName": "ct"}));
        k.content_type = ct;
        c.push(k);
    }
    // Bulk.
    for body in [
        json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"], "Operations": "x"}),
        json!({"schemas": ["urn:nope"], "Operations": []}),
        json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"], "failOnErrors": -1, "Operations": []}),
        json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:BulkRequest"],
               "Operations": (0..1001).map(|i| json!({"method": "DELETE", "path": format!("/Users/x{i}")})).collect::<Vec<_>>()}),
    ] {
        c.push(case(Method::POST, "/Bulk", Some(&body.to_string())));
    }
    c
}

fn api_corpus() -> Vec<Case> {
    let mut c = Vec::new();
    for raw in [
        "",
        "{",
        "[]",
        "{\"user\": 5, \"permission\": \"x\"}",
        "{\"permission\": \"x\"}",
        "{\"user\": \"a\\u0000\", \"permission\": \"x\"}",
        "{\"user\": \"nobody\", \"permission\": \"x\", \"consistency\": \"sometimes\"}",
        "{\"user\": \"nobody\", \"permission\": \"x\", \"at_least_as_fresh\": \"abc\"}",
        "{\"user\": \"nobody\", \"permission\": \"x\", \"at_least_as_fresh\": 999999999}",
    ] {
        let mut k = case(Method::POST, "//check", Some(raw));
        k.content_type = "application/json";
        c.push(k);
    }
    for raw in [
        json!({"checks": []}).to_string(),
        json!({"checks": (0..1001).map(|_| json!({"user": "a", "permission": "b"})).collect::<Vec<_>>()}).to_string(),
        "{\"checks\": 5}".to_string(),
    ] {
        let mut k = case(Method::POST, "//check/batch", Some(&raw));
        k.content_type = "application/json";
        c.push(k);
    }
    for p in [
        "//users/a%00b/permissions",
        "//users/nobody/permissions",
        "//users/x/permissions?by=nope",
        "//users/x/permissions?consistency=sometimes",
        "//users/x/permissions?at_least_as_fresh=-1",
        "//users/x/permissions?bogus=1",
        "//nope",
    ] {
        c.push(case(Method::GET, p, None));
    }
    c.push(case(Method::DELETE, "//check", None));
    c
}

async fn run_corpus(backend: Backend) {
    let db = fresh_database(backend).await;
    let tenant = unique("corpus");
    assert_eq!(cli(&db, &["tenant", "create", &tenant]).0, 0);
    let token = crate::durability::cli_token(&db, &tenant, "scim");
    let ptoken = crate::durability::cli_token(&db, &tenant, "permissions");
    let server = JsonServer::start(&db, "info", &[]);
    let addr = server.addr.clone();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let base = format!("{addr}/scim/v2/{tenant}");
    let api = format!("{addr}/api/v1/tenants/{tenant}");
    let created = |r: reqwest::Response| async move {
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let user = created(
        client
            .post(format!("{base}/Users"))
            .bearer_auth(&token)
            .header("content-type", "application/scim+json")
            .body(json!({"schemas": [USER], "userName": "corpus-user"}).to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    let group = created(
        client
            .post(format!("{base}/Groups"))
            .bearer_auth(&token)
            .header("content-type", "application/scim+json")
            .body(json!({"schemas": [GROUP], "displayName": "corpus-group"}).to_string())
            .send()
            .await
            .unwrap(),
    )
    .await;
    let started = Instant::now();
    let mut sent = 0;
    for (is_api, c) in scim_corpus(&user, &group)
        .into_iter()
        .map(|c| (false, c))
        .chain(api_corpus().into_iter().map(|c| (true, c)))
    {
        let (path, if_match) = match c.path.strip_suffix("#if-match") {
            Some(p) => (p.to_string(), true),
            None => (c.path.clone(), false),
        };
        let url = match path.strip_prefix("//") {
            Some(rest) => format!("{api}/{rest}"),
            None => format!("{base}{path}"),
        };
        let mut req = client
            .request(c.method.clone(), &url)
            .bearer_auth(if is_api { &ptoken } else { &token });
        if if_match {
            req = req.header("If-Match", "W/\"999\"");
        }
        if let Some(b) = &c.body {
            req = req.header("content-type", c.content_type).body(b.clone());
        }
        let r = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{} {url}: {e}", c.method));
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let sent_body = c
            .body
            .as_deref()
            .map(String::from_utf8_lossy)
            .unwrap_or_default()
            .chars()
            .take(300)
            .collect::<String>();
        let shown = format!(
            "{} {} {sent_body} -> {status} {}",
            c.method,
            url.chars().take(200).collect::<String>(),
            text.chars().take(300).collect::<String>()
        );
        assert!((400..500).contains(&status), "{shown}");
        let body: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{shown}: not JSON ({e})"));
        if is_api {
            assert_eq!(body["error"]["status"], status, "{shown}");
        } else {
            assert_eq!(
                body["schemas"][0], "urn:ietf:params:scim:api:messages:2.0:Error",
                "{shown}"
            );
            assert_eq!(body["status"], status.to_string(), "{shown}");
        }
        sent += 1;
    }
    assert!(sent >= 220, "corpus of {sent}");
    assert!(started.elapsed() < Duration::from_secs(120));
    // Nothing was half-applied: the user and group are as created.
    let r = client
        .get(format!("{base}/Users"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    let all: Value = r.json().await.unwrap();
    assert_eq!(all["totalResults"], 1, "{all}");
    assert_eq!(all["Resources"][0]["meta"]["version"], "W/\"1\"", "{all}");
    let lines = server.stop();
    for line in lines.iter() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(v["fields"]["panic"].is_null(), "panic logged: {line}");
        assert_ne!(
            v["fields"]["message"], "request failed",
            "5xx logged: {line}"
        );
        assert!(!line.contains("\"status\":5"), "5xx logged: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_and_log_no_5xx_sqlite() {
    run_corpus(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_and_log_no_5xx_postgres() {
    run_corpus(Backend::Postgres).await;
}
