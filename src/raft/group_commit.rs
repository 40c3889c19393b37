//! Group commit on the leader: concurrent commands share one log entry.
//!
//! openraft 0.9 appends and flushes each client write as its own entry, one after the other,
//! so the write rate is bounded by one storage round per command. Instead, proposals queue
//! here; a driver takes everything queued (up to a size cap) and proposes it as one
//! `CommandBatch` entry, with a few entries in flight at once. Each command keeps its own
//! result and request key; they share the entry's revision. Under light load a batch
//! holds one command and is proposed as itself.
//!
//! Time is stamped here, where one clock rules: every entry gets the leader's time, which
//! replaces the proposer's (the command's deadlines move with it, see `domain::time`), so a
//! follower's or client-facing node's skew decides nothing. The leader's own wall clock is
//! held to its steady (monotonic) clock: it may not move more than [`MAX_CLOCK_STEP_MS`]
//! away from where the steady clock says time is since the first stamp, so a jump of the
//! leader's wall clock (an NTP step, a VM restore) moves cluster time by at most that much.
//! `domain::apply` further keeps time from ever going back across entries and leaders.

use std::sync::Arc;
use std::time::Instant;

use openraft::error::{ClientWriteError, RaftError};
use openraft::Raft;
use prost::Message;
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{not_leader, raft_stopped, Applied, TypeConfig, WRITE_DEADLINE};
use crate::domain::time::restamp;
use crate::proto::internal::{command, command_result, Command, CommandBatch, CommandResult};
use crate::proto::SCHEMA_VERSION;
use crate::Error;

/// Most commands in one entry.
const MAX_BATCH_COMMANDS: usize = 512;
/// Most encoded bytes of commands in one entry (well under the peer message limit).
const MAX_BATCH_BYTES: usize = 1 << 20;
/// Entries proposed and not yet applied at once.
const MAX_IN_FLIGHT: usize = 4;

/// Furthest the leader's stamp may stray from its steady clock, in ms.
pub const MAX_CLOCK_STEP_MS: i64 = 2_000;

/// The leader's entry clock: its wall clock, held within [`MAX_CLOCK_STEP_MS`] of its steady
/// clock (anchored at the first stamp) and never going back.
#[derive(Debug, Default)]
struct Stamper {
    last: i64,
    anchor: Option<(i64, Instant)>,
}

impl Stamper {
    /// The time for the next entry.
    fn stamp(&mut self) -> i64 {
        let wall = crate::clock::now_ms();
        let (anchor_ms, anchor) = *self.anchor.get_or_insert((wall, Instant::now()));
        let elapsed = i64::try_from(anchor.elapsed().as_millis()).unwrap_or(i64::MAX);
        let steady = anchor_ms.saturating_add(elapsed);
        let now = wall
            .clamp(
                steady.saturating_sub(MAX_CLOCK_STEP_MS),
                steady.saturating_add(MAX_CLOCK_STEP_MS),
            )
            .max(self.last);
        self.last = now;
        now
    }
}

/// A command waiting for its batch.
struct Queued {
    command: Command,
    reply: oneshot::Sender<Result<Applied, Error>>,
}

/// The leader-side proposal queue of one node. Cheap to clone.
#[derive(Clone)]
pub struct GroupCommit {
    queue: mpsc::UnboundedSender<Queued>,
}

impl GroupCommit {
    /// Starts the driver task proposing to `raft`. It stops when every handle is dropped.
    pub fn start(raft: Raft<TypeConfig>) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(drive(raft, waiting));
        GroupCommit { queue }
    }

    /// Proposes `command` in the next batch and waits for its own result.
    pub async fn propose(&self, command: Command) -> Result<Applied, Error> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Queued { command, reply })
            .map_err(|_| Error::Unavailable("the node is shutting down".into()))?;
        answer
            .await
            .map_err(|_| Error::Unavailable("the node is shutting down".into()))?
    }
}

async fn drive(raft: Raft<TypeConfig>, mut waiting: mpsc::UnboundedReceiver<Queued>) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut stamper = Stamper::default();
    while let Some(first) = waiting.recv().await {
        // While every slot is busy, more commands queue up and join the next batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut bytes = first.command.encoded_len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_COMMANDS && bytes < MAX_BATCH_BYTES {
            match waiting.try_recv() {
                Ok(next) => {
                    bytes += next.command.encoded_len();
                    batch.push(next);
                }
                Err(_) => break,
            }
        }
        let now_ms = stamper.stamp();
        for queued in &mut batch {
            restamp(&mut queued.command, now_ms);
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            write_batch(&raft, now_ms, batch).await;
            drop(slot);
        });
    }
}

/// Proposes `batch` as one entry and answers each command with its own result.
async fn write_batch(raft: &Raft<TypeConfig>, now_ms: i64, mut batch: Vec<Queued>) {
    crate::metrics::COMMANDS_PER_ENTRY.observe(batch.len() as f64);
    if batch.len() == 1 {
        let Queued { command, reply } = batch.remove(0);
        let _ = reply.send(write_entry(raft, command).await);
        return;
    }
    let (commands, replies): (Vec<_>, Vec<_>) = batch
        .into_iter()
        .map(|queued| (queued.command, queued.reply))
        .unzip();
    let entry = Command {
        schema_version: SCHEMA_VERSION,
        now_ms,
        request_key: Vec::new(),
        kind: Some(command::Kind::Batch(CommandBatch { commands })),
        ..Default::default()
    };
    match write_entry(raft, entry).await {
        Ok(Applied {
            revision,
            result:
                CommandResult {
                    kind: Some(command_result::Kind::Batch(results)),
                    ..
                },
        }) if results.results.len() == replies.len() => {
            for (reply, result) in replies.into_iter().zip(results.results) {
                let _ = reply.send(Ok(Applied { revision, result }));
            }
        }
        Ok(_) => {
            for reply in replies {
                let _ = reply.send(Err(Error::Internal("a batch result did not match".into())));
            }
        }
        Err(error) => {
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

/// Proposes one entry to the local Raft instance (this node must lead).
async fn write_entry(raft: &Raft<TypeConfig>, command: Command) -> Result<Applied, Error> {
    let _timer = crate::metrics::ENTRY_COMMIT_SECONDS.start_timer();
    let written = tokio::time::timeout(WRITE_DEADLINE, raft.client_write(command))
        .await
        .map_err(|_| {
            Error::Unavailable("the write was not committed in time; its outcome is unknown".into())
        })?;
    match written {
        Ok(response) => Ok(Applied {
            revision: response.log_id.index,
            result: response.data,
        }),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Err(not_leader(f)),
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
            Err(Error::Internal(format!("unexpected membership error: {e}")))
        }
        Err(RaftError::Fatal(e)) => Err(raft_stopped(e)),
    }
}
