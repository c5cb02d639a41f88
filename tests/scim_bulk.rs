//! Bulk (RFC 7644 §3.7): bulkId cross-references, failOnErrors, limits.

use serde_json::json;

use crate::both_backends;
use crate::support::{GROUP, USER};

const BULK: &str = "urn:ietf:params:scim:api:messages:2.0:BulkRequest";

both_backends! {
    async fn bulk_with_references(srv) {
        // The group is listed first but refers to a user created later.
        let r = srv.post("/Bulk", json!({
            "schemas": [BULK],
            "Operations": [
                {"method": "POST", "path": "/Groups", "bulkId": "g1", "data": {
                    "schemas": [GROUP], "displayName": "Tour Guides",
                    "members": [{"type": "User", "value": "bulkId:u1"}]}},
                {"method": "POST", "path": "/Users", "bulkId": "u1", "data": {"schemas": [USER], "userName": "Alice"}},
                {"method": "POST", "path": "/Users", "bulkId": "u2", "data": {"schemas": [USER], "userName": "alice"}},
                {"method": "PATCH", "path": "/Users/bulkId:u1", "data": {
                    "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                    "Operations": [{"op": "add", "path": "title", "value": "Guide"}]}},
                {"method": "DELETE", "path": "/Users/does-not-exist"}
            ]
        })).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["schemas"][0], "urn:ietf:params:scim:api:messages:2.0:BulkResponse");
        let ops = r.body["Operations"].as_array().unwrap();
        assert_eq!(ops.len(), 5);
        assert_eq!(ops[0]["status"], "201", "{}", r.body);
        assert_eq!(ops[1]["status"], "201");
        assert_eq!(ops[2]["status"], "409", "duplicate userName: {}", r.body);
        assert_eq!(ops[2]["response"]["scimType"], "uniqueness");
        assert_eq!(ops[3]["status"], "200");
        assert_eq!(ops[4]["status"], "404");
        let user_loc = ops[1]["location"].as_str().unwrap();
        let user_id = user_loc.rsplit('/').next().unwrap();
        let gid = ops[0]["location"].as_str().unwrap().rsplit('/').next().unwrap().to_string();
        assert_eq!(srv.member_ids(&gid).await, vec![user_id.to_string()]);
        assert_eq!(srv.get(&format!("/Users/{user_id}")).await.body["title"], "Guide");
    }
}

both_backends! {
    async fn bulk_fail_on_errors_and_limits(srv) {
        let r = srv.post("/Bulk", json!({
            "schemas": [BULK],
            "failOnErrors": 1,
            "Operations": [
                {"method": "POST", "path": "/Users", "bulkId": "a", "data": {"schemas": [USER]}},
                {"method": "POST", "path": "/Users", "bulkId": "b", "data": {"schemas": [USER], "userName": "never"}}
            ]
        })).await;
        assert_eq!(r.status, 200);
        let ops = r.body["Operations"].as_array().unwrap();
        assert_eq!(ops.len(), 1, "processing stops after failOnErrors errors: {}", r.body);
        assert_eq!(ops[0]["status"], "400");
        assert_eq!(srv.get("/Users").await.body["totalResults"], 0);
        // A reference to an undefined bulkId fails without being attempted.
        let r = srv.post("/Bulk", json!({"schemas": [BULK], "Operations": [
            {"method": "POST", "path": "/Groups", "bulkId": "g", "data": {"schemas": [GROUP], "displayName": "x", "members": [{"value": "bulkId:ghost"}]}}
        ]})).await;
        assert_eq!(r.body["Operations"][0]["status"], "409", "{}", r.body);
        // Cycles are reported, not looped on.
        let r = srv.post("/Bulk", json!({"schemas": [BULK], "Operations": [
            {"method": "POST", "path": "/Groups", "bulkId": "x", "data": {"schemas": [GROUP], "displayName": "x", "members": [{"value": "bulkId:y"}]}},
            {"method": "POST", "path": "/Groups", "bulkId": "y", "data": {"schemas": [GROUP], "displayName": "y", "members": [{"value": "bulkId:x"}]}}
        ]})).await;
        let ops = r.body["Operations"].as_array().unwrap();
        assert!(ops.iter().all(|o| o["status"] == "409"), "{}", r.body);
        // Limits.
        let many: Vec<_> = (0..1001).map(|i| json!({"method": "DELETE", "path": format!("/Users/{i}")})).collect();
        srv.post("/Bulk", json!({"schemas": [BULK], "Operations": many})).await.assert_error(413, None);
        srv.post("/Bulk", json!({"Operations": []})).await.assert_error(400, Some("invalidSyntax"));
    }
}
