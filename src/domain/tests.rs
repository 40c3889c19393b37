//! Unit and property tests of the domain core: every command outcome, the indexes kept in
//! step, and the invariants (at-most-once redemption, revocation is final, determinism).

use proptest::prelude::*;
use sha2::{Digest, Sha256};

use super::*;
use crate::domain::events::Position;
use crate::domain::format::RecordFormat;
use crate::proto::internal::{
    command, command_result, AcquireLease, CollectGarbage, CreateSession, GarbageResult,
    LeaseResult, RefreshTokenRecord, RevocationEvent, Revoke, Rotate, RotateResult, SessionRecord,
    Touch,
};
use crate::proto::v1::{
    CreateSessionOutcome, LeaseOutcome, RevocationReason, RevokeScope, RotateOutcome,
    SessionStatus, TouchOutcome,
};

const HOUR: i64 = 3_600_000;
const GRACE: i64 = 10_000;

/// An empty state in `format`.
fn state_in(format: RecordFormat) -> MemoryState {
    let mut state = MemoryState::new();
    set_format(&mut state, format);
    state
}

/// Moves `state` to `format` as a SetRecordFormat command applied at the state's latest
/// time would, without using a revision.
fn set_format(state: &mut MemoryState, format: RecordFormat) {
    let command = crate::proto::internal::SetRecordFormat {
        format: format.number(),
    };
    let now = crate::domain::time::applied(state).unwrap();
    format::apply(&command, now, state).unwrap();
}

/// The format a property test runs in.
fn any_format() -> impl Strategy<Value = RecordFormat> {
    prop_oneof![
        Just(RecordFormat::Legacy),
        Just(RecordFormat::Compact),
        Just(RecordFormat::CompactRotations),
        Just(RecordFormat::ChainedRetirements),
        Just(RecordFormat::TimedRequests)
    ]
}

/// A deterministic stand-in for a minted token hash.
fn hash(seed: u64) -> Vec<u8> {
    Sha256::digest(seed.to_be_bytes()).to_vec()
}

/// A state plus the next revision, driving commands as the Raft layer would.
struct World {
    state: MemoryState,
    revision: u64,
    minted: u64,
}

impl World {
    /// A world in the format of a new cluster.
    fn new() -> Self {
        Self::in_format(RecordFormat::NEWEST)
    }

    fn in_format(format: RecordFormat) -> Self {
        World {
            state: state_in(format),
            revision: 0,
            minted: 0,
        }
    }

    /// Every entry but the cluster clock (which every command moves forward).
    fn data(&self) -> std::collections::BTreeMap<Vec<u8>, Vec<u8>> {
        let mut entries = self.state.entries().clone();
        entries.remove(&keys::applied_time());
        entries
    }

    /// The session record as stored, undecorated (no ids filled in, nothing stripped).
    fn stored_record(&self, session_id: &str) -> SessionRecord {
        let bytes = self.state.get(&keys::session(session_id)).unwrap().unwrap();
        records::decode::<SessionRecord>(&bytes).unwrap()
    }

    fn mint(&mut self) -> Vec<u8> {
        self.minted += 1;
        hash(self.minted)
    }

    fn run(&mut self, now_ms: i64, request_key: &[u8], kind: command::Kind) -> CommandResult {
        self.revision += 1;
        let command = Command {
            schema_version: SCHEMA_VERSION,
            now_ms,
            request_key: request_key.to_vec(),
            kind: Some(kind),
            ..Default::default()
        };
        apply(&command, self.revision, &mut self.state).expect("apply")
    }

    fn create_in(
        &mut self,
        now: i64,
        tenant: &str,
        user: &str,
        family: Option<&str>,
        limit: u32,
    ) -> (CommandResult, Vec<u8>) {
        let refresh = self.mint();
        let access = self.mint();
        let n = self.revision + 1;
        let kind = command::Kind::CreateSession(CreateSession {
            session_id: format!("sid_{n:022}"),
            family_id: family.map_or_else(|| format!("fam_{n:022}"), str::to_owned),
            join_family: family.is_some(),
            tenant: tenant.into(),
            user_id: user.into(),
            expires_at_ms: now + 24 * HOUR,
            idle_timeout_ms: HOUR,
            refresh_hash: refresh.clone(),
            access_hash: access,
            access_expires_at_ms: now + 15 * 60_000,
            max_sessions_per_user: limit,
            ..Default::default()
        });
        (self.run(now, b"", kind), refresh)
    }

    /// Creates a session for user "u" in tenant "t"; returns it and its refresh hash.
    fn create(&mut self, now: i64) -> (SessionRecord, Vec<u8>) {
        let (result, refresh) = self.create_in(now, "t", "u", None, 0);
        (created(&result).session.clone().unwrap(), refresh)
    }

    fn rotate(&mut self, now: i64, presented: &[u8], lease_id: &str) -> (RotateResult, Vec<u8>) {
        let successor = self.mint();
        let access = self.mint();
        let kind = command::Kind::Rotate(Rotate {
            presented_hash: presented.to_vec(),
            new_refresh_hash: successor.clone(),
            new_access_hash: access,
            access_expires_at_ms: now + 60_000,
            sealed_successor: [b"sealed:".as_slice(), &successor].concat(),
            grace_ms: GRACE,
            lease_id: lease_id.into(),
        });
        match self.run(now, b"", kind).kind {
            Some(command_result::Kind::Rotate(r)) => (r, successor),
            other => panic!("not a rotate result: {other:?}"),
        }
    }

    fn lease(&mut self, now: i64, session_id: &str, holder: &str) -> LeaseResult {
        let n = self.revision + 1;
        let kind = command::Kind::AcquireLease(AcquireLease {
            tenant: "t".into(),
            session_id: session_id.into(),
            holder: holder.into(),
            lease_id: format!("lse_{n:022}"),
            expires_at_ms: now + 10_000,
        });
        match self.run(now, b"", kind).kind {
            Some(command_result::Kind::AcquireLease(r)) => r,
            other => panic!("not a lease result: {other:?}"),
        }
    }

    fn touch(&mut self, now: i64, tenant: &str, session_id: &str) -> TouchOutcome {
        let kind = command::Kind::Touch(Touch {
            tenant: tenant.into(),
            session_id: session_id.into(),
        });
        match self.run(now, b"", kind).kind {
            Some(command_result::Kind::Touch(r)) => r.outcome(),
            other => panic!("not a touch result: {other:?}"),
        }
    }

    fn revoke(&mut self, now: i64, tenant: &str, scope: RevokeScope, id: &str) -> CommandResult {
        let kind = command::Kind::Revoke(Revoke {
            tenant: tenant.into(),
            scope: scope as i32,
            id: id.into(),
            reason: RevocationReason::Logout as i32,
        });
        self.run(now, b"", kind)
    }

    fn collect(&mut self, now: i64, limit: u32) -> u64 {
        self.collect_result(now, limit).removed
    }

    fn collect_result(&mut self, now: i64, limit: u32) -> GarbageResult {
        let kind = command::Kind::CollectGarbage(CollectGarbage {
            limit,
            dedup_retention_ms: 60_000,
            event_retention_ms: HOUR,
        });
        match self.run(now, b"", kind).kind {
            Some(command_result::Kind::CollectGarbage(r)) => r,
            other => panic!("not a gc result: {other:?}"),
        }
    }

    fn session(&self, id: &str) -> Option<SessionRecord> {
        query::session_by_id(&self.state, "t", id).unwrap()
    }
}

fn created(result: &CommandResult) -> &crate::proto::internal::CreateSessionResult {
    match &result.kind {
        Some(command_result::Kind::CreateSession(r)) => r,
        other => panic!("not a create result: {other:?}"),
    }
}

fn revoked_count(result: &CommandResult) -> u64 {
    match &result.kind {
        Some(command_result::Kind::Revoke(r)) => r.revoked_count,
        other => panic!("not a revoke result: {other:?}"),
    }
}

#[test]
fn create_stores_an_active_session_with_its_token_indexes() {
    let mut w = World::new();
    let (result, refresh) = w.create_in(1_000, "t", "u", None, 0);
    let r = created(&result);
    assert_eq!(r.outcome(), CreateSessionOutcome::Created);
    let session = r.session.clone().unwrap();
    assert_eq!(session.created_at_ms, 1_000);
    assert_eq!(session.last_seen_at_ms, 1_000);
    assert_eq!(r.access_expires_at_ms, 1_000 + 15 * 60_000);
    assert_eq!(query::status_at(&session, 1_001), SessionStatus::Active);
    assert_eq!(w.session(&session.session_id), Some(session.clone()));
    let (found, retired) = query::session_by_refresh_hash(&w.state, "t", &refresh)
        .unwrap()
        .unwrap();
    assert_eq!(found.session_id, session.session_id);
    assert!(!retired);
    assert_eq!(
        query::count_active(&w.state, "t", Some("u"), 1_001).unwrap(),
        1
    );
    assert_eq!(query::count_active(&w.state, "t", None, 1_001).unwrap(), 1);
}

#[test]
fn joining_a_family_needs_a_live_family_of_the_same_tenant_and_user() {
    let mut w = World::new();
    let (web, _) = w.create(0);
    let (joined, _) = w.create_in(1, "t", "u", Some(&web.family_id), 0);
    assert_eq!(created(&joined).outcome(), CreateSessionOutcome::Created);
    assert_eq!(
        created(&joined).session.as_ref().unwrap().family_id,
        web.family_id
    );
    let (other_tenant, _) = w.create_in(2, "t2", "u", Some(&web.family_id), 0);
    assert_eq!(
        created(&other_tenant).outcome(),
        CreateSessionOutcome::FamilyMissing
    );
    let (other_user, _) = w.create_in(2, "t", "v", Some(&web.family_id), 0);
    assert_eq!(
        created(&other_user).outcome(),
        CreateSessionOutcome::FamilyMissing
    );
    let (missing, _) = w.create_in(2, "t", "u", Some("fam_missing"), 0);
    assert_eq!(
        created(&missing).outcome(),
        CreateSessionOutcome::FamilyMissing
    );
    w.revoke(3, "t", RevokeScope::Family, &web.family_id);
    let (revoked, _) = w.create_in(4, "t", "u", Some(&web.family_id), 0);
    assert_eq!(
        created(&revoked).outcome(),
        CreateSessionOutcome::FamilyRevoked
    );
}

#[test]
fn rotation_retires_the_presented_token_and_makes_the_successor_current() {
    let mut w = World::new();
    let (session, first) = w.create(0);
    let (r, second) = w.rotate(10, &first, "");
    assert_eq!(r.outcome(), RotateOutcome::Rotated);
    assert!(!r.retried);
    assert_eq!(r.access_expires_at_ms, 10 + 60_000);
    let after = r.session.unwrap();
    assert_eq!(after.generation, 1);
    assert_eq!(after.current_refresh_hash, second);
    assert_eq!(after.last_seen_at_ms, 10);
    let (_, old_retired) = query::session_by_refresh_hash(&w.state, "t", &first)
        .unwrap()
        .unwrap();
    assert!(old_retired);
    let (_, new_retired) = query::session_by_refresh_hash(&w.state, "t", &second)
        .unwrap()
        .unwrap();
    assert!(!new_retired);
    assert_eq!(w.session(&session.session_id).unwrap().generation, 1);
}

#[test]
fn a_retry_within_the_grace_window_returns_the_same_successor_and_changes_nothing() {
    let mut w = World::new();
    let (_, first) = w.create(0);
    let (_, second) = w.rotate(10, &first, "");
    let before = w.data();
    let (retry, _) = w.rotate(10 + GRACE, &first, "");
    assert_eq!(retry.outcome(), RotateOutcome::Rotated);
    assert!(retry.retried);
    assert_eq!(
        retry.sealed_successor,
        [b"sealed:".as_slice(), &second].concat()
    );
    assert_eq!(retry.access_expires_at_ms, 10 + 60_000);
    assert_eq!(retry.session.unwrap().generation, 1);
    assert_eq!(before, w.data());
}

#[test]
fn replay_of_a_retired_token_revokes_the_whole_family_and_is_counted() {
    let mut w = World::new();
    let (web, first) = w.create(0);
    let (device_result, _) = w.create_in(1, "t", "u", Some(&web.family_id), 0);
    let device = created(&device_result).session.clone().unwrap();
    let (_, second) = w.rotate(10, &first, "");
    w.rotate(20, &second, "");
    let replay = w.run(
        20 + GRACE + 1,
        b"",
        command::Kind::Rotate(Rotate {
            presented_hash: first.clone(),
            new_refresh_hash: hash(999),
            grace_ms: GRACE,
            ..Default::default()
        }),
    );
    let Some(command_result::Kind::Rotate(r)) = &replay.kind else {
        panic!("not a rotate result")
    };
    assert_eq!(r.outcome(), RotateOutcome::ReplayDetected);
    assert_eq!(r.revoked_count, 2);
    assert_eq!(replay.events.len(), 2);
    assert!(replay.events.iter().all(
        |e| e.reason == RevocationReason::ReplayDetected as i32 && e.family_id == web.family_id
    ));
    for id in [&web.session_id, &device.session_id] {
        let s = w.session(id).unwrap();
        assert_eq!(query::status_at(&s, 100), SessionStatus::Revoked);
        assert_eq!(s.revocation_reason, RevocationReason::ReplayDetected as i32);
    }
    assert_eq!(
        query::replay_counts(&w.state, "t", Some("u")).unwrap(),
        (1, 1)
    );
    assert_eq!(
        query::replay_counts(&w.state, "t", Some("v")).unwrap(),
        (1, 0)
    );
    assert_eq!(query::replay_counts(&w.state, "t2", None).unwrap(), (0, 0));
    assert!(query::session_by_refresh_hash(&w.state, "t", &hash(999))
        .unwrap()
        .is_none());
    let (after, _) = w.rotate(100, &second, "");
    assert_eq!(after.outcome(), RotateOutcome::Revoked);
}

#[test]
fn a_retry_after_the_successor_itself_rotated_is_a_replay() {
    let mut w = World::new();
    let (_, first) = w.create(0);
    let (_, second) = w.rotate(10, &first, "");
    w.rotate(11, &second, "");
    let (r, _) = w.rotate(12, &first, "");
    assert_eq!(r.outcome(), RotateOutcome::ReplayDetected);
}

#[test]
fn a_zero_grace_window_makes_every_reuse_a_replay() {
    let mut w = World::new();
    let (_, first) = w.create(0);
    w.rotate(10, &first, "");
    let r = w.run(
        10,
        b"",
        command::Kind::Rotate(Rotate {
            presented_hash: first,
            new_refresh_hash: hash(1234),
            grace_ms: 0,
            ..Default::default()
        }),
    );
    let Some(command_result::Kind::Rotate(r)) = r.kind else {
        panic!("not a rotate result")
    };
    assert_eq!(r.outcome(), RotateOutcome::ReplayDetected);
}

#[test]
fn an_unknown_token_is_invalid_and_changes_nothing() {
    let mut w = World::new();
    w.create(0);
    let before = w.data();
    let (r, _) = w.rotate(5, &hash(424242), "");
    assert_eq!(r.outcome(), RotateOutcome::InvalidToken);
    assert_eq!(before, w.data());
}

#[test]
fn sessions_expire_absolutely_and_when_idle_and_touch_slides_the_idle_deadline() {
    let mut w = World::new();
    let (s, token) = w.create(0);
    // Idle for over an hour: expired, although the absolute expiry is a day away.
    assert_eq!(
        w.rotate(HOUR, &token, "").0.outcome(),
        RotateOutcome::Expired
    );
    assert_eq!(w.touch(HOUR, "t", &s.session_id), TouchOutcome::Expired);

    let mut w = World::new();
    let (s, token) = w.create(0);
    let mut now = 0;
    while now < 25 * HOUR {
        now += HOUR / 2;
        let expected = if now < 24 * HOUR {
            TouchOutcome::Touched
        } else {
            TouchOutcome::Expired
        };
        assert_eq!(w.touch(now, "t", &s.session_id), expected, "at {now}");
    }
    assert_eq!(
        w.rotate(now, &token, "").0.outcome(),
        RotateOutcome::Expired
    );
}

#[test]
fn revoked_sessions_cannot_rotate_touch_or_lease() {
    let mut w = World::new();
    let (s, token) = w.create(0);
    assert_eq!(
        revoked_count(&w.revoke(1, "t", RevokeScope::Session, &s.session_id)),
        1
    );
    assert_eq!(w.rotate(2, &token, "").0.outcome(), RotateOutcome::Revoked);
    assert_eq!(w.touch(2, "t", &s.session_id), TouchOutcome::Revoked);
    assert_eq!(
        w.lease(2, &s.session_id, "a").outcome(),
        LeaseOutcome::Revoked
    );
    let s = w.session(&s.session_id).unwrap();
    assert_eq!(s.revoked_at_ms, 1);
    assert_eq!(s.revocation_reason, RevocationReason::Logout as i32);
}

#[test]
fn a_live_lease_of_another_holder_blocks_rotation_until_it_expires() {
    let mut w = World::new();
    let (s, token) = w.create(0);
    let mine = w.lease(1, &s.session_id, "a");
    assert_eq!(mine.outcome(), LeaseOutcome::Acquired);
    let mine = mine.lease.unwrap();
    assert_eq!(mine.holder, "a");

    let theirs = w.lease(2, &s.session_id, "b");
    assert_eq!(theirs.outcome(), LeaseOutcome::Held);
    let held = theirs.lease.unwrap();
    assert_eq!((held.holder.as_str(), held.lease_id.as_str()), ("a", ""));
    assert_eq!(held.expires_at_ms, mine.expires_at_ms);

    let renewed = w.lease(3, &s.session_id, "a").lease.unwrap();
    assert_eq!(renewed.lease_id, mine.lease_id);
    assert_eq!(renewed.expires_at_ms, 3 + 10_000);

    let (blocked, _) = w.rotate(4, &token, "");
    assert_eq!(blocked.outcome(), RotateOutcome::LeaseUnavailable);
    assert_eq!(blocked.lease_holder, "a");
    assert_eq!(blocked.lease_expires_at_ms, renewed.expires_at_ms);

    let (rotated, next) = w.rotate(5, &token, &mine.lease_id);
    assert_eq!(rotated.outcome(), RotateOutcome::Rotated);
    assert!(rotated.session.unwrap().lease.is_none(), "lease released");

    w.lease(6, &s.session_id, "b");
    let (after_expiry, _) = w.rotate(6 + 10_000, &next, "");
    assert_eq!(after_expiry.outcome(), RotateOutcome::Rotated);
}

#[test]
fn leases_and_touches_need_an_existing_session_of_the_tenant() {
    let mut w = World::new();
    let (s, _) = w.create(0);
    assert_eq!(
        w.lease(1, "sid_nope", "a").outcome(),
        LeaseOutcome::SessionMissing
    );
    assert_eq!(w.touch(1, "t", "sid_nope"), TouchOutcome::SessionMissing);
    assert_eq!(
        w.touch(1, "other", &s.session_id),
        TouchOutcome::SessionMissing
    );
    assert_eq!(w.touch(1, "t", &s.session_id), TouchOutcome::Touched);
    let (s2, token) = w.create(0);
    let _ = s2;
    assert_eq!(
        w.rotate(2 * HOUR, &token, "").0.outcome(),
        RotateOutcome::Expired
    );
    assert_eq!(
        w.lease(2 * HOUR, &s.session_id, "a").outcome(),
        LeaseOutcome::Expired
    );
}

#[test]
fn revoke_scopes_count_what_they_revoke_and_stay_within_the_tenant() {
    let mut w = World::new();
    let (a1, _) = w.create_in(0, "t", "a", None, 0);
    let a1 = created(&a1).session.clone().unwrap();
    let (a2, _) = w.create_in(0, "t", "a", Some(&a1.family_id), 0);
    let a2 = created(&a2).session.clone().unwrap();
    w.create_in(0, "t", "a", None, 0);
    w.create_in(0, "t", "b", None, 0);
    w.create_in(0, "t2", "a", None, 0);

    assert_eq!(
        revoked_count(&w.revoke(1, "t2", RevokeScope::Session, &a1.session_id)),
        0
    );
    assert_eq!(
        revoked_count(&w.revoke(1, "t2", RevokeScope::Family, &a1.family_id)),
        0
    );
    assert_eq!(
        revoked_count(&w.revoke(1, "t", RevokeScope::Session, &a1.session_id)),
        1
    );
    assert_eq!(
        revoked_count(&w.revoke(1, "t", RevokeScope::Session, &a1.session_id)),
        0
    );
    let family = w.revoke(2, "t", RevokeScope::Family, &a1.family_id);
    assert_eq!(revoked_count(&family), 1);
    assert_eq!(family.events[0].session_id, a2.session_id);
    assert_eq!(family.events[0].scope, RevokeScope::Family as i32);
    assert_eq!(revoked_count(&w.revoke(3, "t", RevokeScope::User, "a")), 1);
    assert_eq!(query::count_active(&w.state, "t", None, 4).unwrap(), 1);
    assert_eq!(revoked_count(&w.revoke(4, "t", RevokeScope::Tenant, "")), 1);
    assert_eq!(query::count_active(&w.state, "t", None, 5).unwrap(), 0);
    assert_eq!(query::count_active(&w.state, "t2", None, 5).unwrap(), 1);
    assert_eq!(
        query::count_active(&w.state, "t2", Some("a"), 5).unwrap(),
        1
    );
}

#[test]
fn the_per_user_limit_evicts_the_oldest_active_sessions() {
    let mut w = World::new();
    let first = created(&w.create_in(0, "t", "u", None, 2).0)
        .session
        .clone()
        .unwrap();
    let second = created(&w.create_in(1, "t", "u", None, 2).0)
        .session
        .clone()
        .unwrap();
    w.create_in(1, "t", "other", None, 2);
    let (third, _) = w.create_in(2, "t", "u", None, 2);
    assert_eq!(
        created(&third).evicted_session_ids,
        vec![first.session_id.clone()]
    );
    assert_eq!(third.events.len(), 1);
    assert_eq!(
        third.events[0].reason,
        RevocationReason::LimitEvicted as i32
    );
    let evicted = w.session(&first.session_id).unwrap();
    assert_eq!(query::status_at(&evicted, 3), SessionStatus::Revoked);
    assert_eq!(query::count_active(&w.state, "t", Some("u"), 3).unwrap(), 2);
    // A lower limit evicts as many as needed, oldest first.
    let (fourth, _) = w.create_in(3, "t", "u", None, 1);
    assert_eq!(created(&fourth).evicted_session_ids.len(), 2);
    assert_eq!(created(&fourth).evicted_session_ids[0], second.session_id);
    assert_eq!(query::count_active(&w.state, "t", Some("u"), 4).unwrap(), 1);
    assert_eq!(
        query::count_active(&w.state, "t", Some("other"), 4).unwrap(),
        1
    );
}

#[test]
fn a_repeated_request_key_returns_the_first_result_without_applying_again() {
    let mut w = World::new();
    let kind = command::Kind::CreateSession(CreateSession {
        session_id: "sid_1".into(),
        family_id: "fam_1".into(),
        tenant: "t".into(),
        user_id: "u".into(),
        expires_at_ms: HOUR,
        refresh_hash: hash(1),
        sealed_tokens: b"sealed".to_vec(),
        ..Default::default()
    });
    let first = w.run(0, &hash(77), kind.clone());
    assert!(!first.deduplicated);
    let mut retry_kind = kind;
    if let command::Kind::CreateSession(c) = &mut retry_kind {
        c.session_id = "sid_2".into();
        c.refresh_hash = hash(2);
    }
    let retry = w.run(5, &hash(77), retry_kind);
    assert!(retry.deduplicated);
    assert_eq!(retry.kind, first.kind);
    assert_eq!(created(&retry).sealed_tokens, b"sealed");
    assert!(w.session("sid_2").is_none());
    assert_eq!(query::count_active(&w.state, "t", None, 6).unwrap(), 1);
}

#[test]
fn garbage_collection_removes_expired_sessions_with_every_index_entry() {
    let mut w = World::new();
    let (s, first) = w.create(0);
    let (_, second) = w.rotate(1, &first, "");
    let (revoked, _) = w.create(0);
    w.revoke(2, "t", RevokeScope::Session, &revoked.session_id);
    let (kept, _) = w.create(HOUR);
    assert_eq!(
        w.collect(HOUR - 1, 100),
        3,
        "only the three expired access tokens"
    );
    assert!(w.session(&s.session_id).is_some());

    // Both early sessions are idle-expired one hour after their last activity, and the
    // revocation event has passed its one-hour retention.
    assert_eq!(w.collect(HOUR + 2, 100), 3);
    assert!(w.session(&s.session_id).is_none());
    assert!(w.session(&revoked.session_id).is_none());
    assert!(w.session(&kept.session_id).is_some());
    for token in [&first, &second] {
        assert!(query::session_by_refresh_hash(&w.state, "t", token)
            .unwrap()
            .is_none());
        assert!(w.state.get(&keys::refresh(token)).unwrap().is_none());
    }
    assert!(w.state.get(&keys::family(&s.family_id)).unwrap().is_none());
    assert_eq!(
        query::count_active(&w.state, "t", None, HOUR + 2).unwrap(),
        1
    );
    let page = query::list_user_sessions(&w.state, "t", "u", true, HOUR + 2, 10, None).unwrap();
    assert_eq!(page.sessions.len(), 1);

    // Everything left belongs to the live session (or is a counter / retained event).
    w.collect(25 * HOUR, 100);
    w.collect(27 * HOUR, 100);
    let leftovers: Vec<_> = w
        .state
        .entries()
        .keys()
        .filter(|k| !matches!(k[0], b'n' | b'c' | b'C' | b'E' | b'K' | b'T' | b'V'))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
    assert_eq!(
        query::count_active(&w.state, "t", None, 27 * HOUR).unwrap(),
        0
    );
}

#[test]
fn garbage_collection_is_bounded_by_its_limit() {
    let mut w = World::new();
    for _ in 0..5 {
        w.create(0);
    }
    assert_eq!(w.collect(2 * HOUR, 3), 3);
    assert_eq!(
        w.collect(2 * HOUR, 100),
        7,
        "2 sessions and 5 access tokens"
    );
    assert_eq!(w.collect(2 * HOUR, 100), 0);
}

#[test]
fn revocation_events_are_retained_by_revision_then_compacted_with_a_watermark() {
    let mut w = World::new();
    let (s, _) = w.create(0);
    let result = w.revoke(10, "t", RevokeScope::Session, &s.session_id);
    let revision = w.revision;
    assert_eq!(result.events.len(), 1);
    let retained = w
        .state
        .scan_prefix(&keys::events_prefix(), None, 10)
        .unwrap();
    assert_eq!(retained.len(), 1);
    assert_eq!(keys::revision_of_event(&retained[0].0), Some(revision));
    assert_eq!(events::compacted_through(&w.state).unwrap(), 0);
    w.collect(10 + HOUR, 100);
    assert!(w
        .state
        .scan_prefix(&keys::events_prefix(), None, 10)
        .unwrap()
        .is_empty());
    assert_eq!(events::compacted_through(&w.state).unwrap(), revision);
}

#[test]
fn retained_events_are_read_by_revision_range() {
    let mut w = World::new();
    let (a, _) = w.create(0);
    let (b, _) = w.create(0);
    w.revoke(1, "t", RevokeScope::Session, &a.session_id);
    let first = w.revision;
    w.revoke(2, "t", RevokeScope::Session, &b.session_id);
    let second = w.revision;
    let whole = |r| Position::after(r, 0, true);
    let all = events::retained_after(&w.state, whole(0), second, 10).unwrap();
    assert_eq!(
        all.iter()
            .map(|(r, _, e)| (*r, e.session_id.clone()))
            .collect::<Vec<_>>(),
        vec![
            (first, a.session_id.clone()),
            (second, b.session_id.clone())
        ]
    );
    let count = |from, upto, limit| {
        events::retained_after(&w.state, whole(from), upto, limit)
            .unwrap()
            .len()
    };
    assert_eq!(count(first, second, 10), 1);
    assert_eq!(count(0, first, 10), 1);
    assert_eq!(count(0, second, 1), 1);
}

#[test]
fn revoked_sessions_are_listed_until_they_expire() {
    let mut w = World::new();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(w.create(0).0.session_id);
    }
    for id in &ids[1..4] {
        w.revoke(1, "t", RevokeScope::Session, id);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let page = query::revoked_sessions(&w.state, "t", 2, 2, cursor.as_deref()).unwrap();
        seen.extend(page.sessions.into_iter().map(|s| s.session_id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    seen.sort();
    let mut expected = ids[1..4].to_vec();
    expected.sort();
    assert_eq!(seen, expected);
    assert!(query::revoked_sessions(&w.state, "t2", 2, 10, None)
        .unwrap()
        .sessions
        .is_empty());
    let later = query::revoked_sessions(&w.state, "t", 2 * HOUR, 10, None).unwrap();
    assert!(
        later.sessions.is_empty(),
        "expired revoked sessions are not listed"
    );
}

#[test]
fn lists_page_through_a_users_sessions_oldest_first() {
    let mut w = World::new();
    let mut ids = Vec::new();
    for t in 0..7 {
        ids.push(w.create(t).0.session_id);
    }
    w.revoke(10, "t", RevokeScope::Session, &ids[2]);
    let mut seen = Vec::new();
    let mut cursor: Option<Vec<u8>> = None;
    loop {
        let page =
            query::list_user_sessions(&w.state, "t", "u", false, 11, 2, cursor.as_deref()).unwrap();
        assert!(page.sessions.len() <= 2);
        seen.extend(page.sessions.into_iter().map(|s| s.session_id));
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let active: Vec<_> = ids.iter().filter(|id| **id != ids[2]).cloned().collect();
    assert_eq!(seen, active);
    let all = query::list_user_sessions(&w.state, "t", "u", true, 11, 100, None).unwrap();
    assert_eq!(all.sessions.len(), 7);
    assert!(all.next_cursor.is_none());
    let other = query::list_user_sessions(&w.state, "t2", "u", true, 11, 100, None).unwrap();
    assert!(other.sessions.is_empty());
}

#[test]
fn access_tokens_resolve_to_their_session_within_the_tenant_only() {
    let mut w = World::new();
    let refresh = hash(1);
    let access = hash(2);
    w.run(
        0,
        b"",
        command::Kind::CreateSession(CreateSession {
            session_id: "sid_a".into(),
            family_id: "fam_a".into(),
            tenant: "t".into(),
            user_id: "u".into(),
            expires_at_ms: 1_000,
            refresh_hash: refresh,
            access_hash: access.clone(),
            access_expires_at_ms: 5_000,
            ..Default::default()
        }),
    );
    let (token, session) = query::access_token(&w.state, "t", &access)
        .unwrap()
        .unwrap();
    assert_eq!(token.expires_at_ms, 1_000, "capped at the session's expiry");
    assert_eq!(session.unwrap().session_id, "sid_a");
    assert!(query::access_token(&w.state, "t2", &access)
        .unwrap()
        .is_none());
    assert!(query::access_token(&w.state, "t", &hash(3))
        .unwrap()
        .is_none());
}

#[test]
fn the_compact_format_keeps_a_lone_family_in_its_founder_and_no_id_twice() {
    let mut legacy = World::in_format(RecordFormat::Legacy);
    let mut compact = World::in_format(RecordFormat::Compact);
    let (founder, _) = legacy.create(0);
    assert_eq!(compact.create(0).0, founder);
    let tag_count = |w: &World, tag: u8| w.state.entries().keys().filter(|k| k[0] == tag).count();
    for tag in [b'f', b'm'] {
        assert_eq!(tag_count(&legacy, tag), 1);
        assert_eq!(
            tag_count(&compact, tag),
            0,
            "a lone family has no {}",
            tag as char
        );
    }
    let user_entry = |w: &World| {
        let key = keys::user_session("t", "u", 0, &founder.session_id);
        w.state.get(&key).unwrap().unwrap()
    };
    assert_eq!(user_entry(&legacy), founder.session_id.as_bytes());
    assert!(user_entry(&compact).is_empty());
    let record = |w: &World| w.stored_record(&founder.session_id);
    assert_eq!(record(&legacy), founder);
    assert!(record(&compact).session_id.is_empty() && record(&compact).family_id.is_empty());
    assert_eq!(compact.session(&founder.session_id), Some(founder.clone()));

    // A session joins: the family gets its record and the joiner a member entry; the
    // founder stays implicit, and the family outlives it.
    let (joined, _) = compact.create_in(0, "t", "u", Some(&founder.family_id), 0);
    let joiner = created(&joined).session.clone().unwrap();
    assert_eq!(tag_count(&compact, b'f'), 1);
    let members = compact
        .state
        .scan_prefix(&keys::family_members(&founder.family_id), None, 9);
    let members: Vec<_> = members.unwrap().into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        members,
        [keys::family_member(&founder.family_id, &joiner.session_id)]
    );
    compact.revoke(1, "t", RevokeScope::Session, &founder.session_id);
    compact.touch(HOUR - 1, "t", &joiner.session_id);
    compact.collect(HOUR + 1, 100);
    assert!(compact.session(&founder.session_id).is_none());
    assert!(compact.session(&joiner.session_id).is_some());
    let family = sessions::family(&compact.state, &founder.family_id).unwrap();
    assert_eq!(family.map(|f| f.created_seq), Some(founder.created_seq));
}

#[test]
fn compact_rotations_leave_the_retired_token_as_issued_and_keep_the_last_rotation_hidden() {
    let mut compact = World::in_format(RecordFormat::Compact);
    let mut rotations = World::in_format(RecordFormat::CompactRotations);
    let token_record = |w: &World, hash: &[u8]| {
        let bytes = w.state.get(&keys::refresh(hash)).unwrap().unwrap();
        (
            bytes.len(),
            records::decode::<RefreshTokenRecord>(&bytes).unwrap(),
        )
    };
    let (session, first) = rotations.create(0);
    compact.create(0);
    let (issued_len, issued) = token_record(&rotations, &first);
    let (r, second) = rotations.rotate(10, &first, "");
    assert_eq!(r.outcome(), RotateOutcome::Rotated);
    assert!(
        r.session.as_ref().unwrap().last_rotation.is_none(),
        "a result never carries the last rotation"
    );
    compact.rotate(10, &first, "");
    assert_eq!(token_record(&rotations, &first), (issued_len, issued));
    let (marked_len, marked) = token_record(&compact, &first);
    assert!(marked.retired && marked_len > issued_len);
    let stored = |w: &World| w.stored_record(&session.session_id);
    let last = stored(&rotations)
        .last_rotation
        .expect("the last rotation is kept");
    assert_eq!(last.retired_at_ms, 10);
    assert_eq!(
        last.sealed_successor,
        [b"sealed:".as_slice(), &second].concat()
    );
    assert!(stored(&compact).last_rotation.is_none());
    let read = query::session_by_id(&rotations.state, "t", &session.session_id).unwrap();
    assert!(
        read.unwrap().last_rotation.is_none(),
        "readers never see it"
    );
    rotations.touch(20, "t", &session.session_id);
    assert_eq!(
        stored(&rotations).last_rotation,
        Some(last),
        "a write that read the session keeps it"
    );
    let (retry, _) = rotations.rotate(30, &first, "");
    assert!(retry.retried);
    assert_eq!(
        retry.sealed_successor,
        [b"sealed:".as_slice(), &second].concat()
    );
    rotations.rotate(40, &second, "");
    let (replay, _) = rotations.rotate(50, &first, "");
    assert_eq!(replay.outcome(), RotateOutcome::ReplayDetected);
}

// ------------------------------------------------------------------ property tests

/// One step of a random workload over a small pool of sessions and tokens.
#[derive(Debug, Clone)]
enum Step {
    Create {
        user: u8,
        join: Option<u8>,
        limit: u8,
    },
    Rotate {
        token: u8,
        lease: Option<u8>,
        /// A request id (one of two per presented token), so that retries by id happen.
        request: Option<u8>,
    },
    Lease {
        session: u8,
        holder: u8,
    },
    Touch {
        session: u8,
    },
    Revoke {
        scope: u8,
        target: u8,
    },
    Collect,
    Wait {
        ms: u32,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (0..3u8, proptest::option::of(0..8u8), 0..4u8)
            .prop_map(|(user, join, limit)| Step::Create { user, join, limit }),
        4 => (any::<u8>(), proptest::option::of(0..8u8), proptest::option::of(0..2u8))
            .prop_map(|(token, lease, request)| Step::Rotate { token, lease, request }),
        1 => (0..8u8, 0..2u8).prop_map(|(session, holder)| Step::Lease { session, holder }),
        1 => (0..8u8).prop_map(|session| Step::Touch { session }),
        1 => (0..4u8, 0..8u8).prop_map(|(scope, target)| Step::Revoke { scope, target }),
        1 => Just(Step::Collect),
        2 => (0..20_000u32).prop_map(|ms| Step::Wait { ms }),
    ]
}

/// Turns steps into commands, remembering minted ids and tokens so later steps can refer to
/// them (including retired tokens, to exercise retries and replays).
struct Workload {
    now: i64,
    minted: u64,
    sessions: Vec<(String, String)>,
    tokens: Vec<Vec<u8>>,
    leases: Vec<String>,
}

impl Workload {
    fn command(&mut self, step: &Step) -> Option<Command> {
        self.minted += 1;
        let n = self.minted;
        let pick = |v: &Vec<(String, String)>, i: u8| v.get(i as usize % v.len().max(1)).cloned();
        let mut request_key = Vec::new();
        let mut request_time_ms = 0;
        let kind = match step {
            Step::Wait { ms } => {
                self.now += i64::from(*ms);
                return None;
            }
            Step::Create { user, join, limit } => {
                let family = join.and_then(|j| pick(&self.sessions, j)).map(|(_, f)| f);
                let session_id = format!("sid_{n:022}");
                let family_id = family.clone().unwrap_or_else(|| format!("fam_{n:022}"));
                self.sessions.push((session_id.clone(), family_id.clone()));
                self.tokens.push(hash(n));
                command::Kind::CreateSession(CreateSession {
                    session_id,
                    family_id,
                    join_family: family.is_some(),
                    tenant: "t".into(),
                    user_id: format!("user{user}"),
                    expires_at_ms: self.now + 120_000,
                    idle_timeout_ms: 30_000,
                    refresh_hash: hash(n),
                    access_hash: hash(n + (1 << 40)),
                    access_expires_at_ms: self.now + 10_000,
                    max_sessions_per_user: u32::from(*limit),
                    ..Default::default()
                })
            }
            Step::Rotate {
                token,
                lease,
                request,
            } => {
                let presented = self
                    .tokens
                    .get(*token as usize % self.tokens.len().max(1))?
                    .clone();
                if let Some(request) = request {
                    request_key = Sha256::digest([&presented[..], &[*request]].concat()).to_vec();
                    // What a request id tells of its time: the same for every retry.
                    request_time_ms = u64::from(request_key[0]);
                }
                self.tokens.push(hash(n));
                command::Kind::Rotate(Rotate {
                    presented_hash: presented,
                    new_refresh_hash: hash(n),
                    sealed_successor: hash(n),
                    grace_ms: 5_000,
                    lease_id: lease
                        .and_then(|l| self.leases.get(l as usize % self.leases.len().max(1)))
                        .cloned()
                        .unwrap_or_default(),
                    ..Default::default()
                })
            }
            Step::Lease { session, holder } => {
                let (session_id, _) = pick(&self.sessions, *session)?;
                let lease_id = format!("lse_{n:022}");
                self.leases.push(lease_id.clone());
                command::Kind::AcquireLease(AcquireLease {
                    tenant: "t".into(),
                    session_id,
                    holder: format!("holder{holder}"),
                    lease_id,
                    expires_at_ms: self.now + 3_000,
                })
            }
            Step::Touch { session } => command::Kind::Touch(Touch {
                tenant: "t".into(),
                session_id: pick(&self.sessions, *session)?.0,
            }),
            Step::Revoke { scope, target } => {
                let (session_id, family_id) = pick(&self.sessions, *target)?;
                let (scope, id) = match scope {
                    0 => (RevokeScope::Session, session_id),
                    1 => (RevokeScope::Family, family_id),
                    2 => (RevokeScope::User, format!("user{}", target % 3)),
                    _ => (RevokeScope::Tenant, String::new()),
                };
                command::Kind::Revoke(Revoke {
                    tenant: "t".into(),
                    scope: scope as i32,
                    id,
                    reason: RevocationReason::Admin as i32,
                })
            }
            Step::Collect => command::Kind::CollectGarbage(CollectGarbage {
                limit: 4,
                dedup_retention_ms: 1_000,
                event_retention_ms: 50_000,
            }),
        };
        Some(Command {
            schema_version: SCHEMA_VERSION,
            now_ms: self.now,
            request_key,
            request_time_ms,
            kind: Some(kind),
            ..Default::default()
        })
    }
}

fn workload(steps: &[Step]) -> Vec<Command> {
    let mut w = Workload {
        now: 1_000_000,
        minted: 0,
        sessions: Vec::new(),
        tokens: Vec::new(),
        leases: Vec::new(),
    };
    steps.iter().filter_map(|s| w.command(s)).collect()
}

/// Everything the queries say about the sessions, families and tokens `commands` minted, at
/// `now_ms`, as text (equal answers, equal text).
fn answers(state: &MemoryState, commands: &[Command], now_ms: i64) -> Vec<String> {
    let mut seen = Vec::new();
    let mut hashes = Vec::new();
    for command in commands {
        match &command.kind {
            Some(command::Kind::CreateSession(c)) => {
                let family = sessions::family(state, &c.family_id).unwrap();
                let revoked = family
                    .as_ref()
                    .map(|f| sessions::family_revoked(state, f).unwrap());
                seen.push(format!("{family:?} {revoked:?}"));
                let session = query::session_by_id(state, "t", &c.session_id).unwrap();
                seen.push(format!("{session:?}"));
                hashes.push(c.refresh_hash.clone());
                hashes.push(c.access_hash.clone());
            }
            Some(command::Kind::Rotate(c)) => hashes.push(c.new_refresh_hash.clone()),
            _ => {}
        }
    }
    for hash in &hashes {
        let by_refresh = query::session_by_refresh_hash(state, "t", hash).unwrap();
        let by_access = query::access_token(state, "t", hash).unwrap();
        seen.push(format!("{by_refresh:?} {by_access:?}"));
    }
    for user in ["user0", "user1", "user2"] {
        let page = query::list_user_sessions(state, "t", user, true, now_ms, 1000, None).unwrap();
        let active = query::count_active(state, "t", Some(user), now_ms).unwrap();
        let live = sessions::user_live(state, "t", user).unwrap();
        seen.push(format!("{:?} {active} {live}", page.sessions));
    }
    let revoked = query::revoked_sessions(state, "t", now_ms, 1000, None).unwrap();
    let tenant = query::count_active(state, "t", None, now_ms).unwrap();
    seen.push(format!("{:?} {tenant}", revoked.sessions));
    seen
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// The record formats are layouts of one state: the same commands give the same
    /// results, and every query the same answers, in each; a state switched to a newer
    /// format part-way, and once more later (its older records kept), answers as if it had
    /// stayed in its first.
    #[test]
    fn every_record_format_answers_alike(
        steps in proptest::collection::vec(step(), 1..120),
        first in any_format(),
        switches in (0usize..120, 0usize..120, any_format(), any_format()),
    ) {
        let commands = workload(&steps);
        let mut legacy = state_in(RecordFormat::Legacy);
        let mut others: Vec<MemoryState> = [
            RecordFormat::Compact,
            RecordFormat::CompactRotations,
            RecordFormat::ChainedRetirements,
            RecordFormat::TimedRequests,
        ]
        .into_iter()
        .map(state_in)
        .collect();
        others.push(state_in(first));
        let switched = others.len() - 1;
        let (at_a, at_b, to_a, to_b) = switches;
        for (i, command) in commands.iter().enumerate() {
            if i == at_a {
                set_format(&mut others[switched], to_a);
            }
            if i == at_b {
                set_format(&mut others[switched], to_b);
            }
            let revision = i as u64 + 1;
            let expected = apply(command, revision, &mut legacy).unwrap();
            let seen = answers(&legacy, &commands[..=i], command.now_ms);
            for state in &mut others {
                prop_assert_eq!(&apply(command, revision, state).unwrap(), &expected);
                prop_assert_eq!(&answers(state, &commands[..=i], command.now_ms), &seen);
            }
        }
    }

    /// Invariant 1: each refresh token yields at most one successor; grace retries return
    /// that same successor.
    #[test]
    fn a_refresh_token_is_redeemed_at_most_once(
        steps in proptest::collection::vec(step(), 1..120),
        format in any_format(),
    ) {
        let mut state = state_in(format);
        let mut successors: std::collections::BTreeMap<Vec<u8>, Vec<u8>> = Default::default();
        for (i, command) in workload(&steps).iter().enumerate() {
            let result = apply(command, i as u64 + 1, &mut state).unwrap();
            if let (Some(command::Kind::Rotate(c)), Some(command_result::Kind::Rotate(r))) =
                (&command.kind, &result.kind)
            {
                if r.outcome() != RotateOutcome::Rotated {
                    continue;
                }
                let retried = r.retried || result.deduplicated;
                let successor = if retried { r.sealed_successor.clone() } else { c.sealed_successor.clone() };
                match successors.get(&c.presented_hash) {
                    Some(first) => prop_assert_eq!(first, &successor, "token redeemed twice"),
                    None => {
                        prop_assert!(!retried, "a retry before any redemption");
                        successors.insert(c.presented_hash.clone(), successor);
                    }
                }
            }
        }
    }

    /// Invariant 3 (in the state machine): a revoked session is never active again.
    #[test]
    fn a_revoked_session_never_becomes_active_again(
        steps in proptest::collection::vec(step(), 1..120),
        format in any_format(),
    ) {
        let mut state = state_in(format);
        let mut revoked = std::collections::BTreeSet::new();
        for (i, command) in workload(&steps).iter().enumerate() {
            let result = apply(command, i as u64 + 1, &mut state).unwrap();
            revoked.extend(result.events.iter().map(|e| e.session_id.clone()));
            for id in &revoked {
                if let Some(s) = query::session_by_id(&state, "t", id).unwrap() {
                    prop_assert!(s.revoked, "session {} was revoked, now is not", id);
                    prop_assert_eq!(query::status_at(&s, command.now_ms), SessionStatus::Revoked);
                }
            }
        }
    }

    /// Invariant 5: replicas applying the same commands hold byte-identical state, and the
    /// domain never writes the store's reserved key prefix.
    #[test]
    fn replicas_applying_the_same_commands_are_byte_identical(
        steps in proptest::collection::vec(step(), 1..120),
        format in any_format(),
    ) {
        let commands = workload(&steps);
        let mut a = state_in(format);
        let mut b = state_in(format);
        for (i, command) in commands.iter().enumerate() {
            let ra = apply(command, i as u64 + 1, &mut a).unwrap();
            let encoded = prost::Message::encode_to_vec(command);
            let decoded: Command = prost::Message::decode(encoded.as_slice()).unwrap();
            let rb = apply(&decoded, i as u64 + 1, &mut b).unwrap();
            prop_assert_eq!(ra, rb);
        }
        prop_assert_eq!(a.entries(), b.entries());
        prop_assert!(a.entries().keys().all(|k| k.first() != Some(&0)));
    }

    /// Group commit: commands grouped into batches (one log entry, one revision each) give
    /// each command the result it would get alone, leave the same sessions, and retain
    /// every event once, in order.
    #[test]
    fn batched_commands_apply_as_if_one_after_another(
        steps in proptest::collection::vec(step(), 1..120),
        sizes in proptest::collection::vec(1usize..8, 1..40),
        format in any_format(),
    ) {
        // Without request ids: a remembered result holds the revision it was applied at,
        // which batching changes by design (every command of an entry shares its revision).
        let commands: Vec<Command> = workload(&steps)
            .into_iter()
            .map(|command| Command { request_key: Vec::new(), ..command })
            .collect();
        let mut alone = state_in(format);
        let mut batched = state_in(format);
        let mut rest = commands.as_slice();
        let (mut revision, mut alone_revision) = (0, 0);
        for size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (batch, tail) = rest.split_at((*size).min(rest.len()));
            rest = tail;
            revision += 1;
            let mut expected = Vec::new();
            for command in batch {
                alone_revision += 1;
                expected.push(apply(command, alone_revision, &mut alone).unwrap());
            }
            let entry = Command {
                schema_version: SCHEMA_VERSION,
                kind: Some(command::Kind::Batch(CommandBatch { commands: batch.to_vec() })),
                ..Default::default()
            };
            let result = apply(&entry, revision, &mut batched).unwrap();
            let flat: Vec<_> = expected.iter().flat_map(|r| r.events.clone()).collect();
            prop_assert_eq!(&result.events, &flat);
            prop_assert_eq!(result.kind, Some(command_result::Kind::Batch(BatchResult { results: expected })));
        }
        let outside_events = |state: &MemoryState| -> Vec<(Vec<u8>, Vec<u8>)> {
            state
                .entries()
                .iter()
                .filter(|(k, _)| !matches!(k.first(), Some(b'e' | b'E')))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        prop_assert_eq!(outside_events(&alone), outside_events(&batched));
        let events = |state: &MemoryState| -> Vec<Vec<u8>> {
            state
                .scan_prefix(&keys::events_prefix(), None, usize::MAX)
                .unwrap()
                .into_iter()
                .map(|(_, v)| v)
                .collect()
        };
        prop_assert_eq!(events(&alone), events(&batched));
    }
}

#[test]
fn event_pages_resume_inside_a_revision_without_skipping_or_repeating() {
    let mut state = MemoryState::new();
    let event = |n: u64| RevocationEvent {
        session_id: format!("sid_{n}"),
        ..Default::default()
    };
    events::retain(&mut state, 5, 0, &[event(1), event(2), event(3)]);
    events::retain(&mut state, 6, 0, &[event(4)]);
    events::retain(&mut state, 7, 0, &[event(5), event(6)]);
    for page_size in 1..=4 {
        let mut from = Position::default();
        let mut seen = Vec::new();
        loop {
            let page = events::retained_after(&state, from, 10, page_size).unwrap();
            let Some((revision, sequence, _)) = page.last() else {
                break;
            };
            assert!(page.len() <= page_size);
            from = Position::after(*revision, *sequence, false);
            seen.extend(page.into_iter().map(|(r, s, e)| (r, s, e.session_id)));
        }
        let ids: Vec<&str> = seen.iter().map(|(_, _, id)| id.as_str()).collect();
        assert_eq!(ids, ["sid_1", "sid_2", "sid_3", "sid_4", "sid_5", "sid_6"]);
        assert_eq!((seen[2].0, seen[2].1), (5, 2));
    }
    let whole = |r| Position::after(r, 0, true);
    let revisions =
        |page: Vec<events::Retained>| -> Vec<u64> { page.into_iter().map(|(r, _, _)| r).collect() };
    assert_eq!(
        revisions(events::retained_after(&state, whole(5), 10, 10).unwrap()),
        vec![6, 7, 7]
    );
    assert_eq!(
        revisions(events::retained_after(&state, whole(5), 6, 10).unwrap()),
        vec![6]
    );
    assert!(events::retained_after(&state, whole(7), 10, 2)
        .unwrap()
        .is_empty());
    assert!(!whole(5).owes(5, 2) && Position::after(5, 1, false).owes(5, 2));
}

/// The entries that differ between two states (added, changed or removed keys).
fn changed_keys(
    before: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    after: &std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
) -> usize {
    let keys: std::collections::BTreeSet<&Vec<u8>> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter(|k| before.get(*k) != after.get(*k))
        .count()
}

/// Every session of a tenant in ListRevoked, page by page.
fn all_revoked(w: &World, tenant: &str, now: i64) -> Vec<SessionRecord> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = query::revoked_sessions(&w.state, tenant, now, 500, cursor.as_deref()).unwrap();
        out.extend(page.sessions);
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => return out,
        }
    }
}

#[test]
fn a_user_or_tenant_revocation_writes_a_few_keys_and_one_event_whatever_its_size() {
    const MANY: usize = 3_000;
    let mut w = World::new();
    let mut tokens = Vec::new();
    for _ in 0..MANY {
        let (r, refresh) = w.create_in(0, "t", "u", None, 0);
        tokens.push((created(&r).session.clone().unwrap(), refresh));
    }
    let (other, _) = w.create_in(0, "t", "v", None, 0);
    let other = created(&other).session.clone().unwrap();
    w.create_in(0, "t2", "u", None, 0);

    let before = w.data();
    let result = w.revoke(1, "t", RevokeScope::User, "u");
    assert_eq!(revoked_count(&result), MANY as u64);
    assert!(
        changed_keys(&before, &w.data()) <= 4,
        "a user revocation wrote {} keys",
        changed_keys(&before, &w.data())
    );
    assert_eq!(result.events.len(), 1, "one scoped event");
    let event = &result.events[0];
    assert_eq!(
        (event.scope(), event.tenant.as_str(), event.user_id.as_str()),
        (RevokeScope::User, "t", "u")
    );
    assert!(event.session_id.is_empty() && event.family_id.is_empty());

    // Every read and every command honours the watermark.
    let (first, first_token) = tokens[0].clone();
    let (last, last_token) = tokens[MANY - 1].clone();
    for s in [&first, &last] {
        let read = w.session(&s.session_id).unwrap();
        assert_eq!(query::status_at(&read, 2), SessionStatus::Revoked);
        assert_eq!(read.revoked_at_ms, 1);
        assert_eq!(read.revocation_reason(), RevocationReason::Logout);
    }
    let (found, _) = query::session_by_refresh_hash(&w.state, "t", &last_token)
        .unwrap()
        .unwrap();
    assert!(found.revoked);
    assert_eq!(
        w.rotate(2, &first_token, "").0.outcome(),
        RotateOutcome::Revoked
    );
    assert_eq!(w.touch(2, "t", &last.session_id), TouchOutcome::Revoked);
    assert_eq!(
        w.lease(2, &last.session_id, "h").outcome(),
        LeaseOutcome::Revoked
    );
    let active = query::list_user_sessions(&w.state, "t", "u", false, 2, 10, None).unwrap();
    assert!(active.sessions.is_empty());
    assert_eq!(query::count_active(&w.state, "t", Some("u"), 2).unwrap(), 0);
    assert_eq!(query::count_active(&w.state, "t", None, 2).unwrap(), 1);
    assert_eq!(query::count_active(&w.state, "t2", None, 2).unwrap(), 1);
    assert_eq!(all_revoked(&w, "t", 2).len(), MANY);
    let joined = w.create_in(3, "t", "u", Some(&first.family_id), 0).0;
    assert_eq!(
        created(&joined).outcome(),
        CreateSessionOutcome::FamilyRevoked
    );
    // Revoking again, or one of the covered sessions, changes nothing.
    assert_eq!(
        revoked_count(&w.revoke(3, "t", RevokeScope::Session, &last.session_id)),
        0
    );
    assert_eq!(revoked_count(&w.revoke(3, "t", RevokeScope::User, "u")), 0);

    // A session created after the revocation is not covered.
    let (late, late_token) = w.create_in(4, "t", "u", None, 0);
    let late = created(&late).session.clone().unwrap();
    assert_eq!(
        query::status_at(&w.session(&late.session_id).unwrap(), 5),
        SessionStatus::Active
    );
    assert_eq!(
        w.rotate(5, &late_token, "").0.outcome(),
        RotateOutcome::Rotated
    );
    assert_eq!(query::count_active(&w.state, "t", Some("u"), 5).unwrap(), 1);

    // The tenant: every session created so far (u's late one, v's), one event, O(1).
    let before = w.data();
    let result = w.revoke(6, "t", RevokeScope::Tenant, "");
    assert_eq!(revoked_count(&result), 2);
    assert!(changed_keys(&before, &w.data()) <= 4);
    assert_eq!(result.events.len(), 1);
    assert_eq!(result.events[0].scope(), RevokeScope::Tenant);
    for id in [&late.session_id, &other.session_id] {
        assert!(w.session(id).unwrap().revoked);
    }
    assert_eq!(query::count_active(&w.state, "t", None, 7).unwrap(), 0);
    assert_eq!(query::count_active(&w.state, "t", Some("v"), 7).unwrap(), 0);
    assert_eq!(query::count_active(&w.state, "t2", None, 7).unwrap(), 1);
    let (after, _) = w.create_in(8, "t", "v", None, 0);
    let after = created(&after).session.clone().unwrap();
    assert!(!w.session(&after.session_id).unwrap().revoked);
    assert_eq!(query::count_active(&w.state, "t", None, 9).unwrap(), 1);

    // Collection of the covered sessions keeps the counters right.
    while w.collect(25 * HOUR, 1_000) > 0 {}
    assert!(w.session(&first.session_id).is_none());
    assert_eq!(
        query::count_active(&w.state, "t", None, 25 * HOUR).unwrap(),
        0
    );
    let (fresh, _) = w.create_in(25 * HOUR, "t", "u", None, 0);
    assert!(!created(&fresh).session.as_ref().unwrap().revoked);
    assert_eq!(
        query::count_active(&w.state, "t", None, 25 * HOUR).unwrap(),
        1
    );
}

/// A state that counts the index rows read by scans.
struct CountingScans<'a> {
    inner: &'a mut MemoryState,
    rows: std::cell::Cell<usize>,
}

impl StateRead for CountingScans<'_> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.inner.get(key)
    }

    fn scan_prefix(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<StateEntry>, StateError> {
        let rows = self.inner.scan_prefix(prefix, start_after, limit)?;
        self.rows.set(self.rows.get() + rows.len());
        Ok(rows)
    }
}

impl StateWrite for CountingScans<'_> {
    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.inner.put(key, value);
    }

    fn delete(&mut self, key: &[u8]) {
        self.inner.delete(key);
    }
}

#[test]
fn the_session_limit_reads_a_bounded_part_of_the_users_index() {
    let mut w = World::new();
    // A user with many revoked sessions still in the index (not yet expired).
    for _ in 0..3_000 {
        let (r, _) = w.create_in(0, "t", "u", None, 0);
        let id = created(&r).session.clone().unwrap().session_id;
        w.revoke(0, "t", RevokeScope::Session, &id);
    }
    w.create_in(0, "t", "u", None, 0);
    let command = Command {
        schema_version: SCHEMA_VERSION,
        now_ms: 1,
        request_key: Vec::new(),
        request_fingerprint: Vec::new(),
        request_time_ms: 0,
        kind: Some(command::Kind::CreateSession(CreateSession {
            session_id: format!("sid_{:022}", 999_999),
            family_id: format!("fam_{:022}", 999_999),
            tenant: "t".into(),
            user_id: "u".into(),
            expires_at_ms: HOUR,
            refresh_hash: hash(999_999),
            max_sessions_per_user: 5,
            ..Default::default()
        })),
    };
    let mut counting = CountingScans {
        inner: &mut w.state,
        rows: Default::default(),
    };
    let result = apply(&command, 999_999, &mut counting).unwrap();
    assert_eq!(created(&result).outcome(), CreateSessionOutcome::Created);
    assert!(created(&result).evicted_session_ids.is_empty());
    let rows = counting.rows.get();
    assert!(
        rows < 100,
        "a create under the limit scanned {rows} index rows"
    );
}

#[test]
fn time_never_goes_back_and_deadlines_move_with_it() {
    let mut w = World::new();
    w.create_in(10 * HOUR, "t", "u", None, 0);
    // Stamped earlier than the last applied command (a leader whose clock is behind).
    let (r, _) = w.create_in(HOUR, "t", "u", None, 0);
    let r = created(&r);
    let s = r.session.clone().unwrap();
    assert_eq!(s.created_at_ms, 10 * HOUR);
    assert_eq!(
        s.expires_at_ms,
        10 * HOUR + 24 * HOUR,
        "the lifetime is kept"
    );
    assert_eq!(r.access_expires_at_ms, 10 * HOUR + 15 * 60_000);
    let revoked = w.revoke(HOUR, "t", RevokeScope::Session, &s.session_id);
    assert_eq!(revoked.events[0].revoked_at_ms, 10 * HOUR);
    assert_eq!(time::applied(&w.state).unwrap(), 10 * HOUR);
}

#[test]
fn commands_this_binary_does_not_understand_stop_apply() {
    let mut state = MemoryState::new();
    let unknown_kind = Command {
        schema_version: SCHEMA_VERSION,
        now_ms: 1,
        request_key: Vec::new(),
        request_fingerprint: Vec::new(),
        request_time_ms: 0,
        kind: None,
    };
    let newer = Command {
        schema_version: SCHEMA_VERSION + 1,
        kind: Some(command::Kind::Touch(Touch::default())),
        ..unknown_kind.clone()
    };
    let batch = Command {
        kind: Some(command::Kind::Batch(crate::proto::internal::CommandBatch {
            commands: vec![
                Command {
                    kind: Some(command::Kind::Touch(Touch::default())),
                    ..unknown_kind.clone()
                },
                unknown_kind.clone(),
            ],
        })),
        ..unknown_kind.clone()
    };
    for command in [unknown_kind, newer, batch] {
        assert!(matches!(
            apply(&command, 1, &mut state),
            Err(StateError::Unsupported(_))
        ));
        assert!(state.entries().is_empty(), "nothing was written");
    }
}

#[test]
fn a_token_read_before_its_rotation_is_reported_retired_when_the_session_moved_on() {
    let mut w = World::new();
    let (_, first) = w.create(0);
    let token_before = w.state.get(&keys::refresh(&first)).unwrap().unwrap();
    w.rotate(1, &first, "");
    // What a reader sees if it read the token record before the rotation's batch and the
    // session after it.
    w.state.put(keys::refresh(&first), token_before);
    let (session, retired) = query::session_by_refresh_hash(&w.state, "t", &first)
        .unwrap()
        .unwrap();
    assert_eq!(session.generation, 1);
    assert!(retired);
}

/// The state bytes (keys and values, idempotency records and events aside) each rotation of
/// one session adds in `format`, with a seal the size of a real one without access token.
fn bytes_per_rotation(format: RecordFormat) -> usize {
    let mut w = World::in_format(format);
    let (_, mut token) = w.create(0);
    let bytes = |w: &World| {
        w.data()
            .iter()
            .filter(|(k, _)| !matches!(k.first(), Some(b'd' | b'D' | b'e' | b'E')))
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()
    };
    let before = bytes(&w);
    for i in 0..20 {
        let successor = w.mint();
        let kind = command::Kind::Rotate(Rotate {
            presented_hash: token.clone(),
            new_refresh_hash: successor.clone(),
            sealed_successor: vec![7; 104],
            grace_ms: GRACE,
            ..Default::default()
        });
        w.run(10 + i, b"", kind);
        token = successor;
    }
    (bytes(&w) - before) / 20
}

#[test]
fn compact_rotations_keep_half_the_bytes_per_rotation() {
    let compact = bytes_per_rotation(RecordFormat::Compact);
    let rotations = bytes_per_rotation(RecordFormat::CompactRotations);
    assert!(
        rotations * 2 <= compact + 10,
        "format 3 keeps {rotations} bytes per rotation, format 2 {compact}"
    );
    let chained = bytes_per_rotation(RecordFormat::ChainedRetirements);
    assert!(
        chained < rotations,
        "format 4 keeps {chained} bytes per rotation, format 3 {rotations}"
    );
}

/// The keys a rotation of one session adds in `format`.
fn keys_written_per_rotation(format: RecordFormat) -> usize {
    let mut w = World::in_format(format);
    let (_, first) = w.create(0);
    let before = w.data().len();
    w.rotate(10, &first, "");
    w.data().len() - before
}

#[test]
fn chained_retirements_write_one_key_less_per_rotation_and_remove_the_whole_chain() {
    assert_eq!(
        keys_written_per_rotation(RecordFormat::ChainedRetirements) + 1,
        keys_written_per_rotation(RecordFormat::CompactRotations)
    );
    // A session rotated in format 3, then in format 4 after a switch: its token records are
    // found through the retired-token index and through the chain, and all of them go
    // with the session.
    let mut w = World::in_format(RecordFormat::CompactRotations);
    let (session, first) = w.create(0);
    let mut tokens = vec![first];
    for i in 0..3 {
        let (_, next) = w.rotate(1 + i, tokens.last().unwrap(), "");
        tokens.push(next);
    }
    set_format(&mut w.state, RecordFormat::ChainedRetirements);
    for i in 0..3 {
        let (_, next) = w.rotate(10 + i, tokens.last().unwrap(), "");
        tokens.push(next);
    }
    let (other, other_token) = w.create(20);
    let chained = w
        .state
        .get(&keys::refresh(tokens.last().unwrap()))
        .unwrap()
        .map(|bytes| records::decode::<RefreshTokenRecord>(&bytes).unwrap())
        .unwrap();
    assert_eq!(chained.predecessor_hash, tokens[tokens.len() - 2]);
    for token in &tokens {
        assert!(w.state.get(&keys::refresh(token)).unwrap().is_some());
    }

    let removed = sessions::load(&w.state, session.session_id.as_bytes())
        .unwrap()
        .unwrap();
    let mut unbounded = usize::MAX;
    assert!(sessions::remove(&mut w.state, &removed, &mut unbounded).unwrap());
    for token in &tokens {
        assert!(
            w.state.get(&keys::refresh(token)).unwrap().is_none(),
            "a token record outlived its session"
        );
    }
    assert_only_the_other_is_left(&w, &session, &other, &other_token);
}

/// No retired-token entry of `removed` is left, and `other` keeps its record and token.
fn assert_only_the_other_is_left(
    w: &World,
    removed: &SessionRecord,
    other: &SessionRecord,
    other_token: &[u8],
) {
    assert!(w
        .state
        .scan_prefix(&keys::retired_of(&removed.session_id), None, 10)
        .unwrap()
        .is_empty());
    assert!(w.session(&other.session_id).is_some());
    assert!(w.state.get(&keys::refresh(other_token)).unwrap().is_some());
}

#[test]
fn a_session_rotated_many_times_is_collected_over_several_bounded_commands() {
    for format in [
        RecordFormat::CompactRotations,
        RecordFormat::ChainedRetirements,
    ] {
        let mut w = World::in_format(format);
        let (session, first) = w.create(0);
        let mut tokens = vec![first];
        for i in 0..20 {
            let (_, next) = w.rotate(1 + i, tokens.last().unwrap(), "");
            tokens.push(next);
        }
        let (other, other_token) = w.create(HOUR);
        let after_idle_expiry = HOUR + HOUR / 2;
        let left = |w: &World| {
            tokens
                .iter()
                .filter(|t| w.state.get(&keys::refresh(t)).unwrap().is_some())
                .count()
        };
        // One session per command: 8 token records each, so 21 take three commands.
        for expected_left in [13, 5] {
            let r = w.collect_result(after_idle_expiry, 1);
            assert!(r.more, "{format:?}: a bounded command says it left work");
            assert_eq!(left(&w), expected_left, "{format:?}");
            assert!(w.session(&session.session_id).is_some());
        }
        let r = w.collect_result(after_idle_expiry, 1);
        assert!(!r.more, "{format:?}");
        assert_eq!(
            left(&w),
            0,
            "{format:?}: a token record outlived its session"
        );
        assert!(w.session(&session.session_id).is_none());
        assert_only_the_other_is_left(&w, &session, &other, &other_token);
    }
}
