//! Directory sources: LDAP (OpenLDAP, Active Directory) and Entra ID
//! through Microsoft Graph. A source reads a directory into a [`Batch`] of
//! records and hands back a cursor for next time; it knows nothing of the
//! store, the app or HTTP. The use case around it (plan, guard, apply,
//! lease, run log) is `app::sync`.
//!
//! Invariant: a source never reports a partial read as a success: any
//! failure is an `Err`, so the run ends before anything is written.

pub mod config;
pub mod entra;
pub mod ldap;
pub mod record;
pub mod source;

pub use config::{parse_sources, ConfigError, GuardConfig, SecretRef, SourceConfig, SourceKind};
pub use record::{Change, ExternalGroup, ExternalKey, ExternalUser, Kind, MemberRef, Members};
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
