//! A rotation a follower forwarded, sent again by that follower after the leader's answer was
//! lost, when the follower leads by then (the fault schedules' isolated leaders, splits and
//! one-way partitions do this: seeds 7 and 52). The command carries a request key (the
//! caller's request id, or one the follower set when it first forwarded it), so the copy
//! sent again finds the first one applied; the answer must still be the command's own: the
//! token's first redemption, not a retry.

use std::time::{Duration, Instant};

use sessiond::proto::v1::session_authority_client::SessionAuthorityClient;
use sessiond::proto::v1::*;
use tonic::transport::{Channel, Endpoint};

use crate::cluster::Cluster;
use crate::proxy::LinkMode;
use crate::GRACE_MS;

/// How long node 2's requests to node 1 take, each way, while the rotation is forwarded.
const FORWARD_DELAY_MS: u64 = 1_000;
/// Scenario runs per request id: a run where node 2 does not end up leading in time (an
/// election is a race) shows nothing and is run again.
const ATTEMPTS: usize = 3;

fn client(url: String) -> SessionAuthorityClient<Channel> {
    let channel = Endpoint::from_shared(url)
        .expect("url")
        .timeout(Duration::from_secs(30))
        .connect_lazy();
    SessionAuthorityClient::new(channel)
}

fn lookup(id: &str, consistency: Consistency) -> LookupRequest {
    LookupRequest {
        tenant: "t".into(),
        key: Some(lookup_request::Key::SessionId(id.to_owned())),
        consistency: consistency as i32,
    }
}

/// The generation of session `id` in node `node`'s applied state (LOCAL lookup).
async fn local_generation(cluster: &Cluster, node: u64, id: &str) -> Option<u64> {
    let found = client(cluster.url(node))
        .lookup(lookup(id, Consistency::Local))
        .await
        .ok()?;
    found.into_inner().session.map(|s| s.generation)
}

/// Node 2 forwards a rotation to leader 1, which commits it; before the answer gets back,
/// node 1 is cut off and node 3 killed, so node 2 campaigns alone at rising terms; node 3
/// comes back at its old term and votes for it. Node 2 then proposes the command again, as
/// leader, and finds the first copy applied. Returns the answer and the successor's next
/// rotation, or None when node 2 did not lead in time.
async fn rotation_proposed_again_by_its_node(
    request_id: &str,
) -> Option<(RotateResponse, RotateResponse)> {
    let mut cluster = Cluster::three_voters(GRACE_MS).await;
    let request = CreateSessionRequest {
        tenant: "t".into(),
        user_id: "u".into(),
        ..Default::default()
    };
    let created = client(cluster.url(1))
        .create_session(request)
        .await
        .expect("create")
        .into_inner();
    let id = created.session.expect("session").session_id;
    let deadline = Instant::now() + Duration::from_secs(20);
    while local_generation(&cluster, 2, &id).await != Some(0) {
        assert!(Instant::now() < deadline, "node 2 never applied the create");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Node 2's requests to node 1 become slow; a LINEARIZABLE read on node 2 (a read index
    // from node 1) opens the slow connection, so the rotation's forward pays one delay.
    cluster.proxies.set(2, 1, LinkMode::Delay(FORWARD_DELAY_MS));
    client(cluster.url(2))
        .lookup(lookup(&id, Consistency::Linearizable))
        .await
        .expect("read on node 2");
    let mut at_node_2 = client(cluster.url(2));
    let request = RotateRequest {
        refresh_token: created.refresh_token,
        request_id: request_id.to_owned(),
        ..Default::default()
    };
    let rotation = tokio::spawn(async move { at_node_2.rotate(request).await });
    let deadline = Instant::now() + Duration::from_secs(20);
    while local_generation(&cluster, 3, &id).await != Some(1) {
        assert!(Instant::now() < deadline, "the rotation never committed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Committed; its answer is still on the slow link.
    cluster.kill(3);
    for (from, to) in [(2, 1), (1, 2), (1, 3), (3, 1)] {
        cluster.proxies.set(from, to, LinkMode::Down);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.status(2).await.map_or(0, |s| s.term) < 2 {
        assert!(Instant::now() < deadline, "node 2 never campaigned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.start(3);
    let answer = rotation.await.expect("rotation task").ok()?.into_inner();
    if cluster.status(2).await?.leader_id != 2 {
        return None;
    }

    cluster.proxies.heal();
    let request = RotateRequest {
        refresh_token: answer.refresh_token.clone(),
        ..Default::default()
    };
    let next = client(cluster.url(2))
        .rotate(request)
        .await
        .expect("rotate the successor")
        .into_inner();
    Some((answer, next))
}

/// Once with no request id (node 2 keys the command when it first forwards it), once with
/// the caller's request id, which node 2 sends again (the caller does not retry). Before
/// the fix both answers said `retried`: the token's only redemption reported as a repeat,
/// which the checker rejects. The successor is the one committed: it rotates, once.
#[test]
fn a_rotation_its_node_proposes_again_after_a_lost_answer_is_no_retry() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    for request_id in ["", "reforward-test-request-0001"] {
        let (answer, next) = (0..ATTEMPTS)
            .find_map(|_| runtime.block_on(rotation_proposed_again_by_its_node(request_id)))
            .unwrap_or_else(|| panic!("node 2 never led in time in {ATTEMPTS} runs"));
        assert_eq!(answer.outcome(), RotateOutcome::Rotated);
        assert!(
            !answer.retried,
            "request id {request_id:?}: the token's only redemption was answered as a retry"
        );
        assert_eq!(answer.session.map(|s| s.generation), Some(1));
        assert_eq!(next.outcome(), RotateOutcome::Rotated);
        assert!(!next.retried);
        assert_eq!(next.session.map(|s| s.generation), Some(2));
    }
}
