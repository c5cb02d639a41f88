//! The BER decoders of the LDAP source (src/sync/ldap/ber.rs) on arbitrary
//! bytes: a SearchResultEntry and a Sync Info intermediate message from the
//! tag `ldap3::asn1::parse_tag` reads, and the paged-results, Sync State
//! and Sync Done control values from the raw bytes.
//!
//! ldap3's own message decoders (`LdapResult` and friends) are out of scope:
//! they are known to panic on malformed input and are guarded elsewhere.
//!
//! Invariant checked besides "never panics": a Sync Request built from a
//! decoded Sync Done cookie decodes back to that cookie.
#![no_main]

use ldap3::asn1::{parse_tag, StructureTag, TagClass, PL};
use libfuzzer_sys::fuzz_target;
use rolebridge::sync::ldap::ber::{
    entry, paged_cookie, sync_done, sync_info, sync_request, sync_state, uuid_string, SyncInfo,
};

/// `tag` re-labelled `[APPLICATION id]`, so that any constructed input also
/// reaches the decoders past their first check.
fn as_application(tag: &StructureTag, id: u64) -> StructureTag {
    StructureTag {
        class: TagClass::Application,
        id,
        payload: tag.payload.clone(),
    }
}

fn decode_tag(tag: &StructureTag) {
    if let Ok(e) = entry(tag.clone()) {
        for (name, _) in &e.attrs {
            let _ = e.values(name);
        }
    }
    if let Ok(Some(SyncInfo::SyncIdSet { uuids, .. })) = sync_info(tag.clone()) {
        for u in &uuids {
            assert_eq!(uuid_string(u).len(), 36);
        }
    }
}

/// The cookie carried by a Sync Request control value.
fn request_cookie(value: &[u8]) -> Option<Vec<u8>> {
    let (rest, tag) = parse_tag(value).ok()?;
    assert!(rest.is_empty(), "trailing bytes after a sync request");
    let mut parts = tag.expect_constructed()?.into_iter();
    let _mode = parts.next()?;
    parts.next()?.expect_primitive()
}

fuzz_target!(|data: &[u8]| {
    // The raw control values.
    if let Ok(cookie) = paged_cookie(data) {
        let _ = cookie.len();
    }
    if let Ok(state) = sync_state(data) {
        assert_eq!(uuid_string(&state.uuid).len(), 36);
    }
    if let Ok(done) = sync_done(data) {
        if let Some(cookie) = done.cookie {
            // What the source sends back on the next read must encode.
            let request = sync_request(Some(&cookie));
            assert_eq!(
                request_cookie(&request).as_deref(),
                Some(cookie.as_slice()),
                "sync request {request:?} does not carry cookie {cookie:?}"
            );
        }
    }
    // Whole messages' protocol ops, as the connection hands them over.
    if let Ok((_, tag)) = parse_tag(data) {
        decode_tag(&tag);
        if let PL::C(parts) = &tag.payload {
            decode_tag(&as_application(&tag, 4));
            decode_tag(&as_application(&tag, 25));
            // An LDAPMessage: SEQUENCE { messageID, protocolOp, controls }.
            for part in parts {
                decode_tag(part);
            }
        }
    }
});
