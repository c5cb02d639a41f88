//! The Entra ID source against a local Graph stand-in (tests/support/graph.rs):
//! `EntraSource::read` into a `Batch`, then whole runs through the runner
//! and the real binary.

#[path = "support/graph.rs"]
mod graph;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use graph::{GraphOptions, GraphStandIn};
use rolebridge::sync::entra::{EntraConfig, EntraError, EntraSource};
use rolebridge::sync::{
    Batch, ExternalKey, Kind, MemberRef, Members, ReadOutcome, ReadRequest, Source, SourceError,
};
use serde_json::json;

/// Writes the stand-in's client secret to a file the config points at.
fn secret_file(secret: &str) -> std::path::PathBuf {
    let dir = crate::support::test_dir();
    let path = dir.join(format!("{}.secret", crate::support::unique("entra")));
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    path
}

/// The `kind = "entra"` keys for this stand-in; `extra` is appended (keys,
/// then an optional `[attributes]` table). Retries are fast so tests that
/// exhaust them stay short.
fn entra_toml(g: &GraphStandIn, secret: &str, extra: &str) -> String {
    format!(
        "directory_id = \"{}\"\nclient_id = \"{}\"\nclient_secret = {{ file = \"{}\" }}\n\
         authority_url = \"{}\"\ngraph_url = \"{}\"\nretry_base = \"10ms\"\n\
         max_retry_wait = \"5s\"\nrequest_timeout = \"5s\"\n{extra}",
        g.options.directory_id,
        g.options.client_id,
        secret_file(secret).display(),
        g.authority,
        g.graph_url,
    )
}

fn config(g: &GraphStandIn, extra: &str) -> EntraConfig {
    config_with_secret(g, &g.options.client_secret, extra)
}

fn config_with_secret(g: &GraphStandIn, secret: &str, extra: &str) -> EntraConfig {
    let text = entra_toml(g, secret, extra);
    EntraConfig::from_toml(toml::Value::Table(toml::from_str(&text).unwrap())).unwrap()
}

async fn read(
    source: &mut EntraSource,
    cursor: Option<&str>,
) -> Result<(Batch, ReadOutcome), SourceError> {
    let mut batch = Batch::new();
    let request = ReadRequest {
        full: cursor.is_none(),
        cursor: cursor.map(str::to_string),
    };
    let outcome = source.read(&request, &mut batch).await?;
    Ok((batch, outcome))
}

/// A group's members after a read: its full list plus accumulated changes.
fn members(batch: &Batch, group: &str) -> BTreeSet<String> {
    let g = batch.groups.get(group).expect("group in batch");
    let mut out: BTreeSet<MemberRef> = match g.group.as_ref().map(|g| &g.members) {
        Some(Members::Full(list)) => list.iter().cloned().collect(),
        _ => BTreeSet::new(),
    };
    for m in &g.added {
        out.insert(m.clone());
    }
    for m in &g.removed {
        out.remove(m);
    }
    out.into_iter()
        .map(|m| match m {
            MemberRef::Key(k) => k.as_str().to_string(),
            other => panic!("Graph members are keys, not {other:?}"),
        })
        .collect()
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

fn keys(ids: &[&str]) -> BTreeSet<ExternalKey> {
    ids.iter().map(|s| ExternalKey::from(*s)).collect()
}

/// A small directory: three users (one disabled), a security group holding
/// two users and a nested group, the nested group, and a Microsoft 365
/// group.
struct Directory {
    ann: String,
    bob: String,
    cid: String,
    admins: String,
    ops: String,
    m365: String,
}

fn populate(g: &GraphStandIn) -> Directory {
    let ann = g.add_user("ann@contoso.example", "Ann", "Ames");
    let bob = g.add_user("bob@contoso.example", "Bob", "Bell");
    let cid = g.add_user("cid@contoso.example", "Cid", "Cole");
    g.set_user(&cid, "accountEnabled", json!(false));
    let admins = g.add_group("Admins", true);
    let ops = g.add_group("Ops", true);
    let m365 = g.add_group("Marketing", false);
    g.add_member(&admins, &ann);
    g.add_member(&admins, &ops);
    g.add_member(&ops, &bob);
    g.add_member(&m365, &cid);
    Directory {
        ann,
        bob,
        cid,
        admins,
        ops,
        m365,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_read_reports_users_groups_and_nested_members() {
    let g = GraphStandIn::start().await;
    let d = populate(&g);
    let mut source = EntraSource::new(&config(&g, "")).unwrap();
    let (batch, outcome) = read(&mut source, None).await.unwrap();

    assert!(outcome.complete, "a full read is complete");
    assert_eq!(outcome.bases, ["graph"]);
    assert_eq!(batch.users.len(), 3);
    let ann = &batch.users[&d.ann];
    assert_eq!(ann.user_name, "ann@contoso.example");
    assert_eq!(ann.external_id.as_deref(), Some(d.ann.as_str()));
    assert_eq!(ann.display_name.as_deref(), Some("Ann Ames"));
    assert_eq!(ann.given_name.as_deref(), Some("Ann"));
    assert_eq!(ann.family_name.as_deref(), Some("Ames"));
    assert_eq!(ann.emails, ["ann@contoso.example"]);
    assert_eq!(ann.base, "graph");
    assert!(ann.active);
    assert!(
        !batch.users[&d.cid].active,
        "accountEnabled=false → inactive"
    );

    assert_eq!(batch.groups.len(), 3);
    let admins = batch.groups[&d.admins].group.as_ref().unwrap();
    assert_eq!(admins.display_name, "Admins");
    assert_eq!(admins.external_id.as_deref(), Some(d.admins.as_str()));
    assert_eq!(members(&batch, &d.admins), set(&[&d.ann, &d.ops]));
    assert_eq!(members(&batch, &d.ops), set(&[&d.bob]));
    assert_eq!(members(&batch, &d.m365), set(&[&d.cid]));
    assert!(batch.deleted.is_empty());

    // The cursor holds both deltaLinks.
    let cursor: serde_json::Value =
        serde_json::from_str(outcome.cursor.as_deref().unwrap()).unwrap();
    let users = cursor["users"].as_str().unwrap();
    let groups = cursor["groups"].as_str().unwrap();
    assert!(
        users.starts_with(&format!("{}/users/delta?$deltatoken=", g.graph_url)),
        "{users}"
    );
    assert!(
        groups.starts_with(&format!("{}/groups/delta?$deltatoken=", g.graph_url)),
        "{groups}"
    );

    // The request selected the mapped properties and the members.
    // Groups first, then users (see the source for why).
    let paths = g.paths();
    assert!(paths[0].contains("/groups/delta?"), "{paths:?}");
    assert!(
        paths[1].contains(
            "/users/delta?$select=id,userPrincipalName,displayName,givenName,surname,mail,accountEnabled"
        ),
        "{paths:?}"
    );
    assert!(paths
        .iter()
        .any(|p| p.contains("/groups/delta?$select=displayName,securityEnabled,members")));
    // One token for the whole read.
    assert_eq!(g.token_requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_read_reports_changes_disables_deletions_and_membership() {
    let g = GraphStandIn::start().await;
    let d = populate(&g);
    let mut source = EntraSource::new(&config(&g, "")).unwrap();
    let (_, first) = read(&mut source, None).await.unwrap();
    let cursor = first.cursor.unwrap();

    // Nothing changed: an empty delta.
    let (batch, outcome) = read(&mut source, Some(&cursor)).await.unwrap();
    assert!(!outcome.complete, "a delta read is not complete");
    assert_eq!(batch.received, 0, "{batch:?}");
    let cursor = outcome.cursor.unwrap();

    let dan = g.add_user("dan@contoso.example", "Dan", "Dale");
    g.set_user(&d.ann, "surname", json!("Ames-Smith"));
    g.set_user(&d.bob, "accountEnabled", json!(false));
    g.set_user(&d.cid, "accountEnabled", json!(true));
    g.add_member(&d.ops, &dan);
    g.remove_member(&d.admins, &d.ann);
    g.delete_user(&d.cid, false);
    g.delete_group(&d.m365);
    let eve = g.add_user("eve@contoso.example", "Eve", "Eng");
    g.delete_user(&eve, true);

    let (batch, outcome) = read(&mut source, Some(&cursor)).await.unwrap();
    assert!(!outcome.complete);
    assert_eq!(
        batch.users.keys().cloned().collect::<BTreeSet<_>>(),
        keys(&[&d.ann, &d.bob, &dan])
    );
    assert_eq!(
        batch.users[&d.ann].family_name.as_deref(),
        Some("Ames-Smith")
    );
    // Unchanged properties come along (Graph returns every selected one).
    assert_eq!(batch.users[&d.ann].given_name.as_deref(), Some("Ann"));
    assert!(!batch.users[&d.bob].active, "disabled");
    assert!(batch.users[&dan].active);
    assert_eq!(
        batch.deleted.get(&d.cid),
        Some(&Some(Kind::User)),
        "soft delete"
    );
    assert_eq!(
        batch.deleted.get(&eve),
        Some(&Some(Kind::User)),
        "hard delete"
    );
    assert_eq!(batch.deleted.get(&d.m365), Some(&Some(Kind::Group)));
    assert!(!batch.groups.contains_key(&d.m365));

    // Membership-only changes: no attributes, changes only.
    let ops = &batch.groups[&d.ops];
    assert!(
        ops.group.is_none(),
        "members-only change carries no attributes: {ops:?}"
    );
    assert_eq!(
        ops.added,
        [MemberRef::Key(dan.clone().into())].into_iter().collect()
    );
    assert!(ops.removed.is_empty());
    let admins = &batch.groups[&d.admins];
    assert!(admins.group.is_none());
    assert_eq!(
        admins.removed,
        [MemberRef::Key(d.ann.clone().into())].into_iter().collect()
    );

    // A rename carries the attributes, with member changes as a delta.
    let cursor = outcome.cursor.unwrap();
    g.rename_group(&d.admins, "Administrators");
    g.add_member(&d.admins, &dan);
    let (batch, _) = read(&mut source, Some(&cursor)).await.unwrap();
    let admins = &batch.groups[&d.admins];
    let group = admins.group.as_ref().expect("attributes");
    assert_eq!(group.display_name, "Administrators");
    assert!(matches!(group.members, Members::Delta { .. }));
    assert_eq!(
        admins.added,
        [MemberRef::Key(dan.clone().into())].into_iter().collect()
    );
    assert_eq!(batch.users.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_across_many_pages_and_repeated_groups() {
    let g = GraphStandIn::start_with(GraphOptions {
        page_size: 7,
        member_chunk: 9,
        ..GraphOptions::default()
    })
    .await;
    let mut users = Vec::new();
    for i in 0..250 {
        users.push(g.add_user(&format!("u{i}@contoso.example"), "U", &format!("{i}")));
    }
    let big = g.add_group("Everyone", true);
    let small = g.add_group("Few", true);
    for u in &users[..100] {
        g.add_member(&big, u);
    }
    g.add_member(&small, &users[200]);
    let mut source = EntraSource::new(&config(&g, "")).unwrap();
    let (batch, outcome) = read(&mut source, None).await.unwrap();
    assert_eq!(batch.users.len(), 250);
    assert_eq!(
        members(&batch, &big).len(),
        100,
        "members spread over 12 entries"
    );
    assert_eq!(members(&batch, &small), set(&[&users[200]]));
    // 250/7 → 36 user pages; the big group repeats on 12 pages.
    let paths = g.paths();
    assert_eq!(
        paths.iter().filter(|p| p.contains("/users/delta")).count(),
        36
    );
    assert!(paths.iter().filter(|p| p.contains("/groups/delta")).count() >= 12);
    assert!(
        !paths
            .iter()
            .any(|p| p.contains("/groups/") && !p.contains("/groups/delta")),
        "no lookups needed in a full read with selection all: {paths:?}"
    );

    // A delta with many member changes to the big group: repeats on several
    // pages become member changes only.
    for u in &users[100..150] {
        g.add_member(&big, u);
    }
    for u in &users[..20] {
        g.remove_member(&big, u);
    }
    let (batch, _) = read(&mut source, outcome.cursor.as_deref()).await.unwrap();
    let change = &batch.groups[&big];
    assert_eq!(change.added.len(), 50);
    assert_eq!(change.removed.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_pages_are_retried() {
    let g = GraphStandIn::start_with(GraphOptions {
        page_size: 2,
        ..GraphOptions::default()
    })
    .await;
    let d = populate(&g);
    let mut source = EntraSource::new(&config(&g, "")).unwrap();

    // 429 with Retry-After: 1 twice: honoured (about 2 s), then success.
    g.fail_next(2, 429, Some(1));
    let started = Instant::now();
    let (batch, _) = read(&mut source, None).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "Retry-After honoured"
    );
    assert_eq!(batch.users.len(), 3);
    assert_eq!(members(&batch, &d.admins), set(&[&d.ann, &d.ops]));

    // 503 without Retry-After: exponential backoff from retry_base.
    g.fail_next(3, 503, None);
    let before = g.graph_requests();
    let (batch, _) = read(&mut source, None).await.unwrap();
    assert_eq!(batch.users.len(), 3);
    assert!(
        g.graph_requests() - before >= 3 + 4,
        "3 retries and the pages"
    );

    // Throttled beyond max_retries (5): the read fails, no partial result.
    g.fail_next(100, 429, None);
    let started = Instant::now();
    let err = read(&mut source, None).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            SourceError::Entra(EntraError::Throttled {
                attempts: 6,
                status: 429,
                ..
            })
        ),
        "{text}"
    );
    assert!(
        text.contains("429 TooManyRequests after 6 attempts"),
        "{text}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // A Retry-After beyond the wait budget (5 s) fails at once.
    g.fail_next(1, 429, Some(3600));
    let started = Instant::now();
    let err = read(&mut source, None).await.unwrap_err();
    assert!(
        matches!(err, SourceError::Entra(EntraError::Throttled { .. })),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_expiring_mid_run_is_renewed_once() {
    let g = GraphStandIn::start_with(GraphOptions {
        page_size: 1,
        ..GraphOptions::default()
    })
    .await;
    populate(&g);
    let mut source = EntraSource::new(&config(&g, "")).unwrap();
    g.revoke_tokens_after(2);
    let (batch, _) = read(&mut source, None).await.unwrap();
    assert_eq!(batch.users.len(), 3);
    assert_eq!(g.token_requests(), 2, "one renewal");

    // The cached token serves the next read.
    let (_, _) = read(&mut source, None).await.unwrap();
    assert_eq!(g.token_requests(), 2);

    // A renewed token that is rejected too: the read fails, clearly.
    g.reject_all_tokens();
    let err = read(&mut source, None).await.unwrap_err();
    assert_eq!(g.token_requests(), 3, "exactly one renewal, then fail");
    let text = err.to_string();
    assert!(
        text.contains("denied access (HTTP 401 InvalidAuthenticationToken)"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_delta_token_asks_for_a_full_resync() {
    let g = GraphStandIn::start().await;
    let d = populate(&g);
    let mut source = EntraSource::new(&config(&g, "")).unwrap();
    let (_, outcome) = read(&mut source, None).await.unwrap();
    g.expire_delta_tokens();
    g.delete_user(&d.bob, true);
    let err = read(&mut source, outcome.cursor.as_deref())
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::CursorExpired), "{err}");
    // The full read that follows sees the directory as it is.
    let (batch, outcome) = read(&mut source, None).await.unwrap();
    assert!(outcome.complete);
    assert_eq!(
        batch.users.keys().cloned().collect::<BTreeSet<_>>(),
        keys(&[&d.ann, &d.cid])
    );

    // A cursor made for other settings, or garbage, is expired too.
    let mut security = EntraSource::new(&config(&g, "groups = \"security\"")).unwrap();
    let err = read(&mut security, outcome.cursor.as_deref())
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::CursorExpired), "{err}");
    let err = read(&mut source, Some("{not json")).await.unwrap_err();
    assert!(matches!(err, SourceError::CursorExpired), "{err}");
}

/// Microsoft documents the reset as "40X-series" with `syncStateNotFound`:
/// any 4xx with a reset code expires the cursor, not only 400 and 410.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_reset_on_any_4xx_expires_the_cursor() {
    for status in [400, 403, 404, 409, 410] {
        let g = GraphStandIn::start().await;
        populate(&g);
        let mut source = EntraSource::new(&config(&g, "")).unwrap();
        let (_, outcome) = read(&mut source, None).await.unwrap();
        g.reset_status(status);
        g.expire_delta_tokens();
        let err = read(&mut source, outcome.cursor.as_deref())
            .await
            .unwrap_err();
        assert!(matches!(err, SourceError::CursorExpired), "{status}: {err}");
    }
}

/// The token endpoint's transient answers (429/503 `temporarily_unavailable`,
/// AADSTS90033) are retried like Graph throttling, honouring Retry-After;
/// when retries run out the message says what the endpoint said, not that
/// the credentials were rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_token_errors_are_retried() {
    let g = GraphStandIn::start().await;
    let d = populate(&g);
    let mut source = EntraSource::new(&config(&g, "max_retries = 3")).unwrap();
    g.fail_token_next(2, 429, Some(1));
    let started = Instant::now();
    let (batch, _) = read(&mut source, None).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "Retry-After honoured"
    );
    assert_eq!(g.token_requests(), 3);
    assert_eq!(members(&batch, &d.admins), set(&[&d.ann, &d.ops]));

    let mut fresh = EntraSource::new(&config(&g, "max_retries = 3")).unwrap();
    g.fail_token_next(100, 503, None);
    let err = read(&mut fresh, None).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            SourceError::Entra(EntraError::Throttled {
                attempts: 4,
                status: 503,
                ..
            })
        ),
        "{text}"
    );
    assert!(text.contains("token endpoint"), "{text}");
    assert!(
        text.contains("503 temporarily_unavailable after 4 attempts"),
        "{text}"
    );
    assert!(!text.contains("rejected the client credentials"), "{text}");
}

/// A wrong client id is worded as what the endpoint said, not as a bad
/// secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_errors_are_worded_by_their_code() {
    let g = GraphStandIn::start().await;
    populate(&g);
    let text = entra_toml(&g, &g.options.client_secret, "").replace(
        &format!("client_id = \"{}\"", g.options.client_id),
        "client_id = \"00000000-0000-0000-0000-000000000000\"",
    );
    let cfg = EntraConfig::from_toml(toml::Value::Table(toml::from_str(&text).unwrap())).unwrap();
    let err = read(&mut EntraSource::new(&cfg).unwrap(), None)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("unauthorized_client: AADSTS700016"), "{text}");
    assert!(text.contains("does not know this client id"), "{text}");
    assert!(!text.contains("secret"), "{text}");
    assert_eq!(g.token_requests(), 1, "a final error is not retried");
}

/// A run throttled page after page ends when its retries have waited
/// `max_run_wait` in all, though each request is within its own budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_run_is_bounded_by_max_run_wait() {
    let g = GraphStandIn::start_with(GraphOptions {
        page_size: 1,
        ..GraphOptions::default()
    })
    .await;
    populate(&g);
    let text = entra_toml(
        &g,
        &g.options.client_secret,
        "max_retries = 20\nmax_run_wait = \"2s\"",
    )
    .replace("max_retry_wait = \"5s\"", "max_retry_wait = \"30s\"");
    let cfg = EntraConfig::from_toml(toml::Value::Table(toml::from_str(&text).unwrap())).unwrap();
    let mut source = EntraSource::new(&cfg).unwrap();
    g.fail_next(1000, 429, Some(1));
    let started = Instant::now();
    let err = read(&mut source, None).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, SourceError::Entra(EntraError::RunWaitExhausted { .. })),
        "{text}"
    );
    assert!(text.contains("max_run_wait = 2s"), "{text}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "{took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stand_in_going_down_mid_run_fails_the_read() {
    let g = GraphStandIn::start_with(GraphOptions {
        page_size: 1,
        ..GraphOptions::default()
    })
    .await;
    populate(&g);
    let mut source = EntraSource::new(&config(&g, "max_retries = 3")).unwrap();
    g.go_down_after(2);
    let started = Instant::now();
    let err = read(&mut source, None).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(
            err,
            SourceError::Entra(EntraError::Unreachable { attempts: 4, .. })
        ),
        "{text}"
    );
    assert!(
        text.contains("/groups/delta unreachable after 4 attempts"),
        "{text}"
    );
    assert!(
        !text.contains("skiptoken"),
        "no state tokens in messages: {text}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_secret_is_a_clear_error_without_the_secret() {
    let g = GraphStandIn::start().await;
    populate(&g);
    let wrong = "Wr0ng~secret-value";
    let mut source = EntraSource::new(&config_with_secret(&g, wrong, "")).unwrap();
    let err = read(&mut source, None).await.unwrap_err();
    let text = err.to_string();
    assert!(
        matches!(err, SourceError::Entra(EntraError::TokenRejected { .. })),
        "{text}"
    );
    assert!(text.contains("rejected the client credentials: invalid_client: AADSTS7000215: Invalid client secret provided"), "{text}");
    assert!(
        text.contains(&format!("{}/oauth2/v2.0/token", g.options.directory_id)),
        "{text}"
    );
    assert!(!text.contains(wrong) && !format!("{err:?}").contains(wrong));
    assert_eq!(g.graph_requests(), 0, "nothing read without a token");

    // A missing secret file names the file.
    let mut cfg = config(&g, "");
    cfg.client_secret.file = Some("/nonexistent/rolebridge-secret".into());
    let err = read(&mut EntraSource::new(&cfg).unwrap(), None)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot read secret file '/nonexistent/rolebridge-secret'"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_selection_security_and_named() {
    let g = GraphStandIn::start().await;
    let d = populate(&g);

    let mut security = EntraSource::new(&config(&g, "groups = \"security\"")).unwrap();
    let (batch, outcome) = read(&mut security, None).await.unwrap();
    assert_eq!(
        batch.groups.keys().cloned().collect::<BTreeSet<_>>(),
        keys(&[&d.admins, &d.ops]),
        "the Microsoft 365 group is not a security group"
    );
    assert_eq!(batch.users.len(), 3, "users are all synced");
    // A members-only change to a group: a lookup decides the scope.
    g.add_member(&d.m365, &d.ann);
    g.add_member(&d.ops, &d.ann);
    let (batch, _) = read(&mut security, outcome.cursor.as_deref())
        .await
        .unwrap();
    assert_eq!(
        batch.groups.keys().cloned().collect::<BTreeSet<_>>(),
        keys(&[&d.ops])
    );
    assert!(batch.deleted.is_empty(), "{:?}", batch.deleted);

    // By name (any case) and by id.
    let named = format!("groups = [\"ops\", \"{}\"]", d.m365);
    let mut named = EntraSource::new(&config(&g, &named)).unwrap();
    let (batch, outcome) = read(&mut named, None).await.unwrap();
    assert_eq!(
        batch.groups.keys().cloned().collect::<BTreeSet<_>>(),
        keys(&[&d.ops, &d.m365])
    );
    // Renamed out of the list: it leaves scope.
    g.rename_group(&d.ops, "Operations");
    let (batch, _) = read(&mut named, outcome.cursor.as_deref()).await.unwrap();
    assert_eq!(batch.deleted.get(&d.ops), Some(&Some(Kind::Group)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attribute_mapping_is_applied() {
    let g = GraphStandIn::start().await;
    let d = populate(&g);
    g.set_user(&d.ann, "employeeId", json!("E-1001"));
    g.set_user(&d.bob, "mail", serde_json::Value::Null);
    let mut source = EntraSource::new(&config(
        &g,
        "[attributes]\nuserName = \"mail\"\nexternalId = \"employeeId\"\ngivenName = \"\"\n",
    ))
    .unwrap();
    let (batch, _) = read(&mut source, None).await.unwrap();
    let users_path = g
        .paths()
        .into_iter()
        .find(|p| p.contains("/users/delta"))
        .unwrap();
    assert!(
        users_path.contains("$select=id,mail,employeeId,displayName,surname,accountEnabled"),
        "{users_path}"
    );
    let ann = &batch.users[&d.ann];
    assert_eq!(ann.user_name, "ann@contoso.example");
    assert_eq!(ann.external_id.as_deref(), Some("E-1001"));
    assert_eq!(ann.given_name, None);
    assert_eq!(batch.users[&d.cid].external_id, None, "never set");
    // Bob has no mail, so no userName: reported present, not provisioned.
    assert!(!batch.users.contains_key(&d.bob));
    assert!(batch.present.contains(&d.bob));
}

// ---- whole runs through the runner, on SQLite and PostgreSQL ----

use rolebridge::app::sync::{run_source, RunOptions, SyncError};
use rolebridge::sync::{parse_sources, SourceConfig};

use crate::each_backend;
use crate::support::TestServer;

/// A `[[source]]` for this test server's tenant and this stand-in.
fn source_config(srv: &TestServer, g: &GraphStandIn, common: &str, extra: &str) -> SourceConfig {
    let text = format!(
        "name = \"entra-{}\"\ntenant = \"{}\"\nkind = \"entra\"\n{}\n{common}",
        srv.tenant,
        srv.tenant,
        entra_toml(g, &g.options.client_secret, extra)
    );
    let t: toml::Table = toml::from_str(&text).expect("toml");
    parse_sources(&[t])
        .unwrap_or_else(|e| panic!("{e:?}"))
        .remove(0)
}

const LENIENT: &str = "[guard]\nmax_deletes = 1000\nmax_delete_percent = 100\n";

async fn scim_user(srv: &TestServer, user_name: &str) -> serde_json::Value {
    let r = srv
        .get(&format!("/Users?filter=userName%20eq%20%22{user_name}%22"))
        .await;
    assert_eq!(r.body["totalResults"], 1, "{user_name}: {}", r.body);
    r.body["Resources"][0].clone()
}

/// The members of a synced group, as user names and group display names.
async fn scim_group_members(srv: &TestServer, name: &str) -> BTreeSet<String> {
    let r = srv
        .get(&format!("/Groups?filter=displayName%20eq%20%22{name}%22"))
        .await;
    assert_eq!(r.body["totalResults"], 1, "{name}: {}", r.body);
    let mut out = BTreeSet::new();
    for m in r.body["Resources"][0]["members"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let id = m["value"].as_str().expect("member value");
        let u = srv.get(&format!("/Users/{id}")).await;
        if u.status == 200 {
            out.insert(u.body["userName"].as_str().unwrap().to_string());
            continue;
        }
        let g = srv.get(&format!("/Groups/{id}")).await;
        assert_eq!(g.status, 200, "member {id} of {name}: {}", g.body);
        out.insert(g.body["displayName"].as_str().unwrap().to_string());
    }
    out
}

each_backend! {
    async fn runner_full_then_incremental(backend) {
        let srv = TestServer::start(backend).await;
        let g = GraphStandIn::start().await;
        let d = populate(&g);
        let cfg = source_config(&srv, &g, LENIENT, "");
        let r = run_source(&srv.app, &cfg, RunOptions::default()).await.unwrap();
        assert_eq!((r.mode.as_str(), r.outcome.as_str()), ("full", "applied"), "{r:?}");
        assert_eq!((r.counts.users_created, r.counts.groups_created, r.counts.members_added), (3, 3, 4), "{r:?}");
        assert!(r.skipped.is_empty(), "{:?}", r.skipped);
        let ann = scim_user(&srv, "ann@contoso.example").await;
        assert_eq!(ann["externalId"], d.ann.as_str());
        assert_eq!(ann["name"]["familyName"], "Ames");
        assert_eq!(ann["active"], true);
        assert_eq!(scim_user(&srv, "cid@contoso.example").await["active"], false);
        assert_eq!(scim_group_members(&srv, "Admins").await, set(&["ann@contoso.example", "Ops"]));
        let group = srv.get("/Groups?filter=displayName%20eq%20%22Admins%22").await;
        assert_eq!(group.body["Resources"][0]["urn:rolebridge:params:sync:1.0:Group"]["source"], cfg.name.as_str());

        // Changes in the directory arrive incrementally.
        g.set_user(&d.ann, "surname", json!("Ames-Smith"));
        g.set_user(&d.bob, "accountEnabled", json!(false));
        g.remove_member(&d.admins, &d.ann);
        let dan = g.add_user("dan@contoso.example", "Dan", "Dale");
        g.add_member(&d.ops, &dan);
        g.delete_user(&d.cid, false);
        g.delete_group(&d.m365);
        let r = run_source(&srv.app, &cfg, RunOptions::default()).await.unwrap();
        assert_eq!((r.mode.as_str(), r.outcome.as_str()), ("incremental", "applied"), "{r:?}");
        assert_eq!(r.counts.users_created, 1, "{r:?}");
        assert_eq!(r.counts.users_deactivated, 2, "bob disabled, cid deleted: {r:?}");
        assert_eq!(r.counts.groups_deleted, 1, "{r:?}");
        // Ann left Admins; the deleted M365 group's one membership went with it.
        assert_eq!((r.counts.members_added, r.counts.members_removed), (1, 2), "{r:?}");
        assert_eq!(scim_user(&srv, "ann@contoso.example").await["name"]["familyName"], "Ames-Smith");
        assert_eq!(scim_user(&srv, "bob@contoso.example").await["active"], false);
        assert_eq!(scim_user(&srv, "cid@contoso.example").await["active"], false);
        assert_eq!(scim_group_members(&srv, "Admins").await, set(&["Ops"]));
        assert_eq!(scim_group_members(&srv, "Ops").await, set(&["bob@contoso.example", "dan@contoso.example"]));
        let gone = srv.get("/Groups?filter=displayName%20eq%20%22Marketing%22").await;
        assert_eq!(gone.body["totalResults"], 0);

        // Nothing changed: nothing to do.
        let r = run_source(&srv.app, &cfg, RunOptions::default()).await.unwrap();
        assert_eq!(r.outcome, rolebridge::app::sync::RunOutcome::Unchanged, "{r:?}");
    }
}

each_backend! {
    async fn runner_expired_delta_token_resyncs_in_full(backend) {
        let srv = TestServer::start(backend).await;
        let g = GraphStandIn::start().await;
        let d = populate(&g);
        let cfg = source_config(&srv, &g, LENIENT, "");
        run_source(&srv.app, &cfg, RunOptions::default()).await.unwrap();
        g.expire_delta_tokens();
        // A deletion Graph will never report as such: only the full read
        // that follows the expired token can notice it.
        g.delete_user(&d.bob, true);
        let r = run_source(&srv.app, &cfg, RunOptions::default()).await.unwrap();
        assert_eq!((r.mode.as_str(), r.outcome.as_str()), ("full", "applied"), "{r:?}");
        assert_eq!(r.counts.users_deactivated, 1, "{r:?}");
        assert_eq!(scim_user(&srv, "bob@contoso.example").await["active"], false);
        // The new cursor works.
        g.set_user(&d.ann, "givenName", json!("Anne"));
        let r = run_source(&srv.app, &cfg, RunOptions::default()).await.unwrap();
        assert_eq!((r.mode.as_str(), r.counts.users_updated), ("incremental", 1), "{r:?}");
    }
}

each_backend! {
    async fn runner_outage_mid_run_changes_nothing(backend) {
        let srv = TestServer::start(backend).await;
        let g = GraphStandIn::start_with(GraphOptions { page_size: 1, ..GraphOptions::default() }).await;
        let d = populate(&g);
        let cfg = source_config(&srv, &g, LENIENT, "max_retries = 2");
        run_source(&srv.app, &cfg, RunOptions { force_full: true, ..RunOptions::default() }).await.unwrap();
        let cursor = srv.app.store().sync_state(&cfg.name).await.unwrap().cursor;
        assert!(cursor.is_some());
        // Bob is gone, but the stand-in dies before the read completes: a
        // forced full read must not take the missing pages for deletions.
        g.delete_user(&d.bob, true);
        g.go_down_after(2);
        let err = run_source(&srv.app, &cfg, RunOptions { force_full: true, ..RunOptions::default() }).await.unwrap_err();
        assert!(matches!(err, SyncError::Source { .. }), "{err}");
        assert!(err.to_string().contains("unreachable after 3 attempts"), "{err}");
        for u in ["ann@contoso.example", "bob@contoso.example"] {
            assert_eq!(scim_user(&srv, u).await["active"], true, "{u}");
        }
        assert_eq!(scim_group_members(&srv, "Ops").await, set(&["bob@contoso.example"]));
        assert_eq!(srv.app.store().sync_state(&cfg.name).await.unwrap().cursor, cursor, "cursor kept");
        assert_eq!(srv.app.store().sync_runs(&cfg.name, 1).await.unwrap()[0].outcome, "failed");
    }
}

each_backend! {
    async fn runner_mass_delete_is_held_and_dry_run_changes_nothing(backend) {
        let srv = TestServer::start(backend).await;
        let g = GraphStandIn::start().await;
        let ids: Vec<String> = (0..20)
            .map(|i| g.add_user(&format!("p{i}@contoso.example"), "P", &format!("{i}")))
            .collect();
        let cfg = source_config(&srv, &g, "[guard]\nmax_deletes = 5\nmax_delete_percent = 100\n", "");

        // A dry run of the first sync writes nothing, not even the cursor.
        let r = run_source(&srv.app, &cfg, RunOptions { dry_run: true, ..RunOptions::default() }).await.unwrap();
        assert_eq!((r.outcome.as_str(), r.counts.users_created), ("dry-run", 20), "{r:?}");
        assert!(r.diff.contains(&"+ user p7@contoso.example".to_string()), "{:?}", r.diff);
        assert_eq!(srv.get("/Users").await.body["totalResults"], 0);
        assert_eq!(srv.app.store().sync_state(&cfg.name).await.unwrap().cursor, None);

        run_source(&srv.app, &cfg, RunOptions::default()).await.unwrap();
        for id in &ids[..12] {
            g.delete_user(id, false);
        }
        let held = run_source(&srv.app, &cfg, RunOptions::default()).await.unwrap();
        assert_eq!(held.outcome, rolebridge::app::sync::RunOutcome::Held, "{held:?}");
        assert!(held.held_reason.as_deref().unwrap_or("").contains("12 user"), "{held:?}");
        let active = |v: serde_json::Value| v["Resources"].as_array().unwrap().iter().filter(|u| u["active"] == true).count();
        assert_eq!(active(srv.get("/Users?count=100").await.body), 20, "held: nothing deactivated");
        // Held again (the cursor did not move past the deletions).
        let again = run_source(&srv.app, &cfg, RunOptions::default()).await.unwrap();
        assert_eq!(again.outcome, rolebridge::app::sync::RunOutcome::Held, "{again:?}");
        let confirmed = run_source(&srv.app, &cfg, RunOptions { confirm_deletes: true, ..RunOptions::default() }).await.unwrap();
        assert_eq!((confirmed.outcome.as_str(), confirmed.counts.users_deactivated), ("applied", 12), "{confirmed:?}");
        assert_eq!(active(srv.get("/Users?count=100").await.body), 8);
    }
}

each_backend! {
    async fn runner_permissions_follow_nested_entra_groups(backend) {
        let yaml = "catalog: loyjoy\nrules:\n  - id: editors\n    match: {display_name: \"Editors\"}\n    assign: {roles: [editor]}\n";
        let srv = TestServer::start_mapped(backend, yaml).await;
        let token = srv.permissions_token().await;
        let g = GraphStandIn::start().await;
        let ann = g.add_user("ann@contoso.example", "Ann", "Ames");
        let bob = g.add_user("bob@contoso.example", "Bob", "Bell");
        let editors = g.add_group("Editors", true);
        let team = g.add_group("Team", true);
        g.add_member(&editors, &team);
        g.add_member(&team, &ann);
        g.add_member(&editors, &bob);
        let cfg = source_config(&srv, &g, LENIENT, "groups = \"security\"");
        let r = run_source(&srv.app, &cfg, RunOptions::default()).await.unwrap();
        assert_eq!(r.permission_changes, 2, "{r:?}");
        let perms = |user: &'static str| {
            let url = format!("http://{}/api/v1/tenants/{}/users/{user}/permissions?by=userName", srv.addr, srv.tenant);
            let token = token.clone();
            let srv = &srv;
            async move { srv.send_with(reqwest::Method::GET, &url, None, &[], Some(&token)).await }
        };
        let p = perms("ann@contoso.example").await;
        assert_eq!(p.status, 200, "{}", p.body);
        assert!(p.body["roles"].to_string().contains("editor"), "through Team ⊂ Editors: {}", p.body);
        assert!(perms("bob@contoso.example").await.body["roles"].to_string().contains("editor"));
        // Team leaves Editors in Entra: ann loses the role at the next run.
        g.remove_member(&editors, &team);
        let r = run_source(&srv.app, &cfg, RunOptions::default()).await.unwrap();
        assert_eq!((r.mode.as_str(), r.counts.members_removed, r.permission_changes), ("incremental", 1, 1), "{r:?}");
        let p = perms("ann@contoso.example").await;
        assert!(!p.body["roles"].to_string().contains("editor"), "{}", p.body);
    }
}

each_backend! {
    async fn runner_bad_secret_fails_clearly(backend) {
        let srv = TestServer::start(backend).await;
        let g = GraphStandIn::start().await;
        populate(&g);
        let mut cfg = source_config(&srv, &g, LENIENT, "");
        if let rolebridge::sync::SourceKind::Entra(e) = &mut cfg.kind {
            e.client_secret.file = Some(secret_file("not-the-secret"));
        }
        let err = run_source(&srv.app, &cfg, RunOptions::default()).await.unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with(&format!("source '{}': token endpoint", cfg.name)), "{text}");
        assert!(text.contains("invalid_client: AADSTS7000215"), "{text}");
        assert!(!text.contains("not-the-secret"));
        assert_eq!(srv.get("/Users").await.body["totalResults"], 0);
    }
}

// ---- the real binary ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_sync_dry_run_run_and_status() {
    use crate::durability::{bin, cli};
    let g = GraphStandIn::start().await;
    populate(&g);
    let db = crate::support::fresh_database(crate::support::Backend::Sqlite).await;
    let tenant = crate::support::unique("entracli");
    assert_eq!(cli(&db, &["tenant", "create", &tenant]).0, 0);
    let dir = crate::support::test_dir();
    let config = dir.join(format!("{tenant}.toml"));
    let bad = dir.join(format!("{tenant}-bad.toml"));
    let source = |name: &str, secret: &str| {
        format!(
            "[[source]]\nname = \"{name}\"\ntenant = \"{tenant}\"\nkind = \"entra\"\n{}",
            entra_toml(&g, secret, "")
        )
    };
    std::fs::write(&config, source("aad", &g.options.client_secret)).unwrap();
    std::fs::write(&bad, source("aad", "wrong-secret")).unwrap();
    let run = |cfg: &std::path::Path, args: &[&str]| {
        let out = std::process::Command::new(bin())
            .arg("--config")
            .arg(cfg)
            .args(args)
            .env("ROLEBRIDGE_DATABASE_URL", &db)
            .output()
            .expect("run rolebridge");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };

    let (code, out, err) = run(&config, &["sync", "--source", "aad", "--dry-run", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect(&out);
    assert_eq!(report["outcome"], "dry-run");
    assert_eq!(report["users_created"], 3);
    assert!(
        report["diff"]
            .to_string()
            .contains("+ user ann@contoso.example"),
        "{report}"
    );

    let (code, out, err) = run(&config, &["sync", "--source", "aad", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect(&out);
    assert_eq!(
        (report["outcome"].as_str(), report["mode"].as_str()),
        (Some("applied"), Some("full"))
    );
    assert_eq!(report["groups_created"], 3);

    // A wrong secret: one clear line, non-zero, the secret not echoed.
    let (code, out, err) = run(&bad, &["sync", "--source", "aad"]);
    assert_ne!(code, 0, "{out}");
    assert!(err.contains("invalid_client: AADSTS7000215"), "{err}");
    assert!(!err.contains("wrong-secret"), "{err}");

    let (code, out, err) = run(&config, &["sync", "status", "--json"]);
    assert_eq!(code, 0, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).expect(&out);
    assert_eq!(status[0]["source"], "aad");
    assert_eq!(status[0]["kind"], "entra");
    assert_eq!(status[0]["has_cursor"], true);
    assert_eq!(status[0]["last_run"]["outcome"], "failed", "{status}");
    assert!(
        status[0]["last_run"]["error"]
            .to_string()
            .contains("AADSTS7000215"),
        "{status}"
    );

    // Incremental with the good secret again.
    let (code, out, err) = run(&config, &["sync", "--source", "aad", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).expect(&out);
    assert_eq!(
        (report["outcome"].as_str(), report["mode"].as_str()),
        (Some("unchanged"), Some("incremental")),
        "{report}"
    );
}

/// A user created and added to a group while a run reads, between its two
/// delta reads (whichever comes first), joins the group by the next run at
/// the latest: the membership is never dropped as "not a user this source
/// syncs" and forgotten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_created_mid_run_keeps_the_membership() {
    for second_read in ["/v1.0/users/delta", "/v1.0/groups/delta"] {
        let srv = TestServer::start(crate::support::Backend::Sqlite).await;
        let g = std::sync::Arc::new(GraphStandIn::start().await);
        let d = populate(&g);
        let cfg = source_config(&srv, &g, LENIENT, "");
        run_source(&srv.app, &cfg, RunOptions::default())
            .await
            .unwrap();
        // An incremental run, paused before one of its reads.
        let gate = g.pause_before(second_read);
        let run = {
            let (app, cfg) = (srv.app.clone(), cfg.clone());
            tokio::spawn(async move { run_source(&app, &cfg, RunOptions::default()).await })
        };
        gate.reached().await;
        let eve = g.add_user("eve@contoso.example", "Eve", "Eyre");
        g.add_member(&d.ops, &eve);
        gate.release();
        let r = run.await.unwrap().unwrap();
        assert_eq!(
            r.outcome,
            rolebridge::app::sync::RunOutcome::Applied,
            "{second_read}: {r:?}"
        );
        let r = run_source(&srv.app, &cfg, RunOptions::default())
            .await
            .unwrap();
        assert_eq!(
            r.mode,
            rolebridge::app::sync::RunMode::Incremental,
            "{second_read}: {r:?}"
        );
        assert_eq!(
            scim_group_members(&srv, "Ops").await,
            set(&["bob@contoso.example", "eve@contoso.example"]),
            "paused before {second_read}"
        );
    }
}

/// Under a selection, a group that enters scope in a delta (made a security
/// group) arrives with its whole member list, read from
/// `/groups/{id}/members`: its delta names member changes only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_entering_the_selection_mid_delta_brings_its_members() {
    let srv = TestServer::start(crate::support::Backend::Sqlite).await;
    let g = GraphStandIn::start_with(GraphOptions {
        page_size: 1,
        ..GraphOptions::default()
    })
    .await;
    let d = populate(&g);
    let cfg = source_config(&srv, &g, LENIENT, "groups = \"security\"\n");
    let r = run_source(&srv.app, &cfg, RunOptions::default())
        .await
        .unwrap();
    assert_eq!(
        r.counts.groups_created, 2,
        "Admins and Ops, not Marketing: {r:?}"
    );
    let dan = g.add_user("dan@contoso.example", "Dan", "Dale");
    g.add_member(&d.m365, &dan);
    g.set_security(&d.m365, true);
    let r = run_source(&srv.app, &cfg, RunOptions::default())
        .await
        .unwrap();
    assert_eq!(r.mode, rolebridge::app::sync::RunMode::Incremental, "{r:?}");
    assert_eq!(r.counts.groups_created, 1, "{r:?}");
    assert_eq!(
        scim_group_members(&srv, "Marketing").await,
        set(&["cid@contoso.example", "dan@contoso.example"]),
        "cid was a member before the group entered scope"
    );
    assert!(
        g.paths()
            .iter()
            .any(|p| p.contains(&format!("/groups/{}/members", d.m365))),
        "{:?}",
        g.paths()
    );
}
