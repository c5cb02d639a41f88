//! Where each SCIM attribute lives in the tables, for the filter renderer:
//! indexed copies for `id`, `userName`, `externalId`, group `displayName` and
//! the `meta` timestamps, `group_members` for `members` and User `groups`,
//! and the JSON document for everything else. `meta` is not in the stored
//! document (the wire representation adds it): `meta` itself is present on
//! every row, and `meta.resourceType` and `meta.version` are expressions
//! over the row, spelled as responses spell them. (`meta.location` depends
//! on the request's base URL, which filters do not see: it reads as absent.)

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
            // `meta pr`, `meta[...]`: every row has its meta.
            (_, "meta", None) => column("r.created", None),
            (_, "meta", Some("created")) => column("r.created", None),
            (_, "meta", Some("lastModified")) => column("r.last_modified", None),
            (ResourceKind::User, "meta", Some("resourceType")) => column("'User'", None),
            (ResourceKind::Group, "meta", Some("resourceType")) => column("'Group'", None),
            // The weak ETag responses show for the row's version (`W/"3"`).
            (_, "meta", Some("version")) => column("('W/\"' || r.version || '\"')", None),
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
    /// compares instants. What is a dateTime is `scim::eval::datetime_micros`'
    /// rule, so that the evaluator rejects exactly the literals SQL rejects.
    fn normalize_datetime(&self, value: &str) -> Option<String> {
        let micros = scim::eval::datetime_micros(value)?;
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000).ok()?;
        crate::domain::format_timestamp(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scim::filter::parse_filter;
    use scim::sql::{render_filter, Dialect};

    fn sql(kind: ResourceKind, filter: &str) -> Result<String, String> {
        let f = parse_filter(filter).map_err(|e| e.to_string())?;
        render_filter(&f, kind, Dialect::Sqlite, &Columns(kind), 2)
            .map(|c| c.sql)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn datetime_literals_are_what_the_evaluator_accepts() {
        let c = Columns(ResourceKind::User);
        for (literal, stored) in [
            ("2011-05-13T04:42:34Z", "2011-05-13T04:42:34.000000Z"),
            (
                "2011-05-13t06:42:34.1234567+02:00",
                "2011-05-13T04:42:34.123456Z",
            ),
            ("1999-12-31T23:30:00-01:00", "2000-01-01T00:30:00.000000Z"),
        ] {
            assert_eq!(c.normalize_datetime(literal).as_deref(), Some(stored));
        }
        for bad in ["", "2011", "2011-02-30T00:00:00Z", "2016-12-31T23:59:60Z"] {
            assert_eq!(c.normalize_datetime(bad), None, "{bad}");
            assert_eq!(scim::eval::datetime_micros(bad), None, "{bad}");
        }
        assert!(sql(ResourceKind::User, "meta.created gt \"yesterday\"").is_err());
    }

    /// The wire representation adds `meta.resourceType` and `meta.version`;
    /// filters read them from the row, not from the stored document.
    #[test]
    fn meta_attributes_the_document_lacks_are_row_expressions() {
        assert_eq!(
            sql(ResourceKind::User, "meta.resourceType eq \"User\"").as_deref(),
            Ok("'User' = $2")
        );
        assert_eq!(
            sql(ResourceKind::Group, "meta.resourceType pr").as_deref(),
            Ok("('Group' IS NOT NULL AND 'Group' <> '')")
        );
        assert_eq!(
            sql(ResourceKind::User, "meta pr").as_deref(),
            Ok("r.created IS NOT NULL")
        );
        assert_eq!(
            sql(ResourceKind::User, "meta[resourceType eq \"User\"]").as_deref(),
            Ok("(r.created IS NOT NULL AND 'User' = $2)")
        );
        assert!(sql(ResourceKind::User, "meta eq \"x\"").is_err());
        assert_eq!(
            sql(ResourceKind::User, "meta.version eq \"W/\\\"3\\\"\"").as_deref(),
            Ok("('W/\"' || r.version || '\"') = $2")
        );
    }
}
