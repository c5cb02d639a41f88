//! rolebridge: identity provisioning bridge.
//!
//! Layout, following the data flow:
//! - [`http`]: axum router, auth, SCIM wire format and errors.
//! - [`quota`]: cluster-wide provisioning quotas in Redis (GCRA).
//! - [`app`]: use cases; owns transactions.
//! - [`store`]: sqlx repositories and migrations (SQLite, PostgreSQL).
//! - `scim` (crate `rolebridge-scim`): schemas, filter, PATCH, projection; pure.
//! - [`domain`]: ids and value types.
//! - [`cli`], [`config`], [`telemetry`]: the binary's edges.
#![deny(
    clippy::unwrap_used,
    clippy::panic,
    clippy::todo,
    clippy::await_holding_lock
)]

pub mod app;
pub mod cache;
pub mod cli;
pub mod config;
pub mod domain;
pub mod http;
pub mod quota;
pub mod store;
pub mod sync;
pub mod telemetry;
