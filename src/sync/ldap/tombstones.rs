//! Active Directory deletions, read from tombstones in `CN=Deleted Objects`.

use super::*;

impl Conn {
    /// AD: reports accounts deleted since `since_usn` whose last parent was
    /// under a configured base, from their tombstones in `CN=Deleted
    /// Objects` (read with the show-deleted control,
    /// 1.2.840.113556.1.4.417). The tombstone keeps `objectGUID`, so the
    /// deletion names the same key the account was synced under.
    pub(super) async fn ad_tombstones(
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
        let external_id = config.attributes.external_id.clone();
        let operation = format!("search of deleted objects in '{container}'");
        let mut gone: Vec<(String, Kind)> = Vec::new();
        let res = self
            .entries(
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
                |e| {
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
                key: key.into(),
                kind: Some(kind),
            });
        }
        Ok(())
    }
}
