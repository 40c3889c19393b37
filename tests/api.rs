//! Every operation and outcome of the public API, driven over gRPC against an in-process
//! single-node cluster on a free loopback port.

mod common;

use std::time::Duration;

use common::*;
use sessiond::config::{Config, TenantPolicy};
use sessiond::proto::v1::*;
use tonic::Code;

async fn node_with(adjust: impl FnOnce(&mut Config)) -> (TestNode, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    adjust(&mut config);
    (TestNode::start(config).await, dir)
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

fn session_id(r: &CreateSessionResponse) -> String {
    r.session.as_ref().unwrap().session_id.clone()
}

#[tokio::test]
async fn create_lookup_rotate_and_validate() {
    let (t, _dir) = node_with(|_| {}).await;
    let created = create(&t, "acme", "alice").await;
    let s = created.session.clone().unwrap();
    assert!(s.session_id.starts_with("sid_"));
    assert!(s.family_id.starts_with("fam_"));
    assert_eq!(s.status(), SessionStatus::Active);
    assert_eq!(s.generation, 0);
    assert!(created.refresh_token.starts_with("sdr1_"));
    assert!(created.access_token.starts_with("sda1_"));
    assert!(created.revision > 0);

    for key in [
        lookup_request::Key::SessionId(s.session_id.clone()),
        lookup_request::Key::RefreshToken(created.refresh_token.clone()),
        lookup_request::Key::AccessToken(created.access_token.clone()),
    ] {
        for consistency in [Consistency::Linearizable, Consistency::Local] {
            let r = t
                .client
                .lookup(LookupRequest {
                    tenant: "acme".into(),
                    key: Some(key.clone()),
                    consistency: consistency as i32,
                })
                .await
                .unwrap();
            assert_eq!(r.outcome(), LookupOutcome::Found, "{consistency:?}");
            assert_eq!(r.session.unwrap().session_id, s.session_id);
        }
    }

    let rotated = t
        .client
        .rotate(rotate_request(&created.refresh_token))
        .await
        .unwrap();
    assert_eq!(rotated.outcome(), RotateOutcome::Rotated);
    assert!(!rotated.retried);
    assert_ne!(rotated.refresh_token, created.refresh_token);
    assert_eq!(rotated.session.as_ref().unwrap().generation, 1);

    let old = t
        .client
        .lookup(LookupRequest {
            tenant: "acme".into(),
            key: Some(lookup_request::Key::RefreshToken(
                created.refresh_token.clone(),
            )),
            consistency: 0,
        })
        .await
        .unwrap();
    assert_eq!(old.refresh_token_state(), RefreshTokenState::Retired);

    let valid = t
        .client
        .validate_access_token(ValidateAccessTokenRequest {
            tenant: "acme".into(),
            access_token: rotated.access_token.clone(),
            consistency: 0,
        })
        .await
        .unwrap();
    assert_eq!(valid.outcome(), AccessTokenOutcome::Valid);
    let unknown = t
        .client
        .validate_access_token(ValidateAccessTokenRequest {
            tenant: "acme".into(),
            access_token: format!("sda1_{}", "A".repeat(43)),
            consistency: 0,
        })
        .await
        .unwrap();
    assert_eq!(unknown.outcome(), AccessTokenOutcome::Unknown);
    t.stop().await;
}

#[tokio::test]
async fn retry_within_grace_returns_the_same_successor() {
    let (t, _dir) = node_with(|_| {}).await;
    let created = create(&t, "", "bob").await;
    let first = t
        .client
        .rotate(rotate_request(&created.refresh_token))
        .await
        .unwrap();
    let retry = t
        .client
        .rotate(rotate_request(&created.refresh_token))
        .await
        .unwrap();
    assert_eq!(retry.outcome(), RotateOutcome::Rotated);
    assert!(retry.retried);
    assert_eq!(retry.refresh_token, first.refresh_token);
    assert_eq!(retry.access_token, first.access_token);
    assert_eq!(
        retry.session.unwrap().generation,
        1,
        "a retry is not a second redemption"
    );
    t.stop().await;
}

#[tokio::test]
async fn replayed_token_revokes_the_whole_family() {
    let (t, _dir) = node_with(|c| c.sessions.reuse_grace_ms = 0).await;
    let web = create(&t, "acme", "carol").await;
    let device = t
        .client
        .create_session(CreateSessionRequest {
            family_id: web.session.as_ref().unwrap().family_id.clone(),
            ..create_request("acme", "carol")
        })
        .await
        .unwrap();
    assert_eq!(device.outcome(), CreateSessionOutcome::Created);
    let rotated = t
        .client
        .rotate(rotate_request(&web.refresh_token))
        .await
        .unwrap();
    assert_eq!(rotated.outcome(), RotateOutcome::Rotated);

    let replay = t
        .client
        .rotate(rotate_request(&web.refresh_token))
        .await
        .unwrap();
    assert_eq!(replay.outcome(), RotateOutcome::ReplayDetected);
    assert_eq!(replay.revoked_count, 2);
    assert!(replay.refresh_token.is_empty());

    for id in [session_id(&web), session_id(&device)] {
        let r = t.client.lookup(lookup_by_id("acme", &id)).await.unwrap();
        let s = r.session.unwrap();
        assert_eq!(s.status(), SessionStatus::Revoked);
        assert_eq!(s.revocation_reason(), RevocationReason::ReplayDetected);
    }
    let after = t
        .client
        .rotate(rotate_request(&rotated.refresh_token))
        .await
        .unwrap();
    assert_eq!(after.outcome(), RotateOutcome::Revoked);
    let join = t
        .client
        .create_session(CreateSessionRequest {
            family_id: web.session.as_ref().unwrap().family_id.clone(),
            ..create_request("acme", "carol")
        })
        .await
        .unwrap();
    assert_eq!(join.outcome(), CreateSessionOutcome::FamilyRevoked);
    let counters = t
        .client
        .get_anomaly_counters(GetAnomalyCountersRequest {
            tenant: "acme".into(),
            user_id: "carol".into(),
            consistency: 0,
        })
        .await
        .unwrap();
    assert_eq!((counters.tenant_replays, counters.user_replays), (1, 1));
    t.stop().await;
}

#[tokio::test]
async fn unknown_token_is_invalid_and_changes_nothing() {
    let (t, _dir) = node_with(|_| {}).await;
    let r = t
        .client
        .rotate(rotate_request(&format!("sdr1_{}", "A".repeat(43))))
        .await
        .unwrap();
    assert_eq!(r.outcome(), RotateOutcome::InvalidToken);
    let missing = t
        .client
        .create_session(CreateSessionRequest {
            family_id: "fam_AAAAAAAAAAAAAAAAAAAAAA".into(),
            ..create_request("", "dave")
        })
        .await
        .unwrap();
    assert_eq!(missing.outcome(), CreateSessionOutcome::FamilyMissing);
    let count = t
        .client
        .count_sessions(CountSessionsRequest::default())
        .await
        .unwrap();
    assert_eq!(count.active, 0);
    t.stop().await;
}

#[tokio::test]
async fn renewal_lease_excludes_other_holders() {
    let (t, _dir) = node_with(|_| {}).await;
    let created = create(&t, "acme", "erin").await;
    let sid = session_id(&created);
    let acquire = |holder: &str| AcquireRenewalLeaseRequest {
        tenant: "acme".into(),
        session_id: sid.clone(),
        holder: holder.into(),
        ttl_ms: 60_000,
        ..Default::default()
    };
    let mine = t
        .client
        .acquire_renewal_lease(acquire("svc-a"))
        .await
        .unwrap();
    assert_eq!(mine.outcome(), LeaseOutcome::Acquired);
    let lease = mine.lease.unwrap();
    assert!(lease.lease_id.starts_with("lse_"));
    let theirs = t
        .client
        .acquire_renewal_lease(acquire("svc-b"))
        .await
        .unwrap();
    assert_eq!(theirs.outcome(), LeaseOutcome::Held);
    assert_eq!(theirs.lease.as_ref().unwrap().holder, "svc-a");
    assert!(
        theirs.lease.unwrap().lease_id.is_empty(),
        "another holder's lease id is not revealed"
    );
    let again = t
        .client
        .acquire_renewal_lease(acquire("svc-a"))
        .await
        .unwrap();
    assert_eq!(again.outcome(), LeaseOutcome::Acquired);
    assert_eq!(again.lease.unwrap().lease_id, lease.lease_id);

    let blocked = t
        .client
        .rotate(rotate_request(&created.refresh_token))
        .await
        .unwrap();
    assert_eq!(blocked.outcome(), RotateOutcome::LeaseUnavailable);
    assert_eq!(blocked.lease_holder, "svc-a");
    let allowed = t
        .client
        .rotate(RotateRequest {
            lease_id: lease.lease_id.clone(),
            ..rotate_request(&created.refresh_token)
        })
        .await
        .unwrap();
    assert_eq!(allowed.outcome(), RotateOutcome::Rotated);
    let next = t
        .client
        .acquire_renewal_lease(acquire("svc-b"))
        .await
        .unwrap();
    assert_eq!(
        next.outcome(),
        LeaseOutcome::Acquired,
        "rotation consumed the lease"
    );
    t.stop().await;
}

#[tokio::test]
async fn revoke_scopes_count_and_isolate_tenants() {
    let (t, _dir) = node_with(|_| {}).await;
    let a1 = create(&t, "a", "u1").await;
    let a2 = create(&t, "a", "u1").await;
    let a3 = create(&t, "a", "u2").await;
    let b1 = create(&t, "b", "u1").await;

    let revoke = |tenant: &str, scope: RevokeScope, id: &str| RevokeRequest {
        tenant: tenant.into(),
        scope: scope as i32,
        id: id.into(),
        reason: RevocationReason::Logout as i32,
        request_id: String::new(),
    };
    let wrong_tenant = t
        .client
        .revoke(revoke("b", RevokeScope::Session, &session_id(&a1)))
        .await
        .unwrap();
    assert_eq!(wrong_tenant.revoked_count, 0);
    let one = t
        .client
        .revoke(revoke("a", RevokeScope::Session, &session_id(&a1)))
        .await
        .unwrap();
    assert_eq!(one.revoked_count, 1);
    let again = t
        .client
        .revoke(revoke("a", RevokeScope::Session, &session_id(&a1)))
        .await
        .unwrap();
    assert_eq!(again.revoked_count, 0, "already revoked is not counted");
    let user = t
        .client
        .revoke(revoke("a", RevokeScope::User, "u1"))
        .await
        .unwrap();
    assert_eq!(user.revoked_count, 1);
    let family = a3.session.as_ref().unwrap().family_id.clone();
    let fam = t
        .client
        .revoke(revoke("a", RevokeScope::Family, &family))
        .await
        .unwrap();
    assert_eq!(fam.revoked_count, 1);
    assert!(fam.revision > user.revision);

    let b = t
        .client
        .lookup(lookup_by_id("b", &session_id(&b1)))
        .await
        .unwrap();
    assert_eq!(
        b.session.unwrap().status(),
        SessionStatus::Active,
        "tenant b untouched"
    );
    let cross = t
        .client
        .lookup(lookup_by_id("b", &session_id(&a2)))
        .await
        .unwrap();
    assert_eq!(
        cross.outcome(),
        LookupOutcome::NotFound,
        "other tenant's session is not found"
    );

    let tenant = t
        .client
        .revoke(revoke("b", RevokeScope::Tenant, ""))
        .await
        .unwrap();
    assert_eq!(tenant.revoked_count, 1);
    let revoked = t
        .client
        .lookup(lookup_by_id("a", &session_id(&a2)))
        .await
        .unwrap();
    assert_eq!(
        revoked.outcome(),
        LookupOutcome::Found,
        "revoked is reported, not missing"
    );
    assert_eq!(revoked.session.unwrap().status(), SessionStatus::Revoked);
    t.stop().await;
}

#[tokio::test]
async fn list_count_touch_and_session_limit() {
    let (t, _dir) = node_with(|c| {
        c.tenants.insert(
            "limited".into(),
            TenantPolicy {
                max_sessions_per_user: Some(2),
                ..Default::default()
            },
        );
    })
    .await;
    let first = create(&t, "limited", "frank").await;
    create(&t, "limited", "frank").await;
    let third = create(&t, "limited", "frank").await;
    assert_eq!(third.evicted_session_ids, vec![session_id(&first)]);
    let evicted = t
        .client
        .lookup(lookup_by_id("limited", &session_id(&first)))
        .await
        .unwrap();
    assert_eq!(
        evicted.session.unwrap().revocation_reason(),
        RevocationReason::LimitEvicted
    );

    let count = t
        .client
        .count_sessions(CountSessionsRequest {
            tenant: "limited".into(),
            user_id: "frank".into(),
            consistency: 0,
        })
        .await
        .unwrap();
    assert_eq!(count.active, 2);
    let tenant_count = t
        .client
        .count_sessions(CountSessionsRequest {
            tenant: "limited".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(tenant_count.active, 2);

    let list = |include_inactive, page_token: String| ListSessionsRequest {
        tenant: "limited".into(),
        user_id: "frank".into(),
        include_inactive,
        page_size: 2,
        page_token,
        consistency: 0,
    };
    let active = t
        .client
        .list_sessions(list(false, String::new()))
        .await
        .unwrap();
    assert_eq!(active.sessions.len(), 2);
    let all_first = t
        .client
        .list_sessions(list(true, String::new()))
        .await
        .unwrap();
    assert_eq!(
        all_first.sessions[0].session_id,
        session_id(&first),
        "oldest first"
    );
    assert!(!all_first.next_page_token.is_empty());
    let all_second = t
        .client
        .list_sessions(list(true, all_first.next_page_token))
        .await
        .unwrap();
    assert_eq!(all_second.sessions.len(), 1);
    assert!(all_second.next_page_token.is_empty());

    let touched = t
        .client
        .touch(TouchRequest {
            tenant: "limited".into(),
            session_id: session_id(&third),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(touched.outcome(), TouchOutcome::Touched);
    let touched_revoked = t
        .client
        .touch(TouchRequest {
            tenant: "limited".into(),
            session_id: session_id(&first),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(touched_revoked.outcome(), TouchOutcome::Revoked);
    t.stop().await;
}

#[tokio::test]
async fn sessions_expire_and_are_collected() {
    let (t, _dir) = node_with(|c| c.gc.interval_ms = 200).await;
    let short = t
        .client
        .create_session(CreateSessionRequest {
            ttl_ms: 1_000,
            ..create_request("", "gina")
        })
        .await
        .unwrap();
    let sid = session_id(&short);
    let mut saw_expired = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let r = t.client.lookup(lookup_by_id("", &sid)).await.unwrap();
        match r.outcome() {
            LookupOutcome::Found => {
                if r.session.unwrap().status() == SessionStatus::Expired {
                    saw_expired = true;
                    let rot = t
                        .client
                        .rotate(rotate_request(&short.refresh_token))
                        .await
                        .unwrap();
                    assert!(matches!(
                        rot.outcome(),
                        RotateOutcome::Expired | RotateOutcome::InvalidToken
                    ));
                }
            }
            LookupOutcome::NotFound => {
                assert!(saw_expired || r.revision > short.revision);
                t.stop().await;
                return;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    panic!("expired session was not collected within 10 s");
}

#[tokio::test]
async fn idempotent_create_returns_the_first_tokens() {
    let (t, _dir) = node_with(|_| {}).await;
    let request = CreateSessionRequest {
        request_id: "req-0123456789abcdef".into(),
        ..create_request("acme", "hank")
    };
    let first = t.client.create_session(request.clone()).await.unwrap();
    let retry = t.client.create_session(request).await.unwrap();
    assert_eq!(retry.refresh_token, first.refresh_token);
    assert_eq!(retry.access_token, first.access_token);
    assert_eq!(session_id(&retry), session_id(&first));
    let count = t
        .client
        .count_sessions(CountSessionsRequest {
            tenant: "acme".into(),
            user_id: "hank".into(),
            consistency: 0,
        })
        .await
        .unwrap();
    assert_eq!(count.active, 1, "the retry created nothing");
    t.stop().await;
}

#[tokio::test]
async fn bad_input_is_rejected_naming_the_field_and_writes_nothing() {
    let (t, _dir) = node_with(|_| {}).await;
    let base = create_request("acme", "ivan");
    let creates = [
        (
            "user_id",
            CreateSessionRequest {
                user_id: String::new(),
                ..base.clone()
            },
        ),
        (
            "user_id",
            CreateSessionRequest {
                user_id: "x".repeat(257),
                ..base.clone()
            },
        ),
        (
            "tenant",
            CreateSessionRequest {
                tenant: "t".repeat(129),
                ..base.clone()
            },
        ),
        (
            "family_id",
            CreateSessionRequest {
                family_id: "nope".into(),
                ..base.clone()
            },
        ),
        (
            "ttl_ms",
            CreateSessionRequest {
                ttl_ms: -5,
                ..base.clone()
            },
        ),
        (
            "ttl_ms",
            CreateSessionRequest {
                ttl_ms: i64::MAX,
                ..base.clone()
            },
        ),
        (
            "idle_timeout_ms",
            CreateSessionRequest {
                ttl_ms: 60_000,
                idle_timeout_ms: 120_000,
                ..base.clone()
            },
        ),
        (
            "access_token_ttl_ms",
            CreateSessionRequest {
                access_token_ttl_ms: 10,
                ..base.clone()
            },
        ),
        (
            "device_public_key",
            CreateSessionRequest {
                device_public_key: vec![0; 257],
                ..base.clone()
            },
        ),
        (
            "attributes",
            CreateSessionRequest {
                attributes: (0..33).map(|i| (i.to_string(), String::new())).collect(),
                ..base.clone()
            },
        ),
        (
            "request_id",
            CreateSessionRequest {
                request_id: "short".into(),
                ..base.clone()
            },
        ),
    ];
    for (field, request) in creates {
        let status = t.client.create_session(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(
            status.message().starts_with(field),
            "{field}: {}",
            status.message()
        );
    }
    let bad_token = t
        .client
        .rotate(rotate_request("not-a-token"))
        .await
        .unwrap_err();
    assert_eq!(bad_token.code(), Code::InvalidArgument);
    assert!(bad_token.message().starts_with("refresh_token"));
    assert!(
        !bad_token.message().contains("not-a-token"),
        "the token is not echoed"
    );
    let bad_scope = t
        .client
        .revoke(RevokeRequest {
            scope: 99,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(bad_scope.message().starts_with("scope"));
    let no_key = t.client.lookup(LookupRequest::default()).await.unwrap_err();
    assert!(no_key.message().starts_with("key"));
    let bad_consistency = t
        .client
        .lookup(LookupRequest {
            consistency: 7,
            ..lookup_by_id("", "sid_AAAAAAAAAAAAAAAAAAAAAA")
        })
        .await
        .unwrap_err();
    assert!(bad_consistency.message().starts_with("consistency"));
    let server_reason = t
        .client
        .revoke(RevokeRequest {
            tenant: "acme".into(),
            scope: RevokeScope::User as i32,
            id: "ivan".into(),
            reason: RevocationReason::ReplayDetected as i32,
            request_id: String::new(),
        })
        .await
        .unwrap_err();
    assert!(server_reason.message().starts_with("reason"));

    assert_no_active_sessions(&t.client, "acme", "rejected requests wrote nothing").await;
    t.stop().await;
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let (t, _dir) = node_with(|_| {}).await;
    let endpoint = format!("http://{}", t.node.addr());
    let channel = tonic::transport::Endpoint::from_shared(endpoint)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "sessiond.v1.SessionAuthority".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("expected a service list");
    };
    assert!(list
        .service
        .iter()
        .any(|s| s.name == "sessiond.v1.SessionAuthority"));
    t.stop().await;
}

#[tokio::test]
async fn a_tenant_over_its_request_rate_is_refused_and_others_are_served() {
    let (t, _dir) = node_with(|c| {
        c.limits.tenant_requests_per_sec = 1;
        c.limits.tenant_burst = 3;
    })
    .await;
    let first = create(&t, "noisy", "u").await;
    let rotated = t
        .client
        .rotate(rotate_request(&first.refresh_token))
        .await
        .unwrap();
    assert_eq!(rotated.outcome(), RotateOutcome::Rotated);
    let started = std::time::Instant::now();
    let mut refused = 0;
    for _ in 0..10 {
        match t.client.create_session(create_request("noisy", "u")).await {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                assert!(e.message().contains("'noisy'"), "{e:?}");
                refused += 1;
            }
        }
    }
    // A burst of 3 (two spent above) and then one request per second: of the ten, at most
    // one plus one per second elapsed got through.
    let admitted_at_most = 1 + started.elapsed().as_secs() as usize + 1;
    assert!(
        refused >= 10 - admitted_at_most.min(10),
        "{refused} refused in {:?}",
        started.elapsed()
    );
    assert!(refused > 0);
    let err = t
        .client
        .rotate(rotate_request(&rotated.refresh_token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "rotations count too");
    create(&t, "quiet", "u").await;
    t.stop().await;
}
