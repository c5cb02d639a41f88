//! Webhook signatures, Stripe/WorkOS style: HMAC-SHA256 over
//! `{timestamp}.{body}`, sent as `Rolebridge-Signature: t=…,v1=…[,v1=…]`.
//!
//! The timestamp is signed so a captured delivery cannot be replayed later
//! than the receiver's tolerance; during a rotation every live secret
//! signs, so receivers switch secrets without a window of failures.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::domain::Secret;

/// The header the signature travels in.
pub const SIGNATURE_HEADER: &str = "rolebridge-signature";

type HmacSha256 = Hmac<Sha256>;

fn mac(secret: &Secret, timestamp: i64, body: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length: this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret.expose().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts every key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The header value for `body` sent at `timestamp` (Unix seconds), one
/// `v1=` per secret.
pub fn signature_header(secrets: &[&Secret], timestamp: i64, body: &[u8]) -> String {
    let mut out = format!("t={timestamp}");
    for s in secrets {
        out.push_str(",v1=");
        out.push_str(&hex::encode(
            mac(s, timestamp, body).finalize().into_bytes(),
        ));
    }
    out
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature header is malformed: {0}")]
    Malformed(&'static str),
    #[error("the signature is {age}s away from now, over the {tolerance}s tolerance (a replay?)")]
    Stale { age: i64, tolerance: i64 },
    #[error("no v1 signature matches the secret")]
    Mismatch,
}

/// Checks a delivery as a receiver should: the timestamp within
/// `tolerance` seconds of `now`, and some `v1` equal, compared in constant
/// time, to the HMAC under `secret`.
pub fn verify(
    secret: &Secret,
    header: &str,
    body: &[u8],
    now: i64,
    tolerance: i64,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => {
                timestamp = Some(
                    t.parse::<i64>()
                        .map_err(|_| SignatureError::Malformed("t is not a number"))?,
                )
            }
            Some(("v1", v)) => candidates
                .push(hex::decode(v).map_err(|_| SignatureError::Malformed("v1 is not hex"))?),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed("no t="))?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed("no v1="));
    }
    let age = (now - timestamp).abs();
    if age > tolerance {
        return Err(SignatureError::Stale { age, tolerance });
    }
    for c in candidates {
        if mac(secret, timestamp, body).verify_slice(&c).is_ok() {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_any_change_breaks_it() {
        let (a, b) = (Secret::new("whsec_a"), Secret::new("whsec_b"));
        let body = br#"{"events":[]}"#;
        let h = signature_header(&[&a, &b], 1_700_000_000, body);
        assert!(h.starts_with("t=1700000000,v1="));
        assert_eq!(h.matches("v1=").count(), 2);
        assert_eq!(verify(&a, &h, body, 1_700_000_010, 300), Ok(()));
        // Either secret of a rotation verifies.
        assert_eq!(verify(&b, &h, body, 1_700_000_010, 300), Ok(()));
        assert_eq!(
            verify(&Secret::new("whsec_c"), &h, body, 1_700_000_010, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&a, &h, br#"{"events":[1]}"#, 1_700_000_010, 300),
            Err(SignatureError::Mismatch)
        );
        // A timestamp moved forward does not verify the old signature.
        let moved = h.replacen("t=1700000000", "t=1700000005", 1);
        assert_eq!(
            verify(&a, &moved, body, 1_700_000_010, 300),
            Err(SignatureError::Mismatch)
        );
        assert!(matches!(
            verify(&a, &h, body, 1_700_001_000, 300),
            Err(SignatureError::Stale { .. })
        ));
        assert!(matches!(
            verify(&a, "v1=zz", body, 0, 300),
            Err(SignatureError::Malformed(_))
        ));
    }

    /// The digest of a known input, so a receiver written in another
    /// language (README's Python) can be checked against it.
    #[test]
    fn the_digest_is_hmac_sha256_of_timestamp_dot_body() {
        let h = signature_header(&[&Secret::new("key")], 1, b"x");
        // echo -n '1.x' | openssl dgst -sha256 -hmac key
        assert_eq!(
            h,
            "t=1,v1=fc4913c41a7bf793267e2a384f3261c9436ec2cd097bd745e7b0d99113f510ec"
        );
    }
}
