"""The gateway cache against a real node: revocations of every scope reach the cache through
the stream, it resumes after the node restarts, resyncs when its resume point was compacted,
and the multi-worker logout example is refused by the other worker within milliseconds."""

import time

from examples.multi_worker_logout import run as multi_worker_logout
from sessiond_client import GatewayCache, SessionClient, Unavailable, pb


def wait_until(predicate, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_revocations_of_every_scope_mark_cached_sessions(node):
    client = SessionClient(node.endpoint)
    cache = GatewayCache(client, ttl_seconds=600)
    cache.follow()
    a1 = client.create_session("t", "ann").session
    a2 = client.create_session("t", "ann").session
    b = client.create_session("t", "ben").session
    other = client.create_session("u", "ann").session
    for s in (a1, a2, b):
        assert cache.is_active("t", s.session_id)
    assert cache.is_active("u", other.session_id)
    unknown = a1.session_id[:-4] + ("AAAA" if not a1.session_id.endswith("AAAA") else "BBBB")
    assert cache.lookup("t", unknown) is None
    misses = cache.stats().misses

    client.revoke("t", pb.REVOKE_SCOPE_SESSION, b.session_id)
    wait_until(lambda: not cache.is_active("t", b.session_id))
    client.revoke("t", pb.REVOKE_SCOPE_USER, "ann")
    wait_until(lambda: not cache.is_active("t", a1.session_id))
    assert not cache.is_active("t", a2.session_id)
    assert cache.is_active("u", other.session_id), "another tenant's ann is untouched"
    assert cache.stats().misses == misses, "every answer after the warm-up came from the cache"
    # One event for the session, one scoped event for the whole user (a user revocation is
    # one O(1) command whatever the user's number of sessions).
    assert cache.stats().events_applied >= 2
    cache.stop()
    client.close()


def test_the_cache_resumes_after_the_node_restarts(node):
    client = SessionClient(node.endpoint)
    cache = GatewayCache(client, ttl_seconds=600)
    cache.follow()
    s = client.create_session("t", "dora").session
    assert cache.is_active("t", s.session_id)
    node.stop()
    node.start()
    # The client's channel may still be backing off from the refused connections.
    deadline = time.monotonic() + 30
    while True:
        try:
            client.revoke("t", pb.REVOKE_SCOPE_SESSION, s.session_id)
            break
        except Unavailable:
            assert time.monotonic() < deadline, "the restarted node did not answer"
            time.sleep(0.1)
    wait_until(lambda: not cache.is_active("t", s.session_id), seconds=30)
    assert cache.stats().resumes >= 1
    cache.stop()
    client.close()


def test_a_compacted_resume_point_drops_the_cache_and_resyncs(make_node):
    node = make_node("[gc]\ninterval_ms = 200\nevent_retention_ms = 1\n")
    client = SessionClient(node.endpoint)
    first = client.create_session("t", "eve").session
    client.revoke("t", pb.REVOKE_SCOPE_SESSION, first.session_id)
    time.sleep(1.5)  # the event is compacted by the next collections
    client.create_session("t", "eve")  # a later entry for the collection to run after

    cache = GatewayCache(client, ttl_seconds=600)
    cache.follow(from_revision=1)
    wait_until(lambda: cache.stats().resyncs >= 1)
    assert cache.stats().revision > 1
    cache.stop()
    client.close()


def test_multi_worker_logout_is_refused_by_the_other_worker_within_milliseconds(node):
    ms = multi_worker_logout(node.endpoint)
    assert ms < 1000, f"worker B took {ms:.0f} ms"


def test_a_revision_received_in_parts_resumes_inside_it(make_node):
    # Small messages: a family revocation (one event per member) travels in several parts.
    node = make_node("max_message_bytes = 2048\n")
    client = SessionClient(node.endpoint)
    first = client.create_session("t", "fay").session
    members = [first] + [
        client.create_session("t", "fay", family_id=first.family_id).session for _ in range(39)
    ]
    cache = GatewayCache(client, ttl_seconds=600)
    for s in members:
        assert cache.is_active("t", s.session_id)
    revision = client.revoke("t", pb.REVOKE_SCOPE_FAMILY, first.family_id).revision

    # The parts of that revision, as a stream delivers them.
    parts = []
    stream = client.watch_revocations(revision - 1)
    for message in stream:
        if message.WhichOneof("kind") == "events" and message.events.revision == revision:
            parts.append(message.events)
            if not message.events.partial:
                break
    stream.cancel()
    assert len(parts) >= 2, "the revision must arrive in parts for this test"
    assert sum(len(p.events) for p in parts) == len(members)
    rest = sum(len(p.events) for p in parts[1:])

    # A cache that applied the first part resumes inside the revision: it gets exactly the
    # rest, neither skipping it (resuming after the revision) nor repeating the first part.
    cache.follow(from_revision=revision, from_sequence=parts[0].events[-1].sequence + 1)
    wait_until(lambda: cache.stats().events_applied >= rest)
    time.sleep(0.3)  # a repeated first part would arrive now
    assert cache.stats().events_applied == rest
    for s in members:  # each event is family-scoped: any of them covers every member
        assert not cache.is_active("t", s.session_id), s.session_id
    stats = cache.stats()
    assert stats.revision >= revision and stats.sequence == 0
    cache.stop()
    client.close()
