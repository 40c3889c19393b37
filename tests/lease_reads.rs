//! Lease reads (`raft.lease_reads`) on an in-process three-node cluster: a leader cut off
//! from its quorum keeps answering LINEARIZABLE reads only while its lease lasts, and never
//! answers one that misses a write the new leader acknowledged before the read began; a
//! voter that restarts grants no vote within the lease it gave (README "Lease reads").

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::TestCluster;
use common::*;
use sessiond::proto::internal::raft_transport_client::RaftTransportClient;
use sessiond::proto::internal::{LogIdRecord, VoteMessage, VoteRecord};
use sessiond::proto::v1::*;

/// One LINEARIZABLE lookup against the cut-off leader: when it started, and the status it
/// answered (`None`: it failed or timed out).
struct Read {
    started: Instant,
    answered: Instant,
    status: Option<SessionStatus>,
}

/// `election_timeout_max_ms` of the restart test: how long a voter's promise lasts there.
const LONG_ELECTION_TIMEOUT_MS: u64 = 6000;

fn lease_confirmations() -> u64 {
    sessiond::metrics::READ_CONFIRMATIONS
        .with_label_values(&["lease"])
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cut_off_leader_answers_from_its_lease_only_until_it_expires_and_never_stale() {
    let cluster = TestCluster::start(3, |c| c.raft.lease_reads = true).await;
    let leader = cluster.wait_for_leader(&[1, 2, 3]).await;
    let created = cluster.nodes[&leader]
        .client
        .create_session(create_request("lease", "alice"))
        .await
        .unwrap();
    let session_id = created.session.unwrap().session_id;
    let old_leader = cluster.nodes[&leader].client.clone();
    let lookup = lookup_by_id("lease", &session_id);
    // The leader holds a lease once a majority has accepted its heartbeats: on a loaded
    // machine the first reads may still take a quorum round.
    let leases_before = lease_confirmations();
    let deadline = Instant::now() + Duration::from_secs(10);
    while lease_confirmations() == leases_before {
        assert!(
            Instant::now() < deadline,
            "the leader confirmed no linearizable read from its lease within 10 s"
        );
        let status = old_leader.lookup(lookup.clone()).await.unwrap();
        assert_eq!(status.session.unwrap().status(), SessionStatus::Active);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Reads against the old leader, one after another, from before the cut to well after
    // the new leader's revocation.
    let reads: Arc<Mutex<Vec<Read>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = tokio::spawn({
        let (reads, stop, lookup) = (reads.clone(), stop.clone(), lookup.clone());
        async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let started = Instant::now();
                let answer = tokio::time::timeout(
                    Duration::from_millis(300),
                    old_leader.lookup(lookup.clone()),
                )
                .await;
                let status = match answer {
                    Ok(Ok(found)) => found.session.map(|s| s.status()),
                    _ => None,
                };
                reads.lock().unwrap().push(Read {
                    started,
                    answered: Instant::now(),
                    status,
                });
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });

    tokio::time::sleep(Duration::from_millis(300)).await;
    let cut_at = Instant::now();
    cluster.isolate(leader, true);
    let majority = cluster.others(leader);
    let new_leader = cluster.wait_for_leader(&majority).await;
    let revoked = cluster.nodes[&new_leader]
        .client
        .revoke(revoke_session("lease", &session_id))
        .await
        .unwrap();
    assert_eq!(revoked.revoked_count, 1);
    let revoked_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    reader.await.unwrap();

    let reads = std::mem::take(&mut *reads.lock().unwrap());
    let stale: Vec<_> = reads
        .iter()
        .filter(|r| r.started > revoked_at && r.status == Some(SessionStatus::Active))
        .map(|r| r.started - cut_at)
        .collect();
    assert!(
        stale.is_empty(),
        "the cut-off leader answered Active after the new leader revoked the session, for {} \
         reads started from {:?} after the cut",
        stale.len(),
        stale.first()
    );
    // The lease, not a quorum round, answered after the cut: the old leader reached no
    // quorum from then on.
    let answered_after_cut = reads
        .iter()
        .filter(|r| r.started > cut_at + Duration::from_millis(50) && r.status.is_some())
        .count();
    assert!(
        answered_after_cut > 0,
        "no read was answered from the lease after the cut"
    );
    let last_answer = reads
        .iter()
        .filter(|r| r.status.is_some())
        .map(|r| r.answered)
        .max()
        .unwrap();
    assert!(
        last_answer < revoked_at,
        "the old leader answered {:?} after the revocation was acknowledged",
        last_answer - revoked_at
    );
    println!(
        "{} reads; answered from the lease until {:?} after the cut; new leader's revocation \
         acknowledged {:?} after the cut",
        reads.len(),
        last_answer - cut_at,
        revoked_at - cut_at
    );

    cluster.isolate(leader, false);
    cluster.wait_converged().await;
    cluster.stop().await;
}

/// A voter that restarts must not grant a vote within the lease it gave before stopping, or
/// a candidate could be elected while the old leader still answers from that lease.
/// openraft 0.9 starts the clock of a vote loaded at start-up at the start, so a restarted
/// voter refuses for a whole lease after it starts (and stands for election only after a
/// lease and an election timeout): this checks that it still does. (The restarted node
/// listens on a new port, so the leader does not reach it again: once the lease has run
/// out, it may grant.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_voter_grants_no_vote_within_the_lease_it_gave() {
    // A long lease, so that a restart on a loaded machine fits well within it.
    let mut cluster = TestCluster::start(3, |c| {
        c.raft.lease_reads = true;
        c.raft.election_timeout_min_ms = LONG_ELECTION_TIMEOUT_MS / 2;
        c.raft.election_timeout_max_ms = LONG_ELECTION_TIMEOUT_MS;
    })
    .await;
    let leader = cluster.wait_for_leader(&[1, 2, 3]).await;
    cluster.wait_converged().await;
    let followers = cluster.others(leader);
    let (restarted, candidate) = (followers[0], followers[1]);
    let term = cluster.nodes[&leader]
        .node
        .node()
        .raft()
        .metrics()
        .borrow()
        .current_term;
    let lease_given = Duration::from_millis(LONG_ELECTION_TIMEOUT_MS);

    let stopped_at = Instant::now();
    cluster.stop_node(restarted).await;
    cluster.start_node(restarted, false).await;
    let peer = cluster.nodes[&restarted].node.peer_addr();
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{peer}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // A candidate of the next term whose log is ahead of everyone's.
    let request = VoteMessage {
        vote: Some(VoteRecord {
            schema_version: 1,
            term: term + 1,
            node_id: candidate,
            committed: false,
        }),
        last_log_id: Some(LogIdRecord {
            term,
            node_id: leader,
            index: 1 << 40,
        }),
    };
    let asked_after = stopped_at.elapsed();
    let reply = RaftTransportClient::new(channel)
        .vote(peer_request(request, "sessiond", candidate))
        .await
        .unwrap()
        .into_inner();
    let answered_after = stopped_at.elapsed();
    assert!(
        asked_after < lease_given,
        "the restart took {asked_after:?}: too slow to test within the lease"
    );
    assert!(
        !reply.vote_granted || answered_after >= lease_given,
        "a voter restarted {asked_after:?} after it stopped granted a vote {answered_after:?} \
         after, within the {lease_given:?} lease it gave before stopping"
    );
    cluster.stop().await;
}
