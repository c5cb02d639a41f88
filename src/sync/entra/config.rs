//! The `kind = "entra"` keys of a `[[source]]` table.
//!
//! ```toml
//! [[source]]
//! name = "entra"
//! tenant = "acme"
//! kind = "entra"
//! directory_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
//! client_id = "00001111-aaaa-2222-bbbb-3333cccc4444"
//! client_secret = { env = "ENTRA_CLIENT_SECRET" }
//! groups = "security"              # "all" (default), "security", or ["id or name", ...]
//! # authority_url = "https://login.microsoftonline.com"
//! # graph_url = "https://graph.microsoft.com/v1.0"
//! # max_retries = 5
//! # retry_base = "1s"
//! # max_retry_wait = "2m"          # one request's retries
//! # max_run_wait = "10m"           # all retries of one run
//! # request_timeout = "60s"
//! [source.attributes]               # SCIM attribute = Graph user property
//! userName = "userPrincipalName"
//! active = "accountEnabled"
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::sync::config::positive_duration;
use crate::sync::SecretRef;

/// Where Microsoft's public cloud issues tokens.
pub const DEFAULT_AUTHORITY: &str = "https://login.microsoftonline.com";
/// Microsoft Graph v1.0 in the public cloud.
pub const DEFAULT_GRAPH: &str = "https://graph.microsoft.com/v1.0";
/// Retries of one Graph request on 429/503/504 or a connection failure.
pub const DEFAULT_MAX_RETRIES: u32 = 5;
/// First backoff step when the server gives no `Retry-After`.
pub const DEFAULT_RETRY_BASE: Duration = Duration::from_secs(1);
/// Cap on the total time one request may spend waiting to be retried, so a
/// throttled run fails in bounded time instead of hanging the schedule.
pub const DEFAULT_MAX_RETRY_WAIT: Duration = Duration::from_secs(120);
/// All the retry waits of one run: a run throttled page after page ends
/// after this, instead of after pages × `max_retry_wait`.
pub const DEFAULT_MAX_RUN_WAIT: Duration = Duration::from_secs(600);
/// Cap on one HTTP exchange.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Which groups a source syncs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupSelection {
    /// Every group in the directory.
    All,
    /// Groups with `securityEnabled = true` (security groups and
    /// mail-enabled security groups), the ones authorization is built on.
    Security,
    /// Exactly the groups whose id, or whose `displayName` (ignoring case),
    /// is listed. Nested groups are not followed: a delta read sees only the
    /// groups that changed, so the closure of a list could not be kept
    /// correct incrementally; list nested groups too, or use "all".
    Named(Vec<String>),
}

/// A user attribute rolebridge keeps, and the Graph user property it comes
/// from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeMap {
    pub user_name: String,
    pub external_id: Option<String>,
    pub display_name: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub emails: Option<String>,
    pub active: Option<String>,
}

impl Default for AttributeMap {
    fn default() -> Self {
        AttributeMap {
            user_name: "userPrincipalName".into(),
            external_id: Some("id".into()),
            display_name: Some("displayName".into()),
            given_name: Some("givenName".into()),
            family_name: Some("surname".into()),
            emails: Some("mail".into()),
            active: Some("accountEnabled".into()),
        }
    }
}

impl AttributeMap {
    /// The Graph properties to `$select` (always `id`), without repeats.
    pub fn select(&self) -> Vec<&str> {
        let mut out = vec!["id"];
        for p in [
            Some(&self.user_name),
            self.external_id.as_ref(),
            self.display_name.as_ref(),
            self.given_name.as_ref(),
            self.family_name.as_ref(),
            self.emails.as_ref(),
            self.active.as_ref(),
        ]
        .into_iter()
        .flatten()
        {
            if !out.contains(&p.as_str()) {
                out.push(p);
            }
        }
        out
    }
}

/// A validated Entra source configuration. It holds where the secret comes
/// from, never the secret.
#[derive(Debug, Clone, PartialEq)]
pub struct EntraConfig {
    /// The directory (tenant) id or a verified domain, as in the token URL.
    pub directory_id: String,
    pub client_id: String,
    pub client_secret: SecretRef,
    /// Without a trailing slash.
    pub authority_url: String,
    /// Without a trailing slash.
    pub graph_url: String,
    pub groups: GroupSelection,
    pub attributes: AttributeMap,
    pub max_retries: u32,
    pub retry_base: Duration,
    pub max_retry_wait: Duration,
    /// The waits of all retries of one run, token requests included.
    pub max_run_wait: Duration,
    pub request_timeout: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    directory_id: String,
    client_id: String,
    /// Kept raw so an inline secret is refused without serde quoting it.
    client_secret: toml::Value,
    authority_url: Option<String>,
    graph_url: Option<String>,
    groups: Option<RawGroups>,
    attributes: Option<BTreeMap<String, String>>,
    max_retries: Option<u32>,
    retry_base: Option<String>,
    max_retry_wait: Option<String>,
    max_run_wait: Option<String>,
    request_timeout: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawGroups {
    Mode(String),
    List(Vec<String>),
}

impl EntraConfig {
    /// Parses and validates the kind's keys; the message names the key.
    pub fn from_toml(value: toml::Value) -> Result<Self, String> {
        let raw = Raw::deserialize(value).map_err(|e| e.message().trim().to_string())?;
        let directory_id = raw.directory_id.trim().to_string();
        if directory_id.is_empty()
            || !directory_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'))
        {
            return Err(format!(
                "'directory_id' must be a directory (tenant) id or domain, not \"{}\"",
                raw.directory_id
            ));
        }
        let client_id = raw.client_id.trim().to_string();
        if client_id.is_empty() {
            return Err("'client_id' must not be empty".into());
        }
        let client_secret = SecretRef::from_toml("client_secret", raw.client_secret)?;
        let authority_url = base_url(
            "authority_url",
            raw.authority_url.as_deref().unwrap_or(DEFAULT_AUTHORITY),
        )?;
        let graph_url = base_url(
            "graph_url",
            raw.graph_url.as_deref().unwrap_or(DEFAULT_GRAPH),
        )?;
        let groups = match raw.groups {
            None => GroupSelection::All,
            Some(RawGroups::Mode(m)) => match m.as_str() {
                "all" => GroupSelection::All,
                "security" => GroupSelection::Security,
                other => {
                    return Err(format!(
                        "'groups' = \"{other}\": expected \"all\", \"security\" or a list of group ids or names"
                    ))
                }
            },
            Some(RawGroups::List(list)) => {
                if list.is_empty() {
                    return Err("'groups' must not be an empty list".into());
                }
                let mut out = Vec::with_capacity(list.len());
                for g in list {
                    let g = g.trim().to_string();
                    if g.is_empty() {
                        return Err("'groups' holds an empty group id or name".into());
                    }
                    out.push(g);
                }
                GroupSelection::Named(out)
            }
        };
        let attributes = attribute_map(raw.attributes.unwrap_or_default())?;
        let duration = |key: &str, v: Option<String>, default: Duration| match v {
            None => Ok(default),
            Some(s) => positive_duration(key, &s),
        };
        let max_retries = raw.max_retries.unwrap_or(DEFAULT_MAX_RETRIES);
        if max_retries > 20 {
            return Err(format!("'max_retries' = {max_retries}: at most 20"));
        }
        Ok(EntraConfig {
            directory_id,
            client_id,
            client_secret,
            authority_url,
            graph_url,
            groups,
            attributes,
            max_retries,
            retry_base: duration("retry_base", raw.retry_base, DEFAULT_RETRY_BASE)?,
            max_retry_wait: duration("max_retry_wait", raw.max_retry_wait, DEFAULT_MAX_RETRY_WAIT)?,
            max_run_wait: duration("max_run_wait", raw.max_run_wait, DEFAULT_MAX_RUN_WAIT)?,
            request_timeout: duration(
                "request_timeout",
                raw.request_timeout,
                DEFAULT_REQUEST_TIMEOUT,
            )?,
        })
    }

    /// The OAuth2 token endpoint of the directory.
    pub fn token_url(&self) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.authority_url, self.directory_id
        )
    }
}

/// An http(s) URL without query, fragment or credentials; returned without
/// its trailing slash so paths can be appended.
fn base_url(key: &str, s: &str) -> Result<String, String> {
    let url = url::Url::parse(s).map_err(|e| format!("'{key}' = \"{s}\": {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "'{key}' = \"{s}\": the scheme must be https (or http)"
        ));
    }
    if url.host_str().is_none() {
        return Err(format!("'{key}' = \"{s}\": no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "'{key}' = \"{s}\": must not hold a query or fragment"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("'{key}' = \"{s}\": must not hold credentials"));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// `[attributes]`: SCIM attribute → Graph user property, on top of the
/// defaults. An empty value drops an optional attribute.
fn attribute_map(entries: BTreeMap<String, String>) -> Result<AttributeMap, String> {
    let mut map = AttributeMap::default();
    for (scim, graph) in entries {
        let graph = graph.trim().to_string();
        let property = graph.starts_with(|c: char| c.is_ascii_alphabetic())
            && graph.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !graph.is_empty() && !property {
            return Err(format!(
                "attributes.{scim} = \"{graph}\": not a Graph property name"
            ));
        }
        let value = (!graph.is_empty()).then_some(graph);
        match scim.as_str() {
            "userName" => {
                map.user_name = value
                    .ok_or_else(|| "attributes.userName must name a Graph property".to_string())?
            }
            "externalId" => map.external_id = value,
            "displayName" => map.display_name = value,
            "givenName" => map.given_name = value,
            "familyName" => map.family_name = value,
            "emails" => map.emails = value,
            "active" => map.active = value,
            other => {
                return Err(format!(
                    "attributes.{other}: unknown attribute (expected userName, externalId, \
                     displayName, givenName, familyName, emails or active)"
                ))
            }
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<EntraConfig, String> {
        EntraConfig::from_toml(toml::Value::Table(toml::from_str(s).unwrap()))
    }

    const BASE: &str = r#"
        directory_id = "contoso.onmicrosoft.com"
        client_id = "abc"
        client_secret = { env = "X" }
    "#;

    #[test]
    fn an_inline_secret_is_refused_without_being_quoted() {
        let err =
            parse("directory_id = \"d\"\nclient_id = \"a\"\nclient_secret = \"hunter2-secret\"")
                .unwrap_err();
        assert!(err.contains("inline secrets are refused"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn defaults() {
        let c = parse(BASE).unwrap();
        assert_eq!(c.authority_url, DEFAULT_AUTHORITY);
        assert_eq!(c.graph_url, DEFAULT_GRAPH);
        assert_eq!(c.groups, GroupSelection::All);
        assert_eq!(c.attributes, AttributeMap::default());
        assert_eq!(
            c.token_url(),
            "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
        );
        assert_eq!(
            c.attributes.select(),
            [
                "id",
                "userPrincipalName",
                "displayName",
                "givenName",
                "surname",
                "mail",
                "accountEnabled"
            ]
        );
    }

    #[test]
    fn selection_and_mapping() {
        let c = parse(&format!(
            "{BASE}groups = [\"Admins\", \" 1234 \"]\ngraph_url = \"http://127.0.0.1:9/v1.0/\"\n\
             [attributes]\nuserName = \"mail\"\nexternalId = \"employeeId\"\ngivenName = \"\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.groups,
            GroupSelection::Named(vec!["Admins".into(), "1234".into()])
        );
        assert_eq!(c.graph_url, "http://127.0.0.1:9/v1.0");
        assert_eq!(c.attributes.user_name, "mail");
        assert_eq!(c.attributes.external_id.as_deref(), Some("employeeId"));
        assert_eq!(c.attributes.given_name, None);
        assert_eq!(
            parse(&format!("{BASE}groups = \"security\""))
                .unwrap()
                .groups,
            GroupSelection::Security
        );
    }

    #[test]
    fn precise_errors() {
        for (extra, want) in [
            ("groups = \"some\"", "'groups' = \"some\""),
            ("groups = []", "empty list"),
            (
                "graph_url = \"ftp://x\"",
                "'graph_url' = \"ftp://x\": the scheme",
            ),
            (
                "authority_url = \"not a url\"",
                "'authority_url' = \"not a url\"",
            ),
            ("graph_url = \"https://u:p@h/v1.0\"", "credentials"),
            (
                "[attributes]\nphone = \"mobilePhone\"",
                "attributes.phone: unknown",
            ),
            ("[attributes]\nuserName = \"a b\"", "not a Graph property"),
            ("[attributes]\nuserName = \"\"", "userName must name"),
            ("retry_base = \"soon\"", "'retry_base' = \"soon\""),
            ("max_retries = 99", "at most 20"),
            ("colour = 1", "unknown field `colour`"),
        ] {
            let err = parse(&format!("{BASE}{extra}")).unwrap_err();
            assert!(err.contains(want), "{extra}: {err}");
        }
        let err = parse("client_id = \"a\"\nclient_secret = { env = \"X\" }").unwrap_err();
        assert!(err.contains("directory_id"), "{err}");
        let err =
            parse("directory_id = \"a/b\"\nclient_id = \"a\"\nclient_secret = { env = \"X\" }")
                .unwrap_err();
        assert!(err.contains("'directory_id'"), "{err}");
        let err = parse(
            "directory_id = \"d\"\nclient_id = \"a\"\nclient_secret = { env = \"X\", file = \"/f\" }",
        )
        .unwrap_err();
        assert!(err.contains("exactly one"), "{err}");
    }
}
