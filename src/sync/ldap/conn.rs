//! One connection to the directory: connect, StartTLS and bind, raw
//! search requests with every entry handed over as it arrives, the rootDSE,
//! and the result codes in words.

use super::*;

/// An open, bound connection.
pub(super) struct Conn {
    pub(super) ldap: Ldap,
    pub(super) url: String,
    pub(super) timeout: Duration,
    pub(super) driver: tokio::task::JoinHandle<()>,
}

/// What the rootDSE says about incremental reads.
#[derive(Debug, Default)]
pub(super) struct RootDse {
    pub(super) syncrepl: bool,
    pub(super) highest_usn: Option<u64>,
    /// The suffixes the server holds; a base's `contextCSN` is on the one
    /// that contains it.
    pub(super) naming_contexts: Vec<String>,
    /// AD: the DN of the DC's NTDS settings, which carry its invocationId.
    pub(super) ds_service_name: Option<String>,
    /// AD: the domain naming context, whose `CN=Deleted Objects` holds the
    /// tombstones of deleted accounts.
    pub(super) default_naming_context: Option<String>,
}

/// One item of a search response.
pub(super) enum Item {
    Entry(StructureTag, Vec<Control>),
    Intermediate(StructureTag),
}

/// Result codes by name, for error messages.
pub(super) fn rc_name(rc: u32) -> &'static str {
    match rc {
        1 => "operationsError",
        2 => "protocolError",
        3 => "timeLimitExceeded",
        4 => "sizeLimitExceeded",
        7 => "authMethodNotSupported",
        8 => "strongerAuthRequired",
        10 => "referral",
        11 => "adminLimitExceeded",
        12 => "unavailableCriticalExtension",
        13 => "confidentialityRequired",
        32 => "noSuchObject",
        34 => "invalidDNSyntax",
        48 => "inappropriateAuthentication",
        49 => "invalidCredentials",
        50 => "insufficientAccessRights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwillingToPerform",
        80 => "other",
        4096 => "e-syncRefreshRequired",
        _ => "error",
    }
}

pub(super) fn describe(res: &LdapResult) -> String {
    let mut s = format!("{} ({})", rc_name(res.rc), res.rc);
    if !res.text.is_empty() {
        s.push_str(": ");
        s.push_str(res.text.trim());
    }
    s
}

impl Conn {
    pub(super) async fn open(config: &LdapConfig) -> Result<Conn, LdapError> {
        let url = config.url.to_string();
        let password: Option<Secret> = match &config.bind_password {
            Some(r) => Some(r.resolve().map_err(LdapError::Secret)?),
            None => None,
        };
        let settings = LdapConnSettings::new()
            .set_conn_timeout(config.timeout)
            .set_starttls(config.start_tls);
        let connect = LdapConnAsync::from_url_with_settings(settings, &config.url);
        let (conn, ldap) = match tokio::time::timeout(config.timeout, connect).await {
            Err(_) => {
                return Err(LdapError::Timeout {
                    url,
                    operation: "connect".into(),
                    timeout: config.timeout,
                })
            }
            Ok(Err(ldap3::LdapError::Timeout { .. })) => {
                return Err(LdapError::Timeout {
                    url,
                    operation: "connect".into(),
                    timeout: config.timeout,
                })
            }
            Ok(Err(e)) => {
                return Err(LdapError::Connect {
                    url,
                    message: e.to_string(),
                })
            }
            Ok(Ok(pair)) => pair,
        };
        let log_url = url.clone();
        let driver = tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(url = %log_url, "LDAP connection ended: {e}");
            }
        });
        let mut c = Conn {
            ldap,
            url,
            timeout: config.timeout,
            driver,
        };
        if let (Some(dn), Some(pw)) = (&config.bind_dn, &password) {
            let timeout = c.timeout;
            let res = c
                .ldap
                .with_timeout(timeout)
                .simple_bind(dn, pw.expose())
                .await
                .map_err(|e| c.map_err(e, "bind"))?;
            if res.rc != 0 {
                let message = match res.rc {
                    49 => format!("{} — wrong bind DN or password", describe(&res)),
                    _ => describe(&res),
                };
                return Err(LdapError::Bind {
                    url: c.url.clone(),
                    dn: dn.clone(),
                    message,
                });
            }
        }
        Ok(c)
    }

    pub(super) fn map_err(&self, e: ldap3::LdapError, operation: &str) -> LdapError {
        match e {
            ldap3::LdapError::Timeout { .. } => LdapError::Timeout {
                url: self.url.clone(),
                operation: operation.to_string(),
                timeout: self.timeout,
            },
            ldap3::LdapError::EndOfStream
            | ldap3::LdapError::Io { .. }
            | ldap3::LdapError::OpSend { .. }
            | ldap3::LdapError::ResultRecv { .. }
            | ldap3::LdapError::IdScrubSend { .. } => LdapError::ConnectionLost {
                url: self.url.clone(),
                operation: operation.to_string(),
                message: e.to_string(),
            },
            other => LdapError::Protocol {
                url: self.url.clone(),
                operation: operation.to_string(),
                message: other.to_string(),
            },
        }
    }

    pub(super) async fn close(mut self) {
        let _ = tokio::time::timeout(self.timeout, self.ldap.unbind()).await;
        self.driver.abort();
    }

    /// Runs one search request, handing each entry and intermediate message
    /// to `f` as it arrives; returns the final result (not yet checked).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn request(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[String],
        controls: Vec<RawControl>,
        operation: &str,
        mut f: impl FnMut(Item) -> Result<(), LdapError> + Send,
    ) -> Result<LdapResult, LdapError> {
        let timeout = self.timeout;
        let search_err = |message: String| LdapError::Search {
            base: base.to_string(),
            filter: filter.to_string(),
            message,
        };
        let started = self
            .ldap
            .with_controls(controls)
            .with_timeout(timeout)
            .streaming_search(base, scope, filter, attrs.to_vec())
            .await;
        let mut stream = match started {
            Ok(s) => s,
            Err(ldap3::LdapError::FilterParsing) => {
                return Err(search_err("invalid filter (RFC 4515)".into()))
            }
            Err(e) => return Err(self.map_err(e, operation)),
        };
        let mut items = 0u64;
        loop {
            let next = match stream.next().await {
                Ok(n) => n,
                Err(e) => {
                    // Tell the server to stop; the connection is dropped
                    // right after anyway.
                    let _ = stream.finish().await;
                    return Err(self.map_err(e, operation));
                }
            };
            let Some(entry) = next else { break };
            items += 1;
            if items > MAX_ITEMS_PER_REQUEST {
                return Err(search_err(format!(
                    "more than {MAX_ITEMS_PER_REQUEST} results in one request"
                )));
            }
            match entry.0.id {
                4 => f(Item::Entry(entry.0, entry.1))?,
                25 => f(Item::Intermediate(entry.0))?,
                // Continuation references (AD's other partitions) are not
                // followed: the configured bases define the scope.
                _ => {}
            }
        }
        Ok(stream.finish().await)
    }

    /// A search whose entries are decoded as they arrive and handed to `f`
    /// (other messages are skipped); returns the final result, not yet
    /// checked. An entry that does not decode fails the search, naming
    /// `operation`.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn entries(
        &mut self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[String],
        controls: Vec<RawControl>,
        operation: &str,
        mut f: impl FnMut(ber::RawEntry) -> Result<(), LdapError> + Send,
    ) -> Result<LdapResult, LdapError> {
        let url = self.url.clone();
        self.request(base, scope, filter, attrs, controls, operation, |item| {
            let Item::Entry(tag, _) = item else {
                return Ok(());
            };
            let e = ber::entry(tag).map_err(|message| LdapError::Protocol {
                url: url.clone(),
                operation: operation.to_string(),
                message,
            })?;
            f(e)
        })
        .await
    }

    pub(super) async fn root_dse(&mut self) -> Result<RootDse, LdapError> {
        let mut root = RootDse::default();
        let attrs = [
            "supportedControl".to_string(),
            "highestCommittedUSN".to_string(),
            "namingContexts".to_string(),
            "dsServiceName".to_string(),
            "defaultNamingContext".to_string(),
        ];
        let res = self
            .entries(
                "",
                Scope::Base,
                "(objectClass=*)",
                &attrs,
                vec![],
                "rootDSE read",
                |e| {
                    root.syncrepl = e
                        .values("supportedControl")
                        .iter()
                        .any(|v| v.as_slice() == SYNC_REQUEST_OID.as_bytes());
                    root.highest_usn = e
                        .values("highestCommittedUSN")
                        .first()
                        .and_then(|v| std::str::from_utf8(v).ok())
                        .and_then(|s| s.trim().parse().ok());
                    root.naming_contexts = e
                        .values("namingContexts")
                        .iter()
                        .filter_map(|v| String::from_utf8(v.clone()).ok())
                        .collect();
                    root.ds_service_name = e
                        .values("dsServiceName")
                        .first()
                        .and_then(|v| String::from_utf8(v.clone()).ok());
                    root.default_naming_context = e
                        .values("defaultNamingContext")
                        .first()
                        .and_then(|v| String::from_utf8(v.clone()).ok());
                    Ok(())
                },
            )
            .await?;
        // A rootDSE the bind DN may not read just means "no incremental
        // support advertised".
        if res.rc != 0 {
            tracing::debug!(url = %self.url, "rootDSE unreadable: {}", describe(&res));
        }
        Ok(root)
    }

    /// The values of one attribute of one entry (a base search); an entry
    /// or attribute the bind DN cannot see gives no values.
    pub(super) async fn base_values(
        &mut self,
        dn: &str,
        attr: &str,
    ) -> Result<Vec<Vec<u8>>, LdapError> {
        let operation = format!("read of {attr} on '{dn}'");
        let mut values = Vec::new();
        let res = self
            .entries(
                dn,
                Scope::Base,
                "(objectClass=*)",
                &[attr.to_string()],
                vec![],
                &operation,
                |e| {
                    values = e.values(attr).to_vec();
                    Ok(())
                },
            )
            .await?;
        if res.rc != 0 {
            tracing::debug!(url = %self.url, dn, attr, "unreadable: {}", describe(&res));
        }
        Ok(values)
    }

    /// How many entries a base search of `dn` with `controls` returns: 0
    /// when the bind DN may not see it.
    pub(super) async fn base_search_count(
        &mut self,
        dn: &str,
        controls: Vec<RawControl>,
    ) -> Result<u64, LdapError> {
        let mut n = 0u64;
        let operation = format!("read of '{dn}'");
        self.request(
            dn,
            Scope::Base,
            "(objectClass=*)",
            &["1.1".to_string()],
            controls,
            &operation,
            |item| {
                if let Item::Entry(..) = item {
                    n += 1;
                }
                Ok(())
            },
        )
        .await?;
        Ok(n)
    }
}
