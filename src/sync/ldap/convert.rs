//! Raw LDAP entries to protocol-free records: the stable id, the SCIM
//! attributes, the `active` flag and the members.

use super::ber::RawEntry;
use super::config::Attributes;
use super::dn;
use crate::sync::{ExternalGroup, ExternalUser, MemberRef, Members};

/// `userAccountControl` ACCOUNTDISABLE.
pub const UAC_ACCOUNTDISABLE: u64 = 0x2;

/// Decodes AD's binary `objectGUID`: the first three fields are
/// little-endian, the last two big-endian, so reading the bytes in order
/// gives a different (wrong) GUID than the one AD tools show.
pub fn guid_string(b: &[u8]) -> Result<String, String> {
    let b: &[u8; 16] = b
        .try_into()
        .map_err(|_| format!("objectGUID of {} bytes, not 16", b.len()))?;
    Ok(uuid::Uuid::from_bytes_le(*b).hyphenated().to_string())
}

fn text(entry: &RawEntry, attr: &str) -> Result<Option<String>, String> {
    if attr.is_empty() {
        return Ok(None);
    }
    match entry.values(attr).first() {
        None => Ok(None),
        Some(v) => std::str::from_utf8(v)
            .map(|s| Some(s.trim().to_string()).filter(|s| !s.is_empty()))
            .map_err(|_| format!("attribute {attr} is not UTF-8")),
    }
}

/// The entry's stable id, as the `key` of its record.
pub fn stable_id(entry: &RawEntry, attr: &str) -> Result<String, String> {
    let v = entry
        .values(attr)
        .first()
        .ok_or_else(|| format!("no {attr} (the stable id); is the bind DN allowed to read it?"))?;
    if attr.eq_ignore_ascii_case("objectGUID") {
        return guid_string(v);
    }
    let s = std::str::from_utf8(v)
        .map_err(|_| format!("{attr} is not UTF-8"))?
        .trim();
    if s.is_empty() {
        return Err(format!("{attr} is empty"));
    }
    // entryUUID is case-insensitive (UUIDMatch); syncrepl reports it in
    // binary, printed lowercase, so keys must be lowercase too.
    if attr.eq_ignore_ascii_case("entryUUID") {
        Ok(s.to_ascii_lowercase())
    } else {
        Ok(s.to_string())
    }
}

/// Whether the account may sign in. With no `active` attribute configured
/// every account is; with one configured, an entry without it is
/// unreadable, never guessed active: AD writes `userAccountControl` on every
/// account, so its absence means the bind DN may not read it, and an
/// account disabled there must not be provisioned as enabled.
pub fn active(entry: &RawEntry, attr: &str) -> Result<bool, String> {
    if attr.is_empty() {
        return Ok(true);
    }
    let Some(v) = text(entry, attr)? else {
        return Err(format!(
            "no {attr} (the bind DN may not be allowed to read it); whether the account is enabled is unknown"
        ));
    };
    if attr.eq_ignore_ascii_case("userAccountControl") {
        // AD writes it as a signed 32-bit decimal.
        let n: i64 = v
            .parse()
            .map_err(|_| format!("userAccountControl \"{v}\" is not a number"))?;
        return Ok((n as u64) & UAC_ACCOUNTDISABLE == 0);
    }
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "active" | "enabled" => Ok(true),
        "false" | "0" | "no" | "inactive" | "disabled" => Ok(false),
        _ => Err(format!("{attr} \"{v}\" is neither TRUE nor FALSE")),
    }
}

/// Converts a user entry; `Ok(None)` when it has no user name (it cannot
/// be provisioned, and the caller reports it present so it is not deleted).
pub fn user(entry: &RawEntry, a: &Attributes, base: &str) -> Result<Option<ExternalUser>, String> {
    let key = stable_id(entry, &a.external_id)?;
    let Some(user_name) = text(entry, &a.user_name)? else {
        return Ok(None);
    };
    let mut emails = Vec::new();
    if !a.email.is_empty() {
        for v in entry.values(&a.email) {
            let s = std::str::from_utf8(v).map_err(|_| format!("{} is not UTF-8", a.email))?;
            let s = s.trim();
            if !s.is_empty() && !emails.iter().any(|e: &String| e.eq_ignore_ascii_case(s)) {
                emails.push(s.to_string());
            }
        }
    }
    Ok(Some(ExternalUser {
        external_id: Some(key.clone()),
        key: key.into(),
        locator: Some(dn::normalize(&entry.dn)),
        base: base.to_string(),
        user_name,
        display_name: text(entry, &a.display_name)?,
        given_name: text(entry, &a.given_name)?,
        family_name: text(entry, &a.family_name)?,
        emails,
        active: active(entry, &a.active)?,
    }))
}

/// A `member;range=<start>-<end>` attribute description (AD returns large
/// member lists in slices of 1,500). `end` is `None` for `*`, the last slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: u64,
    pub end: Option<u64>,
}

/// Splits `member;range=0-1499` into `("member", Range)`.
pub fn parse_range(description: &str) -> Option<(&str, Range)> {
    let (name, opts) = description.split_once(';')?;
    let spec = opts.split(';').find_map(|o| {
        o.strip_prefix("range=")
            .or_else(|| o.strip_prefix("Range="))
    })?;
    let (s, e) = spec.split_once('-')?;
    let start = s.parse().ok()?;
    let end = if e == "*" {
        None
    } else {
        Some(e.parse().ok()?)
    };
    Some((name, Range { start, end }))
}

/// Member attributes: DNs (`member`, `uniqueMember`) and user names
/// (`memberUid`).
pub const MEMBER_ATTRS: [&str; 3] = ["member", "uniqueMember", "memberUid"];

/// Adds the member references of one attribute's values.
pub fn push_members(
    attr: &str,
    values: &[Vec<u8>],
    out: &mut Vec<MemberRef>,
) -> Result<(), String> {
    for v in values {
        let s = std::str::from_utf8(v).map_err(|_| format!("{attr} value is not UTF-8"))?;
        if attr.eq_ignore_ascii_case("memberUid") {
            let s = s.trim();
            if !s.is_empty() {
                out.push(MemberRef::UserName(s.to_string()));
            }
        } else {
            // groupOfUniqueNames: `dn#'0101'B` carries an optional UID.
            let s = if attr.eq_ignore_ascii_case("uniqueMember") {
                match s.rsplit_once('#') {
                    Some((dn, uid)) if uid.starts_with('\'') && uid.ends_with("'B") => dn,
                    _ => s,
                }
            } else {
                s
            };
            let n = dn::normalize(s);
            if !n.is_empty() {
                out.push(MemberRef::Locator(n));
            }
        }
    }
    Ok(())
}

/// What a group entry still needs: the member slices AD did not send yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRange {
    pub attr: String,
    pub next_start: u64,
}

/// Converts a group entry; member slices still to fetch are returned
/// alongside (the caller fetches them and appends before pushing).
pub fn group(
    entry: &RawEntry,
    a: &Attributes,
    base: &str,
) -> Result<(ExternalGroup, Vec<PendingRange>), String> {
    let key = stable_id(entry, &a.external_id)?;
    let locator = dn::normalize(&entry.dn);
    let display_name = text(entry, &a.group_name)?.unwrap_or_else(|| {
        // Fall back to the RDN value, so a group is never nameless.
        entry
            .dn
            .split(',')
            .next()
            .and_then(|rdn| rdn.split_once('='))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| entry.dn.clone())
    });
    let mut members = Vec::new();
    let mut pending = Vec::new();
    for (desc, values) in &entry.attrs {
        if let Some((name, range)) = parse_range(desc) {
            if MEMBER_ATTRS.iter().any(|m| m.eq_ignore_ascii_case(name)) {
                push_members(name, values, &mut members)?;
                if let Some(end) = range.end {
                    let next_start = end
                        .checked_add(1)
                        .ok_or_else(|| format!("{desc}: range end {end} is out of bounds"))?;
                    pending.push(PendingRange {
                        attr: name.to_string(),
                        next_start,
                    });
                }
            }
        } else if MEMBER_ATTRS.iter().any(|m| m.eq_ignore_ascii_case(desc)) {
            push_members(desc, values, &mut members)?;
        }
    }
    Ok((
        ExternalGroup {
            external_id: Some(key.clone()),
            key: key.into(),
            locator: Some(locator),
            base: base.to_string(),
            display_name,
            members: Members::Full(members),
        },
        pending,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(attrs: &[(&str, &[&[u8]])]) -> RawEntry {
        RawEntry {
            dn: "CN=Ann Lee, OU=People,DC=corp,DC=example".into(),
            attrs: attrs
                .iter()
                .map(|(n, vs)| (n.to_string(), vs.iter().map(|v| v.to_vec()).collect()))
                .collect(),
        }
    }

    #[test]
    fn object_guid_is_mixed_endian() {
        // {3F2504E0-4F89-11D3-9A0C-0305E82C3301} as AD stores it.
        let raw = [
            0xE0, 0x04, 0x25, 0x3F, 0x89, 0x4F, 0xD3, 0x11, 0x9A, 0x0C, 0x03, 0x05, 0xE8, 0x2C,
            0x33, 0x01,
        ];
        assert_eq!(
            guid_string(&raw).unwrap(),
            "3f2504e0-4f89-11d3-9a0c-0305e82c3301"
        );
        assert!(guid_string(&raw[..15]).unwrap_err().contains("15 bytes"));
    }

    #[test]
    fn ad_user_disabled_and_enabled() {
        let a = super::super::config::LdapConfig::from_toml(
            toml::from_str(
                "url = \"ldap://h\"\npreset = \"active_directory\"\nbase_dns = [\"dc=corp\"]",
            )
            .unwrap(),
        )
        .unwrap()
        .attributes;
        let guid: &[u8] = &[1; 16];
        let u = user(
            &entry(&[
                ("objectGUID", &[guid]),
                ("sAMAccountName", &[b"alee"]),
                ("userAccountControl", &[b"514"]),
                ("mail", &[b"a@x.org", b"A@X.org", b"b@x.org"]),
            ]),
            &a,
            "dc=corp",
        )
        .unwrap()
        .unwrap();
        assert!(!u.active);
        assert_eq!(u.key, "01010101-0101-0101-0101-010101010101");
        assert_eq!(u.emails, vec!["a@x.org", "b@x.org"]);
        assert_eq!(
            u.locator.as_deref(),
            Some("cn=ann lee,ou=people,dc=corp,dc=example")
        );
        let e = entry(&[
            ("objectGUID", &[guid]),
            ("sAMAccountName", &[b"alee"]),
            ("userAccountControl", &[b"512"]),
        ]);
        assert!(user(&e, &a, "dc=corp").unwrap().unwrap().active);
        let e = entry(&[
            ("objectGUID", &[guid]),
            ("sAMAccountName", &[b"alee"]),
            ("userAccountControl", &[b"lots"]),
        ]);
        assert!(user(&e, &a, "dc=corp").unwrap_err().contains("\"lots\""));
        // No userAccountControl: unknown, not active.
        let e = entry(&[("objectGUID", &[guid]), ("sAMAccountName", &[b"alee"])]);
        let why = user(&e, &a, "dc=corp").unwrap_err();
        assert!(why.contains("no userAccountControl"), "{why}");
        let e = entry(&[("objectGUID", &[guid])]);
        assert_eq!(user(&e, &a, "dc=corp").unwrap(), None);
        let e = entry(&[("sAMAccountName", &[b"alee"])]);
        assert!(user(&e, &a, "dc=corp").unwrap_err().contains("objectGUID"));
    }

    #[test]
    fn ranges() {
        assert_eq!(
            parse_range("member;range=0-1499"),
            Some((
                "member",
                Range {
                    start: 0,
                    end: Some(1499)
                }
            ))
        );
        assert_eq!(
            parse_range("member;range=3000-*"),
            Some((
                "member",
                Range {
                    start: 3000,
                    end: None
                }
            ))
        );
        assert_eq!(parse_range("member"), None);
        assert_eq!(parse_range("member;range=x-1"), None);
    }

    #[test]
    fn group_members_of_every_kind() {
        let a = super::super::config::LdapConfig::from_toml(
            toml::from_str("url = \"ldap://h\"\nbase_dns = [\"dc=x\"]").unwrap(),
        )
        .unwrap()
        .attributes;
        let (g, pending) = group(
            &entry(&[
                ("entryUUID", &[b"AAAAAAAA-0000-0000-0000-000000000001"]),
                ("cn", &[b"Admins"]),
                ("member", &[b"UID=a, OU=p,DC=x"]),
                ("uniqueMember", &[b"uid=b,ou=p,dc=x#'0101'B"]),
                ("memberUid", &[b"c"]),
                ("member;range=0-1", &[b"uid=d,dc=x", b"uid=e,dc=x"]),
            ]),
            &a,
            "dc=x",
        )
        .unwrap();
        assert_eq!(g.key, "aaaaaaaa-0000-0000-0000-000000000001");
        assert_eq!(g.display_name, "Admins");
        assert_eq!(
            g.members,
            Members::Full(vec![
                MemberRef::Locator("uid=a,ou=p,dc=x".into()),
                MemberRef::Locator("uid=b,ou=p,dc=x".into()),
                MemberRef::UserName("c".into()),
                MemberRef::Locator("uid=d,dc=x".into()),
                MemberRef::Locator("uid=e,dc=x".into()),
            ])
        );
        assert_eq!(
            pending,
            vec![PendingRange {
                attr: "member".into(),
                next_start: 2
            }]
        );
    }
}
