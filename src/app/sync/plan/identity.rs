//! How entries are compared: DNs normalised for member references, and
//! content hashes that let an unchanged entry be skipped.

use sha2::{Digest, Sha256};

use crate::sync::{ExternalGroup, ExternalUser};

/// Normalises a DN for comparison: lowercase, no spaces around `,`, `=`
/// and `+`. Renamed entries are matched by key, never by DN; this only
/// resolves member references.
pub fn normalize_locator(dn: &str) -> String {
    let lower = dn.trim().to_lowercase();
    let mut out = String::with_capacity(lower.len());
    let mut pending_space = false;
    let mut prev: Option<char> = None;
    for c in lower.chars() {
        if c == ' ' && prev != Some('\\') {
            pending_space = true;
            continue;
        }
        if pending_space && !matches!(c, ',' | '=' | '+') && !matches!(prev, Some(',' | '=' | '+'))
        {
            out.push(' ');
        }
        pending_space = false;
        out.push(c);
        prev = Some(c);
    }
    out
}

/// The content hash of a user record (everything the stored document is
/// built from).
pub fn user_hash(u: &ExternalUser) -> String {
    let json = serde_json::to_string(u).unwrap_or_default();
    hex::encode(Sha256::digest(json.as_bytes()))
}

pub(super) fn group_hash(g: &ExternalGroup) -> String {
    let json =
        serde_json::to_string(&(&g.key, &g.locator, &g.base, &g.display_name, &g.external_id))
            .unwrap_or_default();
    hex::encode(Sha256::digest(json.as_bytes()))
}
