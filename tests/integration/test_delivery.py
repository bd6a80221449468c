"""Delivery under pressure and failure: drops are counted, callbacks and timeouts are safe."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import msgpack
import pytest
import zmq

from broker import BrokerServer, CoreConfig, ServerConfig
from sdk import Client, Message, RequestTimeout

from .conftest import Processes
from .processes import BrokerProcess

pytestmark = pytest.mark.integration


@pytest.fixture
async def small_hwm_server() -> AsyncIterator[BrokerServer]:
    server = BrokerServer(ServerConfig(endpoints=("tcp://127.0.0.1:*",), send_hwm=5,
                                       core=CoreConfig(session_timeout_ms=60_000,
                                                       allow_unmanaged_plugins=True)))
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(5):
        await server.ready.wait()
    yield server
    server.stop()
    async with asyncio.timeout(10):
        await task


async def test_frames_a_slow_peer_cannot_take_are_dropped_and_counted(
    small_hwm_server: BrokerServer,
) -> None:
    endpoint = small_hwm_server.endpoints[0]
    ctx = zmq.Context()
    slow = ctx.socket(zmq.DEALER)
    slow.setsockopt(zmq.RCVHWM, 1)
    slow.setsockopt(zmq.RCVBUF, 4096)
    slow.setsockopt(zmq.LINGER, 0)
    slow.connect(endpoint)
    try:
        async with Client(endpoint, role="plugin", name="writer") as writer:
            await writer.declare("writer/blob", "bytes", b"")
            slow.send(msgpack.packb([0, 1, "hello", {"versions": [1], "role": "client"}]))
            slow.send(msgpack.packb([0, 2, "subscribe", {"pattern": "writer/blob",
                                                         "policy": "all", "current": False}]))
            async with asyncio.timeout(10):
                core = small_hwm_server.core
                while len(core.sessions) < 2 or not core.subscriptions.match("writer/blob"):
                    await writer.request("ping")
                # The slow peer never reads; each write is its own loop turn and batch.
                for i in range(400):
                    await writer.set("writer/blob", bytes([i % 256]) * 60_000)
            core = small_hwm_server.core
            assert core.drops > 0
            slow_session = next(s for s in core.sessions.values() if s.name is None)
            assert slow_session.drops == core.drops
        # What did arrive shows the loss as a jump in sequence numbers.
        seqs = []
        while slow.poll(200):
            message = msgpack.unpackb(slow.recv(), timestamp=0)
            if message[0] == 2 and message[1] == "changes":
                seqs.append(message[2]["seq"])
        assert seqs and seqs[-1] > len(seqs)
    finally:
        slow.close(linger=0)
        ctx.term()


async def test_a_raising_callback_is_logged_counted_and_harmless(
    small_hwm_server: BrokerServer,
) -> None:
    endpoint = small_hwm_server.endpoints[0]
    async with Client(endpoint, role="plugin", name="fragile") as fragile, \
            Client(endpoint) as sender:
        delivered = asyncio.Event()

        def explode(message: Message) -> None:
            raise RuntimeError(f"callback failed on {message.payload!r}")

        fragile.on_message(explode)
        fragile.on_message(lambda message: delivered.set())
        await sender.send("fragile", b"boom")
        async with asyncio.timeout(5):
            await delivered.wait()
        assert fragile.callback_errors == 1
        assert (await fragile.request("ping"))["instance"] == small_hwm_server.core.instance


async def test_every_request_times_out(processes: Processes, broker: BrokerProcess) -> None:
    async with Client(broker.ipc, reconnect=False) as client:
        broker.signal(signal.SIGSTOP)
        try:
            with pytest.raises(RequestTimeout, match="get: no reply within 0.3 s"):
                await client.request("get", {"target": "system/broker/version"}, timeout=0.3)
        finally:
            broker.signal(signal.SIGCONT)
        assert await client.request("ping")


async def test_publish_reaches_listeners_of_matching_topics(
    small_hwm_server: BrokerServer,
) -> None:
    endpoint = small_hwm_server.endpoints[0]
    async with Client(endpoint) as listener_side, Client(endpoint) as publisher:
        alerts = await listener_side.listen("alerts/#")
        assert await publisher.publish("alerts/fire/kitchen", b"\x01") == 1
        assert await publisher.publish("news/today", b"\x02") == 0
        message = await alerts.next(5)
        assert (message.topic, message.payload) == ("alerts/fire/kitchen", b"\x01")
        await alerts.close()
        assert await publisher.publish("alerts/fire/kitchen", b"\x03") == 0
