//! The SCIM PATCH engine (RFC 7644 §3.5.2) and resource-body normalisation
//! on arbitrary JSON.
//!
//! The input, when it is JSON, is parsed as a PatchOp body and applied to a
//! fixed rich User and a fixed Group (and to the User as a Group and the
//! Group as a User, which must fail cleanly or succeed); it is also
//! normalised as a POST/PUT body of both kinds.
//!
//! Invariants checked besides "never panics":
//! - `apply` is all or nothing: on `Err` the document is unchanged;
//! - `PatchOutcome::changed` is true exactly when the document changed or
//!   member operations were produced;
//! - a Group document never gains `members` (membership is never part of
//!   the document);
//! - `normalize` leaves the body unchanged on `Err`, and is idempotent: a
//!   normalised body normalises to itself, dropping nothing more.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use scim::patch::{apply, normalize, parse_request};
use scim::schema::ResourceKind;
use serde_json::{json, Value};

const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
const CUSTOM: &str = "urn:example:params:scim:schemas:extension:acme:2.0:User";

fn user() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE, CUSTOM],
            "id": "2819c223-7f76-453a-919d-413861904646",
            "externalId": "701984",
            "userName": "bjensen@example.com",
            "name": {
                "formatted": "Ms. Barbara J Jensen, III",
                "familyName": "Jensen",
                "givenName": "Barbara",
                "middleName": "Jane",
                "honorificPrefix": "Ms.",
                "honorificSuffix": "III"
            },
            "displayName": "Babs Jensen",
            "nickName": "Babs",
            "profileUrl": "https://login.example.com/bjensen",
            "emails": [
                {"value": "bjensen@example.com", "type": "work", "primary": true},
                {"value": "babs@jensen.org", "type": "home"}
            ],
            "addresses": [{
                "type": "work",
                "streetAddress": "100 Universal City Plaza",
                "locality": "Hollywood",
                "region": "CA",
                "postalCode": "91608",
                "country": "USA",
                "primary": true
            }],
            "phoneNumbers": [
                {"value": "555-555-5555", "type": "work"},
                {"value": "555-555-4444", "type": "mobile"}
            ],
            "ims": [{"value": "someaimhandle", "type": "aim"}],
            "photos": [{"value": "https://photos.example.com/profilephoto/72930000000Ccne/F", "type": "photo"}],
            "userType": "Employee",
            "title": "Tour Guide",
            "preferredLanguage": "en-US",
            "locale": "en-US",
            "timezone": "America/Los_Angeles",
            "active": true,
            "x509Certificates": [{"value": "MIIDQzCCAqygAwIBAgICEAAwDQYJKoZIhvcNAQEFBQAwTjELMAkGA1UEBhMCVVMx"}],
            "roles": [{"value": "admin", "primary": false}],
            "entitlements": [{"value": "pool"}],
            ENTERPRISE: {
                "employeeNumber": "701984",
                "costCenter": "4130",
                "organization": "Universal Studios",
                "division": "Theme Park",
                "department": "Tour Operations",
                "manager": {"value": "26118915-6090-4610-87e4-49d8ca9f808d", "displayName": "John Smith"}
            },
            CUSTOM: {"CustomAttribute": "blue", "level": 3},
            "meta": {
                "resourceType": "User",
                "created": "2010-01-23T04:56:22Z",
                "lastModified": "2011-05-13T04:42:34Z",
                "version": "W/\"3694e05e9dff591\"",
                "location": "https://example.com/v2/Users/2819c223-7f76-453a-919d-413861904646"
            }
        })
    })
}

/// A Group as stored: membership is never part of the document.
fn group() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"],
            "id": "e9e30dba-f08f-4109-8486-d5c6a331660a",
            "externalId": "eng",
            "displayName": "Tour Guides",
            "meta": {
                "resourceType": "Group",
                "created": "2010-01-23T04:56:22Z",
                "lastModified": "2011-05-13T04:42:34Z",
                "version": "W/\"3694e05e9dff592\""
            }
        })
    })
}

fn check_apply(
    kind: ResourceKind,
    before: &Value,
    ops: &[scim::patch::PatchOperation],
    input: &Value,
) {
    let mut doc = before.clone();
    match apply(kind, &mut doc, ops) {
        Err(e) => assert_eq!(
            &doc, before,
            "apply failed ({e}) but changed the document; ops: {input}"
        ),
        Ok(outcome) => {
            assert_eq!(
                outcome.changed,
                &doc != before || !outcome.member_ops.is_empty(),
                "changed flag; ops: {input}"
            );
            if kind == ResourceKind::Group && before.get("members").is_none() {
                assert!(
                    doc.get("members").is_none(),
                    "members written into a Group document: {doc}; ops: {input}"
                );
            }
        }
    }
}

fn check_normalize(kind: ResourceKind, body: &Value) {
    let mut doc = body.clone();
    match normalize(kind, &mut doc) {
        Err(e) => assert_eq!(
            &doc, body,
            "normalize failed ({e}) but changed the body: {body}"
        ),
        Ok(_) => {
            let mut again = doc.clone();
            match normalize(kind, &mut again) {
                Ok(dropped) => {
                    assert_eq!(
                        again, doc,
                        "normalize is not idempotent ({kind:?}) on {body}"
                    );
                    assert!(
                        dropped.is_empty(),
                        "normalising a normalised body dropped {dropped:?} ({kind:?}); first {doc} from {body}"
                    );
                }
                Err(e) => panic!(
                    "a normalised body fails to normalise ({kind:?}): {e}\n{doc}\nfrom {body}"
                ),
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    if let Ok(ops) = parse_request(&input) {
        check_apply(ResourceKind::User, user(), &ops, &input);
        check_apply(ResourceKind::Group, group(), &ops, &input);
        check_apply(ResourceKind::User, group(), &ops, &input);
        check_apply(ResourceKind::Group, user(), &ops, &input);
    }
    for kind in [ResourceKind::User, ResourceKind::Group] {
        check_normalize(kind, &input);
    }
});
