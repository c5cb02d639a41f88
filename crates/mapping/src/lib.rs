//! The mapping engine of rolebridge: role catalogs and tenant group-to-role mappings (`mappings/`,
//! format in `mappings/README.md`), and the effective permissions computed from them.
//!
//! Layout, in data-flow order:
//! - `raw`: YAML text to `Raw*` structs keeping every value's line:column (`marked-yaml`).
//! - `validate`: `Raw*` to `Catalog` and `MappingSet`, collecting every error; `validate_dir` is the
//!   crate's only IO (std::fs).
//! - `catalog`: the validated catalog types. `tenant`: tenant validation (custom roles, tenant
//!   profiles, `account_defaults`) and `CompiledTenant`.
//! - `compile`: per assignable target, the on/off state of each permission and why.
//! - `compute`: `compute_tenant`, conflicts, limits, `implies` and `requires` (catalog-wide and
//!   role-scoped). `explain`: why a permission is there or not.
//!
//! May import: std, serde, regex, marked-yaml, thiserror. Never tokio, sqlx, axum or the service crate.
//! Invariant: nothing outside `validate` can build a `Catalog` or `CompiledTenant`, so computation only
//! ever sees validated mappings.
#![deny(clippy::unwrap_used, clippy::panic, clippy::todo)]

mod catalog;
mod compile;
mod compute;
mod error;
mod explain;
mod ids;
mod raw;
mod tenant;
mod validate;

pub use catalog::{
    Catalog, Configurable, DefaultState, Level, Limits, Permission, Policy, Profile, Role, RoleKind,
};
pub use compile::{CompiledTarget, PermState, StateReason};
pub use compute::{
    compute_tenant, Assignment, Dropped, EffectivePermissions, Grant, GroupFact, LossReason, Lost,
    MatchedGroup, Refusal, RoleRequires, RuleRef, Source, TenantResult, UserFact,
};
pub use error::{ErrorKind, Location, MappingError};
pub use explain::{explain, ExplainError, Explanation, PermissionExplanation, WhyNot};
pub use ids::{CatalogId, PermissionId, ProfileId, RoleId, RuleId, TenantName};
pub use tenant::{CompiledTenant, Matcher, Rule, Target};
pub use validate::{validate_dir, validate_sources, MappingSet};

#[cfg(test)]
mod tests;
