"""The session calls, over grpcio, against any node of a cluster."""

from __future__ import annotations

import os
import time
import uuid
from typing import Callable, Iterator, Mapping, Optional, Sequence, TypeVar, Union

import grpc
from sessiond.v1 import session_pb2 as pb
from sessiond.v1 import session_pb2_grpc as pb_grpc

T = TypeVar("T")

#: Status codes after which the call is tried on the next node.
_MOVE_ON = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def new_request_id() -> str:
    """A fresh request id: a UUIDv7 (RFC 9562), whose time lets the cluster keep the
    idempotency records of requests made close in time together."""
    make = getattr(uuid, "uuid7", None)  # Python 3.14 and later
    if make is not None:
        return str(make())
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    value = value & ~(0xF << 76) | 0x7 << 76  # version 7
    value = value & ~(0x3 << 62) | 0x2 << 62  # RFC 9562 variant
    return str(uuid.UUID(int=value))


class Unavailable(Exception):
    """No node of the cluster answered."""


def _endpoints(endpoints: Union[str, Sequence[str]]) -> list[str]:
    if isinstance(endpoints, str):
        endpoints = endpoints.split(",")
    cleaned = [e.strip().removeprefix("http://") for e in endpoints if e.strip()]
    if not cleaned:
        raise ValueError("endpoints: at least one host:port is required")
    return cleaned


class SessionClient:
    """Calls the session authority on the first node of `endpoints` that answers.

    `endpoints` is a list of ``host:port`` (or one comma-separated string). A call that
    finds its node unavailable is retried once on each other node; writes carry a request
    id, the same on every attempt, so a retry after a lost answer gets the first result.
    """

    def __init__(self, endpoints: Union[str, Sequence[str]], *, timeout: float = 5.0):
        self._endpoints = _endpoints(endpoints)
        self._timeout = timeout
        self._current = 0
        self._channels = [grpc.insecure_channel(e) for e in self._endpoints]
        self._stubs = [pb_grpc.SessionAuthorityStub(c) for c in self._channels]

    @property
    def endpoints(self) -> list[str]:
        """The nodes this client talks to."""
        return list(self._endpoints)

    def close(self) -> None:
        """Closes every channel."""
        for channel in self._channels:
            channel.close()

    def __enter__(self) -> "SessionClient":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(self, call: Callable[[pb_grpc.SessionAuthorityStub], T]) -> T:
        last: Optional[grpc.RpcError] = None
        for attempt in range(len(self._stubs)):
            index = (self._current + attempt) % len(self._stubs)
            try:
                answer = call(self._stubs[index])
                self._current = index
                return answer
            except grpc.RpcError as e:
                if e.code() not in _MOVE_ON:
                    raise
                last = e
        raise Unavailable(f"no node answered: {last}") from last

    def create_session(
        self,
        tenant: str,
        user_id: str,
        *,
        family_id: str = "",
        ttl_ms: int = 0,
        idle_timeout_ms: int = 0,
        attributes: Optional[Mapping[str, str]] = None,
        without_access_token: bool = False,
        request_id: Optional[str] = None,
    ) -> pb.CreateSessionResponse:
        """Creates a session (new family, or joins `family_id`); returns the raw tokens once."""
        request = pb.CreateSessionRequest(
            tenant=tenant,
            user_id=user_id,
            family_id=family_id,
            ttl_ms=ttl_ms,
            idle_timeout_ms=idle_timeout_ms,
            attributes=dict(attributes or {}),
            without_access_token=without_access_token,
            request_id=request_id or new_request_id(),
        )
        return self._call(lambda s: s.CreateSession(request, timeout=self._timeout))

    def rotate(self, refresh_token: str, *, lease_id: str = "") -> pb.RotateResponse:
        """Redeems `refresh_token` for its successor (see `outcome`)."""
        request = pb.RotateRequest(refresh_token=refresh_token, lease_id=lease_id)
        return self._call(lambda s: s.Rotate(request, timeout=self._timeout))

    def lookup(
        self,
        tenant: str,
        *,
        session_id: Optional[str] = None,
        refresh_token: Optional[str] = None,
        access_token: Optional[str] = None,
        local: bool = False,
    ) -> pb.LookupResponse:
        """Looks a session up by exactly one of id, refresh token or access token."""
        keys = {
            "session_id": session_id,
            "refresh_token": refresh_token,
            "access_token": access_token,
        }
        given = {k: v for k, v in keys.items() if v is not None}
        if len(given) != 1:
            raise ValueError("key: give exactly one of session_id, refresh_token, access_token")
        request = pb.LookupRequest(tenant=tenant, consistency=_consistency(local), **given)
        return self._call(lambda s: s.Lookup(request, timeout=self._timeout))

    def validate_access_token(
        self, tenant: str, access_token: str, *, local: bool = False
    ) -> pb.ValidateAccessTokenResponse:
        """Whether `access_token` is usable now."""
        request = pb.ValidateAccessTokenRequest(
            tenant=tenant, access_token=access_token, consistency=_consistency(local)
        )
        return self._call(lambda s: s.ValidateAccessToken(request, timeout=self._timeout))

    def touch(self, tenant: str, session_id: str) -> pb.TouchResponse:
        """Records activity on a session (sliding expiry)."""
        request = pb.TouchRequest(tenant=tenant, session_id=session_id)
        return self._call(lambda s: s.Touch(request, timeout=self._timeout))

    def revoke(
        self,
        tenant: str,
        scope: "pb.RevokeScope.ValueType",
        id: str = "",
        *,
        reason: "pb.RevocationReason.ValueType" = pb.REVOCATION_REASON_LOGOUT,
        request_id: Optional[str] = None,
    ) -> pb.RevokeResponse:
        """Revokes a session, family, user or tenant (`scope`, a ``pb.REVOKE_SCOPE_*``)."""
        request = pb.RevokeRequest(
            tenant=tenant,
            scope=scope,
            id=id,
            reason=reason,
            request_id=request_id or new_request_id(),
        )
        return self._call(lambda s: s.Revoke(request, timeout=self._timeout))

    def list_sessions(
        self, tenant: str, user_id: str, *, include_inactive: bool = False, page_size: int = 100
    ) -> Iterator[pb.Session]:
        """A user's sessions, oldest first, fetched page by page."""
        token = ""
        while True:
            request = pb.ListSessionsRequest(
                tenant=tenant,
                user_id=user_id,
                include_inactive=include_inactive,
                page_size=page_size,
                page_token=token,
            )
            page = self._call(lambda s: s.ListSessions(request, timeout=self._timeout))
            yield from page.sessions
            token = page.next_page_token
            if not token:
                return

    def count_sessions(self, tenant: str, user_id: str = "") -> int:
        """Active sessions of a user, or of the tenant when `user_id` is empty."""
        request = pb.CountSessionsRequest(tenant=tenant, user_id=user_id)
        return self._call(lambda s: s.CountSessions(request, timeout=self._timeout)).active

    def list_revoked(self, tenant: str, *, page_size: int = 1000) -> tuple[list[pb.RevokedSession], int]:
        """Every revoked, unexpired session of `tenant`, and the revision to resume from."""
        token, sessions, revision = "", [], 0
        while True:
            request = pb.ListRevokedRequest(tenant=tenant, page_size=page_size, page_token=token)
            page = self._call(lambda s: s.ListRevoked(request, timeout=self._timeout))
            sessions.extend(page.sessions)
            revision = revision or page.revision
            token = page.next_page_token
            if not token:
                return sessions, revision

    def watch_revocations(
        self,
        from_revision: int,
        tenants: Sequence[str] = (),
        *,
        from_sequence: int = 0,
        endpoint_index: Optional[int] = None,
    ) -> "grpc.Future":
        """The revocation stream from one node (the current one unless `endpoint_index`):
        an iterator of ``WatchRevocationsResponse`` that can be cancelled. It resumes after
        (`from_revision`, `from_sequence`): with `from_sequence` non-zero, the events of
        `from_revision` from that sequence on come first (a revision received in part)."""
        index = self._current if endpoint_index is None else endpoint_index
        request = pb.WatchRevocationsRequest(
            from_revision=from_revision, tenants=list(tenants), from_sequence=from_sequence
        )
        return self._stubs[index % len(self._stubs)].WatchRevocations(request)


def _consistency(local: bool) -> "pb.Consistency.ValueType":
    return pb.CONSISTENCY_LOCAL if local else pb.CONSISTENCY_LINEARIZABLE
