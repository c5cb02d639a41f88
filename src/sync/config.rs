//! `[[source]]` tables: the keys every source shares, then the kind's own
//! keys, each rejected by name when unknown or malformed.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{entra, ldap};
use crate::domain::{Secret, TenantName};

/// How often a source runs when `schedule` is not given.
pub const DEFAULT_SCHEDULE: Duration = Duration::from_secs(15 * 60);
/// How often an incremental source is fully reconciled (deletions).
pub const DEFAULT_FULL_EVERY: Duration = Duration::from_secs(24 * 3600);
/// How long a vanished user stays deactivated before deletion.
pub const DEFAULT_DELETE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);
/// Guard defaults: hold a run deleting or deactivating more than 50 users or
/// more than 10% of the source's users.
pub const DEFAULT_GUARD_MAX_DELETES: u64 = 50;
pub const DEFAULT_GUARD_MAX_PERCENT: f64 = 10.0;

/// A configuration error, naming the source and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("[[source]] #{index}: missing key '{key}'")]
    Missing { index: usize, key: &'static str },
    #[error("source '{source_name}': {message}")]
    Invalid {
        source_name: String,
        message: String,
    },
    #[error("source '{0}' is declared twice")]
    Duplicate(String),
}

/// One `[[source]]`.
#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub name: String,
    pub tenant: TenantName,
    /// Time between runs under `serve`.
    pub schedule: Duration,
    /// Time between full reconciles of an incremental source.
    pub full_every: Duration,
    /// Grace period between deactivating a vanished user and deleting it.
    pub delete_after: Duration,
    pub guard: GuardConfig,
    pub kind: SourceKind,
}

/// The deletion guard's thresholds: a run whose deletions plus
/// deactivations exceed either is held.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    #[serde(default = "default_max_deletes")]
    pub max_deletes: u64,
    #[serde(default = "default_max_percent")]
    pub max_delete_percent: f64,
}

fn default_max_deletes() -> u64 {
    DEFAULT_GUARD_MAX_DELETES
}
fn default_max_percent() -> f64 {
    DEFAULT_GUARD_MAX_PERCENT
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            max_deletes: DEFAULT_GUARD_MAX_DELETES,
            max_delete_percent: DEFAULT_GUARD_MAX_PERCENT,
        }
    }
}

/// The kind-specific part.
#[derive(Debug, Clone)]
pub enum SourceKind {
    Ldap(Box<ldap::LdapConfig>),
    Entra(Box<entra::EntraConfig>),
}

impl SourceKind {
    pub fn name(&self) -> &'static str {
        match self {
            SourceKind::Ldap(_) => "ldap",
            SourceKind::Entra(_) => "entra",
        }
    }
}

/// Where a credential comes from: an environment variable or a file, never
/// the config file itself, so configs can be shared and logged.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    pub env: Option<String>,
    pub file: Option<PathBuf>,
}

impl SecretRef {
    /// Reads `key = { env = "VAR" }` or `key = { file = "/path" }`. Any
    /// other value, an inline secret above all, is refused without quoting
    /// it, so a secret pasted into the config never reaches an error line
    /// or a log.
    pub fn from_toml(key: &str, value: toml::Value) -> Result<SecretRef, String> {
        let refused = || {
            format!(
                "'{key}' must be {{ env = \"VAR\" }} or {{ file = \"/path\" }}; inline secrets are refused"
            )
        };
        let toml::Value::Table(table) = value else {
            return Err(refused());
        };
        if table.keys().any(|k| k != "env" && k != "file") || table.values().any(|v| !v.is_str()) {
            return Err(refused());
        }
        let get = |k: &str| table.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let secret = SecretRef {
            env: get("env"),
            file: get("file").map(PathBuf::from),
        };
        if secret.env.is_some() == secret.file.is_some() {
            return Err(format!("'{key}' needs exactly one of 'env' or 'file'"));
        }
        Ok(secret)
    }

    /// Reads the secret now (at each run, so a rotated file is picked up).
    /// Trailing newlines of a file are dropped.
    pub fn resolve(&self) -> Result<Secret, String> {
        match (&self.env, &self.file) {
            (Some(var), None) => std::env::var(var)
                .map(Secret::new)
                .map_err(|_| format!("environment variable '{var}' is not set")),
            (None, Some(path)) => std::fs::read_to_string(path)
                .map(|s| Secret::new(s.trim_end_matches(['\r', '\n'])))
                .map_err(|e| format!("cannot read secret file '{}': {e}", path.display())),
            _ => Err("give exactly one of 'env' or 'file'".to_string()),
        }
    }
}

/// Parses every `[[source]]` table; all errors are returned, not the first.
pub fn parse_sources(tables: &[toml::Table]) -> Result<Vec<SourceConfig>, Vec<ConfigError>> {
    let mut out: Vec<SourceConfig> = Vec::new();
    let mut errors = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        match parse_source(i + 1, t) {
            Ok(s) => {
                if out.iter().any(|o| o.name == s.name) {
                    errors.push(ConfigError::Duplicate(s.name));
                } else {
                    out.push(s);
                }
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn parse_source(index: usize, table: &toml::Table) -> Result<SourceConfig, ConfigError> {
    let mut t = table.clone();
    let name = match t.remove("name") {
        Some(toml::Value::String(s)) if valid_name(&s) => s,
        Some(other) => {
            return Err(ConfigError::Invalid {
                source_name: format!("#{index}"),
                message: format!(
                    "'name' must be 1-64 letters, digits, '-', '_' or '.', not {other}"
                ),
            })
        }
        None => return Err(ConfigError::Missing { index, key: "name" }),
    };
    let invalid = |message: String| ConfigError::Invalid {
        source_name: name.clone(),
        message,
    };
    let tenant = match t.remove("tenant") {
        Some(toml::Value::String(s)) => {
            TenantName::parse(&s).map_err(|e| invalid(format!("tenant: {e}")))?
        }
        Some(_) => return Err(invalid("'tenant' must be a string".into())),
        None => {
            return Err(ConfigError::Missing {
                index,
                key: "tenant",
            })
        }
    };
    let kind = match t.remove("kind") {
        Some(toml::Value::String(s)) => s,
        Some(_) => return Err(invalid("'kind' must be a string".into())),
        None => return Err(ConfigError::Missing { index, key: "kind" }),
    };
    let mut duration = |key: &str, default: Duration| -> Result<Duration, ConfigError> {
        match t.remove(key) {
            None => Ok(default),
            Some(toml::Value::String(s)) => positive_duration(key, &s).map_err(&invalid),
            Some(_) => Err(invalid(format!(
                "'{key}' must be a duration string such as \"15m\""
            ))),
        }
    };
    let schedule = duration("schedule", DEFAULT_SCHEDULE)?;
    let full_every = duration("full_every", DEFAULT_FULL_EVERY)?;
    let delete_after = duration("delete_after", DEFAULT_DELETE_AFTER)?;
    let guard = match t.remove("guard") {
        None => GuardConfig::default(),
        Some(v) => GuardConfig::deserialize(v).map_err(|e| invalid(format!("guard: {e}")))?,
    };
    if !(0.0..=100.0).contains(&guard.max_delete_percent) {
        return Err(invalid(
            "guard.max_delete_percent must be between 0 and 100".into(),
        ));
    }
    let rest = toml::Value::Table(t);
    let kind = match kind.as_str() {
        "ldap" => SourceKind::Ldap(Box::new(
            ldap::LdapConfig::from_toml(rest).map_err(invalid)?,
        )),
        "entra" => SourceKind::Entra(Box::new(
            entra::EntraConfig::from_toml(rest).map_err(invalid)?,
        )),
        other => {
            return Err(invalid(format!(
                "unknown kind '{other}' (expected \"ldap\" or \"entra\")"
            )))
        }
    };
    Ok(SourceConfig {
        name,
        tenant,
        schedule,
        full_every,
        delete_after,
        guard,
        kind,
    })
}

/// A duration such as "15m" or "30s" for `key`, more than zero; the
/// message names the key and the value. Every kind's durations use it.
pub fn positive_duration(key: &str, value: &str) -> Result<Duration, String> {
    match humantime::parse_duration(value) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(format!("'{key}' must be more than zero")),
        Err(e) => Err(format!("'{key}' = \"{value}\": {e}")),
    }
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}
