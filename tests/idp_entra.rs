//! The request shapes Microsoft Entra ID's provisioning service sends, as
//! documented in "Tutorial: Develop and plan provisioning for a SCIM
//! endpoint in Microsoft Entra ID" and its known-issues page.

use serde_json::json;

use crate::both_backends;
use crate::support::{ENTERPRISE, GROUP, PATCH_OP, USER};

const ADSCIM: &str = "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group";

both_backends! {
    async fn entra_user_lifecycle(srv) {
        // Probe before create: 200 and an empty list, never 404.
        let probe = srv.query("/Users", &[("filter", "userName eq \"Test_User_dfeef4c5-5681-4387-b016-bdf221e82081\"")]).await;
        assert_eq!(probe.status, 200);
        assert_eq!(probe.body["totalResults"], 0);
        assert_eq!(probe.body["Resources"], json!([]));
        let created = srv.post("/Users", json!({
            "schemas": [USER, ENTERPRISE],
            "externalId": "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef",
            "userName": "Test_User_ab6490ee-1e48-479e-a20b-2d77186b5dd1",
            "active": true,
            "emails": [{"primary": true, "type": "work", "value": "Test_User_fd0ea19b-0777-472c-9f96-4f70d2226f2e@testuser.com"}],
            "meta": {"resourceType": "User"},
            "name": {"formatted": "givenName familyName", "familyName": "familyName", "givenName": "givenName"},
            "roles": []
        })).await;
        assert_eq!(created.status, 201, "{}", created.body);
        let id = created.body["id"].as_str().unwrap().to_string();
        let path = format!("/Users/{id}");
        // Capitalised ops, valuePath with sub-attribute.
        let r = srv.patch(&path, json!({"schemas": [PATCH_OP], "Operations": [
            {"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "updatedEmail@microsoft.com"},
            {"op": "Replace", "path": "name.familyName", "value": "updatedFamilyName"}
        ]})).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["emails"][0]["value"], "updatedEmail@microsoft.com");
        assert_eq!(r.body["name"]["familyName"], "updatedFamilyName");
        // Booleans as strings, in a path and path-less.
        let r = srv.patch(&path, json!({"schemas": [PATCH_OP], "Operations": [{"op": "Replace", "path": "active", "value": "False"}]})).await;
        assert_eq!(r.body["active"], false, "{}", r.body);
        let r = srv.patch(&path, json!({"schemas": [PATCH_OP], "Operations": [{"op": "Replace", "value": {"active": "True"}}]})).await;
        assert_eq!(r.body["active"], true, "{}", r.body);
        // Path-less replace with dotted and URN-qualified keys.
        let r = srv.patch(&path, json!({"schemas": [PATCH_OP], "Operations": [{"op": "replace", "value": {
            "name.givenName": "Gina",
            format!("{ENTERPRISE}:employeeNumber"): "E-1234",
            format!("{ENTERPRISE}:manager"): {"value": "mgr-1"},
            "displayName": "Gina F"
        }}]})).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body["name"]["givenName"], "Gina");
        assert_eq!(r.body["name"]["familyName"], "updatedFamilyName");
        assert_eq!(r.body[ENTERPRISE]["employeeNumber"], "E-1234");
        assert_eq!(r.body[ENTERPRISE]["manager"]["value"], "mgr-1");
        assert_eq!(r.body["displayName"], "Gina F");
        // The filter finds the user by its new values.
        let found = srv.query("/Users", &[("filter", &format!("{ENTERPRISE}:employeeNumber eq \"E-1234\""))]).await;
        assert_eq!(found.body["totalResults"], 1);
    }
}

both_backends! {
    async fn entra_add_creates_missing_email_entry(srv) {
        let id = srv.user("noemail").await;
        for op in ["Add", "replace"] {
            let address = format!("{op}@contoso.example");
            let r = srv.patch(&format!("/Users/{id}"), json!({"schemas": [PATCH_OP], "Operations": [
                {"op": op, "path": "emails[type eq \"work\"].value", "value": address}
            ]})).await;
            assert_eq!(r.status, 200, "{op}: {}", r.body);
            let emails = r.body["emails"].as_array().unwrap();
            assert_eq!(emails.len(), 1, "{}", r.body);
            assert_eq!(emails[0]["type"], "work");
            assert_eq!(emails[0]["value"], address.as_str());
        }
    }
}

both_backends! {
    async fn entra_group_lifecycle(srv) {
        let u1 = srv.user("member1").await;
        let u2 = srv.user("member2").await;
        let probe = srv.query("/Groups", &[("excludedAttributes", "members"), ("filter", "displayName eq \"displayName\"")]).await;
        assert_eq!(probe.status, 200);
        assert_eq!(probe.body["totalResults"], 0);
        let created = srv.post("/Groups", json!({
            "schemas": [GROUP, ADSCIM],
            "externalId": "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159",
            "displayName": "displayName",
            "meta": {"resourceType": "Group"}
        })).await;
        assert_eq!(created.status, 201, "{}", created.body);
        assert!(created.body["schemas"].as_array().unwrap().contains(&json!(ADSCIM)), "{}", created.body);
        let gid = created.body["id"].as_str().unwrap().to_string();
        let path = format!("/Groups/{gid}");
        let found = srv.query("/Groups", &[("excludedAttributes", "members"), ("filter", "displayName eq \"displayName\"")]).await;
        assert_eq!(found.body["totalResults"], 1);
        assert!(found.body["Resources"][0].get("members").is_none());
        let one = srv.query(&path, &[("excludedAttributes", "members")]).await;
        assert_eq!(one.status, 200);
        assert!(one.body.get("members").is_none());
        // Add members with `$ref: null`, capitalised op.
        let r = srv.patch(&path, json!({"schemas": [PATCH_OP], "Operations": [
            {"op": "Add", "path": "members", "value": [{"$ref": null, "value": u1}, {"$ref": null, "value": u2}]}
        ]})).await;
        assert_eq!(r.status, 204, "{}", r.body);
        assert_eq!(srv.member_ids(&gid).await.len(), 2);
        // Remove by filter path...
        let r = srv.patch(&path, json!({"schemas": [PATCH_OP], "Operations": [
            {"op": "Remove", "path": format!("members[value eq \"{u1}\"]")}
        ]})).await;
        assert_eq!(r.status, 204, "{}", r.body);
        assert_eq!(srv.member_ids(&gid).await, vec![u2.clone()]);
        // ...and by value array.
        let r = srv.patch(&path, json!({"schemas": [PATCH_OP], "Operations": [
            {"op": "Remove", "path": "members", "value": [{"$ref": null, "value": u2}]}
        ]})).await;
        assert_eq!(r.status, 204, "{}", r.body);
        assert!(srv.member_ids(&gid).await.is_empty());
        let r = srv.patch(&path, json!({"schemas": [PATCH_OP], "Operations": [
            {"op": "Replace", "path": "displayName", "value": "1879db59-3bdf-4490-ad68-ab880a269474updatedDisplayName"}
        ]})).await;
        assert_eq!(r.status, 204);
        assert_eq!(srv.get(&path).await.body["displayName"], "1879db59-3bdf-4490-ad68-ab880a269474updatedDisplayName");
        assert_eq!(srv.delete(&path).await.status, 204);
    }
}
