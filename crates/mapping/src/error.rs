//! Validation errors of mapping files. Owns `MappingError` and `Location`; imports only `ids`.
//! Invariant: every error carries the file, line and column of the offending value, and its message is
//! lowercase, has no trailing period and quotes the value.

use serde::Serialize;
use std::fmt;

/// A position in a mapping file, 1-based, as editors show it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Location {
    /// The file name as given to `validate_sources` or joined from the directory by `validate_dir`.
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// One problem in one mapping file. Validation returns all of them, never just the first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{at}: {kind}")]
pub struct MappingError {
    pub at: Location,
    pub kind: ErrorKind,
}

/// What is wrong; the `Display` is the message after `file:line:column: `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ErrorKind {
    #[error("cannot read file: {0}")]
    Io(String),
    #[error("yaml syntax error: {0}")]
    Yaml(String),
    #[error("duplicate key '{0}'")]
    DuplicateKey(String),
    #[error("unknown key '{key}' in {context} (expected one of: {expected})")]
    UnknownKey {
        key: String,
        context: String,
        expected: String,
    },
    #[error("{context} is missing required key '{key}'")]
    MissingKey { context: String, key: String },
    #[error("'{key}' must be {expected}")]
    WrongType { key: String, expected: String },
    #[error("bad value '{value}' for '{key}': expected {expected}")]
    BadValue {
        key: String,
        value: String,
        expected: String,
    },
    #[error("bad {what} id '{id}': ids are lowercase snake_case (^[a-z][a-z0-9_]*$)")]
    BadId { what: String, id: String },
    #[error("duplicate {what} id '{id}' (first defined at {first})")]
    DuplicateId {
        what: String,
        id: String,
        first: String,
    },
    #[error("{context} names unknown permission '{permission}'")]
    UnknownPermission { context: String, permission: String },
    #[error("{context} names unknown role '{role}'")]
    UnknownRole { context: String, role: String },
    #[error("{context} names unknown profile '{profile}'")]
    UnknownProfile { context: String, profile: String },
    #[error("{context} names unknown custom role '{role}'")]
    UnknownCustomRole { context: String, role: String },
    #[error("{context} names '{id}', which is {actual}; list it under '{expected_key}'")]
    WrongAssignKind {
        context: String,
        id: String,
        actual: String,
        expected_key: String,
    },
    #[error("{context} lists '{permission}' more than once")]
    DuplicatePermission { context: String, permission: String },
    #[error("role '{role}' lists '{permission}' as both core and configurable")]
    CoreAndConfigurable { role: String, permission: String },
    #[error("{context} disables core permission '{permission}' of role '{role}'; core permissions can never be disabled")]
    DisablesCore {
        context: String,
        permission: String,
        role: String,
    },
    #[error("{context} toggles core permission '{permission}' of role '{role}'; core permissions are always on, remove the toggle")]
    TogglesCore {
        context: String,
        permission: String,
        role: String,
    },
    #[error("{context} toggles '{permission}', which role '{role}' does not list as configurable")]
    ToggleNotInRole {
        context: String,
        permission: String,
        role: String,
    },
    #[error("requires cycle: {0}")]
    RequiresCycle(String),
    #[error("{context} implies itself; remove '{permission}' from its 'implies'")]
    ImpliesItself { context: String, permission: String },
    #[error("{context} implies '{permission}', which role '{role}' does not list; a role-scoped 'implies' only grants permissions of its role (put 'implies' on the permission itself to grant it in every role)")]
    ImpliedNotInRole {
        context: String,
        permission: String,
        role: String,
    },
    #[error("account_defaults names '{permission}', a core permission of {roles} and 'default: account' in no role; core permissions are always on, so an account default would change nothing")]
    AccountDefaultCore { permission: String, roles: String },
    #[error("account_defaults names '{permission}', which is 'default: account' in no role of catalog '{catalog}' ({defaults}); account_defaults only decides 'default: account' entries")]
    AccountDefaultNotAccount {
        permission: String,
        catalog: String,
        defaults: String,
    },
    #[error("{context} has base '{base}', which is itself a derived role; use its base role '{base_of_base}'")]
    BaseIsDerived {
        context: String,
        base: String,
        base_of_base: String,
    },
    #[error("{context} must be a base role, but '{role}' is a derived role")]
    NotABaseRole { context: String, role: String },
    #[error("derived role '{role}' has '{key}'; a derived role only has 'base' and 'toggles'")]
    DerivedWithPermissions { role: String, key: String },
    #[error("role '{0}' has neither 'core'/'configurable' nor 'base'")]
    EmptyRole(String),
    #[error("catalog id '{id}' does not match the file name '{stem}'")]
    CatalogIdMismatch { id: String, stem: String },
    #[error("unknown catalog '{catalog}' (known: {known})")]
    UnknownCatalog { catalog: String, known: String },
    #[error("bad regex '{pattern}': {error}")]
    BadRegex { pattern: String, error: String },
    #[error("{0} must match on at least one of 'display_name', 'external_id', 'dn', 'name_regex'")]
    EmptyMatch(String),
    #[error("{0} assigns nothing; give 'roles', 'profiles' or 'custom_roles'")]
    EmptyAssign(String),
    #[error("'{0}' is neither a catalog (catalogs/*.yaml) nor a tenant mapping (tenants/*.yaml)")]
    UnknownFileKind(String),
    #[error("bad tenant name '{0}': use lowercase letters, digits, '-' and '_'")]
    BadTenantName(String),
}
