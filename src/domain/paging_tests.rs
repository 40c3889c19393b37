//! Pages are bounded by the rows they scan, not only by the rows they return: a user or
//! tenant whose index is mostly filtered out is listed over several short pages.

use super::query::{self, MAX_ROWS_SCANNED_PER_PAGE};
use super::*;
use crate::proto::internal::{CreateSession, Revoke};
use crate::proto::v1::{RevocationReason, RevokeScope};

const NOW: i64 = 1_000;
/// More sessions than one page may scan.
const MANY: usize = MAX_ROWS_SCANNED_PER_PAGE + 500;

fn run(state: &mut MemoryState, revision: &mut u64, kind: command::Kind) {
    *revision += 1;
    let command = Command {
        now_ms: NOW,
        kind: Some(kind),
        ..Default::default()
    };
    apply(&command, *revision, state).expect("apply");
}

fn create(state: &mut MemoryState, revision: &mut u64, user: &str, n: usize) {
    run(
        state,
        revision,
        command::Kind::CreateSession(CreateSession {
            session_id: format!("sid_{user}_{n:08}"),
            family_id: format!("fam_{user}_{n:08}"),
            tenant: "t".into(),
            user_id: user.into(),
            expires_at_ms: NOW + 1_000_000,
            refresh_hash: format!("{user}-{n}").into_bytes(),
            ..Default::default()
        }),
    );
}

fn revoke(state: &mut MemoryState, revision: &mut u64, scope: RevokeScope, id: &str) {
    run(
        state,
        revision,
        command::Kind::Revoke(Revoke {
            tenant: "t".into(),
            scope: scope as i32,
            id: id.into(),
            reason: RevocationReason::Logout as i32,
        }),
    );
}

/// Every page of a listing, following cursors: (sessions found, pages read).
fn all_pages(mut page: impl FnMut(Option<&[u8]>) -> query::SessionPage) -> (usize, usize) {
    let (mut found, mut pages, mut cursor) = (0, 0, None::<Vec<u8>>);
    loop {
        let p = page(cursor.as_deref());
        pages += 1;
        found += p.sessions.len();
        match p.next_cursor {
            Some(next) => cursor = Some(next),
            None => return (found, pages),
        }
        assert!(pages < 100, "paging does not end");
    }
}

#[test]
fn listing_active_sessions_among_many_inactive_ones_scans_a_bounded_number_of_rows() {
    let (mut state, mut revision) = (MemoryState::new(), 0);
    for n in 0..MANY {
        create(&mut state, &mut revision, "a", n);
    }
    revoke(&mut state, &mut revision, RevokeScope::User, "a");
    create(&mut state, &mut revision, "a", MANY);

    let first = query::list_user_sessions(&state, "t", "a", false, NOW, 100, None).unwrap();
    assert!(
        first.sessions.is_empty(),
        "the first scan limit is all revoked"
    );
    assert!(
        first.next_cursor.is_some(),
        "a short page still says where to go on"
    );
    let (found, pages) = all_pages(|cursor| {
        query::list_user_sessions(&state, "t", "a", false, NOW, 100, cursor).unwrap()
    });
    assert_eq!((found, pages), (1, 2));
    let (all, _) = all_pages(|cursor| {
        query::list_user_sessions(&state, "t", "a", true, NOW, 500, cursor).unwrap()
    });
    assert_eq!(all, MANY + 1, "with inactive ones, every session once");
}

#[test]
fn listing_revoked_sessions_among_many_active_ones_scans_a_bounded_number_of_rows() {
    let (mut state, mut revision) = (MemoryState::new(), 0);
    for n in 0..MANY {
        create(&mut state, &mut revision, "a", n);
    }
    create(&mut state, &mut revision, "b", 0);
    revoke(&mut state, &mut revision, RevokeScope::User, "b");
    let (found, pages) =
        all_pages(|cursor| query::revoked_sessions(&state, "t", NOW, 1_000, cursor).unwrap());
    assert_eq!(found, 1);
    assert!(pages >= 2, "one page never scans the whole tenant");
}
