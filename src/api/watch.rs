//! WatchRevocations and ListRevoked: the revocation stream of one node, from its own applied
//! state.
//!
//! A subscriber first subscribes to the node's feed of applied revocations, getting the
//! applied index at the same instant, then reads the retained backlog up to that index,
//! then follows the feed for revisions after the last one it delivered. Every revision is
//! either at most that index or on the feed, so none slips between backlog and live events;
//! filtering by revision removes the overlap. When the node installs a snapshot, the feed
//! says so and the subscriber reads the backlog again, from the installed state, up to the
//! snapshot's end. A resume point the compaction has passed gets RESYNC_REQUIRED instead of a gap.
//! Delivery never blocks the apply loop: a subscriber that keeps its buffer full past a
//! timeout, or falls behind the feed, gets a last CUT_OFF message with its resume revision.
//! No message exceeds the size limit: a revision whose events do not fit in one travels in
//! parts, and a resume position is (revision, sequence), so resuming inside a revision
//! neither skips nor repeats an event.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use prost::Message as _;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::authority::Authority;
use super::validate;
use crate::config::WatchConfig;
use crate::domain::events::{self, Position};
use crate::domain::query;
use crate::proto::internal;
use crate::proto::v1::*;
use crate::store::state_machine::AppliedRevocations;
use crate::store::StateReader;
use crate::Error;

/// Most tenants one subscription may filter on.
pub const MAX_WATCHED_TENANTS: usize = 64;
/// Events read from the backlog per step.
const BACKLOG_PAGE: usize = 512;
/// Bytes of a message besides its events (envelope, revision, flags), with room to spare.
const MESSAGE_OVERHEAD: usize = 256;
/// Bytes an event adds to a message besides its own encoding (field tag and length).
const EVENT_OVERHEAD: usize = 8;
/// Largest ListRevoked page.
pub const MAX_REVOKED_PAGE: u32 = 1000;

/// This node's feed of applied revocations.
type Feed = broadcast::Receiver<Arc<AppliedRevocations>>;

/// The stream handed to tonic.
pub type RevocationStream = ReceiverStream<Result<WatchRevocationsResponse, Status>>;

/// Handles one WatchRevocations request: validates it and starts its delivery task.
pub fn watch(
    authority: &Authority,
    request: WatchRevocationsRequest,
) -> Result<RevocationStream, Error> {
    if request.tenants.len() > MAX_WATCHED_TENANTS {
        return Err(Error::invalid(
            "tenants",
            format!("at most {MAX_WATCHED_TENANTS}"),
        ));
    }
    for tenant in &request.tenants {
        validate::tenant("tenants", tenant)?;
    }
    let state = authority.node().state().clone();
    let config = authority.config().watch.clone();
    let (tx, rx) = mpsc::channel(config.buffer);
    let (live, applied) = state.subscribe();
    let subscriber = Subscriber {
        state,
        tenants: request.tenants.into_iter().collect(),
        delivered: Position {
            revision: request.from_revision,
            sequence: request.from_sequence,
        },
        message_budget: authority
            .config()
            .max_message_bytes
            .saturating_sub(MESSAGE_OVERHEAD),
        tx,
        config,
        stopping: authority.stopping(),
    };
    tokio::spawn(subscriber.run(live, applied));
    Ok(ReceiverStream::new(rx))
}

/// Why delivery to a subscriber stopped.
enum Stop {
    /// The subscriber went away or was cut off: nothing more to send.
    Done,
    /// The state could not be read.
    Failed(Error),
}

struct Subscriber {
    state: StateReader,
    tenants: BTreeSet<String>,
    /// Every event before this position was delivered (or filtered out).
    delivered: Position,
    /// Most encoded bytes of events in one message.
    message_budget: usize,
    tx: mpsc::Sender<Result<WatchRevocationsResponse, Status>>,
    config: WatchConfig,
    /// Turns true when the node stops: the stream ends (the subscriber resumes elsewhere).
    stopping: tokio::sync::watch::Receiver<bool>,
}

fn message(kind: watch_revocations_response::Kind) -> WatchRevocationsResponse {
    WatchRevocationsResponse { kind: Some(kind) }
}

fn public_event(revision: u64, sequence: u32, e: internal::RevocationEvent) -> RevocationEvent {
    RevocationEvent {
        revision,
        sequence,
        tenant: e.tenant,
        user_id: e.user_id,
        family_id: e.family_id,
        session_id: e.session_id,
        reason: e.reason,
        revoked_at_ms: e.revoked_at_ms,
        scope: e.scope,
    }
}

impl Subscriber {
    async fn run(mut self, live: Feed, applied: u64) {
        let _counted = crate::metrics::stream_subscribed();
        let stopped = match self.backlog(applied).await {
            Ok(()) => self.follow(live).await,
            Err(stop) => stop,
        };
        if let Stop::Failed(e) = stopped {
            tracing::error!(error = %e, "revocation stream failed");
            let _ = self.tx.try_send(Err(Status::internal("internal error")));
        }
    }

    fn wanted(&self, event: &internal::RevocationEvent) -> bool {
        self.tenants.is_empty() || self.tenants.contains(&event.tenant)
    }

    /// Sends one message, waiting for buffer space up to the slow-subscriber timeout. One
    /// slot is always left free, so that the CUT_OFF message fits when the wait times out.
    async fn send(&mut self, kind: watch_revocations_response::Kind) -> Result<(), Stop> {
        let timeout = Duration::from_millis(self.config.slow_subscriber_timeout_ms);
        match tokio::time::timeout(timeout, self.tx.reserve_many(2)).await {
            Ok(Ok(mut permits)) => {
                if let Some(permit) = permits.next() {
                    permit.send(Ok(message(kind)));
                }
                Ok(())
            }
            Ok(Err(_)) => Err(Stop::Done),
            Err(_) => {
                self.cut_off();
                Err(Stop::Done)
            }
        }
    }

    /// Tells the subscriber where to resume; it is then dropped.
    fn cut_off(&self) {
        crate::metrics::STREAM_CUT_OFFS.inc();
        let _ = self
            .tx
            .try_send(Ok(message(watch_revocations_response::Kind::CutOff(
                CutOff {
                    resume_from_revision: self.delivered.revision,
                    resume_from_sequence: self.delivered.sequence,
                },
            ))));
    }

    /// Delivers events of one revision (those the filter keeps and the position owes), in
    /// messages of at most the budget; `complete` when they end the revision.
    async fn deliver(
        &mut self,
        revision: u64,
        events: impl IntoIterator<Item = (u32, internal::RevocationEvent)>,
        complete: bool,
    ) -> Result<(), Stop> {
        let mut part: Vec<RevocationEvent> = Vec::new();
        let mut part_bytes = 0;
        let mut last_sequence = None;
        for (sequence, event) in events {
            if !self.delivered.owes(revision, sequence) {
                continue;
            }
            last_sequence = Some(sequence);
            if !self.wanted(&event) {
                continue;
            }
            let event = public_event(revision, sequence, event);
            let size = event.encoded_len() + EVENT_OVERHEAD;
            if !part.is_empty() && part_bytes + size > self.message_budget {
                self.send_part(revision, std::mem::take(&mut part), true)
                    .await?;
                part_bytes = 0;
            }
            part_bytes += size;
            part.push(event);
        }
        if !part.is_empty() {
            self.send_part(revision, part, !complete).await?;
        }
        if let Some(sequence) = last_sequence {
            self.delivered = Position::after(revision, sequence, complete);
        } else if complete && revision > self.delivered.revision {
            self.delivered = Position::after(revision, 0, true);
        }
        Ok(())
    }

    /// Sends one message of events of `revision`; `partial` when more of it follow. On
    /// success the position moves past its last event.
    async fn send_part(
        &mut self,
        revision: u64,
        events: Vec<RevocationEvent>,
        partial: bool,
    ) -> Result<(), Stop> {
        let last = events.last().map_or(0, |e| e.sequence);
        self.send(watch_revocations_response::Kind::Events(RevocationEvents {
            revision,
            events,
            partial,
        }))
        .await?;
        self.delivered = Position::after(revision, last, !partial);
        Ok(())
    }

    fn compacted_through(&self) -> Result<u64, Stop> {
        events::compacted_through(&self.state).map_err(|e| Stop::Failed(e.into()))
    }

    async fn resync(&mut self, compacted_through: u64) -> Stop {
        let current_revision = self.state.applied_index();
        let _ = self
            .send(watch_revocations_response::Kind::ResyncRequired(
                ResyncRequired {
                    current_revision,
                    compacted_through,
                },
            ))
            .await;
        Stop::Done
    }

    /// Whether compaction passed the resume position (a revision partly delivered counts as
    /// passed once its events are compacted).
    fn compacted_past(&self, compacted: u64) -> bool {
        compacted > self.delivered.revision
            || (compacted == self.delivered.revision && self.delivered.sequence > 0)
    }

    /// Delivers every retained event after the resume point up to `upto`: the applied index
    /// when the feed was subscribed to (everything later arrives through the feed), or the
    /// end of a snapshot this node installed.
    async fn backlog(&mut self, upto: u64) -> Result<(), Stop> {
        loop {
            let compacted = self.compacted_through()?;
            if self.compacted_past(compacted) {
                return Err(self.resync(compacted).await);
            }
            let page = events::retained_after(&self.state, self.delivered, upto, BACKLOG_PAGE)
                .map_err(|e| Stop::Failed(e.into()))?;
            let compacted = self.compacted_through()?;
            if self.compacted_past(compacted) {
                return Err(self.resync(compacted).await);
            }
            if page.is_empty() {
                break;
            }
            let full = page.len() >= BACKLOG_PAGE;
            let mut page = page.into_iter().peekable();
            while let Some((revision, sequence, event)) = page.next() {
                let mut batch = vec![(sequence, event)];
                while let Some((_, s, e)) = page.next_if(|(r, _, _)| *r == revision) {
                    batch.push((s, e));
                }
                // Only a full page's last revision may continue on the next page.
                let complete = page.peek().is_some() || !full;
                self.deliver(revision, batch, complete).await?;
            }
        }
        // Every revision up to `upto` was read whole (the last page may have ended on one).
        if upto >= self.delivered.revision {
            self.delivered = Position::after(upto, 0, true);
        }
        Ok(())
    }

    /// Follows the feed of applied revocations, with progress messages while idle.
    async fn follow(&mut self, mut live: Feed) -> Stop {
        let mut ticker =
            tokio::time::interval(Duration::from_millis(self.config.progress_interval_ms));
        let mut stopping = self.stopping.clone();
        loop {
            let step = tokio::select! {
                received = live.recv() => match received {
                    Ok(applied) if applied.installed => self.backlog(applied.revision).await,
                    Ok(applied) if self.delivered.owes(applied.revision, u32::MAX) => {
                        crate::metrics::STREAM_SUBSCRIBER_LAG.observe(
                            self.state.applied_index().saturating_sub(applied.revision) as f64,
                        );
                        let events = (0..).zip(applied.events.iter().cloned());
                        self.deliver(applied.revision, events, true).await
                    }
                    Ok(_) => Ok(()),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        self.cut_off();
                        Err(Stop::Done)
                    }
                    Err(broadcast::error::RecvError::Closed) => Err(Stop::Done),
                },
                _ = ticker.tick() => self.progress(&live).await,
                _ = self.tx.closed() => Err(Stop::Done),
                _ = async { let _ = stopping.wait_for(|s| *s).await; } => Err(Stop::Done),
            };
            if let Err(stop) = step {
                return stop;
            }
        }
    }

    /// Reports the applied index as delivered when no published revocation is pending:
    /// revocations are published before the applied index moves past them, so once the
    /// index is read, an empty feed means everything up to it was handled.
    async fn progress(&mut self, live: &Feed) -> Result<(), Stop> {
        let applied = self.state.applied_index();
        if !live.is_empty() {
            return Ok(());
        }
        if applied > self.delivered.revision {
            self.delivered = Position::after(applied, 0, true);
        }
        self.send(watch_revocations_response::Kind::Progress(Progress {
            revision: self.delivered.revision,
        }))
        .await
    }
}

/// Handles one ListRevoked request.
pub async fn list_revoked(
    authority: &Authority,
    request: ListRevokedRequest,
) -> Result<ListRevokedResponse, Error> {
    validate::tenant("tenant", &request.tenant)?;
    let (page_size, cursor) = validate::page(
        request.page_size,
        500,
        MAX_REVOKED_PAGE,
        &request.page_token,
    )?;
    let consistency = validate::consistency("consistency", request.consistency)?;
    authority.read_barrier(consistency).await?;
    let state = authority.node().state();
    let revision = state.applied_index();
    let page = query::revoked_sessions(
        state,
        &request.tenant,
        authority.read_now_ms(),
        page_size as usize,
        cursor.as_deref(),
    )?;
    Ok(ListRevokedResponse {
        sessions: page
            .sessions
            .into_iter()
            .map(|s| RevokedSession {
                expires_at_ms: s.expires_at_ms,
                session_id: s.session_id,
                family_id: s.family_id,
                user_id: s.user_id,
                reason: s.revocation_reason,
                revoked_at_ms: s.revoked_at_ms,
            })
            .collect(),
        next_page_token: page
            .next_cursor
            .map(|c| URL_SAFE_NO_PAD.encode(c))
            .unwrap_or_default(),
        revision,
    })
}
