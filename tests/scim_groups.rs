//! Groups and membership: members in their own table, referential checks,
//! idempotent adds, `excludedAttributes=members`, 204 PATCH, cleanup on
//! delete, and O(N) member PATCHes on a large group.

use serde_json::json;

use crate::both_backends;
use crate::support::{GROUP, PATCH_OP};

both_backends! {
    async fn group_crud_with_members(srv) {
        let a = srv.user("a").await;
        let b = srv.user("b").await;
        let inner = srv.group("inner").await;
        let r = srv
            .post("/Groups", json!({
                "schemas": [GROUP],
                "displayName": "Engineering",
                "externalId": "eng",
                "members": [{"value": a, "type": "User"}, {"value": inner}]
            }))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let gid = r.body["id"].as_str().unwrap().to_string();
        let members = r.body["members"].as_array().unwrap();
        assert_eq!(members.len(), 2);
        let inner_entry = members.iter().find(|m| m["value"] == inner.as_str()).unwrap();
        assert_eq!(inner_entry["type"], "Group");
        assert_eq!(inner_entry["$ref"], format!("{}/Groups/{inner}", srv.base));

        // The user's `groups` attribute is derived from membership.
        let user = srv.get(&format!("/Users/{a}")).await;
        assert_eq!(user.body["groups"][0]["value"], gid.as_str(), "{}", user.body);
        assert_eq!(user.body["groups"][0]["display"], "Engineering");

        // Unknown member ids, wrong types and self-membership are refused whole.
        srv.post("/Groups", json!({"schemas": [GROUP], "displayName": "bad", "members": [{"value": "nope"}]}))
            .await
            .assert_error(400, Some("invalidValue"));
        srv.post("/Groups", json!({"schemas": [GROUP], "displayName": "bad", "members": [{"value": a, "type": "Group"}]}))
            .await
            .assert_error(400, Some("invalidValue"));
        let list = srv.query("/Groups", &[("filter", "displayName eq \"bad\"")]).await;
        assert_eq!(list.body["totalResults"], 0, "half-created group: {}", list.body);

        // PUT replaces membership.
        let put = srv
            .put(&format!("/Groups/{gid}"), json!({"schemas": [GROUP], "displayName": "Eng", "members": [{"value": b}]}))
            .await;
        assert_eq!(put.status, 200, "{}", put.body);
        assert_eq!(srv.member_ids(&gid).await, vec![b.clone()]);

        // Deleting a user removes its memberships; deleting a group removes its edges.
        srv.delete(&format!("/Users/{b}")).await;
        assert!(srv.member_ids(&gid).await.is_empty());
        srv.delete(&format!("/Groups/{gid}")).await;
        let user = srv.get(&format!("/Users/{a}")).await;
        assert!(user.body.get("groups").is_none() || user.body["groups"] == json!([]), "{}", user.body);
    }
}

both_backends! {
    async fn member_patch_is_idempotent_and_answers_204(srv) {
        let u = srv.user("u").await;
        let g = srv.group("g").await;
        let add = json!({"schemas": [PATCH_OP], "Operations": [{"op": "add", "path": "members", "value": [{"value": u}]}]});
        let first = srv.patch(&format!("/Groups/{g}"), add.clone()).await;
        assert_eq!(first.status, 204, "{}", first.body);
        let v1 = srv.get(&format!("/Groups/{g}")).await.body["meta"]["version"].clone();
        let again = srv.patch(&format!("/Groups/{g}"), add).await;
        assert_eq!(again.status, 204);
        let after = srv.get(&format!("/Groups/{g}")).await;
        assert_eq!(after.body["members"].as_array().unwrap().len(), 1);
        assert_eq!(after.body["meta"]["version"], v1, "a no-op add must not bump the version");
        // Asking for attributes gets the resource back.
        let with_attrs = srv
            .send_with(
                reqwest::Method::PATCH,
                &format!("{}/Groups/{g}?attributes=displayName", srv.base),
                Some(json!({"schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": "displayName", "value": "g2"}]})),
                &[],
                Some(&srv.token),
            )
            .await;
        assert_eq!(with_attrs.status, 200);
        assert_eq!(with_attrs.body["displayName"], "g2");
        assert!(with_attrs.body.get("members").is_none());
    }
}

both_backends! {
    async fn excluded_members_are_not_returned(srv) {
        let u = srv.user("u").await;
        let g = srv.post("/Groups", json!({"schemas": [GROUP], "displayName": "G", "members": [{"value": u}]})).await;
        let gid = g.body["id"].as_str().unwrap();
        let list = srv.query("/Groups", &[("excludedAttributes", "members")]).await;
        assert_eq!(list.status, 200);
        assert_eq!(list.body["Resources"][0]["displayName"], "G");
        assert!(list.body["Resources"][0].get("members").is_none(), "{}", list.body);
        let one = srv.query(&format!("/Groups/{gid}"), &[("excludedAttributes", "members")]).await;
        assert!(one.body.get("members").is_none());
        assert_eq!(one.body["id"], gid);
        // Excluding a sub-attribute keeps the members themselves.
        let partial = srv.query(&format!("/Groups/{gid}"), &[("excludedAttributes", "members.type")]).await;
        assert_eq!(partial.body["members"][0]["value"], u.as_str(), "{}", partial.body);
        assert!(partial.body["members"][0].get("type").is_none(), "{}", partial.body);
    }
}

both_backends! {
    async fn patch_cost_does_not_grow_with_group_size(srv) {
        // Seed 3,000 users and a group holding 2,900 of them through the
        // store, then add and remove 50 over HTTP: the result must be exact
        // and the group's other members untouched.
        use rolebridge::domain::ResourceId;
        use rolebridge::store::StoredResource;
        use scim::schema::ResourceKind;
        let tenant = srv.app.store().tenant_by_name(&rolebridge::domain::TenantName::parse(&srv.tenant).unwrap()).await.unwrap().unwrap();
        let mut ids = Vec::new();
        let mut tx = srv.app.store().begin_write().await.unwrap();
        for i in 0..3000 {
            let r = StoredResource {
                id: ResourceId::generate(),
                doc: json!({"schemas": [crate::support::USER], "userName": format!("bulk{i}")}),
                created: rolebridge::domain::Timestamp::now(),
                last_modified: rolebridge::domain::Timestamp::now(),
                version: 1,
            };
            tx.insert(tenant.id, ResourceKind::User, &r).await.unwrap();
            ids.push(r.id.to_string());
        }
        srv.app.commit(tx).await.unwrap();
        let g = srv.group("big").await;
        let mut tx = srv.app.store().begin_write().await.unwrap();
        let seed: Vec<(String, &'static str)> = ids[..2900].iter().map(|i| (i.clone(), "User")).collect();
        tx.add_members(tenant.id, &ResourceId::from_client(&g), &seed).await.unwrap();
        srv.app.commit(tx).await.unwrap();
        let add: Vec<_> = ids[2900..2950].iter().map(|i| json!({"value": i})).collect();
        let r = srv.patch(&format!("/Groups/{g}"), json!({"schemas": [PATCH_OP], "Operations": [{"op": "add", "path": "members", "value": add}]})).await;
        assert_eq!(r.status, 204, "{}", r.body);
        let remove: Vec<_> = ids[..50].iter().map(|i| json!({"value": i})).collect();
        let r = srv.patch(&format!("/Groups/{g}"), json!({"schemas": [PATCH_OP], "Operations": [{"op": "remove", "path": "members", "value": remove}]})).await;
        assert_eq!(r.status, 204, "{}", r.body);
        let members = srv.member_ids(&g).await;
        let mut expected: Vec<String> = ids[50..2950].to_vec();
        expected.sort();
        assert_eq!(members.len(), 2900);
        assert_eq!(members, expected);
    }
}
