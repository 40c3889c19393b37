//! Typed access to the key space: prost records and u64 counters.

use prost::Message;

use super::{StateError, StateRead, StateWrite};

/// The record stored at `key`, decoded.
pub fn load<M: Message + Default>(
    state: &impl StateRead,
    key: &[u8],
) -> Result<Option<M>, StateError> {
    state.get(key)?.map(|bytes| decode(&bytes)).transpose()
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
    match state.get(key)? {
        None => Ok(0),
        Some(bytes) => {
            let bytes: [u8; 8] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| StateError::Corrupt("counter is not 8 bytes".into()))?;
            Ok(u64::from_be_bytes(bytes))
        }
    }
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
