//! The SCIM error vocabulary (RFC 7644 §3.12): the one list of `scimType`
//! values. Every rejected request carries one of these, typed, from where
//! it is detected ([`crate::patch::PatchError`], [`crate::eval::EvalError`],
//! the filter parser, the service) to the HTTP layer, which alone turns it
//! into a status and an error body.

/// A `scimType` of RFC 7644 §3.12, table 9.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScimType {
    /// The filter syntax is invalid or the filter names an unknown attribute.
    InvalidFilter,
    /// The filter or request selects more resources than allowed.
    TooMany,
    /// A value is already held where it must be unique.
    Uniqueness,
    /// The attribute may not be modified (readOnly, immutable).
    Mutability,
    /// The request body is not well-formed, or violates the schema's shape.
    InvalidSyntax,
    /// The PATCH path is malformed or names nothing.
    InvalidPath,
    /// The PATCH path selects nothing and the operation cannot create it.
    NoTarget,
    /// A value is missing, of the wrong type, or not acceptable.
    InvalidValue,
    /// The protocol version is not supported.
    InvalidVers,
    /// The request carries sensitive data in the URL.
    Sensitive,
}

impl ScimType {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ScimType::InvalidFilter => "invalidFilter",
            ScimType::TooMany => "tooMany",
            ScimType::Uniqueness => "uniqueness",
            ScimType::Mutability => "mutability",
            ScimType::InvalidSyntax => "invalidSyntax",
            ScimType::InvalidPath => "invalidPath",
            ScimType::NoTarget => "noTarget",
            ScimType::InvalidValue => "invalidValue",
            ScimType::InvalidVers => "invalidVers",
            ScimType::Sensitive => "sensitive",
        }
    }
}

impl std::fmt::Display for ScimType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
