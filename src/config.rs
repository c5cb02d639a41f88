//! Typed configuration, loaded once: command-line flags and environment
//! variables (through clap) over an optional TOML file over defaults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Defaults that make a bare `rolebridge serve` work on a fresh checkout.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/rolebridge.db";
pub const DEFAULT_MAPPINGS: &str = "./mappings";

/// Provisioning quotas (`[rate_limit]`). An identity provider's initial sync
/// sends a few hundred requests a second at most; these defaults leave it
/// room and stop only a runaway client.
pub const DEFAULT_PER_TENANT_PER_SECOND: u32 = 500;
pub const DEFAULT_PER_TENANT_BURST: u32 = 1000;
pub const DEFAULT_PER_TOKEN_PER_SECOND: u32 = 500;
pub const DEFAULT_PER_TOKEN_BURST: u32 = 1000;
/// Requests served at once (`[http] max_in_flight`); more are shed with 503.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 512;
/// Prefix of the cluster-wide quota keys in Redis (`[rate_limit]
/// key_prefix`): the prefix of every key the service writes (`serve`'s
/// `REDIS_PREFIX`, which this module cannot name) followed by `quota:`.
pub const DEFAULT_QUOTA_PREFIX: &str = "rolebridge:quota:";

/// The settings every subcommand shares.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database_url: String,
    pub redis_url: Option<String>,
    pub mappings: PathBuf,
    /// `[[source]]` tables, kept for the directory-sync framework.
    pub sources: Vec<toml::Table>,
    /// Quotas and limits of the HTTP edge (`[rate_limit]`, `[http]`).
    pub http: HttpSettings,
    /// When a mapping change needs confirmation (`[mapping_guard]`).
    pub mapping_guard: GuardSettings,
    /// How often `serve` looks for a newer mapping version in the store
    /// (`mapping_poll`, default 1 s: every replica switches within 2 s).
    pub mapping_poll: std::time::Duration,
    /// How long change-feed events are kept (`[changes] retention`).
    pub change_retention: std::time::Duration,
    /// How webhooks are delivered (`[webhooks]`).
    pub webhooks: WebhookSettings,
    /// After SIGTERM: how long `serve` keeps accepting requests with
    /// `/readyz` at 503 (so a balancer stops sending), then how long the
    /// requests in flight may take to finish (`shutdown_delay`,
    /// `shutdown_grace`).
    pub shutdown_delay: std::time::Duration,
    pub shutdown_grace: std::time::Duration,
}

/// Defaults of `shutdown_delay` and `shutdown_grace`: two balancer health
/// checks at 1 s, and the chart's budget for draining.
pub const DEFAULT_SHUTDOWN_DELAY: std::time::Duration = std::time::Duration::from_secs(2);
pub const DEFAULT_SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(20);

/// Default of `[changes] retention`: a consumer may be away a week.
pub const DEFAULT_CHANGE_RETENTION: std::time::Duration =
    std::time::Duration::from_secs(7 * 24 * 3600);

/// How webhooks are delivered (`[webhooks]`).
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookSettings {
    /// Most events one POST carries (1: one event per request).
    pub batch: usize,
    /// Attempts at a batch before it is dead-lettered.
    pub max_attempts: u32,
    /// The first retry's delay; each retry doubles it, with jitter.
    pub backoff_base: std::time::Duration,
    /// The longest delay of the backoff (a receiver's `Retry-After` is
    /// honoured beyond it, up to an hour).
    pub backoff_max: std::time::Duration,
    /// How long one POST may take.
    pub timeout: std::time::Duration,
    /// How often idle deliverers look for events other replicas committed.
    pub poll: std::time::Duration,
    /// How long a rotated-out secret keeps signing.
    pub rotation_grace: std::time::Duration,
    /// Accept `http://` endpoints that are not on loopback (off by default:
    /// the events say who may do what).
    pub allow_http: bool,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        use std::time::Duration;
        WebhookSettings {
            batch: 100,
            max_attempts: 10,
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(600),
            timeout: Duration::from_secs(10),
            poll: Duration::from_millis(250),
            rotation_grace: Duration::from_secs(24 * 3600),
            allow_http: false,
        }
    }
}

impl WebhookSettings {
    /// The delivery lease: twice what a POST may take and a second, taken
    /// afresh before each POST, so a replica never sends while another
    /// holds the endpoint; a crashed holder's endpoints wait that long.
    pub fn lease(&self) -> std::time::Duration {
        self.timeout * 2 + std::time::Duration::from_secs(1)
    }
}

/// Default of `mapping_poll`.
pub const DEFAULT_MAPPING_POLL: std::time::Duration = std::time::Duration::from_secs(1);

/// The mapping guard's thresholds for one tenant: a change trips it when
/// more than `max_users_losing` users, or more than `max_percent_losing`
/// percent of the tenant's users, lose any role, profile or permission.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardLimits {
    pub max_users_losing: usize,
    pub max_percent_losing: f64,
}

impl GuardLimits {
    /// Ten users or 5 % of the tenant, whichever comes first: a rule edit
    /// that moves more than that deserves a second look.
    pub const DEFAULT: GuardLimits = GuardLimits {
        max_users_losing: 10,
        max_percent_losing: 5.0,
    };
}

impl Default for GuardLimits {
    fn default() -> Self {
        GuardLimits::DEFAULT
    }
}

/// `[mapping_guard]` and its `[mapping_guard.tenants.NAME]` overrides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GuardSettings {
    pub default: GuardLimits,
    pub tenants: BTreeMap<String, GuardLimits>,
}

impl GuardSettings {
    pub fn limits_for(&self, tenant: &str) -> GuardLimits {
        self.tenants.get(tenant).copied().unwrap_or(self.default)
    }
}

/// What the HTTP edge needs from the configuration: plain validated values,
/// so `http::router_with` can be driven by tests without a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    pub rate_limit: RateLimitSettings,
    /// Requests processed at once across the SCIM and permissions APIs.
    pub max_in_flight: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            rate_limit: RateLimitSettings::default(),
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// A token bucket: `burst` requests at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

impl Quota {
    /// A quota from plain numbers; `None` if either is zero.
    pub fn new(per_second: u32, burst: u32) -> Option<Quota> {
        Some(Quota {
            per_second: NonZeroU32::new(per_second)?,
            burst: NonZeroU32::new(burst)?,
        })
    }
}

/// The two quotas a SCIM request is held to: its tenant's and its token's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantQuotas {
    pub tenant: Quota,
    pub token: Quota,
}

/// Provisioning quotas: one default for every tenant, and overrides by
/// tenant name from `[rate_limit.tenants.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitSettings {
    pub default: TenantQuotas,
    pub tenants: BTreeMap<String, TenantQuotas>,
    /// The Redis that holds the cluster-wide buckets: `--redis-url`, copied
    /// here by [`Config::load`] so that the HTTP edge needs nothing else
    /// from the configuration. `None`: each process enforces the quotas
    /// alone, as a single replica does.
    pub redis_url: Option<String>,
    /// Prefix of the quota keys and the replica heartbeats in Redis
    /// (`[rate_limit] key_prefix`); deployments sharing one Redis give each
    /// its own, or they would share quotas and count each other's replicas.
    pub key_prefix: String,
    /// The least number of replicas assumed when Redis is down
    /// (`[rate_limit] replicas`, default 1): each replica then enforces
    /// 1/N of every quota, N being the larger of this and the count of
    /// live replicas last seen in Redis.
    pub replicas: NonZeroU32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        let quota = |per_second, burst| {
            Quota::new(per_second, burst).expect("the default quotas are non-zero constants")
        };
        RateLimitSettings {
            default: TenantQuotas {
                tenant: quota(DEFAULT_PER_TENANT_PER_SECOND, DEFAULT_PER_TENANT_BURST),
                token: quota(DEFAULT_PER_TOKEN_PER_SECOND, DEFAULT_PER_TOKEN_BURST),
            },
            tenants: BTreeMap::new(),
            redis_url: None,
            key_prefix: DEFAULT_QUOTA_PREFIX.to_string(),
            replicas: NonZeroU32::MIN,
        }
    }
}

impl RateLimitSettings {
    /// The quotas in force for a tenant.
    pub fn for_tenant(&self, name: &str) -> &TenantQuotas {
        self.tenants.get(name).unwrap_or(&self.default)
    }
}

/// Values given on the command line or in the environment; `None` falls
/// back to the file, then to the default.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub listen: Option<String>,
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
    pub mappings: Option<PathBuf>,
}

/// The TOML file: the same keys as the flags, plus `[[source]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
struct FileConfig {
    listen: Option<String>,
    database_url: Option<String>,
    redis_url: Option<String>,
    mappings: Option<PathBuf>,
    #[serde(default)]
    source: Vec<toml::Table>,
    #[serde(default)]
    rate_limit: RawRateLimit,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    mapping_guard: RawGuard,
    /// A duration such as "1s" or "500ms".
    mapping_poll: Option<String>,
    /// Durations such as "2s"; `shutdown_delay` may be "0s".
    shutdown_delay: Option<String>,
    shutdown_grace: Option<String>,
    #[serde(default)]
    changes: RawChanges,
    #[serde(default)]
    webhooks: RawWebhooks,
}

/// `[changes]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChanges {
    retention: Option<String>,
}

/// `[webhooks]` as written; durations as text ("10s").
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhooks {
    batch: Option<usize>,
    max_attempts: Option<u32>,
    backoff_base: Option<String>,
    backoff_max: Option<String>,
    timeout: Option<String>,
    poll: Option<String>,
    rotation_grace: Option<String>,
    allow_http: Option<bool>,
}

/// A duration key: text such as "10s", above zero.
fn duration_key(
    key: &str,
    raw: Option<&String>,
    default: std::time::Duration,
) -> Result<std::time::Duration, String> {
    match raw {
        None => Ok(default),
        Some(raw) => match humantime::parse_duration(raw) {
            Ok(d) if !d.is_zero() => Ok(d),
            _ => Err(format!(
                "{key} must be a duration above zero such as \"10s\", got \"{raw}\""
            )),
        },
    }
}

impl RawWebhooks {
    fn validate(self) -> Result<WebhookSettings, String> {
        let d = WebhookSettings::default();
        let batch = match self.batch {
            None => d.batch,
            Some(n) if (1..=1000).contains(&n) => n,
            Some(n) => return Err(format!("webhooks.batch must be 1 to 1000, got {n}")),
        };
        let max_attempts = match self.max_attempts {
            None => d.max_attempts,
            Some(0) => return Err("webhooks.max_attempts must be at least 1, got 0".into()),
            Some(n) => n,
        };
        let out = WebhookSettings {
            batch,
            max_attempts,
            backoff_base: duration_key(
                "webhooks.backoff_base",
                self.backoff_base.as_ref(),
                d.backoff_base,
            )?,
            backoff_max: duration_key(
                "webhooks.backoff_max",
                self.backoff_max.as_ref(),
                d.backoff_max,
            )?,
            timeout: duration_key("webhooks.timeout", self.timeout.as_ref(), d.timeout)?,
            poll: duration_key("webhooks.poll", self.poll.as_ref(), d.poll)?,
            rotation_grace: duration_key(
                "webhooks.rotation_grace",
                self.rotation_grace.as_ref(),
                d.rotation_grace,
            )?,
            allow_http: self.allow_http.unwrap_or(d.allow_http),
        };
        if out.backoff_base > out.backoff_max {
            return Err("webhooks.backoff_base must not exceed webhooks.backoff_max".into());
        }
        Ok(out)
    }
}

/// `[mapping_guard]` as written: missing keys keep the defaults, and a
/// tenant's table overrides only what it names.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuard {
    max_users_losing: Option<usize>,
    max_percent_losing: Option<f64>,
    #[serde(default)]
    tenants: BTreeMap<String, RawGuardLimits>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuardLimits {
    max_users_losing: Option<usize>,
    max_percent_losing: Option<f64>,
}

impl RawGuard {
    fn validate(self) -> Result<GuardSettings, String> {
        let check = |limits: GuardLimits, table: &str| {
            if !(0.0..=100.0).contains(&limits.max_percent_losing) {
                return Err(format!(
                    "{table}.max_percent_losing must be between 0 and 100, got {}",
                    limits.max_percent_losing
                ));
            }
            Ok(limits)
        };
        let default = check(
            GuardLimits {
                max_users_losing: self
                    .max_users_losing
                    .unwrap_or(GuardLimits::DEFAULT.max_users_losing),
                max_percent_losing: self
                    .max_percent_losing
                    .unwrap_or(GuardLimits::DEFAULT.max_percent_losing),
            },
            "mapping_guard",
        )?;
        let mut tenants = BTreeMap::new();
        for (name, raw) in self.tenants {
            let table = format!("mapping_guard.tenants.{name}");
            crate::domain::TenantName::parse(&name).map_err(|e| format!("[{table}]: {e}"))?;
            let limits = check(
                GuardLimits {
                    max_users_losing: raw.max_users_losing.unwrap_or(default.max_users_losing),
                    max_percent_losing: raw
                        .max_percent_losing
                        .unwrap_or(default.max_percent_losing),
                },
                &table,
            )?;
            tenants.insert(name, limits);
        }
        Ok(GuardSettings { default, tenants })
    }
}

/// `[rate_limit]` as written; zeros are refused by [`RawRateLimit::validate`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateLimit {
    per_tenant_per_second: Option<u32>,
    per_tenant_burst: Option<u32>,
    per_token_per_second: Option<u32>,
    per_token_burst: Option<u32>,
    replicas: Option<u32>,
    key_prefix: Option<String>,
    #[serde(default)]
    tenants: BTreeMap<String, RawQuotas>,
}

/// `[rate_limit.tenants.NAME]`: the same keys; a missing one keeps the
/// `[rate_limit]` value.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuotas {
    per_tenant_per_second: Option<u32>,
    per_tenant_burst: Option<u32>,
    per_token_per_second: Option<u32>,
    per_token_burst: Option<u32>,
}

/// `[http]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    max_in_flight: Option<usize>,
}

impl RawQuotas {
    /// These quotas over `base`; `table` names the TOML table in errors.
    fn resolve(&self, base: &TenantQuotas, table: &str) -> Result<TenantQuotas, String> {
        let pick = |value: Option<u32>, fallback: NonZeroU32, key: &str| match value {
            None => Ok(fallback),
            Some(v) => {
                NonZeroU32::new(v).ok_or_else(|| format!("{table}.{key} must be at least 1, got 0"))
            }
        };
        Ok(TenantQuotas {
            tenant: Quota {
                per_second: pick(
                    self.per_tenant_per_second,
                    base.tenant.per_second,
                    "per_tenant_per_second",
                )?,
                burst: pick(self.per_tenant_burst, base.tenant.burst, "per_tenant_burst")?,
            },
            token: Quota {
                per_second: pick(
                    self.per_token_per_second,
                    base.token.per_second,
                    "per_token_per_second",
                )?,
                burst: pick(self.per_token_burst, base.token.burst, "per_token_burst")?,
            },
        })
    }
}

impl RawRateLimit {
    fn validate(self) -> Result<RateLimitSettings, String> {
        let defaults = RateLimitSettings::default();
        let default = RawQuotas {
            per_tenant_per_second: self.per_tenant_per_second,
            per_tenant_burst: self.per_tenant_burst,
            per_token_per_second: self.per_token_per_second,
            per_token_burst: self.per_token_burst,
        }
        .resolve(&defaults.default, "rate_limit")?;
        let mut tenants = BTreeMap::new();
        for (name, raw) in self.tenants {
            let table = format!("rate_limit.tenants.{name}");
            crate::domain::TenantName::parse(&name).map_err(|e| format!("[{table}]: {e}"))?;
            tenants.insert(name, raw.resolve(&default, &table)?);
        }
        let replicas = match self.replicas {
            None => defaults.replicas,
            Some(n) => NonZeroU32::new(n)
                .ok_or_else(|| "rate_limit.replicas must be at least 1, got 0".to_string())?,
        };
        let key_prefix = match self.key_prefix {
            None => defaults.key_prefix,
            Some(p) if p.is_empty() => {
                return Err("rate_limit.key_prefix must not be empty".into());
            }
            Some(p) => p,
        };
        Ok(RateLimitSettings {
            default,
            tenants,
            redis_url: None,
            key_prefix,
            replicas,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file '{path}': {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file '{path}': {message}")]
    Parse { path: String, message: String },
    #[error("invalid listen address '{0}': expected HOST:PORT such as 127.0.0.1:8080")]
    Listen(String),
    #[error("config file '{path}': {message}")]
    Invalid { path: String, message: String },
}

impl Config {
    pub fn load(file: Option<&Path>, over: Overrides) -> Result<Config, Error> {
        let file_cfg = match file {
            None => FileConfig::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                toml::from_str(&text).map_err(|e| Error::Parse {
                    path: path.display().to_string(),
                    // toml's message spans several lines; keep the promise
                    // of one clear line.
                    message: e
                        .to_string()
                        .lines()
                        .filter(|l| !l.trim().is_empty())
                        .collect::<Vec<_>>()
                        .join(" "),
                })?
            }
        };
        let listen_raw = over
            .listen
            .or(file_cfg.listen)
            .unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen = listen_raw
            .parse()
            .map_err(|_| Error::Listen(listen_raw.clone()))?;
        let invalid = |message: String| Error::Invalid {
            path: file.map(|p| p.display().to_string()).unwrap_or_default(),
            message,
        };
        let redis_url = over.redis_url.or(file_cfg.redis_url);
        let mut rate_limit = file_cfg.rate_limit.validate().map_err(invalid)?;
        // The quotas are cluster-wide wherever the cache is shared.
        rate_limit.redis_url = redis_url.clone();
        let mapping_guard = file_cfg.mapping_guard.validate().map_err(invalid)?;
        let mapping_poll = duration_key(
            "mapping_poll",
            file_cfg.mapping_poll.as_ref(),
            DEFAULT_MAPPING_POLL,
        )
        .map_err(invalid)?;
        let change_retention = duration_key(
            "changes.retention",
            file_cfg.changes.retention.as_ref(),
            DEFAULT_CHANGE_RETENTION,
        )
        .map_err(invalid)?;
        let webhooks = file_cfg.webhooks.validate().map_err(invalid)?;
        let shutdown_delay = match &file_cfg.shutdown_delay {
            None => DEFAULT_SHUTDOWN_DELAY,
            Some(raw) => humantime::parse_duration(raw).map_err(|_| {
                invalid(format!(
                    "shutdown_delay must be a duration such as \"2s\" (\"0s\" for none), got \"{raw}\""
                ))
            })?,
        };
        let shutdown_grace = duration_key(
            "shutdown_grace",
            file_cfg.shutdown_grace.as_ref(),
            DEFAULT_SHUTDOWN_GRACE,
        )
        .map_err(invalid)?;
        let max_in_flight = match file_cfg.http.max_in_flight {
            None => DEFAULT_MAX_IN_FLIGHT,
            Some(0) => {
                return Err(invalid(
                    "http.max_in_flight must be at least 1, got 0".into(),
                ))
            }
            Some(n) => n,
        };
        Ok(Config {
            listen,
            database_url: over
                .database_url
                .or(file_cfg.database_url)
                .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string()),
            redis_url,
            mappings: over
                .mappings
                .or(file_cfg.mappings)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_MAPPINGS)),
            sources: file_cfg.source,
            http: HttpSettings {
                rate_limit,
                max_in_flight,
            },
            mapping_guard,
            mapping_poll,
            change_retention,
            webhooks,
            shutdown_delay,
            shutdown_grace,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("rb-cfg-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let p = write("listen = \"127.0.0.1:9000\"\ndatabase_url = \"sqlite://x.db\"\n[[source]]\nkind = \"ldap\"\n");
        let c = Config::load(
            Some(&p),
            Overrides {
                database_url: Some("postgres://h/db".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.database_url, "postgres://h/db");
        assert_eq!(c.mappings, PathBuf::from(DEFAULT_MAPPINGS));
        assert_eq!(c.sources.len(), 1);
    }

    #[test]
    fn rate_limits_default_and_override_per_tenant() {
        let c = Config::load(None, Overrides::default()).unwrap();
        assert_eq!(c.http, HttpSettings::default());
        assert_eq!(c.http.max_in_flight, DEFAULT_MAX_IN_FLIGHT);
        let p = write(
            "[http]\nmax_in_flight = 8\n[rate_limit]\nper_tenant_per_second = 20\nper_token_burst = 7\n\
             [rate_limit.tenants.acme]\nper_tenant_burst = 3\n",
        );
        let c = Config::load(Some(&p), Overrides::default()).unwrap();
        let rl = &c.http.rate_limit;
        assert_eq!(c.http.max_in_flight, 8);
        assert_eq!(
            rl.default.tenant,
            Quota::new(20, DEFAULT_PER_TENANT_BURST).unwrap()
        );
        assert_eq!(
            rl.default.token,
            Quota::new(DEFAULT_PER_TOKEN_PER_SECOND, 7).unwrap()
        );
        // The override inherits what it does not set from [rate_limit].
        assert_eq!(rl.for_tenant("acme").tenant, Quota::new(20, 3).unwrap());
        assert_eq!(rl.for_tenant("acme").token, rl.default.token);
        assert_eq!(rl.for_tenant("other"), &rl.default);
        assert_eq!(rl.replicas.get(), 1);
        assert_eq!(rl.key_prefix, DEFAULT_QUOTA_PREFIX);
        assert_eq!(rl.redis_url, None);
    }

    #[test]
    fn cluster_quota_settings_come_from_the_redis_url_and_rate_limit() {
        let p = write(
            "redis_url = \"redis://file:6379/\"\n[rate_limit]\nreplicas = 3\nkey_prefix = \"x:q:\"\n",
        );
        let c = Config::load(Some(&p), Overrides::default()).unwrap();
        assert_eq!(c.http.rate_limit.replicas.get(), 3);
        assert_eq!(c.http.rate_limit.key_prefix, "x:q:");
        assert_eq!(
            c.http.rate_limit.redis_url.as_deref(),
            Some("redis://file:6379/")
        );
        // The flag wins over the file for the quotas as for the cache.
        let c = Config::load(
            Some(&p),
            Overrides {
                redis_url: Some("redis://flag:6379/".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.redis_url.as_deref(), Some("redis://flag:6379/"));
        assert_eq!(c.http.rate_limit.redis_url, c.redis_url);
    }

    #[test]
    fn bad_rate_limits_give_one_line() {
        for (text, needle) in [
            (
                "[rate_limit]\nper_tenant_burst = 0\n",
                "rate_limit.per_tenant_burst must be at least 1",
            ),
            (
                "[rate_limit.tenants.acme]\nper_token_per_second = 0\n",
                "rate_limit.tenants.acme.per_token_per_second must be at least 1",
            ),
            ("[rate_limit.tenants.\"Bad Name\"]\n", "Bad Name"),
            ("[rate_limit]\nburst = 3\n", "burst"),
            (
                "[http]\nmax_in_flight = 0\n",
                "http.max_in_flight must be at least 1",
            ),
            ("[rate_limit]\nper_tenant_burst = -1\n", "per_tenant_burst"),
            (
                "[rate_limit]\nreplicas = 0\n",
                "rate_limit.replicas must be at least 1",
            ),
            (
                "[rate_limit]\nkey_prefix = \"\"\n",
                "rate_limit.key_prefix must not be empty",
            ),
            ("[rate_limit.tenants.acme]\nreplicas = 2\n", "replicas"),
        ] {
            let err = Config::load(Some(&write(text)), Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn feed_webhook_and_shutdown_settings_default_and_override() {
        let c = Config::load(None, Overrides::default()).unwrap();
        assert_eq!(c.change_retention, DEFAULT_CHANGE_RETENTION);
        assert_eq!(c.webhooks, WebhookSettings::default());
        assert_eq!(
            (c.shutdown_delay, c.shutdown_grace),
            (DEFAULT_SHUTDOWN_DELAY, DEFAULT_SHUTDOWN_GRACE)
        );
        let p = write(
            "shutdown_delay = \"0s\"\nshutdown_grace = \"5s\"\n[changes]\nretention = \"1d\"\n[webhooks]\nbatch = 1\ntimeout = \"3s\"\nallow_http = true\n",
        );
        let c = Config::load(Some(&p), Overrides::default()).unwrap();
        let s = std::time::Duration::from_secs;
        assert_eq!((c.shutdown_delay, c.shutdown_grace), (s(0), s(5)));
        assert_eq!(c.change_retention, s(86_400));
        assert_eq!(
            (c.webhooks.batch, c.webhooks.timeout, c.webhooks.allow_http),
            (1, s(3), true)
        );
        assert_eq!(c.webhooks.lease(), s(7));
        assert_eq!(
            c.webhooks.max_attempts,
            WebhookSettings::default().max_attempts
        );
    }

    #[test]
    fn mapping_guard_and_poll_default_and_override() {
        let c = Config::load(None, Overrides::default()).unwrap();
        assert_eq!(c.mapping_guard.limits_for("any"), GuardLimits::DEFAULT);
        assert_eq!(c.mapping_poll, DEFAULT_MAPPING_POLL);
        let p = write(
            "mapping_poll = \"250ms\"\n[mapping_guard]\nmax_users_losing = 3\n[mapping_guard.tenants.acme]\nmax_percent_losing = 50\n",
        );
        let c = Config::load(Some(&p), Overrides::default()).unwrap();
        assert_eq!(c.mapping_poll, std::time::Duration::from_millis(250));
        assert_eq!(
            c.mapping_guard.limits_for("other"),
            GuardLimits {
                max_users_losing: 3,
                max_percent_losing: 5.0
            }
        );
        assert_eq!(
            c.mapping_guard.limits_for("acme"),
            GuardLimits {
                max_users_losing: 3,
                max_percent_losing: 50.0
            }
        );
        for (text, needle) in [
            (
                "[mapping_guard]\nmax_percent_losing = 120\n",
                "between 0 and 100",
            ),
            ("mapping_poll = \"0s\"\n", "mapping_poll must be a duration"),
            (
                "shutdown_grace = \"0s\"\n",
                "shutdown_grace must be a duration",
            ),
            (
                "shutdown_delay = \"later\"\n",
                "shutdown_delay must be a duration",
            ),
            (
                "[changes]\nretention = \"forever\"\n",
                "changes.retention must be a duration",
            ),
            (
                "[webhooks]\nbatch = 0\n",
                "webhooks.batch must be 1 to 1000",
            ),
            (
                "[webhooks]\nmax_attempts = 0\n",
                "webhooks.max_attempts must be at least 1",
            ),
            (
                "[webhooks]\nbackoff_base = \"1h\"\nbackoff_max = \"1m\"\n",
                "must not exceed webhooks.backoff_max",
            ),
            ("[webhooks]\nsecret = \"x\"\n", "unknown field"),
            (
                "mapping_poll = \"soon\"\n",
                "mapping_poll must be a duration",
            ),
            (
                "[mapping_guard.tenants.\"Bad Name\"]\nmax_users_losing = 1\n",
                "mapping_guard.tenants",
            ),
        ] {
            let err = Config::load(Some(&write(text)), Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(needle), "{text}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn bad_files_give_one_line() {
        let p = write("listen = \"127.0.0.1:9000\"\nunknown_key = 1\n");
        let err = Config::load(Some(&p), Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown_key"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        let err = Config::load(
            None,
            Overrides {
                listen: Some("nope".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("'nope'"));
    }
}
