//! Typed configuration, loaded once: command-line flags and environment
//! variables (through clap) over an optional TOML file over defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Defaults that make a bare `rolebridge serve` work on a fresh checkout.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/rolebridge.db";
pub const DEFAULT_MAPPINGS: &str = "./mappings";

/// The settings every subcommand shares.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub database_url: String,
    pub redis_url: Option<String>,
    pub mappings: PathBuf,
    /// `[[source]]` tables, kept for the directory-sync framework.
    pub sources: Vec<toml::Table>,
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
        Ok(Config {
            listen,
            database_url: over
                .database_url
                .or(file_cfg.database_url)
                .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string()),
            redis_url: over.redis_url.or(file_cfg.redis_url),
            mappings: over
                .mappings
                .or(file_cfg.mappings)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_MAPPINGS)),
            sources: file_cfg.source,
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
