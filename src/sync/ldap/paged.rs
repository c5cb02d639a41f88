//! The paged search (RFC 2696) every full read and every USN or
//! modifyTimestamp poll is made of, AD's ranged `member` retrieval, and the
//! conversion of an entry into the batch.

use super::*;

/// Keeps the highest `modifyTimestamp` (GeneralizedTime in the fixed
/// `YYYYMMDDHHMMSSZ` form servers return, so text order is time order).
pub(super) fn note_newest(entry: &ber::RawEntry, newest: &mut Option<String>) {
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
pub(super) fn push_entry(
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
        batch.push(Change::Present { key: key.into() });
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

impl Conn {
    pub(super) fn attrs(config: &LdapConfig, kind: Kind, mode_attr: Option<&str>) -> Vec<String> {
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
    pub(super) async fn paged_search(
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
    pub(super) async fn fetch_range(
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
}
