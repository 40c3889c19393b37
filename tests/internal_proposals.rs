//! Internal proposals are checked like public requests: any member node that reaches the
//! peer listener can call `RaftTransport/Propose`, so a command with no kind, a nested batch, a clock far from the
//! leader's, malformed ids or hashes, or out-of-range deadlines gets INVALID_ARGUMENT and
//! changes nothing; a well-formed proposal is applied with the leader's policy and time.

mod common;

use common::*;
use sessiond::proto::internal::raft_transport_client::RaftTransportClient;
use sessiond::proto::internal::{
    command, CollectGarbage, Command, CommandBatch, CreateSession, ProposeMessage, SetRecordFormat,
    Touch,
};
use sessiond::proto::v1::*;
use sessiond::proto::SCHEMA_VERSION;
use sessiond::raft::network::{PEER_CLUSTER_METADATA, PEER_NODE_METADATA};
use tonic::Code;

fn at(now_ms: i64, kind: command::Kind) -> Command {
    Command {
        schema_version: SCHEMA_VERSION,
        now_ms,
        request_key: Vec::new(),
        request_fingerprint: Vec::new(),
        request_time_ms: 0,
        kind: Some(kind),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_internal_proposals_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path());
    let cluster_id = config.cluster_id.clone();
    let t = TestNode::start(config).await;
    let created = t
        .client
        .create_session(create_request("t", "u"))
        .await
        .unwrap()
        .session
        .unwrap();
    // A member of the cluster speaking on the peer listener (node 1 is the only member).
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", t.node.peer_addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut peer =
        RaftTransportClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
            let metadata = request.metadata_mut();
            metadata.insert(PEER_CLUSTER_METADATA, cluster_id.parse().unwrap());
            metadata.insert(PEER_NODE_METADATA, "1".parse().unwrap());
            Ok(request)
        });
    let now = sessiond::clock::now_ms();
    let good_create = CreateSession {
        session_id: format!("sid_{}", "A".repeat(22)),
        family_id: format!("fam_{}", "A".repeat(22)),
        tenant: "t".into(),
        user_id: "v".into(),
        expires_at_ms: now + 3_600_000,
        refresh_hash: vec![7; 32],
        ..Default::default()
    };
    let touch = command::Kind::Touch(Touch {
        tenant: "t".into(),
        session_id: created.session_id.clone(),
    });
    let wipe = command::Kind::CollectGarbage(CollectGarbage {
        limit: u32::MAX,
        dedup_retention_ms: 0,
        event_retention_ms: 1,
    });
    let refused = [
        (
            "no kind",
            Command {
                kind: None,
                ..at(now, touch.clone())
            },
        ),
        (
            "nested batch",
            at(
                now,
                command::Kind::Batch(CommandBatch {
                    commands: vec![at(now, touch.clone())],
                }),
            ),
        ),
        ("a clock far in the future", at(i64::MAX, wipe.clone())),
        ("a clock far in the past", at(1, touch.clone())),
        (
            "a newer schema",
            Command {
                schema_version: SCHEMA_VERSION + 1,
                ..at(now, touch.clone())
            },
        ),
        (
            "a malformed session id",
            at(
                now,
                command::Kind::CreateSession(CreateSession {
                    session_id: created.session_id.clone() + "x",
                    ..good_create.clone()
                }),
            ),
        ),
        (
            "a short refresh hash",
            at(
                now,
                command::Kind::CreateSession(CreateSession {
                    refresh_hash: vec![7; 3],
                    ..good_create.clone()
                }),
            ),
        ),
        (
            "a deadline beyond the longest lifetime",
            at(
                now,
                command::Kind::CreateSession(CreateSession {
                    expires_at_ms: i64::MAX,
                    ..good_create.clone()
                }),
            ),
        ),
        (
            "a record format this node does not know",
            at(
                now,
                command::Kind::SetRecordFormat(SetRecordFormat { format: 9 }),
            ),
        ),
        (
            "an oversize user id",
            at(
                now,
                command::Kind::CreateSession(CreateSession {
                    user_id: "u".repeat(10_000),
                    ..good_create.clone()
                }),
            ),
        ),
    ];
    let before = t.node.node().state().applied_index();
    for (what, command) in refused {
        let answer = peer
            .propose(ProposeMessage {
                command: Some(command),
            })
            .await;
        let status = answer.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    }
    assert_eq!(
        t.node.node().state().applied_index(),
        before,
        "nothing was written"
    );
    let found = t
        .client
        .lookup(lookup_by_id("t", &created.session_id))
        .await
        .unwrap();
    assert_eq!(found.session.unwrap().status(), SessionStatus::Active);

    // A well-formed proposal is applied.
    let applied = peer
        .propose(ProposeMessage {
            command: Some(at(now, command::Kind::CreateSession(good_create.clone()))),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(applied.revision > before);
    t.stop().await;
}
