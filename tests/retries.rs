//! Retries and idempotency keys, driven over gRPC against an in-process single-node cluster:
//! a retried write gets its first answer (tokens and revision included) and never logs the
//! user out; a request id is scoped to its tenant and operation and bound to the request's
//! parameters; answers that need no write cost no log entry; one connection holds a bounded
//! number of streams; undecodable input is INVALID_ARGUMENT naming the field; a collected
//! session's access token tells another tenant nothing.

mod common;

use std::time::Duration;

use common::*;
use sessiond::api::limits::MAX_STREAMS_PER_CONNECTION;
use sessiond::client::Client;
use sessiond::config::Config;
use sessiond::proto::v1::cluster_client::ClusterClient;
use sessiond::proto::v1::*;
use tonic::Code;

async fn node_with(adjust: impl FnOnce(&mut Config)) -> (TestNode, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // No periodic collection: the tests below count log entries.
    config.gc.interval_ms = 3_600_000;
    adjust(&mut config);
    (TestNode::start(config).await, dir)
}

fn request_id() -> String {
    format!("test-{:032x}", rand::random::<u128>())
}

async fn create(t: &TestNode, tenant: &str, user: &str) -> CreateSessionResponse {
    let r = t
        .client
        .create_session(create_request(tenant, user))
        .await
        .unwrap();
    assert_eq!(r.outcome(), CreateSessionOutcome::Created);
    r
}

fn session_of(r: &CreateSessionResponse) -> Session {
    r.session.clone().unwrap()
}

async fn last_log_index(t: &TestNode) -> u64 {
    ClusterClient::connect(format!("http://{}", t.node.addr()))
        .await
        .unwrap()
        .status(ClusterStatusRequest {})
        .await
        .unwrap()
        .into_inner()
        .last_log_index
}

#[tokio::test]
async fn a_retried_rotation_gets_the_first_successor_whatever_the_delay() {
    // No grace window at all: only the request id tells the retry from a replay.
    let (t, _dir) = node_with(|c| c.sessions.reuse_grace_ms = 0).await;
    let created = create(&t, "acme", "alice").await;
    let request = RotateRequest {
        request_id: request_id(),
        ..rotate_request(&created.refresh_token)
    };
    let first = t.client.rotate(request.clone()).await.unwrap();
    assert_eq!(first.outcome(), RotateOutcome::Rotated);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let retry = t.client.rotate(request.clone()).await.unwrap();
    assert_eq!(
        retry.outcome(),
        RotateOutcome::Rotated,
        "not REPLAY_DETECTED"
    );
    assert!(retry.retried);
    assert_eq!(retry.refresh_token, first.refresh_token);
    assert_eq!(retry.access_token, first.access_token);
    assert_eq!(retry.revision, first.revision, "the first revision");
    let session = t
        .client
        .lookup(lookup_by_id("acme", &session_of(&created).session_id))
        .await
        .unwrap()
        .session
        .unwrap();
    assert_eq!(session.status(), SessionStatus::Active);

    // The same id with other parameters is refused, naming the field.
    let other = t
        .client
        .rotate(RotateRequest {
            without_access_token: true,
            ..request.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::FailedPrecondition);
    assert!(
        other.message().starts_with("request_id:"),
        "{}",
        other.message()
    );

    // Once the successor itself was redeemed, the old token is a replay even with the id.
    t.client
        .rotate(rotate_request(&first.refresh_token))
        .await
        .unwrap();
    let replay = t.client.rotate(request).await.unwrap();
    assert_eq!(replay.outcome(), RotateOutcome::ReplayDetected);
    assert!(replay.refresh_token.is_empty());
    t.stop().await;
}

#[tokio::test]
async fn request_ids_are_scoped_to_tenant_and_bound_to_the_parameters() {
    let (t, _dir) = node_with(|_| {}).await;
    let id = request_id();
    let create_with = |tenant: &str, user: &str| CreateSessionRequest {
        request_id: id.clone(),
        ..create_request(tenant, user)
    };
    let first = t
        .client
        .create_session(create_with("acme", "alice"))
        .await
        .unwrap();

    // Another tenant using the same id makes its own session; it never sees acme's tokens.
    let elsewhere = t
        .client
        .create_session(create_with("globex", "alice"))
        .await
        .unwrap();
    assert_eq!(elsewhere.outcome(), CreateSessionOutcome::Created);
    assert_ne!(elsewhere.refresh_token, first.refresh_token);
    assert_eq!(session_of(&elsewhere).tenant, "globex");

    // The same id in the same tenant for another user is refused, and opens nothing.
    let reused = t
        .client
        .create_session(create_with("acme", "mallory"))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::FailedPrecondition);
    assert!(
        reused.message().starts_with("request_id:"),
        "{}",
        reused.message()
    );
    assert!(!reused.message().contains(&first.refresh_token));

    // The same id for another operation is another request.
    let revoke = t
        .client
        .revoke(RevokeRequest {
            tenant: "acme".into(),
            scope: RevokeScope::Session as i32,
            id: session_of(&first).session_id,
            request_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(revoke.revoked_count, 1);

    // A true retry of the create gets the first tokens and revision, and the session as it
    // is now: revoked, not ACTIVE.
    let retry = t
        .client
        .create_session(create_with("acme", "alice"))
        .await
        .unwrap();
    assert_eq!(retry.refresh_token, first.refresh_token);
    assert_eq!(retry.access_token, first.access_token);
    assert_eq!(retry.revision, first.revision);
    assert_eq!(session_of(&retry).status(), SessionStatus::Revoked);
    t.stop().await;
}

#[tokio::test]
async fn a_retried_revoke_reports_the_first_revision_and_count() {
    let (t, _dir) = node_with(|_| {}).await;
    let a = create(&t, "acme", "bob").await;
    let request = RevokeRequest {
        tenant: "acme".into(),
        scope: RevokeScope::Session as i32,
        id: session_of(&a).session_id,
        request_id: request_id(),
        ..Default::default()
    };
    let first = t.client.revoke(request.clone()).await.unwrap();
    create(&t, "acme", "bob").await;
    create(&t, "acme", "bob").await;
    let retry = t.client.revoke(request.clone()).await.unwrap();
    assert_eq!((retry.revision, retry.revoked_count), (first.revision, 1));

    let reused = t
        .client
        .revoke(RevokeRequest {
            scope: RevokeScope::User as i32,
            id: "bob".into(),
            ..request
        })
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::FailedPrecondition);
    let count = t
        .client
        .count_sessions(CountSessionsRequest {
            tenant: "acme".into(),
            user_id: "bob".into(),
            consistency: 0,
        })
        .await
        .unwrap();
    assert_eq!(count.active, 2, "the refused request revoked nothing");
    t.stop().await;
}

#[tokio::test]
async fn touch_and_lease_retries_get_the_first_answer() {
    let (t, _dir) = node_with(|_| {}).await;
    let created = create(&t, "acme", "carol").await;
    let sid = session_of(&created).session_id;
    let touch = TouchRequest {
        tenant: "acme".into(),
        session_id: sid.clone(),
        request_id: request_id(),
    };
    let first = t.client.touch(touch.clone()).await.unwrap();
    let retry = t.client.touch(touch).await.unwrap();
    assert_eq!(first.outcome(), TouchOutcome::Touched);
    assert_eq!(
        (retry.outcome, retry.revision),
        (first.outcome, first.revision)
    );

    let lease = AcquireRenewalLeaseRequest {
        tenant: "acme".into(),
        session_id: sid,
        holder: "svc-a".into(),
        ttl_ms: 60_000,
        request_id: request_id(),
    };
    let first = t.client.acquire_renewal_lease(lease.clone()).await.unwrap();
    let retry = t.client.acquire_renewal_lease(lease.clone()).await.unwrap();
    assert_eq!(first.outcome(), LeaseOutcome::Acquired);
    assert_eq!(retry.lease, first.lease);
    assert_eq!(retry.revision, first.revision);
    let other = t
        .client
        .acquire_renewal_lease(AcquireRenewalLeaseRequest {
            holder: "svc-b".into(),
            ..lease
        })
        .await
        .unwrap_err();
    assert_eq!(other.code(), Code::FailedPrecondition);
    t.stop().await;
}

#[tokio::test]
async fn unknown_tokens_and_missing_sessions_are_answered_without_a_log_entry() {
    let (t, _dir) = node_with(|_| {}).await;
    let created = create(&t, "acme", "dave").await;
    let before = last_log_index(&t).await;
    let unknown = t
        .client
        .rotate(rotate_request(&format!("sdr1_{}", "A".repeat(43))))
        .await
        .unwrap();
    assert_eq!(unknown.outcome(), RotateOutcome::InvalidToken);
    assert!(unknown.revision >= created.revision);
    for (tenant, session_id) in [
        ("acme", "sid_AAAAAAAAAAAAAAAAAAAAAA".to_owned()),
        ("globex", session_of(&created).session_id),
    ] {
        let missing = t
            .client
            .touch(TouchRequest {
                tenant: tenant.into(),
                session_id,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(missing.outcome(), TouchOutcome::SessionMissing);
    }
    assert_eq!(last_log_index(&t).await, before, "no entry was appended");

    // A known token still goes through the log.
    let rotated = t
        .client
        .rotate(rotate_request(&created.refresh_token))
        .await
        .unwrap();
    assert_eq!(rotated.outcome(), RotateOutcome::Rotated);
    assert!(last_log_index(&t).await > before);
    t.stop().await;
}

/// CreateSessionRequest's first two fields, as bytes: lets a test put invalid UTF-8 on the
/// wire where the server expects a string.
#[derive(Clone, PartialEq, prost::Message)]
struct RawCreate {
    #[prost(bytes = "vec", tag = "1")]
    tenant: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    user_id: Vec<u8>,
}

#[tokio::test]
async fn invalid_utf8_is_invalid_argument_naming_the_field() {
    let (t, _dir) = node_with(|_| {}).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", t.node.addr()))
        .unwrap()
        .connect()
        .await
        .unwrap();
    for (raw, field) in [
        (
            RawCreate {
                tenant: b"acme".to_vec(),
                user_id: b"al\xffce".to_vec(),
            },
            "user_id",
        ),
        (
            RawCreate {
                tenant: b"\xc3\x28".to_vec(),
                user_id: b"alice".to_vec(),
            },
            "tenant",
        ),
    ] {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        grpc.ready().await.unwrap();
        let status = grpc
            .unary(
                tonic::Request::new(raw),
                tonic::codegen::http::uri::PathAndQuery::from_static(
                    "/sessiond.v1.SessionAuthority/CreateSession",
                ),
                tonic_prost::ProstCodec::<RawCreate, CreateSessionResponse>::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
        assert_eq!(status.message(), format!("{field}: not valid UTF-8"));
    }
    assert_no_active_sessions(&t.client, "acme", "nothing was written").await;
    t.stop().await;
}

#[tokio::test]
async fn one_connection_holds_a_bounded_number_of_streams() {
    let (t, _dir) = node_with(|_| {}).await;
    let watch = WatchRevocationsRequest::default;
    let mut open = Vec::new();
    for _ in 0..MAX_STREAMS_PER_CONNECTION {
        open.push(t.client.watch_revocations(watch()).await.unwrap());
    }
    let refused = t.client.watch_revocations(watch()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);

    let other = Client::connect(&format!("http://{}", t.node.addr()))
        .await
        .unwrap();
    let _elsewhere = other.watch_revocations(watch()).await.unwrap();

    // A stream the client drops frees its slot.
    open.pop();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match t.client.watch_revocations(watch()).await {
            Ok(stream) => {
                open.push(stream);
                break;
            }
            Err(e) if e.code() == Code::ResourceExhausted => {
                assert!(std::time::Instant::now() < deadline, "slot never freed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    t.stop().await;
}

#[tokio::test]
async fn a_collected_sessions_access_token_is_unknown_to_every_tenant() {
    let (t, _dir) = node_with(|c| c.gc.interval_ms = 200).await;
    let created = t
        .client
        .create_session(CreateSessionRequest {
            idle_timeout_ms: 1_000,
            access_token_ttl_ms: 600_000,
            ..create_request("acme", "erin")
        })
        .await
        .unwrap();
    let sid = session_of(&created).session_id;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while t
        .client
        .lookup(lookup_by_id("acme", &sid))
        .await
        .unwrap()
        .outcome()
        != LookupOutcome::NotFound
    {
        assert!(std::time::Instant::now() < deadline, "never collected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for tenant in ["globex", "acme"] {
        let r = t
            .client
            .validate_access_token(ValidateAccessTokenRequest {
                tenant: tenant.into(),
                access_token: created.access_token.clone(),
                consistency: 0,
            })
            .await
            .unwrap();
        assert_eq!(r.outcome(), AccessTokenOutcome::Unknown, "{tenant}");
        assert!(r.session.is_none());
    }
    t.stop().await;
}
