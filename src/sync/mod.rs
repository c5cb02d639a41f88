//! Scheduled directory sync: sources (LDAP, Entra ID through Microsoft
//! Graph) read into a [`Batch`]; the runner plans the changes against what
//! the source synced before, holds runs that delete too much, and applies
//! the rest through `app` in one transaction, so mappings, permissions and
//! cache invalidation behave exactly as for SCIM.
//!
//! Invariant: a source error, at any point, ends the run before anything is
//! written. Nothing is deleted or deactivated on a partial read.

pub mod config;
pub mod entra;
pub mod guard;
pub mod ldap;
pub mod plan;
pub mod record;
pub mod runner;
pub mod source;
#[cfg(test)]
mod tests;

pub use config::{parse_sources, ConfigError, GuardConfig, SecretRef, SourceConfig, SourceKind};
pub use record::{Change, ExternalGroup, ExternalUser, Kind, MemberRef, Members};
pub use runner::{run_source, run_with_source, RunOptions, RunReport, SyncError};
pub use source::{Batch, GroupChange, ReadOutcome, ReadRequest, Source};

/// Why a source could not be read. Every variant aborts the run with no
/// change applied.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Ldap(#[from] ldap::LdapError),
    #[error(transparent)]
    Entra(#[from] entra::EntraError),
    /// The cursor the source was given is no longer accepted (Graph 410
    /// `syncStateNotFound`, syncrepl `e-syncRefreshRequired`): the runner
    /// retries once as a full read, which reconciles deletions.
    #[error("the source no longer accepts the saved cursor; a full resync is needed")]
    CursorExpired,
}
