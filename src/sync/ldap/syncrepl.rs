//! Content synchronisation (RFC 4533, refreshOnly) with a saved cookie,
//! for incremental reads of OpenLDAP: changed entries, and deletions from
//! the present phase or syncIdSet messages.

use super::*;

/// What one syncrepl search found out.
pub(super) struct SyncOutcome {
    pub(super) cookie: Option<Vec<u8>>,
    pub(super) complete: bool,
}

/// Keys some syncrepl search reported as no longer in its content, with
/// the kinds of the searches that said so.
pub(super) type Gone = std::collections::HashMap<String, (bool, bool)>;

pub(super) fn note_deleted(gone: &mut Gone, key: String, kind: Kind) {
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
pub(super) fn flush_deleted(gone: Gone, batch: &mut Batch) {
    for (key, (user, group)) in gone {
        if batch.users.contains_key(key.as_str())
            || batch.groups.contains_key(key.as_str())
            || batch.present.contains(key.as_str())
        {
            continue;
        }
        let kind = match (user, group) {
            (true, false) => Some(Kind::User),
            (false, true) => Some(Kind::Group),
            _ => None,
        };
        batch.push(Change::Deleted {
            key: key.into(),
            kind,
        });
    }
}

impl Conn {
    /// One RFC 4533 refreshOnly search. With a cookie the server sends what
    /// changed, plus either the deleted entries (a delete phase: the read
    /// is incomplete, unmentioned entries are unchanged) or every present
    /// entry (a present phase: the read is complete, unmentioned entries
    /// are gone) — §3.3, §3.4. Without a cookie it sends everything.
    pub(super) async fn sync_search(
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
                                batch.push(Change::Present { key: uuid.into() });
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
                                        batch.push(Change::Present { key: key.into() });
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
