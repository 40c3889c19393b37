//! Raw tokens and ids: minting, format checks, hashing and sealing.
//!
//! This is proposer-side code: it reads the operating system's CSPRNG, which the state
//! machine never does. The proposer mints raw tokens here, puts only their SHA-256
//! ([`TokenHash`]) into the Raft command, and returns the raw value to the caller once.
//!
//! A rotated refresh token can be presented again within the reuse grace window (a client
//! retrying after a lost response). To hand out the *same* successor again without storing
//! it, the proposer seals the successor's raw tokens under a key derived from the presented
//! raw token ([`seal`]); only a caller holding that raw token can open the seal ([`unseal`]).
//! Idempotent creates seal their tokens under the request id the same way, bound to the
//! request's parameters ([`Fingerprint`]) as associated data. No server-wide secret exists,
//! and nothing on disk opens a seal. Every seal has its own random salt (mixed into the key)
//! and random 192-bit nonce (XChaCha20-Poly1305), so no key and nonce pair is ever used twice
//! and a guess of the key material must be checked against each seal separately.
//!
//! Idempotency keys are scoped ([`request_key`]): the stored key hashes the tenant (or
//! another scope), the operation and the client's request id together.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, XChaCha20Poly1305, XNonce};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Random bytes in a raw token (256 bits).
const TOKEN_BYTES: usize = 32;
/// Random bytes in a minted id (128 bits).
const ID_BYTES: usize = 16;
/// Length of the base64url text of a token.
const TOKEN_TEXT_LEN: usize = 43;
/// Length of the base64url text of an id.
const ID_TEXT_LEN: usize = 22;

/// What a raw token is for; each kind has its own recognizable prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A refresh token: `sdr1_` + 43 base64url characters.
    Refresh,
    /// An access token: `sda1_` + 43 base64url characters.
    Access,
}

impl TokenKind {
    fn prefix(self) -> &'static str {
        match self {
            TokenKind::Refresh => "sdr1_",
            TokenKind::Access => "sda1_",
        }
    }
}

/// What a minted id names; each kind has its own prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    /// A session id: `sid_` + 22 base64url characters.
    Session,
    /// A family id: `fam_` + 22 base64url characters.
    Family,
    /// A renewal lease id: `lse_` + 22 base64url characters.
    Lease,
}

impl IdKind {
    /// The prefix every id of this kind starts with.
    pub fn prefix(self) -> &'static str {
        match self {
            IdKind::Session => "sid_",
            IdKind::Family => "fam_",
            IdKind::Lease => "lse_",
        }
    }
}

/// A raw token. It never prints in full: `Debug` shows only its kind prefix, and there is
/// no `Display`; [`RawToken::expose`] is the one way to the text, for the response.
#[derive(Clone, PartialEq, Eq)]
pub struct RawToken(String);

impl std::fmt::Debug for RawToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let prefix = self.0.get(..5).unwrap_or("");
        write!(f, "RawToken({prefix}…)")
    }
}

/// A presented token that is not in the expected format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "malformed token: expected {expected_prefix} followed by {TOKEN_TEXT_LEN} base64url characters"
)]
pub struct MalformedToken {
    expected_prefix: &'static str,
}

impl RawToken {
    /// Mints a fresh token of `kind` from the operating system's CSPRNG.
    pub fn mint(kind: TokenKind) -> Self {
        let mut bytes = [0u8; TOKEN_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        RawToken(format!(
            "{}{}",
            kind.prefix(),
            URL_SAFE_NO_PAD.encode(bytes)
        ))
    }

    /// Checks that `text` is a well-formed token of `kind`.
    pub fn parse(kind: TokenKind, text: &str) -> Result<Self, MalformedToken> {
        let err = MalformedToken {
            expected_prefix: kind.prefix(),
        };
        let body = text.strip_prefix(kind.prefix()).ok_or(err.clone())?;
        if body.len() != TOKEN_TEXT_LEN || !is_base64url(body) {
            return Err(err);
        }
        match URL_SAFE_NO_PAD.decode(body) {
            Ok(bytes) if bytes.len() == TOKEN_BYTES => Ok(RawToken(text.to_owned())),
            _ => Err(err),
        }
    }

    /// The SHA-256 of the token, the only form that is stored.
    pub fn hash(&self) -> TokenHash {
        TokenHash(Sha256::digest(self.0.as_bytes()).into())
    }

    /// The raw text, to be put in a response and nowhere else.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// The SHA-256 of a raw token or request id. Only made by hashing.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TokenHash({:02x}{:02x}{:02x}{:02x}…)",
            self.0[0], self.0[1], self.0[2], self.0[3]
        )
    }
}

impl TokenHash {
    /// The digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The digest as an owned vector, for a command or record field.
    pub fn to_vec(&self) -> Vec<u8> {
        self.0.to_vec()
    }
}

/// Compares two secrets' hashes (or ids) in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Mints a fresh id of `kind` (128 random bits, URL-safe).
pub fn mint_id(kind: IdKind) -> String {
    let mut bytes = [0u8; ID_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    format!("{}{}", kind.prefix(), URL_SAFE_NO_PAD.encode(bytes))
}

/// Whether `text` is a well-formed id of `kind`.
pub fn is_valid_id(kind: IdKind, text: &str) -> bool {
    text.strip_prefix(kind.prefix())
        .is_some_and(|body| body.len() == ID_TEXT_LEN && is_base64url(body))
}

/// The stored idempotency key of a request: SHA-256 over `scope` (the tenant, or for a
/// rotation the presented token's hash), `operation` and the client's `request_id`, each
/// length-prefixed. The same request id used in two scopes or by two operations names two
/// different requests.
pub fn request_key(scope: &[u8], operation: &str, request_id: &str) -> TokenHash {
    let mut hasher = Sha256::new();
    hasher.update(b"sessiond/request-key/v2\0");
    for part in [scope, operation.as_bytes(), request_id.as_bytes()] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    TokenHash(hasher.finalize().into())
}

/// What a client's `request_id` tells of when the request was made: a UUIDv7's timestamp, in
/// ms since the epoch; 0 for any other id. It only places the request's dedup record beside
/// those of requests made about the same time ([`crate::domain`] record format 5): an id that
/// lies about its time costs its own record a worse place, nothing else.
pub fn request_time_ms(request_id: &str) -> u64 {
    let Ok(id) = uuid::Uuid::try_parse(request_id) else {
        return 0;
    };
    match (id.get_version(), id.get_timestamp()) {
        (Some(uuid::Version::SortRand), Some(time)) => {
            let (seconds, nanos) = time.to_unix();
            seconds * 1000 + u64::from(nanos / 1_000_000)
        }
        _ => 0,
    }
}

/// A digest of a request's canonical parameters, to tell a retry (same parameters) from a
/// reuse of its request id for another request. Each part is length-prefixed, so no two
/// different parameter lists digest alike by concatenation.
pub struct Fingerprint(Sha256);

impl Fingerprint {
    /// Starts the fingerprint of one `operation`.
    pub fn new(operation: &str) -> Self {
        Fingerprint(Sha256::new_with_prefix(b"sessiond/fingerprint/v1\0"))
            .bytes(operation.as_bytes())
    }

    /// Adds a byte string.
    pub fn bytes(mut self, part: &[u8]) -> Self {
        self.0.update((part.len() as u64).to_be_bytes());
        self.0.update(part);
        self
    }

    /// Adds a text field.
    pub fn text(self, part: &str) -> Self {
        self.bytes(part.as_bytes())
    }

    /// Adds an integer field.
    pub fn int(self, value: i64) -> Self {
        self.bytes(&value.to_be_bytes())
    }

    /// The digest.
    pub fn finish(self) -> Vec<u8> {
        self.0.finalize().to_vec()
    }
}

fn is_base64url(text: &str) -> bool {
    text.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The raw tokens handed out together, as sealed for a later identical retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenPair {
    /// The refresh token.
    pub refresh: RawToken,
    /// The access token, if one was issued.
    pub access: Option<RawToken>,
}

/// Format tag of a seal: salt, nonce, then the XChaCha20-Poly1305 ciphertext.
const SEAL_V2: u8 = 2;
/// Random bytes mixed into each seal's key.
const SEAL_SALT_BYTES: usize = 16;
/// Random nonce bytes of each seal.
const SEAL_NONCE_BYTES: usize = 24;

fn seal_key(label: &[u8], salt: &[u8], key_material: &str) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(label);
    hasher.update(salt);
    hasher.update(key_material.as_bytes());
    hasher.finalize().into()
}

/// Seals `tokens` under a key derived from `key_material` (a presented raw refresh token or
/// a raw request id) and a fresh random salt, with a fresh random nonce; `bound_to` (a
/// request fingerprint, or empty) must be given again to open it.
pub fn seal(key_material: &str, bound_to: &[u8], tokens: &TokenPair) -> Vec<u8> {
    let mut plain = tokens.refresh.expose().as_bytes().to_vec();
    if let Some(access) = &tokens.access {
        plain.push(b' ');
        plain.extend_from_slice(access.expose().as_bytes());
    }
    let mut header = [0u8; 1 + SEAL_SALT_BYTES + SEAL_NONCE_BYTES];
    header[0] = SEAL_V2;
    rand::rng().fill_bytes(&mut header[1..]);
    let (salt, nonce) = header[1..].split_at(SEAL_SALT_BYTES);
    let key = seal_key(b"sessiond/seal/v2\0", salt, key_material);
    let sealed = XChaCha20Poly1305::new(Key::from_slice(&key))
        .encrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: &plain,
                aad: bound_to,
            },
        )
        .expect("xchacha20poly1305 encryption of a small buffer cannot fail");
    [header.as_slice(), &sealed].concat()
}

/// Opens a seal made by [`seal`] with the same key material and binding; None if either is
/// wrong or the blob was altered. Seals written before salts and random nonces (a bare
/// ChaCha20-Poly1305 ciphertext, never bound) still open, so that a rolling upgrade does not
/// break a retry in flight.
pub fn unseal(key_material: &str, bound_to: &[u8], sealed: &[u8]) -> Option<TokenPair> {
    let plain = open_v2(key_material, bound_to, sealed).or_else(|| {
        let key = seal_key(b"sessiond/seal/v1\0", &[], key_material);
        ChaCha20Poly1305::new(Key::from_slice(&key))
            .decrypt(Nonce::from_slice(&[0u8; 12]), sealed)
            .ok()
            .filter(|_| bound_to.is_empty())
    })?;
    let text = String::from_utf8(plain).ok()?;
    let mut parts = text.splitn(2, ' ');
    let refresh = RawToken::parse(TokenKind::Refresh, parts.next()?).ok()?;
    let access = match parts.next() {
        Some(a) => Some(RawToken::parse(TokenKind::Access, a).ok()?),
        None => None,
    };
    Some(TokenPair { refresh, access })
}

fn open_v2(key_material: &str, bound_to: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    let (&tag, rest) = sealed.split_first()?;
    if tag != SEAL_V2 || rest.len() < SEAL_SALT_BYTES + SEAL_NONCE_BYTES {
        return None;
    }
    let (salt, rest) = rest.split_at(SEAL_SALT_BYTES);
    let (nonce, ciphertext) = rest.split_at(SEAL_NONCE_BYTES);
    let key = seal_key(b"sessiond/seal/v2\0", salt, key_material);
    XChaCha20Poly1305::new(Key::from_slice(&key))
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: bound_to,
            },
        )
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_parse_and_differ() {
        let a = RawToken::mint(TokenKind::Refresh);
        let b = RawToken::mint(TokenKind::Refresh);
        assert_ne!(a, b);
        assert!(a.expose().starts_with("sdr1_"));
        assert_eq!(a.expose().len(), 5 + TOKEN_TEXT_LEN);
        assert_eq!(RawToken::parse(TokenKind::Refresh, a.expose()).unwrap(), a);
        assert!(RawToken::parse(TokenKind::Access, a.expose()).is_err());
    }

    #[test]
    fn malformed_tokens_are_rejected() {
        let good = RawToken::mint(TokenKind::Access);
        let text = good.expose();
        for bad in [
            "",
            "sda1_",
            &text[..text.len() - 1],
            &format!("{text}A"),
            &text.replace("sda1_", "sdx1_"),
            &format!("sda1_{}", "!".repeat(TOKEN_TEXT_LEN)),
        ] {
            assert!(RawToken::parse(TokenKind::Access, bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let t = RawToken::mint(TokenKind::Refresh);
        let shown = format!("{t:?} {:?}", t.hash());
        assert!(!shown.contains(&t.expose()[5..]));
    }

    #[test]
    fn ids_have_prefix_and_128_bits() {
        let id = mint_id(IdKind::Session);
        assert!(is_valid_id(IdKind::Session, &id));
        assert!(!is_valid_id(IdKind::Family, &id));
        assert!(!is_valid_id(IdKind::Session, "sid_short"));
        assert_eq!(URL_SAFE_NO_PAD.decode(&id[4..]).unwrap().len(), ID_BYTES);
    }

    #[test]
    fn seal_opens_only_with_the_same_material_and_binding() {
        let presented = RawToken::mint(TokenKind::Refresh);
        let pair = TokenPair {
            refresh: RawToken::mint(TokenKind::Refresh),
            access: Some(RawToken::mint(TokenKind::Access)),
        };
        let sealed = seal(presented.expose(), b"", &pair);
        assert_eq!(unseal(presented.expose(), b"", &sealed), Some(pair.clone()));
        assert_eq!(unseal(presented.expose(), b"other", &sealed), None);
        let other = RawToken::mint(TokenKind::Refresh);
        assert_eq!(unseal(other.expose(), b"", &sealed), None);
        for at in [0, 1, 20, sealed.len() - 1] {
            let mut tampered = sealed.clone();
            tampered[at] ^= 1;
            assert_eq!(
                unseal(presented.expose(), b"", &tampered),
                None,
                "byte {at}"
            );
        }
        let no_access = TokenPair {
            access: None,
            ..pair
        };
        let bound = seal("req-123", b"fingerprint", &no_access);
        assert_eq!(unseal("req-123", b"fingerprint", &bound), Some(no_access));
        assert_eq!(unseal("req-123", b"", &bound), None);
    }

    #[test]
    fn every_seal_has_its_own_salt_and_nonce() {
        let pair = TokenPair {
            refresh: RawToken::mint(TokenKind::Refresh),
            access: None,
        };
        let a = seal("same material", b"", &pair);
        let b = seal("same material", b"", &pair);
        let header = 1 + SEAL_SALT_BYTES + SEAL_NONCE_BYTES;
        assert_eq!(a[0], SEAL_V2);
        assert_ne!(a[1..header], b[1..header], "salt and nonce are fresh");
        assert_ne!(a[header..], b[header..], "so the ciphertexts differ");
    }

    #[test]
    fn seals_of_the_previous_format_still_open_unbound() {
        let pair = TokenPair {
            refresh: RawToken::mint(TokenKind::Refresh),
            access: None,
        };
        let key = seal_key(b"sessiond/seal/v1\0", &[], "material");
        let legacy = ChaCha20Poly1305::new(Key::from_slice(&key))
            .encrypt(
                Nonce::from_slice(&[0u8; 12]),
                pair.refresh.expose().as_bytes(),
            )
            .unwrap();
        assert_eq!(unseal("material", b"", &legacy), Some(pair));
        assert_eq!(unseal("material", b"bound", &legacy), None);
    }

    #[test]
    fn a_request_id_tells_its_time_only_as_a_uuid_v7() {
        let id = uuid::Uuid::new_v7(uuid::Timestamp::from_unix_time(
            1_765_000_000,
            123_000_000,
            0,
            0,
        ));
        assert_eq!(request_time_ms(&id.to_string()), 1_765_000_000_123);
        assert_eq!(request_time_ms(&id.simple().to_string()), 1_765_000_000_123);
        let v4 = "9b2f6c1e-8d7a-4c3b-a1e2-3f4d5c6b7a89";
        assert_eq!(request_time_ms(v4), 0);
        assert_eq!(request_time_ms("retry-42"), 0);
        assert_eq!(request_time_ms(""), 0);
    }

    #[test]
    fn request_keys_are_scoped_and_fingerprints_separate_fields() {
        let id = "0123456789abcdef";
        let key = request_key(b"acme", "revoke", id);
        assert_eq!(key, request_key(b"acme", "revoke", id));
        assert_ne!(key, request_key(b"other", "revoke", id));
        assert_ne!(key, request_key(b"acme", "create", id));
        assert_ne!(request_key(b"ab", "c", id), request_key(b"a", "bc", id));
        let f = |a: &str, b: &str| Fingerprint::new("op").text(a).text(b).finish();
        assert_eq!(f("ab", "c"), f("ab", "c"));
        assert_ne!(f("ab", "c"), f("a", "bc"));
        assert_ne!(
            Fingerprint::new("op").int(1).finish(),
            Fingerprint::new("op").int(2).finish()
        );
    }

    #[test]
    fn hashes_compare_in_constant_time() {
        let t = RawToken::mint(TokenKind::Refresh);
        assert!(constant_time_eq(t.hash().as_bytes(), t.hash().as_bytes()));
        assert!(!constant_time_eq(
            t.hash().as_bytes(),
            RawToken::mint(TokenKind::Refresh).hash().as_bytes()
        ));
    }
}
