//! openraft's types to and from the prost records sessiond writes (to disk, and on the wire
//! between nodes). Every record carries the schema version; a record that does not decode is
//! reported as corrupt, never guessed at.

use std::collections::{BTreeMap, BTreeSet};

use openraft::{
    BasicNode, CommittedLeaderId, EntryPayload, LogId, Membership, StoredMembership, Vote,
};
use prost::Message;

use super::TypeConfig;
use crate::proto::internal::{
    log_entry_record, Command, Empty, LogEntryRecord, LogIdRecord, MembershipRecord, NodeRecord,
    StoredMembershipRecord, VoteRecord, VoterSet,
};
use crate::proto::SCHEMA_VERSION;

/// A log entry of this cluster.
pub type Entry = openraft::Entry<TypeConfig>;

/// A record that cannot be turned back into openraft's type.
#[derive(Debug, thiserror::Error)]
#[error("undecodable {what}: {reason}")]
pub struct CodecError {
    what: &'static str,
    reason: String,
}

impl CodecError {
    /// A message lacking a required field.
    pub fn missing(field: &'static str) -> Self {
        CodecError::new("message", format!("no {field}"))
    }

    fn new(what: &'static str, reason: impl ToString) -> Self {
        CodecError {
            what,
            reason: reason.to_string(),
        }
    }
}

/// A log id as a record.
pub fn log_id_record(log_id: &LogId<u64>) -> LogIdRecord {
    LogIdRecord {
        term: log_id.leader_id.term,
        node_id: log_id.leader_id.node_id,
        index: log_id.index,
    }
}

/// A log id from its record.
pub fn log_id(record: &LogIdRecord) -> LogId<u64> {
    LogId::new(
        CommittedLeaderId::new(record.term, record.node_id),
        record.index,
    )
}

/// An optional log id from an optional record.
pub fn optional_log_id(record: Option<&LogIdRecord>) -> Option<LogId<u64>> {
    record.map(log_id)
}

/// A vote as a record.
pub fn vote_record(vote: &Vote<u64>) -> VoteRecord {
    VoteRecord {
        schema_version: SCHEMA_VERSION,
        term: vote.leader_id.term,
        node_id: vote.leader_id.node_id,
        committed: vote.committed,
    }
}

/// A vote from its record.
pub fn vote(record: &VoteRecord) -> Vote<u64> {
    if record.committed {
        Vote::new_committed(record.term, record.node_id)
    } else {
        Vote::new(record.term, record.node_id)
    }
}

/// A membership as a record.
pub fn membership_record(membership: &Membership<u64, BasicNode>) -> MembershipRecord {
    MembershipRecord {
        configs: membership
            .get_joint_config()
            .iter()
            .map(|ids| VoterSet {
                node_ids: ids.iter().copied().collect(),
            })
            .collect(),
        nodes: membership
            .nodes()
            .map(|(id, node)| {
                (
                    *id,
                    NodeRecord {
                        addr: node.addr.clone(),
                    },
                )
            })
            .collect(),
    }
}

/// A membership from its record.
pub fn membership(record: &MembershipRecord) -> Membership<u64, BasicNode> {
    let configs: Vec<BTreeSet<u64>> = record
        .configs
        .iter()
        .map(|set| set.node_ids.iter().copied().collect())
        .collect();
    let nodes: BTreeMap<u64, BasicNode> = record
        .nodes
        .iter()
        .map(|(id, node)| (*id, BasicNode::new(&node.addr)))
        .collect();
    Membership::new(configs, nodes)
}

/// A stored membership (with the log id that set it) as a record.
pub fn stored_membership_record(
    stored: &StoredMembership<u64, BasicNode>,
) -> StoredMembershipRecord {
    StoredMembershipRecord {
        log_id: stored.log_id().as_ref().map(log_id_record),
        membership: Some(membership_record(stored.membership())),
    }
}

/// A stored membership from its record.
pub fn stored_membership(record: &StoredMembershipRecord) -> StoredMembership<u64, BasicNode> {
    StoredMembership::new(
        optional_log_id(record.log_id.as_ref()),
        record
            .membership
            .as_ref()
            .map(membership)
            .unwrap_or_else(|| Membership::new(Vec::new(), ())),
    )
}

/// A log entry as a record.
pub fn entry_record(entry: &Entry) -> LogEntryRecord {
    let payload = match &entry.payload {
        EntryPayload::Blank => log_entry_record::Payload::Blank(Empty {}),
        EntryPayload::Normal(command) => {
            log_entry_record::Payload::Command(command.encode_to_vec())
        }
        EntryPayload::Membership(m) => log_entry_record::Payload::Membership(membership_record(m)),
    };
    LogEntryRecord {
        schema_version: SCHEMA_VERSION,
        log_id: Some(log_id_record(&entry.log_id)),
        payload: Some(payload),
    }
}

/// A log entry from its record.
pub fn entry(record: &LogEntryRecord) -> Result<Entry, CodecError> {
    if record.schema_version > SCHEMA_VERSION {
        return Err(CodecError::new(
            "log entry",
            format!(
                "schema version {} is newer than this binary's {SCHEMA_VERSION}: upgrade this node",
                record.schema_version
            ),
        ));
    }
    let log_id = record
        .log_id
        .as_ref()
        .map(log_id)
        .ok_or_else(|| CodecError::new("log entry", "no log id"))?;
    let payload = match &record.payload {
        Some(log_entry_record::Payload::Blank(_)) => EntryPayload::Blank,
        Some(log_entry_record::Payload::Command(bytes)) => EntryPayload::Normal(
            Command::decode(bytes.as_slice()).map_err(|e| CodecError::new("command", e))?,
        ),
        Some(log_entry_record::Payload::Membership(m)) => EntryPayload::Membership(membership(m)),
        None => return Err(CodecError::new("log entry", "no payload")),
    };
    Ok(Entry { log_id, payload })
}

/// Encodes a log entry for the log tree.
pub fn encode_entry(entry: &Entry) -> Vec<u8> {
    entry_record(entry).encode_to_vec()
}

/// Decodes a log entry from the log tree.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, CodecError> {
    let record = LogEntryRecord::decode(bytes).map_err(|e| CodecError::new("log entry", e))?;
    entry(&record)
}

/// Decodes any record.
pub fn decode<M: Message + Default>(what: &'static str, bytes: &[u8]) -> Result<M, CodecError> {
    M::decode(bytes).map_err(|e| CodecError::new(what, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::internal::command;

    fn sample_membership() -> Membership<u64, BasicNode> {
        let nodes: BTreeMap<u64, BasicNode> = [
            (1, BasicNode::new("127.0.0.1:1")),
            (2, BasicNode::new("127.0.0.1:2")),
            (3, BasicNode::new("127.0.0.1:3")),
        ]
        .into();
        Membership::new(vec![[1, 2].into(), [1, 2, 3].into()], nodes)
    }

    #[test]
    fn entries_of_every_kind_round_trip() {
        let id = LogId::new(CommittedLeaderId::new(3, 2), 17);
        let command = Command {
            schema_version: SCHEMA_VERSION,
            now_ms: 5,
            request_key: vec![1, 2],
            kind: Some(command::Kind::Touch(crate::proto::internal::Touch {
                tenant: "t".into(),
                session_id: "sid_x".into(),
            })),
            ..Default::default()
        };
        for payload in [
            EntryPayload::Blank,
            EntryPayload::Normal(command),
            EntryPayload::Membership(sample_membership()),
        ] {
            let e = Entry {
                log_id: id,
                payload,
            };
            let back = decode_entry(&encode_entry(&e)).unwrap();
            assert_eq!(back.log_id, e.log_id);
            assert_eq!(format!("{:?}", back.payload), format!("{:?}", e.payload));
        }
        assert!(decode_entry(&[0xff, 0x01]).is_err());
        assert!(entry(&LogEntryRecord::default()).is_err());
    }

    #[test]
    fn votes_and_memberships_round_trip() {
        for v in [Vote::new(4, 1), Vote::new_committed(9, 3)] {
            assert_eq!(vote(&vote_record(&v)), v);
        }
        let stored = StoredMembership::new(
            Some(LogId::new(CommittedLeaderId::new(1, 1), 4)),
            sample_membership(),
        );
        assert_eq!(
            stored_membership(&stored_membership_record(&stored)),
            stored
        );
    }
}
