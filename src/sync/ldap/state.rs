//! Where a directory's change tracking stands, and whether a saved cursor is
//! still behind it.
//!
//! A crashed or restored server can move its change state backwards: slapd
//! killed with `-9` restarts with the `contextCSN` of its last checkpoint,
//! a restored AD DC gets a new invocationId and may reuse USNs. A cursor
//! from before then is *ahead* of the server, which then answers "nothing
//! changed" for entries it did change. So every incremental read first
//! compares the cursor with the server's state, and a cursor ahead of it
//! (or from another server) is expired: the runner reads everything with a
//! plain paged search instead.

/// The CSNs (`YYYYmmddHHMMSS.uuuuuuZ#count#sid#mod`) in a syncrepl cookie
/// (`rid=000,sid=001,csn=A;B`).
pub fn cookie_csns(cookie: &[u8]) -> Vec<String> {
    let Ok(text) = std::str::from_utf8(cookie) else {
        return Vec::new();
    };
    text.split(',')
        .filter_map(|part| part.trim().strip_prefix("csn="))
        .flat_map(|csns| csns.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

/// The server id of a CSN (its third `#` field), which orders CSNs: CSNs
/// of one server compare as text, those of two servers do not compare.
fn sid(csn: &str) -> Option<&str> {
    csn.split('#').nth(2)
}

/// Why a cookie holding `saved` is ahead of a server whose `contextCSN` is
/// `server`, or `None` when the server has everything the cookie has seen.
pub fn csn_rewound(saved: &[String], server: &[String]) -> Option<String> {
    for mine in saved {
        let Some(s) = sid(mine) else {
            return Some(format!("the saved cookie holds an unreadable CSN '{mine}'"));
        };
        match server.iter().find(|c| sid(c) == Some(s)) {
            None => {
                return Some(format!(
                    "the server has no contextCSN for server id {s} the saved cookie names"
                ))
            }
            Some(theirs) if theirs.as_str() < mine.as_str() => {
                return Some(format!(
                    "the server's contextCSN {theirs} is older than the saved cookie's {mine} \
                     (a crash or a restore moved it back)"
                ))
            }
            Some(_) => {}
        }
    }
    None
}

/// A cookie that resumes from the server's `contextCSN` as read before a
/// full paged read: whatever changes during the read has a newer CSN and is
/// read again next time. `None` when the server has no contextCSN yet.
pub fn cookie_at(server: &[String]) -> Option<Vec<u8>> {
    (!server.is_empty()).then(|| format!("rid=000,csn={}", server.join(";")).into_bytes())
}

/// Puts `csn` in place of the CSN of the same server id in `csns` (or
/// beside them when that server id has none).
pub fn advance(csns: &mut Vec<String>, csn: String) {
    match csns.iter_mut().find(|c| sid(c) == sid(&csn)) {
        Some(c) => *c = csn,
        None => csns.push(csn),
    }
}

/// Why a saved USN position no longer fits the server: a different
/// invocationId (another DC, or this one restored), or a
/// `highestCommittedUSN` below the saved one.
pub fn usn_rewound(
    saved_usn: u64,
    saved_invocation: Option<&str>,
    server_usn: u64,
    server_invocation: Option<&str>,
) -> Option<String> {
    if let Some(saved) = saved_invocation {
        match server_invocation {
            Some(now) if now.eq_ignore_ascii_case(saved) => {}
            Some(now) => {
                return Some(format!(
                    "the DC's invocationId is {now}, not the saved {saved} (another DC, or this one restored)"
                ))
            }
            None => {
                return Some(format!(
                    "the DC's invocationId is unreadable; the cursor was saved against {saved}"
                ))
            }
        }
    }
    (server_usn < saved_usn).then(|| {
        format!(
            "the DC's highestCommittedUSN {server_usn} is below the saved {saved_usn} (a restore moved it back)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "20261202054223.489417Z#000000#000#000000";
    const A_OLDER: &str = "20261202054218.089584Z#000000#000#000000";
    const B: &str = "20261202054223.489417Z#000000#001#000000";

    #[test]
    fn cookies_name_their_csns() {
        assert_eq!(cookie_csns(format!("rid=000,csn={A}").as_bytes()), [A]);
        assert_eq!(
            cookie_csns(format!("rid=000,sid=001,csn={A};{B}").as_bytes()),
            [A, B]
        );
        assert!(cookie_csns(b"rid=000").is_empty());
        assert!(cookie_csns(&[0xff, 0xfe]).is_empty());
        assert_eq!(
            cookie_csns(&cookie_at(&[A.to_string()]).unwrap()),
            [A],
            "a made cookie reads back"
        );
        assert!(cookie_at(&[]).is_none());
    }

    #[test]
    fn a_server_behind_the_cookie_is_rewound() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(csn_rewound(&s(&[A]), &s(&[A])), None);
        assert_eq!(csn_rewound(&s(&[A_OLDER]), &s(&[A])), None);
        let why = csn_rewound(&s(&[A]), &s(&[A_OLDER])).unwrap();
        assert!(why.contains("older than"), "{why}");
        // Another server id's CSN does not stand in for the missing one.
        let why = csn_rewound(&s(&[A, B]), &s(&[A])).unwrap();
        assert!(why.contains("server id 001"), "{why}");
        assert!(csn_rewound(&s(&["garbage"]), &s(&[A])).is_some());
    }

    #[test]
    fn advancing_replaces_the_same_server_ids_csn() {
        let mut csns = vec![A_OLDER.to_string(), B.to_string()];
        advance(&mut csns, A.to_string());
        assert_eq!(csns, [A, B]);
        let mut csns = vec![B.to_string()];
        advance(&mut csns, A.to_string());
        assert_eq!(csns, [B, A]);
    }

    #[test]
    fn usn_positions_are_pinned_to_the_dc() {
        assert_eq!(usn_rewound(10, Some("ab"), 12, Some("AB")), None);
        assert!(usn_rewound(10, Some("ab"), 12, Some("cd"))
            .unwrap()
            .contains("invocationId"));
        assert!(usn_rewound(10, Some("ab"), 12, None).is_some());
        assert!(usn_rewound(10, None, 9, None).unwrap().contains("below"));
        assert_eq!(usn_rewound(10, None, 10, Some("ab")), None);
    }
}
