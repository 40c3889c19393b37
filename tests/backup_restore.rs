//! Backup and restore round trip (issue 13): sessions created concurrently on a running node
//! are backed up with `sessiond backup` (through an endpoint list whose first node is dead),
//! restored with `sessiond restore` into a new data directory, and served by a new one-node
//! cluster that holds every session: counts, sampled lookups, revoked sessions still revoked,
//! a rotation and a revocation work, a gateway resuming from the old cluster is told to
//! resync, and the new cluster grows with add-learner. A damaged backup and a non-empty
//! target directory are refused.
//!
//! `SESSIOND_BACKUP_SESSIONS` sets the number of sessions (default 5,000 so that a debug
//! `cargo test` stays short); `scripts/backup-roundtrip.sh` runs it with 100,000 in release.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::cluster::cluster_config;
use common::*;
use futures::StreamExt;
use sessiond::proto::v1::cluster_client::ClusterClient;
use sessiond::proto::v1::*;

/// Sessions created by the round trip unless `SESSIOND_BACKUP_SESSIONS` says otherwise.
const DEFAULT_SESSIONS: usize = 5_000;
/// Concurrent creators.
const CREATORS: usize = 32;
/// Every how many sessions one is sampled (looked up after the restore).
const SAMPLE_EVERY: usize = 97;
/// Users per tenant (sessions are spread over them).
const USERS: usize = 500;

fn sessions_wanted() -> usize {
    std::env::var("SESSIOND_BACKUP_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_SESSIONS)
}

/// Runs the binary with `args`; returns its exit code and stdout (stderr is shown on failure).
fn sessiond(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sessiond"))
        .args(args)
        .env_remove("SESSIOND_ENDPOINT")
        .env_remove("SESSIOND_DATA_DIR")
        .env_remove("SESSIOND_CONFIG")
        .env_remove("SESSIOND_NODE_ID")
        .output()
        .expect("sessiond runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json_of(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// A session created before the backup, remembered for the checks after the restore.
struct Sampled {
    tenant: String,
    user: String,
    session_id: String,
    refresh_token: String,
}

/// Creates `n` sessions over two tenants with `CREATORS` concurrent callers; returns every
/// `SAMPLE_EVERY`-th.
async fn create_sessions(client: &sessiond::client::Client, n: usize) -> Vec<Sampled> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..CREATORS {
        let (client, next) = (client.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut sampled = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return sampled;
                }
                let tenant = if i % 2 == 0 { "acme" } else { "globex" };
                let user = format!("u{}", i / 2 % USERS);
                let created = client
                    .create_session(create_request(tenant, &user))
                    .await
                    .expect("created");
                assert_eq!(created.outcome(), CreateSessionOutcome::Created);
                if i % SAMPLE_EVERY == 0 {
                    sampled.push(Sampled {
                        tenant: tenant.to_owned(),
                        user,
                        session_id: created.session.expect("session").session_id,
                        refresh_token: created.refresh_token,
                    });
                }
            }
        }));
    }
    let mut sampled = Vec::new();
    for task in tasks {
        sampled.extend(task.await.expect("creator"));
    }
    sampled
}

async fn count(client: &sessiond::client::Client, tenant: &str) -> u64 {
    client
        .count_sessions(CountSessionsRequest {
            tenant: tenant.to_owned(),
            consistency: Consistency::Linearizable as i32,
            ..Default::default()
        })
        .await
        .expect("count")
        .active
}

async fn revoke(client: &sessiond::client::Client, tenant: &str, scope: RevokeScope, id: &str) {
    client
        .revoke(RevokeRequest {
            tenant: tenant.to_owned(),
            scope: scope as i32,
            id: id.to_owned(),
            reason: RevocationReason::Logout as i32,
            ..Default::default()
        })
        .await
        .expect("revoked");
}

async fn status_of(client: &sessiond::client::Client, s: &Sampled) -> SessionStatus {
    let found = client
        .lookup(lookup_by_id(&s.tenant, &s.session_id))
        .await
        .expect("lookup");
    assert_eq!(found.outcome(), LookupOutcome::Found, "{}", s.session_id);
    found.session.expect("session").status()
}

/// The first message of a revocation stream opened at `from_revision`.
async fn first_message(
    client: &sessiond::client::Client,
    from_revision: u64,
) -> watch_revocations_response::Kind {
    let mut stream = client
        .watch_revocations(WatchRevocationsRequest {
            from_revision,
            ..Default::default()
        })
        .await
        .expect("watch");
    tokio::time::timeout(Duration::from_secs(30), stream.next())
        .await
        .expect("a message in time")
        .expect("stream open")
        .expect("no error")
        .kind
        .expect("a kind")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_a_new_cluster_that_serves_every_session() {
    let n = sessions_wanted();
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let source = TestNode::start(cluster_config(&dir.path().join("source"), 1, true)).await;
    let sampled = create_sessions(&source.client, n).await;
    let created_secs = started.elapsed().as_secs_f64();
    // Revoke a third of the sampled sessions one by one, and every session of user u7 of acme.
    let mut revoked = Vec::new();
    for s in sampled.iter().step_by(3) {
        revoke(
            &source.client,
            &s.tenant,
            RevokeScope::Session,
            &s.session_id,
        )
        .await;
        revoked.push(s.session_id.clone());
    }
    revoke(&source.client, "acme", RevokeScope::User, "u7").await;
    let mut expected = BTreeMap::new();
    for tenant in ["acme", "globex"] {
        expected.insert(tenant, count(&source.client, tenant).await);
    }
    let acme_total = n.div_ceil(2) as u64;
    assert!(
        expected["acme"] < acme_total,
        "some acme sessions are revoked"
    );

    // Back up through an endpoint list whose first node does not answer.
    let backup = dir.path().join("cluster.backup");
    let out = backup.to_str().unwrap();
    let endpoints = format!(
        "http://127.0.0.1:{},http://{}",
        free_port(),
        source.node.addr()
    );
    let t = Instant::now();
    let (code, stdout, stderr) =
        sessiond(&["backup", "--endpoint", &endpoints, "--out", out, "--json"]);
    assert_eq!(code, 0, "backup failed: {stdout}{stderr}");
    let backup_secs = t.elapsed().as_secs_f64();
    let report = json_of(&stdout);
    assert_eq!(report["sessions"], n as u64, "{report}");
    let backup_index = report["last_index"].as_u64().unwrap();
    let backup_bytes = report["bytes"].as_u64().unwrap();
    assert_eq!(std::fs::metadata(&backup).unwrap().len(), backup_bytes);
    assert!(!dir.path().join("cluster.backup.partial").exists());
    // A session created after the backup is not in it.
    let late = source
        .client
        .create_session(create_request("acme", "late"))
        .await
        .unwrap();
    source.stop().await;

    // A damaged copy is refused and leaves the target directory empty.
    let mut bytes = std::fs::read(&backup).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    let damaged = dir.path().join("damaged.backup");
    std::fs::write(&damaged, &bytes).unwrap();
    let refused_dir = dir.path().join("refused");
    let (code, _, stderr) = sessiond(&[
        "restore",
        "--from",
        damaged.to_str().unwrap(),
        "--data-dir",
        refused_dir.to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("from"), "{stderr}");
    assert_eq!(std::fs::read_dir(&refused_dir).unwrap().count(), 0);

    // Restore into a new data directory, then refuse to restore over it.
    let restored_dir = dir.path().join("restored");
    let peer_port = free_port();
    let peer = format!("127.0.0.1:{peer_port}");
    let t = Instant::now();
    let restore_args = [
        "restore",
        "--from",
        out,
        "--data-dir",
        restored_dir.to_str().unwrap(),
        "--node-id",
        "1",
        "--peer-advertise",
        &peer,
        "--json",
    ];
    let (code, stdout, stderr) = sessiond(&restore_args);
    assert_eq!(code, 0, "restore failed: {stdout}{stderr}");
    let restore_secs = t.elapsed().as_secs_f64();
    let restored = json_of(&stdout);
    assert_eq!(restored["sessions"], n as u64, "{restored}");
    let applied = restored["applied_index"].as_u64().unwrap();
    assert!(applied > backup_index, "{restored}");
    let (code, _, stderr) = sessiond(&restore_args);
    assert_eq!(
        code, 2,
        "a second restore over it must be refused: {stderr}"
    );
    assert!(stderr.contains("data_dir"), "{stderr}");

    // Serve it: a one-node cluster of its own.
    let t = Instant::now();
    let mut config = cluster_config(&restored_dir, 1, true);
    config.peer_listen_addr = Some(peer.parse().unwrap());
    let node = TestNode::start(config).await;
    let client = &node.client;
    for (tenant, active) in &expected {
        assert_eq!(count(client, tenant).await, *active, "{tenant}");
    }
    let serve_secs = t.elapsed().as_secs_f64();
    let mut admin = ClusterClient::connect(format!("http://{}", node.node.addr()))
        .await
        .unwrap();
    let status = admin
        .status(ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.members.len(), 1, "{status:?}");
    assert_eq!(status.members[0].node_id, 1);
    assert_eq!(status.members[0].addr, peer);
    assert!(status.applied_index > applied, "a new term's entry");
    let missing = client
        .lookup(lookup_by_id("acme", &late.session.unwrap().session_id))
        .await
        .unwrap();
    assert_eq!(missing.outcome(), LookupOutcome::NotFound);
    let is_revoked =
        |s: &Sampled| revoked.contains(&s.session_id) || (s.tenant == "acme" && s.user == "u7");
    for s in &sampled {
        let want = if is_revoked(s) {
            SessionStatus::Revoked
        } else {
            SessionStatus::Active
        };
        assert_eq!(status_of(client, s).await, want, "{}", s.session_id);
    }
    // Rotation works on an active session, and stays refused on a revoked one.
    let active = sampled
        .iter()
        .find(|s| !is_revoked(s))
        .expect("an active sampled session");
    let rotated = client
        .rotate(rotate_request(&active.refresh_token))
        .await
        .unwrap();
    assert_eq!(rotated.outcome(), RotateOutcome::Rotated);
    let refused = client
        .rotate(rotate_request(&sampled[0].refresh_token))
        .await
        .unwrap();
    assert_eq!(refused.outcome(), RotateOutcome::Revoked);

    // A gateway resuming from the old cluster, at the backup's revision or from scratch, is
    // told to resync; one that resyncs follows the new cluster's revocations.
    for from in [0, backup_index, backup_index + 5] {
        match first_message(client, from).await {
            watch_revocations_response::Kind::ResyncRequired(r) => {
                assert!(r.compacted_through >= applied, "{r:?}")
            }
            other => panic!("resuming at {from}: {other:?}"),
        }
    }
    let listed = client
        .list_revoked(ListRevokedRequest {
            tenant: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(!listed.sessions.is_empty());
    let mut stream = client
        .watch_revocations(WatchRevocationsRequest {
            from_revision: listed.revision,
            ..Default::default()
        })
        .await
        .unwrap();
    let target = sampled
        .iter()
        .rev()
        .find(|s| !is_revoked(s) && s.session_id != active.session_id)
        .expect("another active sampled session");
    revoke(
        client,
        &target.tenant,
        RevokeScope::Session,
        &target.session_id,
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let message =
            tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), stream.next())
                .await
                .expect("the revocation arrives")
                .unwrap()
                .unwrap();
        if let Some(watch_revocations_response::Kind::Events(e)) = message.kind {
            assert!(e.revision > listed.revision);
            if e.events.iter().any(|e| e.session_id == target.session_id) {
                break;
            }
        }
    }

    // The new cluster grows with add-learner: the learner receives the restored state.
    let learner = TestNode::start(cluster_config(&dir.path().join("learner"), 2, false)).await;
    admin
        .add_learner(AddLearnerRequest {
            node_id: 2,
            addr: learner.node.peer_addr().to_string(),
            timeout_ms: 300_000,
        })
        .await
        .expect("the learner catches up");
    let leader_digest = admin
        .state_digest(StateDigestRequest {})
        .await
        .unwrap()
        .into_inner();
    let mut learner_admin = ClusterClient::connect(format!("http://{}", learner.node.addr()))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let d = learner_admin
            .state_digest(StateDigestRequest {})
            .await
            .unwrap()
            .into_inner();
        if d.applied_index == leader_digest.applied_index {
            assert_eq!(d.digest, leader_digest.digest);
            break;
        }
        assert!(Instant::now() < deadline, "the learner did not catch up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "backup round trip: {n} sessions created in {created_secs:.1} s; backup {backup_bytes} \
         bytes in {backup_secs:.1} s; restore {restore_secs:.1} s; restored node serving and \
         counted in {serve_secs:.1} s"
    );
    learner.stop().await;
    node.stop().await;
}
