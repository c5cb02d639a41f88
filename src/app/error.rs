//! Application errors: what went wrong, in terms a client can act on. The
//! HTTP layer alone turns them into statuses and SCIM error bodies.

use scim::ScimType;
use thiserror::Error;

use crate::store;

#[derive(Debug, Error)]
pub enum Error {
    #[error("{kind} '{id}' not found")]
    NotFound { kind: &'static str, id: String },
    /// A request SCIM has a `scimType` for (RFC 7644 §3.12): the type
    /// travels typed to `http/error.rs`, which alone picks the status.
    #[error("{1}")]
    Scim(ScimType, String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// No route has this path.
    #[error("no such endpoint: {0}")]
    NoSuchEndpoint(String),
    /// The route exists but not with this method.
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    /// A body declared as a media type the API does not read.
    #[error("{0}")]
    UnsupportedMediaType(String),
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
    /// A mapping set that does not validate: every error, with file,
    /// line and column.
    #[error("{} error(s) in the mappings: {}", .0.len(), .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    MappingInvalid(Vec<mapping::MappingError>),
    /// A mapping change made against a version that is no longer the one
    /// it would replace.
    #[error("the mappings changed since {}: the newest version is {}; plan the change again against it", .base.map(|v| v.to_string()).unwrap_or_else(|| "none".into()), .latest.map(|v| v.to_string()).unwrap_or_else(|| "none".into()))]
    MappingConflict {
        base: Option<crate::domain::MappingVersion>,
        latest: Option<crate::domain::MappingVersion>,
    },
    /// The guard wants the change confirmed with its plan's hash.
    #[error("the change needs confirmation with its plan's hash {hash}: {}", .reasons.join("; "))]
    MappingGuarded { reasons: Vec<String>, hash: String },
    /// The change was confirmed with another plan's hash: what would be
    /// applied is not what was reviewed.
    #[error("the plan changed since it was reviewed (its hash is now {hash}); review the new plan and confirm that")]
    MappingPlanStale { hash: String },
    /// A feed cursor older than retention: the events after it are gone.
    #[error("cursor {cursor} of tenant '{tenant}' is older than the feed's retention (the oldest readable position is {oldest}): list /api/v1/tenants/{tenant}/permissions and read the feed on from its resume_after")]
    CursorExpired {
        tenant: String,
        cursor: crate::domain::ChangeSeq,
        oldest: crate::domain::ChangeSeq,
    },
    /// A feed cursor past the tenant's newest event: not one this feed gave.
    #[error("cursor {cursor} is ahead of tenant '{tenant}''s newest event {head}: pass a cursor this feed returned")]
    CursorAhead {
        tenant: String,
        cursor: crate::domain::ChangeSeq,
        head: crate::domain::ChangeSeq,
    },
    /// A webhook the tenant does not have.
    #[error("tenant '{tenant}' has no webhook '{id}'")]
    UnknownWebhook { tenant: String, id: String },
    /// A bug or corrupt stored state, never the client's fault.
    /// A group commit failed as a whole: this write was rolled back with
    /// the others of its batch and may be retried as it is.
    #[error("the write was not committed ({0}); retry it")]
    NotCommitted(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error(transparent)]
    Store(store::Error),
}

impl Error {
    /// True for an error raised by the database or the server itself, as
    /// opposed to a refusal of the request (a taken name, a failed
    /// precondition, bad input).
    pub(super) fn is_server_side(&self) -> bool {
        matches!(
            self,
            Error::Store(_) | Error::Internal(_) | Error::NotCommitted(_)
        )
    }
}

impl From<store::Error> for Error {
    fn from(err: store::Error) -> Self {
        match err {
            store::Error::Uniqueness { attribute, value } => Error::Scim(
                ScimType::Uniqueness,
                format!("{attribute} '{value}' is already taken in this tenant"),
            ),
            store::Error::Conflict => Error::Conflict,
            // The database undid the write to break a deadlock with a
            // concurrent transaction (a sync apply and a SCIM batch on
            // PostgreSQL): nothing of it was kept; a retry may succeed.
            other if other.is_transient_conflict() => Error::NotCommitted(other.to_string()),
            store::Error::VersionConflict { expected, latest } => Error::MappingConflict {
                base: expected,
                latest,
            },
            other => Error::Store(other),
        }
    }
}

impl From<scim::patch::PatchError> for Error {
    fn from(err: scim::patch::PatchError) -> Self {
        Error::Scim(err.scim_type(), err.to_string())
    }
}
