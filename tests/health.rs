//! Health that means something: gRPC health (and `/readyz`) turns NOT_SERVING on a leader
//! cut off from its quorum and on a node left without a leader, and SERVING again once the
//! cluster heals; `/metrics` serves Raft and RPC metrics of a real node.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use common::cluster::TestCluster;
use common::{create_request, test_config, TestNode};

/// The gRPC health status of `service` on the node at `addr`.
async fn grpc_health(addr: SocketAddr, service: &str) -> ServingStatus {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .expect("an endpoint URL")
        .connect()
        .await
        .expect("health connects");
    let mut client = HealthClient::new(channel);
    let answer = client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .expect("health answers")
        .into_inner();
    ServingStatus::try_from(answer.status).expect("a known status")
}

/// Waits up to `within` until `service` on `addr` reports `wanted`.
async fn wait_for_health(addr: SocketAddr, service: &str, wanted: ServingStatus, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let now = grpc_health(addr, service).await;
        if now == wanted {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{addr} {service:?} still {now:?}, wanted {wanted:?} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// GETs `path` on `addr`; returns the status code and the body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("sent");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("an answer");
    let code = response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

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

    node.client
        .create_session(create_request("acme", "alice"))
        .await
        .expect("created");
    let mut invalid = create_request("acme", "");
    invalid.user_id.clear();
    assert!(node.client.create_session(invalid).await.is_err());

    // Raft gauges come from the sampler (every second), tenant counts every ten seconds.
    let deadline = Instant::now() + Duration::from_secs(30);
    let wanted = [
        "sessiond_rpc_requests_total{code=\"Ok\",method=\"/sessiond.v1.SessionAuthority/CreateSession\"} 1",
        "sessiond_rpc_requests_total{code=\"InvalidArgument\",method=\"/sessiond.v1.SessionAuthority/CreateSession\"} 1",
        "sessiond_rpc_duration_seconds_count{code=\"Ok\",method=\"/sessiond.v1.SessionAuthority/CreateSession\"} 1",
        "sessiond_raft_is_leader 1",
        "sessiond_raft_leader_id 1",
        "sessiond_health_serving 1",
        "sessiond_sessions_live{tenant=\"acme\"} 1",
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
    node.stop().await;
}
