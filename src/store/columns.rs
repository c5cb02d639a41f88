//! Where each SCIM attribute lives in the tables, for the filter renderer:
//! indexed copies for `id`, `userName`, `externalId`, group `displayName` and
//! the `meta` timestamps, `group_members` for `members` and User `groups`,
//! and the JSON document for everything else.

use scim::schema::{Resolved, ResourceKind};
use scim::sql::{Storage, StorageMap};

/// The storage map of a resource table aliased `r`.
pub struct Columns(pub ResourceKind);

impl StorageMap for Columns {
    fn json_column(&self) -> &str {
        "r.data"
    }

    fn storage(&self, resolved: &Resolved) -> Storage {
        let column = |expr: &str, lower: Option<&str>| Storage::Column {
            expr: expr.to_string(),
            lower: lower.map(str::to_string),
        };
        if resolved.extension.is_some() {
            return Storage::Json;
        }
        match (self.0, resolved.attr.name, resolved.sub.map(|s| s.name)) {
            (_, "id", None) => column("r.id", None),
            (_, "externalId", None) => column("r.external_id", None),
            (_, "meta", Some("created")) => column("r.created", None),
            (_, "meta", Some("lastModified")) => column("r.last_modified", None),
            (ResourceKind::User, "userName", None) => column("r.user_name", Some("r.user_name_lc")),
            (ResourceKind::Group, "displayName", None) => {
                column("r.display_name", Some("r.display_name_lc"))
            }
            (ResourceKind::Group, "members", _) => Storage::Relation {
                from: "group_members m".into(),
                join: "m.tenant_id = r.tenant_id AND m.group_id = r.id".into(),
                sub_columns: vec![
                    ("value", "m.member_id".into()),
                    ("type", "m.member_type".into()),
                ],
            },
            (ResourceKind::User, "groups", _) => Storage::Relation {
                from: "group_members m".into(),
                join: "m.tenant_id = r.tenant_id AND m.member_id = r.id".into(),
                sub_columns: vec![("value", "m.group_id".into())],
            },
            _ => Storage::Json,
        }
    }

    /// Client dateTimes (`2011-05-13T04:42:34Z`, with or without fraction or
    /// offset) become the stored fixed-width UTC text, so that comparing text
    /// compares instants.
    fn normalize_datetime(&self, value: &str) -> Option<String> {
        let t = time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339)
            .ok()?;
        crate::domain::format_timestamp(t.to_offset(time::UtcOffset::UTC))
    }
}
