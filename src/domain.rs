//! Identifiers and small value types shared by every layer. No IO, no wire
//! format: `store` converts these to columns and `http` to JSON.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::format_description::FormatItem;
use time::macros::format_description;
use uuid::Uuid;

/// The SHA-256 digest of what a synced entry's stored document is built
/// from: an entry whose digest matches its link's did not change, and a
/// complete read skips it. Held as bytes, not hex text, because a large
/// sync holds one per user; stored as hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ContentHash([u8; 32]);

impl ContentHash {
    pub fn new(digest: [u8; 32]) -> Self {
        ContentHash(digest)
    }
    /// From its 64 hex digits (as `to_hex` writes them, in lowercase);
    /// `None` for anything else.
    pub fn from_hex(text: &str) -> Option<Self> {
        let mut digest = [0u8; 32];
        hex::decode_to_slice(text, &mut digest).ok()?;
        Some(ContentHash(digest))
    }
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({})", self.to_hex())
    }
}

/// A tenant's internal id. Every store query is scoped by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantId(Uuid);

impl TenantId {
    pub fn new() -> Self {
        TenantId(Uuid::new_v4())
    }
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
    pub fn from_uuid(id: Uuid) -> Self {
        TenantId(id)
    }
}

impl Default for TenantId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A tenant's name: the `{tenant}` segment of `/scim/v2/{tenant}`. Restricted
/// to a URL- and file-name-safe alphabet so it can name a mapping file too.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TenantName(String);

impl TenantName {
    pub fn parse(raw: &str) -> Result<Self, InvalidName> {
        let ok = !raw.is_empty()
            && raw.len() <= 63
            && raw
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && raw.as_bytes()[0].is_ascii_alphanumeric();
        if ok {
            Ok(TenantName(raw.to_string()))
        } else {
            Err(InvalidName(raw.to_string()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A tenant name that breaks the naming rule.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid tenant name '{0}': use 1-63 characters from a-z, 0-9, '-' and '_', starting with a letter or digit")]
pub struct InvalidName(pub String);

/// A registered tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tenant {
    pub id: TenantId,
    pub name: TenantName,
    pub created: String,
}

/// The id of a SCIM resource (User or Group), issued by this server.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ResourceId(String);

impl ResourceId {
    pub fn generate() -> Self {
        ResourceId(Uuid::new_v4().to_string())
    }
    /// Wraps an id read from a URL or a body. Ids are opaque to clients, so
    /// any non-empty string is accepted; lookups simply miss when it is not ours.
    pub fn from_client(raw: &str) -> Self {
        ResourceId(raw.to_string())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A directory entry's stable id as its source gives it (`entryUUID`,
/// `objectGUID` as a canonical GUID string, a Graph object id): the
/// identity a link ties to a resource, kept by renames and moves. Opaque:
/// only compared, never parsed, so it is not confused with a
/// [`ResourceId`] (ours) or a locator (a DN, which changes).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ExternalKey(String);

impl ExternalKey {
    pub fn new(raw: impl Into<String>) -> Self {
        ExternalKey(raw.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<String> for ExternalKey {
    fn from(raw: String) -> Self {
        ExternalKey(raw)
    }
}

impl From<&str> for ExternalKey {
    fn from(raw: &str) -> Self {
        ExternalKey(raw.to_string())
    }
}

impl PartialEq<str> for ExternalKey {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ExternalKey {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for ExternalKey {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

/// Lookups by the text a test or a log line holds (hashing and ordering
/// are those of the text itself).
impl std::borrow::Borrow<String> for ExternalKey {
    fn borrow(&self) -> &String {
        &self.0
    }
}

impl std::borrow::Borrow<str> for ExternalKey {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ExternalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What an API token may do. A token works only for its tenant and scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Push users and groups through SCIM.
    Scim,
    /// Read effective permissions.
    Permissions,
    /// Administer the tenant.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Scim => "scim",
            Scope::Permissions => "permissions",
            Scope::Admin => "admin",
        }
    }
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "scim" => Some(Scope::Scim),
            "permissions" => Some(Scope::Permissions),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A secret (API token, bind password, client secret). `Debug` and `Display`
/// print a placeholder so a secret cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(raw: impl Into<String>) -> Self {
        Secret(raw.into())
    }
    /// The secret itself; call only where it must leave the process (printing
    /// a freshly created token once, sending a credential).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// RFC 3339 UTC with a fixed six-digit fraction, so that text order is time
/// order in the database and in filters on `meta.lastModified`.
const TIMESTAMP: &[FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z");

/// The current time as stored in `meta.created` / `meta.lastModified`.
pub fn now() -> String {
    SystemClock.now().to_string()
}

/// A UTC instant in the stored timestamp format.
pub fn format_timestamp(t: time::OffsetDateTime) -> Option<String> {
    t.format(TIMESTAMP).ok()
}

/// Reads a stored timestamp back; `None` if it is not in that format.
pub fn parse_timestamp(s: &str) -> Option<time::OffsetDateTime> {
    time::PrimitiveDateTime::parse(s, TIMESTAMP)
        .ok()
        .map(|t| t.assume_utc())
}

/// A mapping set's version number: consecutive from 1, so "the version an
/// edit was planned against" is one integer and a newer version always has
/// a greater number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MappingVersion(pub i64);

impl fmt::Display for MappingVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// An instant as the store keeps it: UTC, to the microsecond, written as
/// fixed-width RFC 3339 text (so text order is time order in SQL too).
/// Always within years 0000-9999, so it always formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(time::OffsetDateTime);

impl Timestamp {
    /// `t` in UTC, truncated to the microsecond; `None` outside years
    /// 0000-9999 (which the stored format cannot write).
    pub fn new(t: time::OffsetDateTime) -> Option<Timestamp> {
        let t = t.to_offset(time::UtcOffset::UTC);
        let t = t.replace_nanosecond(t.nanosecond() / 1000 * 1000).ok()?;
        (0..=9999).contains(&t.year()).then_some(Timestamp(t))
    }

    /// The system's time (fixtures; use cases read an `App`'s clock).
    pub fn now() -> Timestamp {
        SystemClock.now()
    }

    /// Reads the stored format back; `None` for anything else.
    pub fn parse(s: &str) -> Option<Timestamp> {
        parse_timestamp(s).and_then(Timestamp::new)
    }

    pub fn datetime(self) -> time::OffsetDateTime {
        self.0
    }

    pub fn checked_add(self, d: std::time::Duration) -> Option<Timestamp> {
        let d = time::Duration::try_from(d).ok()?;
        self.0.checked_add(d).and_then(Timestamp::new)
    }

    pub fn checked_sub(self, d: std::time::Duration) -> Option<Timestamp> {
        let d = time::Duration::try_from(d).ok()?;
        self.0.checked_sub(d).and_then(Timestamp::new)
    }

    /// How long after `earlier` this is (zero if it is not after).
    pub fn since(self, earlier: Timestamp) -> std::time::Duration {
        std::time::Duration::try_from(self.0 - earlier.0).unwrap_or_default()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `new` keeps the year in range, so formatting cannot fail.
        let text = self.0.format(TIMESTAMP).map_err(|_| fmt::Error)?;
        f.write_str(&text)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Timestamp::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("not a timestamp: '{text}'")))
    }
}

/// Where time comes from. The service reads the system clock; tests hand
/// the app a [`ManualClock`] and move it, instead of sleeping through
/// grace periods and schedules.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> Timestamp;
}

/// The system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::new(time::OffsetDateTime::now_utc())
            .unwrap_or(Timestamp(time::OffsetDateTime::UNIX_EPOCH))
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock(std::sync::Mutex<Timestamp>);

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        ManualClock(std::sync::Mutex::new(start))
    }

    /// Starts at the system's current time.
    pub fn starting_now() -> Self {
        ManualClock::new(SystemClock.now())
    }

    pub fn advance(&self, by: std::time::Duration) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(next) = t.checked_add(by) {
            *t = next;
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where a parsed JSON body holds a NUL, named as the attribute path a
/// client would recognise: `title`, `emails[0].value`,
/// `Operations[0].value (path 'title')`.
pub fn nul_in_json(value: &Value) -> Option<String> {
    let mut at = String::new();
    if !find_nul(value, &mut at) {
        return None;
    }
    // For a PATCH operation, name the attribute it writes too.
    let op_path = at
        .strip_prefix("Operations[")
        .and_then(|rest| rest.split(']').next())
        .and_then(|i| i.parse::<usize>().ok())
        .and_then(|i| {
            let ops = value
                .as_object()?
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("operations"))?
                .1;
            ops.get(i)?
                .as_object()?
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("path"))?
                .1
                .as_str()
                .map(str::to_string)
        });
    Some(match op_path {
        Some(p) if !p.contains('\0') => format!(
            "attribute '{at}' (path '{p}') contains a NUL character, which cannot be stored"
        ),
        _ => format!("attribute '{at}' contains a NUL character, which cannot be stored"),
    })
}

/// Depth-first search for a NUL in a key or string; `at` ends as its path.
fn find_nul(v: &Value, at: &mut String) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().enumerate().any(|(i, item)| {
            let len = at.len();
            at.push_str(&format!("[{i}]"));
            if find_nul(item, at) {
                return true;
            }
            at.truncate(len);
            false
        }),
        Value::Object(map) => map.iter().any(|(k, item)| {
            let len = at.len();
            if !at.is_empty() {
                at.push('.');
            }
            at.push_str(&k.replace('\0', "\\u0000"));
            if k.contains('\0') || find_nul(item, at) {
                return true;
            }
            at.truncate(len);
            false
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_values_keep_the_stored_format_and_its_order() {
        let t = Timestamp::parse("2026-01-02T03:04:05.678901Z").unwrap();
        assert_eq!(t.to_string(), "2026-01-02T03:04:05.678901Z");
        let later = t
            .checked_add(std::time::Duration::from_millis(1500))
            .unwrap();
        assert_eq!(later.to_string(), "2026-01-02T03:04:07.178901Z");
        assert!(later > t && later.to_string() > t.to_string());
        assert_eq!(later.since(t), std::time::Duration::from_millis(1500));
        assert_eq!(t.since(later), std::time::Duration::ZERO);
        assert_eq!(Timestamp::parse("2026-01-02"), None);
        let json = serde_json::to_string(&t).unwrap();
        assert_eq!(serde_json::from_str::<Timestamp>(&json).unwrap(), t);
        let far = t.checked_add(std::time::Duration::from_secs(10_000 * 366 * 86_400));
        assert_eq!(far, None, "years past 9999 cannot be stored");
        let clock = ManualClock::new(t);
        clock.advance(std::time::Duration::from_secs(2));
        assert_eq!(clock.now().since(t), std::time::Duration::from_secs(2));
    }

    #[test]
    fn timestamps_round_trip() {
        let s = now();
        assert_eq!(parse_timestamp(&s).and_then(format_timestamp), Some(s));
        assert_eq!(parse_timestamp("yesterday"), None);
    }

    #[test]
    fn tenant_names_follow_the_rule() {
        assert!(TenantName::parse("acme-corp_2").is_ok());
        for bad in ["", "-acme", "Acme", "a/b", "a b", &"x".repeat(64)] {
            assert!(TenantName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** Secret(***)");
    }
}

/// What caused a change to users' effective permissions: the change feed
/// and webhooks tell the platform why, not only what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ChangeCause {
    /// A SCIM request: its method and path, its `X-Request-Id`, the token.
    Scim {
        method: String,
        path: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
        token: String,
    },
    /// A directory-sync run.
    Sync { source: String, run_id: String },
    /// A mapping version coming into force (an apply, a rollback, the
    /// first import).
    Mapping { version: i64 },
    /// A recomputation with no other cause: rows stored by an earlier
    /// release, brought up to date at start-up.
    Recompute,
}

/// A position in one tenant's change feed: the seq of the last event a
/// reader has seen (0: before the first). Tenants number their events
/// 1, 2, 3… in commit order, so the cursor means the same on every replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ChangeSeq(i64);

impl ChangeSeq {
    pub const START: ChangeSeq = ChangeSeq(0);

    pub fn new(seq: i64) -> Option<ChangeSeq> {
        (seq >= 0).then_some(ChangeSeq(seq))
    }

    pub fn get(self) -> i64 {
        self.0
    }

    /// A cursor as a client sends it: a whole number of at least 0.
    pub fn parse(raw: &str) -> Option<ChangeSeq> {
        raw.trim().parse::<i64>().ok().and_then(ChangeSeq::new)
    }
}

impl fmt::Display for ChangeSeq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
