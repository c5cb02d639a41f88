//! What a directory source yields: users, groups and deletions in a form
//! that no longer depends on the protocol, keyed by the source's stable id.
//!
//! A source converts each page of raw entries into these records and drops
//! the raw entries at once, so the directory is never held twice.

use serde::{Deserialize, Serialize};

pub use crate::domain::ExternalKey;

/// Users or groups: the SCIM resource kinds, so a source's records, the
/// store's links and the SCIM endpoints name a kind with one type.
pub use scim::schema::ResourceKind as Kind;

/// A user as the directory describes it, already mapped to SCIM attributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalUser {
    /// The stable id (`entryUUID`, `objectGUID` as a canonical GUID string,
    /// a Graph object id). Renames and moves keep it; it is the identity.
    pub key: ExternalKey,
    /// Where the entry lives now (an LDAP DN), for resolving member
    /// references and for display; `None` where the protocol has none.
    pub locator: Option<String>,
    /// The search base (LDAP base DN, or `graph`) the entry was found under;
    /// an empty base that used to hold users trips the deletion guard.
    pub base: String,
    pub user_name: String,
    pub external_id: Option<String>,
    pub display_name: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub emails: Vec<String>,
    pub active: bool,
}

/// How a group names one of its members.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum MemberRef {
    /// By stable id (Graph `members@delta`).
    Key(ExternalKey),
    /// By locator (an LDAP `member`/`uniqueMember` DN).
    Locator(String),
    /// By user name (`posixGroup` `memberUid`).
    UserName(String),
}

/// A group's members: the whole list, or changes to it (Graph delta).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Members {
    Full(Vec<MemberRef>),
    Delta {
        added: Vec<MemberRef>,
        removed: Vec<MemberRef>,
    },
}

/// A group as the directory describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalGroup {
    pub key: ExternalKey,
    pub locator: Option<String>,
    pub base: String,
    pub display_name: String,
    pub external_id: Option<String>,
    pub members: Members,
}

/// One change a source reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// The user as it is now (created or changed).
    User(ExternalUser),
    /// The group as it is now (created or changed).
    Group(ExternalGroup),
    /// A group seen again with member changes only: its other attributes are
    /// unknown on this page (Graph repeats a group across pages).
    GroupMembers {
        key: ExternalKey,
        added: Vec<MemberRef>,
        removed: Vec<MemberRef>,
    },
    /// The entry is gone (or left the source's scope). `kind` is `None` when
    /// the protocol does not say (syncrepl deletes carry only the UUID).
    Deleted {
        key: ExternalKey,
        kind: Option<Kind>,
    },
    /// The entry still exists and did not change (syncrepl present phase).
    Present { key: ExternalKey },
}
