//! The domain's key space layout. Every key starts with a one-byte tag (never `0x00`, which
//! is reserved for the store's metadata); variable-length parts are length-prefixed so that
//! one tenant's or user's prefix never matches another's, and timestamps are big-endian with
//! the sign bit flipped so that byte order is time order.
//!
//! | tag | key | value |
//! | --- | --- | --- |
//! | `s` | session id | `SessionRecord` (compact format: without the ids the key implies) |
//! | `f` | family id | `FamilyRecord` (compact format: only for a family with joined members or revoked) |
//! | `m` | family id, session id | session id, empty in the compact format (family members; there the founder is implicit) |
//! | `r` | refresh-token hash | `RefreshTokenRecord` |
//! | `h` | session id, generation | retired refresh-token hash of the session (formats 1–3) |
//! | `a` | access-token hash | `AccessTokenRecord` |
//! | `A` | expiry, access-token hash | empty (access-token expiry index) |
//! | `u` | tenant, user, created at, session id | session id, empty in the compact format (a user's sessions, oldest first) |
//! | `x` | expiry, session id | empty (session expiry index) |
//! | `n` | tenant | u64: sessions neither revoked nor collected |
//! | `c` | tenant | u64: replays detected in the tenant |
//! | `C` | tenant, user | u64: replays detected for the user |
//! | `d` | request time, request key (formats 1–4: request key) | `DedupRecord` |
//! | `D` | applied at, the `d` key's rest | empty (dedup expiry index) |
//! | `L` | | i64: the latest time a dedup record was stored under an untimed key, while one may remain (format 5) |
//! | `e` | revision, sequence | `RevocationEvent` (retained for stream subscribers) |
//! | `E` | | u64: the highest revision whose events were compacted |
//! | `K` | | u64: sessions ever created (the last `created_seq` given) |
//! | `W` | tenant | `WatermarkRecord`: the tenant's revoked-before watermark |
//! | `w` | tenant, user | `WatermarkRecord`: the user's revoked-before watermark |
//! | `N` | tenant, user | u64 count + u64 tenant epoch: the user's sessions neither revoked nor collected |
//! | `T` | | i64: the latest time any command was applied with (cluster time never goes back) |
//! | `V` | | u64: the record format (absent: 1, the legacy format; see [`super::format`]) |

/// Tag of session records.
const SESSION: u8 = b's';
/// Tag of family records.
const FAMILY: u8 = b'f';
/// Tag of the family membership index.
const FAMILY_MEMBER: u8 = b'm';
/// Tag of the refresh-token index.
const REFRESH: u8 = b'r';
/// Tag of a session's retired refresh-token hashes.
const RETIRED: u8 = b'h';
/// Tag of the access-token index.
const ACCESS: u8 = b'a';
/// Tag of the access-token expiry index.
const ACCESS_EXPIRY: u8 = b'A';
/// Tag of the per-user session index.
const USER_SESSION: u8 = b'u';
/// Tag of the session expiry index.
const SESSION_EXPIRY: u8 = b'x';
/// Tag of the per-tenant live session counter.
const TENANT_LIVE: u8 = b'n';
/// Tag of the per-tenant replay counter.
const TENANT_REPLAYS: u8 = b'c';
/// Tag of the per-user replay counter.
const USER_REPLAYS: u8 = b'C';
/// Tag of dedup records.
const DEDUP: u8 = b'd';
/// Tag of the dedup expiry index.
const DEDUP_EXPIRY: u8 = b'D';
/// Tag of the marker of dedup records stored under untimed keys.
const UNTIMED_DEDUP: u8 = b'L';
/// Tag of retained revocation events.
const EVENT: u8 = b'e';
/// Tag of the event compaction watermark.
const EVENTS_COMPACTED: u8 = b'E';
/// Tag of the session creation counter.
const CREATED: u8 = b'K';
/// Tag of tenant revoked-before watermarks.
const TENANT_WATERMARK: u8 = b'W';
/// Tag of user revoked-before watermarks.
const USER_WATERMARK: u8 = b'w';
/// Tag of the per-user live session counter.
const USER_LIVE: u8 = b'N';
/// Tag of the latest applied command time.
const APPLIED_TIME: u8 = b'T';
/// Tag of the record format.
const RECORD_FORMAT: u8 = b'V';

/// A key being built: a tag followed by parts.
struct Key(Vec<u8>);

impl Key {
    fn new(tag: u8) -> Self {
        Key(vec![tag])
    }

    /// Appends a variable-length part, prefixed with its length.
    fn part(mut self, bytes: &[u8]) -> Self {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        self.0.extend_from_slice(&len.to_be_bytes());
        self.0.extend_from_slice(bytes);
        self
    }

    /// Appends a fixed-length part as is (the last part, or one of known length).
    fn raw(mut self, bytes: &[u8]) -> Self {
        self.0.extend_from_slice(bytes);
        self
    }

    /// Appends a timestamp so that byte order is numeric order.
    fn time(self, ms: i64) -> Self {
        self.raw(&ordered_time(ms))
    }

    fn done(self) -> Vec<u8> {
        self.0
    }
}

/// `ms` as 8 bytes whose byte order is numeric order (negative values included).
pub fn ordered_time(ms: i64) -> [u8; 8] {
    ((ms as u64) ^ (1 << 63)).to_be_bytes()
}

/// The timestamp encoded by [`ordered_time`] at the start of `bytes`, if there are 8.
pub fn read_ordered_time(bytes: &[u8]) -> Option<i64> {
    let head: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(head) ^ (1 << 63)) as i64)
}

/// A session record.
pub fn session(session_id: &str) -> Vec<u8> {
    session_bytes(session_id.as_bytes())
}

/// A session record, by the id's bytes (as stored in the indexes).
pub fn session_bytes(session_id: &[u8]) -> Vec<u8> {
    Key::new(SESSION).raw(session_id).done()
}

/// The prefix of every session record.
pub fn sessions_prefix() -> Vec<u8> {
    vec![SESSION]
}

/// A family record.
pub fn family(family_id: &str) -> Vec<u8> {
    Key::new(FAMILY).raw(family_id.as_bytes()).done()
}

/// Prefix of a family's member index.
pub fn family_members(family_id: &str) -> Vec<u8> {
    Key::new(FAMILY_MEMBER).part(family_id.as_bytes()).done()
}

/// One family member.
pub fn family_member(family_id: &str, session_id: &str) -> Vec<u8> {
    Key(family_members(family_id))
        .raw(session_id.as_bytes())
        .done()
}

/// The session id at the end of a family member's key (whatever the value holds).
pub fn member_of_family_entry(key: &[u8]) -> Option<&[u8]> {
    skip_part(key.get(1..)?)
}

/// A refresh-token hash in the index.
pub fn refresh(hash: &[u8]) -> Vec<u8> {
    Key::new(REFRESH).raw(hash).done()
}

/// Prefix of a session's retired refresh-token hashes.
pub fn retired_of(session_id: &str) -> Vec<u8> {
    Key::new(RETIRED).part(session_id.as_bytes()).done()
}

/// The refresh-token hash a session retired at `generation`.
pub fn retired(session_id: &str, generation: u64) -> Vec<u8> {
    Key(retired_of(session_id))
        .raw(&generation.to_be_bytes())
        .done()
}

/// An access-token hash in the index.
pub fn access(hash: &[u8]) -> Vec<u8> {
    Key::new(ACCESS).raw(hash).done()
}

/// Prefix of the access-token expiry index.
pub fn access_expiry_prefix() -> Vec<u8> {
    vec![ACCESS_EXPIRY]
}

/// An access token's entry in the expiry index.
pub fn access_expiry(expires_at_ms: i64, hash: &[u8]) -> Vec<u8> {
    Key::new(ACCESS_EXPIRY).time(expires_at_ms).raw(hash).done()
}

/// Prefix of every per-user index entry of a tenant.
pub fn tenant_sessions(tenant: &str) -> Vec<u8> {
    Key::new(USER_SESSION).part(tenant.as_bytes()).done()
}

/// Prefix of a user's sessions, oldest first.
pub fn user_sessions(tenant: &str, user_id: &str) -> Vec<u8> {
    Key(tenant_sessions(tenant)).part(user_id.as_bytes()).done()
}

/// A session's entry in its user's index.
pub fn user_session(tenant: &str, user_id: &str, created_at_ms: i64, session_id: &str) -> Vec<u8> {
    Key(user_sessions(tenant, user_id))
        .time(created_at_ms)
        .raw(session_id.as_bytes())
        .done()
}

/// The session id at the end of a user index key (whatever the value holds).
pub fn session_of_user_entry(key: &[u8]) -> Option<&[u8]> {
    let after_user = skip_part(skip_part(key.get(1..)?)?)?;
    after_user.get(8..)
}

/// What follows the length-prefixed part at the start of `bytes`.
fn skip_part(bytes: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    bytes.get(4usize.checked_add(len)?..)
}

/// Prefix of the session expiry index.
pub fn session_expiry_prefix() -> Vec<u8> {
    vec![SESSION_EXPIRY]
}

/// A session's entry in the expiry index.
pub fn session_expiry(expires_at_ms: i64, session_id: &str) -> Vec<u8> {
    Key::new(SESSION_EXPIRY)
        .time(expires_at_ms)
        .raw(session_id.as_bytes())
        .done()
}

/// The tenant's counter of sessions neither revoked nor collected.
pub fn tenant_live(tenant: &str) -> Vec<u8> {
    Key::new(TENANT_LIVE).part(tenant.as_bytes()).done()
}

/// The prefix of every tenant's live-session counter.
pub fn tenant_live_prefix() -> Vec<u8> {
    vec![TENANT_LIVE]
}

/// The tenant named by a live-session counter key.
pub fn tenant_of_live(key: &[u8]) -> Option<String> {
    let len = u32::from_be_bytes(key.get(1..5)?.try_into().ok()?) as usize;
    let name = key.get(5..5usize.checked_add(len)?)?;
    String::from_utf8(name.to_vec()).ok()
}

/// The tenant's replay counter.
pub fn tenant_replays(tenant: &str) -> Vec<u8> {
    Key::new(TENANT_REPLAYS).part(tenant.as_bytes()).done()
}

/// The user's replay counter.
pub fn user_replays(tenant: &str, user_id: &str) -> Vec<u8> {
    Key::new(USER_REPLAYS)
        .part(tenant.as_bytes())
        .part(user_id.as_bytes())
        .done()
}

/// A dedup record, by its key's rest after the tag ([`super::dedup`]).
pub fn dedup(stored_key: &[u8]) -> Vec<u8> {
    Key::new(DEDUP).raw(stored_key).done()
}

/// Prefix of the dedup expiry index.
pub fn dedup_expiry_prefix() -> Vec<u8> {
    vec![DEDUP_EXPIRY]
}

/// A dedup record's entry in the expiry index.
pub fn dedup_expiry(applied_at_ms: i64, stored_key: &[u8]) -> Vec<u8> {
    Key::new(DEDUP_EXPIRY)
        .time(applied_at_ms)
        .raw(stored_key)
        .done()
}

/// The marker of dedup records stored under untimed keys.
pub fn untimed_dedup_until() -> Vec<u8> {
    vec![UNTIMED_DEDUP]
}

/// Prefix of the retained revocation events, in revision order.
pub fn events_prefix() -> Vec<u8> {
    vec![EVENT]
}

/// The `sequence`-th event caused by the command at `revision`.
pub fn event(revision: u64, sequence: u32) -> Vec<u8> {
    Key::new(EVENT)
        .raw(&revision.to_be_bytes())
        .raw(&sequence.to_be_bytes())
        .done()
}

/// The revision of an event key.
pub fn revision_of_event(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(1..9)?.try_into().ok()?))
}

/// The revision and sequence of an event key.
pub fn position_of_event(key: &[u8]) -> Option<(u64, u32)> {
    let sequence = u32::from_be_bytes(key.get(9..13)?.try_into().ok()?);
    Some((revision_of_event(key)?, sequence))
}

/// The event compaction watermark.
pub fn events_compacted() -> Vec<u8> {
    vec![EVENTS_COMPACTED]
}

/// The counter of sessions ever created.
pub fn created() -> Vec<u8> {
    vec![CREATED]
}

/// A tenant's revoked-before watermark.
pub fn tenant_watermark(tenant: &str) -> Vec<u8> {
    Key::new(TENANT_WATERMARK).part(tenant.as_bytes()).done()
}

/// A user's revoked-before watermark.
pub fn user_watermark(tenant: &str, user_id: &str) -> Vec<u8> {
    Key::new(USER_WATERMARK)
        .part(tenant.as_bytes())
        .part(user_id.as_bytes())
        .done()
}

/// The user's counter of sessions neither revoked nor collected.
pub fn user_live(tenant: &str, user_id: &str) -> Vec<u8> {
    Key::new(USER_LIVE)
        .part(tenant.as_bytes())
        .part(user_id.as_bytes())
        .done()
}

/// The latest time a command was applied with.
pub fn applied_time() -> Vec<u8> {
    vec![APPLIED_TIME]
}

/// The state's record format.
pub fn record_format() -> Vec<u8> {
    vec![RECORD_FORMAT]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordered_time_sorts_like_numbers_and_round_trips() {
        let times = [i64::MIN, -5, -1, 0, 1, 1_700_000_000_000, i64::MAX];
        for pair in times.windows(2) {
            assert!(ordered_time(pair[0]) < ordered_time(pair[1]));
        }
        for t in times {
            assert_eq!(read_ordered_time(&ordered_time(t)), Some(t));
        }
    }

    #[test]
    fn one_tenant_prefix_never_matches_another() {
        let a = user_session("a", "bc", 1, "sid");
        assert!(a.starts_with(&tenant_sessions("a")));
        assert!(!a.starts_with(&tenant_sessions("ab")));
        assert!(!user_session("ab", "c", 1, "sid").starts_with(&tenant_sessions("a")));
        assert!(!a.starts_with(&user_sessions("a", "b")));
    }

    #[test]
    fn a_live_counter_key_names_its_tenant() {
        for tenant in ["", "acme", "a\u{e9}b"] {
            let key = tenant_live(tenant);
            assert!(key.starts_with(&tenant_live_prefix()));
            assert_eq!(tenant_of_live(&key).as_deref(), Some(tenant));
        }
        assert_eq!(tenant_of_live(&[TENANT_LIVE, 0, 0, 0, 9, b'x']), None);
    }

    #[test]
    fn index_keys_name_their_session() {
        for (tenant, user) in [("", ""), ("acme", "u\u{e9}"), ("t", "a-long-user-name")] {
            let key = user_session(tenant, user, -7, "sid_x");
            assert_eq!(session_of_user_entry(&key), Some(&b"sid_x"[..]));
        }
        assert_eq!(
            member_of_family_entry(&family_member("fam_x", "sid_y")),
            Some(&b"sid_y"[..])
        );
        assert_eq!(session_of_user_entry(&[USER_SESSION, 0, 0, 0, 9]), None);
        assert_eq!(member_of_family_entry(&[FAMILY_MEMBER, 0, 0, 0, 9]), None);
    }

    #[test]
    fn user_index_is_ordered_by_creation() {
        assert!(user_session("t", "u", 5, "sid_b") < user_session("t", "u", 6, "sid_a"));
    }

    #[test]
    fn no_key_starts_with_the_reserved_byte() {
        for key in [
            session("s"),
            family("f"),
            family_member("f", "s"),
            refresh(&[0; 32]),
            retired("s", 0),
            access(&[0; 32]),
            access_expiry(0, &[0; 32]),
            user_session("", "", 0, "s"),
            session_expiry(0, "s"),
            tenant_live(""),
            tenant_replays(""),
            user_replays("", ""),
            dedup(&[0; 32]),
            dedup_expiry(0, &[0; 32]),
            untimed_dedup_until(),
            event(0, 0),
            events_compacted(),
            created(),
            tenant_watermark(""),
            user_watermark("", ""),
            user_live("", ""),
            applied_time(),
            record_format(),
        ] {
            assert_ne!(key[0], 0);
        }
    }
}
