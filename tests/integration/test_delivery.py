"""Delivery under pressure and failure: drops are counted, callbacks and timeouts are safe."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import psutil
import pytest
import zmq

from plugboard.broker import BrokerServer, CoreConfig, ServerConfig
from plugboard.sdk import Change, Client, Gap, Message, PlugboardError, RequestTimeout, Subscription

from ..conformance.raw import RawPeer, hung_up_after_hello
from .conftest import Processes
from .processes import BrokerProcess

pytestmark = pytest.mark.integration
PEER_QUEUE_BYTES = 1024 * 1024


@pytest.fixture
async def small_hwm_server() -> AsyncIterator[BrokerServer]:
    server = BrokerServer(ServerConfig(
        endpoints=("tcp://127.0.0.1:*",), send_hwm=5,
        core=CoreConfig(session_timeout_ms=60_000, allow_unmanaged_plugins=True,
                        peer_queue_bytes=PEER_QUEUE_BYTES)))
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(5):
        await server.ready.wait()
    yield server
    server.stop()
    async with asyncio.timeout(10):
        await task


async def test_a_slow_subscriber_is_bounded_in_bytes_and_shown_its_gap(
    small_hwm_server: BrokerServer,
) -> None:
    endpoint = small_hwm_server.endpoints[0]
    core = small_hwm_server.core
    writes = 300
    ctx = zmq.Context()
    slow = _slow_peer(ctx, endpoint)
    try:
        async with Client(endpoint, role="plugin", name="writer") as writer, \
                Client(endpoint) as fast_side:
            await writer.declare("writer/blob", "bytes", b"")
            fast = await fast_side.subscribe("writer/blob", policy="all", current=False)
            _subscribe_raw(slow)
            async with asyncio.timeout(20):
                while len(core.sessions) < 3 or len(core.subscriptions.match("writer/blob")) < 2:
                    await writer.request("ping")
                slow_session = next(s for s in core.sessions.values() if any(
                    sub.pattern == "writer/#" for sub in s.subscriptions.values()))
                # The slow peer never reads; each write is its own loop turn and batch.
                for i in range(writes):
                    await writer.set("writer/blob", bytes([i % 256]) * 20_000)
                    assert slow_session.budget.used <= PEER_QUEUE_BYTES
                revisions = [e.revision async for e in _changes(fast, writes)]
            # Everyone else got every change, in order.
            assert revisions == list(range(2, writes + 2))
            assert core.drops > 0
            listed = (await fast_side.request("sessions"))["sessions"]
            assert max(s["drops"] for s in listed) == core.drops
        # The slow peer, reading at last, is told how many it missed.
        items = gaps = 0
        seqs = []
        # The broker runs in this loop: wait for frames off the loop, so it can send.
        while await asyncio.to_thread(slow.poll, 500):
            message = msgpack.unpackb(slow.recv(), timestamp=0)
            if message[0] == 2 and message[1] == "changes":
                seqs.append(message[2]["seq"])
                items += len(message[2]["items"])
                gaps += message[2].get("gap", 0)
        assert gaps > 0 and items + gaps == writes, (items, gaps)
        assert seqs == list(range(1, len(seqs) + 1))
    finally:
        slow.close(linger=0)
        ctx.term()


async def test_large_values_to_a_peer_that_does_not_read_stay_within_its_budget(
    broker: BrokerProcess,
) -> None:
    """ZeroMQ's high-water mark counts frames: 1,000 changes of 256 KiB each would be
    250 MB held for a peer that does not read. The broker hands it large frames only as
    earlier ones leave ZeroMQ's queue, so what it holds stays near the 8 MiB budget,
    and the rest is dropped and counted (policy all: items plus gap make the writes)."""
    writes, size = 400, 256 * 1024  # 100 MiB in all
    process = psutil.Process(broker.proc.pid)
    ctx = zmq.Context()
    slow = _slow_peer(ctx, broker.ipc)
    try:
        async with Client(broker.ipc, role="plugin", name="writer", timeout=30) as writer, \
                Client(broker.ipc) as fast_side:
            await writer.declare("writer/blob", "bytes", b"")
            fast = await fast_side.subscribe("writer/blob", policy="all", current=False)
            _subscribe_raw(slow)
            async with asyncio.timeout(30):
                await asyncio.to_thread(_reply, slow, 2)  # subscribed: the change follows
                before = process.memory_info().rss
                received = asyncio.create_task(_delivered(fast, writes))
                for i in range(writes):
                    writer.set_nowait("writer/blob", bytes([i % 256]) * size)
                    if i % 20 == 19:  # keep pace, and keep the slow peer's session alive
                        await writer.request("ping")
                        slow.send(msgpack.packb([2, "ping", {}]))
                grown = process.memory_info().rss - before
                # The reading subscriber got every change, or was told of it as a gap
                # (the burst outran its budget, if at all, by a handful).
                assert sum(await received) == writes
                assert grown < 48 * 2**20, f"the broker grew by {grown / 2**20:.0f} MiB"
                # Reading at last, the slow peer is given or told of every change.
                assert sum(await asyncio.to_thread(_counted, slow, writes)) == writes
    finally:
        slow.close(linger=0)
        ctx.term()


def _counted(sock: zmq.Socket[bytes], count: int) -> tuple[int, int]:
    """Items and gaps of the ``changes`` read, once they add up to ``count`` (or no
    frame came for 5 s)."""
    items = gaps = 0
    while items + gaps < count and sock.poll(5000):
        message = msgpack.unpackb(sock.recv(), timestamp=0)
        if message[0] == 2 and message[1] == "changes":
            items += len(message[2]["items"])
            gaps += message[2].get("gap", 0)
    return items, gaps


def test_a_peer_flooding_large_writes_is_held_back_not_buffered(broker: BrokerProcess) -> None:
    """A writer that sends faster than the broker applies is held back by ZeroMQ's and
    TCP's flow control after a few frames (receive_hwm); it used to be read ahead by up to
    1,000 frames, 3 GB of 3 MB writes (753 MiB of broker RSS in a probe)."""
    process = psutil.Process(broker.proc.pid)
    peak, done = [0], threading.Event()

    def watch() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            done.wait(0.005)

    ctx = zmq.Context()
    writer = RawPeer(ctx, broker.ipc)
    try:
        writer.hello("plugin", name="flood")
        writer.call("declare", name="flood/x", type="bytes", value=b"")
        before = process.memory_info().rss
        watcher = threading.Thread(target=watch)
        watcher.start()
        frame = msgpack.packb([2, "set", {"target": "flood/x", "value": b"z" * 3_000_000}])
        for _ in range(800):  # 2.4 GB
            writer.send(frame)
        assert "instance" in writer.call("ping")  # every write applied
        done.set()
        watcher.join()
        grown = peak[0] - before
        assert grown < 256 * 2**20, f"the broker grew by {grown / 2**20:.0f} MiB"
    finally:
        done.set()
        writer.close()
        ctx.term()


def _slow_peer(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> zmq.Socket[bytes]:
    """A raw peer that takes as little as it can from the socket until it reads."""
    slow = ctx.socket(zmq.DEALER)
    slow.setsockopt(zmq.RCVHWM, 1)
    slow.setsockopt(zmq.RCVBUF, 4096)
    slow.setsockopt(zmq.LINGER, 0)
    slow.connect(endpoint)
    return slow


def _subscribe_raw(slow: zmq.Socket[bytes]) -> None:
    """hello (msgid 1) and a subscribe to writer/# under policy all (msgid 2)."""
    slow.send(msgpack.packb([0, 1, "hello", {"versions": [1], "role": "client"}]))
    slow.send(msgpack.packb([0, 2, "subscribe", {"pattern": "writer/#", "policy": "all",
                                                 "current": False}]))


def _reply(sock: zmq.Socket[bytes], msgid: int) -> None:
    """Wait for the reply to request ``msgid`` (fails after 5 s without a frame)."""
    while sock.poll(5000):
        message = msgpack.unpackb(sock.recv(), timestamp=0)
        if message[0] == 1 and message[1] == msgid:
            assert message[2] is None, message
            return
    raise AssertionError(f"no reply to request {msgid}")


async def _delivered(sub: Subscription, count: int) -> tuple[int, int]:
    """Changes delivered and changes reported lost (gaps), once they add up to count."""
    changes = gaps = 0
    async for event in sub:
        if isinstance(event, Change):
            changes += 1
        elif isinstance(event, Gap):
            gaps += event.count
        if changes + gaps >= count:
            return changes, gaps
    return changes, gaps


async def _changes(sub: Subscription, count: int) -> AsyncIterator[Change]:
    seen = 0
    async for event in sub:
        if isinstance(event, Change):
            yield event
            seen += 1
            if seen == count:
                return


class _EarlyTimers(asyncio.SelectorEventLoop):
    """An event loop whose timers fire 2 ms before they are due, as uvloop's can (by
    up to a millisecond: its clock counts milliseconds)."""

    def call_at(self, when: float, *args: Any, **kwargs: Any) -> asyncio.TimerHandle:
        return super().call_at(when - 0.002, *args, **kwargs)


def test_a_timer_that_fires_early_is_armed_again() -> None:
    """An idle broker runs on its timer alone: a session that says hello and goes
    quiet ends after the session timeout, and its tcp connection with it, even when
    each timer fires before its deadline (the pass then finds nothing due)."""

    async def main() -> None:
        server = BrokerServer(ServerConfig(
            endpoints=("tcp://127.0.0.1:*",),
            core=CoreConfig(heartbeat_ms=100, session_timeout_ms=300)))
        serving = asyncio.create_task(server.serve())
        async with asyncio.timeout(5):
            await server.ready.wait()
        try:
            assert await asyncio.to_thread(hung_up_after_hello, server.endpoints[0], 5), \
                f"the silent session still stands: {list(server.core.sessions.values())}"
            assert not server.core.sessions
        finally:
            server.stop()
            async with asyncio.timeout(10):
                await serving

    with asyncio.Runner(loop_factory=_EarlyTimers) as runner:
        runner.run(main())


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
            # A later request with a shorter timeout still times out on its own time.
            patient = asyncio.ensure_future(
                client.request("get", {"target": "system/broker/version"}, timeout=30))
            async with asyncio.timeout(5):
                with pytest.raises(RequestTimeout, match="get: no reply within 0.3 s"):
                    await client.request("get", {"target": "system/broker/version"},
                                         timeout=0.3)
            assert not patient.done()
        finally:
            broker.signal(signal.SIGCONT)
        async with asyncio.timeout(10):
            assert (await patient)["value"]
        assert await client.request("ping")


async def test_cancelled_requests_are_forgotten(processes: Processes,
                                                broker: BrokerProcess) -> None:
    async with Client(broker.ipc, reconnect=False) as client:
        broker.signal(signal.SIGSTOP)
        try:
            given_up = [asyncio.ensure_future(client.request("ping", timeout=30))
                        for _ in range(100)]
            await asyncio.sleep(0)
            for future in given_up:
                future.cancel()
            # Cancelled requests ahead of it do not hold up another request's timeout.
            async with asyncio.timeout(5):
                with pytest.raises(RequestTimeout, match="ping: no reply within 0.3 s"):
                    await client.request("ping", timeout=0.3)
        finally:
            broker.signal(signal.SIGCONT)
        async with asyncio.timeout(10):
            assert await client.request("ping")
        assert not client._pending, "requests nobody waits for are still kept"


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
        # With on_message, each message goes to the callback as it is read.
        heard: asyncio.Queue[Message] = asyncio.Queue()
        called = await listener_side.listen("alerts/#", on_message=heard.put_nowait)
        assert await publisher.publish("alerts/flood/cellar", b"\x04") == 1
        message = await asyncio.wait_for(heard.get(), 5)
        assert (message.topic, message.payload) == ("alerts/flood/cellar", b"\x04")
        with pytest.raises(PlugboardError, match="hands what arrives to on_message"):
            await called.next(1)


async def test_writes_that_do_not_wait_arrive_in_order_and_refusals_come_back(
        processes: Processes) -> None:
    broker = processes.broker()
    async with Client(broker.ipc, role="plugin", name="fast") as writer, \
            Client(broker.ipc) as reader:
        await writer.declare("fast/n", "int", 0, max=5000)
        changes = await reader.subscribe("fast/n", current=False, policy="all")
        refused: list[object] = []
        writer.on_error(refused.append)
        for value in range(1, 2001):
            writer.set_nowait("fast/n", value)
        writer.set_many_nowait({"fast/n": 9999})
        seen = await processes.until(changes, lambda e: isinstance(e, Change) and e.value == 2000)
        values = [e.value for e in seen if isinstance(e, Change)]
        assert values == list(range(1, 2001))  # every one, in order
        await writer.request("ping")  # answered after the refusal was sent
        assert writer.write_errors == 1 and "above the maximum 5000" in str(refused[0])
        assert (await reader.get("fast/n")).value == 2000


async def test_a_wake_up_with_nothing_to_read_leaves_both_sides_reading(
        small_hwm_server: BrokerServer) -> None:
    """The broker and the SDK receive at once when their socket's descriptor signals.
    ZeroMQ also signals with no frame behind it; such a wake-up must leave both reading."""
    server = small_hwm_server
    async with Client(server.endpoints[0]) as client:
        for _ in range(3):
            for listener in server._listeners:
                server._readable(listener)  # nothing waits: a failed receive
            client._on_readable(True)
            reply = await client.request("ping", timeout=5)
            assert reply["instance"] == server.core.instance
