//! Use cases. The only module that combines the store with the SCIM engine
//! (and, later, mappings, permissions and the cache), so transactions and
//! invalidation have one home.
//!
//! May use: everything below `http`. Invariant: every write that a caller
//! sees acknowledged was committed first; a failed operation rolls back and
//! leaves no partial change.

mod bulk;
mod error;
mod permissions;
mod resources;
mod tokens;

pub use crate::domain::{format_timestamp, now};
pub use bulk::{BulkLimits, BULK_LIMITS};
pub use error::Error;
pub use permissions::{user_facts, Mappings, UserRef, SYNC_URN};
pub use resources::{ListQuery, ListResult, Outcome, RequestContext, MAX_COUNT};
pub use tokens::{hash_secret, Authenticated, NewToken};

use std::sync::Arc;

use crate::store::Store;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The application: a cheap handle shared by every request.
#[derive(Clone)]
pub struct App {
    pub store: Store,
    /// The mapping files in force; swapped whole on reload.
    pub mappings: Arc<Mappings>,
}

impl App {
    /// An app with no mapping files: SCIM works, no tenant is mapped.
    pub fn new(store: Store) -> Self {
        App {
            store,
            mappings: Arc::new(Mappings::empty()),
        }
    }

    /// App-level metrics (mapping refusals, cache) in Prometheus text
    /// format, for `/metrics` to append to the HTTP metrics.
    pub fn metrics_text(&self) -> String {
        let mut out = String::from(
            "# HELP rolebridge_mapping_refusals Assignments that mapping limits refused, by tenant and kind.\n\
             # TYPE rolebridge_mapping_refusals gauge\n",
        );
        for ((tenant, kind), n) in self.mappings.refusal_gauge() {
            out.push_str(&format!(
                "rolebridge_mapping_refusals{{tenant=\"{tenant}\",kind=\"{kind}\"}} {n}\n"
            ));
        }
        out
    }

    pub fn with_mappings(store: Store, mappings: Mappings) -> Self {
        App {
            store,
            mappings: Arc::new(mappings),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_have_a_fixed_width() {
        let a = super::now();
        assert_eq!(a.len(), "2026-11-25T02:41:16.123456Z".len(), "{a}");
        assert!(a.ends_with('Z'));
    }
}
