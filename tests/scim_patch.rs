//! PATCH: add, replace, remove with and without path, valuePath filters,
//! extension paths, mutability and atomicity.

use serde_json::{json, Value};

use crate::both_backends;
use crate::support::{TestServer, ENTERPRISE, PATCH_OP, USER};

fn ops(list: Value) -> Value {
    json!({"schemas": [PATCH_OP], "Operations": list})
}

async fn rich_user(srv: &TestServer) -> String {
    let r = srv
        .post("/Users", json!({
            "schemas": [USER, ENTERPRISE],
            "userName": "patchme",
            "name": {"givenName": "Pat", "familyName": "Ch"},
            "emails": [{"value": "p@work.example", "type": "work", "primary": true}, {"value": "p@home.example", "type": "home"}],
            "addresses": [{"type": "work", "streetAddress": "1 Main St"}],
            ENTERPRISE: {"department": "Ops"}
        }))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["id"].as_str().unwrap().to_string()
}

both_backends! {
    async fn add_replace_remove(srv) {
        let id = rich_user(&srv).await;
        let path = format!("/Users/{id}");
        let r = srv.patch(&path, ops(json!([
            {"op": "add", "path": "title", "value": "Boss"},
            {"op": "replace", "path": "name.familyName", "value": "Smith"},
            {"op": "add", "path": "emails", "value": [{"value": "p@other.example", "type": "other"}]},
            {"op": "replace", "path": "emails[type eq \"home\"].value", "value": "p@newhome.example"},
            {"op": "remove", "path": "addresses[type eq \"work\"]"},
            {"op": "replace", "path": format!("{ENTERPRISE}:department"), "value": "Finance"},
            {"op": "add", "path": format!("{ENTERPRISE}:manager.value"), "value": "m-1"}
        ]))).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let u = &r.body;
        assert_eq!(u["title"], "Boss");
        assert_eq!(u["name"]["familyName"], "Smith");
        assert_eq!(u["name"]["givenName"], "Pat");
        assert_eq!(u["emails"].as_array().unwrap().len(), 3);
        assert!(u["emails"].as_array().unwrap().iter().any(|e| e["value"] == "p@newhome.example" && e["type"] == "home"));
        assert!(u.get("addresses").is_none() || u["addresses"] == json!([]), "{u}");
        assert_eq!(u[ENTERPRISE]["department"], "Finance");
        assert_eq!(u[ENTERPRISE]["manager"]["value"], "m-1");
        assert_eq!(u["meta"]["version"], "W/\"2\"");

        // Without a path: the value is an object of attributes.
        let r = srv.patch(&path, ops(json!([
            {"op": "replace", "value": {"displayName": "Pat C", "nickName": "pc"}},
            {"op": "add", "value": {"locale": "en-US"}}
        ]))).await;
        assert_eq!(r.body["displayName"], "Pat C");
        assert_eq!(r.body["locale"], "en-US");
        // Remove a whole attribute, then a multi-valued one by filter.
        let r = srv.patch(&path, ops(json!([
            {"op": "remove", "path": "nickName"},
            {"op": "remove", "path": "emails[type eq \"other\"]"}
        ]))).await;
        assert!(r.body.get("nickName").is_none());
        assert_eq!(r.body["emails"].as_array().unwrap().len(), 2);
    }
}

both_backends! {
    async fn patch_errors_and_atomicity(srv) {
        let id = rich_user(&srv).await;
        let path = format!("/Users/{id}");
        let before = srv.get(&path).await.body;
        // The second operation fails: nothing is applied.
        srv.patch(&path, ops(json!([
            {"op": "replace", "path": "title", "value": "Changed"},
            {"op": "replace", "path": "emails[type eq \"work\"", "value": 1}
        ]))).await.assert_error(400, Some("invalidPath"));
        assert_eq!(srv.get(&path).await.body, before, "a failed PATCH changed the user");
        srv.patch(&path, ops(json!([{"op": "remove"}]))).await.assert_error(400, Some("noTarget"));
        srv.patch(&path, ops(json!([{"op": "replace", "path": "id", "value": "x"}]))).await.assert_error(400, Some("mutability"));
        srv.patch(&path, ops(json!([{"op": "replace", "path": "groups", "value": []}]))).await.assert_error(400, Some("mutability"));
        srv.patch(&path, ops(json!([{"op": "remove", "path": "userName"}]))).await.assert_error(400, Some("invalidValue"));
        srv.patch(&path, ops(json!([{"op": "replace", "path": "emails[type eq ", "value": "x"}]))).await.assert_error(400, Some("invalidPath"));
        srv.patch(&path, ops(json!([{"op": "frobnicate", "path": "title", "value": "x"}]))).await.assert_error(400, Some("invalidSyntax"));
        srv.patch(&path, json!({"Operations": [{"op": "add", "path": "title", "value": "x"}]})).await.assert_error(400, Some("invalidSyntax"));
        srv.patch(&path, ops(json!([{"op": "replace", "path": "active", "value": "sometimes"}]))).await.assert_error(400, Some("invalidValue"));
        // Renaming onto a taken userName is 409 and rolls back.
        srv.user("taken").await;
        srv.patch(&path, ops(json!([{"op": "replace", "path": "userName", "value": "TAKEN"}]))).await.assert_error(409, Some("uniqueness"));
        assert_eq!(srv.get(&path).await.body, before);
        srv.patch("/Users/does-not-exist", ops(json!([{"op": "add", "path": "title", "value": "x"}]))).await.assert_error(404, None);
    }
}

both_backends! {
    async fn primary_is_exclusive(srv) {
        let id = rich_user(&srv).await;
        let r = srv.patch(&format!("/Users/{id}"), ops(json!([
            {"op": "replace", "path": "emails[type eq \"home\"].primary", "value": true}
        ]))).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let primaries: Vec<_> = r.body["emails"].as_array().unwrap().iter().filter(|e| e["primary"] == true).collect();
        assert_eq!(primaries.len(), 1, "{}", r.body);
        assert_eq!(primaries[0]["type"], "home");
    }
}
