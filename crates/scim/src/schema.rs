//! The SCIM schemas this server implements (RFC 7643 §4 and §8.7.1), with the
//! attribute characteristics that the server enforces: `mutability`,
//! `returned`, `uniqueness`, `caseExact`, `required`, `multiValued`, `type`.
//!
//! These definitions are the single source of truth: `/Schemas` serialises
//! them, the filter renderer reads `caseExact` and `type` from them, the PATCH
//! engine reads `multiValued` and `mutability`, and projection reads
//! `returned`. Nothing else hard-codes attribute behaviour.

use std::sync::LazyLock;

use serde_json::{json, Map, Value};

use crate::ast::AttrPath;

/// URN of the core User schema.
pub const USER_URN: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
/// URN of the core Group schema.
pub const GROUP_URN: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
/// URN of the Enterprise User extension (RFC 7643 §4.3).
pub const ENTERPRISE_URN: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
/// URN of list responses.
pub const LIST_RESPONSE_URN: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
/// URN of error responses.
pub const ERROR_URN: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
/// URN of PATCH requests.
pub const PATCH_OP_URN: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
/// URN of `POST /.search` requests.
pub const SEARCH_REQUEST_URN: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";
/// URN of bulk requests.
pub const BULK_REQUEST_URN: &str = "urn:ietf:params:scim:api:messages:2.0:BulkRequest";
/// URN of bulk responses.
pub const BULK_RESPONSE_URN: &str = "urn:ietf:params:scim:api:messages:2.0:BulkResponse";

/// `type` of an attribute (RFC 7643 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttrType {
    String,
    Boolean,
    Decimal,
    Integer,
    DateTime,
    Binary,
    Reference,
    Complex,
}

impl AttrType {
    /// The RFC spelling used in `/Schemas`.
    pub fn as_str(self) -> &'static str {
        match self {
            AttrType::String => "string",
            AttrType::Boolean => "boolean",
            AttrType::Decimal => "decimal",
            AttrType::Integer => "integer",
            AttrType::DateTime => "dateTime",
            AttrType::Binary => "binary",
            AttrType::Reference => "reference",
            AttrType::Complex => "complex",
        }
    }

    /// Whether values are compared as strings (and so honour `caseExact`).
    pub fn is_textual(self) -> bool {
        matches!(
            self,
            AttrType::String | AttrType::Reference | AttrType::Binary | AttrType::DateTime
        )
    }
}

/// `mutability` (RFC 7643 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutability {
    ReadOnly,
    ReadWrite,
    Immutable,
    WriteOnly,
}

impl Mutability {
    pub fn as_str(self) -> &'static str {
        match self {
            Mutability::ReadOnly => "readOnly",
            Mutability::ReadWrite => "readWrite",
            Mutability::Immutable => "immutable",
            Mutability::WriteOnly => "writeOnly",
        }
    }
}

/// `returned` (RFC 7643 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Returned {
    Always,
    Never,
    Default,
    Request,
}

impl Returned {
    pub fn as_str(self) -> &'static str {
        match self {
            Returned::Always => "always",
            Returned::Never => "never",
            Returned::Default => "default",
            Returned::Request => "request",
        }
    }
}

/// `uniqueness` (RFC 7643 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Uniqueness {
    None,
    Server,
    Global,
}

impl Uniqueness {
    pub fn as_str(self) -> &'static str {
        match self {
            Uniqueness::None => "none",
            Uniqueness::Server => "server",
            Uniqueness::Global => "global",
        }
    }
}

/// One attribute definition.
#[derive(Debug, Clone)]
pub struct Attribute {
    pub name: &'static str,
    pub kind: AttrType,
    pub multi_valued: bool,
    pub required: bool,
    pub case_exact: bool,
    pub mutability: Mutability,
    pub returned: Returned,
    pub uniqueness: Uniqueness,
    pub description: &'static str,
    pub canonical_values: &'static [&'static str],
    pub reference_types: &'static [&'static str],
    pub sub_attributes: Vec<Attribute>,
}

impl Attribute {
    /// The sub-attribute called `name`, compared case-insensitively
    /// (RFC 7643 §2.1: attribute names are case-insensitive).
    pub fn sub(&self, name: &str) -> Option<&Attribute> {
        self.sub_attributes
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(name))
    }

    /// The `/Schemas` representation.
    pub fn to_json(&self) -> Value {
        let mut m = Map::new();
        m.insert("name".into(), json!(self.name));
        m.insert("type".into(), json!(self.kind.as_str()));
        m.insert("multiValued".into(), json!(self.multi_valued));
        m.insert("description".into(), json!(self.description));
        m.insert("required".into(), json!(self.required));
        if self.kind.is_textual() {
            m.insert("caseExact".into(), json!(self.case_exact));
        }
        if !self.canonical_values.is_empty() {
            m.insert("canonicalValues".into(), json!(self.canonical_values));
        }
        if !self.reference_types.is_empty() {
            m.insert("referenceTypes".into(), json!(self.reference_types));
        }
        m.insert("mutability".into(), json!(self.mutability.as_str()));
        m.insert("returned".into(), json!(self.returned.as_str()));
        m.insert("uniqueness".into(), json!(self.uniqueness.as_str()));
        if !self.sub_attributes.is_empty() {
            m.insert(
                "subAttributes".into(),
                Value::Array(self.sub_attributes.iter().map(Attribute::to_json).collect()),
            );
        }
        Value::Object(m)
    }
}

/// One schema: core or extension.
#[derive(Debug, Clone)]
pub struct Schema {
    pub id: &'static str,
    pub name: &'static str,
    pub description: &'static str,
    pub attributes: Vec<Attribute>,
}

impl Schema {
    /// The attribute called `name`, case-insensitively.
    pub fn attribute(&self, name: &str) -> Option<&Attribute> {
        self.attributes
            .iter()
            .find(|a| a.name.eq_ignore_ascii_case(name))
    }

    /// The `/Schemas/{id}` representation; `base` is the tenant's SCIM base URL.
    pub fn to_json(&self, base: &str) -> Value {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
            "id": self.id,
            "name": self.name,
            "description": self.description,
            "attributes": self.attributes.iter().map(Attribute::to_json).collect::<Vec<_>>(),
            "meta": {
                "resourceType": "Schema",
                "location": format!("{base}/Schemas/{}", self.id),
            }
        })
    }
}

/// The resource types this server serves.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum ResourceKind {
    User,
    Group,
}

impl ResourceKind {
    /// The `resourceType` name and endpoint stem.
    pub fn name(self) -> &'static str {
        match self {
            ResourceKind::User => "User",
            ResourceKind::Group => "Group",
        }
    }

    /// The endpoint, relative to the base URL.
    pub fn endpoint(self) -> &'static str {
        match self {
            ResourceKind::User => "/Users",
            ResourceKind::Group => "/Groups",
        }
    }

    /// The core schema.
    pub fn core_schema(self) -> &'static Schema {
        match self {
            ResourceKind::User => &USER_SCHEMA,
            ResourceKind::Group => &GROUP_SCHEMA,
        }
    }

    /// The extension schemas this resource type accepts.
    pub fn extensions(self) -> &'static [&'static Schema] {
        static USER_EXT: LazyLock<[&'static Schema; 1]> = LazyLock::new(|| [&*ENTERPRISE_SCHEMA]);
        match self {
            ResourceKind::User => &*USER_EXT,
            ResourceKind::Group => &[],
        }
    }

    /// The extension schema whose URN is `urn` (case-insensitively).
    pub fn extension(self, urn: &str) -> Option<&'static Schema> {
        self.extensions()
            .iter()
            .copied()
            .find(|s| s.id.eq_ignore_ascii_case(urn))
    }

    /// Whether `urn` names an extension this server publishes no schema for
    /// (Entra's `urn:ietf:params:scim:schemas:extension:CustomExtensionName:2.0:User`,
    /// an Okta app's custom URN). Its attributes are kept as sent, can be
    /// patched and filtered, and the URN is listed in the resource's
    /// `schemas`; see [`crate::patch`] for the whole rule.
    ///
    /// Not one: the core URN, a published extension, the server's own
    /// namespace ([`Self::is_server_owned`]), any other
    /// `urn:ietf:params:scim:` URN outside `...:schemas:extension:`
    /// (message and core schemas), a proper prefix of a published schema
    /// (`...:enterprise:2.0` is what the typo `...:2.0:User.manager` parses
    /// to, and must stay `invalidPath`), a path inside a published schema,
    /// and URNs with characters that cannot name a JSON key in SQL.
    /// Whether `urn` is in the namespace the service itself writes
    /// (`urn:rolebridge:`, where directory sync records a resource's source
    /// and DN). Clients can read it but never write it: mapping rules match
    /// on it, so a client that could set it could claim a directory's
    /// groups.
    pub fn is_server_owned(urn: &str) -> bool {
        const OWNED: &str = "urn:rolebridge:";
        urn.get(..OWNED.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(OWNED))
    }

    pub fn is_custom_extension(self, urn: &str) -> bool {
        const SCIM: &str = "urn:ietf:params:scim:";
        const EXTENSION: &str = "urn:ietf:params:scim:schemas:extension:";
        let starts = |s: &str, prefix: &str| {
            s.get(..prefix.len())
                .is_some_and(|h| h.eq_ignore_ascii_case(prefix))
        };
        let well_formed = urn.len() <= 256
            && starts(urn, "urn:")
            && urn.split(':').count() >= 3
            && urn.split(':').all(|seg| !seg.is_empty())
            && urn
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'.' | b'_' | b'-'));
        well_formed
            && !Self::is_server_owned(urn)
            && (!starts(urn, SCIM) || starts(urn, EXTENSION))
            && !urn.eq_ignore_ascii_case(self.core_schema().id)
            && self.extension(urn).is_none()
            && !all_schemas().iter().any(|s| {
                // A proper prefix of a published schema, or a path inside
                // one (`...:enterprise:2.0:User:employeeNumber`).
                (s.id.len() > urn.len() && starts(s.id, urn))
                    || (urn.len() > s.id.len() && starts(urn, s.id))
            })
    }

    /// The `/ResourceTypes/{name}` representation.
    pub fn resource_type_json(self, base: &str) -> Value {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
            "id": self.name(),
            "name": self.name(),
            "endpoint": self.endpoint(),
            "description": match self { ResourceKind::User => "User Account", ResourceKind::Group => "Group" },
            "schema": self.core_schema().id,
            "schemaExtensions": self.extensions().iter().map(|s| json!({"schema": s.id, "required": false})).collect::<Vec<_>>(),
            "meta": {
                "resourceType": "ResourceType",
                "location": format!("{base}/ResourceTypes/{}", self.name()),
            }
        })
    }

    /// Resolves a client-written path to its definition. Paths may be
    /// qualified by the core or an extension URN; unqualified paths look in
    /// the common attributes (RFC 7643 §3.1) and then the core schema.
    pub fn resolve(self, path: &AttrPath) -> Result<Resolved, ResolveError> {
        let (schema, attr) = match &path.schema {
            Some(urn) if urn.eq_ignore_ascii_case(self.core_schema().id) => {
                let attr = common_attribute(&path.attr)
                    .or_else(|| self.core_schema().attribute(&path.attr));
                (None, attr)
            }
            Some(urn) => match self.extension(urn) {
                Some(ext) => (Some(ext), ext.attribute(&path.attr)),
                None => return Err(ResolveError::UnknownSchema(urn.clone())),
            },
            None => {
                let attr = common_attribute(&path.attr)
                    .or_else(|| self.core_schema().attribute(&path.attr));
                (None, attr)
            }
        };
        let attr = attr.ok_or_else(|| ResolveError::UnknownAttribute(path.to_string()))?;
        let sub = match &path.sub_attr {
            None => None,
            Some(name) => Some(
                attr.sub(name)
                    .ok_or_else(|| ResolveError::UnknownAttribute(path.to_string()))?,
            ),
        };
        Ok(Resolved {
            extension: schema.map(|s| s.id),
            attr,
            sub,
        })
    }
}

/// A path resolved to its schema definitions.
#[derive(Debug, Clone, Copy)]
pub struct Resolved {
    /// The extension URN under which the attribute is stored, or `None` for
    /// core and common attributes (stored at the top level).
    pub extension: Option<&'static str>,
    pub attr: &'static Attribute,
    pub sub: Option<&'static Attribute>,
}

impl Resolved {
    /// The definition that governs the value at the end of the path.
    pub fn leaf(&self) -> &'static Attribute {
        self.sub.unwrap_or(self.attr)
    }

    /// Keys from the resource root to the value, with canonical names; a
    /// multi-valued `attr` is an array at `[.., attr.name]`.
    pub fn json_keys(&self) -> Vec<&'static str> {
        let mut keys = Vec::with_capacity(3);
        if let Some(urn) = self.extension {
            keys.push(urn);
        }
        keys.push(self.attr.name);
        if let Some(sub) = self.sub {
            keys.push(sub.name);
        }
        keys
    }
}

/// Why a path did not resolve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    #[error("unknown attribute '{0}'")]
    UnknownAttribute(String),
    #[error("unknown schema '{0}'")]
    UnknownSchema(String),
}

/// The common attributes of RFC 7643 §3.1, which belong to no schema.
pub fn common_attribute(name: &str) -> Option<&'static Attribute> {
    COMMON.iter().find(|a| a.name.eq_ignore_ascii_case(name))
}

/// The form in which case-insensitive text is compared: Unicode NFC, then
/// lowercased (and NFC again, since lowercasing can decompose). So
/// `José.Müller` typed as NFC and as NFD (`e` + U+0301) is one userName.
pub fn fold_case(s: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let lower = s.nfc().collect::<String>().to_lowercase();
    lower.nfc().collect()
}

/// The definition used for an attribute of a custom extension
/// ([`ResourceKind::is_custom_extension`]), which has no schema: its type
/// is read from the filter operand (`kind`), strings compare
/// case-insensitively, and it is single-valued.
pub fn schemaless(kind: AttrType) -> &'static Attribute {
    static DEFS: LazyLock<[Attribute; 3]> = LazyLock::new(|| {
        let d = "An attribute of an extension without a published schema.";
        [
            a("extension attribute", AttrType::String, d),
            a("extension attribute", AttrType::Decimal, d),
            a("extension attribute", AttrType::Boolean, d),
        ]
    });
    match kind {
        AttrType::Boolean => &DEFS[2],
        AttrType::Integer | AttrType::Decimal => &DEFS[1],
        _ => &DEFS[0],
    }
}

/// Every schema, for `/Schemas`.
pub fn all_schemas() -> [&'static Schema; 3] {
    [&*USER_SCHEMA, &*GROUP_SCHEMA, &*ENTERPRISE_SCHEMA]
}

// ---- definitions -------------------------------------------------------

/// Builder shorthand: most attributes are optional, single-valued,
/// case-insensitive, readWrite, returned by default, not unique.
fn a(name: &'static str, kind: AttrType, description: &'static str) -> Attribute {
    Attribute {
        name,
        kind,
        multi_valued: false,
        required: false,
        case_exact: false,
        mutability: Mutability::ReadWrite,
        returned: Returned::Default,
        uniqueness: Uniqueness::None,
        description,
        canonical_values: &[],
        reference_types: &[],
        sub_attributes: Vec::new(),
    }
}

fn s(name: &'static str, description: &'static str) -> Attribute {
    a(name, AttrType::String, description)
}

impl Attribute {
    fn multi(mut self) -> Self {
        self.multi_valued = true;
        self
    }
    fn required(mut self) -> Self {
        self.required = true;
        self
    }
    fn case_exact(mut self) -> Self {
        self.case_exact = true;
        self
    }
    fn mutability(mut self, m: Mutability) -> Self {
        self.mutability = m;
        self
    }
    fn returned(mut self, r: Returned) -> Self {
        self.returned = r;
        self
    }
    fn unique(mut self, u: Uniqueness) -> Self {
        self.uniqueness = u;
        self
    }
    fn canonical(mut self, v: &'static [&'static str]) -> Self {
        self.canonical_values = v;
        self
    }
    fn refs(mut self, v: &'static [&'static str]) -> Self {
        self.reference_types = v;
        self
    }
    fn subs(mut self, subs: Vec<Attribute>) -> Self {
        self.sub_attributes = subs;
        self
    }
}

/// The standard sub-attributes of a multi-valued attribute (RFC 7643 §2.4).
fn multi_valued_std(
    name: &'static str,
    description: &'static str,
    value: Attribute,
    types: &'static [&'static str],
) -> Attribute {
    let mut subs = vec![
        value,
        s("display", "A human-readable name, primarily used for display purposes."),
        s("type", "A label indicating the attribute's function.").canonical(types),
        a(
            "primary",
            AttrType::Boolean,
            "A Boolean value indicating the 'primary' or preferred attribute value for this attribute.",
        ),
    ];
    if types.is_empty() {
        subs[2].canonical_values = &[];
    }
    a(name, AttrType::Complex, description).multi().subs(subs)
}

static COMMON: LazyLock<Vec<Attribute>> = LazyLock::new(|| {
    use Mutability::*;
    vec![
        s(
            "id",
            "Unique identifier for the SCIM resource as defined by the service provider.",
        )
        .case_exact()
        .mutability(ReadOnly)
        .returned(Returned::Always)
        .unique(Uniqueness::Server),
        s(
            "externalId",
            "Identifier for the resource as defined by the provisioning client. Not unique: \
             several resources may share one (RFC 7643 gives it no uniqueness).",
        )
        .case_exact(),
        a("meta", AttrType::Complex, "Resource metadata.")
            .mutability(ReadOnly)
            .subs(vec![
                s(
                    "resourceType",
                    "The name of the resource type of the resource.",
                )
                .case_exact()
                .mutability(ReadOnly),
                a(
                    "created",
                    AttrType::DateTime,
                    "The DateTime that the resource was added.",
                )
                .mutability(ReadOnly),
                a(
                    "lastModified",
                    AttrType::DateTime,
                    "The most recent DateTime that the details of this resource were updated.",
                )
                .mutability(ReadOnly),
                a(
                    "location",
                    AttrType::Reference,
                    "The URI of the resource being returned.",
                )
                .case_exact()
                .mutability(ReadOnly),
                s("version", "The version of the resource being returned.")
                    .case_exact()
                    .mutability(ReadOnly),
            ]),
    ]
});

static USER_SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    use Mutability::*;
    let addr_types: &'static [&'static str] = &["work", "home", "other"];
    Schema {
        id: USER_URN,
        name: "User",
        description: "User Account. userName is unique per tenant (case-insensitively); \
                      externalId is not unique. Attributes no published schema defines are \
                      ignored; attributes of a custom extension URN are kept.",
        attributes: vec![
            s("userName", "Unique identifier for the User, typically used by the user to directly authenticate to the service provider.")
                .required()
                .unique(Uniqueness::Server),
            a("name", AttrType::Complex, "The components of the user's real name.").subs(vec![
                s("formatted", "The full name, including all middle names, titles, and suffixes as appropriate, formatted for display."),
                s("familyName", "The family name of the User."),
                s("givenName", "The given name of the User."),
                s("middleName", "The middle name(s) of the User."),
                s("honorificPrefix", "The honorific prefix(es) of the User."),
                s("honorificSuffix", "The honorific suffix(es) of the User."),
            ]),
            s("displayName", "The name of the User, suitable for display to end-users."),
            s("nickName", "The casual way to address the user in real life."),
            a("profileUrl", AttrType::Reference, "A fully qualified URL pointing to a page representing the User's online profile.").refs(&["external"]),
            s("title", "The user's title, such as \"Vice President\"."),
            s("userType", "Used to identify the relationship between the organization and the user."),
            s("preferredLanguage", "Indicates the User's preferred written or spoken language."),
            s("locale", "Used to indicate the User's default location for purposes of localizing items."),
            s("timezone", "The User's time zone in the 'Olson' time zone database format."),
            a("active", AttrType::Boolean, "A Boolean value indicating the User's administrative status."),
            s("password", "The User's cleartext password, write-only: stored hashed and never returned.")
                .case_exact()
                .mutability(WriteOnly)
                .returned(Returned::Never),
            multi_valued_std("emails", "Email addresses for the user.", s("value", "Email addresses for the user."), &["work", "home", "other"]),
            multi_valued_std("phoneNumbers", "Phone numbers for the User.", s("value", "Phone number of the User."), &["work", "home", "mobile", "fax", "pager", "other"]),
            multi_valued_std("ims", "Instant messaging addresses for the User.", s("value", "Instant messaging address for the User."), &["aim", "gtalk", "icq", "xmpp", "msn", "skype", "qq", "yahoo"]),
            multi_valued_std("photos", "URLs of photos of the User.", a("value", AttrType::Reference, "URL of a photo of the User.").case_exact().refs(&["external"]), &["photo", "thumbnail"]),
            a("addresses", AttrType::Complex, "A physical mailing address for this User.").multi().subs(vec![
                s("formatted", "The full mailing address, formatted for display or use with a mailing label."),
                s("streetAddress", "The full street address component."),
                s("locality", "The city or locality component."),
                s("region", "The state or region component."),
                s("postalCode", "The zip code or postal code component."),
                s("country", "The country name component."),
                s("type", "A label indicating the attribute's function.").canonical(addr_types),
                a("primary", AttrType::Boolean, "A Boolean value indicating the 'primary' or preferred address."),
            ]),
            a("groups", AttrType::Complex, "A list of groups to which the user belongs, either through direct membership or through nested groups.")
                .multi()
                .mutability(ReadOnly)
                .subs(vec![
                    s("value", "The identifier of the User's group.").mutability(ReadOnly),
                    a("$ref", AttrType::Reference, "The URI of the corresponding 'Group' resource.").refs(&["User", "Group"]).mutability(ReadOnly),
                    s("display", "A human-readable name, primarily used for display purposes.").mutability(ReadOnly),
                    s("type", "A label indicating the attribute's function.").canonical(&["direct", "indirect"]).mutability(ReadOnly),
                ]),
            multi_valued_std("entitlements", "A list of entitlements for the User.", s("value", "The value of an entitlement."), &[]),
            multi_valued_std("roles", "A list of roles for the User.", s("value", "The value of a role."), &[]),
            multi_valued_std("x509Certificates", "A list of certificates issued to the User.", a("value", AttrType::Binary, "The value of an X.509 certificate.").case_exact(), &[]),
        ],
    }
});

static ENTERPRISE_SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
    id: ENTERPRISE_URN,
    name: "EnterpriseUser",
    description: "Enterprise User",
    attributes: vec![
        s(
            "employeeNumber",
            "Numeric or alphanumeric identifier assigned to a person.",
        ),
        s("costCenter", "Identifies the name of a cost center."),
        s("organization", "Identifies the name of an organization."),
        s("division", "Identifies the name of a division."),
        s("department", "Identifies the name of a department."),
        a("manager", AttrType::Complex, "The User's manager.").subs(vec![
            s(
                "value",
                "The id of the SCIM resource representing the User's manager.",
            ),
            a(
                "$ref",
                AttrType::Reference,
                "The URI of the SCIM resource representing the User's manager.",
            )
            .refs(&["User"]),
            s("displayName", "The displayName of the User's manager.")
                .mutability(Mutability::ReadOnly),
        ]),
    ],
});

static GROUP_SCHEMA: LazyLock<Schema> = LazyLock::new(|| Schema {
    id: GROUP_URN,
    name: "Group",
    description: "Group. Neither displayName nor externalId is unique. Attributes no \
                  published schema defines are ignored; attributes of a custom extension URN \
                  are kept.",
    attributes: vec![
        s("displayName", "A human-readable name for the Group.").required(),
        a(
            "members",
            AttrType::Complex,
            "A list of members of the Group.",
        )
        .multi()
        .subs(vec![
            s("value", "Identifier of the member of this Group.")
                .case_exact()
                .mutability(Mutability::Immutable),
            a(
                "$ref",
                AttrType::Reference,
                "The URI corresponding to a SCIM resource that is a member of this Group.",
            )
            .refs(&["User", "Group"])
            .mutability(Mutability::Immutable),
            s("display", "A human-readable name for the member.").mutability(Mutability::ReadOnly),
            s("type", "A label indicating the type of resource.")
                .canonical(&["User", "Group"])
                .mutability(Mutability::Immutable),
        ]),
    ],
});

#[cfg(test)]
mod tests {
    use super::*;

    fn path(schema: Option<&str>, attr: &str, sub: Option<&str>) -> AttrPath {
        AttrPath {
            schema: schema.map(str::to_string),
            attr: attr.into(),
            sub_attr: sub.map(str::to_string),
        }
    }

    #[test]
    fn resolves_case_insensitively_to_canonical_names() {
        let r = ResourceKind::User
            .resolve(&path(None, "NAME", Some("GIVENname")))
            .unwrap();
        assert_eq!(r.json_keys(), vec!["name", "givenName"]);
        let r = ResourceKind::User
            .resolve(&path(Some(ENTERPRISE_URN), "employeenumber", None))
            .unwrap();
        assert_eq!(r.json_keys(), vec![ENTERPRISE_URN, "employeeNumber"]);
        let r = ResourceKind::User
            .resolve(&path(Some(USER_URN), "userName", None))
            .unwrap();
        assert_eq!(r.json_keys(), vec!["userName"]);
        assert!(r.leaf().required);
    }

    #[test]
    fn rejects_unknown_paths_and_schemas() {
        assert!(matches!(
            ResourceKind::Group.resolve(&path(None, "emails", None)),
            Err(ResolveError::UnknownAttribute(_))
        ));
        assert!(matches!(
            ResourceKind::User.resolve(&path(Some("urn:x:y"), "a", None)),
            Err(ResolveError::UnknownSchema(_))
        ));
        assert!(ResourceKind::User
            .resolve(&path(None, "name", Some("nope")))
            .is_err());
    }

    #[test]
    fn password_is_write_only_and_never_returned() {
        let r = ResourceKind::User
            .resolve(&AttrPath::simple("password"))
            .unwrap();
        assert_eq!(r.attr.returned, Returned::Never);
        assert_eq!(r.attr.mutability, Mutability::WriteOnly);
    }
}
