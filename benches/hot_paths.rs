//! The in-process hot paths, without network or disk: the domain core applying a Rotate
//! command, the prost encoding of a stored session record, and a gateway cache hit.
//!
//! Inputs are made as the proposer makes them (minted tokens, their hashes, the sealed
//! successor) before any timing starts; only the path named by each benchmark is timed.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use prost::Message;
use tokio::runtime::Runtime;

use sessiond::api::rotate;
use sessiond::client::Client;
use sessiond::domain::{self, query, MemoryState};
use sessiond::gateway::{GatewayCache, GatewayConfig};
use sessiond::proto::internal::{command, Command, CreateSession, SessionRecord};
use sessiond::proto::v1::{Session, SessionStatus};
use sessiond::proto::SCHEMA_VERSION;
use sessiond::token::{self, IdKind, RawToken, TokenKind, TokenPair};

const TENANT: &str = "acme";
const HOUR_MS: i64 = 3_600_000;
/// When the benchmark's sessions were created.
const EPOCH_MS: i64 = 1_750_000_000_000;
/// Sessions of other users in the state and in the cache, so that lookups are not into a
/// near-empty map.
const OTHER_SESSIONS: usize = 10_000;
/// Rotations applied to one copy of the state before it is replaced by a fresh copy
/// (outside the timing), so that memory stays bounded however many iterations run.
const CHAIN: usize = 1_000;

/// Attributes of a realistic session: role, permission and account versions, device label,
/// IP and user-agent hashes.
fn attributes() -> BTreeMap<String, String> {
    [
        ("role", "member"),
        ("perm_v", "42"),
        ("acct_v", "7"),
        ("device", "Firefox on Linux"),
        ("ip_h", "3f9a1c0be27d5a44"),
        ("ua_h", "b81e09d2c4f7aa10"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A CreateSession command for `user`, as the proposer builds it; returns it with the raw
/// refresh token it hashes.
fn create_command(user: &str) -> (Command, RawToken) {
    let refresh = RawToken::mint(TokenKind::Refresh);
    let access = RawToken::mint(TokenKind::Access);
    let create = CreateSession {
        session_id: token::mint_id(IdKind::Session),
        family_id: token::mint_id(IdKind::Family),
        tenant: TENANT.into(),
        user_id: user.into(),
        expires_at_ms: EPOCH_MS + 24 * HOUR_MS,
        idle_timeout_ms: HOUR_MS,
        device_public_key: vec![7; 32],
        attributes: attributes(),
        refresh_hash: refresh.hash().to_vec(),
        access_hash: access.hash().to_vec(),
        access_expires_at_ms: EPOCH_MS + HOUR_MS / 4,
        ..Default::default()
    };
    (
        command(EPOCH_MS, command::Kind::CreateSession(create)),
        refresh,
    )
}

/// A Rotate command redeeming `presented` at `now_ms`, as the proposer builds it; returns it
/// with the successor's raw refresh token.
fn rotate_command(presented: &RawToken, now_ms: i64) -> (Command, RawToken) {
    let successor = TokenPair {
        refresh: RawToken::mint(TokenKind::Refresh),
        access: Some(RawToken::mint(TokenKind::Access)),
    };
    let rotate = rotate::rotate_command(
        presented,
        &successor,
        now_ms + HOUR_MS / 4,
        10_000,
        String::new(),
    );
    (
        command(now_ms, command::Kind::Rotate(rotate)),
        successor.refresh,
    )
}

fn command(now_ms: i64, kind: command::Kind) -> Command {
    Command {
        schema_version: SCHEMA_VERSION,
        now_ms,
        request_key: Vec::new(),
        kind: Some(kind),
        ..Default::default()
    }
}

/// A state holding [`OTHER_SESSIONS`] sessions and then one more, whose id and raw refresh
/// token are returned; the last revision applied is the number of sessions.
fn populated_state() -> (MemoryState, String, RawToken) {
    let mut state = MemoryState::new();
    let mut revision = 0;
    let mut create = |state: &mut MemoryState, user: &str| {
        let (command, refresh) = create_command(user);
        revision += 1;
        domain::apply(&command, revision, state).expect("create applies");
        let Some(command::Kind::CreateSession(c)) = command.kind else {
            unreachable!("a create command")
        };
        (c.session_id, refresh)
    };
    for i in 0..OTHER_SESSIONS {
        create(&mut state, &format!("user-{i}"));
    }
    let (session_id, refresh) = create(&mut state, "user-bench");
    (state, session_id, refresh)
}

/// Applying a Rotate: each iteration redeems the token the previous one issued.
fn domain_rotate(c: &mut Criterion) {
    let (base, _, first) = populated_state();
    let base_revision = OTHER_SESSIONS as u64 + 1;
    let mut presented = first;
    let chain: Vec<Command> = (1..=CHAIN as i64)
        .map(|i| {
            let (command, successor) = rotate_command(&presented, EPOCH_MS + i * 1_000);
            presented = successor;
            command
        })
        .collect();
    c.bench_function("domain_apply_rotate", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters as usize;
            while left > 0 {
                let mut state = base.clone();
                let run = &chain[..left.min(CHAIN)];
                let start = Instant::now();
                for (revision, command) in (base_revision + 1..).zip(run) {
                    black_box(domain::apply(command, revision, &mut state).expect("rotates"));
                }
                timed += start.elapsed();
                left -= run.len();
            }
            timed
        })
    });
}

/// Encoding and decoding a stored session record with a few attributes.
fn record_codec(c: &mut Criterion) {
    let (state, session_id, _) = populated_state();
    let record: SessionRecord = query::session_by_id(&state, TENANT, &session_id)
        .expect("readable")
        .expect("stored");
    let bytes = record.encode_to_vec();
    println!("session record: {} bytes encoded", bytes.len());
    let mut group = c.benchmark_group("session_record");
    group.bench_function("encode", |b| b.iter(|| black_box(&record).encode_to_vec()));
    group.bench_function("decode", |b| {
        b.iter(|| SessionRecord::decode(black_box(bytes.as_slice())).expect("decodes"))
    });
    group.finish();
}

/// A gateway cache lookup answered from the cache: one hot session, and a walk over
/// [`OTHER_SESSIONS`] cached ones.
fn gateway_hit(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // Nothing listens there: a miss would fail, so every timed lookup is a hit.
    let client = runtime
        .block_on(async { Client::for_cluster(&["http://127.0.0.1:1".to_owned()]) })
        .expect("client");
    let cache = GatewayCache::new(client, GatewayConfig::default());
    let ids: Vec<String> = (0..OTHER_SESSIONS)
        .map(|i| {
            let session = Session {
                session_id: token::mint_id(IdKind::Session),
                family_id: token::mint_id(IdKind::Family),
                tenant: TENANT.into(),
                user_id: format!("user-{i}"),
                created_at_ms: EPOCH_MS,
                expires_at_ms: EPOCH_MS + 24 * HOUR_MS,
                idle_timeout_ms: HOUR_MS,
                last_seen_at_ms: EPOCH_MS,
                status: SessionStatus::Active as i32,
                attributes: attributes(),
                ..Default::default()
            };
            cache
                .prime(session, 1)
                .session
                .as_ref()
                .expect("cached")
                .session_id
                .clone()
        })
        .collect();

    let mut group = c.benchmark_group("gateway_cache_hit");
    group.bench_function("one_session", |b| {
        b.iter_custom(|iters| timed_hits(&runtime, &cache, &ids[..1], iters))
    });
    group.bench_function("10k_sessions", |b| {
        b.iter_custom(|iters| timed_hits(&runtime, &cache, &ids, iters))
    });
    group.finish();
    assert_eq!(cache.stats().misses, 0, "every lookup was a hit");
}

/// Times `iters` lookups cycling through `ids`, all within one entry into the runtime.
fn timed_hits(runtime: &Runtime, cache: &GatewayCache, ids: &[String], iters: u64) -> Duration {
    runtime.block_on(async {
        let start = Instant::now();
        for id in ids.iter().cycle().take(iters as usize) {
            black_box(cache.lookup(TENANT, id).await.expect("hit"));
        }
        start.elapsed()
    })
}

criterion_group!(benches, domain_rotate, record_codec, gateway_hit);
criterion_main!(benches);
