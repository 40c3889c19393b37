//! The checker: DESIGN.md's invariants 1-4 over a recorded [`History`] and the final state
//! read once the faults healed (invariant 5, the replicas' digests, is checked where they
//! are read). Per-session histories are checked for linearizability with stateright's
//! `LinearizabilityTester` against a sequential model of one session. A violation of a check
//! on one session comes with that session's whole history (every operation on it, with its
//! node, request id, invoke and return times and outcome) and its final read: the history
//! is reduced only by leaving out the other sessions' operations.

use std::collections::{BTreeMap, BTreeSet};

use sessiond::proto::v1::RotateOutcome;
use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

use crate::history::*;

/// One broken invariant.
#[derive(Debug, Clone)]
pub struct Violation {
    /// DESIGN.md's invariant number.
    pub invariant: u8,
    /// What is wrong.
    pub message: String,
    /// What shows it: for a check on one session, that session's whole history.
    pub history: Vec<String>,
}

/// One session as a sequential object: created or not, its generation, revoked or not. The
/// grace window of the harness is longer than any retry, so presenting the token just
/// rotated always returns the current successor, and an older one is a replay.
#[derive(Debug, Clone, Default)]
pub struct SessionModel {
    exists: bool,
    gen: u64,
    revoked: bool,
}

/// An operation on one session.
#[derive(Debug, Clone)]
pub enum MOp {
    /// The create that made it.
    Create,
    /// Rotate presenting the token of this generation.
    Rotate(u64),
    /// A revocation whose scope covers it.
    Revoke,
    /// A LINEARIZABLE lookup.
    Lookup,
}

/// What an operation on one session returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MRet {
    /// Created.
    Created,
    /// ROTATED to `gen` (`retried`: the same successor again).
    Rotated {
        /// New generation.
        gen: u64,
        /// Answered as a retry.
        retried: bool,
    },
    /// REPLAY_DETECTED.
    Replay,
    /// REVOKED.
    RevokedOutcome,
    /// INVALID_TOKEN.
    Invalid,
    /// Any other rotate outcome (never expected here).
    Other(i32),
    /// A revocation acknowledged.
    RevokeOk,
    /// Found.
    Found {
        /// Revoked.
        revoked: bool,
        /// Generation.
        gen: u64,
    },
    /// Not found.
    NotFound,
}

impl SequentialSpec for SessionModel {
    type Op = MOp;
    type Ret = MRet;

    fn invoke(&mut self, op: &MOp) -> MRet {
        match op {
            MOp::Create => {
                self.exists = true;
                MRet::Created
            }
            MOp::Rotate(_) if !self.exists => MRet::Invalid,
            MOp::Rotate(_) if self.revoked => MRet::RevokedOutcome,
            MOp::Rotate(g) if *g == self.gen => {
                self.gen += 1;
                MRet::Rotated {
                    gen: self.gen,
                    retried: false,
                }
            }
            MOp::Rotate(g) if g + 1 == self.gen => MRet::Rotated {
                gen: self.gen,
                retried: true,
            },
            MOp::Rotate(g) if *g < self.gen => {
                self.revoked = true;
                MRet::Replay
            }
            MOp::Rotate(_) => MRet::Invalid,
            MOp::Revoke => {
                if self.exists {
                    self.revoked = true;
                }
                MRet::RevokeOk
            }
            MOp::Lookup if !self.exists => MRet::NotFound,
            MOp::Lookup => MRet::Found {
                revoked: self.revoked,
                gen: self.gen,
            },
        }
    }
}

/// One operation of a per-session history: invoke time, completion (None: unknown).
#[derive(Debug, Clone)]
pub struct SessionOp {
    /// The model operation.
    pub op: MOp,
    /// Invoked at (µs).
    pub invoke_us: u64,
    /// Completed at with this result; None when the outcome is unknown.
    pub done: Option<(u64, MRet)>,
}

/// Whether the per-session history is linearizable.
pub fn linearizable(ops: &[SessionOp]) -> bool {
    let mut events: Vec<(u64, u8, usize)> = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        events.push((op.invoke_us, 0, i));
        if let Some((t, _)) = &op.done {
            events.push((*t, 1, i));
        }
    }
    // At equal times invocations come first: such operations are taken as concurrent.
    events.sort();
    let mut tester = LinearizabilityTester::new(SessionModel::default());
    for (_, kind, i) in events {
        let result = if kind == 0 {
            tester.on_invoke(i, ops[i].op.clone()).map(|_| ())
        } else {
            let ret = ops[i].done.as_ref().expect("completed").1.clone();
            tester.on_return(i, ret).map(|_| ())
        };
        if result.is_err() {
            return false;
        }
    }
    tester.serialized_history().is_some()
}

fn rotate_ret(ret: &Ret) -> Option<MRet> {
    Some(match ret {
        Ret::Rotated { gen, retried, .. } => MRet::Rotated {
            gen: *gen,
            retried: *retried,
        },
        Ret::RotateOutcome(o) => match RotateOutcome::try_from(*o) {
            Ok(RotateOutcome::ReplayDetected) => MRet::Replay,
            Ok(RotateOutcome::Revoked) => MRet::RevokedOutcome,
            Ok(RotateOutcome::InvalidToken) => MRet::Invalid,
            _ => MRet::Other(*o),
        },
        _ => return None,
    })
}

fn lookup_ret(ret: &Ret) -> Option<MRet> {
    match ret {
        Ret::Found { revoked, gen } => Some(MRet::Found {
            revoked: *revoked,
            gen: *gen,
        }),
        Ret::NotFound => Some(MRet::NotFound),
        _ => None,
    }
}

/// Whether a revocation in `tenant` with `scope` covers `session`.
fn covers(tenant: &str, scope: &Scope, s: &SessionInfo) -> bool {
    match scope {
        Scope::Session(id) => *id == s.id,
        Scope::Family(f) => *f == s.family,
        Scope::User(u) => tenant == s.tenant && *u == s.user,
        Scope::Tenant => tenant == s.tenant,
    }
}

fn done_at(op: &Op) -> Option<u64> {
    match op.outcome {
        Outcome::Ok(_) => op.complete_us,
        _ => None,
    }
}

/// The per-session history of `session` in the model's terms, ending with the final read.
fn session_history(
    ops: &[Op],
    index: usize,
    s: &SessionInfo,
    final_read: &Ret,
    end_us: u64,
) -> Vec<SessionOp> {
    let mut out = Vec::new();
    for op in ops
        .iter()
        .filter(|o| !matches!(o.outcome, Outcome::Fail(_)))
    {
        let (mop, ret) = match (&op.kind, &op.outcome) {
            (OpKind::Create { .. }, o) if op.id == s.created_by => (
                MOp::Create,
                matches!(o, Outcome::Ok(_)).then_some(MRet::Created),
            ),
            (
                OpKind::Rotate {
                    session,
                    presented_gen,
                    ..
                },
                o,
            ) if *session == index => (
                MOp::Rotate(*presented_gen),
                match o {
                    Outcome::Ok(r) => rotate_ret(r),
                    _ => None,
                },
            ),
            (OpKind::Revoke { tenant, scope }, o) if covers(tenant, scope, s) => (
                MOp::Revoke,
                matches!(o, Outcome::Ok(_)).then_some(MRet::RevokeOk),
            ),
            (
                OpKind::Lookup {
                    session,
                    linearizable: true,
                },
                Outcome::Ok(r),
            ) if *session == index => (MOp::Lookup, lookup_ret(r)),
            _ => continue,
        };
        // Unknown reads and definitely failed writes never took effect visibly: skip reads.
        if matches!(mop, MOp::Lookup) && ret.is_none() {
            continue;
        }
        out.push(SessionOp {
            op: mop,
            invoke_us: op.invoke_us,
            done: ret.and_then(|r| done_at(op).map(|t| (t, r))),
        });
    }
    if let Some(ret) = lookup_ret(final_read) {
        out.push(SessionOp {
            op: MOp::Lookup,
            invoke_us: end_us,
            done: Some((end_us + 1, ret)),
        });
    }
    out
}

/// Every operation on session `index` (`s`), whole and in invocation order: its create, its
/// rotations, the revocations whose scope covers it and every lookup of it (LOCAL and through
/// the gateway too, for context). Other sessions' operations are all that is left out.
fn session_ops<'a>(ops: &'a [Op], index: usize, s: &SessionInfo) -> Vec<&'a Op> {
    ops.iter()
        .filter(|op| match &op.kind {
            OpKind::Create { .. } => op.id == s.created_by,
            OpKind::Rotate { session, .. }
            | OpKind::Lookup { session, .. }
            | OpKind::GatewayLookup { session } => *session == index,
            OpKind::Revoke { tenant, scope } => covers(tenant, scope, s),
        })
        .collect()
}

/// A violation of a check on session `index`, shown with the session's whole history and
/// its final read. Nothing of that history is dropped: removing a write from a history that
/// is not linearizable can leave one that is not linearizable for another reason (a revoked
/// final read with the rotation that revoked it removed), which hides the real one.
fn session_violation(
    invariant: u8,
    message: String,
    ops: &[Op],
    index: usize,
    s: &SessionInfo,
    final_read: &Ret,
) -> Violation {
    let mut history: Vec<String> = session_ops(ops, index, s)
        .into_iter()
        .map(Op::to_string)
        .collect();
    history.push(format!(
        "final LINEARIZABLE read after the faults healed -> {final_read:?}"
    ));
    Violation {
        invariant,
        message,
        history,
    }
}

/// Invariants 1-3 over the operations, given each session's final LINEARIZABLE read.
pub fn check_operations(
    ops: &[Op],
    sessions: &[SessionInfo],
    finals: &[Ret],
    end_us: u64,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    // (1) at most one successor per presented token; no two fresh redemptions of one token.
    let mut successors: BTreeMap<(usize, u64), BTreeSet<&str>> = BTreeMap::new();
    let mut fresh: BTreeMap<(usize, u64), Vec<usize>> = BTreeMap::new();
    for op in ops {
        if let (
            OpKind::Rotate {
                session,
                presented_gen,
                ..
            },
            Outcome::Ok(Ret::Rotated { token, retried, .. }),
        ) = (&op.kind, &op.outcome)
        {
            successors
                .entry((*session, *presented_gen))
                .or_default()
                .insert(token);
            if !retried {
                fresh
                    .entry((*session, *presented_gen))
                    .or_default()
                    .push(op.id);
            }
        }
    }
    for ((session, gen), tokens) in &successors {
        let redeemed = fresh.get(&(*session, *gen)).map_or(0, Vec::len);
        if tokens.len() > 1 || redeemed > 1 {
            let s = &sessions[*session];
            violations.push(session_violation(
                1,
                format!(
                    "session {} token of generation {gen}: {} distinct successors, {redeemed} fresh redemptions",
                    s.id,
                    tokens.len()
                ),
                ops,
                *session,
                s,
                &finals[*session],
            ));
        }
    }
    for (index, s) in sessions.iter().enumerate() {
        let final_read = &finals[index];
        // (2) acknowledged writes present.
        let created = ops[s.created_by].complete_us;
        let lost = match final_read {
            Ret::NotFound => Some("acknowledged create missing".to_owned()),
            Ret::Found { gen, revoked } => {
                let acked_gen =
                    ops.iter()
                        .filter_map(|o| match (&o.kind, &o.outcome) {
                            (
                                OpKind::Rotate { session, .. },
                                Outcome::Ok(Ret::Rotated { gen, .. }),
                            ) if *session == index => Some(*gen),
                            _ => None,
                        })
                        .max()
                        .unwrap_or(0);
                let acked_revoke = ops.iter().find(|o| {
                    matches!((&o.kind, &o.outcome), (OpKind::Revoke { tenant, scope }, Outcome::Ok(_))
                        if covers(tenant, scope, s) && created.is_some_and(|c| c < o.invoke_us))
                });
                if *gen < acked_gen {
                    Some(format!(
                        "acknowledged rotation to generation {acked_gen} lost (final {gen})"
                    ))
                } else if let (Some(r), false) = (acked_revoke, revoked) {
                    Some(format!("acknowledged revocation #{} undone", r.id))
                } else {
                    None
                }
            }
            _ => None,
        };
        if let Some(message) = lost {
            violations.push(session_violation(
                2,
                format!("session {}: {message}", s.id),
                ops,
                index,
                s,
                final_read,
            ));
        }
        // (3) no LINEARIZABLE read after a revoke ack sees the session active.
        for r in ops.iter().filter(|o| {
            matches!((&o.kind, &o.outcome), (OpKind::Revoke { tenant, scope }, Outcome::Ok(_))
                if covers(tenant, scope, s) && created.is_some_and(|c| c < o.invoke_us))
        }) {
            let acked = r.complete_us.unwrap_or(u64::MAX);
            if let Some(read) = ops.iter().find(|o| {
                matches!((&o.kind, &o.outcome), (OpKind::Lookup { session, linearizable: true }, Outcome::Ok(Ret::Found { revoked: false, .. }))
                    if *session == index && o.invoke_us > acked)
            }) {
                violations.push(session_violation(
                    3,
                    format!(
                        "session {}: LINEARIZABLE read #{} saw it active after revocation #{} was acknowledged",
                        s.id, read.id, r.id
                    ),
                    ops,
                    index,
                    s,
                    final_read,
                ));
            }
        }
        // (1) + (3): the session's whole history linearizable against the model.
        let history = session_history(ops, index, s, final_read, end_us);
        if !linearizable(&history) {
            violations.push(session_violation(
                1,
                format!("session {}: history not linearizable", s.id),
                ops,
                index,
                s,
                final_read,
            ));
        }
    }
    violations
}

/// Invariant 4: every watcher segment delivered exactly the events of `truth` (every
/// revocation, in order) after its resume point up to the highest revision it reported,
/// unless it was told to resync.
pub fn check_watchers(segments: &[Segment], truth: &[(u64, String)]) -> Vec<Violation> {
    let mut violations = Vec::new();
    for seg in segments {
        let expected: Vec<&(u64, String)> = truth
            .iter()
            .filter(|(rev, _)| *rev > seg.from && *rev <= seg.high)
            .collect();
        let got: Vec<&(u64, String)> = seg.events.iter().collect();
        if got == expected {
            continue;
        }
        let got_set: BTreeSet<&(u64, String)> = got.iter().copied().collect();
        let missing: Vec<&(u64, String)> = expected
            .iter()
            .copied()
            .filter(|e| !got_set.contains(e))
            .collect();
        let extra = got.len() + missing.len() - expected.len();
        let first = missing
            .first()
            .map(|(r, s)| format!("first missing: revision {r} session {s}"));
        violations.push(Violation {
            invariant: 4,
            message: format!(
                "watcher on node {} resumed from {} (reached {}, {}): {} of {} revocations missing, {} unexpected or out of order{}",
                seg.node,
                seg.from,
                seg.high,
                seg.ended,
                missing.len(),
                expected.len(),
                extra,
                if seg.resync.is_some() { ", resync told" } else { ", no RESYNC_REQUIRED" }
            ),
            history: first.into_iter().collect(),
        });
    }
    violations
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(op: MOp, invoke: u64, done: Option<(u64, MRet)>) -> SessionOp {
        SessionOp {
            op,
            invoke_us: invoke,
            done,
        }
    }

    #[test]
    fn a_clean_rotation_history_is_linearizable() {
        let h = vec![
            op(MOp::Create, 0, Some((1, MRet::Created))),
            op(
                MOp::Rotate(0),
                2,
                Some((
                    5,
                    MRet::Rotated {
                        gen: 1,
                        retried: false,
                    },
                )),
            ),
            op(
                MOp::Rotate(0),
                3,
                Some((
                    6,
                    MRet::Rotated {
                        gen: 1,
                        retried: true,
                    },
                )),
            ),
            op(MOp::Revoke, 7, None),
            op(
                MOp::Lookup,
                20,
                Some((
                    21,
                    MRet::Found {
                        revoked: true,
                        gen: 1,
                    },
                )),
            ),
        ];
        assert!(linearizable(&h));
    }

    #[test]
    fn two_fresh_redemptions_of_one_token_are_caught() {
        let h = vec![
            op(MOp::Create, 0, Some((1, MRet::Created))),
            op(
                MOp::Lookup,
                1,
                Some((
                    2,
                    MRet::Found {
                        revoked: false,
                        gen: 0,
                    },
                )),
            ),
            op(
                MOp::Rotate(0),
                2,
                Some((
                    5,
                    MRet::Rotated {
                        gen: 1,
                        retried: false,
                    },
                )),
            ),
            op(
                MOp::Rotate(0),
                3,
                Some((
                    6,
                    MRet::Rotated {
                        gen: 1,
                        retried: false,
                    },
                )),
            ),
        ];
        assert!(!linearizable(&h));
    }

    fn recorded(id: usize, kind: OpKind, invoke_us: u64, ret: Ret) -> Op {
        Op {
            id,
            client: 0,
            node: 1 + id as u64 % 3,
            kind,
            request_id: format!("rid-{id}"),
            invoke_us,
            complete_us: Some(invoke_us + 5),
            outcome: Outcome::Ok(ret),
        }
    }

    fn info(id: &str, user: &str, created_by: usize) -> SessionInfo {
        SessionInfo {
            id: id.into(),
            family: format!("f-{id}"),
            tenant: "t0".into(),
            user: user.into(),
            created_by,
            tokens: BTreeMap::new(),
            ops: 0,
        }
    }

    /// A session whose token got two fresh successors: both invariant-1 checks report it,
    /// each with every operation on that session (the ones that explain nothing included)
    /// and its final read, and with none of the other session's.
    #[test]
    fn a_per_session_violation_shows_the_whole_history_of_that_session() {
        let rotated = |token: &str| Ret::Rotated {
            gen: 1,
            retried: false,
            token: token.into(),
        };
        let rotate = |session| OpKind::Rotate {
            session,
            presented_gen: 0,
            attempt_of: 0,
        };
        let lookup = |session, linearizable| OpKind::Lookup {
            session,
            linearizable,
        };
        let revoke = |scope| OpKind::Revoke {
            tenant: "t0".into(),
            scope,
        };
        let create = OpKind::Create {
            tenant: "t0".into(),
            user: "u0".into(),
        };
        let ops = vec![
            recorded(0, create.clone(), 0, Ret::Created { session: 0 }),
            recorded(1, create, 10, Ret::Created { session: 1 }),
            recorded(2, rotate(0), 20, rotated("a")),
            recorded(3, rotate(1), 30, rotated("c")),
            recorded(4, lookup(0, false), 40, Ret::NotFound),
            recorded(5, rotate(0), 50, rotated("b")),
            recorded(
                6,
                revoke(Scope::User("u1".into())),
                60,
                Ret::Revoked { count: 1 },
            ),
            recorded(7, OpKind::GatewayLookup { session: 1 }, 70, Ret::NotFound),
            recorded(
                8,
                revoke(Scope::Session("s1".into())),
                80,
                Ret::Revoked { count: 1 },
            ),
        ];
        let sessions = vec![info("s0", "u0", 0), info("s1", "u1", 1)];
        let finals = vec![
            Ret::Found {
                revoked: false,
                gen: 1,
            },
            Ret::Found {
                revoked: true,
                gen: 1,
            },
        ];
        let violations = check_operations(&ops, &sessions, &finals, 1_000);
        assert_eq!(violations.len(), 2, "{violations:?}");
        for v in &violations {
            assert_eq!(v.invariant, 1);
            assert!(v.message.contains("session s0"), "{}", v.message);
            let shown: Vec<String> = v
                .history
                .iter()
                .map(|line| line.split_whitespace().next().unwrap().to_owned())
                .collect();
            assert_eq!(shown, ["#0", "#2", "#4", "#5", "final"], "{:#?}", v.history);
            assert!(
                v.history[1].contains("request_id=rid-2"),
                "{}",
                v.history[1]
            );
            assert!(
                v.history[1].contains("n3 [0.000s..0.000s]"),
                "{}",
                v.history[1]
            );
            assert!(
                v.history[4].contains("revoked: false, gen: 1"),
                "{}",
                v.history[4]
            );
        }
    }

    #[test]
    fn a_revocation_undone_is_caught() {
        let h = vec![
            op(MOp::Create, 0, Some((1, MRet::Created))),
            op(MOp::Revoke, 2, Some((3, MRet::RevokeOk))),
            op(
                MOp::Lookup,
                4,
                Some((
                    5,
                    MRet::Found {
                        revoked: false,
                        gen: 0,
                    },
                )),
            ),
        ];
        assert!(!linearizable(&h));
    }

    #[test]
    fn a_lost_acknowledged_rotation_is_caught_but_an_unknown_one_may_be_lost() {
        let lost = vec![
            op(MOp::Create, 0, Some((1, MRet::Created))),
            op(
                MOp::Rotate(0),
                2,
                Some((
                    3,
                    MRet::Rotated {
                        gen: 1,
                        retried: false,
                    },
                )),
            ),
            op(
                MOp::Lookup,
                9,
                Some((
                    10,
                    MRet::Found {
                        revoked: false,
                        gen: 0,
                    },
                )),
            ),
        ];
        assert!(!linearizable(&lost));
        let unknown = vec![
            op(MOp::Create, 0, Some((1, MRet::Created))),
            op(MOp::Rotate(0), 2, None),
            op(
                MOp::Lookup,
                9,
                Some((
                    10,
                    MRet::Found {
                        revoked: false,
                        gen: 0,
                    },
                )),
            ),
        ];
        assert!(linearizable(&unknown));
    }

    #[test]
    fn a_watcher_gap_without_resync_is_caught() {
        let truth = vec![
            (5, "a".to_owned()),
            (7, "b".to_owned()),
            (9, "c".to_owned()),
        ];
        let whole = Segment {
            node: 1,
            from: 4,
            events: truth.clone(),
            high: 9,
            resync: None,
            ended: String::new(),
        };
        assert!(check_watchers(std::slice::from_ref(&whole), &truth).is_empty());
        let gap = Segment {
            events: vec![truth[0].clone(), truth[2].clone()],
            ..whole.clone()
        };
        let v = check_watchers(&[gap], &truth);
        assert_eq!(v.len(), 1);
        assert!(
            v[0].message.contains("1 of 3 revocations missing"),
            "{}",
            v[0].message
        );
        let duplicate = Segment {
            events: vec![
                truth[0].clone(),
                truth[0].clone(),
                truth[1].clone(),
                truth[2].clone(),
            ],
            ..whole
        };
        assert_eq!(check_watchers(&[duplicate], &truth).len(), 1);
    }
}
