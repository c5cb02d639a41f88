//! The request shapes Okta's SCIM 2.0 provisioning sends, as documented in
//! Okta's "SCIM 2.0 protocol reference" and "Build a SCIM provisioning
//! integration" guides.

use serde_json::json;

use crate::both_backends;
use crate::support::{GROUP, PATCH_OP, USER};

both_backends! {
    async fn okta_user_lifecycle(srv) {
        let probe = srv.query("/Users", &[("filter", "userName eq \"test.user@okta.local\""), ("startIndex", "1"), ("count", "100")]).await;
        assert_eq!(probe.status, 200);
        assert_eq!(probe.body["totalResults"], 0);
        let created = srv.post("/Users", json!({
            "schemas": [USER],
            "userName": "test.user@okta.local",
            "name": {"givenName": "Test", "familyName": "User"},
            "emails": [{"primary": true, "value": "test.user@okta.local", "type": "work"}],
            "displayName": "Test User",
            "locale": "en-US",
            "externalId": "00ujl29u0le5T6Aj10h7",
            "groups": [],
            "password": "1mz050nq",
            "active": true
        })).await;
        assert_eq!(created.status, 201, "{}", created.body);
        assert!(created.body.get("password").is_none());
        let id = created.body["id"].as_str().unwrap().to_string();
        let path = format!("/Users/{id}");
        // PUT of the whole user (Okta sends id and meta back).
        let mut full = created.body.clone();
        full["name"]["givenName"] = json!("Another");
        full["password"] = json!("placeholder");
        let put = srv.put(&path, full).await;
        assert_eq!(put.status, 200, "{}", put.body);
        assert_eq!(put.body["name"]["givenName"], "Another");
        assert_eq!(put.body["id"], id.as_str());
        // Deactivation: the user still GETs 200, with active=false.
        let r = srv.patch(&path, json!({"schemas": [PATCH_OP], "Operations": [{"op": "replace", "value": {"active": false}}]})).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let got = srv.get(&path).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.body["active"], false);
        let inactive = srv.query("/Users", &[("filter", "active eq false")]).await;
        assert_eq!(inactive.body["totalResults"], 1);
    }
}

both_backends! {
    async fn okta_group_push(srv) {
        let a = srv.user("a@okta.local").await;
        let b = srv.user("b@okta.local").await;
        let c = srv.user("c@okta.local").await;
        let created = srv.post("/Groups", json!({"schemas": [GROUP], "displayName": "Test SCIMv2", "members": []})).await;
        assert_eq!(created.status, 201, "{}", created.body);
        let gid = created.body["id"].as_str().unwrap().to_string();
        let path = format!("/Groups/{gid}");
        // Rename, with the id echoed in the value.
        let r = srv.patch(&path, json!({"schemas": [PATCH_OP], "Operations": [{"op": "replace", "value": {"id": gid, "displayName": "Test SCIMv2 renamed"}}]})).await;
        assert!(r.status == 204 || r.status == 200, "{}", r.body);
        assert_eq!(srv.get(&path).await.body["displayName"], "Test SCIMv2 renamed");
        // Members without `type`, with Okta's `display`.
        let r = srv.patch(&path, json!({"schemas": [PATCH_OP], "Operations": [
            {"op": "add", "path": "members", "value": [{"value": a, "display": "a@okta.local"}, {"value": b, "display": "b@okta.local"}]}
        ]})).await;
        assert_eq!(r.status, 204, "{}", r.body);
        let mut ab = vec![a.clone(), b.clone()];
        ab.sort();
        assert_eq!(srv.member_ids(&gid).await, ab);
        // Replace of all members.
        let r = srv.patch(&path, json!({"schemas": [PATCH_OP], "Operations": [
            {"op": "replace", "path": "members", "value": [{"value": c, "display": "c@okta.local"}]}
        ]})).await;
        assert_eq!(r.status, 204, "{}", r.body);
        assert_eq!(srv.member_ids(&gid).await, vec![c.clone()]);
        let r = srv.patch(&path, json!({"schemas": [PATCH_OP], "Operations": [
            {"op": "remove", "path": format!("members[value eq \"{c}\"]")}
        ]})).await;
        assert_eq!(r.status, 204);
        assert!(srv.member_ids(&gid).await.is_empty());
        srv.patch(&path, json!({"schemas": [PATCH_OP], "Operations": [{"op": "add", "path": "members", "value": [{"value": a}]}]})).await;
        // Replace with [] empties the group.
        let r = srv.patch(&path, json!({"schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": "members", "value": []}]})).await;
        assert_eq!(r.status, 204, "{}", r.body);
        assert!(srv.member_ids(&gid).await.is_empty());
    }
}

both_backends! {
    async fn okta_paging_with_count_100(srv) {
        for i in 0..130 {
            srv.user(&format!("okta{i:03}@okta.local")).await;
        }
        let mut all = Vec::new();
        for start in [1, 101] {
            let r = srv.query("/Users", &[("startIndex", &start.to_string()), ("count", "100")]).await;
            assert_eq!(r.status, 200);
            // Integers, not strings.
            assert_eq!(r.body["totalResults"], json!(130));
            assert_eq!(r.body["startIndex"], json!(start));
            assert!(r.body["itemsPerPage"].is_u64());
            for u in r.body["Resources"].as_array().unwrap() {
                all.push(u["id"].as_str().unwrap().to_string());
            }
        }
        assert_eq!(all.len(), 130);
        let mut unique = all.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), 130);
        // The order is stable between identical requests.
        let again = srv.query("/Users", &[("startIndex", "1"), ("count", "100")]).await;
        let ids: Vec<_> = again.body["Resources"].as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap().to_string()).collect();
        assert_eq!(ids, all[..100].to_vec());
    }
}
