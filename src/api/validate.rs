//! Input checks shared by the gRPC handlers. Each returns `Error::InvalidArgument` naming the
//! proto field at fault; the message never echoes a secret (tokens, request ids).
//!
//! Limits are deliberate: they bound what one request can write into the replicated state.

use std::collections::BTreeMap;

use crate::proto::v1::{Consistency, RevocationReason};
use crate::token::{self, IdKind, RawToken, TokenKind};
use crate::Error;

/// Longest tenant name, in bytes.
pub const MAX_TENANT_BYTES: usize = 128;
/// Longest user id or lease holder, in bytes.
pub const MAX_NAME_BYTES: usize = 256;
/// Most attributes on one session.
pub const MAX_ATTRIBUTES: usize = 32;
/// Longest attribute key, in bytes.
pub const MAX_ATTRIBUTE_KEY_BYTES: usize = 64;
/// Longest attribute value, in bytes.
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1024;
/// Longest device public key, in bytes.
pub const MAX_DEVICE_KEY_BYTES: usize = 256;
/// Shortest and longest idempotency key, in bytes.
pub const REQUEST_ID_BYTES: std::ops::RangeInclusive<usize> = 16..=128;
/// Shortest lifetime a request may ask for (session, access token, lease).
pub const MIN_TTL_MS: i64 = 1_000;

/// A tenant name: may be empty (the default tenant); no control characters.
pub fn tenant(field: &'static str, value: &str) -> Result<(), Error> {
    text(field, value, 0, MAX_TENANT_BYTES)
}

/// A required name (user id, holder): 1..=256 bytes, no control characters.
pub fn name(field: &'static str, value: &str) -> Result<(), Error> {
    text(field, value, 1, MAX_NAME_BYTES)
}

fn text(field: &'static str, value: &str, min: usize, max: usize) -> Result<(), Error> {
    if value.len() < min {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if value.len() > max {
        return Err(Error::invalid(field, format!("longer than {max} bytes")));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(field, "contains control characters"));
    }
    Ok(())
}

/// A server-minted id of `kind`.
pub fn id(field: &'static str, kind: IdKind, value: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if !token::is_valid_id(kind, value) {
        return Err(Error::invalid(field, "not a well-formed id"));
    }
    Ok(())
}

/// An optional server-minted id: empty, or well-formed.
pub fn optional_id(field: &'static str, kind: IdKind, value: &str) -> Result<(), Error> {
    if value.is_empty() {
        Ok(())
    } else {
        id(field, kind, value)
    }
}

/// A raw token of `kind`.
pub fn raw_token(field: &'static str, kind: TokenKind, value: &str) -> Result<RawToken, Error> {
    if value.is_empty() {
        return Err(Error::invalid(field, "must not be empty"));
    }
    RawToken::parse(kind, value).map_err(|e| Error::invalid(field, e.to_string()))
}

/// An optional idempotency key: empty, or 16..=128 bytes without control characters.
pub fn request_id(field: &'static str, value: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Ok(());
    }
    if !REQUEST_ID_BYTES.contains(&value.len()) {
        return Err(Error::invalid(
            field,
            format!(
                "must be {}..={} bytes",
                REQUEST_ID_BYTES.start(),
                REQUEST_ID_BYTES.end()
            ),
        ));
    }
    text(field, value, 0, *REQUEST_ID_BYTES.end())
}

/// A lifetime: 0 picks `default`; otherwise it must lie in `MIN_TTL_MS..=max`.
pub fn ttl(field: &'static str, value: i64, default: i64, max: i64) -> Result<i64, Error> {
    match value {
        0 => Ok(default),
        v if v < 0 => Err(Error::invalid(field, "must not be negative")),
        v if v < MIN_TTL_MS => Err(Error::invalid(field, format!("below {MIN_TTL_MS} ms"))),
        v if v > max => Err(Error::invalid(
            field,
            format!("above the maximum of {max} ms"),
        )),
        v => Ok(v),
    }
}

/// Session attributes and device key sizes.
pub fn attributes(field: &'static str, map: &BTreeMap<String, String>) -> Result<(), Error> {
    if map.len() > MAX_ATTRIBUTES {
        return Err(Error::invalid(
            field,
            format!("more than {MAX_ATTRIBUTES} entries"),
        ));
    }
    for (k, v) in map {
        text(field, k, 1, MAX_ATTRIBUTE_KEY_BYTES)?;
        if v.len() > MAX_ATTRIBUTE_VALUE_BYTES {
            return Err(Error::invalid(
                field,
                format!("a value is longer than {MAX_ATTRIBUTE_VALUE_BYTES} bytes"),
            ));
        }
    }
    Ok(())
}

/// A device public key: at most 256 bytes.
pub fn device_key(field: &'static str, key: &[u8]) -> Result<(), Error> {
    if key.len() > MAX_DEVICE_KEY_BYTES {
        return Err(Error::invalid(
            field,
            format!("longer than {MAX_DEVICE_KEY_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// A known enum value (prost keeps unknown values as raw integers).
pub fn known_enum<E: TryFrom<i32>>(field: &'static str, value: i32) -> Result<E, Error> {
    E::try_from(value).map_err(|_| Error::invalid(field, format!("unknown value {value}")))
}

/// A list request's page: `page_size` (0: `default`, at most `max`) and the cursor decoded
/// from `page_token` (empty: the first page).
pub fn page(
    page_size: u32,
    default: u32,
    max: u32,
    page_token: &str,
) -> Result<(u32, Option<Vec<u8>>), Error> {
    use base64::Engine;
    let size = match page_size {
        0 => default,
        n if n > max => return Err(Error::invalid("page_size", format!("above {max}"))),
        n => n,
    };
    if page_token.is_empty() {
        return Ok((size, None));
    }
    let cursor = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(page_token)
        .map_err(|_| Error::invalid("page_token", "not a token from a previous page"))?;
    Ok((size, Some(cursor)))
}

/// The requested read consistency; UNSPECIFIED means LINEARIZABLE.
pub fn consistency(field: &'static str, value: i32) -> Result<Consistency, Error> {
    Ok(match known_enum(field, value)? {
        Consistency::Unspecified => Consistency::Linearizable,
        c => c,
    })
}

/// A revocation reason a client may give (the server-set ones are refused);
/// UNSPECIFIED means LOGOUT.
pub fn client_reason(field: &'static str, value: i32) -> Result<RevocationReason, Error> {
    match known_enum(field, value)? {
        RevocationReason::Unspecified => Ok(RevocationReason::Logout),
        RevocationReason::ReplayDetected | RevocationReason::LimitEvicted => {
            Err(Error::invalid(field, "is set by the server only"))
        }
        r => Ok(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(e: Error) -> &'static str {
        match e {
            Error::InvalidArgument { field, .. } => field,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn names_and_tenants() {
        assert!(tenant("tenant", "").is_ok());
        assert_eq!(
            field_of(tenant("tenant", &"x".repeat(129)).unwrap_err()),
            "tenant"
        );
        assert_eq!(field_of(name("user_id", "").unwrap_err()), "user_id");
        assert_eq!(field_of(name("user_id", "a\nb").unwrap_err()), "user_id");
        assert!(name("user_id", "alice@example.com").is_ok());
    }

    #[test]
    fn ttls() {
        assert_eq!(ttl("ttl_ms", 0, 5_000, 10_000).unwrap(), 5_000);
        assert_eq!(ttl("ttl_ms", 2_000, 5_000, 10_000).unwrap(), 2_000);
        for bad in [-1, 999, 10_001] {
            assert_eq!(
                field_of(ttl("ttl_ms", bad, 5_000, 10_000).unwrap_err()),
                "ttl_ms"
            );
        }
    }

    #[test]
    fn ids_tokens_and_request_ids() {
        let sid = token::mint_id(IdKind::Session);
        assert!(id("session_id", IdKind::Session, &sid).is_ok());
        assert!(id("session_id", IdKind::Session, "").is_err());
        assert!(optional_id("family_id", IdKind::Family, "").is_ok());
        assert!(optional_id("family_id", IdKind::Family, &sid).is_err());
        let e = raw_token("refresh_token", TokenKind::Refresh, "sdr1_nope").unwrap_err();
        assert!(
            !e.to_string().contains("nope"),
            "message must not echo the token"
        );
        assert!(request_id("request_id", "").is_ok());
        assert!(request_id("request_id", "short").is_err());
        assert!(request_id("request_id", &"r".repeat(16)).is_ok());
    }

    #[test]
    fn attributes_and_enums() {
        let mut m = BTreeMap::new();
        m.insert("role".to_owned(), "admin".to_owned());
        assert!(attributes("attributes", &m).is_ok());
        m.insert("big".to_owned(), "v".repeat(1025));
        assert!(attributes("attributes", &m).is_err());
        let many: BTreeMap<_, _> = (0..33).map(|i| (i.to_string(), String::new())).collect();
        assert!(attributes("attributes", &many).is_err());
        assert_eq!(
            consistency("consistency", 0).unwrap(),
            Consistency::Linearizable
        );
        assert!(consistency("consistency", 42).is_err());
        assert_eq!(
            client_reason("reason", 0).unwrap(),
            RevocationReason::Logout
        );
        assert!(client_reason("reason", RevocationReason::ReplayDetected as i32).is_err());
    }
}
