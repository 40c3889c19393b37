//! Invariant 2 on one node: an acknowledged write survives a SIGKILL. The real binary is
//! killed right after a burst of acknowledged creates, rotations and revocations, restarted
//! on the same data directory, and every acknowledged write is found there.

mod common;

use common::*;
use sessiond::proto::v1::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = dir.path().join("sessiond.log");

    let server = ServerProcess::spawn(&data, &log, &[]);
    let client = connect(&server.endpoint()).await;
    let mut created = Vec::new();
    for i in 0..40 {
        let r = client
            .create_session(create_request("crash", &format!("user-{}", i % 7)))
            .await
            .unwrap();
        created.push(r);
    }
    let mut rotated = Vec::new();
    for r in created.iter().take(20) {
        let next = client
            .rotate(rotate_request(&r.refresh_token))
            .await
            .unwrap();
        assert_eq!(next.outcome(), RotateOutcome::Rotated);
        rotated.push(next);
    }
    let revoked_ids: Vec<String> = created[30..]
        .iter()
        .map(|r| r.session.as_ref().unwrap().session_id.clone())
        .collect();
    for id in &revoked_ids {
        let r = client
            .revoke(RevokeRequest {
                tenant: "crash".into(),
                scope: RevokeScope::Session as i32,
                id: id.clone(),
                reason: RevocationReason::Logout as i32,
                request_id: String::new(),
            })
            .await
            .unwrap();
        assert_eq!(r.revoked_count, 1);
    }
    drop(client);
    server.kill9();

    let server = ServerProcess::spawn(&data, &log, &[]);
    let client = connect(&server.endpoint()).await;
    for (i, r) in created.iter().enumerate() {
        let id = r.session.as_ref().unwrap().session_id.clone();
        let found = client.lookup(lookup_by_id("crash", &id)).await.unwrap();
        assert_eq!(found.outcome(), LookupOutcome::Found, "session {i} lost");
        let status = found.session.unwrap().status();
        let expected = if revoked_ids.contains(&id) {
            SessionStatus::Revoked
        } else {
            SessionStatus::Active
        };
        assert_eq!(status, expected, "session {i}");
    }
    for (old, new) in created.iter().zip(&rotated) {
        let by_new = client
            .lookup(LookupRequest {
                tenant: "crash".into(),
                key: Some(lookup_request::Key::RefreshToken(new.refresh_token.clone())),
                consistency: 0,
            })
            .await
            .unwrap();
        assert_eq!(by_new.refresh_token_state(), RefreshTokenState::Current);
        let by_old = client
            .lookup(LookupRequest {
                tenant: "crash".into(),
                key: Some(lookup_request::Key::RefreshToken(old.refresh_token.clone())),
                consistency: 0,
            })
            .await
            .unwrap();
        assert_eq!(by_old.refresh_token_state(), RefreshTokenState::Retired);
    }
    let again = client
        .rotate(rotate_request(&rotated[0].refresh_token))
        .await
        .unwrap();
    assert_eq!(
        again.outcome(),
        RotateOutcome::Rotated,
        "the chain continues after restart"
    );
    server.terminate();
}
