//! SCIM 2.0 (RFC 7643, RFC 7644) as pure data and functions: schemas with
//! their attribute characteristics, the filter and PATCH-path languages, the
//! PATCH engine and attribute projection.
//!
//! Layout:
//! - [`ast`]: filter and PATCH-path syntax trees.
//! - [`error`]: the `scimType` vocabulary ([`ScimType`]).
//! - [`schema`]: the User, Enterprise User and Group schemas; path resolution.
//! - [`filter`]: the filter and PATCH-path parser.
//! - [`sql`]: renders a resolved filter as a parameterised SQL condition.
//! - [`eval`]: evaluates a filter against a JSON resource in memory.
//! - [`patch`]: applies PATCH operations atomically to a JSON resource.
//! - [`projection`]: `attributes` / `excludedAttributes` and `returned`.
//! - [`unknown`]: the rule for attributes no published schema defines.
//!
//! This crate does no IO: it never mentions tokio, sqlx or axum. It lives in
//! its own crate so it can be tested and fuzzed in seconds, apart from the
//! service's heavy dependency tree.
#![deny(clippy::unwrap_used, clippy::panic, clippy::todo)]

pub mod ast;
pub mod error;
pub mod eval;
pub mod filter;
pub mod patch;
pub mod projection;
pub mod schema;
pub mod sql;
pub mod unknown;

pub use error::ScimType;
