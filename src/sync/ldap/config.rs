//! The `kind = "ldap"` part of a `[[source]]` table, with the OpenLDAP/389
//! and Active Directory presets filled in and every value checked before
//! any connection is attempted.

use std::time::Duration;

use serde::Deserialize;

use crate::sync::config::positive_duration;
use crate::sync::SecretRef;

/// Default LDAP page size (RFC 2696); AD's `MaxPageSize` is 1,000, so 500 is
/// accepted everywhere.
pub const DEFAULT_PAGE_SIZE: u32 = 500;
/// Default bound on connecting and on waiting for any one server response.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// An LDAP source, as configured:
///
/// ```toml
/// [[source]]
/// name = "corp-ldap"
/// tenant = "acme"
/// kind = "ldap"
/// url = "ldap://127.0.0.1:389"        # or ldaps://host:636, or ldap:// with start_tls = true
/// start_tls = false
/// bind_dn = "cn=sync,dc=example,dc=org"  # omit both bind keys for an anonymous bind
/// bind_password = { env = "LDAP_PASSWORD" } # or { file = "/run/secrets/ldap" }
/// preset = "openldap"                  # or "active_directory": fills in the defaults below
/// base_dns = ["ou=people,dc=example,dc=org", "ou=groups,dc=example,dc=org"]
/// user_filter = "(objectClass=inetOrgPerson)"
/// group_filter = "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=posixGroup))"
/// page_size = 500
/// timeout = "30s"                      # connect, and each wait for a server response
/// incremental = "auto"                 # auto | syncrepl | usn | modify_timestamp | none
/// [source.attributes]                  # SCIM attribute = LDAP attribute; any subset,
///                                      # the preset gives the rest
/// userName = "uid"                     # AD: sAMAccountName (or userPrincipalName)
/// externalId = "entryUUID"             # the stable id; AD: objectGUID
/// displayName = "cn"                   # AD: displayName
/// givenName = "givenName"
/// familyName = "sn"
/// emails = "mail"
/// active = ""                          # AD: userAccountControl; "" = always active; an entry without the configured attribute is left as it was
/// groupName = "cn"                     # the group's displayName
/// ```
///
/// Every base DN is searched for users *and* groups. The stable id, not the
/// DN, is the identity, so renames and moves are updates.
#[derive(Debug, Clone)]
pub struct LdapConfig {
    pub url: url::Url,
    pub start_tls: bool,
    pub bind_dn: Option<String>,
    pub bind_password: Option<SecretRef>,
    pub preset: Preset,
    pub base_dns: Vec<String>,
    pub user_filter: String,
    pub group_filter: String,
    pub page_size: u32,
    pub timeout: Duration,
    pub incremental: Incremental,
    pub attributes: Attributes,
}

/// Which directory dialect the defaults come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// OpenLDAP and 389 Directory Server: `entryUUID`, `inetOrgPerson`,
    /// `groupOfNames`/`groupOfUniqueNames`/`posixGroup`.
    #[default]
    Openldap,
    /// Active Directory (and Samba AD): binary `objectGUID`,
    /// `sAMAccountName`, `userAccountControl`, ranged `member`.
    ActiveDirectory,
}

/// How changes are read after the first full sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Incremental {
    /// syncrepl when the rootDSE offers it and the stable id is
    /// `entryUUID`, else `uSNChanged` when the rootDSE has
    /// `highestCommittedUSN`, else `modifyTimestamp`.
    #[default]
    Auto,
    /// RFC 4533 content sync, refreshOnly; reports deletions.
    Syncrepl,
    /// AD `uSNChanged` polling; deletions only on a full reconcile.
    Usn,
    /// `modifyTimestamp` polling; deletions only on a full reconcile.
    ModifyTimestamp,
    /// Every run is a full read.
    None,
}

/// Which LDAP attribute feeds which SCIM attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    pub user_name: String,
    /// The stable id: `entryUUID` or `objectGUID` (decoded from its
    /// mixed-endian binary form); also the SCIM `externalId`.
    pub external_id: String,
    pub display_name: String,
    pub given_name: String,
    pub family_name: String,
    pub email: String,
    /// `userAccountControl` (bit 0x2 ACCOUNTDISABLE means inactive), another
    /// attribute holding TRUE/FALSE, or empty for "always active".
    pub active: String,
    pub group_name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    url: String,
    #[serde(default)]
    start_tls: bool,
    bind_dn: Option<String>,
    /// Kept raw so an inline string (a password!) is refused without
    /// serde quoting it in the error.
    bind_password: Option<toml::Value>,
    #[serde(default)]
    preset: Preset,
    base_dns: Vec<String>,
    user_filter: Option<String>,
    group_filter: Option<String>,
    page_size: Option<u32>,
    timeout: Option<String>,
    #[serde(default)]
    incremental: Incremental,
    #[serde(default)]
    attributes: RawAttributes,
}

/// Keys are the SCIM attribute names, as in the Entra source's
/// `[source.attributes]`, so one vocabulary maps both kinds of directory.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawAttributes {
    user_name: Option<String>,
    external_id: Option<String>,
    display_name: Option<String>,
    given_name: Option<String>,
    family_name: Option<String>,
    #[serde(rename = "emails")]
    email: Option<String>,
    active: Option<String>,
    group_name: Option<String>,
}

impl Preset {
    fn user_filter(self) -> &'static str {
        match self {
            Preset::Openldap => "(objectClass=inetOrgPerson)",
            Preset::ActiveDirectory => "(&(objectCategory=person)(objectClass=user))",
        }
    }

    fn group_filter(self) -> &'static str {
        match self {
            Preset::Openldap => {
                "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=posixGroup))"
            }
            Preset::ActiveDirectory => "(objectClass=group)",
        }
    }

    fn attributes(self) -> Attributes {
        let s = |v: &str| v.to_string();
        match self {
            Preset::Openldap => Attributes {
                user_name: s("uid"),
                external_id: s("entryUUID"),
                display_name: s("cn"),
                given_name: s("givenName"),
                family_name: s("sn"),
                email: s("mail"),
                active: String::new(),
                group_name: s("cn"),
            },
            Preset::ActiveDirectory => Attributes {
                user_name: s("sAMAccountName"),
                external_id: s("objectGUID"),
                display_name: s("displayName"),
                given_name: s("givenName"),
                family_name: s("sn"),
                email: s("mail"),
                active: s("userAccountControl"),
                group_name: s("cn"),
            },
        }
    }
}

impl LdapConfig {
    /// Parses and validates the kind-specific keys; the message names the
    /// offending key and value (never a password: passwords are only ever
    /// referenced, never inline).
    pub fn from_toml(value: toml::Value) -> Result<Self, String> {
        let raw = Raw::deserialize(value).map_err(|e| e.message().to_string())?;
        let url = parse_url(&raw.url, raw.start_tls)?;
        if raw.bind_password.is_some() && raw.bind_dn.is_none() {
            return Err("'bind_password' is given without 'bind_dn'".into());
        }
        if raw.bind_dn.is_some() && raw.bind_password.is_none() {
            return Err("'bind_dn' is given without 'bind_password' (use { env = \"VAR\" } or { file = \"/path\" })".into());
        }
        let bind_password = raw
            .bind_password
            .map(|v| SecretRef::from_toml("bind_password", v))
            .transpose()?;
        if let Some(dn) = &raw.bind_dn {
            if dn.trim().is_empty() {
                return Err("'bind_dn' is empty".into());
            }
        }
        if raw.base_dns.is_empty() {
            return Err("'base_dns' must name at least one base DN".into());
        }
        let mut base_dns = Vec::with_capacity(raw.base_dns.len());
        for b in &raw.base_dns {
            let n = super::dn::normalize(b);
            if n.is_empty() || !n.contains('=') {
                return Err(format!("base DN \"{b}\" is not a DN"));
            }
            if base_dns.contains(&n) {
                return Err(format!("base DN \"{b}\" is listed twice"));
            }
            // Nested bases would report the same entries twice, under two
            // bases, and make "an empty base" ambiguous.
            if let Some(o) = base_dns
                .iter()
                .find(|o: &&String| super::dn::is_under(&n, o) || super::dn::is_under(o, &n))
            {
                return Err(format!(
                    "base DN \"{b}\" overlaps base DN \"{o}\"; list disjoint subtrees"
                ));
            }
            base_dns.push(n);
        }
        let user_filter = raw
            .user_filter
            .unwrap_or_else(|| raw.preset.user_filter().to_string());
        let group_filter = raw
            .group_filter
            .unwrap_or_else(|| raw.preset.group_filter().to_string());
        for (key, f) in [
            ("user_filter", &user_filter),
            ("group_filter", &group_filter),
        ] {
            check_filter(f).map_err(|e| format!("'{key}': {e}"))?;
        }
        let page_size = raw.page_size.unwrap_or(DEFAULT_PAGE_SIZE);
        if !(1..=100_000).contains(&page_size) {
            return Err(format!("'page_size' = {page_size}: must be 1 to 100000"));
        }
        let timeout = match raw.timeout {
            None => DEFAULT_TIMEOUT,
            Some(s) => positive_duration("timeout", &s)?,
        };
        let mut attributes = raw.preset.attributes();
        let a = raw.attributes;
        for (slot, value, key) in [
            (&mut attributes.user_name, a.user_name, "userName"),
            (&mut attributes.external_id, a.external_id, "externalId"),
            (&mut attributes.display_name, a.display_name, "displayName"),
            (&mut attributes.given_name, a.given_name, "givenName"),
            (&mut attributes.family_name, a.family_name, "familyName"),
            (&mut attributes.email, a.email, "emails"),
            (&mut attributes.active, a.active, "active"),
            (&mut attributes.group_name, a.group_name, "groupName"),
        ] {
            if let Some(v) = value {
                let optional = matches!(key, "active" | "givenName" | "familyName" | "emails");
                if !(valid_attribute(&v) || optional && v.is_empty()) {
                    return Err(format!(
                        "attributes.{key} = \"{v}\" is not an LDAP attribute name"
                    ));
                }
                *slot = v;
            }
        }
        if raw.incremental == Incremental::Syncrepl
            && !attributes.external_id.eq_ignore_ascii_case("entryUUID")
        {
            return Err(format!(
                "incremental = \"syncrepl\" needs attributes.externalId = \"entryUUID\" (syncrepl names entries by entryUUID), not \"{}\"",
                attributes.external_id
            ));
        }
        Ok(LdapConfig {
            url,
            start_tls: raw.start_tls,
            bind_dn: raw.bind_dn,
            bind_password,
            preset: raw.preset,
            base_dns,
            user_filter,
            group_filter,
            page_size,
            timeout,
            incremental: raw.incremental,
            attributes,
        })
    }
}

fn parse_url(s: &str, start_tls: bool) -> Result<url::Url, String> {
    // Credentials belong in bind_dn/bind_password: a URL is printed in
    // errors and logs, so one holding a password is refused unquoted.
    if s.contains('@') {
        return Err(
            "'url' must not hold credentials (user@ or user:password@); use bind_dn and bind_password"
                .into(),
        );
    }
    let url = url::Url::parse(s).map_err(|e| format!("'url' = \"{s}\": {e}"))?;
    match url.scheme() {
        "ldap" => {}
        "ldaps" if start_tls => {
            return Err(format!(
                "'url' = \"{s}\": start_tls applies to ldap:// URLs; ldaps:// is already TLS"
            ))
        }
        "ldaps" => {}
        other => {
            return Err(format!(
                "'url' = \"{s}\": scheme '{other}' is not ldap:// or ldaps://"
            ))
        }
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("'url' = \"{s}\": no host"));
    }
    if url.path() != "" && url.path() != "/" || url.query().is_some() {
        return Err(format!(
            "'url' = \"{s}\": give the base DNs in 'base_dns', not in the URL"
        ));
    }
    Ok(url)
}

/// Checks a filter the way the client will encode it, so a typo is a
/// config error naming the filter rather than a failure at 3 a.m.
pub(crate) fn check_filter(f: &str) -> Result<(), String> {
    let trimmed = f.trim();
    if !trimmed.starts_with('(') || !trimmed.ends_with(')') {
        return Err(format!(
            "filter \"{f}\" must be parenthesised, e.g. (objectClass=person)"
        ));
    }
    ldap3::parse_filter(trimmed)
        .map(|_| ())
        .map_err(|_| format!("filter \"{f}\" is not a valid LDAP filter (RFC 4515)"))
}

fn valid_attribute(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() => chars.all(|c| c.is_ascii_alphanumeric() || c == '-'),
        Some(c) if c.is_ascii_digit() => s.chars().all(|c| c.is_ascii_digit() || c == '.'),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<LdapConfig, String> {
        LdapConfig::from_toml(toml::Value::Table(toml::from_str(s).unwrap()))
    }

    const BASE: &str = r#"
        url = "ldap://127.0.0.1:3890"
        bind_dn = "cn=sync,dc=example,dc=org"
        bind_password = { env = "LDAP_PW" }
        base_dns = ["ou=People, dc=Example,dc=org"]
    "#;

    #[test]
    fn a_url_with_credentials_is_refused_unquoted() {
        let err = parse(&BASE.replace(
            "ldap://127.0.0.1:3890",
            "ldap://cn=admin:hunter2@127.0.0.1:3890",
        ))
        .unwrap_err();
        assert!(err.contains("must not hold credentials"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn openldap_defaults() {
        let c = parse(BASE).unwrap();
        assert_eq!(c.base_dns, vec!["ou=people,dc=example,dc=org"]);
        assert_eq!(c.attributes.external_id, "entryUUID");
        assert_eq!(c.user_filter, "(objectClass=inetOrgPerson)");
        assert_eq!(c.page_size, DEFAULT_PAGE_SIZE);
        assert_eq!(c.incremental, Incremental::Auto);
    }

    #[test]
    fn active_directory_preset_and_override() {
        let c = parse(&format!(
            "{BASE}\npreset = \"active_directory\"\n[attributes]\nuserName = \"userPrincipalName\"\n"
        ))
        .unwrap();
        assert_eq!(c.attributes.external_id, "objectGUID");
        assert_eq!(c.attributes.user_name, "userPrincipalName");
        assert_eq!(c.attributes.active, "userAccountControl");
        assert_eq!(c.group_filter, "(objectClass=group)");
    }

    #[test]
    fn precise_errors() {
        let cases = [
            (
                BASE.replace("ldap://127.0.0.1:3890", "http://x"),
                "scheme 'http'",
            ),
            (
                BASE.replace("ldap://127.0.0.1:3890", "ldap//x"),
                "'url' = \"ldap//x\"",
            ),
            (
                format!("{BASE}\nuser_filter = \"(uid=\""),
                "filter \"(uid=\"",
            ),
            (
                format!("{BASE}\ngroup_filter = \"cn=x\""),
                "'group_filter': filter \"cn=x\"",
            ),
            (format!("{BASE}\nbogus = 1"), "unknown field `bogus`"),
            (
                format!("{BASE}\n[attributes]\nfoo = \"x\""),
                "unknown field `foo`",
            ),
            (format!("{BASE}\npage_size = 0"), "'page_size' = 0"),
            (
                format!("{BASE}\ntimeout = \"soon\""),
                "'timeout' = \"soon\"",
            ),
            (
                format!("{BASE}\nincremental = \"sometimes\""),
                "unknown variant `sometimes`",
            ),
            (
                BASE.replace("bind_password = { env = \"LDAP_PW\" }", ""),
                "without 'bind_password'",
            ),
            (
                BASE.replace("{ env = \"LDAP_PW\" }", "\"hunter2\""),
                "bind_password",
            ),
            (
                format!("{BASE}\nincremental = \"syncrepl\"\n[attributes]\nexternalId = \"uid\""),
                "needs attributes.externalId = \"entryUUID\"",
            ),
            (
                format!("{BASE}\n[attributes]\nuserName = \"u id\""),
                "attributes.userName = \"u id\" is not an LDAP attribute name",
            ),
            (
                format!("{BASE}\nincremental = \"syncrepl\"\n[attributes]\nexternalId = \"uid\""),
                "needs attributes.externalId = \"entryUUID\"",
            ),
            (
                BASE.replace("ldap://127.0.0.1:3890", "ldap://h/dc=x"),
                "not in the URL",
            ),
        ];
        for (text, want) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(want), "{err:?} should mention {want:?}");
            assert!(!err.contains("hunter2"), "{err}");
        }
        let err =
            parse(&format!("{BASE}\nstart_tls = true").replace("ldap://", "ldaps://")).unwrap_err();
        assert!(err.contains("start_tls"), "{err}");
    }

    #[test]
    fn the_example_file_parses() {
        let text = include_str!("../../../examples/sync.toml");
        let doc: toml::Table = toml::from_str(text).unwrap();
        let tables: Vec<toml::Table> = doc["source"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_table().unwrap().clone())
            .collect();
        let sources = crate::sync::parse_sources(&tables).unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(sources.len(), 2);
    }
}
