//! The gateway's session cache: the client side of the revocation contract.
//!
//! [`GatewayCache::lookup`] answers from an LRU + TTL cache and falls back to the authority
//! (a LINEARIZABLE lookup) on a miss; not-found answers are cached too. A background task
//! started by [`GatewayCache::follow`] consumes the revocation stream and marks sessions
//! revoked as events arrive; it resumes from its last revision after a disconnect, a leader
//! change or a cut-off, and on RESYNC_REQUIRED it drops every cached record (each is fetched
//! again, from state that includes every revocation). A revoked record stays cached as
//! revoked, so the gateway rejects it without asking. Every entry remembers the revision it
//! reflects: a fetch that raced with a revocation never overwrites the newer, revoked entry.
//! After a RESYNC the cache keeps the resync revision as a floor and caches no answer older
//! than it (such an answer may predate a revocation that was compacted away, which no event
//! will ever correct). [`GatewayCache::wait_for_revision`] lets a caller that just revoked at
//! revision R wait until every later lookup through the cache reflects R.
//! A scoped event (a user or tenant revoked in one command) marks every cached session of
//! that user or tenant older than its revision, and is remembered (for the most recent
//! [`SCOPED_MARKS`] scopes) so that a fetch answered before that revision and stored after
//! the event is stored as revoked too. The stream position is (revision, sequence), so a
//! revision delivered in parts resumes where it was cut.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tonic::Status;

use crate::client::Client;
use crate::proto::v1::watch_revocations_response::Kind;
use crate::proto::v1::{
    lookup_request, Consistency, LookupOutcome, LookupRequest, RevocationEvent, RevokeScope,
    Session, SessionStatus, WatchRevocationsRequest,
};

/// Most user or tenant revocations remembered for fetches that race with them.
pub const SCOPED_MARKS: usize = 4096;

/// A user (Some) or a whole tenant (None) revoked by a scoped event.
type Scope = (String, Option<String>);

/// Cache sizing.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Most sessions cached.
    pub capacity: usize,
    /// How long an active (or not-found) answer is trusted without a revocation event.
    pub ttl: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            capacity: 100_000,
            ttl: Duration::from_secs(60),
        }
    }
}

/// One cached answer: the session (None: not found) as of `revision`.
#[derive(Debug)]
pub struct Cached {
    /// The session, or None when the authority does not know it.
    pub session: Option<Session>,
    /// The authority's revision this answer reflects.
    pub revision: u64,
    fetched_at: Instant,
}

impl Cached {
    /// Whether the gateway must reject requests of this session.
    pub fn is_revoked(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.status() == SessionStatus::Revoked)
    }
}

/// Counters of a cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GatewayStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that asked the authority.
    pub misses: u64,
    /// Revocation events applied.
    pub events_applied: u64,
    /// The stream revision the cache is up to date with.
    pub revision: u64,
    /// How far the stream is behind the revision of the latest event or progress seen
    /// (0 when caught up).
    pub lag: u64,
}

/// A gateway's cache of session records, kept current by the revocation stream.
#[derive(Clone)]
pub struct GatewayCache {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    config: GatewayConfig,
    entries: Mutex<LruCache<String, Arc<Cached>>>,
    /// Recent scoped revocations: the event of each scope, newest per scope.
    scoped: Mutex<LruCache<Scope, RevocationEvent>>,
    hits: AtomicU64,
    misses: AtomicU64,
    events_applied: AtomicU64,
    revision: AtomicU64,
    /// With `revision`, the resume position: 0 when `revision` was received whole,
    /// otherwise the next event sequence of `revision` owed (a revision cut between parts).
    sequence: AtomicU32,
    seen_revision: AtomicU64,
    /// No answer older than this is cached (the revision of the last RESYNC). Changed and
    /// read only while `entries` is locked.
    floor: AtomicU64,
    /// Woken whenever `revision` may have advanced.
    advanced: Notify,
}

impl GatewayCache {
    /// A cache answering misses through `client`.
    pub fn new(client: Client, config: GatewayConfig) -> Self {
        let capacity = NonZeroUsize::new(config.capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        GatewayCache {
            inner: Arc::new(Inner {
                client,
                config,
                entries: Mutex::new(LruCache::new(capacity)),
                scoped: Mutex::new(LruCache::new(
                    NonZeroUsize::new(SCOPED_MARKS).unwrap_or(NonZeroUsize::MIN),
                )),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                events_applied: AtomicU64::new(0),
                revision: AtomicU64::new(0),
                sequence: AtomicU32::new(0),
                seen_revision: AtomicU64::new(0),
                floor: AtomicU64::new(0),
                advanced: Notify::new(),
            }),
        }
    }

    /// The cached answer for `session_id`, if present and still fresh (revoked answers are
    /// always fresh). Never asks the authority.
    pub fn cached(&self, tenant: &str, session_id: &str) -> Option<Arc<Cached>> {
        let mut entries = self.inner.entries.lock().ok()?;
        let entry = entries.get(session_id)?;
        let fresh = entry.is_revoked() || entry.fetched_at.elapsed() < self.inner.config.ttl;
        let same_tenant = entry.session.as_ref().is_none_or(|s| s.tenant == tenant);
        (fresh && same_tenant).then(|| entry.clone())
    }

    /// The session (active, expired or revoked) or not-found, from the cache or else from
    /// the authority.
    pub async fn lookup(&self, tenant: &str, session_id: &str) -> Result<Arc<Cached>, Status> {
        if let Some(hit) = self.cached(tenant, session_id) {
            self.inner.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(hit);
        }
        self.inner.misses.fetch_add(1, Ordering::Relaxed);
        // A fetch that started before a RESYNC may answer below the new floor; the next one
        // (linearizable, so at or after the resync revision) cannot.
        for _ in 0..2 {
            let found = self
                .inner
                .client
                .lookup(LookupRequest {
                    tenant: tenant.to_owned(),
                    key: Some(lookup_request::Key::SessionId(session_id.to_owned())),
                    consistency: Consistency::Linearizable as i32,
                })
                .await?;
            let session = (found.outcome() == LookupOutcome::Found)
                .then_some(found.session)
                .flatten();
            if let Some(cached) = self.store(session_id, session, found.revision) {
                return Ok(cached);
            }
        }
        Err(Status::unavailable(
            "the authority answered below the cache's resync revision",
        ))
    }

    /// Caches `session` as the authority returned it at `revision` through another call
    /// (the session and revision of a CreateSession or Rotate response passing through the
    /// gateway), so that its first lookup is a hit. A newer cached answer, such as a
    /// revocation that arrived meanwhile, is kept; an answer older than the last RESYNC is
    /// returned as given but not cached.
    pub fn prime(&self, session: Session, revision: u64) -> Arc<Cached> {
        let session_id = session.session_id.clone();
        let answer = Arc::new(Cached {
            session: Some(session),
            revision,
            fetched_at: Instant::now(),
        });
        self.store_answer(&session_id, answer.clone())
            .unwrap_or(answer)
    }

    /// Stores an answer unless the cache holds a newer one (a revocation that raced with
    /// the fetch); returns what the cache holds afterwards, or None when the answer is older
    /// than the last RESYNC (and was not stored).
    fn store(
        &self,
        session_id: &str,
        session: Option<Session>,
        revision: u64,
    ) -> Option<Arc<Cached>> {
        let session = session.map(|s| self.with_scoped_marks(s, revision));
        let answer = Arc::new(Cached {
            session,
            revision,
            fetched_at: Instant::now(),
        });
        self.store_answer(session_id, answer)
    }

    fn store_answer(&self, session_id: &str, answer: Arc<Cached>) -> Option<Arc<Cached>> {
        let Ok(mut entries) = self.inner.entries.lock() else {
            return Some(answer);
        };
        if answer.revision < self.inner.floor.load(Ordering::Relaxed) {
            return None;
        }
        Some(match entries.peek(session_id) {
            Some(existing) if existing.revision > answer.revision => existing.clone(),
            _ => {
                entries.put(session_id.to_owned(), answer.clone());
                answer
            }
        })
    }

    /// `session` as fetched at `revision`, revoked if a scoped revocation after that revision
    /// covers it (the fetch raced with the event).
    fn with_scoped_marks(&self, mut session: Session, revision: u64) -> Session {
        if session.status() == SessionStatus::Revoked {
            return session;
        }
        let Ok(scoped) = self.inner.scoped.lock() else {
            return session;
        };
        let scopes = [
            (session.tenant.clone(), Some(session.user_id.clone())),
            (session.tenant.clone(), None),
        ];
        let covering = scopes
            .iter()
            .filter_map(|scope| scoped.peek(scope))
            .filter(|event| event.revision > revision)
            .min_by_key(|event| event.revision);
        if let Some(event) = covering {
            revoke(&mut session, event);
        }
        session
    }

    /// Applies one event: one session, or every cached session of a user or tenant (a
    /// scoped event).
    pub fn apply_event(&self, event: &RevocationEvent) {
        let scope = RevokeScope::try_from(event.scope).unwrap_or_default();
        if !event.session_id.is_empty() {
            return self.mark_revoked(event);
        }
        let key = match scope {
            RevokeScope::User => (event.tenant.clone(), Some(event.user_id.clone())),
            RevokeScope::Tenant => (event.tenant.clone(), None),
            _ => return,
        };
        if let Ok(mut scoped) = self.inner.scoped.lock() {
            scoped.put(key.clone(), event.clone());
        }
        self.mark_all(event, |s| {
            s.tenant == key.0 && key.1.as_ref().is_none_or(|user| *user == s.user_id)
        });
    }

    /// Marks one session revoked (cached as revoked even if it was not cached).
    pub fn mark_revoked(&self, event: &RevocationEvent) {
        let Ok(mut entries) = self.inner.entries.lock() else {
            return;
        };
        let mut session = entries
            .peek(&event.session_id)
            .and_then(|c| c.session.clone())
            .unwrap_or_else(|| Session {
                session_id: event.session_id.clone(),
                family_id: event.family_id.clone(),
                tenant: event.tenant.clone(),
                user_id: event.user_id.clone(),
                ..Default::default()
            });
        revoke(&mut session, event);
        entries.put(
            event.session_id.clone(),
            Arc::new(Cached {
                session: Some(session),
                revision: event.revision,
                fetched_at: Instant::now(),
            }),
        );
    }

    /// Marks revoked, as `event` says, every cached session matching `matches` whose cached
    /// answer is older than the event (an answer at or after it already includes it: a
    /// session created after a scoped revocation is not covered by it).
    fn mark_all(&self, event: &RevocationEvent, matches: impl Fn(&Session) -> bool) {
        let Ok(mut entries) = self.inner.entries.lock() else {
            return;
        };
        for (_, cached) in entries.iter_mut() {
            if cached.revision >= event.revision || cached.is_revoked() {
                continue;
            }
            if let Some(session) = cached.session.as_ref().filter(|s| matches(s)) {
                let mut session = session.clone();
                revoke(&mut session, event);
                *cached = Arc::new(Cached {
                    session: Some(session),
                    revision: event.revision,
                    fetched_at: Instant::now(),
                });
            }
        }
    }

    /// Marks every cached session of a user revoked (answers older than `revision`).
    pub fn mark_all_revoked_for_user(&self, tenant: &str, user_id: &str, revision: u64) {
        self.apply_event(&RevocationEvent {
            revision,
            tenant: tenant.to_owned(),
            user_id: user_id.to_owned(),
            scope: RevokeScope::User as i32,
            ..Default::default()
        });
    }

    /// Marks every cached session of a family revoked (answers older than `revision`).
    pub fn mark_all_revoked_for_family(&self, family_id: &str, revision: u64) {
        let event = RevocationEvent {
            revision,
            ..Default::default()
        };
        self.mark_all(&event, |s| s.family_id == family_id);
    }

    /// Marks every cached session of a tenant revoked (answers older than `revision`).
    pub fn mark_all_revoked_for_tenant(&self, tenant: &str, revision: u64) {
        self.apply_event(&RevocationEvent {
            revision,
            tenant: tenant.to_owned(),
            scope: RevokeScope::Tenant as i32,
            ..Default::default()
        });
    }

    /// Drops every cached answer.
    pub fn clear(&self) {
        if let Ok(mut entries) = self.inner.entries.lock() {
            entries.clear();
        }
    }

    /// Handles RESYNC_REQUIRED at `current_revision`: revocations up to it may be gone from
    /// the stream, so every cached answer is dropped and no answer older than it is cached
    /// again; the stream resumes from it.
    fn resync(&self, current_revision: u64) {
        if let Ok(mut entries) = self.inner.entries.lock() {
            self.inner
                .floor
                .fetch_max(current_revision, Ordering::Relaxed);
            entries.clear();
        }
        self.inner
            .revision
            .store(current_revision, Ordering::Relaxed);
        self.inner.advanced.notify_waiters();
    }

    /// Waits until the cache has applied the revocation stream up to `revision` (or resynced
    /// past it), so that every later lookup through this cache reflects every revocation at
    /// or before `revision`: a caller that revoked at revision R (the `revision` of its
    /// RevokeResponse) calls this before relying on the cache. Fails after `timeout`, when
    /// the stream is not that far yet (the cache is not following, or the stream is down).
    pub async fn wait_for_revision(
        &self,
        revision: u64,
        timeout: Duration,
    ) -> Result<(), tokio::time::error::Elapsed> {
        tokio::time::timeout(timeout, async {
            loop {
                let advanced = self.inner.advanced.notified();
                tokio::pin!(advanced);
                advanced.as_mut().enable();
                if self.inner.revision.load(Ordering::Acquire) >= revision {
                    return;
                }
                advanced.await;
            }
        })
        .await
    }

    /// The cache's counters.
    pub fn stats(&self) -> GatewayStats {
        let revision = self.inner.revision.load(Ordering::Relaxed);
        GatewayStats {
            hits: self.inner.hits.load(Ordering::Relaxed),
            misses: self.inner.misses.load(Ordering::Relaxed),
            events_applied: self.inner.events_applied.load(Ordering::Relaxed),
            revision,
            lag: self
                .inner
                .seen_revision
                .load(Ordering::Relaxed)
                .saturating_sub(revision),
        }
    }

    /// Starts the background task that applies the revocation stream of `stream_client`
    /// (any node, or a client of the whole cluster) until the returned handle is aborted.
    pub fn follow(&self, stream_client: Client) -> JoinHandle<()> {
        let cache = self.clone();
        tokio::spawn(async move {
            loop {
                let from = cache.inner.revision.load(Ordering::Relaxed);
                if let Err(e) = cache.consume(&stream_client, from).await {
                    tracing::debug!(error = %e, "revocation stream interrupted; resuming");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }

    /// Reads one stream until it ends.
    async fn consume(&self, client: &Client, from_revision: u64) -> Result<(), Status> {
        let mut stream = client
            .watch_revocations(WatchRevocationsRequest {
                from_revision,
                tenants: Vec::new(),
                from_sequence: self.inner.sequence.load(Ordering::Relaxed),
            })
            .await?;
        while let Some(message) = stream.message().await? {
            let inner = &self.inner;
            match message.kind {
                Some(Kind::Events(batch)) => {
                    inner
                        .seen_revision
                        .fetch_max(batch.revision, Ordering::Relaxed);
                    for event in &batch.events {
                        self.apply_event(event);
                        inner.events_applied.fetch_add(1, Ordering::Relaxed);
                    }
                    let next = match batch.events.last() {
                        Some(last) if batch.partial => last.sequence.saturating_add(1),
                        _ => 0,
                    };
                    inner.sequence.store(next, Ordering::Relaxed);
                    inner.revision.store(batch.revision, Ordering::Relaxed);
                }
                Some(Kind::Progress(p)) => {
                    inner.seen_revision.fetch_max(p.revision, Ordering::Relaxed);
                    if p.revision > inner.revision.load(Ordering::Relaxed) {
                        inner.sequence.store(0, Ordering::Relaxed);
                        inner.revision.store(p.revision, Ordering::Relaxed);
                    }
                }
                Some(Kind::ResyncRequired(r)) => {
                    inner.sequence.store(0, Ordering::Relaxed);
                    self.resync(r.current_revision);
                    return Ok(());
                }
                Some(Kind::CutOff(c)) => {
                    inner
                        .sequence
                        .store(c.resume_from_sequence, Ordering::Relaxed);
                    inner
                        .revision
                        .store(c.resume_from_revision, Ordering::Relaxed);
                    return Ok(());
                }
                None => {}
            }
            inner.advanced.notify_waiters();
        }
        Ok(())
    }
}

/// Marks `session` revoked as `event` says.
fn revoke(session: &mut Session, event: &RevocationEvent) {
    session.status = SessionStatus::Revoked as i32;
    session.revoked_at_ms = event.revoked_at_ms;
    session.revocation_reason = event.reason;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(id: &str) -> Session {
        Session {
            session_id: id.into(),
            tenant: "t".into(),
            user_id: "u".into(),
            status: SessionStatus::Active as i32,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn primed_session_is_a_hit_and_never_hides_a_newer_revocation() {
        // Nothing listens there: every answer below must come from the cache.
        let client = Client::for_cluster(&["http://127.0.0.1:1".into()]).unwrap();
        let cache = GatewayCache::new(client, GatewayConfig::default());
        cache.prime(session("sid_a"), 5);
        let hit = cache.lookup("t", "sid_a").await.unwrap();
        assert!(!hit.is_revoked());
        assert_eq!(hit.revision, 5);
        assert!(cache.cached("other", "sid_a").is_none());

        cache.mark_revoked(&RevocationEvent {
            revision: 7,
            session_id: "sid_a".into(),
            tenant: "t".into(),
            ..Default::default()
        });
        assert!(cache.prime(session("sid_a"), 6).is_revoked());
        assert!(cache.lookup("t", "sid_a").await.unwrap().is_revoked());
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses), (2, 0));
    }

    #[tokio::test]
    async fn an_answer_older_than_a_resync_is_never_cached() {
        let client = Client::for_cluster(&["http://127.0.0.1:1".into()]).unwrap();
        let cache = GatewayCache::new(client, GatewayConfig::default());
        cache.prime(session("sid_a"), 5);
        // RESYNC at 9: a revocation of sid_a at 8 may have been compacted, and no event
        // will ever report it.
        cache.resync(9);
        assert!(cache.cached("t", "sid_a").is_none());
        // A fetch in flight since before the RESYNC answers "active at 7": not cached.
        let late = cache.prime(session("sid_a"), 7);
        assert_eq!(late.revision, 7);
        assert!(cache.cached("t", "sid_a").is_none(), "stale answer cached");
        assert!(cache.store("sid_a", None, 8).is_none());
        // Answers at or after the resync revision are cached as usual.
        cache.prime(session("sid_a"), 9);
        assert_eq!(cache.cached("t", "sid_a").unwrap().revision, 9);
        assert_eq!(cache.stats().revision, 9);
    }

    #[tokio::test]
    async fn waiting_for_a_revision_ends_when_the_stream_reaches_it() {
        let client = Client::for_cluster(&["http://127.0.0.1:1".into()]).unwrap();
        let cache = GatewayCache::new(client, GatewayConfig::default());
        let short = Duration::from_millis(50);
        assert!(cache.wait_for_revision(0, short).await.is_ok());
        assert!(cache.wait_for_revision(3, short).await.is_err());
        let waiter = {
            let cache = cache.clone();
            tokio::spawn(async move { cache.wait_for_revision(3, Duration::from_secs(30)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished());
        cache.resync(4);
        assert!(waiter.await.unwrap().is_ok());
    }
}
