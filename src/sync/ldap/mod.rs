//! LDAP and Active Directory source.
//!
//! A full read is always a plain paged search (RFC 2696) per base DN and
//! kind (users, groups): never a syncrepl refresh, whose answer leaves out
//! whatever changed after a crashed server's `contextCSN`. Each entry is
//! converted and pushed into the [`Batch`] as it arrives; pages are never
//! held. An incremental read is syncrepl with the saved cookies, or polling
//! on `uSNChanged` (AD) or `modifyTimestamp` (reported incomplete: the
//! runner's periodic full reconcile finds deletions). Before either, the
//! saved cursor is checked against the server's state ([`state`]); one the
//! server is behind is expired, and the runner reads in full.
//!
//! Every failure — connect, StartTLS, bind, a page, a size or time limit, a
//! lost connection, an unreadable message, an entry without its stable id —
//! is an `Err`; a read never ends early with `Ok`.

pub mod ber;
pub mod config;
pub mod convert;
pub mod dn;
pub mod state;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine as _;
use ldap3::asn1::StructureTag;
use ldap3::controls::{Control, RawControl};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapResult, Scope};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use config::{Attributes, Incremental, LdapConfig, Preset};

use super::{Batch, Change, ExternalGroup, Kind, ReadOutcome, ReadRequest, Source, SourceError};
use crate::domain::Secret;

/// RFC 4533 Sync Request control.
pub const SYNC_REQUEST_OID: &str = "1.3.6.1.4.1.4203.1.9.1.1";
const SYNC_STATE_OID: &str = "1.3.6.1.4.1.4203.1.9.1.2";
const SYNC_DONE_OID: &str = "1.3.6.1.4.1.4203.1.9.1.3";
const PAGED_RESULTS_OID: &str = "1.2.840.113556.1.4.319";
/// AD's show-deleted control: a search also returns tombstones.
const SHOW_DELETED_OID: &str = "1.2.840.113556.1.4.417";
/// `e-syncRefreshRequired`: the cookie is too old; start over.
const RC_SYNC_REFRESH_REQUIRED: u32 = 4096;
const RC_UNWILLING: u32 = 53;
/// Bounds on loops whose length the server decides.
const MAX_PAGES: u32 = 1_000_000;
const MAX_ITEMS_PER_REQUEST: u64 = 50_000_000;
const MAX_RANGE_SLICES: u32 = 100_000;
/// The first slice of `member` the AD preset asks for: AD's default
/// `MaxValRange`, so the answer is what AD sends for a plain `member` anyway.
const AD_FIRST_MEMBER_RANGE: &str = "member;range=0-1499";

/// Why the directory could not be read. Messages name the server, the bind
/// DN, the base and the filter as relevant, never the password.
#[derive(Debug, thiserror::Error)]
pub enum LdapError {
    #[error("cannot connect to {url}: {message}")]
    Connect { url: String, message: String },
    #[error("bind to {url} as '{dn}' failed: {message}")]
    Bind {
        url: String,
        dn: String,
        message: String,
    },
    #[error("bind password: {0}")]
    Secret(String),
    #[error("search of '{base}' with filter {filter} failed: {message}")]
    Search {
        base: String,
        filter: String,
        message: String,
    },
    #[error("{url}: no response within {timeout:?} during {operation}")]
    Timeout {
        url: String,
        operation: String,
        timeout: Duration,
    },
    #[error("connection to {url} lost during {operation}: {message}")]
    ConnectionLost {
        url: String,
        operation: String,
        message: String,
    },
    #[error("unreadable response from {url} during {operation}: {message}")]
    Protocol {
        url: String,
        operation: String,
        message: String,
    },
    #[error("entry '{dn}': {message}")]
    Entry { dn: String, message: String },
    #[error("{url} does not support {what}, which the config asks for")]
    Unsupported { url: String, what: String },
}

/// The LDAP source of one `[[source]]`.
pub struct LdapSource {
    config: LdapConfig,
}

impl LdapSource {
    /// Builds the source; no IO happens until [`Source::read`].
    pub fn new(config: &LdapConfig) -> Result<LdapSource, LdapError> {
        Ok(LdapSource {
            config: config.clone(),
        })
    }
}

/// The incremental method a read uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    Syncrepl,
    Usn,
    ModifyTimestamp,
    None,
}

/// What the runner persists between runs. `scope` fingerprints the bases,
/// filters and attribute mapping: if any changed, the cursor no longer
/// describes what was synced and the next read is full.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Cursor {
    mode: Mode,
    scope: String,
    /// syncrepl: a base64 cookie per search (`user:<base>`, `group:<base>`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    cookies: BTreeMap<String, String>,
    /// usn: the rootDSE's `highestCommittedUSN` read before the last read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    usn: Option<u64>,
    /// usn: the invocationId of the DC the USN is from; USNs of another DC,
    /// or of this one restored from backup, do not compare.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    invocation_id: Option<String>,
    /// modify_timestamp: the highest `modifyTimestamp` seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timestamp: Option<String>,
}

impl Source for LdapSource {
    async fn read(
        &mut self,
        request: &ReadRequest,
        batch: &mut Batch,
    ) -> Result<ReadOutcome, SourceError> {
        read(&self.config, request, batch).await
    }
}

fn scope_fingerprint(c: &LdapConfig) -> String {
    let mut h = Sha256::new();
    for b in &c.base_dns {
        h.update(b.as_bytes());
        h.update([0]);
    }
    h.update(c.user_filter.as_bytes());
    h.update([0]);
    h.update(c.group_filter.as_bytes());
    h.update(format!("{:?}", c.attributes).as_bytes());
    hex::encode(&h.finalize()[..12])
}

async fn read(
    config: &LdapConfig,
    request: &ReadRequest,
    batch: &mut Batch,
) -> Result<ReadOutcome, SourceError> {
    let mut conn = Conn::open(config).await?;
    let root = conn.root_dse().await?;
    let mode = resolve_mode(config, &root, &conn.url)?;
    let scope = scope_fingerprint(config);
    // An incremental request whose cursor cannot be used is expired, so the
    // runner's retry reads in full and says so; it is never quietly read in
    // full under the incremental label.
    let url = conn.url.clone();
    let expired = |why: String| {
        tracing::warn!(%url, "saved LDAP cursor not usable: {why}; reading everything");
        Err(SourceError::CursorExpired)
    };
    let previous = match (&request.cursor, request.full) {
        (Some(c), false) => match serde_json::from_str::<Cursor>(c) {
            Err(e) => return expired(format!("unreadable ({e})")),
            Ok(c) if c.mode != mode => {
                return expired(format!(
                    "it is for {:?}, the server now gets {mode:?}",
                    c.mode
                ))
            }
            Ok(c) if c.scope != scope => {
                return expired("bases, filters or attributes changed since".into())
            }
            Ok(c) => Some(c),
        },
        _ => None,
    };
    let mut next = Cursor {
        mode,
        scope,
        cookies: BTreeMap::new(),
        usn: None,
        invocation_id: None,
        timestamp: None,
    };
    let mut complete = true;
    match (mode, previous) {
        (Mode::Syncrepl, Some(previous)) => {
            // The server's contextCSN per base, read before searching.
            let mut csns: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for base in &config.base_dns {
                csns.insert(base.clone(), conn.context_csn(&root, base).await?);
            }
            // A crash can also leave contextCSN at a point after the cookie
            // but before the last writes; syncrepl then stops at it. Entries
            // newer than the contextCSN give that away.
            for base in &config.base_dns {
                if let Some(entry) = conn.entry_csn_above(&root, base, &csns[base]).await? {
                    // Read contextCSN again, so a write landing between the
                    // two reads is not taken for a crash.
                    let now = conn.context_csn(&root, base).await?;
                    if now.iter().max().is_none_or(|c| *c < entry) {
                        return expired(format!(
                            "'{base}' holds an entry with entryCSN {entry}, newer than the \
                             server's contextCSN (a crash moved it back)"
                        ));
                    }
                }
            }
            let mut cookies = Vec::new();
            for base in &config.base_dns {
                for kind in [Kind::User, Kind::Group] {
                    let key = cookie_key(kind, base);
                    let Some(cookie) = previous
                        .cookies
                        .get(&key)
                        .and_then(|c| base64::engine::general_purpose::STANDARD.decode(c).ok())
                    else {
                        return expired(format!("no usable cookie for {key}"));
                    };
                    if let Some(why) = state::csn_rewound(&state::cookie_csns(&cookie), &csns[base])
                    {
                        return expired(format!("{key}: {why}"));
                    }
                    cookies.push((base, kind, key, cookie));
                }
            }
            let mut gone = Gone::new();
            for (base, kind, key, cookie) in cookies {
                let out = conn
                    .sync_search(config, base, kind, Some(&cookie), batch, &mut gone)
                    .await?;
                complete &= out.complete;
                let c = out.cookie.unwrap_or(cookie);
                next.cookies
                    .insert(key, base64::engine::general_purpose::STANDARD.encode(c));
            }
            flush_deleted(gone, batch);
        }
        (Mode::Syncrepl, None) => {
            // Full: a plain paged search, with the cookie for next time made
            // from the contextCSN read before it, or from a newer entryCSN
            // when a crash left contextCSN behind the entries: everything
            // written until then is in this read, and later writes get
            // newer CSNs.
            for base in &config.base_dns {
                let mut csns = conn.context_csn(&root, base).await?;
                if let Some(entry) = conn.entry_csn_above(&root, base, &csns).await? {
                    tracing::warn!(
                        base,
                        entry,
                        "contextCSN is behind the entries (a crash moved it back)"
                    );
                    state::advance(&mut csns, entry);
                }
                let cookie = state::cookie_at(&csns);
                if cookie.is_none() {
                    tracing::info!(
                        base,
                        "the server has no contextCSN yet; the next read is full too"
                    );
                }
                for kind in [Kind::User, Kind::Group] {
                    if let Some(c) = &cookie {
                        next.cookies.insert(
                            cookie_key(kind, base),
                            base64::engine::general_purpose::STANDARD.encode(c),
                        );
                    }
                }
            }
            let mut newest = None;
            for base in &config.base_dns {
                for kind in [Kind::User, Kind::Group] {
                    conn.paged_search(config, base, kind, None, batch, &mut newest)
                        .await?;
                }
            }
        }
        (Mode::Usn | Mode::ModifyTimestamp | Mode::None, previous) => {
            if mode == Mode::Usn {
                let usn = root.highest_usn.ok_or_else(|| LdapError::Unsupported {
                    url: conn.url.clone(),
                    what: "highestCommittedUSN".into(),
                })?;
                let invocation = conn.invocation_id(&root).await?;
                if let Some(p) = &previous {
                    let saved = p.usn.unwrap_or(0);
                    if let Some(why) = state::usn_rewound(
                        saved,
                        p.invocation_id.as_deref(),
                        usn,
                        invocation.as_deref(),
                    ) {
                        return expired(why);
                    }
                }
                next.usn = Some(usn);
                next.invocation_id = invocation;
            }
            // The USN is read before searching: whatever changes during the
            // read gets a higher USN and is read again next time.
            let since = previous.as_ref().and_then(|p| match mode {
                Mode::Usn => p.usn.map(|u| format!("(uSNChanged>={})", u + 1)),
                Mode::ModifyTimestamp => p
                    .timestamp
                    .as_ref()
                    .map(|t| format!("(modifyTimestamp>={t})")),
                _ => None,
            });
            complete = since.is_none();
            let mut newest = previous.as_ref().and_then(|p| p.timestamp.clone());
            for base in &config.base_dns {
                for kind in [Kind::User, Kind::Group] {
                    conn.paged_search(config, base, kind, since.as_deref(), batch, &mut newest)
                        .await?;
                }
            }
            if mode == Mode::ModifyTimestamp {
                next.timestamp = newest;
            }
            // A deleted AD object leaves its base for `CN=Deleted Objects`,
            // so the uSNChanged poll never sees it go; its tombstone does.
            if let (Mode::Usn, Some(p)) = (mode, &previous) {
                if config.preset == Preset::ActiveDirectory {
                    conn.ad_tombstones(config, &root, p.usn.unwrap_or(0) + 1, batch)
                        .await?;
                }
            }
        }
    }
    conn.close().await;
    let cursor = match mode {
        Mode::None => None,
        _ => Some(serde_json::to_string(&next).unwrap_or_default()),
    };
    Ok(ReadOutcome {
        complete,
        cursor,
        bases: config.base_dns.clone(),
    })
}

/// The naming context holding `base`. The longest suffix wins, so a
/// subordinate database is not mistaken for its parent.
fn naming_context(root: &RootDse, base: &str) -> Option<String> {
    let base = dn::normalize(base);
    root.naming_contexts
        .iter()
        .filter(|c| dn::is_under(&base, &dn::normalize(c)))
        .max_by_key(|c| c.len())
        .cloned()
}

/// The key of one search's cookie: `user:<base>` or `group:<base>`.
fn cookie_key(kind: Kind, base: &str) -> String {
    format!("{}:{base}", kind.as_str().to_ascii_lowercase())
}

fn resolve_mode(config: &LdapConfig, root: &RootDse, url: &str) -> Result<Mode, LdapError> {
    let unsupported = |what: &str| LdapError::Unsupported {
        url: url.to_string(),
        what: what.to_string(),
    };
    Ok(match config.incremental {
        Incremental::None => Mode::None,
        Incremental::Syncrepl if root.syncrepl => Mode::Syncrepl,
        Incremental::Syncrepl => {
            return Err(unsupported(
                "content sync (syncrepl control 1.3.6.1.4.1.4203.1.9.1.1)",
            ))
        }
        Incremental::Usn if root.highest_usn.is_some() => Mode::Usn,
        Incremental::Usn => return Err(unsupported("uSNChanged (no highestCommittedUSN)")),
        Incremental::ModifyTimestamp => Mode::ModifyTimestamp,
        Incremental::Auto => {
            if root.syncrepl
                && config
                    .attributes
                    .external_id
                    .eq_ignore_ascii_case("entryUUID")
            {
                Mode::Syncrepl
            } else if root.highest_usn.is_some() {
                Mode::Usn
            } else {
                Mode::ModifyTimestamp
            }
        }
    })
}

/// What the rootDSE says about incremental reads.
#[derive(Debug, Default)]
struct RootDse {
    syncrepl: bool,
    highest_usn: Option<u64>,
    /// The suffixes the server holds; a base's `contextCSN` is on the one
    /// that contains it.
    naming_contexts: Vec<String>,
    /// AD: the DN of the DC's NTDS settings, which carry its invocationId.
    ds_service_name: Option<String>,
    /// AD: the domain naming context, whose `CN=Deleted Objects` holds the
    /// tombstones of deleted accounts.
    default_naming_context: Option<String>,
}

/// One item of a search response.
enum Item {
    Entry(StructureTag, Vec<Control>),
    Intermediate(StructureTag),
}

/// What one syncrepl search found out.
struct SyncOutcome {
    cookie: Option<Vec<u8>>,
    complete: bool,
}

/// Result codes by name, for error messages.
fn rc_name(rc: u32) -> &'static str {
    match rc {
        1 => "operationsError",
        2 => "protocolError",
        3 => "timeLimitExceeded",
        4 => "sizeLimitExceeded",
        7 => "authMethodNotSupported",
        8 => "strongerAuthRequired",
        10 => "referral",
        11 => "adminLimitExceeded",
        12 => "unavailableCriticalExtension",
        13 => "confidentialityRequired",
        32 => "noSuchObject",
        34 => "invalidDNSyntax",
        48 => "inappropriateAuthentication",
        49 => "invalidCredentials",
        50 => "insufficientAccessRights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwillingToPerform",
        80 => "other",
        4096 => "e-syncRefreshRequired",
        _ => "error",
    }
}

fn describe(res: &LdapResult) -> String {
    let mut s = format!("{} ({})", rc_name(res.rc), res.rc);
    if !res.text.is_empty() {
        s.push_str(": ");
        s.push_str(res.text.trim());
    }
    s
}

/// An open, bound connection.
struct Conn {
    ldap: Ldap,
    url: String,
    timeout: Duration,
    driver: tokio::task::JoinHandle<()>,
}

impl Conn {
    async fn open(config: &LdapConfig) -> Result<Conn, LdapError> {
        let url = config.url.to_string();
        let password: Option<Secret> = match &config.bind_password {
            Some(r) => Some(r.resolve().map_err(LdapError::Secret)?),
            None => None,
        };
        let settings = LdapConnSettings::new()
            .set_conn_timeout(config.timeout)
            .set_starttls(config.start_tls);
        let connect = LdapConnAsync::from_url_with_settings(settings, &config.url);
        let (conn, ldap) = match tokio::time::timeout(config.timeout, connect).await {
            Err(_) => {
                return Err(LdapError::Timeout {
                    url,
                    operation: "connect".into(),
                    timeout: config.timeout,
                })
            }
            Ok(Err(ldap3::LdapError::Timeout { .. })) => {
                return Err(LdapError::Timeout {
                    url,
                    operation: "connect".into(),
                    timeout: config.timeout,
                })
            }
            Ok(Err(e)) => {
                return Err(LdapError::Connect {
                    url,
                    message: e.to_string(),
                })
            }
            Ok(Ok(pair)) => pair,
        };
        let log_url = url.clone();
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(url = %log_url, "LDAP connection ended: {e}");
            }
        });
        let mut c = Conn {
            ldap,
            url,
            timeout: config.timeout,
            driver,
        };
        if let (Some(dn), Some(pw)) = (&config.bind_dn, &password) {
            let timeout = c.timeout;
            let res = c
                .ldap
                .with_timeout(timeout)
                .simple_bind(dn, pw.expose())
                .await
                .map_err(|e| c.map_err(e, "bind"))?;
            if res.rc != 0 {
                let message = match res.rc {
                    49 => format!("{} — wrong bind DN or password", describe(&res)),
                    _ => describe(&res),
                };
                return Err(LdapError::Bind {
                    url: c.url.clone(),
                    dn: dn.clone(),
                    message,
                });
            }
        }
        Ok(c)
    }

    fn map_err(&self, e: ldap3::LdapError, operation: &str) -> LdapError {
        match e {
            ldap3::LdapError::Timeout { .. } => LdapError::Timeout {
                url: self.url.clone(),
                operation: operation.to_string(),
                timeout: self.timeout,
            },
            ldap3::LdapError::EndOfStream
            | ldap3::LdapError::Io { .. }
            | ldap3::LdapError::OpSend { .. }
            | ldap3::LdapError::ResultRecv { .. }
            | ldap3::LdapError::IdScrubSend { .. } => LdapError::ConnectionLost {
                url: self.url.clone(),
                operation: operation.to_string(),
                message: e.to_string(),
            },
            other => LdapError::Protocol {
                url: self.url.clone(),
                operation: operation.to_string(),
                message: other.to_string(),
            },
        }
    }

    async fn close(mut self) {
        let _ = tokio::time::timeout(self.timeout, self.ldap.unbind()).await;
        self.driver.abort();
    }

    /// Runs one search request, handing each entry and intermediate message
    /// to `f` as it arrives; returns the final result (not yet checked).
    #[allow(clippy::too_many_arguments)]
    async fn request(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[String],
        controls: Vec<RawControl>,
        operation: &str,
        mut f: impl FnMut(Item) -> Result<(), LdapError> + Send,
    ) -> Result<LdapResult, LdapError> {
        let timeout = self.timeout;
        let search_err = |message: String| LdapError::Search {
            base: base.to_string(),
            filter: filter.to_string(),
            message,
        };
        let started = self
            .ldap
            .with_controls(controls)
            .with_timeout(timeout)
            .streaming_search(base, scope, filter, attrs.to_vec())
            .await;
        let mut stream = match started {
            Ok(s) => s,
            Err(ldap3::LdapError::FilterParsing) => {
                return Err(search_err("invalid filter (RFC 4515)".into()))
            }
            Err(e) => return Err(self.map_err(e, operation)),
        };
        let mut items = 0u64;
        loop {
            let next = match stream.next().await {
                Ok(n) => n,
                Err(e) => {
                    // Tell the server to stop; the connection is dropped
                    // right after anyway.
                    let _ = stream.finish().await;
                    return Err(self.map_err(e, operation));
                }
            };
            let Some(entry) = next else { break };
            items += 1;
            if items > MAX_ITEMS_PER_REQUEST {
                return Err(search_err(format!(
                    "more than {MAX_ITEMS_PER_REQUEST} results in one request"
                )));
            }
            match entry.0.id {
                4 => f(Item::Entry(entry.0, entry.1))?,
                25 => f(Item::Intermediate(entry.0))?,
                // Continuation references (AD's other partitions) are not
                // followed: the configured bases define the scope.
                _ => {}
            }
        }
        Ok(stream.finish().await)
    }

    async fn root_dse(&mut self) -> Result<RootDse, LdapError> {
        let mut root = RootDse::default();
        let url = self.url.clone();
        let attrs = [
            "supportedControl".to_string(),
            "highestCommittedUSN".to_string(),
            "namingContexts".to_string(),
            "dsServiceName".to_string(),
            "defaultNamingContext".to_string(),
        ];
        let res = self
            .request(
                "",
                Scope::Base,
                "(objectClass=*)",
                &attrs,
                vec![],
                "rootDSE read",
                |item| {
                    if let Item::Entry(tag, _) = item {
                        let e = ber::entry(tag).map_err(|message| LdapError::Protocol {
                            url: url.clone(),
                            operation: "rootDSE read".into(),
                            message,
                        })?;
                        root.syncrepl = e
                            .values("supportedControl")
                            .iter()
                            .any(|v| v.as_slice() == SYNC_REQUEST_OID.as_bytes());
                        root.highest_usn = e
                            .values("highestCommittedUSN")
                            .first()
                            .and_then(|v| std::str::from_utf8(v).ok())
                            .and_then(|s| s.trim().parse().ok());
                        root.naming_contexts = e
                            .values("namingContexts")
                            .iter()
                            .filter_map(|v| String::from_utf8(v.clone()).ok())
                            .collect();
                        root.ds_service_name = e
                            .values("dsServiceName")
                            .first()
                            .and_then(|v| String::from_utf8(v.clone()).ok());
                        root.default_naming_context = e
                            .values("defaultNamingContext")
                            .first()
                            .and_then(|v| String::from_utf8(v.clone()).ok());
                    }
                    Ok(())
                },
            )
            .await?;
        // A rootDSE the bind DN may not read just means "no incremental
        // support advertised".
        if res.rc != 0 {
            tracing::debug!(url = %self.url, "rootDSE unreadable: {}", describe(&res));
        }
        Ok(root)
    }

    /// The values of one attribute of one entry (a base search); an entry
    /// or attribute the bind DN cannot see gives no values.
    async fn base_values(&mut self, dn: &str, attr: &str) -> Result<Vec<Vec<u8>>, LdapError> {
        let url = self.url.clone();
        let operation = format!("read of {attr} on '{dn}'");
        let mut values = Vec::new();
        let res = self
            .request(
                dn,
                Scope::Base,
                "(objectClass=*)",
                &[attr.to_string()],
                vec![],
                &operation,
                |item| {
                    if let Item::Entry(tag, _) = item {
                        let e = ber::entry(tag).map_err(|message| LdapError::Protocol {
                            url: url.clone(),
                            operation: operation.clone(),
                            message,
                        })?;
                        values = e.values(attr).to_vec();
                    }
                    Ok(())
                },
            )
            .await?;
        if res.rc != 0 {
            tracing::debug!(url = %self.url, dn, attr, "unreadable: {}", describe(&res));
        }
        Ok(values)
    }

    /// The `contextCSN` values of the naming context holding `base`.
    async fn context_csn(&mut self, root: &RootDse, base: &str) -> Result<Vec<String>, LdapError> {
        let Some(context) = naming_context(root, base) else {
            return Ok(Vec::new());
        };
        Ok(self
            .base_values(&context, "contextCSN")
            .await?
            .into_iter()
            .filter_map(|v| String::from_utf8(v).ok())
            .collect())
    }

    /// The newest `entryCSN` in `base`'s naming context that is newer than
    /// every CSN in `csns` (its `contextCSN`). A live server never has one
    /// for long (it moves contextCSN with every write); a restarted one
    /// whose contextCSN a crash moved back does.
    async fn entry_csn_above(
        &mut self,
        root: &RootDse,
        base: &str,
        csns: &[String],
    ) -> Result<Option<String>, LdapError> {
        let Some(newest) = csns.iter().max() else {
            return Ok(None);
        };
        let Some(context) = naming_context(root, base) else {
            return Ok(None);
        };
        let newest = ldap3::ldap_escape(newest);
        let filter = format!("(&(entryCSN>={newest})(!(entryCSN={newest})))");
        let url = self.url.clone();
        let mut above: Option<String> = None;
        let res = self
            .request(
                &context,
                Scope::Subtree,
                &filter,
                &["entryCSN".to_string()],
                vec![],
                "entryCSN check",
                |item| {
                    if let Item::Entry(tag, _) = item {
                        let e = ber::entry(tag).map_err(|message| LdapError::Protocol {
                            url: url.clone(),
                            operation: "entryCSN check".into(),
                            message,
                        })?;
                        for v in e.values("entryCSN") {
                            if let Ok(csn) = String::from_utf8(v.clone()) {
                                if above.as_ref().is_none_or(|a| *a < csn) {
                                    above = Some(csn);
                                }
                            }
                        }
                    }
                    Ok(())
                },
            )
            .await?;
        if res.rc != 0 {
            return Err(LdapError::Search {
                base: context,
                filter,
                message: describe(&res),
            });
        }
        Ok(above)
    }

    /// AD: reports accounts deleted since `since_usn` whose last parent was
    /// under a configured base, from their tombstones in `CN=Deleted
    /// Objects` (read with the show-deleted control,
    /// 1.2.840.113556.1.4.417). The tombstone keeps `objectGUID`, so the
    /// deletion names the same key the account was synced under.
    async fn ad_tombstones(
        &mut self,
        config: &LdapConfig,
        root: &RootDse,
        since_usn: u64,
        batch: &mut Batch,
    ) -> Result<(), LdapError> {
        let Some(domain) = root.default_naming_context.clone() else {
            return Err(LdapError::Unsupported {
                url: self.url.clone(),
                what: "defaultNamingContext (to find deleted objects)".into(),
            });
        };
        let container = format!("CN=Deleted Objects,{domain}");
        let bases: Vec<String> = config.base_dns.iter().map(|b| dn::normalize(b)).collect();
        let filter = format!("(&(isDeleted=TRUE)(uSNChanged>={since_usn}))");
        let control = RawControl {
            ctype: SHOW_DELETED_OID.to_string(),
            crit: true,
            val: None,
        };
        // Only administrators see the container unless it was delegated;
        // an account that cannot would read no tombstone at all, which
        // must not pass for "nothing was deleted".
        let visible = self
            .base_search_count(&container, vec![control.clone()])
            .await?;
        if visible == 0 {
            tracing::warn!(
                url = %self.url,
                container,
                "the bind DN cannot read deleted objects; AD deletions are found only by the full \
                 reconcile (full_every). Grant it List Contents and Read Property on the container \
                 (dsacls \"CN=Deleted Objects,...\" /takeownership, then /G DOMAIN\\user:LCRP)"
            );
            return Ok(());
        }
        let url = self.url.clone();
        let external_id = config.attributes.external_id.clone();
        let operation = format!("search of deleted objects in '{container}'");
        let mut gone: Vec<(String, Kind)> = Vec::new();
        let res = self
            .request(
                &container,
                Scope::Subtree,
                &filter,
                &[
                    external_id.clone(),
                    "lastKnownParent".to_string(),
                    "objectClass".to_string(),
                ],
                vec![control],
                &operation,
                |item| {
                    let Item::Entry(tag, _) = item else {
                        return Ok(());
                    };
                    let e = ber::entry(tag).map_err(|message| LdapError::Protocol {
                        url: url.clone(),
                        operation: "deleted-objects search".into(),
                        message,
                    })?;
                    let Some(parent) = e
                        .values("lastKnownParent")
                        .first()
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .map(dn::normalize)
                    else {
                        return Ok(());
                    };
                    if !bases.iter().any(|b| dn::is_under(&parent, b)) {
                        return Ok(());
                    }
                    let classes = e.values("objectClass");
                    let kind = if classes.iter().any(|c| c.eq_ignore_ascii_case(b"group")) {
                        Kind::Group
                    } else if classes.iter().any(|c| c.eq_ignore_ascii_case(b"user")) {
                        Kind::User
                    } else {
                        return Ok(());
                    };
                    let key = convert::stable_id(&e, &external_id).map_err(|message| {
                        LdapError::Entry {
                            dn: e.dn.clone(),
                            message,
                        }
                    })?;
                    gone.push((key, kind));
                    Ok(())
                },
            )
            .await?;
        if res.rc != 0 {
            return Err(LdapError::Search {
                base: container,
                filter,
                message: describe(&res),
            });
        }
        for (key, kind) in gone {
            batch.push(Change::Deleted {
                key,
                kind: Some(kind),
            });
        }
        Ok(())
    }

    /// How many entries a base search of `dn` with `controls` returns: 0
    /// when the bind DN may not see it.
    async fn base_search_count(
        &mut self,
        dn: &str,
        controls: Vec<RawControl>,
    ) -> Result<u64, LdapError> {
        let mut n = 0u64;
        let operation = format!("read of '{dn}'");
        self.request(
            dn,
            Scope::Base,
            "(objectClass=*)",
            &["1.1".to_string()],
            controls,
            &operation,
            |item| {
                if let Item::Entry(..) = item {
                    n += 1;
                }
                Ok(())
            },
        )
        .await?;
        Ok(n)
    }

    /// AD: the invocationId (hex) of the DC answering, or `None` for a
    /// server without `dsServiceName`.
    async fn invocation_id(&mut self, root: &RootDse) -> Result<Option<String>, LdapError> {
        let Some(dn) = root.ds_service_name.clone() else {
            return Ok(None);
        };
        Ok(self
            .base_values(&dn, "invocationId")
            .await?
            .first()
            .map(hex::encode))
    }

    fn attrs(config: &LdapConfig, kind: Kind, mode_attr: Option<&str>) -> Vec<String> {
        let a = &config.attributes;
        let mut v: Vec<String> = match kind {
            Kind::User => [
                &a.user_name,
                &a.external_id,
                &a.display_name,
                &a.given_name,
                &a.family_name,
                &a.email,
                &a.active,
            ]
            .into_iter()
            .filter(|s| !s.is_empty())
            .cloned()
            .collect(),
            Kind::Group => {
                let mut v = vec![a.external_id.clone(), a.group_name.clone()];
                v.extend(convert::MEMBER_ATTRS.iter().map(|s| {
                    // AD: ask for the first range explicitly. A DC whose
                    // MaxValRange was raised, and Samba (which never cuts a
                    // plain `member`), then still answer in ranges, so
                    // large groups always take the one ranged path.
                    if config.preset == Preset::ActiveDirectory && *s == "member" {
                        AD_FIRST_MEMBER_RANGE.to_string()
                    } else {
                        s.to_string()
                    }
                }));
                v
            }
        };
        if let Some(m) = mode_attr {
            v.push(m.to_string());
        }
        v.sort_by_key(|s| s.to_ascii_lowercase());
        v.dedup_by(|x, y| x.eq_ignore_ascii_case(y));
        v
    }

    /// A paged search of one base for one kind, optionally restricted to
    /// entries changed since a USN/timestamp (`since`, a filter item).
    async fn paged_search(
        &mut self,
        config: &LdapConfig,
        base: &str,
        kind: Kind,
        since: Option<&str>,
        batch: &mut Batch,
        newest: &mut Option<String>,
    ) -> Result<(), LdapError> {
        let kind_filter = match kind {
            Kind::User => &config.user_filter,
            Kind::Group => &config.group_filter,
        };
        let filter = match since {
            Some(s) => format!("(&{kind_filter}{s})"),
            None => kind_filter.clone(),
        };
        let track_ts = config.incremental != Incremental::None;
        let attrs = Self::attrs(config, kind, track_ts.then_some("modifyTimestamp"));
        let operation = format!("paged search of '{base}'");
        let mut cookie: Vec<u8> = Vec::new();
        for page in 0..MAX_PAGES {
            let control: RawControl = ldap3::controls::PagedResults {
                size: i32::try_from(config.page_size).unwrap_or(i32::MAX),
                cookie: std::mem::take(&mut cookie),
            }
            .into();
            // Groups whose member list AD cut into ranges: fetched after the
            // page, before the next one is asked for.
            let mut ranged: Vec<(ExternalGroup, Vec<convert::PendingRange>)> = Vec::new();
            let res = {
                let attributes = &config.attributes;
                let url = self.url.clone();
                let newest = &mut *newest;
                let ranged = &mut ranged;
                let batch = &mut *batch;
                self.request(
                    base,
                    Scope::Subtree,
                    &filter,
                    &attrs,
                    vec![control],
                    &operation,
                    move |item| {
                        let Item::Entry(tag, _) = item else {
                            return Ok(());
                        };
                        let entry = ber::entry(tag).map_err(|message| LdapError::Protocol {
                            url: url.clone(),
                            operation: "search".into(),
                            message,
                        })?;
                        if track_ts {
                            note_newest(&entry, newest);
                        }
                        if let Some(g) = push_entry(&entry, kind, attributes, base, batch)? {
                            ranged.push(g);
                        }
                        Ok(())
                    },
                )
                .await?
            };
            if res.rc != 0 {
                return Err(LdapError::Search {
                    base: base.to_string(),
                    filter: filter.clone(),
                    message: describe(&res),
                });
            }
            for (mut group, pending) in ranged {
                for pending in pending {
                    self.fetch_range(&mut group, pending).await?;
                }
                batch.push(Change::Group(group));
            }
            let next = res
                .ctrls
                .iter()
                .find(|c| c.1.ctype == PAGED_RESULTS_OID)
                .and_then(|c| c.1.val.as_deref());
            match next {
                // No paging control in the response: the server returned
                // everything at once.
                None => return Ok(()),
                Some(v) => {
                    cookie = ber::paged_cookie(v).map_err(|message| LdapError::Protocol {
                        url: self.url.clone(),
                        operation: format!("{operation}, page {}", page + 1),
                        message,
                    })?;
                }
            }
            if cookie.is_empty() {
                return Ok(());
            }
        }
        Err(LdapError::Search {
            base: base.to_string(),
            filter,
            message: format!("more than {MAX_PAGES} pages"),
        })
    }

    /// Reads the rest of a ranged member attribute (`member;range=1500-*`,
    /// then onwards until the server answers with a `-*` slice).
    async fn fetch_range(
        &mut self,
        group: &mut ExternalGroup,
        pending: convert::PendingRange,
    ) -> Result<(), LdapError> {
        let dn = group.locator.clone().unwrap_or_default();
        let crate::sync::Members::Full(members) = &mut group.members else {
            return Ok(());
        };
        let mut start = pending.next_start;
        for _ in 0..MAX_RANGE_SLICES {
            let attrs = vec![format!("{};range={start}-*", pending.attr)];
            let mut slice: Option<(Vec<Vec<u8>>, convert::Range)> = None;
            let url = self.url.clone();
            let res = self
                .request(
                    &dn,
                    Scope::Base,
                    "(objectClass=*)",
                    &attrs,
                    vec![],
                    "member range retrieval",
                    |item| {
                        if let Item::Entry(tag, _) = item {
                            let e = ber::entry(tag).map_err(|message| LdapError::Protocol {
                                url: url.clone(),
                                operation: "member range retrieval".into(),
                                message,
                            })?;
                            for (desc, values) in e.attrs {
                                if let Some((name, range)) = convert::parse_range(&desc) {
                                    if name.eq_ignore_ascii_case(&pending.attr) {
                                        slice = Some((values, range));
                                    }
                                }
                            }
                        }
                        Ok(())
                    },
                )
                .await?;
            if res.rc != 0 {
                return Err(LdapError::Search {
                    base: dn.clone(),
                    filter: "(objectClass=*)".into(),
                    message: format!("member range {start}-*: {}", describe(&res)),
                });
            }
            // A reply without the next slice would leave the list cut
            // short, and a short list removes members: refuse it.
            let Some((values, range)) = slice else {
                return Err(LdapError::Entry {
                    dn,
                    message: format!("member range {start}-* came back without member values"),
                });
            };
            convert::push_members(&pending.attr, &values, members).map_err(|message| {
                LdapError::Entry {
                    dn: dn.clone(),
                    message,
                }
            })?;
            match range.end {
                None => return Ok(()),
                Some(end) if end.checked_add(1).is_some_and(|next| next > start) => start = end + 1,
                Some(end) => {
                    return Err(LdapError::Entry {
                        dn,
                        message: format!("member range {start}-{end} does not advance"),
                    })
                }
            }
        }
        Err(LdapError::Entry {
            dn,
            message: format!("more than {MAX_RANGE_SLICES} member ranges"),
        })
    }

    /// One RFC 4533 refreshOnly search. With a cookie the server sends what
    /// changed, plus either the deleted entries (a delete phase: the read
    /// is incomplete, unmentioned entries are unchanged) or every present
    /// entry (a present phase: the read is complete, unmentioned entries
    /// are gone) — §3.3, §3.4. Without a cookie it sends everything.
    async fn sync_search(
        &mut self,
        config: &LdapConfig,
        base: &str,
        kind: Kind,
        cookie: Option<&[u8]>,
        batch: &mut Batch,
        gone: &mut Gone,
    ) -> Result<SyncOutcome, SourceError> {
        let filter = match kind {
            Kind::User => config.user_filter.clone(),
            Kind::Group => config.group_filter.clone(),
        };
        let attrs = Self::attrs(config, kind, None);
        let control = RawControl {
            ctype: SYNC_REQUEST_OID.to_string(),
            crit: true,
            val: Some(ber::sync_request(cookie)),
        };
        let operation = format!("content sync of '{base}'");
        let mut new_cookie: Option<Vec<u8>> = None;
        let mut present_phase = false;
        let url = self.url.clone();
        let protocol = |message: String| LdapError::Protocol {
            url: url.clone(),
            operation: operation.clone(),
            message,
        };
        let res = {
            let attributes = &config.attributes;
            let batch = &mut *batch;
            let new_cookie = &mut new_cookie;
            let present_phase = &mut present_phase;
            let protocol = &protocol;
            let gone = &mut *gone;
            self.request(
                base,
                Scope::Subtree,
                &filter,
                &attrs,
                vec![control],
                &operation,
                move |item| match item {
                    Item::Entry(tag, ctrls) => {
                        let state = ctrls
                            .iter()
                            .find(|c| c.1.ctype == SYNC_STATE_OID)
                            .and_then(|c| c.1.val.as_deref())
                            .ok_or_else(|| protocol("an entry without a sync state control".into()))
                            .and_then(|v| ber::sync_state(v).map_err(protocol))?;
                        if let Some(c) = state.cookie {
                            *new_cookie = Some(c);
                        }
                        let uuid = ber::uuid_string(&state.uuid);
                        match state.state {
                            ber::EntryState::Present => {
                                *present_phase = true;
                                batch.push(Change::Present { key: uuid });
                                Ok(())
                            }
                            ber::EntryState::Delete => {
                                note_deleted(gone, uuid, kind);
                                Ok(())
                            }
                            ber::EntryState::Add | ber::EntryState::Modify => {
                                let entry = ber::entry(tag).map_err(protocol)?;
                                if push_entry(&entry, kind, attributes, base, batch)?.is_some() {
                                    // Only AD splits member lists, and AD has
                                    // no content sync; a cut list would remove
                                    // members, so the run fails instead.
                                    return Err(LdapError::Entry {
                                        dn: entry.dn.clone(),
                                        message: "ranged member list in a content sync; the later ranges cannot be read".into(),
                                    });
                                }
                                Ok(())
                            }
                        }
                    }
                    Item::Intermediate(tag) => {
                        match ber::sync_info(tag).map_err(protocol)? {
                            None => {}
                            Some(ber::SyncInfo::NewCookie(c)) => *new_cookie = Some(c),
                            Some(ber::SyncInfo::RefreshDelete {
                                cookie: Some(c), ..
                            }) => *new_cookie = Some(c),
                            Some(ber::SyncInfo::RefreshDelete { cookie: None, .. }) => {}
                            Some(ber::SyncInfo::RefreshPresent { cookie, .. }) => {
                                *present_phase = true;
                                if let Some(c) = cookie {
                                    *new_cookie = Some(c);
                                }
                            }
                            Some(ber::SyncInfo::SyncIdSet {
                                cookie,
                                refresh_deletes,
                                uuids,
                            }) => {
                                if let Some(c) = cookie {
                                    *new_cookie = Some(c);
                                }
                                if !refresh_deletes {
                                    *present_phase = true;
                                }
                                for u in uuids {
                                    let key = ber::uuid_string(&u);
                                    if refresh_deletes {
                                        note_deleted(gone, key, kind);
                                    } else {
                                        batch.push(Change::Present { key });
                                    }
                                }
                            }
                        }
                        Ok(())
                    }
                },
            )
            .await?
        };
        // e-syncRefreshRequired is the RFC's answer to a stale cookie;
        // slapd answers unwillingToPerform to a cookie newer than its
        // content (a server restored from backup). Either way the cookie is
        // useless: the runner retries once without it, and if the server
        // refuses that too the error is reported then.
        if res.rc == RC_SYNC_REFRESH_REQUIRED || (res.rc == RC_UNWILLING && cookie.is_some()) {
            tracing::info!(
                base,
                "the server no longer accepts the syncrepl cookie: {}",
                describe(&res)
            );
            return Err(SourceError::CursorExpired);
        }
        if res.rc != 0 {
            return Err(LdapError::Search {
                base: base.to_string(),
                filter,
                message: describe(&res),
            }
            .into());
        }
        let done = res
            .ctrls
            .iter()
            .find(|c| c.1.ctype == SYNC_DONE_OID)
            .and_then(|c| c.1.val.as_deref())
            .map(ber::sync_done)
            .transpose()
            .map_err(&protocol)?;
        if let Some(d) = done {
            if let Some(c) = d.cookie {
                new_cookie = Some(c);
            }
            if !d.refresh_deletes {
                present_phase = true;
            }
        }
        Ok(SyncOutcome {
            cookie: new_cookie,
            complete: cookie.is_none() || present_phase,
        })
    }
}

/// Keeps the highest `modifyTimestamp` (GeneralizedTime in the fixed
/// `YYYYMMDDHHMMSSZ` form servers return, so text order is time order).
fn note_newest(entry: &ber::RawEntry, newest: &mut Option<String>) {
    if let Some(ts) = entry
        .values("modifyTimestamp")
        .first()
        .and_then(|v| std::str::from_utf8(v).ok())
    {
        let ts = ts.trim();
        // Digits, then an optional fraction, then `Z`: nothing else may
        // reach the next run's filter, and no byte index can split a char.
        let b = ts.as_bytes();
        let valid = b.len() >= 15
            && b[..14].iter().all(u8::is_ascii_digit)
            && b.last() == Some(&b'Z')
            && b[14..b.len() - 1]
                .iter()
                .all(|c| c.is_ascii_digit() || *c == b'.' || *c == b',');
        if valid && newest.as_deref().is_none_or(|n| ts > n) {
            *newest = Some(ts.to_string());
        }
    }
}

/// Converts one entry and pushes it, except a group whose member list
/// still has ranges to fetch: that one is returned to the caller.
fn push_entry(
    entry: &ber::RawEntry,
    kind: Kind,
    attributes: &Attributes,
    base: &str,
    batch: &mut Batch,
) -> Result<Option<(ExternalGroup, Vec<convert::PendingRange>)>, LdapError> {
    let bad = |message: String| LdapError::Entry {
        dn: entry.dn.clone(),
        message,
    };
    // An entry that cannot be converted (a value that is not UTF-8, an
    // `active` that is no boolean) is left as it was: reported present, so
    // a complete read deletes nothing for it, and logged. Failing the read
    // instead would stop the whole source on one bad entry, every run. Only
    // an entry without a usable stable id fails the read: it cannot be
    // told apart from a deleted one.
    let left_as_it_was = |batch: &mut Batch, why: &str| -> Result<(), LdapError> {
        let key = convert::stable_id(entry, &attributes.external_id).map_err(bad)?;
        tracing::warn!(dn = %entry.dn, reason = why, "directory entry left as it was");
        batch.push(Change::Present { key });
        Ok(())
    };
    match kind {
        Kind::User => match convert::user(entry, attributes, base) {
            Ok(Some(u)) => batch.push(Change::User(u)),
            // Without a user name it cannot be provisioned.
            Ok(None) => left_as_it_was(batch, &format!("no {}", attributes.user_name))?,
            Err(e) => left_as_it_was(batch, &e)?,
        },
        Kind::Group => match convert::group(entry, attributes, base) {
            Ok((g, pending)) if pending.is_empty() => batch.push(Change::Group(g)),
            Ok((g, pending)) => return Ok(Some((g, pending))),
            Err(e) => left_as_it_was(batch, &e)?,
        },
    }
    Ok(None)
}

/// Keys some syncrepl search reported as no longer in its content, with
/// the kinds of the searches that said so.
type Gone = std::collections::HashMap<String, (bool, bool)>;

fn note_deleted(gone: &mut Gone, key: String, kind: Kind) {
    let e = gone.entry(key).or_insert((false, false));
    match kind {
        Kind::User => e.0 = true,
        Kind::Group => e.1 = true,
    }
}

/// A syncrepl delete means "not in this search's content" (RFC 4533
/// §3.3.2), and syncprov sends one to every search whose content a changed
/// entry is not in: the group search of ou=people hears of every changed
/// user. So an entry is gone only if some search said so and no search of
/// this read reported it; deletions are pushed once every search is done.
fn flush_deleted(gone: Gone, batch: &mut Batch) {
    for (key, (user, group)) in gone {
        if batch.users.contains_key(&key)
            || batch.groups.contains_key(&key)
            || batch.present.contains(&key)
        {
            continue;
        }
        let kind = match (user, group) {
            (true, false) => Some(Kind::User),
            (false, true) => Some(Kind::Group),
            _ => None,
        };
        batch.push(Change::Deleted { key, kind });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(preset: &str) -> LdapConfig {
        let text = format!(
            "url = \"ldap://127.0.0.1:389\"\npreset = \"{preset}\"\nbase_dns = [\"dc=corp\"]\n"
        );
        LdapConfig::from_toml(toml::from_str(&text).expect("toml")).expect("config")
    }

    #[test]
    fn active_directory_asks_for_the_first_member_range() {
        let ad = Conn::attrs(&config("active_directory"), Kind::Group, None);
        assert!(ad.iter().any(|a| a == AD_FIRST_MEMBER_RANGE), "{ad:?}");
        assert!(
            !ad.iter().any(|a| a.eq_ignore_ascii_case("member")),
            "{ad:?}"
        );
        let openldap = Conn::attrs(&config("openldap"), Kind::Group, None);
        assert!(openldap.iter().any(|a| a == "member"), "{openldap:?}");
        assert!(
            !openldap.iter().any(|a| a.contains(";range=")),
            "{openldap:?}"
        );
    }
}
