//! Health that means something: gRPC health (and `/readyz`) turns NOT_SERVING on a leader
//! cut off from its quorum and on a node left without a leader, and SERVING again once the
//! cluster heals; `/metrics` serves Raft and RPC metrics of a real node.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use futures::StreamExt;
use sessiond::proto::v1::cluster_client::ClusterClient;
use sessiond::proto::v1::*;
use tonic_health::pb::health_check_response::ServingStatus;

use common::cluster::TestCluster;
use common::{create_request, http_get, test_config, wait_for_health, TestNode};

const SERVICES: [&str; 2] = ["", "sessiond.v1.SessionAuthority"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_its_quorum_and_a_node_without_leader_are_not_serving() {
    let mut cluster = TestCluster::start(3, |c| {
        c.health.max_leader_ack_ms = 1_500;
    })
    .await;
    let leader = cluster.wait_for_leader(&[1, 2, 3]).await;
    for node in cluster.nodes.values() {
        for service in SERVICES {
            wait_for_health(
                node.node.addr(),
                service,
                ServingStatus::Serving,
                Duration::from_secs(15),
            )
            .await;
        }
    }

    cluster.isolate(leader, true);
    let majority: Vec<u64> = cluster
        .nodes
        .keys()
        .copied()
        .filter(|i| *i != leader)
        .collect();
    cluster.wait_for_leader(&majority).await;
    for service in SERVICES {
        wait_for_health(
            cluster.nodes[&leader].node.addr(),
            service,
            ServingStatus::NotServing,
            Duration::from_secs(15),
        )
        .await;
    }
    for id in &majority {
        wait_for_health(
            cluster.nodes[id].node.addr(),
            "",
            ServingStatus::Serving,
            Duration::from_secs(15),
        )
        .await;
    }

    cluster.isolate(leader, false);
    wait_for_health(
        cluster.nodes[&leader].node.addr(),
        "",
        ServingStatus::Serving,
        Duration::from_secs(20),
    )
    .await;

    // Two of three stopped: the last one loses its leader (or, leading, its quorum).
    let last = majority[0];
    for id in [leader, majority[1]] {
        cluster.stop_node(id).await;
    }
    wait_for_health(
        cluster.nodes[&last].node.addr(),
        "sessiond.v1.SessionAuthority",
        ServingStatus::NotServing,
        Duration::from_secs(20),
    )
    .await;
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_and_metrics_are_served_on_the_metrics_listener() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.metrics_listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    // A snapshot purges the whole log, so that a learner catches up by snapshot transfer.
    config.raft.max_in_snapshot_log_to_keep = 0;
    let node = TestNode::start(config).await;
    let metrics = node.node.metrics_addr().expect("metrics listener bound");
    wait_for_health(
        node.node.addr(),
        "",
        ServingStatus::Serving,
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(http_get(metrics, "/healthz").await.0, 200);
    assert_eq!(http_get(metrics, "/readyz").await.0, 200);
    assert_eq!(http_get(metrics, "/nope").await.0, 404);

    let mut stream = node
        .client
        .watch_revocations(WatchRevocationsRequest::default())
        .await
        .expect("watch");
    node.client
        .create_session(create_request("acme", "alice"))
        .await
        .expect("created");
    let mut invalid = create_request("acme", "");
    invalid.user_id.clear();
    assert!(node.client.create_session(invalid).await.is_err());
    // A revocation reaches the stream subscriber (its lag is observed).
    let revoked = node
        .client
        .create_session(create_request("acme", "bob"))
        .await
        .expect("created");
    node.client
        .revoke(RevokeRequest {
            tenant: "acme".into(),
            scope: RevokeScope::Session as i32,
            id: revoked.session.expect("a session").session_id,
            reason: RevocationReason::Logout as i32,
            ..Default::default()
        })
        .await
        .expect("revoked");
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("a stream message in time")
            .expect("stream open")
            .expect("no error");
        if let Some(watch_revocations_response::Kind::Events(_)) = message.kind {
            break;
        }
    }
    // A snapshot is built (and the log purged behind it), then sent to a learner that
    // installs it: build, transfer (both directions, one process) and install are measured.
    let mut admin = ClusterClient::connect(format!("http://{}", node.node.addr()))
        .await
        .expect("admin connects");
    admin
        .trigger_snapshot(TriggerSnapshotRequest {})
        .await
        .expect("snapshot triggered");
    node.node
        .node()
        .raft()
        .wait(Some(Duration::from_secs(60)))
        .metrics(
            |m| m.purged.is_some(),
            "the log was purged behind a snapshot",
        )
        .await
        .expect("snapshot built and log purged");
    let learner_dir = tempfile::tempdir().unwrap();
    let mut learner_config = test_config(learner_dir.path());
    learner_config.node_id = 2;
    learner_config.bootstrap = false;
    let learner = TestNode::start(learner_config).await;
    admin
        .add_learner(AddLearnerRequest {
            node_id: 2,
            addr: learner.node.peer_addr().to_string(),
            timeout_ms: 120_000,
        })
        .await
        .expect("the learner caught up by snapshot");

    // Raft gauges come from the sampler (every second), tenant counts every ten seconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    let wanted = [
        "sessiond_rpc_requests_total{code=\"Ok\",method=\"/sessiond.v1.SessionAuthority/CreateSession\"} 2",
        "sessiond_rpc_requests_total{code=\"InvalidArgument\",method=\"/sessiond.v1.SessionAuthority/CreateSession\"} 1",
        "sessiond_rpc_duration_seconds_count{code=\"Ok\",method=\"/sessiond.v1.SessionAuthority/CreateSession\"} 2",
        "sessiond_raft_is_leader 1",
        "sessiond_raft_leader_id 1",
        "sessiond_health_serving 1",
        "sessiond_sessions_live{tenant=\"acme\"} 1",
        "sessiond_apply_seconds_count",
        "sessiond_apply_batch_entries_count",
        "sessiond_snapshot_build_seconds_count",
        "sessiond_snapshot_build_bytes_count",
        "sessiond_snapshot_transfer_seconds_count{direction=\"send\"}",
        "sessiond_snapshot_transfer_seconds_count{direction=\"receive\"}",
        "sessiond_snapshot_transfer_bytes_count{direction=\"send\"}",
        "sessiond_snapshot_install_seconds_count",
        "sessiond_snapshot_install_bytes_count",
        "sessiond_stream_subscriber_lag_revisions_count",
    ];
    loop {
        let (code, text) = http_get(metrics, "/metrics").await;
        assert_eq!(code, 200);
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|w| !text.contains(w))
            .collect();
        let applied = text
            .lines()
            .find_map(|l| l.strip_prefix("sessiond_raft_applied_index "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let storage = text
            .lines()
            .find_map(|l| l.strip_prefix("sessiond_storage_bytes "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if missing.is_empty() && applied >= 2 && storage > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "missing {missing:?} (applied {applied}, storage {storage}) in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(stream);
    learner.stop().await;
    node.stop().await;
}
