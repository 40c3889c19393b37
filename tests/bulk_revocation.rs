//! Bulk revocations on a live node: revoking a user with thousands of sessions is one
//! bounded command with one scoped event, a revision with more events than fit in one
//! message travels in parts, every subscriber (live, fresh from revision 0, resuming inside
//! a split revision) keeps receiving later revocations, and a gateway cache applies the
//! scoped event. The node's message limit is lowered so that a few thousand sessions are
//! enough to exceed it (the bug was a 60k-session tenant against the default 4 MiB).

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use prost::Message as _;
use sessiond::client::Client;
use sessiond::gateway::{GatewayCache, GatewayConfig};
use sessiond::proto::v1::watch_revocations_response::Kind;
use sessiond::proto::v1::*;
use tonic::Streaming;

/// The node's largest message in these tests.
const LIMIT: usize = 16 * 1024;
/// Sessions of the user revoked in bulk (their per-session events would need ~20 × LIMIT).
const USER_SESSIONS: usize = 2_000;
/// Sessions of one family (its revocation needs several messages).
const FAMILY_SESSIONS: usize = 300;

/// Everything one subscriber received: (revision, sequence) → session id ("" for a scoped
/// event), and the largest message.
#[derive(Default)]
struct Received {
    events: BTreeMap<(u64, u32), String>,
    parts: BTreeMap<u64, usize>,
    largest: usize,
}

async fn subscribe(
    client: &Client,
    from_revision: u64,
    from_sequence: u32,
) -> Streaming<WatchRevocationsResponse> {
    client
        .watch_revocations(WatchRevocationsRequest {
            from_revision,
            tenants: vec![],
            from_sequence,
        })
        .await
        .expect("subscribed")
}

/// Reads until revision `until` was received whole; no event may arrive twice.
async fn read_until(
    stream: &mut Streaming<WatchRevocationsResponse>,
    until: u64,
    into: &mut Received,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let message = tokio::time::timeout(remaining, stream.message())
            .await
            .expect("the stream keeps delivering")
            .expect("the stream stays healthy (no OUT_OF_RANGE)")
            .expect("the stream stays open");
        into.largest = into.largest.max(message.encoded_len());
        match message.kind {
            Some(Kind::Events(batch)) => {
                *into.parts.entry(batch.revision).or_default() += 1;
                for event in batch.events {
                    let place = (event.revision, event.sequence);
                    let first = into.events.insert(place, event.session_id);
                    assert!(first.is_none(), "event {place:?} delivered twice");
                }
                if batch.revision >= until && !batch.partial {
                    return;
                }
            }
            Some(Kind::Progress(p)) if p.revision >= until => return,
            Some(Kind::Progress(_)) => {}
            other => panic!("unexpected message {other:?}"),
        }
    }
}

/// Creates `n` sessions of `user`, `concurrency` at a time; all join `family` when given.
async fn create_many(client: &Client, user: &str, family: Option<&str>, n: usize) -> Vec<Session> {
    let mut sessions = Vec::with_capacity(n);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let client = client.clone();
        let mut request = create_request("t", user);
        request.family_id = family.unwrap_or_default().to_owned();
        tasks.spawn(async move { client.create_session(request).await });
        if tasks.len() >= 32 || i + 1 == n {
            while let Some(done) = tasks.join_next().await {
                let created = done.unwrap().expect("created");
                sessions.push(created.session.unwrap());
            }
        }
    }
    sessions
}

fn revoke(scope: RevokeScope, id: &str) -> RevokeRequest {
    RevokeRequest {
        tenant: "t".into(),
        scope: scope as i32,
        id: id.into(),
        reason: RevocationReason::Admin as i32,
        request_id: String::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bulk_revocations_reach_every_subscriber_in_bounded_messages() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.max_message_bytes = LIMIT;
    let t = TestNode::start(config).await;
    let mut live = subscribe(&t.client, 0, 0).await;

    let bulk = create_many(&t.client, "bulk", None, USER_SESSIONS).await;
    let founder = create_many(&t.client, "fam", None, 1).await.remove(0);
    let mut family = create_many(
        &t.client,
        "fam",
        Some(&founder.family_id),
        FAMILY_SESSIONS - 1,
    )
    .await;
    family.push(founder.clone());
    let cache = GatewayCache::new(t.client.clone(), GatewayConfig::default());
    let follower = cache.follow(t.client.clone());
    for s in &bulk[..10] {
        assert!(!cache.lookup("t", &s.session_id).await.unwrap().is_revoked());
    }

    let started = Instant::now();
    let user = t
        .client
        .revoke(revoke(RevokeScope::User, "bulk"))
        .await
        .unwrap();
    let user_ack = started.elapsed();
    assert_eq!(user.revoked_count, USER_SESSIONS as u64);
    let fam = t
        .client
        .revoke(revoke(RevokeScope::Family, &founder.family_id))
        .await
        .unwrap();
    assert_eq!(fam.revoked_count, FAMILY_SESSIONS as u64);
    let late = create_many(&t.client, "bulk", None, 1).await.remove(0);
    let later = t
        .client
        .revoke(revoke(RevokeScope::Session, &late.session_id))
        .await
        .unwrap();
    eprintln!("user revocation of {USER_SESSIONS} sessions acknowledged in {user_ack:?}");
    assert!(user_ack < Duration::from_secs(2), "took {user_ack:?}");

    let mut fresh = subscribe(&t.client, 0, 0).await;
    let mut got_live = Received::default();
    let mut got_fresh = Received::default();
    read_until(&mut live, later.revision, &mut got_live).await;
    read_until(&mut fresh, later.revision, &mut got_fresh).await;
    for got in [&got_live, &got_fresh] {
        assert!(got.largest <= LIMIT, "a message of {} bytes", got.largest);
        let at = |revision| -> Vec<&str> {
            got.events
                .range((revision, 0)..=(revision, u32::MAX))
                .map(|(_, id)| id.as_str())
                .collect()
        };
        assert_eq!(at(user.revision), [""], "one scoped event for the user");
        let mut ids: Vec<&str> = at(fam.revision);
        ids.sort_unstable();
        let mut want: Vec<&str> = family.iter().map(|s| s.session_id.as_str()).collect();
        want.sort_unstable();
        assert_eq!(ids, want, "every family member once");
        assert!(
            got.parts[&fam.revision] > 1,
            "the family revision was split"
        );
        assert_eq!(at(later.revision), [late.session_id.as_str()]);
    }

    // Resuming inside the split revision delivers exactly the rest of it, then what follows.
    let mut resumed = subscribe(&t.client, fam.revision, 100).await;
    let mut got = Received::default();
    read_until(&mut resumed, later.revision, &mut got).await;
    let sequences: Vec<u32> = got
        .events
        .keys()
        .filter(|(r, _)| *r == fam.revision)
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(sequences, (100..FAMILY_SESSIONS as u32).collect::<Vec<_>>());
    assert!(got.events.contains_key(&(later.revision, 0)));

    // Reads honour the watermark; the session created after it is not covered.
    let lookup = t
        .client
        .lookup(lookup_by_id("t", &bulk[0].session_id))
        .await
        .unwrap();
    assert_eq!(lookup.session.unwrap().status(), SessionStatus::Revoked);
    let count = t
        .client
        .count_sessions(CountSessionsRequest {
            tenant: "t".into(),
            user_id: "bulk".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(count.active, 0);

    // The gateway cache applied the scoped event to what it held.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !bulk[..10].iter().all(|s| {
        cache
            .cached("t", &s.session_id)
            .is_some_and(|c| c.is_revoked())
    }) {
        assert!(
            Instant::now() < deadline,
            "the cache never applied the scoped event"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    follower.abort();
    t.stop().await;
}
