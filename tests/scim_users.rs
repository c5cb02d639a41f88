//! Users: CRUD, meta and ETags, uniqueness, schema-driven round-trip,
//! write-only password, tenant isolation.

use reqwest::Method;
use serde_json::json;

use crate::both_backends;
use crate::support::{ENTERPRISE, USER};

both_backends! {
    async fn create_get_replace_delete(srv) {
        let created = srv
            .post("/Users", json!({
                "schemas": [USER, ENTERPRISE],
                "userName": "bjensen@example.com",
                "externalId": "bjensen",
                "name": {"givenName": "Barbara", "familyName": "Jensen"},
                "emails": [{"value": "bjensen@example.com", "type": "work", "primary": true}],
                ENTERPRISE: {"employeeNumber": "701984", "manager": {"value": "26118915-6090-4610-87e4-49d8ca9f808d"}},
                "active": true
            }))
            .await;
        assert_eq!(created.status, 201, "{}", created.body);
        let id = created.body["id"].as_str().unwrap().to_string();
        let meta = &created.body["meta"];
        assert_eq!(meta["resourceType"], "User");
        assert_eq!(meta["version"], "W/\"1\"");
        assert_eq!(meta["created"], meta["lastModified"]);
        assert_eq!(meta["location"], format!("{}/Users/{id}", srv.base));
        assert_eq!(created.header("location"), Some(format!("{}/Users/{id}", srv.base).as_str()));
        assert_eq!(created.header("etag"), Some("W/\"1\""));
        assert_eq!(created.header("content-type"), Some("application/scim+json"));
        assert_eq!(created.body[ENTERPRISE]["employeeNumber"], "701984");

        let got = srv.get(&format!("/Users/{id}")).await;
        assert_eq!(got.status, 200);
        assert_eq!(got.body["name"]["givenName"], "Barbara");
        assert_eq!(got.body["emails"][0]["primary"], true);

        let replaced = srv
            .put(&format!("/Users/{id}"), json!({
                "schemas": [USER],
                "userName": "bjensen@example.com",
                "name": {"givenName": "Babs"},
                "active": false
            }))
            .await;
        assert_eq!(replaced.status, 200, "{}", replaced.body);
        assert_eq!(replaced.body["meta"]["version"], "W/\"2\"");
        assert_eq!(replaced.body["meta"]["created"], meta["created"]);
        assert!(replaced.body.get("emails").is_none(), "PUT replaces: {}", replaced.body);
        assert_eq!(replaced.body["active"], false);

        let deleted = srv.delete(&format!("/Users/{id}")).await;
        assert_eq!(deleted.status, 204);
        srv.get(&format!("/Users/{id}")).await.assert_error(404, None);
        srv.delete(&format!("/Users/{id}")).await.assert_error(404, None);
    }
}

both_backends! {
    async fn user_name_is_unique_case_insensitively(srv) {
        srv.user("Alice@Example.com").await;
        let dup = srv
            .post("/Users", json!({"schemas": [USER], "userName": "alice@example.COM"}))
            .await;
        dup.assert_error(409, Some("uniqueness"));
        // Renaming another user onto a taken name is refused too.
        let bob = srv.user("bob@example.com").await;
        srv.put(&format!("/Users/{bob}"), json!({"schemas": [USER], "userName": "ALICE@example.com"}))
            .await
            .assert_error(409, Some("uniqueness"));
    }
}

both_backends! {
    async fn extension_attributes_round_trip_and_unknown_ones_are_dropped(srv) {
        const CUSTOM: &str = "urn:example:custom:2.0:User";
        let body = json!({
            "schemas": [USER, ENTERPRISE, CUSTOM],
            "userName": "roundtrip",
            CUSTOM: {"badge": {"color": "blue", "levels": [1, 2, 3]}},
            "nickName": "rt",
            "x509Certificates": [{"value": "MIIDQzCCAqygAwIBAgICEAAwDQYJ"}],
            ENTERPRISE: {"costCenter": "4130", "unknownEnterpriseField": "dropped"},
            "notAnAttribute": "dropped",
            "name": {"givenName": "R", "nick": "dropped"}
        });
        let r = srv.post("/Users", body.clone()).await;
        assert_eq!(r.status, 201, "{}", r.body);
        let got = srv.get(&format!("/Users/{}", r.body["id"].as_str().unwrap())).await;
        for key in [CUSTOM, "nickName", "x509Certificates"] {
            assert_eq!(got.body[key], body[key], "{key} lost: {}", got.body);
        }
        assert_eq!(got.body["schemas"], body["schemas"]);
        // What no published schema defines is not stored.
        assert_eq!(got.body[ENTERPRISE], json!({"costCenter": "4130"}), "{}", got.body);
        assert!(got.body.get("notAnAttribute").is_none(), "{}", got.body);
        assert_eq!(got.body["name"], json!({"givenName": "R"}), "{}", got.body);
        // A custom extension sent without being declared is declared.
        let r = srv
            .post("/Users", json!({"schemas": [USER], "userName": "undeclared", CUSTOM: {"x": 1}}))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        assert_eq!(r.body["schemas"], json!([USER, CUSTOM]), "{}", r.body);
        assert_eq!(r.body[CUSTOM], json!({"x": 1}));
    }
}

both_backends! {
    async fn external_id_is_not_unique(srv) {
        // RFC 7643 gives externalId no uniqueness; many users and groups may
        // share one, and a filter finds them all.
        let a = srv.post("/Users", json!({"schemas": [USER], "userName": "c", "externalId": "x1"})).await;
        assert_eq!(a.status, 201, "{}", a.body);
        let b = srv.post("/Users", json!({"schemas": [USER], "userName": "d", "externalId": "x1"})).await;
        assert_eq!(b.status, 201, "{}", b.body);
        let c = srv.user("e").await;
        let put = srv.put(&format!("/Users/{c}"), json!({"schemas": [USER], "userName": "e", "externalId": "x1"})).await;
        assert_eq!(put.status, 200, "{}", put.body);
        let found = srv.query("/Users", &[("filter", "externalId eq \"x1\"")]).await;
        assert_eq!(found.body["totalResults"], 3, "{}", found.body);
        for name in ["g1", "g2"] {
            let g = srv
                .post("/Groups", json!({"schemas": [crate::support::GROUP], "displayName": name, "externalId": "x1"}))
                .await;
            assert_eq!(g.status, 201, "{}", g.body);
        }
        let groups = srv.query("/Groups", &[("filter", "externalId eq \"x1\"")]).await;
        assert_eq!(groups.body["totalResults"], 2, "{}", groups.body);
        // /Schemas says so (externalId is a common attribute, RFC 7643
        // §3.1, so the rule is in the schemas' descriptions).
        for urn in [USER, crate::support::GROUP] {
            let schema = srv.get(&format!("/Schemas/{urn}")).await;
            let text = schema.body["description"].as_str().unwrap_or_default();
            assert!(text.contains("externalId is not unique") || text.contains("nor externalId is unique"), "{}", schema.body);
        }
    }
}

both_backends! {
    async fn password_is_write_only(srv) {
        let r = srv
            .post("/Users", json!({"schemas": [USER], "userName": "pw", "password": "t1meMa$heen"}))
            .await;
        assert_eq!(r.status, 201);
        assert!(r.body.get("password").is_none(), "{}", r.body);
        let id = r.body["id"].as_str().unwrap();
        let got = srv.get(&format!("/Users/{id}")).await;
        assert!(got.body.get("password").is_none());
        let asked = srv.query(&format!("/Users/{id}"), &[("attributes", "password,userName")]).await;
        assert!(asked.body.get("password").is_none(), "{}", asked.body);
        assert!(!got.body.to_string().contains("t1meMa$heen"));
    }
}

both_backends! {
    async fn if_match_mismatch_is_412(srv) {
        let id = srv.user("etag").await;
        let url = format!("{}/Users/{id}", srv.base);
        let body = json!({"schemas": [USER], "userName": "etag2"});
        let stale = srv
            .send_with(Method::PUT, &url, Some(body.clone()), &[("If-Match", "W/\"7\"")], Some(&srv.token))
            .await;
        stale.assert_error(412, None);
        let fresh = srv
            .send_with(Method::PUT, &url, Some(body), &[("If-Match", "W/\"1\"")], Some(&srv.token))
            .await;
        assert_eq!(fresh.status, 200, "{}", fresh.body);
        let patch = json!({"schemas": [crate::support::PATCH_OP], "Operations": [{"op": "replace", "path": "displayName", "value": "x"}]});
        srv.send_with(Method::PATCH, &url, Some(patch), &[("If-Match", "W/\"1\"")], Some(&srv.token))
            .await
            .assert_error(412, None);
        srv.send_with(Method::DELETE, &url, None, &[("If-Match", "W/\"1\"")], Some(&srv.token))
            .await
            .assert_error(412, None);
        let not_modified = srv
            .send_with(Method::GET, &url, None, &[("If-None-Match", "W/\"2\"")], Some(&srv.token))
            .await;
        assert_eq!(not_modified.status, 304);
    }
}

both_backends! {
    async fn bad_bodies_get_precise_errors(srv) {
        srv.post("/Users", json!({"userName": "noschemas"})).await.assert_error(400, Some("invalidSyntax"));
        srv.post("/Users", json!({"schemas": [USER]})).await.assert_error(400, Some("invalidValue"));
        srv.post("/Users", json!({"schemas": [USER], "userName": 5})).await.assert_error(400, Some("invalidValue"));
        srv.post("/Users", json!({"schemas": [USER], "userName": "x", "active": "maybe"})).await.assert_error(400, Some("invalidValue"));
        let raw = srv
            .client
            .post(format!("{}/Users", srv.base))
            .header("Authorization", format!("Bearer {}", srv.token))
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(raw.status(), 400);
        let body: serde_json::Value = raw.json().await.unwrap();
        assert_eq!(body["scimType"], "invalidSyntax");
        // The server answers 413 before reading the whole body and closes the
        // connection; the client may see the reset before the answer, so an
        // attempt that got no answer at all is retried.
        let big = json!({"schemas": [USER], "userName": "x".repeat(2 * 1024 * 1024)}).to_string();
        // A client of its own, so the reset connection never returns to the
        // shared pool.
        let mut answered = false;
        for _ in 0..10 {
            let sent = reqwest::Client::new()
                .post(format!("{}/Users", srv.base))
                .header("Authorization", format!("Bearer {}", srv.token))
                .header("Content-Type", "application/scim+json")
                .body(big.clone())
                .send()
                .await;
            if let Ok(resp) = sent {
                assert_eq!(resp.status(), 413);
                let body: serde_json::Value = resp.json().await.unwrap();
                assert_eq!(body["status"], "413", "{body}");
                answered = true;
                break;
            }
        }
        assert!(answered, "no 413 answer to an oversized body in 10 attempts");
        // Nothing was half-created by the failures above.
        let list = srv.get("/Users").await;
        assert_eq!(list.body["totalResults"], 0, "{}", list.body);
    }
}

both_backends! {
    async fn tenants_are_isolated(srv) {
        let id = srv.user("mine").await;
        let (other, other_token) = srv.other_tenant().await;
        // The other tenant's token cannot read this tenant...
        let url = format!("{}/Users/{id}", srv.base);
        srv.send_with(Method::GET, &url, None, &[], Some(&other_token)).await.assert_error(403, None);
        // ...and in its own tenant the id does not exist.
        let base = format!("http://{}/scim/v2/{other}", srv.addr);
        srv.send_with(Method::GET, &format!("{base}/Users/{id}"), None, &[], Some(&other_token))
            .await
            .assert_error(404, None);
        let list = srv.send_with(Method::GET, &format!("{base}/Users"), None, &[], Some(&other_token)).await;
        assert_eq!(list.body["totalResults"], 0);
        // The same userName is free in the other tenant.
        let r = srv
            .send_with(Method::POST, &format!("{base}/Users"), Some(json!({"schemas": [USER], "userName": "mine"})), &[], Some(&other_token))
            .await;
        assert_eq!(r.status, 201);
        // No token, a malformed one, a revoked one: 401.
        srv.send_with(Method::GET, &url, None, &[], None).await.assert_error(401, None);
        srv.send_with(Method::GET, &url, None, &[], Some("rb_nope")).await.assert_error(401, None);
        let forged = format!("{}x", &srv.token[..srv.token.len() - 1]);
        srv.send_with(Method::GET, &url, None, &[], Some(&forged)).await.assert_error(401, None);
    }
}

both_backends! {
    async fn tokens_work_only_for_their_scope_and_until_revoked(srv) {
        let name = rolebridge::domain::TenantName::parse(&srv.tenant).unwrap();
        let admin = srv.app.create_token(&name, rolebridge::domain::Scope::Admin).await.unwrap();
        let url = format!("{}/Users", srv.base);
        srv.send_with(Method::GET, &url, None, &[], Some(admin.token.expose())).await.assert_error(403, None);
        let scim = srv.app.create_token(&name, rolebridge::domain::Scope::Scim).await.unwrap();
        let ok = srv.send_with(Method::GET, &url, None, &[], Some(scim.token.expose())).await;
        assert_eq!(ok.status, 200);
        assert!(srv.app.store().revoke_token(&scim.id, "now").await.unwrap());
        srv.send_with(Method::GET, &url, None, &[], Some(scim.token.expose())).await.assert_error(401, None);
    }
}
