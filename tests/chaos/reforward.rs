//! A write a follower forwarded, re-sent by that follower after the leader's answer was lost
//! (the fault schedules' one-way partitions and isolated leaders do this; seed 7 caught it).
//! The follower keys the command the first time it forwards it, so the re-sent copy finds
//! the first one applied; the answer must be the command's own: a first redemption is not a
//! retry, whether the re-sent copy went to a new leader or the follower leads by then.

use std::time::{Duration, Instant};

use sessiond::proto::v1::session_authority_client::SessionAuthorityClient;
use sessiond::proto::v1::*;
use tonic::transport::{Channel, Endpoint};

use crate::cluster::Cluster;
use crate::proxy::LinkMode;
use crate::GRACE_MS;

/// How long node 2's requests to node 1 take, each way, while the rotation is forwarded.
const FORWARD_DELAY_MS: u64 = 1_000;
/// How long node 3 stays down while node 2 campaigns alone.
const RESTART_AFTER_MS: u64 = 1_500;

fn client(url: String) -> SessionAuthorityClient<Channel> {
    let channel = Endpoint::from_shared(url)
        .expect("url")
        .timeout(Duration::from_secs(30))
        .connect_lazy();
    SessionAuthorityClient::new(channel)
}

/// The generation of session `id` in node `node`'s applied state (LOCAL lookup).
async fn local_generation(cluster: &Cluster, node: u64, id: &str) -> Option<u64> {
    let request = LookupRequest {
        tenant: "t".into(),
        key: Some(lookup_request::Key::SessionId(id.to_owned())),
        consistency: Consistency::Local as i32,
    };
    let found = client(cluster.url(node)).lookup(request).await.ok()?;
    found.into_inner().session.map(|s| s.generation)
}

/// Node 2 forwards a rotation to leader 1, which commits it; before the answer gets back,
/// node 1 is cut off and node 2 (the only node that can win) is elected, so node 2 proposes
/// its keyed command again, as leader, and finds the first copy applied. On the commit
/// before the fix the answer said `retried` (the rotation's only redemption reported as a
/// repeat, which the checker rejects); the successor is the one committed either way.
#[test]
fn a_rotation_node_2_proposes_again_after_a_lost_forward_answer_is_no_retry() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut cluster = Cluster::prepare(&[1, 2, 3], GRACE_MS).await;
        cluster.start(1);
        cluster
            .wait_leader(Duration::from_secs(20))
            .await
            .expect("leader");
        for id in [2, 3] {
            cluster.start(id);
            cluster.add_learner(1, id).await.expect("add");
            cluster.promote(1, id).await.expect("promote");
        }
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

        cluster.proxies.set(2, 1, LinkMode::Delay(FORWARD_DELAY_MS));
        let mut at_node_2 = client(cluster.url(2));
        let presented = created.refresh_token.clone();
        let rotation = tokio::spawn(async move {
            let request = RotateRequest {
                refresh_token: presented,
                ..Default::default()
            };
            at_node_2.rotate(request).await
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        while local_generation(&cluster, 3, &id).await != Some(1) {
            assert!(Instant::now() < deadline, "the rotation never committed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Committed; its answer is still on the slow link. Node 1 is cut off and node 3
        // killed: node 2 campaigns alone at rising terms. Node 3, back at its old term,
        // votes for node 2 instead of competing with it, so node 2 leads.
        cluster.kill(3);
        for (from, to) in [(2, 1), (1, 2), (1, 3), (3, 1)] {
            cluster.proxies.set(from, to, LinkMode::Down);
        }
        tokio::time::sleep(Duration::from_millis(RESTART_AFTER_MS)).await;
        cluster.start(3);
        let answer = rotation
            .await
            .expect("rotation task")
            .expect("the rotation is answered")
            .into_inner();
        let leader = cluster.status(2).await.expect("node 2 status").leader_id;
        assert_eq!(
            leader, 2,
            "node 2 should lead and have proposed the rotation again"
        );
        assert_eq!(answer.outcome(), RotateOutcome::Rotated);
        assert!(
            !answer.retried,
            "the token's only redemption was answered as a retry"
        );
        assert_eq!(answer.session.as_ref().map(|s| s.generation), Some(1));

        // The successor answered is the one committed: it rotates, once.
        cluster.proxies.heal();
        let request = RotateRequest {
            refresh_token: answer.refresh_token,
            ..Default::default()
        };
        let next = client(cluster.url(2))
            .rotate(request)
            .await
            .expect("rotate the successor")
            .into_inner();
        assert_eq!(next.outcome(), RotateOutcome::Rotated);
        assert!(!next.retried);
        assert_eq!(next.session.map(|s| s.generation), Some(2));
    });
}
