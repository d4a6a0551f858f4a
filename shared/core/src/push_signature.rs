//! Signed warehouse pushes: `X-DearSync-Timestamp` and `X-DearSync-Signature` headers proving the
//! sender holds the tenant's `warehouse_signing_secret` without sending it, and that the request is
//! fresh.
//!
//! The signature is `sha256=<hex HMAC-SHA256(key, "<timestamp>." + body)>`, the timestamp Unix
//! seconds. Binding the timestamp into the MAC means an old request cannot be made fresh, and a
//! request is accepted only within [`TOLERANCE`] of now; the replay of a fresh one inside that window
//! is refused by the caller, which remembers each signature it accepted (see [`replay_key`]).

use chrono::{DateTime, Duration, Utc};
use dear_client::ApiKey;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "x-dearsync-signature";
/// The header carrying the signing time, Unix seconds.
pub const TIMESTAMP_HEADER: &str = "x-dearsync-timestamp";
/// How far a push's timestamp may be from now, either way (clock skew plus transit).
pub const TOLERANCE: Duration = Duration::minutes(5);

/// Why a signed push is refused. The text names the rule, never a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A header is absent.
    #[error("the {0} header is missing")]
    Missing(&'static str),
    /// The timestamp is not Unix seconds.
    #[error("{TIMESTAMP_HEADER} is not a Unix time in seconds")]
    BadTimestamp,
    /// The timestamp is outside the window.
    #[error("{TIMESTAMP_HEADER} is {skew_seconds} s from now; at most {} s is accepted", TOLERANCE.num_seconds())]
    Stale {
        /// Now minus the timestamp (negative: from the future).
        skew_seconds: i64,
    },
    /// The signature is not `sha256=<64 hex digits>`.
    #[error("{SIGNATURE_HEADER} is not sha256=<64 hex digits>")]
    BadFormat,
    /// No key produces it (wrong key, or the body or timestamp was changed).
    #[error("{SIGNATURE_HEADER} does not match the body and timestamp under any signing secret")]
    Mismatch,
}

/// `sha256=<hex>` for `body` signed at `timestamp` (Unix seconds) with `key`: what a warehouse
/// sends.
pub fn sign(key: &[u8], timestamp: i64, body: &[u8]) -> String {
    let mac = mac(key, timestamp, body).finalize().into_bytes();
    format!("sha256={}", hex::encode(mac))
}

/// Checks a push's headers against `keys` (a rotation's current and previous) at `now`; the
/// signature is compared in constant time under every key.
pub fn verify(
    keys: &[&ApiKey],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<(), SignatureError> {
    let timestamp = timestamp.ok_or(SignatureError::Missing(TIMESTAMP_HEADER))?;
    let signature = signature.ok_or(SignatureError::Missing(SIGNATURE_HEADER))?;
    let timestamp: i64 = timestamp
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    let skew_seconds = now.timestamp().saturating_sub(timestamp);
    if skew_seconds.abs() > TOLERANCE.num_seconds() {
        return Err(SignatureError::Stale { skew_seconds });
    }
    let given = signature
        .trim()
        .strip_prefix("sha256=")
        .and_then(|digits| hex::decode(digits).ok())
        .filter(|b| b.len() == 32)
        .ok_or(SignatureError::BadFormat)?;
    let matched = keys.iter().fold(false, |any, key| {
        mac(key.expose().as_bytes(), timestamp, body)
            .verify_slice(&given)
            .is_ok()
            | any
    });
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// What identifies an accepted signed push for replay refusal: the signature's hex digits (a MAC over
/// the timestamp and body, so one per request). Kept for twice [`TOLERANCE`], longer than any
/// timestamp stays acceptable.
pub fn replay_key(signature: &str) -> String {
    signature
        .trim()
        .trim_start_matches("sha256=")
        .to_ascii_lowercase()
}

fn mac(key: &[u8], timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .expect("HMAC-SHA256 takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, 0).unwrap()
    }

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_known_vector_so_warehouses_can_check_their_code() {
        // Computed independently: printf '1800000000.{"a":1}' | openssl dgst -sha256 -hmac k3y
        assert_eq!(
            sign(b"k3y", NOW, br#"{"a":1}"#),
            "sha256=d2989411e026996cd9b43328a9fd0145f202ce0ac4b575e6b93d652b0fb904ff"
        );
    }

    #[test]
    fn a_fresh_signature_under_any_current_key_is_accepted() {
        let (old, new) = (ApiKey::new("old"), ApiKey::new("new"));
        let sig = sign(b"old", NOW - 30, b"body");
        let ts = (NOW - 30).to_string();
        assert_eq!(
            verify(&[&new, &old], Some(&ts), Some(&sig), b"body", at(NOW)),
            Ok(())
        );
        assert_eq!(
            verify(&[&new], Some(&ts), Some(&sig), b"body", at(NOW)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_changed_body_or_timestamp_or_an_old_request_is_refused() {
        let key = ApiKey::new("k");
        let sig = sign(b"k", NOW, b"body");
        let ts = NOW.to_string();
        let check = |ts: &str, sig: &str, body: &[u8], now: i64| {
            verify(&[&key], Some(ts), Some(sig), body, at(now))
        };
        assert_eq!(
            check(&ts, &sig, b"bodY", NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            check(&(NOW + 1).to_string(), &sig, b"body", NOW),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            check(&ts, &sig, b"body", NOW + 301),
            Err(SignatureError::Stale { skew_seconds: 301 })
        );
        assert_eq!(
            check(&ts, &sig, b"body", NOW - 301),
            Err(SignatureError::Stale { skew_seconds: -301 })
        );
        assert_eq!(check(&ts, &sig, b"body", NOW + 300), Ok(()));
        assert_eq!(
            check("soon", &sig, b"body", NOW),
            Err(SignatureError::BadTimestamp)
        );
        assert_eq!(
            check(&ts, "sha1=abc", b"body", NOW),
            Err(SignatureError::BadFormat)
        );
        assert_eq!(
            check(&ts, &sig[..sig.len() - 2], b"body", NOW),
            Err(SignatureError::BadFormat)
        );
        assert_eq!(
            verify(&[&key], None, Some(&sig), b"body", at(NOW)),
            Err(SignatureError::Missing(TIMESTAMP_HEADER))
        );
        assert_eq!(
            verify(&[], Some(&ts), Some(&sig), b"body", at(NOW)),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn the_replay_key_ignores_case_and_prefix() {
        assert_eq!(replay_key("sha256=ABcd"), replay_key(" abcd "));
    }
}
