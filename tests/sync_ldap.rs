//! The LDAP source against a real slapd: full and incremental reads
//! (syncrepl and modifyTimestamp), renames and moves keep identity, nested
//! groups, a 5,000-member group, and failures (bad bind, bad filter, bad
//! URL, size limit, a silent server, slapd killed mid-read) as errors.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;

use rolebridge::sync::ldap::{LdapConfig, LdapError, LdapSource};
use rolebridge::sync::{Batch, MemberRef, Members, ReadOutcome, ReadRequest, Source, SourceError};

use crate::support::slapd::*;

fn config(slapd: &Slapd, extra: &str) -> LdapConfig {
    let pw = slapd.dir.join("bind-pw");
    std::fs::write(&pw, format!("{SYNC_PW}\n")).unwrap();
    let text = format!(
        "url = \"{}\"\nbind_dn = \"{SYNC_DN}\"\nbind_password = {{ file = \"{}\" }}\nbase_dns = [\"{PEOPLE}\", \"{GROUPS}\"]\n{extra}",
        slapd.url,
        pw.display()
    );
    LdapConfig::from_toml(toml::Value::Table(toml::from_str(&text).unwrap())).unwrap()
}

async fn read(
    config: &LdapConfig,
    request: ReadRequest,
) -> Result<(Batch, ReadOutcome), SourceError> {
    let mut batch = Batch::new();
    let mut source = LdapSource::new(config).unwrap();
    let outcome = source.read(&request, &mut batch).await?;
    Ok((batch, outcome))
}

fn full() -> ReadRequest {
    ReadRequest {
        full: true,
        cursor: None,
    }
}

fn after(outcome: &ReadOutcome) -> ReadRequest {
    ReadRequest {
        full: false,
        cursor: outcome.cursor.clone(),
    }
}

fn locators(batch: &Batch, key: &str) -> BTreeSet<String> {
    let g = batch.groups[key].group.as_ref().expect("group attributes");
    match &g.members {
        Members::Full(m) => m
            .iter()
            .map(|m| match m {
                MemberRef::Locator(l) => l.clone(),
                MemberRef::UserName(u) => format!("name:{u}"),
                MemberRef::Key(k) => format!("key:{k}"),
            })
            .collect(),
        other => panic!("expected a full member list, got {other:?}"),
    }
}

fn seed_small(slapd: &Slapd) {
    let mut ldif = String::new();
    for u in ["ann", "bob", "cyd"] {
        ldif.push_str(&user_ldif(u, &format!("{u}@example.org")));
    }
    ldif.push_str(&group_ldif("admins", &[user_dn("ann"), group_dn("ops")]));
    // A member written with other case and spacing than the server's DN.
    ldif.push_str(&group_ldif(
        "ops",
        &[
            "UID=Bob, OU=People,DC=example, DC=org".to_string(),
            group_dn("admins"),
        ],
    ));
    ldif.push_str(&format!(
        "dn: cn=posix,{GROUPS}\nobjectClass: posixGroup\ncn: posix\ngidNumber: 5000\nmemberUid: cyd\n\n\
         dn: cn=unique,{GROUPS}\nobjectClass: groupOfUniqueNames\ncn: unique\nuniqueMember: {}#'0101'B\n\n",
        user_dn("cyd")
    ));
    slapd.add(&ldif);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_read_maps_users_groups_and_nested_cycles() {
    let slapd = Slapd::start();
    seed_small(&slapd);
    let cfg = config(&slapd, "");
    let (batch, outcome) = read(&cfg, full()).await.unwrap();
    assert!(outcome.complete);
    assert_eq!(outcome.bases, vec![PEOPLE.to_string(), GROUPS.to_string()]);
    let cursor: serde_json::Value =
        serde_json::from_str(outcome.cursor.as_deref().unwrap()).unwrap();
    assert_eq!(cursor["mode"], "syncrepl", "{cursor}");

    assert_eq!(batch.users.len(), 3, "{batch:?}");
    let ann_key = slapd.entry_uuid(&user_dn("ann"));
    let ann = &batch.users[&ann_key];
    assert_eq!(ann.user_name, "ann");
    assert_eq!(ann.emails, vec!["ann@example.org"]);
    assert_eq!(ann.display_name.as_deref(), Some("ann Person"));
    assert_eq!(ann.given_name.as_deref(), Some("ann"));
    assert_eq!(ann.family_name.as_deref(), Some("Person"));
    assert_eq!(ann.external_id.as_deref(), Some(ann_key.as_str()));
    assert_eq!(ann.locator.as_deref(), Some(user_dn("ann").as_str()));
    assert_eq!(ann.base, PEOPLE);
    assert!(ann.active);

    assert_eq!(batch.groups.len(), 4);
    let admins = slapd.entry_uuid(&group_dn("admins"));
    let ops = slapd.entry_uuid(&group_dn("ops"));
    // The cycle admins → ops → admins is reported as it is.
    assert_eq!(
        locators(&batch, &admins),
        BTreeSet::from([user_dn("ann"), group_dn("ops")])
    );
    assert_eq!(
        locators(&batch, &ops),
        BTreeSet::from([user_dn("bob"), group_dn("admins")])
    );
    let posix = slapd.entry_uuid(&format!("cn=posix,{GROUPS}"));
    assert_eq!(
        locators(&batch, &posix),
        BTreeSet::from(["name:cyd".to_string()])
    );
    let unique = slapd.entry_uuid(&format!("cn=unique,{GROUPS}"));
    assert_eq!(locators(&batch, &unique), BTreeSet::from([user_dn("cyd")]));
    let g = batch.groups[&admins].group.as_ref().unwrap();
    assert_eq!(g.display_name, "admins");
    assert_eq!(g.base, GROUPS);

    // The same read by paged search (no content sync) gives the same records.
    let paged = config(&slapd, "incremental = \"none\"\npage_size = 2");
    let (b2, o2) = read(&paged, full()).await.unwrap();
    assert!(o2.complete);
    assert_eq!(o2.cursor, None);
    assert_eq!(b2.users, batch.users);
    assert_eq!(b2.groups, batch.groups);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncrepl_incremental_adds_modifies_renames_moves_deletes() {
    let slapd = Slapd::start();
    seed_small(&slapd);
    slapd.add(&format!(
        "dn: ou=staff,{PEOPLE}\nobjectClass: organizationalUnit\nou: staff\n\n"
    ));
    let cfg = config(&slapd, "");
    let (_, first) = read(&cfg, full()).await.unwrap();
    let ann = slapd.entry_uuid(&user_dn("ann"));
    let bob = slapd.entry_uuid(&user_dn("bob"));
    let cyd = slapd.entry_uuid(&user_dn("cyd"));
    let admins = slapd.entry_uuid(&group_dn("admins"));

    // Nothing changed: nothing to apply.
    let (quiet, q) = read(&cfg, after(&first)).await.unwrap();
    assert!(
        quiet.users.is_empty() && quiet.groups.is_empty() && quiet.deleted.is_empty(),
        "{quiet:?}"
    );
    assert!(q.cursor.is_some());

    slapd.add(&user_ldif("dee", "dee@example.org"));
    slapd.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: mail\nmail: ann@new.example.org\n\n\
         dn: {}\nchangetype: modrdn\nnewrdn: uid=robert\ndeleteoldrdn: 0\n\n\
         dn: {}\nchangetype: modrdn\nnewrdn: uid=cyd\ndeleteoldrdn: 1\nnewsuperior: ou=staff,{PEOPLE}\n\n\
         dn: {}\nchangetype: modify\ndelete: member\nmember: {}\n-\nadd: member\nmember: {}\n\n",
        user_dn("ann"),
        user_dn("bob"),
        user_dn("cyd"),
        group_dn("admins"),
        user_dn("ann"),
        user_dn("dee"),
    ));
    slapd.delete(&[user_dn("ann")]);

    let (batch, outcome) = read(&cfg, after(&first)).await.unwrap();
    let dee = slapd.entry_uuid(&user_dn("dee"));
    assert_eq!(batch.users[&dee].user_name, "dee");
    // Renamed and moved users keep their key; only the locator changes.
    assert_eq!(
        batch.users[&bob].locator.as_deref(),
        Some(format!("uid=robert,{PEOPLE}").as_str())
    );
    assert_eq!(
        batch.users[&cyd].locator.as_deref(),
        Some(format!("uid=cyd,ou=staff,{PEOPLE}").as_str())
    );
    assert!(!batch.users.contains_key(&ann));
    // slapd's sessionlog gives a delete phase: only ann is reported
    // deleted, although every search that does not hold the changed users
    // (the group search of ou=people, the searches of ou=groups) hears of
    // them as deletes.
    assert!(!outcome.complete);
    assert_eq!(
        batch.deleted.keys().collect::<Vec<_>>(),
        vec![&ann],
        "{:?}",
        batch.deleted
    );
    assert_eq!(
        locators(&batch, &admins),
        BTreeSet::from([user_dn("dee"), group_dn("ops")])
    );
    // Unchanged entries are not mentioned.
    let ops = slapd.entry_uuid(&group_dn("ops"));
    assert!(!batch.groups.contains_key(&ops) && !batch.deleted.contains_key(&ops));
    assert!(batch.present.is_empty());
    assert_ne!(outcome.cursor, first.cursor);

    // The new cursor sees none of it again.
    let (again, _) = read(&cfg, after(&outcome)).await.unwrap();
    assert!(
        again.users.is_empty() && again.groups.is_empty() && again.deleted.is_empty(),
        "{again:?}"
    );
}

/// A cursor whose cookies are all replaced by `cookie`.
fn with_cookie(outcome: &ReadOutcome, cookie: &str) -> ReadRequest {
    use base64::Engine as _;
    let mut c: serde_json::Value =
        serde_json::from_str(outcome.cursor.as_deref().unwrap()).unwrap();
    for v in c["cookies"].as_object_mut().unwrap().values_mut() {
        *v = base64::engine::general_purpose::STANDARD
            .encode(cookie)
            .into();
    }
    ReadRequest {
        full: false,
        cursor: Some(c.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncrepl_present_phase_is_complete_and_a_rejected_cookie_expires() {
    let slapd = Slapd::start();
    seed_small(&slapd);
    let cfg = config(&slapd, "");
    let (_, first) = read(&cfg, full()).await.unwrap();
    let (ann, bob, cyd) = (
        slapd.entry_uuid(&user_dn("ann")),
        slapd.entry_uuid(&user_dn("bob")),
        slapd.entry_uuid(&user_dn("cyd")),
    );
    slapd.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: mail\nmail: bob@new.example.org\n\n",
        user_dn("bob")
    ));
    slapd.delete(&[user_dn("cyd")]);
    // A cookie older than the session log: slapd answers with a present
    // phase (RFC 4533 §3.3.1), so the read is complete — everything in
    // scope is reported, changed entries in full, the rest as present —
    // and cyd is gone by omission.
    let old = with_cookie(
        &first,
        "rid=000,csn=20001231000000.000000Z#000000#000#000000",
    );
    let (batch, outcome) = read(&cfg, old).await.unwrap();
    assert!(outcome.complete, "{outcome:?}");
    assert_eq!(batch.users[&bob].emails, vec!["bob@new.example.org"]);
    assert!(
        batch.users.contains_key(&ann) || batch.present.contains(&ann),
        "{batch:?}"
    );
    assert!(!batch.users.contains_key(&cyd) && !batch.present.contains(&cyd));
    for g in ["admins", "ops", "posix", "unique"] {
        let k = slapd.entry_uuid(&group_dn(g));
        assert!(
            batch.groups.contains_key(&k) || batch.present.contains(&k),
            "{g}"
        );
    }
    // A cookie from the future (a server restored from backup): the
    // runner must start over.
    let future = with_cookie(
        &first,
        "rid=000,csn=20991231000000.000000Z#000000#000#000000",
    );
    let err = read(&cfg, future).await.unwrap_err();
    assert!(matches!(err, SourceError::CursorExpired), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modify_timestamp_polling_is_incomplete() {
    let slapd = Slapd::start();
    seed_small(&slapd);
    // modifyTimestamp has a one-second resolution and the filter is >=, so
    // the newest second seen is read again next time: give ann a second of
    // her own, then change bob a second later. The seconds are written
    // (relax control), not slept through: one and two seconds after the
    // seed's.
    let second = |ahead: i64| {
        (time::OffsetDateTime::now_utc() + time::Duration::seconds(ahead))
            .format(time::macros::format_description!(
                "[year][month][day][hour][minute][second]Z"
            ))
            .unwrap()
    };
    let (ann_at, bob_at) = (second(1), second(2));
    slapd.modify_relaxed(&format!(
        "dn: {}\nchangetype: modify\nreplace: sn\nsn: Lee\n-\nreplace: modifyTimestamp\nmodifyTimestamp: {}\n\n",
        user_dn("ann"),
        ann_at
    ));
    assert_eq!(slapd.attribute(&user_dn("ann"), "modifyTimestamp"), ann_at);
    let cfg = config(&slapd, "incremental = \"modify_timestamp\"");
    let (b, first) = read(&cfg, full()).await.unwrap();
    assert!(first.complete);
    assert_eq!(b.users.len(), 3);
    let cursor: serde_json::Value = serde_json::from_str(first.cursor.as_deref().unwrap()).unwrap();
    assert_eq!(cursor["mode"], "modify_timestamp");
    slapd.modify_relaxed(&format!(
        "dn: {}\nchangetype: modify\nreplace: cn\ncn: Bob Renamed\n-\nreplace: modifyTimestamp\nmodifyTimestamp: {}\n\n",
        user_dn("bob"),
        bob_at
    ));
    assert_eq!(slapd.attribute(&user_dn("bob"), "modifyTimestamp"), bob_at);
    slapd.delete(&[user_dn("cyd")]);
    let (batch, outcome) = read(&cfg, after(&first)).await.unwrap();
    assert!(!outcome.complete, "polling cannot see deletions");
    let bob = slapd.entry_uuid(&user_dn("bob"));
    let ann = slapd.entry_uuid(&user_dn("ann"));
    assert_eq!(
        batch.users.keys().cloned().collect::<BTreeSet<_>>(),
        BTreeSet::from([ann.into(), bob.clone().into()]),
        "{batch:?}"
    );
    assert!(batch.groups.is_empty());
    assert_eq!(
        batch.users[&bob].display_name.as_deref(),
        Some("Bob Renamed")
    );
    assert!(batch.deleted.is_empty());
    // A cursor of another mode or scope has expired: the runner's retry
    // then reads in full (and reports the run as full).
    let other = config(
        &slapd,
        "incremental = \"modify_timestamp\"\nuser_filter = \"(uid=*)\"",
    );
    let err = read(&other, after(&outcome)).await.unwrap_err();
    assert!(matches!(err, SourceError::CursorExpired), "{err:?}");
    let (b3, o3) = read(&other, full()).await.unwrap();
    assert!(o3.complete);
    assert_eq!(b3.users.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_of_5000_members() {
    let mut ldif = base_ldif();
    let mut members = Vec::new();
    for i in 0..5000 {
        ldif.push_str(&user_ldif(
            &format!("u{i:05}"),
            &format!("u{i}@example.org"),
        ));
        members.push(user_dn(&format!("u{i:05}")));
    }
    ldif.push_str(&group_ldif("everyone", &members));
    let slapd = Slapd::start_with(&ldif);
    for extra in ["", "incremental = \"none\"\npage_size = 700"] {
        let cfg = config(&slapd, extra);
        let (batch, outcome) = read(&cfg, full()).await.unwrap();
        assert!(outcome.complete);
        assert_eq!(batch.users.len(), 5000);
        let everyone = slapd.entry_uuid(&group_dn("everyone"));
        let got = locators(&batch, &everyone);
        assert_eq!(got.len(), 5000);
        assert!(got.contains(&user_dn("u04999")));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bind_names_the_dn_never_the_password() {
    let slapd = Slapd::start();
    let mut cfg = config(&slapd, "");
    let wrong = slapd.dir.join("wrong-pw");
    std::fs::write(&wrong, "not-the-password-123").unwrap();
    cfg.bind_password = Some(rolebridge::sync::SecretRef {
        env: None,
        file: Some(wrong),
    });
    let err = read(&cfg, full()).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, SourceError::Ldap(LdapError::Bind { .. })),
        "{err:?}"
    );
    assert!(
        msg.contains(SYNC_DN) && msg.contains("invalidCredentials (49)"),
        "{msg}"
    );
    assert!(
        !msg.contains("not-the-password-123") && !format!("{err:?}").contains("not-the-password")
    );

    // A password variable that is not set is its own clear error.
    cfg.bind_password = Some(rolebridge::sync::SecretRef {
        env: Some("ROLEBRIDGE_TEST_UNSET_LDAP_PW".into()),
        file: None,
    });
    let msg = read(&cfg, full()).await.unwrap_err().to_string();
    assert!(
        msg.contains("ROLEBRIDGE_TEST_UNSET_LDAP_PW") && msg.contains("not set"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_filter_bad_base_and_unreachable_server() {
    let slapd = Slapd::start();
    seed_small(&slapd);
    // Past config validation (fields are public): the read names the filter.
    let mut cfg = config(&slapd, "incremental = \"none\"");
    cfg.user_filter = "(uid=ann".into();
    let msg = read(&cfg, full()).await.unwrap_err().to_string();
    assert!(
        msg.contains("(uid=ann") && msg.contains("invalid filter"),
        "{msg}"
    );

    // A base that does not exist is an error, not an empty directory.
    let mut cfg = config(&slapd, "");
    cfg.base_dns = vec![format!("ou=gone,{SUFFIX}")];
    let msg = read(&cfg, full()).await.unwrap_err().to_string();
    assert!(
        msg.contains("ou=gone") && msg.contains("noSuchObject (32)"),
        "{msg}"
    );

    // Nobody listens: a connect error naming the URL.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let text = format!("url = \"ldap://127.0.0.1:{port}\"\nbase_dns = [\"{PEOPLE}\"]");
    let cfg = LdapConfig::from_toml(toml::Value::Table(toml::from_str(&text).unwrap())).unwrap();
    let err = read(&cfg, full()).await.unwrap_err();
    assert!(
        matches!(err, SourceError::Ldap(LdapError::Connect { .. })),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains(&format!("ldap://127.0.0.1:{port}")),
        "{err}"
    );

    // A bad URL never gets this far.
    let text = format!("url = \"ldapz://127.0.0.1\"\nbase_dns = [\"{PEOPLE}\"]");
    let msg =
        LdapConfig::from_toml(toml::Value::Table(toml::from_str(&text).unwrap())).unwrap_err();
    assert!(
        msg.contains("ldapz://127.0.0.1") && msg.contains("scheme"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_limit_is_an_error_in_both_modes() {
    let mut ldif = base_ldif();
    for i in 0..30 {
        ldif.push_str(&user_ldif(&format!("s{i}"), &format!("s{i}@example.org")));
    }
    let slapd = Slapd::start_with(&ldif);
    for extra in ["", "incremental = \"none\"\npage_size = 100"] {
        let mut cfg = config(&slapd, extra);
        cfg.bind_dn = Some(LIMITED_DN.into());
        let err = read(&cfg, full()).await.unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("sizeLimitExceeded (4)"), "{extra}: {msg}");
        assert!(
            msg.contains(PEOPLE) && msg.contains("(objectClass=inetOrgPerson)"),
            "{msg}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_times_out() {
    // Accepts the connection, then never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let text = format!(
        "url = \"ldap://127.0.0.1:{port}\"\nbind_dn = \"{SYNC_DN}\"\nbind_password = {{ env = \"PATH\" }}\nbase_dns = [\"{PEOPLE}\"]\ntimeout = \"300ms\""
    );
    let cfg = LdapConfig::from_toml(toml::Value::Table(toml::from_str(&text).unwrap())).unwrap();
    let started = std::time::Instant::now();
    let err = read(&cfg, full()).await.unwrap_err();
    assert!(
        matches!(err, SourceError::Ldap(LdapError::Timeout { .. })),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("300ms") && err.to_string().contains("bind"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    hold.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slapd_killed_mid_read_is_an_error() {
    let mut ldif = base_ldif();
    for i in 0..4000 {
        ldif.push_str(&user_ldif(
            &format!("k{i:05}"),
            &format!("k{i}@example.org"),
        ));
    }
    // Paged, so slapd cannot have sent everything before it dies: each
    // page is asked for after the last is read. (A syncrepl refresh of a
    // directory this size can sit whole in the socket buffers by then, and
    // then succeeding is right.)
    {
        let extra = "incremental = \"none\"\npage_size = 50";
        let mut slapd = Slapd::start_with(&ldif);
        let pid = slapd.pid();
        let cfg = config(&slapd, extra);
        let killed = Arc::new(AtomicBool::new(false));
        let flag = killed.clone();
        let mut batch = Batch::new().with_progress(move |n| {
            if n == 300 && !flag.swap(true, Ordering::SeqCst) {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
        });
        let mut source = LdapSource::new(&cfg).unwrap();
        let result = source.read(&full(), &mut batch).await;
        assert!(killed.load(Ordering::SeqCst), "{extra}: killed mid-read");
        let err = result.unwrap_err();
        assert!(
            matches!(err, SourceError::Ldap(LdapError::ConnectionLost { .. })),
            "{extra}: {err:?}"
        );
        assert!(batch.users.len() < 4000);
        slapd.kill();
    }
}

// ---- Through the runner: the real store, the real HTTP API. ----

use rolebridge::app::sync::{run_source, run_source_with_progress, RunOptions, SyncError};
use rolebridge::sync::{parse_sources, SourceConfig};

use crate::each_backend;
use crate::support::TestServer;

pub(crate) fn source(srv: &TestServer, slapd: &Slapd, extra: &str) -> SourceConfig {
    let pw = slapd.dir.join("bind-pw");
    std::fs::write(&pw, SYNC_PW).unwrap();
    let t: toml::Table = toml::from_str(&format!(
        "name = \"ldap-{tenant}\"\ntenant = \"{tenant}\"\nkind = \"ldap\"\nurl = \"{url}\"\n\
         bind_dn = \"{SYNC_DN}\"\nbind_password = {{ file = \"{pw}\" }}\n\
         base_dns = [\"{PEOPLE}\", \"{GROUPS}\"]\n{extra}",
        tenant = srv.tenant,
        url = slapd.url,
        pw = pw.display(),
    ))
    .unwrap();
    parse_sources(&[t])
        .unwrap_or_else(|e| panic!("{e:?}"))
        .remove(0)
}

pub(crate) const LENIENT: &str = "[guard]\nmax_deletes = 1000\nmax_delete_percent = 100\n";

async fn scim_user(srv: &TestServer, name: &str) -> serde_json::Value {
    let r = srv
        .get(&format!("/Users?filter=userName%20eq%20%22{name}%22"))
        .await;
    assert_eq!(r.body["totalResults"], 1, "{name}: {}", r.body);
    r.body["Resources"][0].clone()
}

async fn active_users(srv: &TestServer) -> u64 {
    let r = srv.get("/Users?filter=active%20eq%20true&count=0").await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["totalResults"].as_u64().unwrap()
}

fn group_names(u: &serde_json::Value) -> BTreeSet<String> {
    u["groups"]
        .as_array()
        .map(|g| {
            g.iter()
                .map(|g| g["display"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

each_backend! {
    async fn runner_full_then_incremental_sync(backend) {
        let srv = TestServer::start(backend).await;
        let slapd = Slapd::start();
        seed_small(&slapd);
        slapd.add(&format!("dn: ou=staff,{PEOPLE}\nobjectClass: organizationalUnit\nou: staff\n\n"));
        let cfg = source(&srv, &slapd, LENIENT);
        let r = run_source(&srv.app, &cfg, RunOptions::default()).await.unwrap();
        assert_eq!((r.outcome.as_str(), r.mode.as_str()), ("applied", "full"), "{r:?}");
        assert_eq!((r.counts.users_created, r.counts.groups_created), (3, 4), "{r:?}");
        let ann = scim_user(&srv, "ann").await;
        assert_eq!(ann["externalId"], slapd.entry_uuid(&user_dn("ann")).as_str());
        assert_eq!(ann["emails"][0]["value"], "ann@example.org");
        assert_eq!(group_names(&ann), BTreeSet::from(["admins".to_string()]), "{ann}");
        let bob_id = scim_user(&srv, "bob").await["id"].clone();
        let cyd = scim_user(&srv, "cyd").await;
        assert_eq!(group_names(&cyd), BTreeSet::from(["posix".to_string(), "unique".to_string()]), "{cyd}");
        let g = srv.get("/Groups?filter=displayName%20eq%20%22admins%22").await;
        assert_eq!(g.body["Resources"][0]["urn:rolebridge:params:sync:1.0:Group"]["dn"], group_dn("admins").as_str());

        slapd.add(&user_ldif("dee", "dee@example.org"));
        slapd.modify(&format!(
            "dn: {}\nchangetype: modrdn\nnewrdn: uid=robert\ndeleteoldrdn: 1\n\n\
             dn: {}\nchangetype: modrdn\nnewrdn: uid=cyd\ndeleteoldrdn: 1\nnewsuperior: ou=staff,{PEOPLE}\n\n\
             dn: uid=cyd,ou=staff,{PEOPLE}\nchangetype: modify\nreplace: mail\nmail: cyd@new.example.org\n\n\
             dn: {}\nchangetype: modify\ndelete: member\nmember: {}\n-\nadd: member\nmember: {}\n\n",
            user_dn("bob"),
            user_dn("cyd"),
            group_dn("admins"),
            user_dn("ann"),
            user_dn("dee"),
        ));
        slapd.delete(&[user_dn("ann")]);
        let r = run_source(&srv.app, &cfg, RunOptions::default()).await.unwrap();
        assert_eq!((r.outcome.as_str(), r.mode.as_str()), ("applied", "incremental"), "{r:?}");
        assert_eq!((r.counts.users_created, r.counts.users_updated, r.counts.users_deactivated), (1, 2, 1), "{r:?}");
        // The rename kept the SCIM resource: same id, new userName.
        let robert = scim_user(&srv, "robert").await;
        assert_eq!(robert["id"], bob_id);
        assert_eq!(scim_user(&srv, "cyd").await["emails"][0]["value"], "cyd@new.example.org");
        assert_eq!(scim_user(&srv, "ann").await["active"], false);
        let dee = scim_user(&srv, "dee").await;
        assert_eq!(group_names(&dee), BTreeSet::from(["admins".to_string()]), "{dee}");
        // Nothing changed since: unchanged.
        let r = run_source(&srv.app, &cfg, RunOptions::default()).await.unwrap();
        assert_eq!(r.outcome, rolebridge::app::sync::RunOutcome::Unchanged, "{r:?}");
    }
}

each_backend! {
    async fn runner_permissions_through_nested_ldap_groups(backend) {
        let yaml = "catalog: loyjoy\nrules:\n  - id: editors\n    match: {display_name: \"admins\"}\n    assign: {roles: [editor]}\n";
        let srv = TestServer::start_mapped(backend, yaml).await;
        let token = srv.permissions_token().await;
        let slapd = Slapd::start();
        // ann is in admins directly; bob through ops (nested, with a cycle).
        seed_small(&slapd);
        let cfg = source(&srv, &slapd, LENIENT);
        let r = run_source(&srv.app, &cfg, RunOptions::default()).await.unwrap();
        assert_eq!(r.outcome, rolebridge::app::sync::RunOutcome::Applied, "{r:?}");
        let get = |user: &'static str| {
            let url = format!("http://{}/api/v1/tenants/{}/users/{user}/permissions?by=userName", srv.addr, srv.tenant);
            let token = token.clone();
            let srv = &srv;
            async move { srv.send_with(Method::GET, &url, None, &[], Some(&token)).await }
        };
        for user in ["ann", "bob"] {
            let p = get(user).await;
            assert_eq!(p.status, 200, "{}", p.body);
            assert!(p.body["roles"].to_string().contains("editor"), "{user}: {}", p.body);
        }
        let p = get("cyd").await;
        assert!(!p.body["roles"].to_string().contains("editor"), "{}", p.body);
        // bob leaves ops in the directory: revoked after the next sync.
        slapd.modify(&format!("dn: {}\nchangetype: modify\ndelete: member\nmember: {}\n\n", group_dn("ops"), user_dn("bob")));
        let r = run_source(&srv.app, &cfg, RunOptions::default()).await.unwrap();
        assert_eq!(r.counts.members_removed, 1, "{r:?}");
        let p = get("bob").await;
        assert!(!p.body["roles"].to_string().contains("editor"), "{}", p.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_slapd_killed_mid_sync_deletes_nothing() {
    let srv = TestServer::start(crate::support::Backend::Sqlite).await;
    let mut ldif = base_ldif();
    for i in 0..3000 {
        ldif.push_str(&user_ldif(
            &format!("m{i:05}"),
            &format!("m{i}@example.org"),
        ));
    }
    let slapd = Slapd::start_with(&ldif);
    let cfg = source(
        &srv,
        &slapd,
        &format!("incremental = \"none\"\npage_size = 100\n{LENIENT}"),
    );
    let r = run_source(&srv.app, &cfg, RunOptions::default())
        .await
        .unwrap();
    assert_eq!(r.counts.users_created, 3000);
    // Most users vanish, then slapd dies while the next run reads.
    let gone: Vec<String> = (0..2500).map(|i| user_dn(&format!("m{i:05}"))).collect();
    slapd.delete(&gone);
    let pid = slapd.pid();
    let killed = Arc::new(AtomicBool::new(false));
    let flag = killed.clone();
    let progress: rolebridge::app::sync::Progress = Arc::new(move |n| {
        if n >= 200 && !flag.swap(true, Ordering::SeqCst) {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    });
    let err = run_source_with_progress(&srv.app, &cfg, RunOptions::default(), Some(progress))
        .await
        .unwrap_err();
    assert!(killed.load(Ordering::SeqCst));
    assert!(matches!(err, SyncError::Source { .. }), "{err}");
    assert!(err.to_string().contains("lost"), "{err}");
    assert_eq!(active_users(&srv).await, 3000, "nothing deactivated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_guard_holds_mass_delete_and_empty_base_until_confirmed() {
    let srv = TestServer::start(crate::support::Backend::Sqlite).await;
    let mut ldif = base_ldif();
    for i in 0..20 {
        ldif.push_str(&user_ldif(
            &format!("g{i:02}"),
            &format!("g{i}@example.org"),
        ));
    }
    let slapd = Slapd::start_with(&ldif);
    let cfg = source(
        &srv,
        &slapd,
        "[guard]\nmax_deletes = 5\nmax_delete_percent = 100\n",
    );
    run_source(&srv.app, &cfg, RunOptions::default())
        .await
        .unwrap();
    assert_eq!(active_users(&srv).await, 20);
    // 12 deleted: held (incremental syncrepl reports the deletes).
    slapd.delete(
        &(0..12)
            .map(|i| user_dn(&format!("g{i:02}")))
            .collect::<Vec<_>>(),
    );
    let held = run_source(&srv.app, &cfg, RunOptions::default())
        .await
        .unwrap();
    assert_eq!(
        held.outcome,
        rolebridge::app::sync::RunOutcome::Held,
        "{held:?}"
    );
    assert_eq!(active_users(&srv).await, 20);
    // The rest deleted too: the base is empty; a full read is still held.
    slapd.delete(
        &(12..20)
            .map(|i| user_dn(&format!("g{i:02}")))
            .collect::<Vec<_>>(),
    );
    let held = run_source(
        &srv.app,
        &cfg,
        RunOptions {
            force_full: true,
            ..RunOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        held.outcome,
        rolebridge::app::sync::RunOutcome::Held,
        "{held:?}"
    );
    assert!(
        held.held_reason.as_deref().unwrap_or("").contains(PEOPLE),
        "{held:?}"
    );
    assert_eq!(active_users(&srv).await, 20);
    // A dry run shows it and changes nothing.
    let dry = run_source(
        &srv.app,
        &cfg,
        RunOptions {
            dry_run: true,
            force_full: true,
            ..RunOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(dry.outcome, rolebridge::app::sync::RunOutcome::DryRun);
    assert_eq!(
        dry.diff
            .iter()
            .filter(|l| l.starts_with("! user") || l.contains("deactivate"))
            .count(),
        20,
        "{:?}",
        dry.diff
    );
    assert_eq!(active_users(&srv).await, 20);
    let done = run_source(
        &srv.app,
        &cfg,
        RunOptions {
            confirm_deletes: true,
            force_full: true,
            ..RunOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (done.outcome.as_str(), done.counts.users_deactivated),
        ("applied", 20),
        "{done:?}"
    );
    assert_eq!(active_users(&srv).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runner_reports_bad_bind_and_bad_config_clearly() {
    let srv = TestServer::start(crate::support::Backend::Sqlite).await;
    let slapd = Slapd::start();
    seed_small(&slapd);
    let mut cfg = source(&srv, &slapd, "");
    if let rolebridge::sync::SourceKind::Ldap(l) = &mut cfg.kind {
        let wrong = slapd.dir.join("wrong");
        std::fs::write(&wrong, "wrong-secret-99").unwrap();
        l.bind_password = Some(rolebridge::sync::SecretRef {
            env: None,
            file: Some(wrong),
        });
    }
    let err = run_source(&srv.app, &cfg, RunOptions::default())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&cfg.name) && err.contains(SYNC_DN) && err.contains("invalidCredentials"),
        "{err}"
    );
    assert!(!err.contains("wrong-secret-99"));
    assert_eq!(srv.get("/Users").await.body["totalResults"], 0);
    // Config errors name the source and the key.
    let t: toml::Table = toml::from_str(&format!(
        "name = \"x\"\ntenant = \"{}\"\nkind = \"ldap\"\nurl = \"ldap://127.0.0.1:1\"\nbase_dns = [\"{PEOPLE}\"]\nuser_filter = \"(uid=*\"",
        srv.tenant
    )).unwrap();
    let e = parse_sources(&[t])
        .unwrap_err()
        .iter()
        .map(|e| e.to_string())
        .collect::<String>();
    assert!(e.contains("source 'x'") && e.contains("(uid=*"), "{e}");
}

/// A hostile "directory": answers every request on a connection with
/// `reply`, and counts the connections it saw.
async fn hostile_ldap(reply: &'static [u8]) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ldap://{}", listener.local_addr().unwrap());
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                // Bounded: a test server, not a daemon.
                for _ in 0..16 {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {
                            if conn.write_all(reply).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (url, seen)
}

each_backend! {
    async fn a_malformed_bind_response_fails_the_run_and_frees_the_source(backend) {
        // The probe's finding: `30 05 02 01 01 61 00` (a BindResponse with
        // no result fields) makes ldap3 panic while decoding it. The run
        // must fail like any other (recorded, lease released), and the next
        // run must be able to start.
        let srv = TestServer::start(backend).await;
        let (url, seen) = hostile_ldap(&[0x30, 0x05, 0x02, 0x01, 0x01, 0x61, 0x00]).await;
        let dir = tempfile_dir();
        let pw = dir.join("bind-pw");
        std::fs::write(&pw, "secret").unwrap();
        let t: toml::Table = toml::from_str(&format!(
            "name = \"hostile-{tenant}\"\ntenant = \"{tenant}\"\nkind = \"ldap\"\nurl = \"{url}\"\n\
             bind_dn = \"cn=sync,dc=example,dc=org\"\nbind_password = {{ file = \"{pw}\" }}\n\
             base_dns = [\"dc=example,dc=org\"]\ntimeout = \"5s\"\n{LENIENT}",
            tenant = srv.tenant,
            pw = pw.display(),
        ))
        .unwrap();
        let cfg = parse_sources(&[t]).unwrap_or_else(|e| panic!("{e:?}")).remove(0);
        for attempt in 0..2 {
            let err = run_source(&srv.app, &cfg, RunOptions::default()).await.unwrap_err();
            assert!(!matches!(err, SyncError::Busy(_)), "attempt {attempt}: the lease was left held: {err}");
            eprintln!("attempt {attempt}: {err}");
            let state = srv.app.store().sync_state(&cfg.name).await.unwrap();
            assert_eq!(state.lease_owner, None, "attempt {attempt}: lease not released");
            let runs = srv.app.store().sync_runs(&cfg.name, 10).await.unwrap();
            assert_eq!(runs.len(), attempt + 1, "every failed run is recorded");
            assert_eq!(runs[0].outcome, "failed");
            assert!(runs[0].error.as_deref().is_some_and(|e| !e.is_empty()), "{:?}", runs[0]);
        }
        assert!(seen.load(Ordering::SeqCst) >= 2);
        // Nothing was written.
        assert_eq!(srv.get("/Users").await.body["totalResults"], 0);
    }
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = crate::support::test_dir().join(crate::support::unique("hostile-ldap"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

each_backend! {
    async fn an_entry_that_cannot_be_converted_is_left_as_it_was(backend) {
        // `active` mapped to a free-text attribute: one entry with a value
        // that is no boolean must not fail every run of the source, and
        // must not read as a deletion either.
        let srv = TestServer::start(backend).await;
        let slapd = Slapd::start();
        let mut ldif = String::new();
        for u in ["ann", "bob", "cyd"] {
            ldif.push_str(&user_ldif(u, &format!("{u}@example.org")).replace("\n\n", "\ntitle: TRUE\n\n"));
        }
        slapd.add(&ldif);
        let cfg = source(&srv, &slapd, &format!("{LENIENT}[attributes]\nactive = \"title\"\n"));
        let r = run_source(&srv.app, &cfg, RunOptions::default()).await.unwrap();
        assert_eq!(r.counts.users_created, 3, "{r:?}");
        slapd.modify(&format!("dn: {}\nchangetype: modify\nreplace: title\ntitle: maybe\n\n", user_dn("cyd")));
        slapd.add(&user_ldif("dee", "dee@example.org").replace("\n\n", "\ntitle: sometimes\n\n"));
        slapd.add(&user_ldif("eve", "eve@example.org").replace("\n\n", "\ntitle: FALSE\n\n"));
        // No value at all is unknown too, never guessed active: bob keeps
        // his state, fay (new, no title) is not provisioned.
        slapd.modify(&format!("dn: {}\nchangetype: modify\ndelete: title\n\n", user_dn("bob")));
        slapd.add(&user_ldif("fay", "fay@example.org"));
        for full in [false, true] {
            let opts = RunOptions { force_full: full, ..RunOptions::default() };
            let r = run_source(&srv.app, &cfg, opts).await.unwrap_or_else(|e| panic!("full={full}: {e}"));
            assert!(["applied", "unchanged"].contains(&r.outcome.as_str()), "full={full}: {r:?}");
            assert_eq!(r.counts.users_deleted + r.counts.users_deactivated, 0, "full={full}: {r:?}");
        }
        // cyd is kept as it was (active), dee was never provisioned, eve is.
        assert_eq!(scim_user(&srv, "cyd").await["active"], true);
        assert_eq!(scim_user(&srv, "eve").await["active"], false);
        assert_eq!(scim_user(&srv, "bob").await["active"], true);
        for never in ["dee", "fay"] {
            let r = srv.get(&format!("/Users?filter=userName%20eq%20%22{never}%22")).await;
            assert_eq!(r.body["totalResults"], 0, "{never}: {}", r.body);
        }
    }
}

/// slapd killed with `-9` restarts with the `contextCSN` of its last
/// checkpoint, older than the cookie of the last run. Syncrepl with that
/// cookie then answers "nothing changed", and a refresh without one leaves
/// out every entry changed since the checkpoint. The incremental run must
/// notice the rewind and read in full with a plain paged search; a forced
/// full run must read everything too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_that_rewinds_the_context_csn_is_read_in_full() {
    let srv = TestServer::start(crate::support::Backend::Sqlite).await;
    let mut ldif = base_ldif();
    let crew: Vec<String> = (0..20).map(|i| user_dn(&format!("r{i:02}"))).collect();
    for i in 0..40 {
        ldif.push_str(&user_ldif(
            &format!("r{i:02}"),
            &format!("r{i}@example.org"),
        ));
    }
    ldif.push_str(&group_ldif("crew", &crew));
    let mut slapd = Slapd::start_with(&ldif);
    // A write after the seed moves contextCSN past what is on disk.
    slapd.add(&user_ldif("r40", "r40@example.org"));
    let cfg = source(&srv, &slapd, LENIENT);
    let first = run_source(&srv.app, &cfg, RunOptions::default())
        .await
        .unwrap();
    assert_eq!(first.mode, rolebridge::app::sync::RunMode::Full);
    assert_eq!(first.counts.users_created, 41, "{first:?}");
    // Changes after the first run: 5 mails, 3 deletions, 4 new users, one
    // of them in the group.
    let mut changes = String::new();
    for i in 0..5 {
        changes.push_str(&format!(
            "dn: {}\nchangetype: modify\nreplace: mail\nmail: r{i}@changed.example.org\n\n",
            user_dn(&format!("r{i:02}"))
        ));
    }
    slapd.modify(&changes);
    slapd.delete(
        &(5..8)
            .map(|i| user_dn(&format!("r{i:02}")))
            .collect::<Vec<_>>(),
    );
    for i in 41..45 {
        slapd.add(&user_ldif(&format!("r{i}"), &format!("r{i}@example.org")));
    }
    slapd.modify(&format!(
        "dn: {}\nchangetype: modify\nadd: member\nmember: {}\n\n",
        group_dn("crew"),
        user_dn("r41")
    ));
    let before_crash = slapd.context_csn();
    slapd.kill();
    slapd.restart();
    let after_crash = slapd.context_csn();
    assert!(
        after_crash < before_crash,
        "the crash must rewind contextCSN for this test to mean anything: {after_crash} vs {before_crash}"
    );

    let r = run_source(&srv.app, &cfg, RunOptions::default())
        .await
        .unwrap();
    assert_eq!(
        r.mode,
        rolebridge::app::sync::RunMode::Full,
        "a rewound server is read in full: {r:?}"
    );
    assert_eq!(
        r.outcome,
        rolebridge::app::sync::RunOutcome::Applied,
        "{r:?}"
    );
    assert_eq!(r.counts.users_created, 4, "{r:?}");
    assert_eq!(r.counts.users_deactivated, 3, "{r:?}");
    assert_eq!(r.counts.users_updated, 5, "the 5 changed mails: {r:?}");
    assert_eq!(r.counts.members_added, 1, "{r:?}");
    assert_eq!(r.counts.groups_deleted, 0, "{r:?}");
    assert_eq!(active_users(&srv).await, 41 - 3 + 4);
    let u = scim_user(&srv, "r00").await;
    assert_eq!(u["emails"][0]["value"], "r0@changed.example.org", "{u}");
    assert!(group_names(&scim_user(&srv, "r41").await).contains("crew"));

    // From the full read on, incremental runs work again and see new writes.
    slapd.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: mail\nmail: r10@later.example.org\n\n",
        user_dn("r10")
    ));
    let r = run_source(&srv.app, &cfg, RunOptions::default())
        .await
        .unwrap();
    assert_eq!(r.mode, rolebridge::app::sync::RunMode::Incremental, "{r:?}");
    assert_eq!(r.counts.users_updated, 1, "{r:?}");
    assert_eq!(r.entries_read, 1, "only the changed entry is read: {r:?}");

    // A forced full run after another crash reads every entry: a plain
    // paged search, not a refresh bounded by the rewound contextCSN.
    slapd.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: mail\nmail: r11@later.example.org\n\n",
        user_dn("r11")
    ));
    slapd.kill();
    slapd.restart();
    let r = run_source(
        &srv.app,
        &cfg,
        RunOptions {
            force_full: true,
            ..RunOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(r.mode, rolebridge::app::sync::RunMode::Full);
    assert_eq!(r.entries_read, 42 + 1, "42 users and one group: {r:?}");
    assert_eq!(r.counts.users_updated, 1, "{r:?}");
    assert_eq!(r.counts.users_deactivated, 0, "{r:?}");
    assert_eq!(r.counts.groups_deleted, 0, "{r:?}");
}

/// 5 of 50 groups deleted is 10%, the default share: held, and the
/// memberships that go with the deleted groups are counted and named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_groups_count_with_their_memberships() {
    let srv = TestServer::start(crate::support::Backend::Sqlite).await;
    let mut ldif = base_ldif();
    let people: Vec<String> = (0..30).map(|i| user_dn(&format!("k{i:02}"))).collect();
    for i in 0..30 {
        ldif.push_str(&user_ldif(
            &format!("k{i:02}"),
            &format!("k{i}@example.org"),
        ));
    }
    for g in 0..50 {
        let members = if g < 5 { &people[..] } else { &people[..1] };
        ldif.push_str(&group_ldif(&format!("team{g:02}"), members));
    }
    let slapd = Slapd::start_with(&ldif);
    let cfg = source(&srv, &slapd, "[guard]\nmax_deletes = 1000\n");
    let first = run_source(&srv.app, &cfg, RunOptions::default())
        .await
        .unwrap();
    assert_eq!(first.counts.groups_created, 50, "{first:?}");
    slapd.delete(
        &(0..5)
            .map(|g| group_dn(&format!("team{g:02}")))
            .collect::<Vec<_>>(),
    );
    let held = run_source(&srv.app, &cfg, RunOptions::default())
        .await
        .unwrap();
    assert_eq!(
        held.outcome,
        rolebridge::app::sync::RunOutcome::Held,
        "{held:?}"
    );
    assert_eq!(held.counts.groups_deleted, 5, "{held:?}");
    assert_eq!(held.counts.members_removed, 5 * 30, "{held:?}");
    let reason = held.held_reason.unwrap();
    assert!(
        reason.contains("5 group deletions of 50 (10.0%)"),
        "{reason}"
    );
    assert!(
        reason.contains("150 membership removals of 195"),
        "{reason}"
    );
}

/// A source pointed at another tenant: its cursor describes the old
/// tenant, so the first run in the new one is full (an incremental read
/// would bring only what changed), and the old tenant's links are released:
/// its users stay, no longer owned by the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_moved_to_another_tenant_reads_in_full_and_releases_the_old_links() {
    let srv = TestServer::start(crate::support::Backend::Sqlite).await;
    let slapd = Slapd::start();
    let mut ldif = String::new();
    for u in ["ann", "bob", "cyd"] {
        ldif.push_str(&user_ldif(u, &format!("{u}@example.org")));
    }
    slapd.add(&ldif);
    let cfg = source(&srv, &slapd, LENIENT);
    let r = run_source(&srv.app, &cfg, RunOptions::default())
        .await
        .unwrap();
    assert_eq!(r.counts.users_created, 3, "{r:?}");
    slapd.modify(&format!(
        "dn: {}\nchangetype: modify\nreplace: mail\nmail: ann@moved.example.org\n\n",
        user_dn("ann")
    ));
    let (other, _) = srv.other_tenant().await;
    let mut moved = cfg.clone();
    moved.tenant = rolebridge::domain::TenantName::parse(&other).unwrap();
    let r = run_source(&srv.app, &moved, RunOptions::default())
        .await
        .unwrap();
    assert_eq!(r.mode, rolebridge::app::sync::RunMode::Full, "{r:?}");
    assert_eq!(
        r.counts.users_created, 3,
        "every user, not only the changed one: {r:?}"
    );
    assert_eq!(
        r.counts.users_deactivated + r.counts.users_deleted,
        0,
        "{r:?}"
    );
    // The old tenant keeps its users, released by the source.
    let old = srv
        .app
        .store()
        .tenant_by_name(&cfg.tenant)
        .await
        .unwrap()
        .unwrap()
        .id;
    assert!(srv
        .app
        .store()
        .sync_links(&cfg.name, old)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(active_users(&srv).await, 3);
    // From then on the new tenant's runs are incremental.
    let r = run_source(&srv.app, &moved, RunOptions::default())
        .await
        .unwrap();
    assert_eq!(r.mode, rolebridge::app::sync::RunMode::Incremental, "{r:?}");
}

/// A user deleted and created again under the same DN gets a new stable id;
/// the groups naming that DN did not change, so an incremental batch does
/// not carry them. The new account holds their memberships at once, not
/// after the next full reconcile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_re_created_under_the_same_dn_keeps_its_groups_at_once() {
    let srv = TestServer::start(crate::support::Backend::Sqlite).await;
    let slapd = Slapd::start();
    let mut ldif = String::new();
    for u in ["ann", "bob"] {
        ldif.push_str(&user_ldif(u, &format!("{u}@example.org")));
    }
    ldif.push_str(&group_ldif("crew", &[user_dn("ann"), user_dn("bob")]));
    slapd.add(&ldif);
    let cfg = source(&srv, &slapd, LENIENT);
    run_source(&srv.app, &cfg, RunOptions::default())
        .await
        .unwrap();
    let before = scim_user(&srv, "ann").await;
    slapd.delete(&[user_dn("ann")]);
    slapd.add(&user_ldif("ann", "ann@example.org"));
    let r = run_source(&srv.app, &cfg, RunOptions::default())
        .await
        .unwrap();
    assert_eq!(r.mode, rolebridge::app::sync::RunMode::Incremental, "{r:?}");
    let after = scim_user(&srv, "ann").await;
    assert_ne!(after["id"], before["id"], "a new account: {after}");
    assert!(group_names(&after).contains("crew"), "{after}");
    assert!(group_names(&scim_user(&srv, "bob").await).contains("crew"));
}
