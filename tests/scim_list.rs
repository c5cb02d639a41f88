//! Filtering (run in SQL), sorting, paging with a stable order, `count=0`,
//! `attributes`/`excludedAttributes`, and `POST /.search`.

use serde_json::{json, Value};

use crate::both_backends;
use crate::support::{TestServer, ENTERPRISE, USER};

async fn seed(srv: &TestServer) {
    let users = [
        json!({"schemas": [USER, ENTERPRISE], "userName": "alice", "displayName": "Alice Smith", "title": "Engineer",
               "name": {"givenName": "Alice", "familyName": "Smith"}, "active": true,
               "emails": [{"value": "alice@corp.example", "type": "work"}, {"value": "alice@home.example", "type": "home"}],
               ENTERPRISE: {"employeeNumber": "100", "department": "R&D"}}),
        json!({"schemas": [USER, ENTERPRISE], "userName": "Bob", "displayName": "bob jones",
               "name": {"givenName": "Bob", "familyName": "Jones"}, "active": false,
               "emails": [{"value": "bob@home.example", "type": "work"}, {"value": "bob@corp.example", "type": "home"}],
               ENTERPRISE: {"employeeNumber": "200", "department": "Sales"}}),
        json!({"schemas": [USER], "userName": "carol", "name": {"givenName": "Carol"},
               "emails": [{"value": "carol@corp.example", "type": "work"}]}),
    ];
    for u in users {
        let r = srv.post("/Users", u).await;
        assert_eq!(r.status, 201, "{}", r.body);
    }
}

fn names(body: &Value) -> Vec<String> {
    body["Resources"]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|r| r["userName"].as_str().unwrap_or("?").to_string())
        .collect()
}

async fn check(srv: &TestServer, filter: &str, expected: &[&str]) {
    let r = srv
        .query("/Users", &[("filter", filter), ("sortBy", "userName")])
        .await;
    assert_eq!(r.status, 200, "{filter}: {}", r.body);
    let mut got = names(&r.body);
    got.sort_by_key(|n| n.to_lowercase());
    assert_eq!(got, expected, "filter {filter}");
    assert_eq!(r.body["totalResults"], expected.len(), "filter {filter}");
}

both_backends! {
    async fn filter_grammar(srv) {
        seed(&srv).await;
        check(&srv, "userName eq \"ALICE\"", &["alice"]).await;
        check(&srv, "userName Eq \"bob\"", &["Bob"]).await;
        check(&srv, "userName ne \"alice\"", &["Bob", "carol"]).await;
        check(&srv, "displayName co \"SMITH\"", &["alice"]).await;
        check(&srv, "userName sw \"b\"", &["Bob"]).await;
        check(&srv, "userName ew \"OL\"", &["carol"]).await;
        check(&srv, "title pr", &["alice"]).await;
        check(&srv, "not (title pr)", &["Bob", "carol"]).await;
        check(&srv, "userName gt \"b\"", &["Bob", "carol"]).await;
        check(&srv, "userName le \"bob\"", &["alice", "Bob"]).await;
        check(&srv, "active eq true", &["alice"]).await;
        check(&srv, "active eq false", &["Bob"]).await;
        check(&srv, "name.givenName eq \"carol\"", &["carol"]).await;
        check(&srv, "emails.value co \"@corp\"", &["alice", "Bob", "carol"]).await;
        check(&srv, "emails[type eq \"work\" and value co \"@corp\"]", &["alice", "carol"]).await;
        check(&srv, "emails[type eq \"work\" and value co \"@home\"]", &["Bob"]).await;
        check(&srv, "emails eq \"bob@corp.example\"", &["Bob"]).await;
        check(&srv, &format!("{ENTERPRISE}:employeeNumber eq \"200\""), &["Bob"]).await;
        check(&srv, &format!("{ENTERPRISE}:department sw \"r\""), &["alice"]).await;
        check(&srv, "userName eq \"alice\" or userName eq \"carol\" and active eq true", &["alice"]).await;
        check(&srv, "(userName eq \"alice\" or userName eq \"carol\") and title pr", &["alice"]).await;
        check(&srv, "meta.created gt \"2000-01-01T00:00:00Z\"", &["alice", "Bob", "carol"]).await;
        check(&srv, "meta.lastModified lt \"2000-01-01T00:00:00Z\"", &[]).await;
        check(&srv, "urn:ietf:params:scim:schemas:core:2.0:User:name.familyName eq \"jones\"", &["Bob"]).await;
        // externalId and id are case-exact.
        let alice = srv.query("/Users", &[("filter", "userName eq \"alice\"")]).await;
        let id = alice.body["Resources"][0]["id"].as_str().unwrap().to_string();
        check(&srv, &format!("id eq \"{id}\""), &["alice"]).await;
        check(&srv, &format!("id eq \"{}\"", id.to_uppercase()), &[]).await;
    }
}

both_backends! {
    async fn invalid_filters_are_400_invalid_filter(srv) {
        for bad in [
            "userName eq",
            "userName xx \"a\"",
            "(userName eq \"a\"",
            "noSuchAttribute eq \"a\"",
            "emails[type eq \"work\"",
            "userName eq \"a\" trailing",
            "active gt true",
            // A SCIM message URN and the dot-for-colon typo name no schema
            // (`urn:nope:Thing:attr` would be a custom extension).
            "urn:ietf:params:scim:api:messages:2.0:ListResponse:attr eq \"x\"",
            "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User.manager eq \"x\"",
            "name eq \"complex\"",
        ] {
            srv.query("/Users", &[("filter", bad)]).await.assert_error(400, Some("invalidFilter"));
        }
    }
}

both_backends! {
    async fn sorting_and_stable_paging(srv) {
        for i in 0..25 {
            srv.user(&format!("user{:02}", (i * 7) % 25)).await;
        }
        let mut seen = Vec::new();
        let mut start = 1;
        loop {
            let r = srv.query("/Users", &[("startIndex", &start.to_string()), ("count", "10")]).await;
            assert_eq!(r.status, 200);
            assert!(r.body["totalResults"].is_i64() && r.body["startIndex"].is_i64() && r.body["itemsPerPage"].is_i64());
            assert_eq!(r.body["totalResults"], 25);
            assert_eq!(r.body["startIndex"], start);
            let page = names(&r.body);
            assert_eq!(r.body["itemsPerPage"], page.len());
            if page.is_empty() {
                break;
            }
            seen.extend(page);
            start += 10;
        }
        assert_eq!(seen.len(), 25);
        let mut dedup = seen.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), 25, "paging repeated or skipped users");

        let asc = srv.query("/Users", &[("sortBy", "userName"), ("count", "3")]).await;
        assert_eq!(names(&asc.body), ["user00", "user01", "user02"]);
        let desc = srv.query("/Users", &[("sortBy", "userName"), ("sortOrder", "descending"), ("count", "2")]).await;
        assert_eq!(names(&desc.body), ["user24", "user23"]);
        srv.query("/Users", &[("sortOrder", "sideways"), ("sortBy", "userName")]).await.assert_error(400, Some("invalidValue"));

        let zero = srv.query("/Users", &[("count", "0")]).await;
        assert_eq!(zero.body["totalResults"], 25);
        assert_eq!(zero.body["itemsPerPage"], 0);
        assert!(zero.body["Resources"].as_array().unwrap().is_empty());
        let past = srv.query("/Users", &[("startIndex", "100")]).await;
        assert_eq!(past.body["itemsPerPage"], 0);
        srv.query("/Users", &[("count", "ten")]).await.assert_error(400, Some("invalidValue"));
    }
}

both_backends! {
    async fn projection(srv) {
        seed(&srv).await;
        let r = srv.query("/Users", &[("filter", "userName eq \"alice\""), ("attributes", "userName,name.givenName")]).await;
        let u = &r.body["Resources"][0];
        assert_eq!(u["userName"], "alice");
        assert_eq!(u["name"], json!({"givenName": "Alice"}));
        assert!(u.get("emails").is_none() && u.get("title").is_none(), "{u}");
        assert!(u["id"].is_string(), "id is always returned");
        let r = srv.query("/Users", &[("filter", "userName eq \"alice\""), ("excludedAttributes", "emails,name")]).await;
        let u = &r.body["Resources"][0];
        assert!(u.get("emails").is_none() && u.get("name").is_none());
        assert_eq!(u["title"], "Engineer");
        let r = srv.query("/Users", &[("filter", "userName eq \"alice\""), ("attributes", &format!("{ENTERPRISE}:employeeNumber"))]).await;
        assert_eq!(r.body["Resources"][0][ENTERPRISE], json!({"employeeNumber": "100"}), "{}", r.body);
    }
}

both_backends! {
    async fn search_by_post(srv) {
        seed(&srv).await;
        let r = srv
            .post("/Users/.search", json!({
                "schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
                "filter": "emails[type eq \"work\"]",
                "sortBy": "userName",
                "sortOrder": "descending",
                "startIndex": 1,
                "count": 2,
                "attributes": ["userName"]
            }))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(names(&r.body), ["carol", "Bob"]);
        assert_eq!(r.body["totalResults"], 3);
        assert!(r.body["Resources"][0].get("emails").is_none());
        srv.post("/Users/.search", json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"], "filter": "bad ("}))
            .await
            .assert_error(400, Some("invalidFilter"));
        srv.post("/Users/.search", json!({"filter": "userName pr"})).await.assert_error(400, Some("invalidSyntax"));
    }
}

both_backends! {
    async fn root_search_spans_users_and_groups(srv) {
        seed(&srv).await;
        srv.group("admins").await;
        let search = |body: serde_json::Value| {
            let mut b = body;
            b["schemas"] = json!(["urn:ietf:params:scim:api:messages:2.0:SearchRequest"]);
            srv.post("/.search", b)
        };
        let all = search(json!({})).await;
        assert_eq!(all.status, 200, "{}", all.body);
        assert_eq!(all.body["totalResults"], 4);
        // Paging runs across the two types.
        let page = search(json!({"startIndex": 3, "count": 2, "attributes": ["displayName"]})).await;
        let items = page.body["Resources"].as_array().unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[1]["displayName"], "admins");
        assert!(items[1].get("members").is_none());
        // An attribute only Users have matches no Group; one no type has is an error.
        let users = search(json!({"filter": "userName sw \"a\""})).await;
        assert_eq!(users.body["totalResults"], 1);
        let groups = search(json!({"filter": "displayName eq \"admins\""})).await;
        assert_eq!(groups.body["totalResults"], 1);
        search(json!({"filter": "nothing eq 1"})).await.assert_error(400, Some("invalidFilter"));
    }
}
