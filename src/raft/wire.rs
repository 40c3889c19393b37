//! openraft's RPC messages to and from the transport's prost messages. Entries, votes and
//! memberships use the store's codec, so the wire and the disk share one encoding.

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, SnapshotMeta};

use super::TypeConfig;
use crate::proto::internal::{
    append_entries_reply, AppendEntriesMessage, AppendEntriesReply, Empty, PartialSuccess,
    SnapshotChunkMessage, SnapshotChunkReply, SnapshotMetaRecord, VoteMessage, VoteReply,
};
use crate::store::codec::{self, CodecError};

/// AppendEntries request to the wire.
pub fn append_entries_message(rpc: &AppendEntriesRequest<TypeConfig>) -> AppendEntriesMessage {
    AppendEntriesMessage {
        vote: Some(codec::vote_record(&rpc.vote)),
        prev_log_id: rpc.prev_log_id.as_ref().map(codec::log_id_record),
        entries: rpc.entries.iter().map(codec::entry_record).collect(),
        leader_commit: rpc.leader_commit.as_ref().map(codec::log_id_record),
    }
}

/// AppendEntries request from the wire.
pub fn append_entries_request(
    message: &AppendEntriesMessage,
) -> Result<AppendEntriesRequest<TypeConfig>, CodecError> {
    Ok(AppendEntriesRequest {
        vote: codec::vote(
            message
                .vote
                .as_ref()
                .ok_or_else(|| CodecError::missing("vote"))?,
        ),
        prev_log_id: codec::optional_log_id(message.prev_log_id.as_ref()),
        entries: message
            .entries
            .iter()
            .map(codec::entry)
            .collect::<Result<_, _>>()?,
        leader_commit: codec::optional_log_id(message.leader_commit.as_ref()),
    })
}

/// AppendEntries response to the wire.
pub fn append_entries_reply(response: &AppendEntriesResponse<u64>) -> AppendEntriesReply {
    use append_entries_reply::Kind;
    let kind = match response {
        AppendEntriesResponse::Success => Kind::Success(Empty {}),
        AppendEntriesResponse::PartialSuccess(matching) => Kind::PartialSuccess(PartialSuccess {
            matching: matching.as_ref().map(codec::log_id_record),
        }),
        AppendEntriesResponse::Conflict => Kind::Conflict(Empty {}),
        AppendEntriesResponse::HigherVote(vote) => Kind::HigherVote(codec::vote_record(vote)),
    };
    AppendEntriesReply { kind: Some(kind) }
}

/// AppendEntries response from the wire.
pub fn append_entries_response(
    reply: &AppendEntriesReply,
) -> Result<AppendEntriesResponse<u64>, CodecError> {
    use append_entries_reply::Kind;
    Ok(
        match reply
            .kind
            .as_ref()
            .ok_or_else(|| CodecError::missing("kind"))?
        {
            Kind::Success(_) => AppendEntriesResponse::Success,
            Kind::PartialSuccess(p) => {
                AppendEntriesResponse::PartialSuccess(codec::optional_log_id(p.matching.as_ref()))
            }
            Kind::Conflict(_) => AppendEntriesResponse::Conflict,
            Kind::HigherVote(v) => AppendEntriesResponse::HigherVote(codec::vote(v)),
        },
    )
}

/// Vote request to the wire.
pub fn vote_message(rpc: &VoteRequest<u64>) -> VoteMessage {
    VoteMessage {
        vote: Some(codec::vote_record(&rpc.vote)),
        last_log_id: rpc.last_log_id.as_ref().map(codec::log_id_record),
    }
}

/// Vote request from the wire.
pub fn vote_request(message: &VoteMessage) -> Result<VoteRequest<u64>, CodecError> {
    Ok(VoteRequest {
        vote: codec::vote(
            message
                .vote
                .as_ref()
                .ok_or_else(|| CodecError::missing("vote"))?,
        ),
        last_log_id: codec::optional_log_id(message.last_log_id.as_ref()),
    })
}

/// Vote response to the wire.
pub fn vote_reply(response: &VoteResponse<u64>) -> VoteReply {
    VoteReply {
        vote: Some(codec::vote_record(&response.vote)),
        vote_granted: response.vote_granted,
        last_log_id: response.last_log_id.as_ref().map(codec::log_id_record),
    }
}

/// Vote response from the wire.
pub fn vote_response(reply: &VoteReply) -> Result<VoteResponse<u64>, CodecError> {
    Ok(VoteResponse {
        vote: codec::vote(
            reply
                .vote
                .as_ref()
                .ok_or_else(|| CodecError::missing("vote"))?,
        ),
        vote_granted: reply.vote_granted,
        last_log_id: codec::optional_log_id(reply.last_log_id.as_ref()),
    })
}

fn snapshot_meta_record(meta: &SnapshotMeta<u64, BasicNode>) -> SnapshotMetaRecord {
    SnapshotMetaRecord {
        last_log_id: meta.last_log_id.as_ref().map(codec::log_id_record),
        last_membership: Some(codec::stored_membership_record(&meta.last_membership)),
        snapshot_id: meta.snapshot_id.clone(),
    }
}

fn snapshot_meta(record: &SnapshotMetaRecord) -> SnapshotMeta<u64, BasicNode> {
    SnapshotMeta {
        last_log_id: codec::optional_log_id(record.last_log_id.as_ref()),
        last_membership: record
            .last_membership
            .as_ref()
            .map(codec::stored_membership)
            .unwrap_or_default(),
        snapshot_id: record.snapshot_id.clone(),
    }
}

/// A snapshot chunk to the wire.
pub fn snapshot_chunk_message(rpc: &InstallSnapshotRequest<TypeConfig>) -> SnapshotChunkMessage {
    SnapshotChunkMessage {
        vote: Some(codec::vote_record(&rpc.vote)),
        meta: Some(snapshot_meta_record(&rpc.meta)),
        offset: rpc.offset,
        data: rpc.data.clone(),
        done: rpc.done,
    }
}

/// A snapshot chunk from the wire.
pub fn snapshot_chunk_request(
    message: SnapshotChunkMessage,
) -> Result<InstallSnapshotRequest<TypeConfig>, CodecError> {
    Ok(InstallSnapshotRequest {
        vote: codec::vote(
            message
                .vote
                .as_ref()
                .ok_or_else(|| CodecError::missing("vote"))?,
        ),
        meta: snapshot_meta(
            message
                .meta
                .as_ref()
                .ok_or_else(|| CodecError::missing("meta"))?,
        ),
        offset: message.offset,
        data: message.data,
        done: message.done,
    })
}

/// A snapshot chunk response to the wire.
pub fn snapshot_chunk_reply(response: &InstallSnapshotResponse<u64>) -> SnapshotChunkReply {
    SnapshotChunkReply {
        vote: Some(codec::vote_record(&response.vote)),
    }
}

/// A snapshot chunk response from the wire.
pub fn snapshot_chunk_response(
    reply: &SnapshotChunkReply,
) -> Result<InstallSnapshotResponse<u64>, CodecError> {
    Ok(InstallSnapshotResponse {
        vote: codec::vote(
            reply
                .vote
                .as_ref()
                .ok_or_else(|| CodecError::missing("vote"))?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use openraft::{CommittedLeaderId, EntryPayload, LogId, Vote};

    use super::*;

    #[test]
    fn raft_messages_survive_the_wire() {
        let id = |i| LogId::new(CommittedLeaderId::new(2, 1), i);
        let request = AppendEntriesRequest::<TypeConfig> {
            vote: Vote::new_committed(2, 1),
            prev_log_id: Some(id(4)),
            entries: vec![codec::Entry {
                log_id: id(5),
                payload: EntryPayload::Blank,
            }],
            leader_commit: Some(id(4)),
        };
        let back = append_entries_request(&append_entries_message(&request)).unwrap();
        assert_eq!(back.vote, request.vote);
        assert_eq!(back.prev_log_id, request.prev_log_id);
        assert_eq!(back.entries.len(), 1);
        assert_eq!(back.leader_commit, request.leader_commit);
        for response in [
            AppendEntriesResponse::Success,
            AppendEntriesResponse::PartialSuccess(Some(id(3))),
            AppendEntriesResponse::PartialSuccess(None),
            AppendEntriesResponse::Conflict,
            AppendEntriesResponse::HigherVote(Vote::new(9, 3)),
        ] {
            assert_eq!(
                append_entries_response(&append_entries_reply(&response)).unwrap(),
                response
            );
        }
        let vote = VoteRequest {
            vote: Vote::new(3, 2),
            last_log_id: None,
        };
        assert_eq!(vote_request(&vote_message(&vote)).unwrap(), vote);
        let granted = VoteResponse {
            vote: Vote::new(3, 2),
            vote_granted: true,
            last_log_id: Some(id(7)),
        };
        assert_eq!(vote_response(&vote_reply(&granted)).unwrap(), granted);
        assert!(vote_request(&VoteMessage::default()).is_err());
    }
}
