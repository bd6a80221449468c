"""Malformed input over a real socket: each case gets a defined error, and the broker
keeps serving everyone else."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import zmq

from plugboard.protocol.errors import ProtocolError
from plugboard.sdk import Client
from tests.conformance.raw import RawPeer

from .conftest import Processes
from .processes import BrokerProcess

pytestmark = pytest.mark.integration

MAX_FRAME = 65536


@pytest.fixture
def small_broker(processes: Processes) -> BrokerProcess:
    return processes.broker(None, "--max-frame", str(MAX_FRAME))


class Peers:
    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.peers: list[RawPeer] = []

    def __call__(self, endpoint: str) -> RawPeer:
        peer = RawPeer(self.ctx, endpoint)
        self.peers.append(peer)
        return peer


@pytest.fixture
def raw() -> Iterator[Peers]:
    peers = Peers()
    yield peers
    for peer in peers.peers:
        peer.sock.close(linger=0)
    peers.ctx.term()


def error_code(reply: list[Any]) -> str:
    if reply[0] == 1:
        return reply[2]["code"]  # type: ignore[no-any-return]
    assert reply[:2] == [2, "error"], reply
    return reply[2]["code"]  # type: ignore[no-any-return]


CASES = [
    ("not msgpack", [b"\xc1\xc1"], "malformed"),
    ("truncated", [b"\x94\x00\x01"], "malformed"),
    ("two objects", [b"\x90\x90"], "malformed"),
    ("not an array", [msgpack.packb({"a": 1})], "invalid_message"),
    ("wrong kind", [msgpack.packb([7, 1, "x", {}])], "invalid_message"),
    ("params not a map", [msgpack.packb([0, 1, "get", [1]])], "invalid_message"),
    ("unknown method", [msgpack.packb([0, 1, "launch_missiles", {}])], "unknown_method"),
    ("missing param", [msgpack.packb([0, 1, "get", {}])], "invalid_params"),
    ("wrong param type", [msgpack.packb([0, 1, "subscribe", {"pattern": 5}])], "invalid_params"),
    ("invalid name", [msgpack.packb([0, 1, "publish", {"topic": "a//b", "payload": b""}])],
     "invalid_name"),
    ("invalid pattern", [msgpack.packb([0, 1, "subscribe", {"pattern": "#/a"}])],
     "invalid_pattern"),
    ("unknown ext", [msgpack.packb([0, 1, "ping", {"x": msgpack.ExtType(42, b"")}])],
     "unknown_ext"),
    ("deep nesting", [b"\x94\x00\x01\xa4ping\x81\xa1x" + b"\x91" * 100 + b"\xc0"], "too_deep"),
    ("int map key", [b"\x94\x00\x01\xa4ping\x81\x01\x02"], "malformed"),
    ("multipart", [msgpack.packb([0, 1, "ping", {}]), b"extra"], "invalid_message"),
    ("stale handle", [msgpack.packb([0, 1, "get", {"target": 2**40}])], "not_found"),
    ("unknown subscription", [msgpack.packb([0, 1, "unsubscribe", {"sub": 999}])],
     "not_found"),
]


@pytest.mark.parametrize("frames,code", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gets_a_defined_error(raw: Peers, small_broker: BrokerProcess,
                                        frames: list[bytes], code: str) -> None:
    bystander = raw(small_broker.ipc)
    bystander.hello()
    peer = raw(small_broker.tcp)
    peer.hello()
    peer.send(*frames)
    reply = peer.recv()
    assert error_code(reply) == code, reply
    message = reply[2]["message"]
    assert isinstance(message, str) and message
    # The same connection and everyone else are still served.
    assert peer.call("ping")
    assert bystander.call("ping")


def test_requests_before_hello_are_answered_not_ignored(raw: Peers,
                                                        small_broker: BrokerProcess) -> None:
    peer = raw(small_broker.ipc)
    assert peer.error("get", target="system/broker/version")["code"] == "hello_required"
    peer.hello()
    assert peer.call("get", target="system/broker/version")["value"]


def test_oversize_frame_drops_the_connection_only(raw: Peers,
                                                  small_broker: BrokerProcess) -> None:
    bystander = raw(small_broker.ipc)
    bystander.hello()
    peer = raw(small_broker.tcp)
    peer.hello()
    peer.send(b"\x00" * (MAX_FRAME * 4))
    # ZeroMQ dropped that connection; the socket reconnects as a new, unknown peer.
    # A request sent while the old connection is torn down is lost with it, so ask again.
    for _attempt in range(10):
        peer.msgid += 1
        peer.send(msgpack.packb([0, peer.msgid, "ping", {}]))
        if peer.sock.poll(500):
            reply = peer.recv()
            break
    else:
        raise AssertionError("the dropped peer never got an answer after reconnecting")
    assert reply[2]["code"] == "hello_required"
    assert bystander.call("ping")


async def test_the_sdk_refuses_to_send_a_frame_the_broker_would_drop(
        small_broker: BrokerProcess) -> None:
    async with Client(small_broker.ipc) as client:
        with pytest.raises(ProtocolError) as caught:
            await client.request("ping", {"pad": b"\0" * (client.max_frame + 1)})
        assert caught.value.code == "too_large" and "max_frame" in caught.value.message
        assert (await client.request("ping"))["instance"]  # still connected
