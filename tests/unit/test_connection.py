"""The socket-free client half of the protocol, fed frames by hand and by the core."""

from __future__ import annotations

import pytest

from plugboard.protocol import Notification, Response, encode, encode_value
from plugboard.protocol.changes import ChangesBatch
from plugboard.protocol.connection import (
    Changes,
    ClientConnection,
    Failure,
    Malformed,
    Notified,
    Reply,
)
from plugboard.protocol.errors import ProtocolError
from plugboard.protocol.values import Timestamp

from .harness import Harness

T = Timestamp(1, 0)


def changes(**params: object) -> bytes:
    return encode(Notification("changes", dict(params)))


def subscribed(conn: ClientConnection, sid: int = 7) -> None:
    msgid, _ = conn.request("subscribe", {"pattern": "a/#"})
    assert isinstance(conn.receive(encode(Response(msgid, None, {"sub": sid}))), Reply)


def test_replies_are_matched_and_hello_sets_the_session() -> None:
    conn = ClientConnection("client")
    msgid, _ = conn.hello()
    reply = conn.receive(encode(Response(msgid, None, {
        "instance": "i1", "session": "s1", "heartbeat_ms": 500, "timeout_ms": 1500,
        "max_frame": 4096})))
    assert isinstance(reply, Reply) and reply.method == "hello"
    assert (conn.session, conn.heartbeat, conn.session_timeout, conn.max_frame) == \
        ("s1", 0.5, 1.5, 4096)
    assert conn.receive(encode(Response(msgid, None, {}))) is None  # answered already
    with pytest.raises(ProtocolError) as caught:
        conn.request("set", {"value": b"x" * 5000})
    assert caught.value.code == "too_large"


def test_hello_required_means_the_session_is_lost() -> None:
    conn = ClientConnection()
    conn.session = "s1"
    msgid, _ = conn.request("get", {"target": "a/b"})
    failure = conn.receive(encode(Response(msgid, {"code": "hello_required",
                                                   "message": "who?"}, None)))
    assert isinstance(failure, Failure) and failure.session_lost and conn.session is None


def test_batches_carry_names_once_and_a_seq_jump_is_reported() -> None:
    conn = ClientConnection()
    subscribed(conn)
    first = conn.receive(changes(sub=7, seq=1, items=[[1, 10, 1, T, "a/x"], [2, 20, 1, T,
                                                                             "a/y"]]))
    assert isinstance(first, Changes) and first.names == ["a/x", "a/y"] and first.lost == 0
    later = conn.receive(changes(sub=7, seq=4, items=[[2, 21, 2, T]], removed=[[1, "a/x"]]))
    assert isinstance(later, Changes) and later.names == ["a/y"] and later.lost == 2
    assert later.batch.removed == [[1, "a/x"]]
    assert conn.receive(changes(sub=99, seq=1, items=[])) is None  # not ours
    conn.unsubscribed(7)
    assert conn.receive(changes(sub=7, seq=5, items=[])) is None


@pytest.mark.parametrize("params", [
    {"sub": "7", "seq": 1, "items": []},
    {"sub": 7, "seq": 1, "items": [[1, 2, 3]]},
    {"sub": 7, "seq": 1, "items": [["a", 2, 3, T]]},
    {"sub": 7, "seq": 1, "items": [], "removed": [[1]]},
    {"sub": 7, "seq": 1, "items": [], "gap": "many"},
])
def test_a_malformed_batch_is_reported_not_raised(params: dict[str, object]) -> None:
    conn = ClientConnection()
    subscribed(conn)
    event = conn.receive(changes(**params))
    assert isinstance(event, Malformed) and "changes" in event.error.message


def test_the_batch_shape_round_trips() -> None:
    batch = ChangesBatch(3, 9, [[1, "v", 2, T]], synced=True, removed=[[4, "a/z"]], gap=2)
    assert ChangesBatch.from_params(batch.to_params()) == batch
    assert "coalesced" not in batch.to_params() and "snapshot" not in batch.to_params()


@pytest.mark.parametrize("count", [0, 1, 15, 16, 1000, 70_000])
def test_a_frame_with_shared_items_is_the_plain_encoding(count: int) -> None:
    items = [[h, f"v{h}" * (h % 3), h + 1, T] + ([f"a/{h}"] if h % 7 == 0 else [])
             for h in range(count)]
    packed = [None if len(item) == 5 else encode_value(item) for item in items]
    batch = ChangesBatch(3, 9, items, synced=True, removed=[[4, "a/z"]], coalesced=5,
                         packed=packed)
    plain = encode(Notification("changes", batch.to_params()))
    assert batch.frame() == plain
    batch.packed = None
    assert batch.frame() == plain


def test_shutdown_ends_the_session_and_other_notifications_pass_through() -> None:
    conn = ClientConnection()
    conn.session = "s1"
    note = conn.receive(encode(Notification("shutdown", {"reason": "stopping"})))
    assert isinstance(note, Notified) and conn.session is None
    assert isinstance(conn.receive(b"\xc1"), Malformed)


def test_declarations_are_restored_with_the_last_value_written() -> None:
    h = Harness()
    h.plugin(b"p", "a")
    conn = h.conns[b"p"]
    params = {"name": "a/x", "type": "int", "value": 1}
    conn.declaring("a/x", params, h.call(b"p", "declare", **params))
    conn.wrote([("a/x", 5), ("a/unknown", 6)])
    assert list(conn.restore()) == [("declare", {"name": "a/x", "type": "int", "value": 5})]


def test_a_declaration_is_restored_with_the_newest_write_not_refused() -> None:
    conn = ClientConnection("plugin", "a")
    conn.declaring("a/x", {"name": "a/x", "type": "int"}, {"handle": 1})
    conn.declaring("a/y", {"name": "a/y", "type": "int"}, {"handle": 2, "value": 0})

    def restored() -> dict[str, object]:
        return {params["name"]: params.get("value") for _, params in conn.restore()}

    first = conn.wrote([("a/x", 1), ("a/y", 1)])
    second = conn.wrote([("a/y", 2)])
    conn.refused(second)
    conn.acknowledged(first)
    assert restored() == {"a/x": 1, "a/y": 1}
    third = conn.wrote([("a/y", 3)])
    fourth = conn.wrote([("a/y", 4)])
    conn.wrote([("a/y", 5)], answered=True)  # a set_nowait: no reply will come
    conn.refused(fourth)
    conn.refused(third)
    assert restored() == {"a/x": 1, "a/y": 5}
    conn.wrote([("a/x", 9)])  # unanswered when the connection is lost: still meant
    assert restored() == {"a/x": 9, "a/y": 5}
    refused = conn.wrote([("a/x", 10), ("a/y", 10)])
    conn.refused(refused)
    assert restored() == {"a/x": 9, "a/y": 5}


def test_a_set_many_keeps_one_write_per_property_its_last() -> None:
    conn = ClientConnection("plugin", "a")
    conn.declaring("a/x", {"name": "a/x", "type": "int"}, {"handle": 1, "value": 0})
    conn.declaring("a/y", {"name": "a/y", "type": "int"}, {"handle": 2, "value": 0})
    kept = conn.wrote([("a/x", 1), ("a/y", 7), ("a/x", 2), ("a/x", 3)])
    assert [(name, write.value) for name, write in kept] == [("a/x", 3), ("a/y", 7)]
    refused = conn.wrote([("a/x", 4), ("a/x", 5)])
    conn.refused(refused)
    conn.acknowledged(kept)
    assert {params["name"]: params["value"] for _, params in conn.restore()} == {
        "a/x": 3, "a/y": 7}


def test_a_refused_redeclaration_falls_back_to_the_value_the_broker_confirmed() -> None:
    conn = ClientConnection("plugin", "a")
    conn.declaring("a/x", {"name": "a/x", "type": "int"}, {"handle": 1, "value": 0})
    conn.declaring("a/y", {"name": "a/y", "type": "int"}, {"handle": 2, "value": 0})
    conn.acknowledged(conn.wrote([("a/x", 4)]))  # its reply said applied
    conn.wrote([("a/x", 7)], answered=True)  # a set_nowait: never confirmed
    conn.acknowledged(conn.wrote([("a/y", 5)]), applied=False)  # its reply never came
    conn.wrote([("a/y", 6)])  # unanswered when the connection dropped
    assert {p["name"]: p["value"] for _, p in conn.restore()} == {"a/x": 7, "a/y": 6}
    assert conn.confirmed("a/x") == {"name": "a/x", "type": "int", "value": 4}
    assert conn.confirmed("a/y") == {"name": "a/y", "type": "int", "value": 0}
    assert conn.confirmed("a/x") is None  # taken: the fallback is what is declared now
    assert {p["name"]: p["value"] for _, p in conn.restore()} == {"a/x": 4, "a/y": 0}
    conn.acknowledged(conn.wrote([("a/x", 8)]))
    assert [p["value"] for _, p in conn.restore()][0] == 8
    assert conn.confirmed("a/x") is None  # 8 was confirmed: nothing to fall back to


def test_the_items_of_one_set_many_share_one_timestamp() -> None:
    h = Harness()
    h.plugin(b"p", "a")
    h.call(b"p", "declare", name="a/x", type="int", value=0)
    h.call(b"p", "declare", name="a/y", type="int", value=0)
    h.client(b"c")
    h.call(b"c", "subscribe", pattern="a/#", policy="all", current=False)
    h.clock.advance(1)
    h.call(b"p", "set_many", items=[["a/x", 1], ["a/y", 2]])
    (note,) = h.notes(b"c")
    assert [item[1] for item in note["items"]] == [1, 2]
    assert note["items"][0][3] == note["items"][1][3]
