"""The multi-worker logout bug, fixed.

The seed's gateway ran several worker processes, each with its own session cache: a logout
handled by worker A cleared A's cache only, and worker B kept accepting the session until
its cache entry expired (minutes). Here each worker's GatewayCache follows sessiond's
revocation stream, so a logout handled by worker A is refused by worker B within
milliseconds.

    python examples/multi_worker_logout.py 127.0.0.1:50051
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import time

from sessiond_client import GatewayCache, SessionClient, pb


def worker(endpoint: str, tenant: str, session_id: str, role: str, conn) -> None:
    """One gateway worker: its own client and cache, answering the parent's commands."""
    client = SessionClient(endpoint)
    cache = GatewayCache(client, ttl_seconds=600)
    cache.follow()
    conn.send(cache.is_active(tenant, session_id))  # warms the cache: True
    while True:
        command = conn.recv()
        if command == "logout" and role == "A":
            client.revoke(tenant, pb.REVOKE_SCOPE_SESSION, session_id)
            conn.send(time.monotonic())
        elif command == "wait-refused":
            while cache.is_active(tenant, session_id):
                time.sleep(0.0005)
            conn.send((time.monotonic(), cache.stats().misses))
        elif command == "stop":
            cache.stop()
            client.close()
            return


def run(endpoint: str) -> float:
    """Runs the scenario; returns how many ms after A's logout B refused the session."""
    tenant = "example"
    with SessionClient(endpoint) as client:
        session_id = client.create_session(tenant, "carol").session.session_id
    ctx = mp.get_context("spawn")
    pipes = {}
    for role in ("A", "B"):
        parent, child = ctx.Pipe()
        ctx.Process(target=worker, args=(endpoint, tenant, session_id, role, child)).start()
        pipes[role] = parent
    assert all(p.recv() for p in pipes.values()), "both workers accept the session first"
    pipes["B"].send("wait-refused")
    pipes["A"].send("logout")
    logged_out = pipes["A"].recv()
    refused, misses = pipes["B"].recv()
    for p in pipes.values():
        p.send("stop")
    assert misses == 1, "worker B answered from its cache, not by asking the authority again"
    return max(0.0, (refused - logged_out) * 1000)


if __name__ == "__main__":
    ms = run(sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051")
    print(f"worker B refused the session {ms:.1f} ms after worker A's logout")
