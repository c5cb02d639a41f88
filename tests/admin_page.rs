//! The `/admin` page end to end in Debian's headless Chromium, driven by
//! playwright-core (`tests/browser/admin.mjs`; `.ci/run` installs
//! chromium and `npm ci`s `tests/browser`): it edits, plans, applies with
//! the guard's confirmation, rolls back, reads the audit trail and explains
//! a user, against a real server on each backend. A screenshot checks that
//! the page renders and is not blank.

use std::process::Command;

use serde_json::Value;

use crate::mapping_admin::{setup, token, V2};
use rolebridge::domain::{MappingVersion, Scope};

fn browser_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

crate::each_backend! {
    async fn edit_plan_apply_rollback_and_explain_in_chromium(backend) {
        let (srv, designers, _) = setup(backend, 12).await;
        let admin = token(&srv, Scope::Admin).await;
        let dir = browser_dir();
        assert!(
            dir.join("node_modules/playwright-core").is_dir() && std::path::Path::new("/usr/bin/chromium").exists(),
            "the browser test needs Debian's chromium and `npm ci` in tests/browser (.ci/run installs both)"
        );
        let shot = crate::support::test_dir().join(format!("{}-admin.png", srv.tenant));
        let bad = "catalog: gms\nrules:\n  - match: {display_name: X}\n    assign: {roles: [nope]}\n";
        let out = tokio::task::spawn_blocking({
            let (base, tenant, shot) = (format!("http://{}", srv.addr), srv.tenant.clone(), shot.clone());
            move || {
                Command::new("node")
                    .arg("admin.mjs")
                    .current_dir(dir)
                    .env("BASE", base)
                    .env("TENANT", tenant)
                    .env("TOKEN", admin)
                    .env("BAD", bad)
                    .env("EDIT", V2)
                    .env("USER", "designer00")
                    .env("DENIED", "project_delete")
                    .env("SCREENSHOT", shot)
                    .output()
                    .expect("run node")
            }
        })
        .await
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "the page failed: {stderr}\n{stdout}");
        let seen: Value = serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {stdout}"));
        let file = format!("tenants/{}.yaml", srv.tenant);
        assert_eq!(seen["file"], file.as_str(), "{seen}");
        // Rendered, not blank: a blank 1280-wide page compresses to a few KB.
        let png = std::fs::read(&shot).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 20_000, "screenshot of {} bytes: {seen}", png.len());
        assert!(seen["rendered"]["editor_height"].as_f64().unwrap() > 100.0, "{seen}");
        assert!(seen["rendered"]["text_length"].as_u64().unwrap() > 50, "{seen}");
        // The invalid edit: the message at its line:column, the line marked.
        let error = seen["error"].as_str().unwrap();
        assert!(error.starts_with(&format!("{file}:4:")) && error.contains("nope"), "{seen}");
        assert_eq!(seen["bad_lines"], serde_json::json!([4]), "{seen}");
        // The plan: the twelve designers, each losing the role.
        let rows: Vec<&str> = seen["plan_rows"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(rows.len(), 12, "{seen}");
        assert_eq!(rows[0], "designer00");
        assert!(seen["plan_first"].as_str().unwrap().contains("− designer"), "{seen}");
        assert!(seen["guard"].as_str().unwrap().contains("needs confirmation"), "{seen}");
        assert!(seen["apply_dialog"].as_str().unwrap().contains("12 users lose access"), "{seen}");
        // History and audit after the rollback.
        assert_eq!(seen["history"], serde_json::json!(["3", "2", "1"]), "{seen}");
        let audit: Vec<&str> = seen["audit"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        assert_eq!(audit, ["audit-applied", "audit-applied", "audit-refused"], "{seen}");
        assert_eq!(seen["text_after_rollback"], crate::mapping_admin::V1, "{seen}");
        // The user view: group -> rule (file:line) -> role -> permission, and a denial.
        let chain = seen["chain"].as_str().unwrap();
        assert!(chain.contains("group Designers") && chain.contains(&format!("rule designers ({file}:6:")) && chain.contains("role designer") && chain.contains("project_view"), "{chain}");
        let denial = seen["denial"].as_str().unwrap();
        assert!(denial.contains("project_delete") && denial.contains("role owner"), "{denial}");
        assert_eq!(seen["console_errors"], serde_json::json!([]), "{seen}");
        // What the page did is what the store holds.
        assert_eq!(srv.app.latest_mapping_version().await.unwrap(), Some(MappingVersion(3)));
        assert_eq!(designers.len(), 12);
    }
}
