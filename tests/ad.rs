//! Active Directory behaviour of the LDAP source against a real Samba AD DC
//! (Debian `samba samba-ad-dc samba-ad-provision`), provisioned into a temp
//! directory and serving LDAP on 127.0.0.1:389.
//!
//! Its own test binary: only one DC can own port 389, so all tests here
//! share one DC (`samba::dc()`), each in its own OU.

#[path = "support_ad/samba.rs"]
mod samba;
#[path = "support/mod.rs"]
mod support;

use std::collections::{BTreeMap, BTreeSet};

use rolebridge::app::sync::{run_source, RunOptions, RunReport};
use rolebridge::app::SYNC_USER_URN;
use rolebridge::sync::ldap::{LdapConfig, LdapSource};
use rolebridge::sync::{
    parse_sources, Batch, GroupChange, MemberRef, Members, ReadOutcome, ReadRequest, Source,
    SourceConfig, SourceError,
};
use samba::{dc, guid_string};
use serde_json::Value;
use support::{unique, Backend, TestServer};

/// The harness itself: the DC answers, the sync account binds, and the
/// test's independent GUID decoding agrees with samba's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dc_serves_ldap_and_guids_decode_like_samba() {
    let dc = dc();
    let mut admin = dc.admin().await;
    let ou = admin.ou(&unique("h")).await;
    let sam = unique("h");
    let user = admin.user(&ou, &sam, true).await;
    let bytes = admin.guid_bytes(&user.dn).await;
    assert_eq!(guid_string(&bytes), dc.samba_tool_guid("user", &sam));
    let entry = admin.read(&user.dn, &["userAccountControl"]).await;
    assert_eq!(entry.attrs["userAccountControl"], vec!["512".to_string()]);
    let usn = admin.usn_changed(&user.dn).await;
    assert!(admin.highest_committed_usn().await >= usn);
}

// ---------------------------------------------------------------------------
// The LDAP source with `preset = "active_directory"`, read into a Batch.

/// A `[[source]]` table for the DC, searching only `base` (the test's OU).
fn source_table(name: &str, tenant: &str, base: &str, extra: &str) -> toml::Table {
    let dc = dc();
    let text = format!(
        r#"
name = "{name}"
tenant = "{tenant}"
kind = "ldap"
url = "{url}"
bind_dn = "{bind_dn}"
bind_password = {{ file = "{pw}" }}
preset = "active_directory"
base_dns = ["{base}"]
timeout = "60s"
{extra}
"#,
        url = dc.url,
        bind_dn = dc.sync_dn,
        pw = dc.sync_password_file.display(),
    );
    toml::from_str(&text).unwrap_or_else(|e| panic!("test config: {e}\n{text}"))
}

fn ldap_config(base: &str, extra: &str) -> LdapConfig {
    let mut table = source_table("ad", "t", base, extra);
    for key in ["name", "tenant", "kind"] {
        table.remove(key);
    }
    LdapConfig::from_toml(toml::Value::Table(table)).expect("AD source config")
}

/// One read through the source, as the runner does it.
async fn read(config: &LdapConfig, full: bool, cursor: Option<String>) -> (Batch, ReadOutcome) {
    let mut source = LdapSource::new(config).expect("source");
    let mut batch = Batch::new();
    let outcome = source
        .read(&ReadRequest { full, cursor }, &mut batch)
        .await
        .unwrap_or_else(|e| panic!("read failed: {e}\n{}", dc().log_tail()));
    (batch, outcome)
}

/// DN comparison as the source normalises them: case and spaces around
/// ',' and '=' do not matter.
fn norm(dn: &str) -> String {
    dn.split(',')
        .map(|rdn| {
            rdn.split('=')
                .map(|p| p.trim().to_lowercase())
                .collect::<Vec<_>>()
                .join("=")
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn member_dns(group: &GroupChange) -> BTreeSet<String> {
    let g = group.group.as_ref().expect("group attributes read");
    let Members::Full(members) = &g.members else {
        panic!("a full read lists all members, got {:?}", g.members);
    };
    members
        .iter()
        .map(|m| match m {
            MemberRef::Locator(dn) => norm(dn),
            other => panic!("AD members are DNs, got {other:?}"),
        })
        .collect()
}

/// objectGUID is the stable key, decoded exactly as samba-tool (and an
/// independent decoder here) shows it; a rename changes the locator only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_guid_is_the_key_and_a_rename_keeps_it() {
    let dc = dc();
    let mut admin = dc.admin().await;
    let tag = unique("g");
    let ou = admin.ou(&tag).await;
    let alice = admin.user(&ou, &format!("{tag}a"), true).await;
    let group_name = format!("{tag}grp");
    let group = admin.group(&ou, &group_name).await;
    admin
        .add_members(&group, std::slice::from_ref(&alice.dn))
        .await;

    let guid = guid_string(&admin.guid_bytes(&alice.dn).await);
    assert_eq!(guid, dc.samba_tool_guid("user", &alice.sam));
    let group_guid = guid_string(&admin.guid_bytes(&group).await);
    assert_eq!(group_guid, dc.samba_tool_guid("group", &group_name));

    let config = ldap_config(&ou, "");
    let (batch, outcome) = read(&config, true, None).await;
    assert!(outcome.complete, "a full read is complete");
    assert_eq!(
        batch.users.keys().collect::<Vec<_>>(),
        vec![&guid],
        "the one user, keyed by its GUID"
    );
    let u = &batch.users[&guid];
    assert_eq!(u.user_name, alice.sam, "sAMAccountName is the userName");
    assert_eq!(u.locator.as_deref().map(norm), Some(norm(&alice.dn)));
    assert_eq!(
        u.given_name.as_deref(),
        Some(format!("Given{}", alice.sam).as_str())
    );
    assert_eq!(
        u.family_name.as_deref(),
        Some(format!("Family{}", alice.sam).as_str())
    );
    assert_eq!(
        u.display_name.as_deref(),
        Some(format!("Display {}", alice.sam).as_str())
    );
    assert_eq!(u.emails, vec![format!("{}@mail.rb.test", alice.sam)]);
    assert!(u.active);
    assert_eq!(batch.groups.keys().collect::<Vec<_>>(), vec![&group_guid]);
    let g = &batch.groups[&group_guid];
    assert_eq!(g.group.as_ref().expect("group").display_name, group_name);
    assert_eq!(member_dns(g), BTreeSet::from([norm(&alice.dn)]));

    let renamed = admin.rename(&alice.dn, &format!("{tag}renamed")).await;
    let (batch, _) = read(&config, true, None).await;
    assert_eq!(
        batch.users.keys().collect::<Vec<_>>(),
        vec![&guid],
        "same key after rename"
    );
    let u = &batch.users[&guid];
    assert_eq!(u.locator.as_deref().map(norm), Some(norm(&renamed)));
    assert_eq!(u.user_name, alice.sam);
    assert_eq!(
        member_dns(&batch.groups[&group_guid]),
        BTreeSet::from([norm(&renamed)])
    );

    // A move to another OU under the base: still the same key.
    let sub = format!("OU=sub,{ou}");
    admin.add_ou_at(&sub).await;
    let moved = admin.move_to(&renamed, &sub).await;
    let (batch, _) = read(&config, true, None).await;
    assert_eq!(
        batch.users.keys().collect::<Vec<_>>(),
        vec![&guid],
        "same key after a move"
    );
    assert_eq!(
        batch.users[&guid].locator.as_deref().map(norm),
        Some(norm(&moved))
    );
    assert_eq!(
        member_dns(&batch.groups[&group_guid]),
        BTreeSet::from([norm(&moved)])
    );
}

/// A wrong password: the read fails with an error naming the bind DN and
/// never the password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bind_is_a_clear_error() {
    let dc = dc();
    let mut admin = dc.admin().await;
    let ou = admin.ou(&unique("b")).await;
    let wrong = "Wrong!Passw0rd-not-this-one";
    let file = dc.dir.join(format!("{}.pw", unique("wrong")));
    std::fs::write(&file, wrong).expect("write password file");
    let mut table = source_table("ad", "t", &ou, "");
    for key in ["name", "tenant", "kind"] {
        table.remove(key);
    }
    let mut secret = toml::Table::new();
    secret.insert("file".into(), file.display().to_string().into());
    table.insert("bind_password".into(), secret.into());
    let config = LdapConfig::from_toml(toml::Value::Table(table)).expect("config");
    let mut source = LdapSource::new(&config).expect("source");
    let mut batch = Batch::new();
    let err = source
        .read(&ReadRequest::default(), &mut batch)
        .await
        .expect_err("a wrong password must fail the read");
    let message = err.to_string();
    assert!(
        message.contains(&dc.sync_dn),
        "names the bind DN: {message}"
    );
    assert!(!message.contains(wrong), "never the password: {message}");
    assert!(
        !format!("{err:?}").contains(wrong),
        "not in Debug either: {err:?}"
    );
    assert_eq!(batch.received, 0);
}

/// The domain root as the base: the search also returns continuation
/// references (CN=Configuration, the DNS partitions), which are not
/// entries; AD's own accounts read like any other (krbtgt is disabled,
/// Administrator is in Domain Admins).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_root_reads_builtin_accounts_past_referrals() {
    let dc = dc();
    let config = ldap_config(&dc.base_dn, "");
    let (batch, outcome) = read(&config, true, None).await;
    assert!(outcome.complete);
    let by_name = |name: &str| {
        batch
            .users
            .values()
            .find(|u| u.user_name == name)
            .unwrap_or_else(|| panic!("{name} not read"))
    };
    assert!(by_name("Administrator").active);
    assert!(!by_name("krbtgt").active, "krbtgt is disabled (514)");
    assert!(by_name("rbsync").active);
    let admins = batch
        .groups
        .values()
        .filter_map(|g| g.group.as_ref())
        .find(|g| g.display_name == "Domain Admins")
        .expect("Domain Admins read");
    let Members::Full(members) = &admins.members else {
        panic!("full member list");
    };
    assert!(
        members.contains(&MemberRef::Locator(norm(&dc.admin_dn))),
        "{members:?}"
    );
}

/// userPrincipalName can be the userName instead of sAMAccountName.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_principal_name_as_user_name() {
    let dc = dc();
    let mut admin = dc.admin().await;
    let tag = unique("p");
    let ou = admin.ou(&tag).await;
    let bob = admin.user(&ou, &format!("{tag}b"), true).await;
    let config = ldap_config(&ou, r#"attributes = { userName = "userPrincipalName" }"#);
    let (batch, _) = read(&config, true, None).await;
    let names: Vec<&str> = batch.users.values().map(|u| u.user_name.as_str()).collect();
    assert_eq!(names, vec![bob.upn.as_str()]);
}

/// userAccountControl 514 (ACCOUNTDISABLE set) is an inactive user; 512 is
/// active; flipping it shows on the next read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_accounts_are_inactive() {
    let dc = dc();
    let mut admin = dc.admin().await;
    let tag = unique("d");
    let ou = admin.ou(&tag).await;
    let on = admin.user(&ou, &format!("{tag}on"), true).await;
    let off = admin.user(&ou, &format!("{tag}off"), false).await;
    let config = ldap_config(&ou, "");
    let active = |batch: &Batch| -> BTreeMap<String, bool> {
        batch
            .users
            .values()
            .map(|u| (u.user_name.clone(), u.active))
            .collect()
    };
    let (batch, _) = read(&config, true, None).await;
    assert_eq!(
        active(&batch),
        BTreeMap::from([(on.sam.clone(), true), (off.sam.clone(), false)])
    );
    admin.set_enabled(&on.dn, false).await;
    admin.set_enabled(&off.dn, true).await;
    let (batch, _) = read(&config, true, None).await;
    assert_eq!(
        active(&batch),
        BTreeMap::from([(on.sam.clone(), false), (off.sam.clone(), true)])
    );
    // Only bit 0x2 counts, whatever else is set: 66050 = NORMAL_ACCOUNT |
    // DONT_EXPIRE_PASSWORD | ACCOUNTDISABLE, 66048 = the same, enabled.
    admin.replace(&on.dn, "userAccountControl", "66048").await;
    admin.replace(&off.dn, "userAccountControl", "66050").await;
    let (batch, _) = read(&config, true, None).await;
    assert_eq!(
        active(&batch),
        BTreeMap::from([(on.sam.clone(), true), (off.sam.clone(), false)])
    );
}

/// Seeds `n` enabled users in `ou` named `{prefix}{i}`; returns their DNs.
async fn seed_users(admin: &mut samba::Admin, ou: &str, prefix: &str, n: usize) -> Vec<String> {
    let names: Vec<String> = (0..n).map(|i| format!("{prefix}{i}")).collect();
    admin
        .users(ou, &names, true)
        .await
        .into_iter()
        .map(|u| u.dn)
        .collect()
}

/// A group of 1,600 members (more than AD's MaxValRange of 1,500): every
/// member is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_over_1500_members_is_read_whole() {
    let dc = dc();
    let mut admin = dc.admin().await;
    let tag = unique("r");
    let ou = admin.ou(&tag).await;
    let t = std::time::Instant::now();
    let members = seed_users(&mut admin, &ou, &format!("{tag}m"), 1600).await;
    let group = admin.group(&ou, &format!("{tag}big")).await;
    admin.add_members(&group, &members).await;
    eprintln!("seeded 1,600 users and a group in {:?}", t.elapsed());
    // The server really holds more than one range's worth.
    let ranged = admin.read(&group, &["member;range=1500-*"]).await;
    assert_eq!(
        ranged.attrs.get("member;range=1500-*").map(Vec::len),
        Some(100),
        "samba serves member;range=1500-*: {:?}",
        ranged.attrs.keys().collect::<Vec<_>>()
    );

    let config = ldap_config(&ou, "");
    let (batch, _) = read(&config, true, None).await;
    assert_eq!(batch.users.len(), 1600);
    let guid = guid_string(&admin.guid_bytes(&group).await);
    let got = member_dns(&batch.groups[&guid]);
    let want: BTreeSet<String> = members.iter().map(|d| norm(d)).collect();
    assert_eq!(got.len(), 1600);
    assert_eq!(got, want);
    drop(batch);

    // An incremental read after one member left: only the group is read,
    // again through its ranges, with the 1,599 members left.
    let (_, full) = read(&config, true, None).await;
    admin.remove_members(&group, &members[..1]).await;
    let (batch, _) = read(&config, false, full.cursor).await;
    assert_eq!(batch.received, 1, "only the group changed: {batch:?}");
    let got = member_dns(&batch.groups[&guid]);
    assert_eq!(got.len(), 1599);
    assert!(!got.contains(&norm(&members[0])));
    drop(batch);
    admin.add_members(&group, &members[..1]).await;

    // And through the runner: the SCIM group has all 1,600 members.
    let srv = TestServer::start(Backend::Sqlite).await;
    let report = sync(&srv, &source_config(&srv, &ou, "")).await;
    assert_eq!(report.counts.users_created, 1600, "{report:?}");
    assert_eq!(report.counts.members_added, 1600, "{report:?}");
    assert!(report.skipped.is_empty(), "{:?}", report.skipped);
    let g = scim_group(&srv, &format!("{tag}big")).await;
    let ids = member_values(&g);
    assert_eq!(ids.len(), 1600);
    let user_ids: BTreeSet<String> = scim_users(&srv)
        .await
        .values()
        .map(|u| u["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(ids, user_ids, "every member is one of the synced users");
}

/// With `incremental = "usn"` the cursor is the highest uSNChanged seen;
/// the next read returns exactly the entries changed since, and is not
/// complete (deletions need a full reconcile).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_reads_only_entries_changed_since_the_cursor() {
    let dc = dc();
    let mut admin = dc.admin().await;
    let tag = unique("u");
    let ou = admin.ou(&tag).await;
    let users = seed_users(&mut admin, &ou, &format!("{tag}x"), 6).await;
    let group = admin.group(&ou, &format!("{tag}grp")).await;
    admin.add_members(&group, &users[..3]).await;
    let config = ldap_config(&ou, r#"incremental = "usn""#);

    let (batch, full) = read(&config, true, None).await;
    assert_eq!(batch.users.len(), 6);
    assert_eq!(batch.groups.len(), 1);
    assert!(full.complete);
    let cursor = full.cursor.clone().expect("a usn cursor after a full read");

    // Nothing changed: nothing read.
    let (batch, outcome) = read(&config, false, Some(cursor.clone())).await;
    assert_eq!(batch.received, 0, "no change, nothing read: {batch:?}");
    assert!(!outcome.complete, "a uSNChanged poll cannot see deletions");

    // Three entries change: a user disabled, a user renamed in place
    // (displayName), and the group's members. Another user is added.
    admin.set_enabled(&users[1], false).await;
    admin
        .replace(&users[4], "displayName", "Changed Name")
        .await;
    admin.remove_members(&group, &users[..1]).await;
    let added = admin.user(&ou, &format!("{tag}new"), true).await;
    let g1 = guid_string(&admin.guid_bytes(&users[1]).await);
    let g4 = guid_string(&admin.guid_bytes(&users[4]).await);
    let gnew = guid_string(&admin.guid_bytes(&added.dn).await);
    let ggroup = guid_string(&admin.guid_bytes(&group).await);

    let (batch, outcome) = read(&config, false, Some(cursor.clone())).await;
    assert!(!outcome.complete);
    assert_eq!(
        batch.received, 4,
        "only the four changed entries are read: {batch:?}"
    );
    assert_eq!(
        batch.users.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([g1.clone().into(), g4.clone().into(), gnew.clone().into()])
    );
    assert!(!batch.users[&g1].active);
    assert_eq!(
        batch.users[&g4].display_name.as_deref(),
        Some("Changed Name")
    );
    assert_eq!(
        member_dns(&batch.groups[&ggroup]),
        users[1..3].iter().map(|d| norm(d)).collect()
    );
    let next = outcome.cursor.clone().expect("cursor");
    assert_ne!(next, cursor, "the cursor advances");

    // And from the new cursor, nothing again.
    let (batch, _) = read(&config, false, Some(next)).await;
    assert_eq!(batch.received, 0, "{batch:?}");
}

/// An AD object deleted moves to `CN=Deleted Objects`, out of every base,
/// so a uSNChanged poll never sees it go. Its tombstone (show-deleted
/// control) reports the deletion in the next incremental read, for a user
/// and a group under the base, and not for one under another OU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_reads_report_deletions_from_tombstones() {
    let dc = dc();
    let mut admin = dc.admin().await;
    let tag = unique("u");
    let ou = admin.ou(&tag).await;
    let elsewhere = admin.ou(&format!("{tag}else")).await;
    let users = seed_users(&mut admin, &ou, &format!("{tag}x"), 3).await;
    let other = seed_users(&mut admin, &elsewhere, &format!("{tag}y"), 1).await;
    let group = admin.group(&ou, &format!("{tag}grp")).await;
    admin.add_members(&group, &users[..2]).await;
    // CN=Deleted Objects is listed for administrators (or an account they
    // delegated it to): bind as one.
    let mut table = source_table("ad", "t", &ou, r#"incremental = "usn""#);
    for key in ["name", "tenant", "kind"] {
        table.remove(key);
    }
    let pw = crate::support::test_dir().join(unique("adminpw"));
    std::fs::write(&pw, format!("{}\n", dc.admin_password)).unwrap();
    table.insert("bind_dn".into(), toml::Value::from(dc.admin_dn.clone()));
    let mut file = toml::Table::new();
    file.insert("file".into(), toml::Value::from(pw.display().to_string()));
    table.insert("bind_password".into(), toml::Value::Table(file));
    let config = LdapConfig::from_toml(toml::Value::Table(table)).expect("AD source config");
    let plain = ldap_config(&ou, r#"incremental = "usn""#);
    let (batch, full) = read(&config, true, None).await;
    assert_eq!(batch.users.len(), 3);
    let (_, plain_full) = read(&plain, true, None).await;
    let gone_user = guid_string(&admin.guid_bytes(&users[0]).await);
    let gone_group = guid_string(&admin.guid_bytes(&group).await);
    admin.delete(&users[0]).await;
    admin.delete(&group).await;
    admin.delete(&other[0]).await;
    let (batch, outcome) = read(&config, false, full.cursor.clone()).await;
    assert!(!outcome.complete);
    assert_eq!(
        batch.deleted,
        std::collections::HashMap::from([
            (gone_user.into(), Some(rolebridge::sync::Kind::User)),
            (gone_group.into(), Some(rolebridge::sync::Kind::Group)),
        ]),
        "{batch:?}"
    );
    // The plain sync account cannot see tombstones: its read still works
    // (a warning says deletions wait for the full reconcile).
    let (batch, _) = read(&plain, false, plain_full.cursor.clone()).await;
    assert!(batch.deleted.is_empty(), "{batch:?}");
    // Reported once: the next read from the new cursor has nothing.
    let (batch, _) = read(&config, false, outcome.cursor.clone()).await;
    assert!(batch.deleted.is_empty(), "{batch:?}");
}

/// A USN cursor is pinned to the DC that gave it: it records the DC's
/// invocationId, and a cursor from another DC (or from this one before a
/// restore), or one ahead of the DC's highestCommittedUSN, has expired, so
/// the runner reads in full instead of trusting USNs that do not compare.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_usn_cursor_is_pinned_to_the_dcs_invocation_id() {
    let dc = dc();
    let mut admin = dc.admin().await;
    let tag = unique("u");
    let ou = admin.ou(&tag).await;
    seed_users(&mut admin, &ou, &format!("{tag}x"), 2).await;
    let config = ldap_config(&ou, r#"incremental = "usn""#);
    let (_, full) = read(&config, true, None).await;
    let cursor: Value = serde_json::from_str(full.cursor.as_deref().unwrap()).unwrap();
    let invocation = cursor["invocation_id"]
        .as_str()
        .unwrap_or_else(|| panic!("the cursor names the DC: {cursor}"))
        .to_string();
    assert_eq!(invocation.len(), 32, "a GUID in hex: {invocation}");
    let usn = cursor["usn"].as_u64().expect("usn");

    let expired = |c: Value| {
        let config = config.clone();
        async move {
            let mut source = LdapSource::new(&config).expect("source");
            source
                .read(
                    &ReadRequest {
                        full: false,
                        cursor: Some(c.to_string()),
                    },
                    &mut Batch::new(),
                )
                .await
        }
    };
    let mut other_dc = cursor.clone();
    other_dc["invocation_id"] = Value::from("00112233445566778899aabbccddeeff");
    let err = expired(other_dc).await.unwrap_err();
    assert!(matches!(err, SourceError::CursorExpired), "{err}");
    let mut ahead = cursor.clone();
    ahead["usn"] = Value::from(usn + 1_000_000);
    let err = expired(ahead).await.unwrap_err();
    assert!(matches!(err, SourceError::CursorExpired), "{err}");
    // The cursor as saved still reads incrementally.
    let (batch, outcome) = read(&config, false, full.cursor.clone()).await;
    assert!(!outcome.complete);
    assert_eq!(batch.received, 0, "{batch:?}");
}

// ---------------------------------------------------------------------------
// Through the runner into a real rolebridge (SQLite), checked over SCIM.

/// A source for `srv`'s tenant. These OUs hold a handful of users, so
/// disabling one is over the deletion guard's default 10%: the guard is
/// opened here (it is the LDAP tests' subject, not these).
fn source_config(srv: &TestServer, base: &str, extra: &str) -> SourceConfig {
    let extra = format!("guard = {{ max_deletes = 100000, max_delete_percent = 100.0 }}\n{extra}");
    let table = source_table(&unique("ad"), &srv.tenant, base, &extra);
    let mut configs = parse_sources(&[table]).unwrap_or_else(|e| panic!("source config: {e:?}"));
    configs.remove(0)
}

/// One applied run (a held or failed run fails the test).
async fn sync(srv: &TestServer, config: &SourceConfig) -> RunReport {
    let report = run_source(&srv.app, config, RunOptions::default())
        .await
        .unwrap_or_else(|e| panic!("sync run failed: {e}\n{}", dc().log_tail()));
    assert!(
        report.outcome == rolebridge::app::sync::RunOutcome::Applied
            || report.outcome == rolebridge::app::sync::RunOutcome::Unchanged,
        "run not applied: {report:?}"
    );
    report
}

/// The tenant's users, by userName (every page).
async fn scim_users(srv: &TestServer) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for _page in 0..20 {
        let start = (out.len() + 1).to_string();
        let r = srv
            .query(
                "/Users",
                &[("startIndex", start.as_str()), ("count", "1000")],
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let page = r.body["Resources"].as_array().cloned().unwrap_or_default();
        let total = r.body["totalResults"].as_u64().expect("totalResults") as usize;
        for u in page.iter() {
            out.insert(
                u["userName"].as_str().expect("userName").to_string(),
                u.clone(),
            );
        }
        if page.is_empty() || out.len() >= total {
            return out;
        }
    }
    panic!("more than 20 pages of users");
}

async fn scim_group(srv: &TestServer, display_name: &str) -> Value {
    let filter = format!("displayName eq \"{display_name}\"");
    let r = srv.query("/Groups", &[("filter", filter.as_str())]).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.body["totalResults"], 1,
        "one group {display_name}: {}",
        r.body
    );
    let id = r.body["Resources"][0]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let r = srv.get(&format!("/Groups/{id}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
}

fn member_values(group: &Value) -> BTreeSet<String> {
    group["members"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|m| m["value"].as_str().expect("value").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A synced user's externalId is its GUID; renaming it in AD updates the
/// same SCIM resource (same id, new DN), never a delete and create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_keeps_one_resource_per_guid_across_a_rename() {
    let dc = dc();
    let srv = TestServer::start(Backend::Sqlite).await;
    let mut admin = dc.admin().await;
    let tag = unique("s");
    let ou = admin.ou(&tag).await;
    let alice = admin.user(&ou, &format!("{tag}a"), true).await;
    let group_name = format!("{tag}grp");
    let group = admin.group(&ou, &group_name).await;
    admin
        .add_members(&group, std::slice::from_ref(&alice.dn))
        .await;
    // A group in a group: AD nests by DN in `member` too.
    let outer_name = format!("{tag}outer");
    let outer = admin.group(&ou, &outer_name).await;
    admin
        .add_members(&outer, std::slice::from_ref(&group))
        .await;
    let guid = guid_string(&admin.guid_bytes(&alice.dn).await);
    let config = source_config(&srv, &ou, "");

    let report = sync(&srv, &config).await;
    assert_eq!(report.mode, rolebridge::app::sync::RunMode::Full);
    assert_eq!(
        (report.counts.users_created, report.counts.groups_created),
        (1, 2),
        "{report:?}"
    );
    assert_eq!(report.counts.members_added, 2, "{report:?}");
    let users = scim_users(&srv).await;
    assert_eq!(users.len(), 1, "{users:?}");
    let u = &users[&alice.sam];
    let id = u["id"].as_str().expect("id").to_string();
    assert_eq!(u["externalId"], guid.as_str(), "{u}");
    assert_eq!(u["active"], true);
    assert_eq!(
        u[SYNC_USER_URN]["dn"].as_str().map(norm),
        Some(norm(&alice.dn)),
        "{u}"
    );
    let g = scim_group(&srv, &group_name).await;
    assert_eq!(member_values(&g), BTreeSet::from([id.clone()]));
    let inner_id = g["id"].as_str().expect("id").to_string();
    let o = scim_group(&srv, &outer_name).await;
    assert_eq!(
        member_values(&o),
        BTreeSet::from([inner_id]),
        "nested group"
    );

    let renamed = admin.rename(&alice.dn, &format!("{tag}renamed")).await;
    let report = sync(&srv, &config).await;
    assert_eq!(
        report.mode,
        rolebridge::app::sync::RunMode::Incremental,
        "{report:?}"
    );
    assert_eq!(
        (
            report.counts.users_created,
            report.counts.users_updated,
            report.counts.users_deleted
        ),
        (0, 1, 0),
        "a rename is an update: {report:?}"
    );
    let users = scim_users(&srv).await;
    assert_eq!(users.len(), 1, "{users:?}");
    let u = &users[&alice.sam];
    assert_eq!(u["id"], id.as_str(), "same resource after the rename");
    assert_eq!(
        u[SYNC_USER_URN]["dn"].as_str().map(norm),
        Some(norm(&renamed))
    );
    let g = scim_group(&srv, &group_name).await;
    assert_eq!(
        member_values(&g),
        BTreeSet::from([id]),
        "membership survives the rename"
    );
}

/// userAccountControl 514 syncs as active false; enabling the account
/// (512) makes the same user active on the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_disabled_account_inactive_then_enabled() {
    let dc = dc();
    let srv = TestServer::start(Backend::Sqlite).await;
    let mut admin = dc.admin().await;
    let tag = unique("e");
    let ou = admin.ou(&tag).await;
    let on = admin.user(&ou, &format!("{tag}on"), true).await;
    let off = admin.user(&ou, &format!("{tag}off"), false).await;
    let config = source_config(&srv, &ou, "");
    sync(&srv, &config).await;
    let users = scim_users(&srv).await;
    assert_eq!(users[&on.sam]["active"], true);
    assert_eq!(users[&off.sam]["active"], false);
    let off_id = users[&off.sam]["id"].clone();

    admin.set_enabled(&off.dn, true).await;
    admin.set_enabled(&on.dn, false).await;
    let report = sync(&srv, &config).await;
    assert_eq!(report.counts.users_updated, 2, "{report:?}");
    assert_eq!(report.counts.users_deactivated, 1, "{report:?}");
    let users = scim_users(&srv).await;
    assert_eq!(users.len(), 2);
    assert_eq!(users[&off.sam]["active"], true, "enabled in AD → active");
    assert_eq!(users[&off.sam]["id"], off_id);
    assert_eq!(users[&on.sam]["active"], false, "disabled in AD → inactive");
}

/// After a full sync, an incremental run (by uSNChanged) reads only the
/// entries that changed and applies them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_incremental_by_usn_reads_only_changes() {
    let dc = dc();
    let srv = TestServer::start(Backend::Sqlite).await;
    let mut admin = dc.admin().await;
    let tag = unique("i");
    let ou = admin.ou(&tag).await;
    let users = seed_users(&mut admin, &ou, &format!("{tag}x"), 8).await;
    let group_name = format!("{tag}grp");
    let group = admin.group(&ou, &group_name).await;
    admin.add_members(&group, &users[..4]).await;
    let config = source_config(&srv, &ou, r#"incremental = "usn""#);

    let report = sync(&srv, &config).await;
    assert_eq!(report.mode, rolebridge::app::sync::RunMode::Full);
    assert_eq!(report.entries_read, 9, "8 users and a group: {report:?}");
    assert_eq!(report.counts.users_created, 8);

    admin.set_enabled(&users[5], false).await;
    admin.replace(&users[6], "mail", "moved@mail.rb.test").await;
    admin.remove_members(&group, &users[..1]).await;
    let report = sync(&srv, &config).await;
    assert_eq!(
        report.mode,
        rolebridge::app::sync::RunMode::Incremental,
        "{report:?}"
    );
    assert_eq!(
        report.entries_read, 3,
        "only the 3 changed entries: {report:?}"
    );
    assert_eq!(report.counts.users_updated, 2, "{report:?}");
    assert_eq!(report.counts.users_deactivated, 1, "{report:?}");
    assert_eq!(
        (report.counts.members_removed, report.counts.members_added),
        (1, 0),
        "{report:?}"
    );
    assert_eq!(
        report.counts.users_deleted + report.counts.groups_deleted,
        0,
        "{report:?}"
    );

    let scim = scim_users(&srv).await;
    assert_eq!(scim.len(), 8, "nothing vanished on an incremental run");
    let sam = |dn: &str| {
        dn.split(',')
            .next()
            .unwrap()
            .trim_start_matches("CN=")
            .to_string()
    };
    assert_eq!(scim[&sam(&users[5])]["active"], false);
    assert_eq!(
        scim[&sam(&users[6])]["emails"][0]["value"],
        "moved@mail.rb.test"
    );
    let ids: BTreeSet<String> = users[1..4]
        .iter()
        .map(|d| scim[&sam(d)]["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(member_values(&scim_group(&srv, &group_name).await), ids);

    let report = sync(&srv, &config).await;
    assert_eq!(report.mode, rolebridge::app::sync::RunMode::Incremental);
    assert_eq!(report.entries_read, 0, "{report:?}");
    assert_eq!(
        report.outcome,
        rolebridge::app::sync::RunOutcome::Unchanged,
        "{report:?}"
    );

    // A deleted AD object becomes a tombstone under CN=Deleted Objects: a
    // uSNChanged poll of the base cannot see it, so the incremental run
    // leaves the user alone; the full reconcile deactivates it.
    admin.delete(&users[7]).await;
    let report = sync(&srv, &config).await;
    assert_eq!(report.mode, rolebridge::app::sync::RunMode::Incremental);
    assert_eq!(
        report.counts.users_deactivated + report.counts.users_deleted,
        0,
        "{report:?}"
    );
    assert_eq!(scim_users(&srv).await[&sam(&users[7])]["active"], true);
    let options = RunOptions {
        force_full: true,
        ..RunOptions::default()
    };
    let report = run_source(&srv.app, &config, options)
        .await
        .expect("full reconcile");
    assert_eq!(
        report.mode,
        rolebridge::app::sync::RunMode::Full,
        "{report:?}"
    );
    assert_eq!(
        report.outcome,
        rolebridge::app::sync::RunOutcome::Applied,
        "{report:?}"
    );
    assert_eq!(report.entries_read, 8, "7 users and the group: {report:?}");
    assert_eq!(report.counts.users_deactivated, 1, "{report:?}");
    assert_eq!(
        report.counts.users_deleted, 0,
        "deleted only after the grace period"
    );
    assert_eq!(scim_users(&srv).await[&sam(&users[7])]["active"], false);
}
