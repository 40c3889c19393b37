"""The session calls against a real node, and stock reflection (grpcio-reflection speaks
v1alpha)."""

import time
import uuid

import grpc
import pytest
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from sessiond_client import SessionClient, Unavailable, pb
from sessiond_client.client import new_request_id


def test_create_rotate_lookup_revoke_list_count(node):
    with SessionClient([node.endpoint]) as client:
        created = client.create_session("acme", "alice", attributes={"role": "admin"})
        assert created.outcome == pb.CREATE_SESSION_OUTCOME_CREATED
        sid = created.session.session_id

        rotated = client.rotate(created.refresh_token)
        assert rotated.outcome == pb.ROTATE_OUTCOME_ROTATED
        assert rotated.session.generation == 1

        found = client.lookup("acme", refresh_token=rotated.refresh_token)
        assert found.outcome == pb.LOOKUP_OUTCOME_FOUND
        assert found.session.session_id == sid
        assert found.session.attributes["role"] == "admin"
        valid = client.validate_access_token("acme", rotated.access_token)
        assert valid.outcome == pb.ACCESS_TOKEN_OUTCOME_VALID
        assert client.touch("acme", sid).outcome == pb.TOUCH_OUTCOME_TOUCHED

        client.create_session("acme", "alice")
        assert client.count_sessions("acme", "alice") == 2
        assert len(list(client.list_sessions("acme", "alice", page_size=1))) == 2

        revoked = client.revoke("acme", pb.REVOKE_SCOPE_USER, "alice")
        assert revoked.revoked_count == 2
        assert client.count_sessions("acme") == 0
        gone = client.lookup("acme", session_id=sid)
        assert gone.session.status == pb.SESSION_STATUS_REVOKED
        revoked_list, revision = client.list_revoked("acme")
        assert {s.session_id for s in revoked_list} >= {sid}
        assert revision >= revoked.revision

        with pytest.raises(grpc.RpcError) as invalid:
            client.create_session("acme", "")
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert invalid.value.details().startswith("user_id")


def test_a_retired_token_presented_again_is_a_replay(node):
    with SessionClient(node.endpoint) as client:
        created = client.create_session("acme", "bob")
        client.rotate(created.refresh_token)
        # Outside a grace window of 0 this would be a retry; the default window is 10 s, so
        # the same token within it returns the same successor.
        again = client.rotate(created.refresh_token)
        assert again.outcome == pb.ROTATE_OUTCOME_ROTATED and again.retried


def test_an_unreachable_node_is_skipped(node, tmp_path):
    from conftest import free_port

    dead = f"127.0.0.1:{free_port()}"
    with SessionClient([dead, node.endpoint], timeout=2.0) as client:
        assert client.create_session("t", "u").outcome == pb.CREATE_SESSION_OUTCOME_CREATED
    with SessionClient([dead], timeout=1.0) as client:
        with pytest.raises(Unavailable):
            client.count_sessions("t")


def test_stock_reflection_client_lists_and_describes_services(node):
    with grpc.insecure_channel(node.endpoint) as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = set(db.get_services())
        assert {"sessiond.v1.SessionAuthority", "sessiond.v1.Cluster"} <= services
        described = db.FindFileContainingSymbol("sessiond.v1.SessionAuthority")
        methods = {m.name for s in described.service for m in s.method}
        assert {"CreateSession", "Rotate", "WatchRevocations"} <= methods


def test_fresh_request_ids_are_uuid_v7_carrying_the_time():
    before = time.time_ns() // 1_000_000
    ids = [new_request_id() for _ in range(100)]
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == len(ids)
    for text in ids:
        value = uuid.UUID(text)
        assert value.version == 7 and value.variant == uuid.RFC_4122
        assert before <= value.int >> 80 <= after
