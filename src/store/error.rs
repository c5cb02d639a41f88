//! Store errors. Constraint violations are their own variants so the HTTP
//! layer can answer 409 `uniqueness` without parsing driver messages.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    #[error("unsupported database url '{0}': use sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error("cannot create database directory '{dir}': {source}")]
    CreateDir { dir: String, source: std::io::Error },
    #[error("cannot connect to database '{url}': {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("cannot apply database migrations: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    #[error("tenant '{0}' already exists")]
    TenantExists(String),
    #[error("{attribute} '{value}' is already taken in this tenant")]
    Uniqueness {
        attribute: &'static str,
        value: String,
    },
    #[error("the resource was changed concurrently; retry")]
    Conflict,
    #[error(
        "sync source '{0}': the run's lease expired and another run took it; nothing was applied"
    )]
    LeaseLost(String),
    /// A mapping change planned against one version found another one
    /// newer than it.
    #[error("the mappings changed since {}: the newest version is {}; plan again", .expected.map(|v| v.to_string()).unwrap_or_else(|| "the start".into()), .latest.map(|v| v.to_string()).unwrap_or_else(|| "none".into()))]
    VersionConflict {
        expected: Option<crate::domain::MappingVersion>,
        latest: Option<crate::domain::MappingVersion>,
    },
    #[error("stored document of {kind} '{id}' is not valid JSON: {source}")]
    Corrupt {
        kind: &'static str,
        id: String,
        source: serde_json::Error,
    },
    #[error("stored {column} '{value}' is not a value this version knows")]
    BadColumn { column: &'static str, value: String },
    /// A bug, never the client's fault: a write reached commit without its
    /// tenant's effective permissions brought up to date.
    #[error("internal: tenant {0} was written but its effective permissions were not derived before commit")]
    Unsettled(String),
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
}

impl Error {
    /// True when the database refused a write because of a unique index.
    pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
        matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
    }

    /// True when PostgreSQL aborted the statement to break a deadlock
    /// (40P01) or a serialisation conflict (40001): the transaction (or
    /// savepoint) it ran in is undone, and running it again may succeed.
    pub fn is_transient_conflict(&self) -> bool {
        matches!(self, Error::Sql(sqlx::Error::Database(db))
            if matches!(db.code().as_deref(), Some("40P01") | Some("40001")))
    }
}
