"""The gateway side: a lookup cache kept honest by the revocation stream.

``lookup`` answers from an LRU + TTL cache and falls back to a LINEARIZABLE lookup on a miss
(not-found answers are cached too). A background thread follows ``WatchRevocations`` from
the last position it applied: each event marks the cached sessions it covers (session,
family, user or tenant scope) revoked; after a disconnect it resumes on the next node, after
``CUT_OFF`` from the position it was given, and on ``RESYNC_REQUIRED`` (its resume point was
compacted away) it drops the whole cache and continues from the current revision.

The position is (revision, sequence), as in the Rust gateway: a revision with more events
than fit in one message arrives in parts (``RevocationEvents.partial``), and a stream that
ends between two parts resumes inside the revision (``from_sequence``), neither skipping
nor repeating an event.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Sequence

import grpc
from sessiond.v1 import session_pb2 as pb

from .client import SessionClient

#: Pause before resuming after a failed stream (doubles up to _MAX_BACKOFF).
_MIN_BACKOFF = 0.05
_MAX_BACKOFF = 2.0


@dataclass
class CacheStats:
    """Counters of one cache."""

    hits: int = 0
    misses: int = 0
    events_applied: int = 0
    resumes: int = 0
    resyncs: int = 0
    #: The highest revision applied (or known current, from progress messages).
    revision: int = 0
    #: 0 when `revision` was received whole; otherwise the next event sequence of `revision`
    #: owed (the stream ended between two parts of it).
    sequence: int = 0


@dataclass
class _Entry:
    session: Optional[pb.Session]  # None: the authority said not found
    cached_at: float


class GatewayCache:
    """Session lookups for a gateway, revoked everywhere within milliseconds of a logout."""

    def __init__(
        self,
        client: SessionClient,
        *,
        capacity: int = 10_000,
        ttl_seconds: float = 30.0,
        tenants: Sequence[str] = (),
    ):
        if capacity < 1:
            raise ValueError("capacity: must be at least 1")
        self._client = client
        self._capacity = capacity
        self._ttl = ttl_seconds
        self._tenants = list(tenants)
        self._entries: "OrderedDict[tuple[str, str], _Entry]" = OrderedDict()
        self._lock = threading.Lock()
        self._stats = CacheStats()
        self._stop = threading.Event()
        self._stream: Optional[grpc.Future] = None
        self._thread: Optional[threading.Thread] = None
        self._following = threading.Event()

    # -- lookups ---------------------------------------------------------------------------

    def lookup(self, tenant: str, session_id: str) -> Optional[pb.Session]:
        """The session (check its ``status``), or None when the authority does not know it."""
        key = (tenant, session_id)
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and now - entry.cached_at < self._ttl:
                self._entries.move_to_end(key)
                self._stats.hits += 1
                return entry.session
            self._stats.misses += 1
        answer = self._client.lookup(tenant, session_id=session_id)
        session = answer.session if answer.outcome == pb.LOOKUP_OUTCOME_FOUND else None
        with self._lock:
            # Events newer than the answer may already have been applied (and found nothing
            # cached to mark): cache only an answer at least as new as the stream.
            if answer.revision >= self._stats.revision:
                self._put(key, session, now)
        return session

    def is_active(self, tenant: str, session_id: str) -> bool:
        """Whether the session exists and is active now (the gateway's yes/no)."""
        session = self.lookup(tenant, session_id)
        return (
            session is not None
            and session.status == pb.SESSION_STATUS_ACTIVE
            and session.expires_at_ms > time.time() * 1000
        )

    def stats(self) -> CacheStats:
        """A copy of the counters."""
        with self._lock:
            return CacheStats(**vars(self._stats))

    def _put(self, key: tuple[str, str], session: Optional[pb.Session], now: float) -> None:
        self._entries[key] = _Entry(session, now)
        self._entries.move_to_end(key)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    # -- the revocation stream ---------------------------------------------------------------

    def follow(self, from_revision: int = 0, from_sequence: int = 0) -> None:
        """Starts following the stream after (`from_revision`, `from_sequence`) in a
        background thread and waits (up to 10 s) until the stream is attached."""
        with self._lock:
            if (from_revision, from_sequence) > (self._stats.revision, self._stats.sequence):
                self._stats.revision = from_revision
                self._stats.sequence = from_sequence
        self._thread = threading.Thread(target=self._run, name="sessiond-gateway", daemon=True)
        self._thread.start()
        self._following.wait(10)

    def stop(self) -> None:
        """Stops following the stream."""
        self._stop.set()
        stream = self._stream
        if stream is not None:
            stream.cancel()
        if self._thread is not None:
            self._thread.join(10)

    def _run(self) -> None:
        backoff = _MIN_BACKOFF
        node = 0
        while not self._stop.is_set():
            with self._lock:
                revision, sequence = self._stats.revision, self._stats.sequence
            try:
                self._stream = self._client.watch_revocations(
                    revision, self._tenants, from_sequence=sequence, endpoint_index=node
                )
                for message in self._stream:
                    self._following.set()
                    backoff = _MIN_BACKOFF
                    if not self._apply(message):
                        break
            except grpc.RpcError:
                if self._stop.is_set():
                    return
                node += 1  # try the next node
            with self._lock:
                self._stats.resumes += 1
            self._stop.wait(backoff)
            backoff = min(backoff * 2, _MAX_BACKOFF)

    def _apply(self, message: pb.WatchRevocationsResponse) -> bool:
        """Applies one stream message; False when the stream must be reopened."""
        kind = message.WhichOneof("kind")
        with self._lock:
            if kind == "events":
                batch = message.events
                for event in batch.events:
                    self._revoke(event)
                    self._stats.events_applied += 1
                self._stats.revision = batch.revision
                self._stats.sequence = (
                    batch.events[-1].sequence + 1 if batch.partial and batch.events else 0
                )
                return True
            if kind == "progress":
                if message.progress.revision > self._stats.revision:
                    self._stats.revision = message.progress.revision
                    self._stats.sequence = 0
                return True
            if kind == "cut_off":
                self._stats.revision = message.cut_off.resume_from_revision
                self._stats.sequence = message.cut_off.resume_from_sequence
                return False
            if kind == "resync_required":
                self._entries.clear()
                self._stats.resyncs += 1
                self._stats.revision = message.resync_required.current_revision
                self._stats.sequence = 0
                return False
        return True

    def _revoke(self, event: pb.RevocationEvent) -> None:
        """Marks every cached session the event covers revoked (caller holds the lock)."""
        for (tenant, _), entry in self._entries.items():
            s = entry.session
            if s is None or tenant != event.tenant:
                continue
            covered = {
                pb.REVOKE_SCOPE_SESSION: s.session_id == event.session_id,
                pb.REVOKE_SCOPE_FAMILY: s.family_id == event.family_id,
                pb.REVOKE_SCOPE_USER: s.user_id == event.user_id,
                pb.REVOKE_SCOPE_TENANT: True,
            }.get(event.scope, s.session_id == event.session_id)
            if covered and s.status == pb.SESSION_STATUS_ACTIVE:
                s.status = pb.SESSION_STATUS_REVOKED
                s.revoked_at_ms = event.revoked_at_ms
                s.revocation_reason = event.reason
