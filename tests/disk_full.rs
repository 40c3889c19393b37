//! A full disk on a node (ENOSPC). The real binary runs on a data directory in a small tmpfs
//! and takes creates until the disk is full. Then: writes are refused with UNAVAILABLE and a
//! message that names no internal detail (the cause goes to the node's log), gRPC health
//! says NOT_SERVING and `/healthz` fails, and once the node is restarted with space again,
//! every create it acknowledged is there and new writes are taken. Mounting the tmpfs needs
//! root (`.ci/run` runs as root).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sessiond::proto::v1::session_authority_client::SessionAuthorityClient;
use sessiond::proto::v1::*;
use tonic_health::pb::health_check_response::ServingStatus;

use common::{
    connect, create_request, free_port, http_get, lookup_by_id, wait_for_health, ServerProcess,
};

/// Size of the tmpfs that fills: a few thousand sessions.
const SMALL: &str = "size=12m";
/// Size once space is given back.
const ROOMY: &str = "size=256m";
/// Concurrent writers (they stop at their first refused create).
const WRITERS: usize = 8;
/// How long the disk may take to fill.
const FILL_WITHIN: Duration = Duration::from_secs(120);

/// A tmpfs mounted by the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, options: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        mount(&["-t", "tmpfs", "-o", options, "tmpfs"], at);
        Tmpfs(at.to_path_buf())
    }

    fn resize(&self, options: &str) {
        mount(&["-o", &format!("remount,{options}")], &self.0);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount(args: &[&str], at: &Path) {
    let status = Command::new("mount")
        .args(args)
        .arg(at)
        .status()
        .expect("mount runs");
    assert!(
        status.success(),
        "mount {args:?} failed: this test needs root"
    );
}

/// Creates sessions until a create is refused; returns the acknowledged session ids and the
/// first refusal.
async fn create_until_refused(endpoint: String, writer: usize) -> (Vec<String>, tonic::Status) {
    let mut client = SessionAuthorityClient::connect(endpoint)
        .await
        .expect("connects");
    let mut acknowledged = Vec::new();
    let deadline = Instant::now() + FILL_WITHIN;
    loop {
        assert!(Instant::now() < deadline, "the disk did not fill in time");
        let user = format!("user-{writer}-{}", acknowledged.len());
        match client.create_session(create_request("full", &user)).await {
            Ok(r) => acknowledged.push(r.into_inner().session.expect("a session").session_id),
            Err(status) => return (acknowledged, status),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_writes_and_a_restart_with_space_keeps_every_acknowledged_one() {
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("disk"), SMALL);
    let data = disk.0.join("data");
    let log = dir.path().join("sessiond.log");
    let metrics = format!("127.0.0.1:{}", free_port());
    let server = ServerProcess::spawn(&data, &log, &["--metrics-listen", &metrics]);
    let endpoint = server.endpoint();

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(create_until_refused(endpoint.clone(), w)))
        .collect();
    let mut acknowledged = Vec::new();
    for writer in writers {
        let (ids, refusal) = writer.await.expect("writer task");
        assert_eq!(refusal.code(), tonic::Code::Unavailable, "{refusal:?}");
        for detail in ["space", "LogId", "Apply", "os error"] {
            assert!(
                !refusal.message().contains(detail),
                "the refusal leaks {detail:?}: {}",
                refusal.message()
            );
        }
        acknowledged.extend(ids);
    }
    assert!(
        acknowledged.len() > 100,
        "only {} creates before the disk filled",
        acknowledged.len()
    );
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains("No space left on device"),
        "the node's log names the cause"
    );
    wait_for_health(
        server.addr,
        "sessiond.v1.SessionAuthority",
        ServingStatus::NotServing,
        Duration::from_secs(10),
    )
    .await;
    let (liveness, _) = http_get(metrics.parse().unwrap(), "/healthz").await;
    assert_eq!(
        liveness, 503,
        "/healthz fails, so an orchestrator restarts the node"
    );

    server.kill9();
    disk.resize(ROOMY);
    let server = ServerProcess::spawn(&data, &log, &[]);
    let client = connect(&server.endpoint()).await;
    // One linearizable read first: the restarted node has applied everything committed, so
    // the local reads after it see it all.
    client
        .lookup(lookup_by_id("full", &acknowledged[0]))
        .await
        .unwrap();
    for (i, id) in acknowledged.iter().enumerate() {
        let request = LookupRequest {
            consistency: Consistency::Local as i32,
            ..lookup_by_id("full", id)
        };
        let found = client.lookup(request).await.unwrap();
        assert_eq!(
            found.outcome(),
            LookupOutcome::Found,
            "acknowledged session {i} of {} lost",
            acknowledged.len()
        );
    }
    client
        .create_session(create_request("full", "after"))
        .await
        .expect("writes are taken again once there is space");
    server.terminate();
}
