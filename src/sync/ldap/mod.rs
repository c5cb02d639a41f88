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

mod conn;
mod paged;
mod probe;
mod syncrepl;
mod tombstones;

use conn::*;
use paged::*;
use probe::naming_context;
use syncrepl::*;

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
            // The server's contextCSN, read before searching.
            let contexts = conn.context_csns(&root, &config.base_dns).await?;
            // A crash can also leave contextCSN at a point after the cookie
            // but before the last writes; syncrepl then stops at it. Entries
            // newer than the contextCSN give that away.
            for (context, csns) in &contexts {
                if let Some(entry) = conn.entry_csn_above(context, csns).await? {
                    // Read contextCSN again, so a write landing between the
                    // two reads is not taken for a crash.
                    let now = conn.context_csn(context).await?;
                    if now.iter().max().is_none_or(|c| *c < entry) {
                        return expired(format!(
                            "'{context}' holds an entry with entryCSN {entry}, newer than the \
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
                    let csns = csns_of(&root, &contexts, base);
                    if let Some(why) = state::csn_rewound(&state::cookie_csns(&cookie), csns) {
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
            let mut contexts = conn.context_csns(&root, &config.base_dns).await?;
            for (context, csns) in contexts.iter_mut() {
                if let Some(entry) = conn.entry_csn_above(context, csns).await? {
                    tracing::warn!(
                        context,
                        entry,
                        "contextCSN is behind the entries (a crash moved it back)"
                    );
                    state::advance(csns, entry);
                }
            }
            for base in &config.base_dns {
                let cookie = state::cookie_at(csns_of(&root, &contexts, base));
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

/// The contextCSN of `base`'s naming context, from `contexts` as
/// [`Conn::context_csns`] read them.
fn csns_of<'a>(
    root: &RootDse,
    contexts: &'a BTreeMap<String, Vec<String>>,
    base: &str,
) -> &'a [String] {
    naming_context(root, base)
        .and_then(|c| contexts.get(&c))
        .map_or(&[], Vec::as_slice)
}

/// The key of one search's cookie: `user:<base>` or `group:<base>`.
fn cookie_key(kind: Kind, base: &str) -> String {
    format!("{}:{base}", kind.name().to_ascii_lowercase())
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
