//! Reads of where the server's change tracking stands (`contextCSN`, the
//! newest `entryCSN`, AD's invocationId), for [`super::state`] to judge a
//! saved cursor by.

use super::*;

/// The naming context holding `base`. The longest suffix wins, so a
/// subordinate database is not mistaken for its parent.
pub(super) fn naming_context(root: &RootDse, base: &str) -> Option<String> {
    let base = dn::normalize(base);
    root.naming_contexts
        .iter()
        .filter(|c| dn::is_under(&base, &dn::normalize(c)))
        .max_by_key(|c| c.len())
        .cloned()
}

impl Conn {
    /// The `contextCSN` values of `context` (a naming context).
    pub(super) async fn context_csn(&mut self, context: &str) -> Result<Vec<String>, LdapError> {
        Ok(self
            .base_values(context, "contextCSN")
            .await?
            .into_iter()
            .filter_map(|v| String::from_utf8(v).ok())
            .collect())
    }

    /// The `contextCSN` of every naming context holding one of `bases`,
    /// each read once (bases usually share one); a base outside every
    /// naming context has none.
    pub(super) async fn context_csns(
        &mut self,
        root: &RootDse,
        bases: &[String],
    ) -> Result<BTreeMap<String, Vec<String>>, LdapError> {
        let mut out = BTreeMap::new();
        for base in bases {
            if let Some(context) = naming_context(root, base) {
                if let std::collections::btree_map::Entry::Vacant(slot) = out.entry(context) {
                    let csns = self.context_csn(slot.key()).await?;
                    slot.insert(csns);
                }
            }
        }
        Ok(out)
    }

    /// The newest `entryCSN` in `context` that is newer than every CSN in
    /// `csns` (its `contextCSN`). A live server never has one for long (it
    /// moves contextCSN with every write); a restarted one whose contextCSN
    /// a crash moved back does.
    pub(super) async fn entry_csn_above(
        &mut self,
        context: &str,
        csns: &[String],
    ) -> Result<Option<String>, LdapError> {
        let Some(newest) = csns.iter().max() else {
            return Ok(None);
        };
        let newest = ldap3::ldap_escape(newest);
        let filter = format!("(&(entryCSN>={newest})(!(entryCSN={newest})))");
        let mut above: Option<String> = None;
        let res = self
            .entries(
                context,
                Scope::Subtree,
                &filter,
                &["entryCSN".to_string()],
                vec![],
                "entryCSN check",
                |e| {
                    for v in e.values("entryCSN") {
                        if let Ok(csn) = String::from_utf8(v.clone()) {
                            if above.as_ref().is_none_or(|a| *a < csn) {
                                above = Some(csn);
                            }
                        }
                    }
                    Ok(())
                },
            )
            .await?;
        if res.rc != 0 {
            return Err(LdapError::Search {
                base: context.to_string(),
                filter,
                message: describe(&res),
            });
        }
        Ok(above)
    }

    /// AD: the invocationId (hex) of the DC answering, or `None` for a
    /// server without `dsServiceName`.
    pub(super) async fn invocation_id(
        &mut self,
        root: &RootDse,
    ) -> Result<Option<String>, LdapError> {
        let Some(dn) = root.ds_service_name.clone() else {
            return Ok(None);
        };
        Ok(self
            .base_values(&dn, "invocationId")
            .await?
            .first()
            .map(hex::encode))
    }
}
