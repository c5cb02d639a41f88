//! The directory-sync use case. Sources (`crate::sync`: LDAP, Entra) read a
//! directory into a batch; this module plans the batch against what the
//! source synced before (`plan`), holds runs that remove too much
//! (`guard`), applies the rest in one write transaction (`apply`), and runs
//! the whole under the source's lease, recording each run (`run`).
//!
//! Invariant: a source error, at any point, ends the run before anything is
//! written. Nothing is deleted or deactivated on a partial read.

mod apply;
pub mod guard;
pub mod plan;
pub mod run;
#[cfg(test)]
mod tests;

pub use apply::{group_doc, user_doc, Applied, CursorUpdate, SyncMetrics, SYNC_USER_URN};
pub use run::{
    run_source, run_source_with_progress, run_with_source, AnySource, Progress, RunMode,
    RunOptions, RunOutcome, RunReport, SyncError, SyncLease,
};
