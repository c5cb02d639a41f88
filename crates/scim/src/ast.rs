//! The syntax trees of SCIM filters (RFC 7644 §3.4.2.2) and PATCH paths
//! (RFC 7644 §3.5.2), shared by the parser, the SQL renderer and the
//! in-memory evaluator.
//!
//! Names are kept exactly as the client wrote them; [`crate::schema`]
//! resolves them (case-insensitively, per RFC 7643 §2.1) to canonical
//! attributes. Keeping parse and resolve apart lets one parser serve both
//! Users and Groups.

use serde_json::Number;

/// `attrPath = [URI ":"] ATTRNAME *1subAttr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttrPath {
    /// The schema URN prefix, when the client qualified the attribute
    /// (`urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber`).
    pub schema: Option<String>,
    /// The attribute name as written.
    pub attr: String,
    /// The sub-attribute name as written (`name.givenName`).
    pub sub_attr: Option<String>,
}

impl AttrPath {
    /// A path with no schema URN and no sub-attribute.
    pub fn simple(attr: impl Into<String>) -> Self {
        AttrPath {
            schema: None,
            attr: attr.into(),
            sub_attr: None,
        }
    }
}

impl std::fmt::Display for AttrPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(schema) = &self.schema {
            write!(f, "{schema}:")?;
        }
        f.write_str(&self.attr)?;
        if let Some(sub) = &self.sub_attr {
            write!(f, ".{sub}")?;
        }
        Ok(())
    }
}

/// The attribute operators of RFC 7644 Table 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareOp {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Ge,
    Lt,
    Le,
}

impl CompareOp {
    /// The operator as a filter spells it (lower case), for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            CompareOp::Eq => "eq",
            CompareOp::Ne => "ne",
            CompareOp::Co => "co",
            CompareOp::Sw => "sw",
            CompareOp::Ew => "ew",
            CompareOp::Gt => "gt",
            CompareOp::Ge => "ge",
            CompareOp::Lt => "lt",
            CompareOp::Le => "le",
        }
    }
}

/// `compValue = false / null / true / number / string`.
#[derive(Debug, Clone, PartialEq)]
pub enum CompValue {
    Null,
    Bool(bool),
    Number(Number),
    String(String),
}

/// A filter expression. Inside [`Filter::ValuePath`] the inner filter's
/// paths are relative to the multi-valued attribute: `emails[type eq "work"]`
/// has inner path `type`.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// `attrPath pr`.
    Present(AttrPath),
    /// `attrPath compareOp compValue`.
    Compare(AttrPath, CompareOp, CompValue),
    /// `attrPath "[" valFilter "]"`.
    ValuePath(AttrPath, Box<Filter>),
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
}

/// A PATCH `path` (RFC 7644 §3.5.2):
/// `attrPath / valuePath [subAttr]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PatchPath {
    /// The targeted attribute, possibly with a sub-attribute when there is
    /// no value filter (`name.givenName`).
    pub attr: AttrPath,
    /// The value filter selecting elements of a multi-valued attribute
    /// (`emails[type eq "work"]`); its paths are relative to `attr`.
    pub filter: Option<Filter>,
    /// The sub-attribute after a value filter (`emails[type eq "work"].value`).
    pub sub_attr: Option<String>,
}
