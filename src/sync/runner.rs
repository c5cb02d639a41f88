//! One run of one source: lease, read, plan, guard, apply, record.

use serde::Serialize;

use super::{SourceConfig, SourceError};
use crate::app::App;

/// How a run was asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunOptions {
    /// Read and plan, print the diff, change nothing (not even the cursor).
    pub dry_run: bool,
    /// Apply deletions the guard would hold (after an admin looked at the
    /// held run).
    pub confirm_deletes: bool,
    /// Read everything even if a cursor is saved.
    pub force_full: bool,
}

/// What a run did (or, for a dry run or a held run, would do).
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RunReport {
    pub source: String,
    pub tenant: String,
    /// `full` or `incremental`.
    pub mode: String,
    /// `applied`, `held`, `dry-run` or `unchanged`.
    pub outcome: String,
    pub users_created: u64,
    pub users_updated: u64,
    pub users_deactivated: u64,
    pub users_reactivated: u64,
    pub users_deleted: u64,
    pub groups_created: u64,
    pub groups_updated: u64,
    pub groups_deleted: u64,
    pub members_added: u64,
    pub members_removed: u64,
    /// Users whose effective permissions changed (0 when the tenant has no
    /// mapping).
    pub permission_changes: u64,
    /// Entries not applied, with the reason (a userName taken by a resource
    /// another source or SCIM owns, a member that names nothing).
    pub skipped: Vec<String>,
    /// Why the guard held the run, when it did.
    pub held_reason: Option<String>,
    /// One line per change, for `--dry-run` and held runs.
    pub diff: Vec<String>,
    pub entries_read: u64,
    pub elapsed_ms: u64,
}

/// Why a run failed. None of these changes anything.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("source '{source_name}': {error}")]
    Source {
        source_name: String,
        #[source]
        error: SourceError,
    },
    #[error("source '{0}' is already running (another process holds its lease)")]
    Busy(String),
    #[error("tenant '{0}' does not exist; create it with `rolebridge tenant create`")]
    UnknownTenant(String),
    #[error(transparent)]
    App(#[from] crate::app::Error),
    #[error(transparent)]
    Store(#[from] crate::store::Error),
}

/// Runs one source once.
pub async fn run_source(
    app: &App,
    config: &SourceConfig,
    options: RunOptions,
) -> Result<RunReport, SyncError> {
    let _ = (app, options);
    Err(SyncError::Busy(config.name.clone()))
}
