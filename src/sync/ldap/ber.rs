//! BER decoding of what the server sends: entries, the paged-results
//! response control (RFC 2696) and the content-sync messages (RFC 4533).
//!
//! ldap3 ships decoders for these, but they panic on malformed input; a
//! directory (or anything in between) must not be able to crash the
//! process, so these return `Err` with what was wrong instead.

use ldap3::asn1::{
    parse_tag, write, ASNTag, Enumerated, OctetString, Sequence, StructureTag, Tag, TagClass, Types,
};

/// A search result entry: its DN and attributes with raw values (text and
/// binary alike; `objectGUID` is binary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEntry {
    pub dn: String,
    /// Attribute descriptions as the server spelled them (options such as
    /// `;range=0-1499` included), with their values.
    pub attrs: Vec<(String, Vec<Vec<u8>>)>,
}

impl RawEntry {
    /// The values of `name` (case-insensitive, without options).
    pub fn values(&self, name: &str) -> &[Vec<u8>] {
        self.attrs
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
            .unwrap_or(&[])
    }
}

fn primitive(tag: StructureTag, what: &str) -> Result<Vec<u8>, String> {
    tag.expect_primitive()
        .ok_or_else(|| format!("{what}: expected a primitive value"))
}

fn constructed(tag: StructureTag, what: &str) -> Result<Vec<StructureTag>, String> {
    tag.expect_constructed()
        .ok_or_else(|| format!("{what}: expected a constructed value"))
}

fn utf8(bytes: Vec<u8>, what: &str) -> Result<String, String> {
    String::from_utf8(bytes).map_err(|_| format!("{what} is not UTF-8"))
}

fn parse_whole(bytes: &[u8], what: &str) -> Result<StructureTag, String> {
    match parse_tag(bytes) {
        Ok((_, tag)) => Ok(tag),
        Err(_) => Err(format!("{what}: malformed BER")),
    }
}

fn bool_value(bytes: &[u8], what: &str) -> Result<bool, String> {
    match bytes {
        [b] => Ok(*b != 0),
        _ => Err(format!("{what}: malformed BOOLEAN")),
    }
}

fn uint_value(bytes: &[u8], what: &str) -> Result<u64, String> {
    if bytes.is_empty() || bytes.len() > 8 {
        return Err(format!("{what}: malformed INTEGER"));
    }
    Ok(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// Decodes a SearchResultEntry (`[APPLICATION 4]`).
pub fn entry(tag: StructureTag) -> Result<RawEntry, String> {
    if tag.class != TagClass::Application || tag.id != 4 {
        return Err(format!("expected a search entry, got tag {}", tag.id));
    }
    let mut parts = constructed(tag, "entry")?.into_iter();
    let dn = utf8(
        primitive(parts.next().ok_or("entry without DN")?, "entry DN")?,
        "entry DN",
    )?;
    let mut attrs = Vec::new();
    if let Some(list) = parts.next() {
        for pa in constructed(list, "attribute list")? {
            let mut pa = constructed(pa, "attribute")?.into_iter();
            let name = utf8(
                primitive(pa.next().ok_or("attribute without type")?, "attribute type")?,
                "attribute type",
            )?;
            let values = match pa.next() {
                Some(set) => constructed(set, "attribute values")?
                    .into_iter()
                    .map(|v| primitive(v, "attribute value"))
                    .collect::<Result<Vec<_>, _>>()?,
                None => Vec::new(),
            };
            attrs.push((name, values));
        }
    }
    Ok(RawEntry { dn, attrs })
}

/// The cookie of a paged-results response control value
/// (`SEQUENCE { size INTEGER, cookie OCTET STRING }`); empty means done.
pub fn paged_cookie(value: &[u8]) -> Result<Vec<u8>, String> {
    let what = "paged results control";
    let mut seq = constructed(parse_whole(value, what)?, what)?.into_iter();
    let _size = seq.next().ok_or_else(|| format!("{what}: no size"))?;
    let cookie = seq.next().ok_or_else(|| format!("{what}: no cookie"))?;
    primitive(cookie, what)
}

/// The Sync Request control value (RFC 4533 §2.2), refreshOnly.
pub fn sync_request(cookie: Option<&[u8]>) -> Vec<u8> {
    let mut inner = vec![Tag::Enumerated(Enumerated {
        inner: 1, // refreshOnly
        ..Default::default()
    })];
    if let Some(c) = cookie {
        inner.push(Tag::OctetString(OctetString {
            inner: c.to_vec(),
            ..Default::default()
        }));
    }
    // reloadHint DEFAULT FALSE is left out.
    let seq = Tag::Sequence(Sequence {
        inner,
        ..Default::default()
    })
    .into_structure();
    let mut buf = bytes_buf();
    // Writing into memory cannot fail.
    let _ = write::encode_into(&mut buf, seq);
    buf.to_vec()
}

fn bytes_buf() -> bytes::BytesMut {
    bytes::BytesMut::with_capacity(64)
}

/// Per-entry state in a Sync State control (RFC 4533 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryState {
    Present,
    Add,
    Modify,
    Delete,
}

/// A decoded Sync State control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncState {
    pub state: EntryState,
    pub uuid: [u8; 16],
    pub cookie: Option<Vec<u8>>,
}

fn uuid16(bytes: Vec<u8>, what: &str) -> Result<[u8; 16], String> {
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| format!("{what}: entryUUID of {} bytes, not 16", b.len()))
}

pub fn sync_state(value: &[u8]) -> Result<SyncState, String> {
    let what = "sync state control";
    let mut seq = constructed(parse_whole(value, what)?, what)?.into_iter();
    let state = match seq.next() {
        Some(t) if t.class == TagClass::Universal && t.id == Types::Enumerated as u64 => {
            uint_value(&primitive(t, what)?, what)?
        }
        _ => return Err(format!("{what}: no state")),
    };
    let state = match state {
        0 => EntryState::Present,
        1 => EntryState::Add,
        2 => EntryState::Modify,
        3 => EntryState::Delete,
        n => return Err(format!("{what}: unknown state {n}")),
    };
    let uuid = uuid16(
        primitive(
            seq.next().ok_or_else(|| format!("{what}: no entryUUID"))?,
            what,
        )?,
        what,
    )?;
    let cookie = seq.next().map(|t| primitive(t, what)).transpose()?;
    Ok(SyncState {
        state,
        uuid,
        cookie,
    })
}

/// A decoded Sync Done control (RFC 4533 §2.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncDone {
    pub cookie: Option<Vec<u8>>,
    pub refresh_deletes: bool,
}

pub fn sync_done(value: &[u8]) -> Result<SyncDone, String> {
    let what = "sync done control";
    let mut done = SyncDone {
        cookie: None,
        refresh_deletes: false,
    };
    for t in constructed(parse_whole(value, what)?, what)? {
        match (t.class, t.id) {
            (TagClass::Universal, id) if id == Types::OctetString as u64 => {
                done.cookie = Some(primitive(t, what)?)
            }
            (TagClass::Universal, id) if id == Types::Boolean as u64 => {
                done.refresh_deletes = bool_value(&primitive(t, what)?, what)?
            }
            _ => return Err(format!("{what}: unexpected element")),
        }
    }
    Ok(done)
}

/// A decoded Sync Info intermediate message (RFC 4533 §2.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncInfo {
    NewCookie(Vec<u8>),
    RefreshDelete {
        cookie: Option<Vec<u8>>,
        refresh_done: bool,
    },
    RefreshPresent {
        cookie: Option<Vec<u8>>,
        refresh_done: bool,
    },
    SyncIdSet {
        cookie: Option<Vec<u8>>,
        refresh_deletes: bool,
        uuids: Vec<[u8; 16]>,
    },
}

pub const SYNC_INFO_OID: &str = "1.3.6.1.4.1.4203.1.9.1.4";

/// Decodes an IntermediateResponse (`[APPLICATION 25]`): `Ok(None)` when
/// it is not a Sync Info message.
pub fn sync_info(tag: StructureTag) -> Result<Option<SyncInfo>, String> {
    let what = "sync info message";
    let mut name = None;
    let mut value = None;
    for t in constructed(tag, what)? {
        match (t.class, t.id) {
            (TagClass::Context, 0) => name = Some(utf8(primitive(t, what)?, what)?),
            (TagClass::Context, 1) => value = Some(primitive(t, what)?),
            _ => return Err(format!("{what}: unexpected element")),
        }
    }
    if name.as_deref() != Some(SYNC_INFO_OID) {
        return Ok(None);
    }
    let value = value.ok_or_else(|| format!("{what}: no value"))?;
    let choice = parse_whole(&value, what)?;
    if choice.class != TagClass::Context {
        return Err(format!("{what}: unexpected choice"));
    }
    let id = choice.id;
    if id == 0 {
        return Ok(Some(SyncInfo::NewCookie(primitive(choice, what)?)));
    }
    if id > 3 {
        return Err(format!("{what}: unknown choice [{id}]"));
    }
    let mut cookie = None;
    // refreshDone DEFAULT TRUE; refreshDeletes DEFAULT FALSE.
    let mut flag = id != 3;
    let mut uuids = Vec::new();
    for t in constructed(choice, what)? {
        match (t.class, t.id) {
            (TagClass::Universal, i) if i == Types::OctetString as u64 => {
                cookie = Some(primitive(t, what)?)
            }
            (TagClass::Universal, i) if i == Types::Boolean as u64 => {
                flag = bool_value(&primitive(t, what)?, what)?
            }
            (TagClass::Universal, i) if i == Types::Set as u64 && id == 3 => {
                for u in constructed(t, what)? {
                    uuids.push(uuid16(primitive(u, what)?, what)?);
                }
            }
            _ => return Err(format!("{what}: unexpected element")),
        }
    }
    Ok(Some(match id {
        1 => SyncInfo::RefreshDelete {
            cookie,
            refresh_done: flag,
        },
        2 => SyncInfo::RefreshPresent {
            cookie,
            refresh_done: flag,
        },
        _ => SyncInfo::SyncIdSet {
            cookie,
            refresh_deletes: flag,
            uuids,
        },
    }))
}

/// Formats a 16-byte entryUUID the way OpenLDAP prints the attribute
/// (RFC 4530: lowercase, hyphenated, network byte order).
pub fn uuid_string(u: &[u8; 16]) -> String {
    uuid::Uuid::from_bytes(*u).hyphenated().to_string()
}

/// Encodes tags for tests of the decoders.
#[cfg(test)]
pub(crate) fn encode(tag: Tag) -> Vec<u8> {
    let mut buf = bytes_buf();
    write::encode_into(&mut buf, tag.into_structure()).unwrap();
    buf.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ldap3::asn1::{Boolean, Integer};

    fn octets(b: &[u8]) -> Tag {
        Tag::OctetString(OctetString {
            inner: b.to_vec(),
            ..Default::default()
        })
    }

    #[test]
    fn sync_state_round_trip_and_errors() {
        let v = encode(Tag::Sequence(Sequence {
            inner: vec![
                Tag::Enumerated(Enumerated {
                    inner: 3,
                    ..Default::default()
                }),
                octets(&[7; 16]),
                octets(b"rid=1,csn=x"),
            ],
            ..Default::default()
        }));
        let s = sync_state(&v).unwrap();
        assert_eq!(s.state, EntryState::Delete);
        assert_eq!(s.uuid, [7; 16]);
        assert_eq!(s.cookie.as_deref(), Some(&b"rid=1,csn=x"[..]));
        // Truncated, wrong UUID length, unknown state: errors, not panics.
        assert!(sync_state(&v[..v.len() - 3]).is_err());
        let bad = encode(Tag::Sequence(Sequence {
            inner: vec![
                Tag::Enumerated(Enumerated {
                    inner: 9,
                    ..Default::default()
                }),
                octets(&[7; 16]),
            ],
            ..Default::default()
        }));
        assert!(sync_state(&bad).unwrap_err().contains("unknown state 9"));
        let short = encode(Tag::Sequence(Sequence {
            inner: vec![
                Tag::Enumerated(Enumerated {
                    inner: 1,
                    ..Default::default()
                }),
                octets(&[7; 3]),
            ],
            ..Default::default()
        }));
        assert!(sync_state(&short).unwrap_err().contains("3 bytes"));
        assert!(sync_state(&[]).is_err());
    }

    #[test]
    fn sync_done_defaults() {
        let v = encode(Tag::Sequence(Sequence {
            inner: vec![octets(b"c")],
            ..Default::default()
        }));
        let d = sync_done(&v).unwrap();
        assert_eq!(d.cookie.as_deref(), Some(&b"c"[..]));
        assert!(!d.refresh_deletes);
        let v = encode(Tag::Sequence(Sequence {
            inner: vec![Tag::Boolean(Boolean {
                inner: true,
                ..Default::default()
            })],
            ..Default::default()
        }));
        assert!(sync_done(&v).unwrap().refresh_deletes);
    }

    fn intermediate(value: Vec<u8>) -> StructureTag {
        Tag::Sequence(Sequence {
            class: TagClass::Application,
            id: 25,
            inner: vec![
                Tag::OctetString(OctetString {
                    class: TagClass::Context,
                    id: 0,
                    inner: SYNC_INFO_OID.as_bytes().to_vec(),
                }),
                Tag::OctetString(OctetString {
                    class: TagClass::Context,
                    id: 1,
                    inner: value,
                }),
            ],
        })
        .into_structure()
    }

    #[test]
    fn sync_info_choices() {
        let id_set = encode(Tag::Sequence(Sequence {
            class: TagClass::Context,
            id: 3,
            inner: vec![
                octets(b"ck"),
                Tag::Boolean(Boolean {
                    inner: true,
                    ..Default::default()
                }),
                Tag::Set(ldap3::asn1::Set {
                    inner: vec![octets(&[1; 16]), octets(&[2; 16])],
                    ..Default::default()
                }),
            ],
        }));
        assert_eq!(
            sync_info(intermediate(id_set)).unwrap(),
            Some(SyncInfo::SyncIdSet {
                cookie: Some(b"ck".to_vec()),
                refresh_deletes: true,
                uuids: vec![[1; 16], [2; 16]],
            })
        );
        let present = encode(Tag::Sequence(Sequence {
            class: TagClass::Context,
            id: 2,
            inner: vec![],
        }));
        assert_eq!(
            sync_info(intermediate(present)).unwrap(),
            Some(SyncInfo::RefreshPresent {
                cookie: None,
                refresh_done: true
            })
        );
        let cookie = encode(Tag::OctetString(OctetString {
            class: TagClass::Context,
            id: 0,
            inner: b"new".to_vec(),
        }));
        assert_eq!(
            sync_info(intermediate(cookie)).unwrap(),
            Some(SyncInfo::NewCookie(b"new".to_vec()))
        );
        assert!(sync_info(intermediate(vec![0xff, 0x01])).is_err());
    }

    #[test]
    fn entry_with_binary_value() {
        let tag = Tag::Sequence(Sequence {
            class: TagClass::Application,
            id: 4,
            inner: vec![
                octets(b"cn=a,dc=x"),
                Tag::Sequence(Sequence {
                    inner: vec![Tag::Sequence(Sequence {
                        inner: vec![
                            octets(b"objectGUID"),
                            Tag::Set(ldap3::asn1::Set {
                                inner: vec![octets(&[0xff; 16])],
                                ..Default::default()
                            }),
                        ],
                        ..Default::default()
                    })],
                    ..Default::default()
                }),
            ],
        })
        .into_structure();
        let e = entry(tag).unwrap();
        assert_eq!(e.dn, "cn=a,dc=x");
        assert_eq!(e.values("objectguid"), &[vec![0xff; 16]]);
        assert!(e.values("cn").is_empty());
    }

    #[test]
    fn paged_cookie_decodes() {
        let v = encode(Tag::Sequence(Sequence {
            inner: vec![
                Tag::Integer(Integer {
                    inner: 0,
                    ..Default::default()
                }),
                octets(b"next"),
            ],
            ..Default::default()
        }));
        assert_eq!(paged_cookie(&v).unwrap(), b"next");
        assert!(paged_cookie(&[0x30, 0x05]).is_err());
    }
}
