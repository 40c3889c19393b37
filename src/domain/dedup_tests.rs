//! Tests of idempotent retries: the first result (revision included) for the same request
//! key and fingerprint, nothing for another fingerprint, rotations retried however late, and
//! records keyed by the request's time (record format 5), a switch to them included.

use super::*;
use crate::domain::format::RecordFormat;
use crate::proto::internal::{
    CollectGarbage, CreateSession, FamilyRecord, Revoke, Rotate, RotateResult, SessionRecord,
    SetRecordFormat,
};
use crate::proto::v1::{RevocationReason, RevokeScope, RotateOutcome};

const KEY: &[u8] = b"a scoped request key";

/// A state and the next revision, applying commands as the Raft layer would.
struct World {
    state: MemoryState,
    revision: u64,
}

impl World {
    fn new() -> Self {
        World {
            state: MemoryState::new(),
            revision: 0,
        }
    }

    fn run(
        &mut self,
        now_ms: i64,
        key: &[u8],
        fingerprint: &[u8],
        kind: command::Kind,
    ) -> CommandResult {
        self.run_timed(now_ms, key, 0, fingerprint, kind)
    }

    /// [`World::run`] for a request whose id tells its time, `time_ms`.
    fn run_timed(
        &mut self,
        now_ms: i64,
        key: &[u8],
        time_ms: u64,
        fingerprint: &[u8],
        kind: command::Kind,
    ) -> CommandResult {
        self.revision += 1;
        let command = Command {
            schema_version: SCHEMA_VERSION,
            now_ms,
            request_key: key.to_vec(),
            request_fingerprint: fingerprint.to_vec(),
            request_time_ms: time_ms,
            kind: Some(kind),
        };
        apply(&command, self.revision, &mut self.state).expect("apply")
    }

    fn create(&mut self, key: &[u8]) -> CommandResult {
        self.run(
            1_000,
            key,
            b"create",
            command::Kind::CreateSession(CreateSession {
                session_id: "sid_1".into(),
                family_id: "fam_1".into(),
                tenant: "t".into(),
                user_id: "u".into(),
                expires_at_ms: 10_000_000,
                refresh_hash: b"refresh-0".to_vec(),
                sealed_tokens: b"sealed create".to_vec(),
                ..Default::default()
            }),
        )
    }

    /// Rotates `presented` to a successor named after `n`, with a 1 ms grace window.
    fn rotate(&mut self, now_ms: i64, key: &[u8], presented: &[u8], n: u32) -> CommandResult {
        self.run(
            now_ms,
            key,
            b"rotate",
            command::Kind::Rotate(Rotate {
                presented_hash: presented.to_vec(),
                new_refresh_hash: format!("refresh-{n}").into_bytes(),
                sealed_successor: format!("sealed successor {n}").into_bytes(),
                grace_ms: 1,
                ..Default::default()
            }),
        )
    }

    fn revoke(
        &mut self,
        key: &[u8],
        fingerprint: &[u8],
        scope: RevokeScope,
        id: &str,
    ) -> CommandResult {
        self.run(
            2_000,
            key,
            fingerprint,
            command::Kind::Revoke(Revoke {
                tenant: "t".into(),
                scope: scope as i32,
                id: id.into(),
                reason: RevocationReason::Logout as i32,
            }),
        )
    }

    fn session(&self) -> SessionRecord {
        records::load(&self.state, &keys::session("sid_1"))
            .unwrap()
            .unwrap()
    }

    fn family_revoked(&self) -> bool {
        records::load::<FamilyRecord>(&self.state, &keys::family("fam_1"))
            .unwrap()
            .unwrap()
            .revoked
    }
}

fn rotated(result: &CommandResult) -> &RotateResult {
    match &result.kind {
        Some(command_result::Kind::Rotate(r)) => r,
        other => panic!("not a rotate result: {other:?}"),
    }
}

#[test]
fn a_rotation_retried_by_request_id_long_after_the_grace_window_gets_the_first_successor() {
    let mut w = World::new();
    w.create(b"");
    let first = w.rotate(1_000, KEY, b"refresh-0", 1);
    assert_eq!(rotated(&first).outcome(), RotateOutcome::Rotated);
    let first_revision = w.revision;
    let state_before = w.state.clone();

    // The caller timed out; its retry comes ten minutes later, far outside the 1 ms grace.
    let retry = w.rotate(601_000, KEY, b"refresh-0", 2);
    let r = rotated(&retry);
    assert!(retry.deduplicated);
    assert_eq!(retry.first_revision, first_revision);
    assert_eq!(r.outcome(), RotateOutcome::Rotated, "not REPLAY_DETECTED");
    assert!(
        !r.retried,
        "the first answer, as given (the API marks a deduplicated answer as a retry)"
    );
    assert_eq!(
        r.sealed_successor, b"sealed successor 1",
        "the first successor"
    );
    assert!(retry.events.is_empty());
    assert_eq!(w.state, state_before, "the retry changed nothing");
    assert!(!w.session().revoked && !w.family_revoked());
    assert_eq!(w.session().current_refresh_hash, b"refresh-1");

    // Without the request id the same late retry is a replay.
    let replay = w.rotate(601_000, b"", b"refresh-0", 3);
    assert_eq!(rotated(&replay).outcome(), RotateOutcome::ReplayDetected);
}

#[test]
fn a_retry_after_the_successor_was_redeemed_is_decided_anew_as_a_replay() {
    let mut w = World::new();
    w.create(b"");
    w.rotate(1_000, KEY, b"refresh-0", 1);
    w.rotate(2_000, b"", b"refresh-1", 2);
    let late = w.rotate(60_000, KEY, b"refresh-0", 3);
    assert!(!late.deduplicated);
    assert_eq!(rotated(&late).outcome(), RotateOutcome::ReplayDetected);
    assert!(
        rotated(&late).sealed_successor.is_empty(),
        "no successor handed out"
    );
    assert!(w.family_revoked());
}

#[test]
fn a_reused_key_with_other_parameters_changes_nothing_and_is_flagged() {
    let mut w = World::new();
    w.create(b"");
    let first = w.revoke(KEY, b"revoke family", RevokeScope::Family, "fam_other");
    assert!(!first.deduplicated && !first.request_mismatch);
    let state_before = w.state.clone();
    let reuse = w.revoke(KEY, b"revoke session", RevokeScope::Session, "sid_1");
    assert!(reuse.request_mismatch);
    assert!(reuse.kind.is_none() && reuse.events.is_empty());
    assert_eq!(w.state, state_before);
    assert!(!w.session().revoked);
}

#[test]
fn a_retry_returns_the_first_revision_and_the_session_as_it_is_now() {
    let mut w = World::new();
    let first = w.create(KEY);
    let first_revision = w.revision;
    assert_eq!(first.first_revision, 0, "set on retries only");
    w.revoke(b"", b"", RevokeScope::Session, "sid_1");
    let retry = w.create(KEY);
    assert!(retry.deduplicated);
    assert_eq!(retry.first_revision, first_revision);
    let Some(command_result::Kind::CreateSession(r)) = &retry.kind else {
        panic!("not a create result");
    };
    assert_eq!(r.sealed_tokens, b"sealed create");
    assert!(
        r.session.as_ref().unwrap().revoked,
        "a session revoked since is not shown as it was created"
    );
}

fn created(result: &CommandResult) -> &crate::proto::internal::CreateSessionResult {
    match &result.kind {
        Some(command_result::Kind::CreateSession(r)) => r,
        other => panic!("not a create result: {other:?}"),
    }
}

impl World {
    fn dedup_record(&self, key: &[u8]) -> DedupRecord {
        records::load(&self.state, &keys::dedup(key))
            .unwrap()
            .unwrap()
    }
}

#[test]
fn a_create_is_remembered_by_its_session_id_and_retried_with_the_whole_first_answer() {
    let mut w = World::new();
    let first = w.create(KEY);
    let first_revision = w.revision;
    let record = w.dedup_record(KEY);
    let Some(command_result::Kind::CreateSession(kept)) = &record.result.as_ref().unwrap().kind
    else {
        panic!("not a create record");
    };
    assert_eq!(
        kept.session,
        Some(SessionRecord {
            session_id: "sid_1".into(),
            ..Default::default()
        }),
        "no session copy in the record"
    );
    assert_eq!(kept.sealed_tokens, b"sealed create");

    let retry = w.create(KEY);
    assert!(retry.deduplicated && !retry.request_mismatch);
    assert_eq!(retry.first_revision, first_revision);
    assert_eq!(
        created(&retry),
        created(&first),
        "the first answer, rebuilt"
    );
    assert_eq!(created(&retry).session.as_ref(), Some(&w.session()));
    let other = CreateSession {
        session_id: "sid_2".into(),
        ..Default::default()
    };
    let mismatch = w.run(1_000, KEY, b"other", command::Kind::CreateSession(other));
    assert!(mismatch.request_mismatch && mismatch.kind.is_none());
}

#[test]
fn a_record_holding_a_whole_session_copy_is_still_answered() {
    let mut w = World::new();
    let first = w.create(KEY);
    let mut record = w.dedup_record(KEY);
    record.result = Some(CommandResult {
        events: Vec::new(),
        ..first.clone()
    });
    records::store(&mut w.state, keys::dedup(KEY), &record);
    w.revoke(b"", b"", RevokeScope::Session, "sid_1");

    let retry = w.create(KEY);
    assert!(retry.deduplicated);
    assert_eq!(retry.first_revision, record.revision);
    let answered = created(&retry);
    assert_eq!(answered.sealed_tokens, created(&first).sealed_tokens);
    assert_eq!(answered.session.as_ref(), Some(&w.session()));
    assert!(answered.session.as_ref().unwrap().revoked, "as it is now");
}

#[test]
fn a_retry_after_the_session_was_collected_shows_it_by_id_as_expired() {
    let mut w = World::new();
    w.create(KEY);
    w.state.delete(&keys::session("sid_1"));
    let retry = w.create(KEY);
    let session = created(&retry).session.clone().unwrap();
    assert_eq!(session.session_id, "sid_1");
    assert_eq!(
        query::status_at(&session, 1_000),
        crate::proto::v1::SessionStatus::Expired
    );
    assert_eq!(created(&retry).sealed_tokens, b"sealed create");
}

#[test]
fn a_rotation_is_remembered_without_its_session() {
    let mut w = World::new();
    w.create(b"");
    w.rotate(1_000, KEY, b"refresh-0", 1);
    let Some(command_result::Kind::Rotate(kept)) = &w.dedup_record(KEY).result.unwrap().kind else {
        panic!("not a rotate record");
    };
    assert_eq!(kept.outcome(), RotateOutcome::Rotated);
    assert!(kept.session.is_none());
    let retry = w.rotate(2_000, KEY, b"refresh-0", 2);
    assert_eq!(rotated(&retry).session.as_ref(), Some(&w.session()));
}

// Record format 5: dedup records keyed by the request's time first (see `super::dedup`).

const RETENTION_MS: i64 = 60_000;

impl World {
    fn in_format(format: RecordFormat) -> Self {
        let mut world = World::new();
        world.set_format(format, 0);
        world
    }

    fn set_format(&mut self, format: RecordFormat, now_ms: i64) {
        let kind = command::Kind::SetRecordFormat(SetRecordFormat {
            format: format.number(),
        });
        self.run(now_ms, b"", b"", kind);
    }

    /// Creates session `n` by a request with `key`, made at `time_ms`, applied at `now_ms`.
    fn create_timed(&mut self, n: u32, key: &[u8], time_ms: u64, now_ms: i64) -> CommandResult {
        let kind = command::Kind::CreateSession(CreateSession {
            session_id: format!("sid_{n}"),
            family_id: format!("fam_{n}"),
            tenant: "t".into(),
            user_id: format!("u{n}"),
            expires_at_ms: 100_000_000,
            refresh_hash: format!("refresh-{n}").into_bytes(),
            ..Default::default()
        });
        self.run_timed(now_ms, key, time_ms, b"create", kind)
    }

    fn collect(&mut self, now_ms: i64, limit: u32) {
        let kind = command::Kind::CollectGarbage(CollectGarbage {
            limit,
            dedup_retention_ms: RETENTION_MS,
            event_retention_ms: 0,
        });
        self.run(now_ms, b"", b"", kind);
    }

    /// The revisions of the dedup records, in key order.
    fn record_revisions(&self) -> Vec<u64> {
        self.state
            .entries()
            .iter()
            .filter(|(key, _)| key.starts_with(&keys::dedup(&[])))
            .map(|(_, value)| records::decode::<DedupRecord>(value).unwrap().revision)
            .collect()
    }

    fn untimed_until(&self) -> Option<i64> {
        dedup::untimed_until(&self.state).unwrap()
    }
}

fn key(byte: u8) -> [u8; 32] {
    [byte; 32]
}

#[test]
fn timed_keys_keep_records_in_request_time_order_and_retries_find_them() {
    let mut w = World::in_format(RecordFormat::TimedRequests);
    let late = w.create_timed(1, &key(1), 3_000, 10_000);
    let early = w.create_timed(2, &key(9), 2_000, 10_001);
    let middle = w.create_timed(3, &key(5), 2_500, 10_002);
    assert!(!late.deduplicated && !early.deduplicated && !middle.deduplicated);
    assert_eq!(
        w.record_revisions(),
        vec![3, 4, 2],
        "records in request time order"
    );
    let retry = w.create_timed(2, &key(9), 2_000, 10_003);
    assert!(retry.deduplicated);
    assert_eq!(retry.first_revision, 3);
    assert_eq!(w.untimed_until(), None);
}

#[test]
fn a_retry_across_the_switch_to_timed_keys_gets_the_first_result() {
    let mut w = World::in_format(RecordFormat::ChainedRetirements);
    assert!(!w.create_timed(1, &key(1), 900, 1_000).deduplicated);
    w.set_format(RecordFormat::TimedRequests, 2_000);
    assert_eq!(w.untimed_until(), Some(2_000));

    let retry = w.create_timed(1, &key(1), 900, 3_000);
    assert!(
        retry.deduplicated,
        "a retry across the switch must not apply twice"
    );
    assert_eq!(retry.first_revision, 2);
    w.create_timed(2, &key(2), 2_900, 3_000);

    w.collect(1_000 + RETENTION_MS, 10);
    assert_eq!(w.record_revisions().len(), 1, "the untimed record expired");
    assert_eq!(w.untimed_until(), None);
    let retry = w.create_timed(2, &key(2), 2_900, 1_000 + RETENTION_MS);
    assert!(retry.deduplicated, "the timed record outlives the marker");
}

#[test]
fn the_marker_stays_while_an_untimed_record_remains() {
    let mut w = World::in_format(RecordFormat::ChainedRetirements);
    w.create_timed(1, &key(1), 0, 1_000);
    w.create_timed(2, &key(2), 0, 1_100);
    w.set_format(RecordFormat::TimedRequests, 1_200);
    w.collect(1_100 + RETENTION_MS, 1);
    assert_eq!(w.untimed_until(), Some(1_200));
    assert!(
        w.create_timed(2, &key(2), 0, 1_100 + RETENTION_MS)
            .deduplicated
    );
    w.collect(1_100 + RETENTION_MS, 1);
    assert_eq!(w.untimed_until(), None);
}

#[test]
fn a_state_without_dedup_records_switches_without_a_marker() {
    let mut w = World::in_format(RecordFormat::ChainedRetirements);
    w.set_format(RecordFormat::TimedRequests, 5_000);
    assert_eq!(w.untimed_until(), None);
}
