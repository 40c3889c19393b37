//! The state machine's key space, as the domain core sees it.
//!
//! The domain core applies commands to an ordered map of byte keys to byte values through
//! [`StateRead`] and [`StateWrite`]. It never learns what stores the map: the sled state
//! machine implements these traits over a write batch (so one command, or a group of them,
//! commits atomically), and [`MemoryState`] implements them over a `BTreeMap` for tests and
//! benchmarks.
//!
//! Iteration order is byte order of keys, so everything derived from a scan is
//! deterministic.

use std::collections::BTreeMap;

/// A failure of the storage underneath the state, or a record that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The underlying store failed (I/O).
    #[error("store failure: {0}")]
    Store(String),
    /// A stored record could not be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A command or record written by a newer version of sessiond (mixed versions).
    #[error("unsupported by this version of sessiond: {0}")]
    Unsupported(String),
}

/// A key/value pair read from the state.
pub type StateEntry = (Vec<u8>, Vec<u8>);

/// Read access to the ordered key space.
pub trait StateRead {
    /// The value stored at `key`, if any.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError>;

    /// Up to `limit` entries whose key starts with `prefix`, in key order, beginning strictly
    /// after `start_after` when it is given (for pagination).
    fn scan_prefix(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<StateEntry>, StateError>;
}

/// Write access to the ordered key space. Writes become visible to later reads through the
/// same handle at once, and durable together when the owner commits them.
pub trait StateWrite: StateRead {
    /// Stores `value` at `key`, replacing any previous value.
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>);

    /// Removes `key` if present.
    fn delete(&mut self, key: &[u8]);
}

/// An in-memory key space, for tests, property tests and benchmarks of the domain core.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemoryState {
    entries: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl MemoryState {
    /// An empty key space.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every entry in key order: two states are identical iff these are equal.
    pub fn entries(&self) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        &self.entries
    }
}

impl StateRead for MemoryState {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.entries.get(key).cloned())
    }

    fn scan_prefix(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<StateEntry>, StateError> {
        use std::ops::Bound;
        let lower = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after.to_vec()),
            _ => Bound::Included(prefix.to_vec()),
        };
        Ok(self
            .entries
            .range((lower, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

impl StateWrite for MemoryState {
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.entries.insert(key, value);
    }

    fn delete(&mut self, key: &[u8]) {
        self.entries.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_prefix_respects_prefix_order_start_and_limit() {
        let mut s = MemoryState::new();
        for k in ["a/1", "a/2", "a/3", "b/1", "a"] {
            s.put(k.as_bytes().to_vec(), k.as_bytes().to_vec());
        }
        let keys = |v: Vec<StateEntry>| -> Vec<String> {
            v.into_iter()
                .map(|(k, _)| String::from_utf8(k).unwrap())
                .collect()
        };
        assert_eq!(
            keys(s.scan_prefix(b"a/", None, 10).unwrap()),
            ["a/1", "a/2", "a/3"]
        );
        assert_eq!(
            keys(s.scan_prefix(b"a/", Some(b"a/1"), 10).unwrap()),
            ["a/2", "a/3"]
        );
        assert_eq!(keys(s.scan_prefix(b"a/", None, 2).unwrap()), ["a/1", "a/2"]);
        s.delete(b"a/2");
        assert_eq!(
            keys(s.scan_prefix(b"a/", None, 10).unwrap()),
            ["a/1", "a/3"]
        );
    }
}
