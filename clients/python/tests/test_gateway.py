"""The gateway cache against a real node: revocations of every scope reach the cache through
the stream, it resumes after the node restarts, resyncs when its resume point was compacted,
and the multi-worker logout example is refused by the other worker within milliseconds."""

import time

from examples.multi_worker_logout import run as multi_worker_logout
from sessiond_client import GatewayCache, SessionClient, pb


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
    assert cache.stats().events_applied >= 3
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
    client.revoke("t", pb.REVOKE_SCOPE_SESSION, s.session_id)
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
