//! Typed access to the key space: prost records and u64 counters.

use prost::Message;

use super::{StateError, StateRead, StateWrite};
use crate::proto::internal::{
    AccessTokenRecord, DedupRecord, FamilyRecord, RefreshTokenRecord, SessionRecord,
    WatermarkRecord,
};
use crate::proto::SCHEMA_VERSION;

/// A stored record that carries the schema version it was written with.
pub trait Versioned: Message + Default {
    /// What the record is, for error messages.
    const KIND: &'static str;
    /// The schema version the record was written with (0: written before versions were).
    fn schema_version(&self) -> u32;
}

macro_rules! versioned {
    ($($record:ident: $kind:literal),* $(,)?) => {
        $(impl Versioned for $record {
            const KIND: &'static str = $kind;
            fn schema_version(&self) -> u32 {
                self.schema_version
            }
        })*
    };
}

versioned!(
    SessionRecord: "session",
    FamilyRecord: "family",
    RefreshTokenRecord: "refresh token",
    AccessTokenRecord: "access token",
    DedupRecord: "idempotency",
    WatermarkRecord: "watermark",
);

/// The record stored at `key`, decoded. A record written by a newer schema than this binary
/// knows is [`StateError::Unsupported`]: a node of mixed versions stops rather than reading
/// fields it does not know as absent and diverging.
pub fn load<M: Versioned>(state: &impl StateRead, key: &[u8]) -> Result<Option<M>, StateError> {
    let Some(bytes) = state.get(key)? else {
        return Ok(None);
    };
    let record: M = decode(&bytes)?;
    if record.schema_version() > SCHEMA_VERSION {
        return Err(StateError::Unsupported(format!(
            "{} record with schema version {} (this binary reads schema versions up to \
             {SCHEMA_VERSION}); upgrade this node",
            M::KIND,
            record.schema_version()
        )));
    }
    Ok(Some(record))
}

/// Decodes one stored record.
pub fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M, StateError> {
    M::decode(bytes).map_err(|e| StateError::Corrupt(format!("undecodable record: {e}")))
}

/// Stores `record` at `key`.
pub fn store<M: Message>(state: &mut impl StateWrite, key: Vec<u8>, record: &M) {
    state.put(key, record.encode_to_vec());
}

/// The counter stored at `key` (0 when absent).
pub fn counter(state: &impl StateRead, key: &[u8]) -> Result<u64, StateError> {
    Ok(stored_counter(state, key)?.unwrap_or(0))
}

/// The counter stored at `key`, if there is one.
pub fn stored_counter(state: &impl StateRead, key: &[u8]) -> Result<Option<u64>, StateError> {
    let Some(bytes) = state.get(key)? else {
        return Ok(None);
    };
    let bytes: [u8; 8] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| StateError::Corrupt("counter is not 8 bytes".into()))?;
    Ok(Some(u64::from_be_bytes(bytes)))
}

/// Adds `delta` to the counter at `key`, saturating at 0 and at `u64::MAX`.
pub fn add_to_counter(
    state: &mut impl StateWrite,
    key: Vec<u8>,
    delta: i64,
) -> Result<(), StateError> {
    let value = counter(state, &key)?.saturating_add_signed(delta);
    state.put(key, value.to_be_bytes().to_vec());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::MemoryState;
    use crate::proto::internal::FamilyRecord;

    #[test]
    fn records_round_trip_and_corruption_is_reported() {
        let mut s = MemoryState::new();
        let family = FamilyRecord {
            family_id: "f".into(),
            ..Default::default()
        };
        store(&mut s, b"k".to_vec(), &family);
        assert_eq!(load::<FamilyRecord>(&s, b"k").unwrap(), Some(family));
        assert_eq!(load::<FamilyRecord>(&s, b"none").unwrap(), None);
        s.put(b"bad".to_vec(), vec![0xff, 0xff]);
        assert!(matches!(
            load::<FamilyRecord>(&s, b"bad"),
            Err(StateError::Corrupt(_))
        ));
    }

    #[test]
    fn a_record_of_a_newer_schema_is_refused_by_name() {
        let mut s = MemoryState::new();
        let newer = SessionRecord {
            schema_version: SCHEMA_VERSION + 1,
            ..Default::default()
        };
        store(&mut s, b"k".to_vec(), &newer);
        match load::<SessionRecord>(&s, b"k") {
            Err(StateError::Unsupported(message)) => assert!(
                message.starts_with(&format!(
                    "session record with schema version {}",
                    SCHEMA_VERSION + 1
                )),
                "{message}"
            ),
            other => panic!("expected Unsupported, got {other:?}"),
        }
        let older = SessionRecord::default();
        store(&mut s, b"old".to_vec(), &older);
        assert_eq!(load::<SessionRecord>(&s, b"old").unwrap(), Some(older));
    }

    #[test]
    fn counters_start_at_zero_and_saturate() {
        let mut s = MemoryState::new();
        assert_eq!(counter(&s, b"c").unwrap(), 0);
        add_to_counter(&mut s, b"c".to_vec(), 2).unwrap();
        add_to_counter(&mut s, b"c".to_vec(), -5).unwrap();
        assert_eq!(counter(&s, b"c").unwrap(), 0);
        add_to_counter(&mut s, b"c".to_vec(), 7).unwrap();
        assert_eq!(counter(&s, b"c").unwrap(), 7);
    }
}
