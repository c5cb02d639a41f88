//! Effective permissions through the real HTTP API, after provisioning users
//! and groups by SCIM: one test per shipped catalog, plus the API's errors,
//! limits in explain/metrics, and mapping reload.

use reqwest::Method;
use serde_json::{json, Value};

use crate::each_backend;
use crate::support::{TestServer, GROUP};

/// Creates a group with these members, by SCIM.
async fn group_of(
    srv: &TestServer,
    name: &str,
    external_id: Option<&str>,
    members: &[&str],
) -> String {
    let mut body = json!({"schemas": [GROUP], "displayName": name,
        "members": members.iter().map(|m| json!({"value": m})).collect::<Vec<_>>()});
    if let Some(e) = external_id {
        body["externalId"] = json!(e);
    }
    let r = srv.post("/Groups", body).await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["id"].as_str().unwrap().to_string()
}

async fn perms(srv: &TestServer, token: &str, user: &str) -> Value {
    let url = format!(
        "http://{}/api/v1/tenants/{}/users/{user}/permissions",
        srv.addr, srv.tenant
    );
    let r = srv
        .send_with(Method::GET, &url, None, &[], Some(token))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

async fn check(srv: &TestServer, token: &str, user: &str, permission: &str) -> (bool, String) {
    let url = format!("http://{}/api/v1/tenants/{}/check", srv.addr, srv.tenant);
    let r = srv
        .send_with(
            Method::POST,
            &url,
            Some(json!({"user": user, "permission": permission, "explain": true})),
            &[],
            Some(token),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    (
        r.body["allowed"].as_bool().unwrap(),
        r.body["explanation"]["text"]
            .as_str()
            .unwrap_or("")
            .to_string(),
    )
}

fn has(p: &Value, id: &str) -> bool {
    p["permissions"].as_array().unwrap().iter().any(|x| x == id)
}

each_backend! {
    async fn liveperson_profiles(backend) {
        let srv = TestServer::start_mapped(backend, "catalog: liveperson\nrules:\n  - id: agents\n    match: {display_name: \"Agents\"}\n    assign: {profiles: [agent_default]}\n    priority: 10\n  - id: seniors\n    match: {display_name: \"Seniors\"}\n    assign: {profiles: [senior_agent]}\n    priority: 20\n").await;
        let token = srv.permissions_token().await;
        let agent = srv.user("agent@acme").await;
        let senior = srv.user("senior@acme").await;
        group_of(&srv, "Agents", None, &[&agent, &senior]).await;
        group_of(&srv, "Seniors", None, &[&senior]).await;
        let p = perms(&srv, &token, &agent).await;
        assert!(has(&p, "initiate_cobrowse_view_only_session"), "{p}");
        assert!(!has(&p, "join_agents_conversations_in_group"), "{p}");
        assert_eq!(p["profiles"], json!(["agent_default"]));
        let sorted: Vec<String> = p["permissions"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
        let mut again = sorted.clone();
        again.sort();
        assert_eq!(sorted, again, "permissions are sorted");
        // Two Agent profiles: one per role, the higher priority wins.
        let s = perms(&srv, &token, &senior).await;
        assert_eq!(s["profiles"], json!(["senior_agent"]), "{s}");
        assert!(has(&s, "join_agents_conversations_in_group"));
        let (allowed, why) = check(&srv, &token, "senior@acme", "join_agents_conversations_in_group").await;
        assert!(allowed, "{why}");
        let (allowed, why) = check(&srv, &token, &agent, "join_agents_conversations_in_group").await;
        assert!(!allowed);
        assert!(why.contains("agent_default"), "{why}");
        // by=userName
        let url = format!("http://{}/api/v1/tenants/{}/users/agent@acme/permissions?by=userName", srv.addr, srv.tenant);
        let r = srv.send_with(Method::GET, &url, None, &[], Some(&token)).await;
        assert_eq!(r.body["user"]["id"], agent.as_str());
    }
}

each_backend! {
    async fn gms_second_owner_refused(backend) {
        let srv = TestServer::start_mapped(backend, "catalog: gms\ndefault_role: designer\nrules:\n  - id: owners\n    match: {display_name: \"Owners\"}\n    assign: {roles: [owner]}\n    priority: 100\n").await;
        let token = srv.permissions_token().await;
        let first = srv.user("first").await;
        let second = srv.user("second").await;
        group_of(&srv, "Owners", None, &[&first, &second]).await;
        let a = perms(&srv, &token, &first).await;
        let b = perms(&srv, &token, &second).await;
        assert_eq!(a["roles"], json!(["owner"]), "{a}");
        assert_eq!(b["roles"], json!(["designer"]), "{b}");
        assert!(has(&a, "invited_users_create") && !has(&b, "invited_users_create"));
        let (allowed, why) = check(&srv, &token, &second, "invited_users_create").await;
        assert!(!allowed);
        assert!(why.contains("max_per_tenant"), "{why}");
        let metrics = srv.client.get(format!("http://{}/metrics", srv.addr)).send().await.unwrap().text().await.unwrap();
        assert!(
            metrics.contains(&format!("rolebridge_mapping_refusals{{tenant=\"{}\",kind=\"max_per_tenant\"}} 1", srv.tenant)),
            "{metrics}"
        );
        // Deactivating the holder frees the slot; an inactive user has nothing.
        srv.patch(&format!("/Users/{first}"), json!({"schemas": [crate::support::PATCH_OP], "Operations": [{"op": "replace", "path": "active", "value": false}]})).await;
        let a = perms(&srv, &token, &first).await;
        assert_eq!(a["permissions"], json!([]));
        assert_eq!(perms(&srv, &token, &second).await["roles"], json!(["owner"]));
    }
}

each_backend! {
    async fn loyjoy_combined_roles_and_nesting(backend) {
        let srv = TestServer::start_mapped(backend, "catalog: loyjoy\nrules:\n  - id: data\n    match: {external_id: \"grp-data\"}\n    assign: {roles: [data_viewer]}\n  - id: knowledge\n    match: {display_name: \"Knowledge\"}\n    assign: {roles: [knowledge_editor]}\n").await;
        let token = srv.permissions_token().await;
        let u = srv.user("u").await;
        let inner = group_of(&srv, "Inner", Some("grp-data"), &[&u]).await;
        // The user reaches Knowledge only through nesting: Inner is a member of Knowledge.
        group_of(&srv, "Knowledge", None, &[&inner]).await;
        let p = perms(&srv, &token, &u).await;
        assert_eq!(p["roles"], json!(["data_viewer", "knowledge_editor"]), "{p}");
        assert!(has(&p, "data_view") && has(&p, "knowledge_edit") && !has(&p, "data_export"));
        let (_, why) = check(&srv, &token, &u, "knowledge_edit").await;
        assert!(why.contains("Inner"), "the nesting chain is explained: {why}");
    }
}

each_backend! {
    async fn iadvize_requires(backend) {
        let srv = TestServer::start_mapped(backend, "catalog: iadvize\ncustom_roles:\n  - id: no_reports\n    name: No reports\n    base: manager\n    toggles:\n      access_to_reports: off\nrules:\n  - id: m\n    match: {display_name: \"Managers\"}\n    assign: {roles: [manager]}\n  - id: n\n    match: {display_name: \"Restricted\"}\n    assign: {custom_roles: [no_reports]}\n").await;
        let token = srv.permissions_token().await;
        let m = srv.user("m").await;
        let r = srv.user("r").await;
        group_of(&srv, "Managers", None, &[&m]).await;
        group_of(&srv, "Restricted", None, &[&r]).await;
        assert!(has(&perms(&srv, &token, &m).await, "access_to_supervision_report"));
        let p = perms(&srv, &token, &r).await;
        assert!(!has(&p, "access_to_reports") && !has(&p, "access_to_supervision_report"), "{p}");
        let (allowed, why) = check(&srv, &token, &r, "access_to_supervision_report").await;
        assert!(!allowed);
        assert!(why.contains("access_to_reports"), "{why}");
    }
}

each_backend! {
    async fn haptik_flags_and_api_errors(backend) {
        let srv = TestServer::start_mapped(backend, "catalog: haptik\nrules:\n  - id: agents\n    match: {display_name: \"Chat Agents\"}\n    assign: {roles: [chat_agent, assign_chats_same_team]}\n").await;
        let token = srv.permissions_token().await;
        let a = srv.user("a").await;
        let nobody = srv.user("nobody").await;
        group_of(&srv, "Chat Agents", None, &[&a]).await;
        let p = perms(&srv, &token, &a).await;
        assert!(has(&p, "take_and_respond_to_chats") && has(&p, "assign_chats_same_team"), "{p}");
        assert!(!has(&p, "assign_chats_different_team"));
        let (allowed, why) = check(&srv, &token, &nobody, "take_and_respond_to_chats").await;
        assert!(!allowed);
        assert!(why.to_lowercase().contains("no rule matched"), "{why}");
        // Distinct errors: unknown user 404, unknown permission 400, unmapped tenant 409, SCIM token 403.
        let base = format!("http://{}/api/v1/tenants/{}", srv.addr, srv.tenant);
        let r = srv.send_with(Method::GET, &format!("{base}/users/nope/permissions"), None, &[], Some(&token)).await;
        assert_eq!((r.status.as_u16(), r.body["error"]["code"].as_str()), (404, Some("unknown_user")), "{}", r.body);
        let r = srv.send_with(Method::POST, &format!("{base}/check"), Some(json!({"user": a, "permission": "fly"})), &[], Some(&token)).await;
        assert_eq!((r.status.as_u16(), r.body["error"]["code"].as_str()), (400, Some("unknown_permission")), "{}", r.body);
        let r = srv.send_with(Method::GET, &format!("{base}/users/{a}/permissions"), None, &[], Some(&srv.token)).await;
        assert_eq!(r.status, 403);
        let (other, _) = srv.other_tenant().await;
        let other_token = srv.app.create_token(&rolebridge::domain::TenantName::parse(&other).unwrap(), rolebridge::domain::Scope::Permissions).await.unwrap();
        let r = srv.send_with(Method::GET, &format!("http://{}/api/v1/tenants/{other}/users/x/permissions", srv.addr), None, &[], Some(other_token.token.expose())).await;
        assert_eq!((r.status.as_u16(), r.body["error"]["code"].as_str()), (409, Some("unknown_tenant")), "{}", r.body);
    }
}

each_backend! {
    async fn reload_rejects_invalid_edits_whole(backend) {
        let srv = TestServer::start_mapped(backend, "catalog: haptik\nrules:\n  - id: agents\n    match: {display_name: \"Chat Agents\"}\n    assign: {roles: [chat_agent]}\n").await;
        let token = srv.permissions_token().await;
        let a = srv.user("a").await;
        group_of(&srv, "Chat Agents", None, &[&a]).await;
        let file = srv.mappings_dir().join("tenants").join(format!("{}.yaml", srv.tenant));
        // An invalid edit: rejected with its line, the old mapping stays in force.
        std::fs::write(&file, "catalog: haptik\nrules:\n  - id: agents\n    match: {display_name: \"Chat Agents\"}\n    assign: {roles: [chat_agnet]}\n").unwrap();
        let errors = srv.app.reload_mappings().unwrap_err();
        assert!(errors.iter().any(|e| e.to_string().contains(":5:") && e.to_string().contains("chat_agnet")), "{errors:?}");
        assert!(has(&perms(&srv, &token, &a).await, "take_and_respond_to_chats"));
        // A valid edit takes effect without a restart, once the tenant's
        // rows are recomputed under it (serve does this right after a reload).
        std::fs::write(&file, "catalog: haptik\nrules:\n  - id: agents\n    match: {display_name: \"Chat Agents\"}\n    assign: {roles: [chat_agent_tl]}\n").unwrap();
        srv.app.reload_mappings().unwrap();
        assert_eq!(srv.app.reconcile_mappings().await.unwrap(), 1, "the mapped tenant is recomputed");
        let p = perms(&srv, &token, &a).await;
        assert!(has(&p, "manage_teams") && !has(&p, "take_and_respond_to_chats"), "{p}");
    }
}
