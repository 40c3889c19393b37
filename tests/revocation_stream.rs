//! Invariant 4: every subscriber sees every revocation after its resume point, in revision
//! order, exactly once, or is told to resync; a slow subscriber is cut off with a resumable
//! revision without slowing anyone else.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::cluster::TestCluster;
use common::*;
use sessiond::client::Client;
use sessiond::proto::v1::session_authority_client::SessionAuthorityClient;
use sessiond::proto::v1::watch_revocations_response::Kind;
use sessiond::proto::v1::*;
use tonic::Streaming;

/// What a subscriber received, in order.
#[derive(Debug, Default)]
struct Received {
    /// (revision, sessions revoked) per events message.
    batches: Vec<(u64, Vec<String>)>,
    /// The last progress revision.
    progress: u64,
    /// The final message, if the stream ended with one.
    ended: Option<Kind>,
}

/// Reads `stream` until a progress message reaches `until`, or it ends.
async fn read_until(
    stream: &mut Streaming<WatchRevocationsResponse>,
    until: u64,
    into: &mut Received,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while into.progress < until {
        let next = tokio::time::timeout_at(deadline, stream.message())
            .await
            .expect("subscriber made progress in time");
        match next.expect("stream ok").and_then(|m| m.kind) {
            Some(Kind::Events(b)) => {
                let ids = b.events.into_iter().map(|e| e.session_id);
                // The parts of a revision split over several messages make one batch.
                match into.batches.last_mut() {
                    Some((revision, so_far)) if *revision == b.revision => so_far.extend(ids),
                    _ => into.batches.push((b.revision, ids.collect())),
                }
            }
            Some(Kind::Progress(p)) => into.progress = p.revision,
            Some(end) => {
                into.ended = Some(end);
                return;
            }
            None => return,
        }
    }
}

async fn subscribe(client: &Client, from_revision: u64) -> Streaming<WatchRevocationsResponse> {
    client
        .watch_revocations(WatchRevocationsRequest {
            from_revision,
            tenants: vec![],
            from_sequence: 0,
        })
        .await
        .expect("subscribed")
}

fn revoke(tenant: &str, scope: RevokeScope, id: &str) -> RevokeRequest {
    RevokeRequest {
        tenant: tenant.into(),
        scope: scope as i32,
        id: id.into(),
        reason: RevocationReason::Admin as i32,
        request_id: String::new(),
    }
}

/// Revokes in every scope, concurrently across `clients`; returns revision → events count
/// of every acknowledged revocation that revoked something (one event per session for a
/// session or family, one scoped event for a user or tenant).
async fn revoke_in_all_scopes(clients: &[Client], round: usize) -> BTreeMap<u64, u64> {
    let mut sessions = Vec::new();
    for i in 0..24 {
        let tenant = format!("t{}", i % 3);
        let user = format!("u{round}-{}", i % 4);
        let c = &clients[i % clients.len()];
        let r = c
            .create_session(create_request(&tenant, &user))
            .await
            .unwrap();
        let s = r.session.unwrap();
        sessions.push((tenant, user, s.session_id, s.family_id));
    }
    let mut tasks = Vec::new();
    for (i, (tenant, user, sid, fam)) in sessions.into_iter().enumerate() {
        let c = clients[i % clients.len()].clone();
        let request = match i % 6 {
            0..=2 => revoke(&tenant, RevokeScope::Session, &sid),
            3 => revoke(&tenant, RevokeScope::Family, &fam),
            4 => revoke(&tenant, RevokeScope::User, &user),
            _ => revoke(&tenant, RevokeScope::Session, &sid),
        };
        tasks.push(tokio::spawn(async move {
            let scoped = request.scope == RevokeScope::User as i32;
            (c.revoke(request).await.unwrap(), scoped)
        }));
    }
    if round % 2 == 1 {
        let c = clients[0].clone();
        tasks.push(tokio::spawn(async move {
            let r = c
                .revoke(revoke("t2", RevokeScope::Tenant, ""))
                .await
                .unwrap();
            (r, true)
        }));
    }
    let mut revisions = BTreeMap::new();
    for t in tasks {
        let (r, scoped) = t.await.unwrap();
        if r.revoked_count > 0 {
            // Concurrent revocations may share a log entry (group commit), hence a revision.
            let events = if scoped { 1 } else { r.revoked_count };
            *revisions.entry(r.revision).or_default() += events;
        }
    }
    revisions
}

fn assert_exactly(received: &Received, expected: &BTreeMap<u64, u64>, after: u64, who: &str) {
    let revisions: Vec<u64> = received.batches.iter().map(|(r, _)| *r).collect();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "{who}: revisions not strictly increasing: {revisions:?}"
    );
    let got: BTreeMap<u64, u64> = received
        .batches
        .iter()
        .map(|(r, s)| (*r, s.len() as u64))
        .collect();
    let want: BTreeMap<u64, u64> = expected.range(after + 1..).map(|(r, n)| (*r, *n)).collect();
    assert_eq!(
        got, want,
        "{who}: received revisions differ from the committed revocations"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscribers_on_every_node_see_every_revocation_once_in_order() {
    let cluster = TestCluster::start(3, |_| {}).await;
    let clients: Vec<Client> = cluster.nodes.values().map(|n| n.client.clone()).collect();
    let mut streams = Vec::new();
    for c in &clients {
        streams.push(subscribe(c, 0).await);
    }
    let expected = revoke_in_all_scopes(&clients, 1).await;
    let last = *expected.keys().last().unwrap();
    for (i, stream) in streams.iter_mut().enumerate() {
        let mut received = Received::default();
        read_until(stream, last, &mut received).await;
        assert_exactly(
            &received,
            &expected,
            0,
            &format!("subscriber on node {}", i + 1),
        );
    }
    // A late subscriber gets the same history from the retained backlog.
    let mut late = subscribe(&clients[2], 0).await;
    let mut received = Received::default();
    read_until(&mut late, last, &mut received).await;
    assert_exactly(&received, &expected, 0, "late subscriber");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_subscriber_resumes_without_loss_across_disconnects_and_a_leader_change() {
    let mut cluster = TestCluster::start(3, |_| {}).await;
    let mut expected = BTreeMap::new();
    let mut received = Received::default();

    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    let clients =
        |c: &TestCluster| -> Vec<Client> { c.nodes.values().map(|n| n.client.clone()).collect() };
    let mut stream = subscribe(&cluster.nodes[&ids[0]].client, 0).await;
    expected.extend(revoke_in_all_scopes(&clients(&cluster), 1).await);
    read_until(&mut stream, *expected.keys().next().unwrap(), &mut received).await;
    drop(stream);

    // Resume on another node, from the last revision received.
    expected.extend(revoke_in_all_scopes(&clients(&cluster), 2).await);
    let resume = received.batches.last().map_or(0, |(r, _)| *r);
    let mut stream = subscribe(&cluster.nodes[&ids[1]].client, resume).await;
    let leader = cluster.wait_for_leader(&ids).await;
    cluster.stop_node(leader).await;
    let survivors: Vec<u64> = cluster.nodes.keys().copied().collect();
    cluster.wait_for_leader(&survivors).await;
    expected.extend(revoke_in_all_scopes(&clients(&cluster), 3).await);
    let last = *expected.keys().last().unwrap();
    if cluster.nodes.contains_key(&ids[1]) {
        read_until(&mut stream, last, &mut received).await;
    } else {
        let resume = received.batches.last().map_or(0, |(r, _)| *r);
        let mut stream = subscribe(&cluster.nodes[&survivors[0]].client, resume).await;
        read_until(&mut stream, last, &mut received).await;
    }
    if received.progress < last {
        let resume = received.batches.last().map_or(0, |(r, _)| *r);
        let mut stream = subscribe(&cluster.nodes[&survivors[0]].client, resume).await;
        read_until(&mut stream, last, &mut received).await;
    }
    assert_exactly(&received, &expected, 0, "resuming subscriber");
    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_survive_a_restart_and_are_served_from_the_backlog() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("log");
    let server = ServerProcess::spawn(&data, &log, &[]);
    let client = connect(&server.endpoint()).await;
    let expected = revoke_in_all_scopes(std::slice::from_ref(&client), 1).await;
    drop(client);
    server.kill9();
    let server = ServerProcess::spawn(&data, &log, &[]);
    let client = connect(&server.endpoint()).await;
    let mut stream = subscribe(&client, 0).await;
    let mut received = Received::default();
    read_until(&mut stream, *expected.keys().last().unwrap(), &mut received).await;
    assert_exactly(&received, &expected, 0, "subscriber after restart");
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_point_behind_compaction_gets_resync_and_the_revoked_set_rebuilds_it() {
    let (t, _dir) = {
        let dir = tempfile::tempdir().unwrap();
        let mut config = test_config(dir.path());
        config.gc.interval_ms = 100;
        config.gc.event_retention_ms = 1;
        (TestNode::start(config).await, dir)
    };
    let expected = revoke_in_all_scopes(std::slice::from_ref(&t.client), 1).await;
    // Wait until the collector has compacted every event of the workload.
    let last = *expected.keys().last().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let mut stream = subscribe(&t.client, 0).await;
        let first = stream.message().await.unwrap().and_then(|m| m.kind);
        if let Some(Kind::ResyncRequired(r)) = first {
            assert!(r.current_revision >= r.compacted_through);
            if r.compacted_through >= last {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "events were not compacted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let mut denied = BTreeSet::new();
    let mut resume = None;
    for tenant in ["t0", "t1", "t2"] {
        let mut token = String::new();
        loop {
            let page = t
                .client
                .list_revoked(ListRevokedRequest {
                    tenant: tenant.into(),
                    page_size: 5,
                    page_token: token,
                    consistency: Consistency::Linearizable as i32,
                })
                .await
                .unwrap();
            resume.get_or_insert(page.revision);
            denied.extend(page.sessions.into_iter().map(|s| s.session_id));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
    }
    // Every one of the round's 24 sessions is revoked: each by its own id, its family's,
    // its user's or (t2) its tenant's revocation.
    assert_eq!(denied.len(), 24, "the deny state matches every revocation");

    // Resuming from the revoked set's revision delivers what happens next.
    let mut stream = subscribe(&t.client, resume.unwrap()).await;
    let fresh = t
        .client
        .create_session(create_request("t0", "late"))
        .await
        .unwrap();
    let sid = fresh.session.unwrap().session_id;
    let r = t
        .client
        .revoke(revoke("t0", RevokeScope::Session, &sid))
        .await
        .unwrap();
    let mut received = Received::default();
    read_until(&mut stream, r.revision, &mut received).await;
    assert_eq!(received.batches, vec![(r.revision, vec![sid])]);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_subscriber_is_cut_off_with_a_resume_point_and_slows_no_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.watch.buffer = 8;
    config.watch.slow_subscriber_timeout_ms = 500;
    let t = TestNode::start(config).await;
    // The slow subscriber's connection has tiny HTTP/2 windows, so the server's buffer for
    // it fills after a few messages instead of after megabytes.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", t.node.addr()))
        .unwrap()
        .initial_stream_window_size(1024)
        .initial_connection_window_size(1024)
        .connect()
        .await
        .unwrap();
    let mut slow = SessionAuthorityClient::new(channel)
        .watch_revocations(WatchRevocationsRequest {
            from_revision: 0,
            tenants: vec![],
            from_sequence: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let mut fast = subscribe(&t.client, 0).await;
    // The fast subscriber reads concurrently with the writes, in small steps.
    let (done, finished) = tokio::sync::watch::channel(0u64);
    let reader = tokio::spawn(async move {
        let mut received = Received::default();
        loop {
            let target = *finished.borrow();
            if target > 0 && received.progress >= target {
                return received;
            }
            let step = if target > 0 {
                target
            } else {
                received.progress + 1
            };
            read_until(&mut fast, step, &mut received).await;
            assert!(received.ended.is_none(), "the fast subscriber was cut off");
        }
    });

    let client = t.client.clone();
    let mut expected = BTreeMap::new();
    for round in 0..10 {
        expected.extend(revoke_in_all_scopes(std::slice::from_ref(&client), round).await);
    }
    let last = *expected.keys().last().unwrap();
    done.send(last).unwrap();
    let received = reader.await.unwrap();
    assert_exactly(&received, &expected, 0, "fast subscriber");

    let mut slow_received = Received::default();
    read_until(&mut slow, last, &mut slow_received).await;
    let Some(Kind::CutOff(cut)) = slow_received.ended else {
        panic!(
            "the slow subscriber was not cut off: {:?}",
            slow_received.ended
        )
    };
    let delivered_last = slow_received.batches.last().map_or(0, |(r, _)| *r);
    assert!(cut.resume_from_revision >= delivered_last);
    assert!(cut.resume_from_revision < last, "cut off before the end");
    let prefix: BTreeMap<u64, u64> = expected
        .range(..=cut.resume_from_revision)
        .map(|(r, n)| (*r, *n))
        .collect();
    assert_exactly(
        &slow_received,
        &prefix,
        0,
        "slow subscriber before its cut-off",
    );

    // It resumes where it was cut off and gets the rest.
    let mut resumed = subscribe(&t.client, cut.resume_from_revision).await;
    let mut rest = Received::default();
    read_until(&mut resumed, last, &mut rest).await;
    assert_exactly(
        &rest,
        &expected,
        cut.resume_from_revision,
        "resumed slow subscriber",
    );
    t.stop().await;
}
