"""Broker conformance: every method, notification and error code of PROTOCOL.md, checked
on the wire with nothing but pyzmq and msgpack."""

from __future__ import annotations

import json
import re
import secrets
import signal
import time
from pathlib import Path

import msgpack
import psutil
import pytest
import zmq

from .conftest import Peers, Target
from .raw import RawPeer, unpack

ROOT = Path(__file__).parents[2]
SPEC = (ROOT / "protocol" / "PROTOCOL.md").read_text()
VECTORS = json.loads((ROOT / "protocol" / "vectors" / "codec.json").read_text())["vectors"]
ERROR_TABLE = {(method.strip("`"), code) for method, code in re.findall(
    r"^\| (any|`[a-z_.]+`) \| `([a-z_]+)` \|",
    SPEC.split("### Errors by method")[1].split("## 13.")[0], re.M)}
"""PROTOCOL.md's errors by method: (method or "any", code)."""
COVERED: set[tuple[str, str]] = set()
SKIPPED: set[tuple[str, str]] = set()
"""Rows a test could not reach on this broker (it said why when it skipped)."""
"""(method, code) pairs some test here provoked; checked against the spec at the end."""
UNREACHABLE = {
    ("declare", "limit_exceeded"): "needs 2^29 properties",
    ("plugins.reload", "contract_violation"): "needs a configured plugin whose contract "
                                              "changed (tests/integration/test_runtime.py)",
    ("hello", "shutting_down"): "needs a hello that races the broker's stop",
    ("any", "internal"): "needs a bug in the broker",
}


def expect(error: dict[str, object], code: str) -> dict[str, object]:
    assert error["code"] == code, error
    pair = (str(error.get("_method", "any")), code)
    COVERED.add(pair if pair in ERROR_TABLE or ("any", code) not in ERROR_TABLE
                else ("any", code))
    return error


def plugin(peers: Peers) -> tuple[RawPeer, str]:
    """A raw peer in the plugin role that has answered init."""
    me = peers()
    name = "conf" + secrets.token_hex(4)
    result = me.hello("plugin", name=name)
    assert result["version"] == 1
    init = me.take(0, "init")
    assert init[3]["name"] == name and isinstance(init[3]["config"], dict)
    me.send(msgpack.packb([1, init[1], None, {}]))
    return me, name


@pytest.mark.parametrize("vector", [v for v in VECTORS if "error" in v],
                         ids=lambda v: v["name"])
def test_malformed_vectors(peer: Peers, vector: dict[str, str]) -> None:
    me = peer()
    me.hello()
    me.send(bytes.fromhex(vector["hex"]))
    reply = me.recv()
    error = reply[2] if reply[0] == 1 else reply[2]
    if reply[0] == 2:
        assert reply[1] == "error"
    expect(error, vector["error"])
    assert me.call("ping")["instance"]


def session_ids(peer: RawPeer) -> set[str]:
    return {s["session"] for s in peer.call("sessions")["sessions"]}


def until_gone(watcher: RawPeer, session: str, within: float) -> float:
    """Seconds until ``session`` left the broker's list; fails after ``within``."""
    started = time.monotonic()
    while session in session_ids(watcher):
        assert time.monotonic() - started < within, f"{session} still listed"
    return time.monotonic() - started


def test_a_frame_over_max_frame_drops_the_connection_and_ends_the_session(
        peer: Peers) -> None:
    watcher = peer()
    watcher.hello()
    me = peer()
    hello = me.hello()
    limit = hello["max_frame"]
    padding = limit
    while len(exact := msgpack.packb([0, 1, "ping", {"pad": b"\0" * padding}])) != limit:
        padding += limit - len(exact)
    me.send(exact)
    assert me.reply_to(1)[2] is None  # max_frame itself is allowed
    me.send(msgpack.packb([0, 2, "ping", {"pad": b"\0" * (padding + 1)}]))
    until_gone(watcher, hello["session"], 2.0)
    # ZeroMQ reconnects the socket by itself; the broker knows no session on it.
    expect(me.error("ping"), "hello_required")


def test_a_closed_connection_ends_its_session_at_once(peer: Peers) -> None:
    watcher = peer()
    watcher.hello()
    owner, name = plugin(peer)
    owner.call("declare", name=f"{name}/x", type="int", value=1)
    watcher.call("subscribe", pattern=f"{name}/#", current=False)
    session = next(s["session"] for s in watcher.call("sessions")["sessions"]
                   if s["name"] == name)
    owner.close()
    started = time.monotonic()
    removed = watcher.take(2, "changes", timeout=2)[2]
    assert removed["removed"][0][1] == f"{name}/x"
    assert time.monotonic() - started < 0.5  # well inside any heartbeat timeout
    assert session not in session_ids(watcher)
    again = peer()
    assert again.hello("plugin", name=name)["session"]  # no name_taken


def test_multipart_message(peer: Peers) -> None:
    me = peer()
    me.hello()
    me.send(msgpack.packb([0, 1, "ping", {}]), b"second frame")
    reply = me.recv()
    assert reply[0] in (1, 2)
    expect(reply[2], "invalid_message")


def test_handshake(peer: Peers) -> None:
    me = peer()
    expect(me.error("ping"), "hello_required")
    expect(me.error("hello", versions=[99], role="client"), "unsupported_version")
    assert 1 in me.error("hello", versions=[99], role="client")["supported"]
    expect(me.error("hello", versions=[1]), "invalid_params")
    expect(me.error("hello", versions=[1], role="admin", token="wrong"), "unauthorized")
    expect(me.error("hello", versions=[1], role="plugin", name="Not Valid"), "invalid_name")
    expect(me.error("hello", versions=[1], role="plugin", name="system"), "forbidden")
    result = me.hello()
    for field in ("version", "session", "instance", "heartbeat_ms", "timeout_ms", "max_frame"):
        assert field in result
    expect(me.error("hello", versions=[1], role="client"), "invalid_state")
    _, name = plugin(peer)
    expect(peer().error("hello", versions=[1], role="plugin", name=name), "name_taken")


def test_session_methods(peer: Peers) -> None:
    me = peer()
    me.hello()
    pong = me.call("ping")
    assert isinstance(pong["instance"], str) and isinstance(pong["time"], msgpack.Timestamp)
    assert any(s["role"] == "client" for s in me.call("sessions")["sessions"])
    me.call("bye")
    expect(me.error("ping"), "hello_required")
    expect(me.error("frobnicate"), "hello_required")
    other = peer()
    other.hello()
    expect(other.error("frobnicate"), "unknown_method")


def test_properties(peer: Peers) -> None:
    owner, name = plugin(peer)
    client = peer()
    client.hello()
    declared = owner.call("declare", name=f"{name}/t", type="float", value=20.0, min=0,
                          max=50, unit="degC", writable_by=["clients"])
    handle = declared["handle"]
    assert declared["revision"] == 1 and declared["value"] == 20.0
    owner.call("declare", name=f"{name}/mode", type="str", value="auto",
               enum=["auto", "off"])
    owner.call("declare", name=f"{name}/span", type="duration",
               value=msgpack.ExtType(1, (5 * 10**9).to_bytes(8, "big", signed=True)))
    expect(owner.error("declare", name="elsewhere/x", type="int"), "forbidden")
    expect(owner.error("declare", name=f"{name}//x", type="int"), "invalid_name")
    expect(owner.error("declare", name=f"{name}/t", type="int"), "type_mismatch")
    expect(owner.error("declare", name=f"{name}/x", type="quaternion"), "invalid_params")
    expect(client.error("declare", name=f"{name}/y", type="int"), "forbidden")

    got = client.call("get", target=handle)
    assert got["name"] == f"{name}/t" and got["type"] == "float" and got["owner"] == name
    assert isinstance(got["timestamp"], msgpack.Timestamp) and got["meta"]["unit"] == "degC"
    assert client.call("set", target=f"{name}/t", value=21)["revision"] == 2  # int → float
    assert client.call("get", target=f"{name}/t")["value"] == 21.0
    expect(client.error("set", target=f"{name}/t", value="hot"), "type_mismatch")
    expect(client.error("set", target=f"{name}/t", value=99.0), "out_of_range")
    expect(owner.error("set", target=f"{name}/mode", value="turbo"), "not_in_enum")
    expect(client.error("set", target=f"{name}/mode", value="off"), "forbidden")
    expect(client.error("set", target="system/broker/uptime", value=1), "forbidden")
    expect(client.error("get", target=f"{name}/nothing"), "not_found")
    expect(client.error("get", target=[1, 2]), "invalid_params")
    expect(client.error("set", target=f"{name}/t"), "invalid_params")

    assert owner.call("set_many", items=[[f"{name}/t", 1.0], [f"{name}/mode", "off"]])[
        "revisions"] == [3, 2]
    failed = owner.error("set_many", items=[[f"{name}/t", 2.0], [f"{name}/t", -1.0]])
    assert expect(failed, "out_of_range")["index"] == 1
    assert client.call("get", target=f"{name}/t")["value"] == 1.0  # nothing written

    page = client.call("list", pattern=f"{name}/#", limit=2)
    assert [i["name"] for i in page["items"]] == [f"{name}/mode", f"{name}/span"]
    assert page["more"] is True
    rest = client.call("list", pattern=f"{name}/#", after=f"{name}/span")
    assert [i["name"] for i in rest["items"]] == [f"{name}/t"] and rest["more"] is False

    owner.call("delete", target=handle)
    expect(client.error("get", target=handle), "stale_handle")
    expect(client.error("delete", target=f"{name}/mode"), "forbidden")


BAD_NAMES = ["a//b", "/a", "a/", "", "x" * 256, "/".join(["s"] * 17), "a b", "a/+"]


@pytest.mark.parametrize("bad", BAD_NAMES, ids=repr)
def test_every_method_that_takes_a_name_checks_it(peer: Peers, bad: str) -> None:
    owner, name = plugin(peer)
    client = peer()
    client.hello()
    owner.call("declare", name=f"{name}/ok", type="int", value=1)
    expect(client.error("get", target=bad), "invalid_name")
    expect(client.error("set", target=bad, value=1), "invalid_name")
    expect(owner.error("delete", target=bad), "invalid_name")
    failed = expect(owner.error("set_many", items=[[f"{name}/ok", 2], [bad, 1]]),
                    "invalid_name")
    assert failed["index"] == 1
    expect(client.error("publish", topic=bad, payload=b""), "invalid_name")
    expect(client.error("send", to=bad, payload=b""), "invalid_name")
    assert client.call("get", target=f"{name}/ok")["value"] == 1  # nothing written


def test_bounds_and_enum_of_the_wrong_type_are_invalid_params(peer: Peers) -> None:
    owner, name = plugin(peer)
    for meta in ({"min": "low"}, {"max": [1]}, {"enum": [1, "two"]}, {"enum": []},
                 {"min": 5, "max": 1}, {"min": 1.5}):
        failed = expect(owner.error("declare", name=f"{name}/n", type="int", **meta),
                        "invalid_params")
        assert failed["message"], meta
    expect(owner.error("declare", name=f"{name}/s", type="str", min=1), "invalid_params")


def nested(depth: int) -> object:
    value: object = 1
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


def test_every_accepted_value_reaches_every_reader_intact(peer: Peers) -> None:
    owner, name = plugin(peer)
    watcher = peer()
    watcher.hello()
    deepest = nested(24)
    owner.call("declare", name=f"{name}/deep", type="any")
    watcher.call("subscribe", pattern=f"{name}/#", current=False)
    owner.call("set", target=f"{name}/deep", value=deepest)
    assert watcher.take(2, "changes")[2]["items"][0][1] == deepest
    assert watcher.call("get", target=f"{name}/deep")["value"] == deepest
    assert watcher.call("list", pattern=f"{name}/#")["items"][0]["value"] == deepest
    late = peer()
    late.hello()
    late.call("subscribe", pattern=f"{name}/#")
    assert late.take(2, "changes")[2]["items"][0][1] == deepest
    for method, params in (("set", {"target": f"{name}/deep", "value": nested(25)}),
                           ("declare", {"name": f"{name}/d2", "type": "list",
                                        "value": [nested(24)]})):
        expect(owner.error(method, **params), "too_deep")
    assert watcher.call("get", target=f"{name}/deep")["revision"] == 1


def test_subscriptions_and_changes(peer: Peers) -> None:
    owner, name = plugin(peer)
    watcher = peer()
    watcher.hello()
    owner.call("declare", name=f"{name}/a", type="int", value=1)
    sub = watcher.call("subscribe", pattern=f"{name}/+", policy="all", queue_limit=2)
    assert sub["matched"] == 1
    snapshot = watcher.take(2, "changes")[2]
    assert snapshot["sub"] == sub["sub"] and snapshot["seq"] == 1
    assert snapshot["snapshot"] is True and snapshot["synced"] is True
    handle, value, revision, stamp, item_name = snapshot["items"][0]
    assert (value, revision, item_name) == (1, 1, f"{name}/a")
    assert isinstance(stamp, msgpack.Timestamp)

    owner.call("set_many", items=[[f"{name}/a", v] for v in range(10, 15)])
    batch = watcher.take(2, "changes")[2]
    assert batch["seq"] == 2 and [i[1] for i in batch["items"]] == [10, 11]
    assert batch["gap"] == 3 and len(batch["items"][0]) == 4  # the name is sent once

    latest = watcher.call("subscribe", pattern=f"{name}/a", current=False)
    owner.call("set_many", items=[[f"{name}/a", v] for v in range(20, 25)])
    while True:
        note = watcher.take(2, "changes")[2]
        if note["sub"] == latest["sub"]:
            break
    assert [i[1] for i in note["items"]] == [24] and note["coalesced"] == 4

    owner.call("delete", target=f"{name}/a")
    removed = watcher.take(2, "changes")[2]
    while "removed" not in removed:
        removed = watcher.take(2, "changes")[2]
    assert removed["removed"][0][0] == handle and removed["removed"][0][1] == f"{name}/a"

    watcher.call("unsubscribe", sub=sub["sub"])
    expect(watcher.error("unsubscribe", sub=sub["sub"]), "not_found")
    expect(watcher.error("subscribe", pattern="#/x"), "invalid_pattern")
    expect(watcher.error("subscribe", pattern="#", policy="some"), "invalid_params")


def test_timestamp_ns_subscriptions_get_integer_times(peer: Peers) -> None:
    """``timestamp_ns``: the item's time is integer nanoseconds, the same instant a
    subscriber without it gets as a timestamp; a timestamp value keeps its type."""
    owner, name = plugin(peer)
    owner.call("declare", name=f"{name}/t", type="timestamp", value=msgpack.Timestamp(1, 2))
    plain, in_ns = peer(), peer()
    for watcher, ns in ((plain, False), (in_ns, True)):
        watcher.hello()
        watcher.call("subscribe", pattern=f"{name}/#", policy="all", timestamp_ns=ns)
    owner.call("set", target=f"{name}/t", value=msgpack.Timestamp(3, 4))
    for watcher in (plain, in_ns):
        assert watcher.take(2, "changes")[2]["snapshot"] is True
    stamp = plain.take(2, "changes")[2]["items"][0]
    item = in_ns.take(2, "changes")[2]["items"][0]
    assert item[1] == msgpack.Timestamp(3, 4) == stamp[1] and item[2] == stamp[2] == 2
    assert type(item[3]) is int and item[3] == stamp[3].to_unix_nano()
    expect(in_ns.error("subscribe", pattern="#", timestamp_ns=1), "invalid_params")


def test_a_subscriber_that_does_not_read_is_told_what_it_missed(
        target: Target, peer: Peers) -> None:
    owner, name = plugin(peer)
    owner.call("declare", name=f"{name}/blob", type="bytes", value=b"")
    slow = peer()
    slow.sock.setsockopt(zmq.RCVHWM, 1)
    slow.hello()
    slow.call("subscribe", pattern=f"{name}/#", policy="all", current=False)  # then no reads
    rss = psutil.Process(target.broker.pid).memory_info().rss if target.broker else 0
    writes, size = 4000, 10_000
    for index in range(writes):
        owner.call("set", target=f"{name}/blob", value=bytes([index % 256]) * size)
        if index % 50 == 0:
            slow.request("ping", {})  # keeps the session; the reply waits with the rest
    if target.broker is not None:
        grown = psutil.Process(target.broker.pid).memory_info().rss - rss
        assert grown < writes * size // 2, f"the broker grew by {grown >> 20} MiB"
    items = gaps = 0
    seqs = []
    while slow.sock.poll(1000):
        message = unpack(slow.sock.recv())
        if message[0] == 2 and message[1] == "changes":
            seqs.append(message[2]["seq"])
            items += len(message[2]["items"])
            gaps += message[2].get("gap", 0)
    assert gaps > 0 and items + gaps == writes, (items, gaps)
    assert seqs == list(range(1, len(seqs) + 1))


def test_session_end_removes_properties(peer: Peers) -> None:
    owner, name = plugin(peer)
    watcher = peer()
    watcher.hello()
    owner.call("declare", name=f"{name}/gone", type="bool", value=True)
    watcher.call("subscribe", pattern=f"{name}/#", current=False)
    owner.call("bye")
    note = watcher.take(2, "changes")[2]
    assert note["removed"][0][1] == f"{name}/gone"


def test_messages(peer: Peers) -> None:
    receiver, name = plugin(peer)
    sender = peer()
    sender.hello()
    sender.call("send", to=name, payload=b"\x01\x02", topic="do/it")
    message = receiver.take(2, "message")[2]
    assert message["payload"] == b"\x01\x02" and message["topic"] == "do/it"
    expect(sender.error("send", to="nobody-here", payload=b""), "not_found")
    expect(sender.error("send", to=name, payload="text"), "invalid_params")
    listen = receiver.call("listen", pattern="conformance/+")["listen"]
    assert sender.call("publish", topic="conformance/news", payload=b"!")["delivered"] == 1
    published = receiver.take(2, "message")[2]
    assert published["listen"] == listen and published["topic"] == "conformance/news"
    expect(sender.error("publish", topic="bad topic", payload=b""), "invalid_name")
    receiver.call("unlisten", listen=listen)
    assert sender.call("publish", topic="conformance/news", payload=b"!")["delivered"] == 0


def test_subscription_limit(peer: Peers) -> None:
    me = peer()
    me.hello()
    ids = [me.request("subscribe", {"pattern": f"limit/{i}", "current": False})
           for i in range(10_001)]
    replies = [me.reply_to(msgid, 30) for msgid in ids]
    expect({**replies[-1][2], "_method": "subscribe"}, "limit_exceeded")
    assert all(r[2] is None for r in replies[:-1])


def test_plugins_method(target: Target, peer: Peers) -> None:
    me = peer()
    me.hello()
    assert isinstance(me.call("plugins")["plugins"], list)
    if target.admin_token is None:
        pytest.skip("no admin token given for this broker")
    admin = peer()
    admin.hello("admin", token=target.admin_token)
    expect(admin.error("plugins.stop", name="no-such-plugin"), "not_found")
    expect(me.error("plugins.stop", name="x"), "forbidden")


def contract(name: str) -> dict[str, object]:
    return {"name": name, "version": "1", "provides": [], "needs": [],
            "exports": [{"pattern": f"{name}/+", "type": "int"}], "methods": [],
            "config": {"k": 1}}


def test_the_agent_role(target: Target, peer: Peers) -> None:
    """An agent registers a plugin with a launch token, the plugin is held to its
    contract, the agent hears of its session, and control requests are routed to it."""
    if target.admin_token is None:
        pytest.skip("the agent role needs the admin token")
    agent = peer()
    name = "agt" + secrets.token_hex(4)
    agent.hello("agent", name="host-" + name, token=target.admin_token,
                plugins=[{"contract": contract(name), "token": "launch-1"}])
    watcher = peer()
    watcher.hello()
    assert watcher.call("get", target=f"system/plugins/{name}/host")["value"] == "host-" + name
    stranger = peer()
    expect(stranger.error("hello", versions=[1], role="plugin", name=name, token="wrong"),
           "unauthorized")
    plugged = peer()
    plugged.hello("plugin", name=name, token="launch-1")
    init = plugged.take(0, "init")
    assert init[3]["config"] == {"k": 1}
    plugged.send(msgpack.packb([1, init[1], None, {}]))
    assert agent.take(2, "plugin.ready")[2] == {"name": name}
    expect(plugged.error("declare", name=f"{name}/x/y", type="int"), "contract_violation")
    agent.call("agent.status", name=name, figures={"state": "ready", "pid": 1})
    assert watcher.call("get", target=f"system/plugins/{name}/state")["value"] == "ready"
    rival = peer()
    expect(rival.error("hello", versions=[1], role="agent", name="rival-" + name,
                       token=target.admin_token, plugins=[{"contract": contract(name)}]),
           "name_taken")
    cases = [
        ("agent.register", {"plugins": "no"}, "invalid_params"),
        ("agent.register", {"plugins": [{"contract": contract("Bad")}]}, "invalid_name"),
        ("agent.register", {"plugins": [{"contract": {
            **contract("pat"), "exports": [{"pattern": "pat/#/x", "type": "int"}]}}]},
         "invalid_pattern"),
        ("agent.exited", {"name": name, "reason": 5}, "invalid_params"),
        ("agent.launch", {"name": "nobody"}, "not_found"),
        ("agent.launch", {"name": name, "token": 5}, "invalid_params"),
        ("agent.exited", {"name": "nobody"}, "not_found"),
        ("agent.status", {"name": "nobody", "figures": {}}, "not_found"),
        ("agent.status", {"name": name, "figures": {"nope": 1}}, "invalid_params"),
        ("agent.status", {"name": name, "figures": {"pid": "x"}}, "type_mismatch"),
        ("agent.end_plugin", {"name": "nobody"}, "not_found"),
        ("publish", {"topic": "system/logs/nobody", "payload": b""}, "forbidden"),
    ]
    for method, params, code in cases:
        expect(agent.error(method, **params), code)
    rival.hello("agent", name="rival-" + name, token=target.admin_token)
    expect(rival.error("agent.register", plugins=[{"contract": contract(name)}]),
           "name_taken")
    expect(rival.error("agent.unregister", names=[name]), "not_found")  # not its plugin
    expect(rival.error("agent.unregister", names=name), "invalid_params")
    assert agent.call("publish", topic=f"system/logs/{name}", payload=b"line\n") == {
        "delivered": 0}
    admin = peer()
    admin.hello("admin", token=target.admin_token)
    for action in ("reread", "add"):  # two agents now: which one?
        expect(admin.error(f"plugins.{action}", name="x"), "invalid_params")
    stop = admin.request("plugins.stop", {"name": name})
    routed = agent.take(0, "plugins.stop")
    agent.send(msgpack.packb([1, routed[1], None, {"step": "end"}]))
    assert admin.reply_to(stop)[3] == {"step": "end"}
    assert agent.call("agent.end_plugin", name=name) == {"asked": True}
    end = plugged.take(0, "end")
    plugged.send(msgpack.packb([1, end[1], None, {}]))
    assert agent.take(2, "plugin.ended")[2] == {"name": name, "reason": "ended"}
    logs = admin.request("plugins.logs", {"name": name})
    agent.take(0, "plugins.logs")
    agent.close()  # the agent goes before it answers
    error = admin.reply_to(logs)[2]
    expect({**error, "_method": "plugins.logs"}, "unavailable")
    for action in ("start", "stop", "restart", "reload", "remove", "reread", "add"):
        SKIPPED.add((f"plugins.{action}", "unavailable"))  # the same route as logs
    until = time.monotonic() + 5
    while watcher.call("list", pattern=f"system/plugins/{name}/#")["items"]:
        assert time.monotonic() < until, "the agent's plugin properties stayed"


def test_end_and_shutdown(target: Target, peer: Peers) -> None:
    if target.broker is None:
        pytest.skip("only when the suite started the broker (it stops it)")
    plugged, _ = plugin(peer)
    client = peer()
    client.hello()
    target.broker.signal(signal.SIGINT)
    end = plugged.take(0, "end", timeout=10)
    plugged.send(msgpack.packb([1, end[1], None, {}]))
    assert client.take(2, "shutdown", timeout=10)[2]["reason"]
    assert target.broker.wait(15) == 0


def test_each_method_answers_each_error_of_its_rows(target: Target, peer: Peers) -> None:
    """The rows of the errors-by-method table no other test here reaches."""
    owner, name = plugin(peer)
    client = peer()
    client.hello()
    owner.call("declare", name=f"{name}/n", type="int", value=1, min=0, max=9,
               enum=[1, 2, 3])
    gone = owner.call("declare", name=f"{name}/gone", type="int")["handle"]
    owner.call("delete", target=gone)
    closed = f"{name}/n"
    cases = [
        (owner, "declare", {"name": f"{name}/m", "type": "int", "value": 10, "max": 9},
         "out_of_range"),
        (owner, "declare", {"name": f"{name}/e", "type": "int", "value": 4, "enum": [1]},
         "not_in_enum"),
        (owner, "delete", {"target": 1.5}, "invalid_params"),
        (owner, "delete", {"target": f"{name}/none"}, "not_found"),
        (owner, "delete", {"target": gone}, "stale_handle"),
        (client, "list", {"limit": 0}, "invalid_params"),
        (client, "list", {"pattern": "a/#/b"}, "invalid_pattern"),
        (client, "set", {"target": f"{name}/none", "value": 1}, "not_found"),
        (client, "set", {"target": gone, "value": 1}, "stale_handle"),
        (client, "set_many", {"items": [[closed, 2]]}, "forbidden"),
        (owner, "set_many", {"items": "all"}, "invalid_params"),
        (owner, "set_many", {"items": [[closed, 2], [f"{name}/none", 1]]}, "not_found"),
        (owner, "set_many", {"items": [[closed, 4]]}, "not_in_enum"),
        (owner, "set_many", {"items": [[gone, 4]]}, "stale_handle"),
        (owner, "set_many", {"items": [[closed, nested(25)]]}, "too_deep"),
        (owner, "set_many", {"items": [[closed, "two"]]}, "type_mismatch"),
        (client, "listen", {"pattern": 7}, "invalid_params"),
        (client, "listen", {"pattern": "#/x"}, "invalid_pattern"),
        (client, "unlisten", {"listen": "one"}, "invalid_params"),
        (client, "unlisten", {"listen": 424242}, "not_found"),
        (client, "unsubscribe", {}, "invalid_params"),
        (client, "publish", {"topic": "t/x"}, "invalid_params"),
        (client, "send", {"to": "system", "payload": b""}, "forbidden"),
        (client, "nonsense", {}, "unknown_method"),
        (peer(), "get", {"target": closed}, "hello_required"),
    ]
    for who, method, params, code in cases:
        expect(who.error(method, **params), code)
    assert client.call("get", target=closed)["value"] == 1
    for method in ("plugins.start", "plugins.stop", "plugins.restart", "plugins.reload",
                   "plugins.logs", "plugins.remove", "plugins.reread", "plugins.add",
                   "keys.reload", "agent.register", "agent.launch", "agent.exited",
                   "agent.status", "agent.end_plugin", "agent.unregister"):
        expect(client.error(method, name="x"), "forbidden")
    if target.admin_token is not None:
        admin = peer()
        admin.hello("admin", token=target.admin_token)
        for action in ("start", "stop", "restart", "reload", "logs", "remove"):
            expect(admin.error(f"plugins.{action}", name="no-such-plugin"), "not_found")
            expect(admin.error(f"plugins.{action}"), "invalid_params")  # no name
            expect(admin.error(f"plugins.{action}", name="x", force="yes"), "invalid_params")
        expect(admin.error("plugins.logs", name="x", lines=0), "invalid_params")
        expect(admin.error("plugins.add", host="no-such-host"), "invalid_params")  # no name
        expect(admin.error("plugins.reread", host=5), "invalid_params")
        for action in ("reread", "add"):
            expect(admin.error(f"plugins.{action}", host="no-such-host", name="x"),
                   "not_found")
    listens = [client.request("listen", {"pattern": f"l/{i}"}) for i in range(10_001)]
    replies = [client.reply_to(msgid, 30) for msgid in listens]
    expect({**replies[-1][2], "_method": "listen"}, "limit_exceeded")


def test_calls_to_plugin_methods(target: Target, peer: Peers) -> None:
    """Needs a plugin ``calc`` exporting the methods of tests/fixtures/plugins/calc: a
    broker of this project started by the suite runs it; another broker must too."""
    caller = peer()
    caller.hello()
    state = "system/plugins/calc/state"
    listed = caller.call("list", pattern="system/plugins/calc/contract/methods")["items"]
    if not listed and target.broker is None:
        SKIPPED.update(pair for pair in ERROR_TABLE if pair[0] == "call")
        pytest.skip("no plugin calc exporting methods runs on this broker")
    # The suite's own broker runs calc: it may not be registered yet, never skipped.
    until = time.monotonic() + 15
    while [i["value"] for i in caller.call("list", pattern=state)["items"]] != ["ready"]:
        assert time.monotonic() < until, "plugin calc never became ready"
        caller.call("ping")
    assert caller.call("call", plugin="calc", method="add", params={"a": 2, "b": 3}) == {
        "result": 5}
    cases = [
        ({"plugin": "calc"}, "invalid_params"),
        ({"plugin": "calc", "method": "add", "params": {"a": 2}}, "invalid_params"),
        ({"plugin": "calc", "method": "add", "params": {"a": 1, "b": 2},
          "timeout_ms": 0}, "invalid_params"),
        ({"plugin": "Calc", "method": "add"}, "invalid_name"),
        ({"plugin": "calc", "method": "private"}, "forbidden"),
        ({"plugin": "calc", "method": "launch"}, "not_found"),
        ({"plugin": "nobody", "method": "add"}, "not_found"),
        ({"plugin": "calc", "method": "add", "params": {"a": "2", "b": 3}}, "type_mismatch"),
        ({"plugin": "calc", "method": "add", "params": {"a": nested(25), "b": 3}},
         "too_deep"),
        ({"plugin": "calc", "method": "slow", "params": {"seconds": 5.0},
          "timeout_ms": 200}, "timeout"),
        ({"plugin": "calc", "method": "fail"}, "call_failed"),
        ({"plugin": "calc", "method": "wrong"}, "contract_violation"),
    ]
    for params, code in cases:
        failed = expect(caller.error("call", **params), code)
        if code == "call_failed":
            assert failed["plugin_code"] == "not_found"
        if code == "type_mismatch":
            assert failed["param"] == "a"
    # 1000 calls waiting at once; the next is refused, and all 1000 are answered.
    slow = {"plugin": "calc", "method": "slow", "params": {"seconds": 30.0},
            "timeout_ms": 1000}
    waiting = [caller.request("call", slow) for _ in range(1000)]
    expect(caller.error("call", plugin="calc", method="add", params={"a": 1, "b": 2}),
           "limit_exceeded")
    assert {caller.reply_to(msgid)[2]["code"] for msgid in waiting} == {"timeout"}
    assert caller.call("call", plugin="calc", method="add", params={"a": 1, "b": 2}) == {
        "result": 3}
    if target.admin_token is None:
        SKIPPED.add(("call", "unavailable"))
        pytest.skip("stopping calc for the unavailable case needs the admin token")
    admin = peer()
    admin.hello("admin", token=target.admin_token)
    assert admin.call("plugins.stop", name="calc")["step"] == "end"
    expect(caller.error("call", plugin="calc", method="add", params={"a": 1, "b": 2}),
           "unavailable")


def test_zz_every_row_of_the_error_table_is_covered() -> None:
    if not COVERED:
        pytest.skip("meaningful only after the module's other tests ran")
    table = ERROR_TABLE
    assert len(table) > 50, "the errors-by-method table was not found in PROTOCOL.md"
    assert set(UNREACHABLE) <= table
    unlisted = {pair for pair in COVERED if pair not in table and (
        "any", pair[1]) not in table}
    assert not unlisted, f"errors the broker sent that the table does not list: {unlisted}"
    missing = table - COVERED - set(UNREACHABLE) - SKIPPED
    assert not missing, f"rows no conformance test provoked: {sorted(missing)}"


def test_writes_sent_as_notifications(peer: Peers) -> None:
    """PROTOCOL.md "Writes that do not wait": applied in order, never answered, a
    refusal as an `error` notification naming the method and target."""
    owner, name = plugin(peer)
    owner.call("declare", name=f"{name}/n", type="int", value=0, max=100)
    watcher = peer()
    watcher.hello()
    watcher.call("subscribe", pattern=f"{name}/n", current=False, policy="all")
    for value in range(1, 6):
        owner.send(msgpack.packb([2, "set", {"target": f"{name}/n", "value": value}]))
    owner.send(msgpack.packb([2, "set_many", {"items": [[f"{name}/n", 6]]}]))
    seen: list[int] = []
    while len(seen) < 6:
        seen += [item[1] for item in watcher.take(2, "changes")[2]["items"]]
    assert seen == [1, 2, 3, 4, 5, 6]
    owner.send(msgpack.packb([2, "set", {"target": f"{name}/n", "value": 101}]))
    refused = owner.take(2, "error")[2]
    assert refused["method"] == "set" and refused["target"] == f"{name}/n"
    expect({**refused, "_method": "set"}, "out_of_range")
    assert owner.call("ping")["instance"]  # and no response came for the notifications
    assert not [m for m in owner.other if m[0] == 1]
