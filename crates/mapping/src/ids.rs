//! Identifier newtypes. Owns every id the mapping files define, so a role id can never be passed where a
//! permission id is expected. Imports nothing from the crate. Invariant: an id is compared and ordered
//! by its exact text (ids are lowercase snake_case once validated).

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps a string; whether the id exists is the catalog's question, not the constructor's.
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            /// The id's text, as written in the mapping files.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }
    };
}

id_type!(
    /// A permission of one catalog (`permissions[].id`).
    PermissionId
);
id_type!(
    /// A base or derived (custom) role: catalog `roles[].id` or tenant `custom_roles[].id`.
    RoleId
);
id_type!(
    /// A profile, a named permission set inside one role (`profiles[].id`).
    ProfileId
);
id_type!(
    /// A catalog, equal to its file name without `.yaml`.
    CatalogId
);
id_type!(
    /// A tenant, equal to its mapping file name without `.yaml`.
    TenantName
);
id_type!(
    /// A rule's optional label (`rules[].id`); explain falls back to the rule index.
    RuleId
);

/// Whether `s` is a valid catalog-defined id (`^[a-z][a-z0-9_]*$`), checked once at validation so
/// explain output and API clients can rely on stable, shell-safe ids.
pub(crate) fn is_valid_id(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
}
