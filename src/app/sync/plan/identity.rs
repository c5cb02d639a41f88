//! How entries are compared: DNs normalised for member references, and
//! content hashes that let an unchanged entry be skipped.

use std::borrow::Cow;

use sha2::{Digest, Sha256};

use crate::domain::ContentHash;
use crate::sync::{ExternalGroup, ExternalUser};

/// Normalises a DN for comparison: lowercase, no spaces around `,`, `=`
/// and `+`. Renamed entries are matched by key, never by DN; this only
/// resolves member references.
///
/// Borrowed when the DN is already in that form (lowercase ASCII with no
/// spaces, as most directories write their DNs): a first sync indexes
/// 100,000 of them.
pub fn normalize_locator(dn: &str) -> Cow<'_, str> {
    if dn
        .bytes()
        .all(|b| b > b' ' && b.is_ascii() && !b.is_ascii_uppercase())
    {
        return Cow::Borrowed(dn);
    }
    Cow::Owned(normalized(dn))
}

/// The normal form, built.
fn normalized(dn: &str) -> String {
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
pub fn user_hash(u: &ExternalUser) -> ContentHash {
    let json = serde_json::to_string(u).unwrap_or_default();
    ContentHash::new(Sha256::digest(json.as_bytes()).into())
}

pub(super) fn group_hash(g: &ExternalGroup) -> ContentHash {
    let json =
        serde_json::to_string(&(&g.key, &g.locator, &g.base, &g.display_name, &g.external_id))
            .unwrap_or_default();
    ContentHash::new(Sha256::digest(json.as_bytes()).into())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::{normalize_locator, normalized};

    proptest! {
        /// The borrowed shortcut answers exactly what building the normal
        /// form answers.
        #[test]
        fn a_borrowed_locator_is_its_normal_form(
            dn in "[ a-zA-Z0-9=,+\\\\\t\u{b}\u{e9}\u{130}]{0,24}|\\PC{0,24}"
        ) {
            let built = normalized(&dn);
            prop_assert_eq!(normalize_locator(&dn), built.as_str());
        }
    }
}
