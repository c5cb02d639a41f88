//! Application errors: what went wrong, in terms a client can act on. The
//! HTTP layer alone turns them into statuses and SCIM error bodies.

use thiserror::Error;

use crate::store;

#[derive(Debug, Error)]
pub enum Error {
    #[error("{kind} '{id}' not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{0}")]
    InvalidSyntax(String),
    #[error("{0}")]
    InvalidValue(String),
    #[error("{0}")]
    InvalidFilter(String),
    #[error("{0}")]
    InvalidPath(String),
    #[error("{0}")]
    NoTarget(String),
    #[error("{0}")]
    Mutability(String),
    #[error("{0}")]
    Uniqueness(String),
    #[error("{0}")]
    TooMany(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("resource version is {current}, not {expected} (If-Match)")]
    PreconditionFailed { expected: String, current: String },
    #[error("the resource changed while this request ran; retry it")]
    Conflict,
    #[error("missing or invalid bearer token")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Usage(String),
    #[error("tenant '{0}' has no mapping file (mappings/tenants/{0}.yaml)")]
    TenantNotMapped(String),
    #[error("user '{0}' not found in this tenant")]
    UnknownUser(String),
    #[error("{0}")]
    UnknownPermission(String),
    /// A check asked for a revision the tenant has not reached.
    #[error("revision {wanted} is ahead of the tenant's revision {current}: use a revision a write to this tenant returned")]
    RevisionAhead { wanted: i64, current: i64 },
    /// A bug or corrupt stored state, never the client's fault.
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Store(store::Error),
}

impl From<store::Error> for Error {
    fn from(err: store::Error) -> Self {
        match err {
            store::Error::Uniqueness { attribute, value } => Error::Uniqueness(format!(
                "{attribute} '{value}' is already taken in this tenant"
            )),
            store::Error::Conflict => Error::Conflict,
            other => Error::Store(other),
        }
    }
}

impl From<scim::patch::PatchError> for Error {
    fn from(err: scim::patch::PatchError) -> Self {
        let msg = err.to_string();
        match err.scim_type() {
            "invalidPath" => Error::InvalidPath(msg),
            "noTarget" => Error::NoTarget(msg),
            "mutability" => Error::Mutability(msg),
            "invalidFilter" => Error::InvalidFilter(msg),
            "invalidSyntax" => Error::InvalidSyntax(msg),
            _ => Error::InvalidValue(msg),
        }
    }
}
