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
//! Idempotent creates seal their tokens under the request id the same way. No server-wide
//! secret exists, and nothing on disk opens a seal.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
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
    fn prefix(self) -> &'static str {
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

/// The SHA-256 of a client's idempotency key: the form in which it is stored.
pub fn hash_request_id(request_id: &str) -> TokenHash {
    TokenHash(Sha256::digest(request_id.as_bytes()).into())
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

fn seal_cipher(key_material: &str) -> ChaCha20Poly1305 {
    let mut hasher = Sha256::new();
    hasher.update(b"sessiond/seal/v1\0");
    hasher.update(key_material.as_bytes());
    let key: [u8; 32] = hasher.finalize().into();
    ChaCha20Poly1305::new(Key::from_slice(&key))
}

/// Seals `tokens` under a key derived from `key_material` (a presented raw refresh token or
/// a raw request id). Each key seals exactly one payload, so a fixed nonce is safe.
pub fn seal(key_material: &str, tokens: &TokenPair) -> Vec<u8> {
    let mut plain = tokens.refresh.expose().as_bytes().to_vec();
    if let Some(access) = &tokens.access {
        plain.push(b' ');
        plain.extend_from_slice(access.expose().as_bytes());
    }
    seal_cipher(key_material)
        .encrypt(Nonce::from_slice(&[0u8; 12]), plain.as_slice())
        .expect("chacha20poly1305 encryption of a small buffer cannot fail")
}

/// Opens a seal made by [`seal`] with the same key material; None if the material is wrong
/// or the blob was altered.
pub fn unseal(key_material: &str, sealed: &[u8]) -> Option<TokenPair> {
    let plain = seal_cipher(key_material)
        .decrypt(Nonce::from_slice(&[0u8; 12]), sealed)
        .ok()?;
    let text = String::from_utf8(plain).ok()?;
    let mut parts = text.splitn(2, ' ');
    let refresh = RawToken::parse(TokenKind::Refresh, parts.next()?).ok()?;
    let access = match parts.next() {
        Some(a) => Some(RawToken::parse(TokenKind::Access, a).ok()?),
        None => None,
    };
    Some(TokenPair { refresh, access })
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
    fn seal_opens_only_with_the_same_material() {
        let presented = RawToken::mint(TokenKind::Refresh);
        let pair = TokenPair {
            refresh: RawToken::mint(TokenKind::Refresh),
            access: Some(RawToken::mint(TokenKind::Access)),
        };
        let sealed = seal(presented.expose(), &pair);
        assert_eq!(unseal(presented.expose(), &sealed), Some(pair.clone()));
        let other = RawToken::mint(TokenKind::Refresh);
        assert_eq!(unseal(other.expose(), &sealed), None);
        let mut tampered = sealed.clone();
        tampered[0] ^= 1;
        assert_eq!(unseal(presented.expose(), &tampered), None);
        let no_access = TokenPair {
            access: None,
            ..pair
        };
        assert_eq!(
            unseal("req-123", &seal("req-123", &no_access)),
            Some(no_access)
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
