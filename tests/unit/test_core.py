"""The broker core driven without sockets, on a fake clock."""


import gc
from typing import Any

import msgpack
import pytest

from plugboard.broker.subscriptions import BATCH_BYTES
from plugboard.protocol import Duration, RemoteError, Timestamp
from plugboard.protocol.codec import (
    Notification,
    Request,
    Response,
    decode,
    encode,
    encode_value,
)

from .harness import REMOVED, Harness

P, Q, C, A = b"plugin-p", b"plugin-q", b"client", b"admin"


@pytest.fixture
def h() -> Harness:
    harness = Harness()
    harness.plugin(P, "p")
    harness.plugin(Q, "q")
    harness.client(C)
    harness.client(A, role="admin", token="secret")
    return harness


def error_of(h: Harness, peer: bytes, method: str, **params: object) -> RemoteError:
    with pytest.raises(RemoteError) as caught:
        h.call(peer, method, **params)
    return caught.value


# -- handshake -------------------------------------------------------------------------

def test_requests_before_hello_get_hello_required() -> None:
    h = Harness()
    assert error_of(h, b"x", "get", target="system/broker/version").code == "hello_required"


@pytest.mark.parametrize("params,code", [
    ({"versions": [7], "role": "client"}, "unsupported_version"),
    ({"versions": ["1"], "role": "client"}, "invalid_params"),
    ({"versions": [True], "role": "client"}, "invalid_params"),
    ({"versions": [1], "role": "emperor"}, "invalid_params"),
    ({"role": "client"}, "invalid_params"),
    ({"versions": [1], "role": "plugin"}, "invalid_params"),
    ({"versions": [1], "role": "plugin", "name": "Bad Name"}, "invalid_name"),
    ({"versions": [1], "role": "plugin", "name": "system"}, "forbidden"),
    ({"versions": [1], "role": "admin", "token": "wrong"}, "unauthorized"),
    ({"versions": [1], "role": "admin"}, "unauthorized"),
])
def test_bad_hello(params: dict, code: str) -> None:
    assert error_of(Harness(), b"x", "hello", **params).code == code


def test_hello_reply_and_repeated_hello(h: Harness) -> None:
    reply = h.client(b"new")
    assert reply["version"] == 1 and reply["instance"] == h.core.instance
    assert reply["heartbeat_ms"] > 0 and reply["max_frame"] > 0
    assert error_of(h, b"new", "hello", versions=[1], role="client").code == "invalid_state"


def test_second_plugin_with_a_taken_name_is_refused(h: Harness) -> None:
    err = error_of(h, b"other", "hello", versions=[1], role="plugin", name="p")
    assert err.code == "name_taken"


def test_a_managed_plugin_needs_its_launch_token() -> None:
    h = Harness()
    h.client(b"agent", role="agent", name="host", token="secret",
             plugins=[{"contract": {"name": "m"}, "token": "tok"}])
    for token in (None, "wrong"):
        params = {"versions": [1], "role": "plugin", "name": "m"}
        if token:
            params["token"] = token
        assert error_of(h, b"x", "hello", **params).code == "unauthorized"
    h.call(b"x", "hello", versions=[1], role="plugin", name="m", token="tok")
    h.call(b"agent", "agent.exited", name="m", reason="gone")  # the launch is over
    err = error_of(h, b"y", "hello", versions=[1], role="plugin", name="m", token="tok")
    assert err.code == "unauthorized"


def test_plugin_gets_init_and_becomes_ready() -> None:
    h = Harness()
    h.raw(P, encode(Request(7, "hello", {"versions": [1], "role": "plugin", "name": "p"})))
    reply, init = h.inbox[P]  # PROTOCOL.md: init comes after the hello reply
    assert isinstance(reply, Response) and reply.msgid == 7 and reply.error is None
    assert isinstance(init, Request) and init.method == "init"
    (init,) = h.take_requests(P, "init")
    assert init.params["name"] == "p" and init.params["config"] == {}
    assert h.core.plugins["p"].state.value == "connected"
    h.core.receive(P, [encode(Response(init.msgid, None, {}))])
    assert h.core.plugins["p"].state.value == "ready"


def test_an_init_answer_no_decoder_reads_fails_init_at_once() -> None:
    """The broker told the plugin what was wrong, and did not wait out init's timeout:
    a plugin that answers init with an error has its session ended."""
    h = Harness()
    h.raw(P, encode(Request(7, "hello", {"versions": [1], "role": "plugin", "name": "p"})))
    (init,) = h.take_requests(P, "init")
    h.raw(P, msgpack.packb([1, init.msgid, None, {1: 2}]))
    (told,) = h.notes(P, "error")
    assert told["code"] == "malformed"
    assert "p" not in h.core.plugins


# -- declare and write rules --------------------------------------------------------------

def test_declare_only_in_own_namespace(h: Harness) -> None:
    err = error_of(h, P, "declare", name="q/x", type="int")
    assert err.code == "forbidden" and "p/" in err.message
    assert error_of(h, C, "declare", name="p/x", type="int").code == "forbidden"
    assert error_of(h, P, "declare", name="p/x", type="complex").code == "invalid_params"
    assert error_of(h, P, "declare", name="p//x", type="int").code == "invalid_name"
    assert error_of(h, P, "declare", name="p/s", type="str", min=1).code == "invalid_params"


def test_redeclare_same_type_keeps_handle_other_type_is_refused(h: Harness) -> None:
    first = h.call(P, "declare", name="p/x", type="int", value=3)
    again = h.call(P, "declare", name="p/x", type="int", unit="W")
    assert again["handle"] == first["handle"] and again["value"] == 3
    err = error_of(h, P, "declare", name="p/x", type="str")
    assert err.code == "type_mismatch" and "int" in err.message and "str" in err.message


@pytest.mark.parametrize("decl,value,code,words", [
    ({"type": "int"}, "3", "type_mismatch", "expected int, got str"),
    ({"type": "int"}, True, "type_mismatch", "got bool"),
    ({"type": "int"}, 1.5, "type_mismatch", "got float"),
    ({"type": "float", "min": 0, "max": 10}, 11, "out_of_range", "above the maximum"),
    ({"type": "float", "min": 0}, -0.5, "out_of_range", "below the minimum"),
    ({"type": "str", "enum": ["on", "off"]}, "auto", "not_in_enum", "not one of"),
    ({"type": "duration", "max": Duration(10**9)}, Duration(2 * 10**9), "out_of_range", "max"),
    ({"type": "timestamp"}, 5, "type_mismatch", "expected timestamp"),
])
def test_writes_are_checked_against_the_declaration(
    h: Harness, decl: dict, value: object, code: str, words: str,
) -> None:
    h.call(P, "declare", name="p/x", **decl)
    err = error_of(h, P, "set", target="p/x", value=value)
    assert err.code == code and words in err.message and "p/x" in err.message


def test_int_written_to_float_is_stored_as_float(h: Harness) -> None:
    h.call(P, "declare", name="p/f", type="float")
    h.call(P, "set", target="p/f", value=2)
    value = h.call(C, "get", target="p/f")["value"]
    assert value == 2.0 and isinstance(value, float)


def test_who_may_write(h: Harness) -> None:
    h.call(P, "declare", name="p/own", type="int")
    h.call(P, "declare", name="p/clients", type="int", writable_by=["clients"])
    h.call(P, "declare", name="p/for_q", type="int", writable_by=["q"])
    h.call(P, "declare", name="p/any", type="int", writable_by="*")
    assert error_of(h, C, "set", target="p/own", value=1).code == "forbidden"
    assert error_of(h, Q, "set", target="p/own", value=1).code == "forbidden"
    h.call(A, "set", target="p/own", value=1)
    h.call(C, "set", target="p/clients", value=1)
    assert error_of(h, Q, "set", target="p/clients", value=1).code == "forbidden"
    h.call(Q, "set", target="p/for_q", value=1)
    assert error_of(h, C, "set", target="p/for_q", value=1).code == "forbidden"
    h.call(C, "set", target="p/any", value=1)
    h.call(Q, "set", target="p/any", value=2)
    err = error_of(h, A, "set", target="system/broker/sessions", value=9)
    assert err.code == "forbidden" and "read-only" in err.message


def test_set_many_is_all_or_nothing(h: Harness) -> None:
    h.call(P, "declare", name="p/a", type="int", value=0)
    h.call(P, "declare", name="p/b", type="int", value=0, max=5)
    err = error_of(h, P, "set_many", items=[["p/a", 1], ["p/b", 6]])
    assert err.code == "out_of_range" and "item 1" in err.message
    assert h.call(C, "get", target="p/a")["value"] == 0
    assert h.call(P, "set_many", items=[["p/a", 1], ["p/b", 2]])["revisions"] == [2, 2]


def test_set_many_gives_each_item_the_revision_its_write_made(h: Harness) -> None:
    """Items that name one property are its writes in order, each with its revision."""
    h.call(P, "declare", name="p/a", type="int", value=0)
    assert h.call(P, "set_many", items=[["p/a", 1], ["p/a", 2], ["p/a", 3]])[
        "revisions"] == [2, 3, 4]
    assert h.call(C, "get", target="p/a")["value"] == 3


def test_handles_and_stale_handles(h: Harness) -> None:
    handle = h.call(P, "declare", name="p/x", type="int", value=1)["handle"]
    assert h.call(C, "get", target=handle)["name"] == "p/x"
    h.call(P, "set", target=handle, value=2)
    h.call(P, "delete", target=handle)
    assert error_of(h, C, "get", target=handle).code == "stale_handle"
    new = h.call(P, "declare", name="p/y", type="int")["handle"]
    assert new != handle  # the slot is reused with a new generation
    assert error_of(h, P, "set", target=handle, value=3).code == "stale_handle"
    assert error_of(h, C, "get", target="p/x").code == "not_found"
    assert error_of(h, C, "get", target=[1]).code == "invalid_params"


def test_list_pages_by_name(h: Harness) -> None:
    for i in range(5):
        h.call(P, "declare", name=f"p/n{i}", type="int")
    page = h.call(C, "list", pattern="p/#", limit=2)
    assert [i["name"] for i in page["items"]] == ["p/n0", "p/n1"] and page["more"]
    rest = h.call(C, "list", pattern="p/#", after="p/n1")
    assert [i["name"] for i in rest["items"]] == ["p/n2", "p/n3", "p/n4"] and not rest["more"]


def test_a_list_page_ends_at_about_a_mebibyte_of_values(h: Harness) -> None:
    """Its reply does not grow with the values stored: fewer items than the limit, more
    true, and paging on gets every item once."""
    big = b"v" * 400_000
    for i in range(5):
        h.call(P, "declare", name=f"p/big{i}", type="bytes", value=big)
    first = h.call(C, "list", pattern="p/#", limit=1000)
    assert [i["name"] for i in first["items"]] == ["p/big0", "p/big1", "p/big2"]
    assert first["more"]
    rest = h.call(C, "list", pattern="p/#", after="p/big2")
    assert [i["name"] for i in rest["items"]] == ["p/big3", "p/big4"] and not rest["more"]
    assert all(item["value"] == big for item in first["items"] + rest["items"])


# -- subscriptions ---------------------------------------------------------------------------

def test_snapshot_then_live_changes_then_removal(h: Harness) -> None:
    h.call(P, "declare", name="p/a", type="int", value=1)
    reply = h.call(C, "subscribe", pattern="p/#")
    assert reply["matched"] == 1
    (snapshot,) = h.notes(C)
    assert snapshot["snapshot"] and snapshot["synced"] and snapshot["items"][0][4] == "p/a"
    h.call(P, "set", target="p/a", value=2)
    h.call(P, "declare", name="p/b", type="str", value="x")
    h.call(P, "bye")
    assert h.changes(C) == [("p/a", 2), ("p/b", "x"), ("p/a", REMOVED), ("p/b", REMOVED)]
    assert error_of(h, C, "get", target="p/a").code == "not_found"


@pytest.mark.parametrize("policy", ["latest", "all"])
def test_a_property_declared_again_comes_after_its_removal(policy: str) -> None:
    h = Harness()
    h.plugin(P, "p")
    h.client(C)
    h.call(C, "subscribe", pattern="p/#", current=False, policy=policy, min_interval_ms=100)
    h.call(P, "declare", name="p/a", type="int", value=1)
    h.call(P, "bye")  # p/a goes, and comes back under a new handle in the same interval
    h.plugin(P, "p")
    h.call(P, "declare", name="p/a", type="int", value=2)
    h.clock.advance(0.2)
    h.pump()
    assert h.changes(C) == [("p/a", 1), ("p/a", REMOVED), ("p/a", 2)]


def test_batches_carry_sequence_numbers_and_names_once(h: Harness) -> None:
    h.call(P, "declare", name="p/a", type="int", value=0)
    sub = h.call(C, "subscribe", pattern="p/a", current=False)["sub"]
    for value in (1, 2):
        h.call(P, "set", target="p/a", value=value)
    first, second = h.notes(C)
    assert (first["sub"], first["seq"], second["seq"]) == (sub, 1, 2)
    assert len(first["items"][0]) == 5 and len(second["items"][0]) == 4


def test_changes_go_out_ahead_of_other_peers_replies_but_after_their_own(
        h: Harness) -> None:
    h.call(P, "declare", name="p/a", type="int", value=0)
    h.call(C, "subscribe", pattern="p/a", current=False)
    h.core.receive(P, [encode_request("set", target="p/a", value=1)])
    h.core.receive(C, [encode_request("get", target="p/a")])
    h.core.tick()
    order = [(peer, decode(frame)) for peer, frame in h.core.flush()]
    kinds = [(peer, type(message).__name__) for peer, message in order]
    # C's reply precedes C's changes (its own order); P's reply waits behind both.
    assert kinds == [(C, "Response"), (C, "Notification"), (P, "Response")]


def test_latest_coalesces_within_a_turn_and_reports_it(h: Harness) -> None:
    h.call(P, "declare", name="p/a", type="int", value=0)
    h.call(C, "subscribe", pattern="p/a", current=False)
    for value in range(1, 6):
        h.core.receive(P, [encode_request("set", target="p/a", value=value)])
    h.pump()
    (note,) = h.notes(C)
    assert [i[1] for i in note["items"]] == [5] and note["coalesced"] == 4


def test_all_keeps_every_change_in_order_and_counts_overflow(h: Harness) -> None:
    h.call(P, "declare", name="p/a", type="int", value=0)
    h.call(C, "subscribe", pattern="p/a", current=False, policy="all", queue_limit=3)
    for value in range(1, 6):
        h.core.receive(P, [encode_request("set", target="p/a", value=value)])
    h.pump()
    (note,) = h.notes(C)
    assert [i[1] for i in note["items"]] == [1, 2, 3] and note["gap"] == 2


def test_min_interval_holds_changes_until_due(h: Harness) -> None:
    h.call(P, "declare", name="p/a", type="int", value=0)
    h.call(C, "subscribe", pattern="p/a", current=False, min_interval_ms=500)
    h.call(P, "set", target="p/a", value=1)
    assert [n["items"][0][1] for n in h.notes(C)] == [1]
    h.call(P, "set", target="p/a", value=2)
    h.call(P, "set", target="p/a", value=3)
    assert h.notes(C) == []
    h.core.tick()
    assert h.core.next_deadline() <= h.clock.now + 0.5
    h.clock.advance(0.5)
    h.pump()
    assert [n["items"][0][1] for n in h.notes(C)] == [3]


def test_deadband_suppresses_small_numeric_changes(h: Harness) -> None:
    h.call(P, "declare", name="p/t", type="float", value=20.0)
    h.call(C, "subscribe", pattern="p/t", deadband=0.5)
    h.notes(C)
    for value in (20.2, 20.4, 20.6, 20.7, 19.9):
        h.call(P, "set", target="p/t", value=value)
    assert [v for _, v in h.changes(C)] == [20.6, 19.9]


@pytest.mark.parametrize("params,said", [
    ({"deadband": float("nan")}, "deadband must be a finite number >= 0"),
    ({"deadband": float("inf")}, "deadband must be a finite number >= 0"),
    ({"deadband": -1}, "deadband must be a finite number >= 0"),
    ({"min_interval_ms": 3_600_001}, "min_interval_ms must be 0..3600000"),
    ({"min_interval_ms": -1}, "min_interval_ms must be 0..3600000"),
])
def test_subscription_options_out_of_range_are_refused(
        h: Harness, params: dict[str, Any], said: str) -> None:
    err = error_of(h, C, "subscribe", pattern="p/#", **params)
    assert err.code == "invalid_params" and said in err.message, err


@pytest.mark.parametrize("meta,said", [
    ({"type": "float", "min": float("nan")}, "min must be a number, not NaN"),
    ({"type": "int", "writable_by": ["Bad Name"]},
     "writable_by: 'Bad Name' is not a plugin name, plugins, clients or *"),
    ({"type": "int", "writable_by": "system"}, "writable_by: 'system' is not a plugin"),
])
def test_a_declaration_that_could_never_apply_is_refused(
        h: Harness, meta: dict[str, Any], said: str) -> None:
    err = error_of(h, P, "declare", name="p/x", **meta)
    assert err.code == "invalid_params" and said in err.message, err


def test_a_negative_handle_is_refused_as_one(h: Harness) -> None:
    err = error_of(h, C, "get", target=-1)
    assert err.code == "invalid_params" and "-1 is not a handle" in err.message


def test_snapshot_of_100k_properties_arrives_complete_in_chunks() -> None:
    h = Harness()
    h.plugin(P, "p")
    h.client(C)
    for i in range(100_000):
        h.core._declare(h.core.plugins["p"], {"name": f"p/n{i}", "type": "int", "value": i})
    h.pump()
    h.call(C, "subscribe", pattern="p/#")
    notes = h.notes(C)
    # Batches close at 1000 items or about BATCH_BYTES, whichever comes first.
    assert len(notes) >= 100 and all(len(n["items"]) <= 1000 for n in notes)
    assert all(len(encode_value(n)) < BATCH_BYTES + 4096 for n in notes)
    assert sum(len(n["items"]) for n in notes) == 100_000
    assert [n["seq"] for n in notes] == list(range(1, len(notes) + 1)) and notes[-1]["synced"]
    assert not any(n.get("synced") for n in notes[:-1])


def test_a_set_touches_only_its_own_subscribers() -> None:
    h = Harness(max_subscriptions=20_000)
    h.plugin(P, "p")
    h.client(C)
    for i in range(10_000):
        h.call(C, "subscribe", pattern=f"other/{i}/#", current=False)
    h.call(C, "subscribe", pattern="p/+", current=False)
    h.call(P, "declare", name="p/a", type="int", value=0)
    prop = h.core.store.by_name["p/a"]
    assert [s.pattern for s in prop.subscriptions] == ["p/+"]


def test_unsubscribe_stops_changes(h: Harness) -> None:
    h.call(P, "declare", name="p/a", type="int", value=0)
    sub = h.call(C, "subscribe", pattern="#", current=False)["sub"]
    h.call(C, "unsubscribe", sub=sub)
    h.call(P, "set", target="p/a", value=1)
    assert h.notes(C) == []
    assert error_of(h, C, "unsubscribe", sub=sub).code == "not_found"


# -- sessions ending ------------------------------------------------------------------------

def test_silent_session_expires_and_its_properties_go(h: Harness) -> None:
    h.call(P, "declare", name="p/a", type="int", value=1)
    h.call(C, "subscribe", pattern="p/#", current=False)
    h.clock.advance(4)
    h.call(C, "ping")  # the client keeps talking, the plugin does not
    h.clock.advance(3)
    h.pump()
    assert "p" not in h.core.plugins and "p/a" not in h.core.store.by_name
    assert h.changes(C) == [("p/a", REMOVED)]
    assert C in h.core.sessions
    # The driver is told to hang up on the silent peer, once; not on the other.
    silent = h.core.take_silent()
    assert P in silent and C not in silent and h.core.take_silent() == []
    h.core.peer_gone(C, "connection closed")  # a closed connection is not hung up on
    assert h.core.take_silent() == []


def test_peer_gone_ends_the_session(h: Harness) -> None:
    h.call(P, "declare", name="p/a", type="int")
    h.core.peer_gone(P, "connection closed")
    assert "p/a" not in h.core.store.by_name and P not in h.core.sessions


def test_shutdown_sends_end_and_completes_on_replies(h: Harness) -> None:
    h.core.begin_shutdown()
    h.pump()
    assert not h.core.shutdown_complete
    for peer in (P, Q):
        (end,) = h.take_requests(peer, "end")
        h.core.receive(peer, [encode(Response(end.msgid, None, {}))])
    assert h.core.shutdown_complete
    assert h.notes(C, "shutdown")
    assert error_of(h, b"late", "hello", versions=[1], role="client").code == "shutting_down"


def test_unanswered_end_still_ends_the_plugin(h: Harness) -> None:
    h.core.begin_shutdown()
    h.pump()
    h.clock.advance(h.core.config.end_timeout_s + 0.1)
    h.call(C, "ping")
    h.call(A, "ping")
    h.pump()
    assert h.core.shutdown_complete


# -- messages ---------------------------------------------------------------------------------

def test_send_to_plugin_and_publish_to_listeners(h: Harness) -> None:
    h.call(C, "send", to="p", payload=b"\x01\x02", topic="cmd/go")
    (message,) = h.notes(P, "message")
    assert message == {"from": h.core.sessions[C].sid, "payload": b"\x01\x02", "topic": "cmd/go"}
    assert error_of(h, C, "send", to="nobody", payload=b"").code == "not_found"
    assert error_of(h, C, "send", to="p", payload="text").code == "invalid_params"
    listen = h.call(Q, "listen", pattern="alerts/+")["listen"]
    assert h.call(P, "publish", topic="alerts/fire", payload=b"!")["delivered"] == 1
    assert h.call(P, "publish", topic="alerts/fire/x", payload=b"!")["delivered"] == 0
    (got,) = h.notes(Q, "message")
    assert got["from"] == "p" and got["listen"] == listen and got["topic"] == "alerts/fire"
    h.call(Q, "unlisten", listen=listen)
    assert h.call(P, "publish", topic="alerts/fire", payload=b"!")["delivered"] == 0


# -- bad input --------------------------------------------------------------------------------

def encode_request(method: str, **params: object) -> bytes:
    encode_request.msgid += 1  # type: ignore[attr-defined]
    return msgpack.packb([0, encode_request.msgid, method, params],  # type: ignore[attr-defined]
                         use_bin_type=True, default=lambda o: o)


encode_request.msgid = 10_000  # type: ignore[attr-defined]


@pytest.mark.parametrize("frame,code", [
    (b"\xc1", "malformed"),
    (msgpack.packb([0, 77, "set", "notamap"]), "invalid_message"),
    (msgpack.packb([0, 78, "frobnicate", {}]), "unknown_method"),
    (msgpack.packb([0, 79, "set", {"target": "a//b", "value": 1}]), "invalid_name"),
    (msgpack.packb([0, 80, "subscribe", {"pattern": "a/#/b"}]), "invalid_pattern"),
    (msgpack.packb([0, 81, "set", {"value": msgpack.ExtType(9, b"")}]), "unknown_ext"),
    (msgpack.packb([0, 82, "get", {}]), "invalid_params"),
    (b"\x91" * 50 + b"\xc0", "too_deep"),
])
def test_bad_frames_get_a_defined_error_and_the_core_keeps_serving(
    h: Harness, frame: bytes, code: str,
) -> None:
    h.raw(C, frame)
    replies = [m for m in h.inbox[C] if isinstance(m, (Response, Notification))]
    assert len(replies) == 1
    reply = replies[0]
    error = reply.error if isinstance(reply, Response) else reply.params
    assert error["code"] == code and error["message"]
    assert h.call(C, "ping")["instance"] == h.core.instance


def test_multipart_message_is_refused() -> None:
    h = Harness()
    h.core.receive(C, [b"a", b"b"])
    h.pump()
    (note,) = h.notes(C, "error")
    assert note["code"] == "invalid_message"


# -- system properties ----------------------------------------------------------------------

def test_system_properties_follow_the_broker(h: Harness) -> None:
    h.clock.advance(2)
    h.pump()

    def get(key: str) -> object:
        return h.call(C, "get", target=f"system/broker/{key}")["value"]

    assert get("sessions") == 4
    assert get("instance") == h.core.instance
    assert isinstance(get("started_at"), Timestamp)
    assert get("uptime") >= Duration(2 * 10**9)
    assert get("messages_in") > 0


def test_a_congested_peer_gets_its_backlog_first_and_its_changes_held_in_budget() -> None:
    h = Harness(peer_queue_bytes=4000)
    h.plugin(P, "p")
    h.client(C)
    h.call(P, "declare", name="p/x", type="bytes", value=b"")
    h.call(C, "subscribe", pattern="p/#", policy="all", current=False)
    session = h.core.sessions[C]
    refused = [encode(Notification("message", {"pad": b"x" * 600})) for _ in range(2)]
    h.core.blocked(C, refused)  # as the driver does when ZeroMQ says EAGAIN
    assert session.budget.used == sum(map(len, refused))
    for index in range(10):
        h.core.receive(P, [encode(Request(100 + index, "set", {"target": "p/x",
                                                               "value": b"z" * 500}))])
    out = [frame for peer, frame in h.core.flush() if peer == C]
    assert out == refused  # the backlog first; new changes held back meanwhile
    assert session.budget.used <= 4000 - 4000 // 4  # queued changes: three quarters at most
    h.pump()
    notes = h.notes(C)
    delivered = sum(len(n["items"]) for n in notes)
    assert delivered + sum(n.get("gap", 0) for n in notes) == 10 and delivered < 10
    assert h.core.drops == 10 - delivered == session.describe()["drops"]
    assert session.budget.used == 0


def test_a_set_sent_as_a_notification_is_applied_without_a_reply(h: Harness) -> None:
    h.call(P, "declare", name="p/x", type="int", value=0, max=10)
    h.call(C, "subscribe", pattern="p/x", current=False)
    for value in (1, 2, 3):
        h.core.receive(P, [encode(Notification("set", {"target": "p/x", "value": value}))])
    h.pump()
    assert [v for _, v in h.changes(C)][-1] == 3
    assert not [m for m in h.inbox[P] if isinstance(m, Response)]  # nothing answered
    h.core.receive(P, [encode(Notification("set", {"target": "p/x", "value": 11}))])
    h.core.receive(P, [encode(Notification("set_many", {"items": [["p/x", "a"]]}))])
    h.pump()
    errors = h.notes(P, "error")
    assert [(e["code"], e["method"]) for e in errors] == [("out_of_range", "set"),
                                                          ("type_mismatch", "set_many")]
    assert errors[0]["target"] == "p/x"
    assert h.call(C, "get", target="p/x")["value"] == 3
    h.core.receive(b"nobody", [encode(Notification("set", {"target": "p/x", "value": 1}))])
    h.pump()
    assert h.notes(b"nobody", "error")[0]["code"] == "unknown_method"


def test_once_flushed_nothing_is_due_until_a_timer(h: Harness) -> None:
    """The driver arms its timer from next_deadline() after flushing: a change that
    was waiting must not leave the deadline at "now" (an empty second pass)."""
    h.call(P, "declare", name="p/a", type="int", value=0)
    h.call(C, "subscribe", pattern="p/a", current=False)
    _, frame = h.conns[P].request("set", {"target": "p/a", "value": 1})
    h.core.receive(P, [frame])
    assert h.core.next_deadline() <= h.clock.now  # a batch waits to be flushed
    h.pump()
    assert h.core.next_deadline() > h.clock.now
    assert [n["items"][0][1] for n in h.notes(C)] == [1]


def test_writes_queued_by_one_subscriber_or_shared_by_several_read_the_same() -> None:
    """Under policy ``all`` a write queued by several subscribers is encoded once and
    spliced into each batch; one queued by a single subscriber is encoded with its
    batch. Both carry the same items, in one batch as in the other."""
    h = Harness()
    h.plugin(P, "p")
    h.call(P, "declare", name="p/shared", type="int", value=0)
    h.call(P, "declare", name="p/alone", type="str", value="")
    for peer, pattern in ((b"w1", "p/#"), (b"w2", "p/shared")):
        h.client(peer)
        h.call(peer, "subscribe", pattern=pattern, policy="all", current=False)
    for round_ in range(3):  # the first round's items carry names; later ones do not
        h.call(P, "set_many", items=[["p/shared", round_], ["p/alone", f"a{round_}"],
                                     ["p/shared", round_ + 10]])
    h.pump()

    def seen(peer: bytes) -> list[tuple[str, object, int]]:
        names: dict[int, str] = {}
        out = []
        for note in h.notes(peer):
            for item in note["items"]:
                if len(item) > 4:
                    names[item[0]] = item[4]
                out.append((names[item[0]], item[1], item[2]))
        return out

    everything = seen(b"w1")  # p/shared's items shared with w2, p/alone's its own
    assert [(name, value) for name, value, _ in everything] == [
        (name, value) for round_ in range(3)
        for name, value in (("p/shared", round_), ("p/alone", f"a{round_}"),
                            ("p/shared", round_ + 10))]
    assert seen(b"w2") == [entry for entry in everything if entry[0] == "p/shared"]


def test_the_message_path_leaves_no_garbage_cycles(h: Harness) -> None:
    """What a declaration, a write or a reply allocates is freed by reference counting.
    A cycle (compiled, a closure and its environment refer to each other) is left for
    the collector, which then runs and walks the young heap under load."""
    h.call(C, "subscribe", pattern="p/#", policy="all")
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for i in range(50):
            h.call(P, "declare", name=f"p/v{i}", type="int", value=0, min=0, unit="C")
            h.call(P, "set", target=f"p/v{i}", value=i)
            h.call(P, "set_many", items=[[f"p/v{i}", i + 1]])
            h.call(C, "get", target=f"p/v{i}")
            h.call(C, "ping")
        assert len(h.changes(C)) == 150  # each declared, set, then set again
        gc.collect()
        assert [type(o).__name__ for o in gc.garbage] == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def test_timestamp_ns_carries_each_write_time_as_nanoseconds() -> None:
    """A subscription made with ``timestamp_ns`` gets the same items, the time of each
    write as integer nanoseconds, under either policy and in its snapshot, however the
    write is shared with subscribers of the other form. A value of type timestamp
    stays a timestamp."""
    h = Harness()
    h.plugin(P, "p")
    handle = h.call(P, "declare", name="p/n", type="int", value=0)["handle"]
    h.call(P, "declare", name="p/t", type="timestamp", value=Timestamp(5, 6))
    forms = {b"e1": False, b"e2": False, b"n1": True, b"n2": True, b"nl": True}
    for peer, ns in forms.items():
        h.client(peer)
        h.call(peer, "subscribe", pattern="p/#", policy="latest" if peer == b"nl" else "all",
               timestamp_ns=ns)
    h.call(P, "set_many", items=[["p/n", 1], ["p/t", Timestamp(7, 8)]])
    h.call(P, "set", target="p/n", value=2)

    items = {peer: [item for note in h.notes(peer) for item in note["items"]]
             for peer in forms}

    def times(peer: bytes) -> dict[tuple[int, int], object]:
        """(handle, revision) -> the item's time, snapshot included."""
        return {(item[0], item[2]): item[3] for item in items[peer]}

    expected = times(b"e1")
    assert len(expected) == 5 and all(type(t) is Timestamp for t in expected.values())
    assert times(b"e2") == expected
    as_ns = {key: at.to_unix_nano() for key, at in expected.items()}  # type: ignore[attr-defined]
    assert times(b"n1") == as_ns and times(b"n2") == as_ns
    latest = times(b"nl")
    assert latest and all(as_ns[key] == at for key, at in latest.items())
    assert [item[1] for item in items[b"n1"]] == [item[1] for item in items[b"e1"]]
    assert Timestamp(7, 8) in [item[1] for item in items[b"n1"]]
    assert h.call(b"e1", "get", target="p/n")["timestamp"] == expected[(handle, 3)]
    h.client(b"bad")
    with pytest.raises(RemoteError, match="timestamp_ns.*must be bool"):
        h.call(b"bad", "subscribe", pattern="p/#", timestamp_ns="yes")
