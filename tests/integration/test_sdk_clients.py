"""The blocking SyncClient (no thread: it works inside its calls) and batch delivery."""

from __future__ import annotations

import asyncio
import gc
import select
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from plugboard.protocol import Timestamp
from plugboard.protocol.changes import TIMESTAMP
from plugboard.sdk import (
    Batch,
    Change,
    Client,
    ConnectionFailed,
    Gap,
    InvalidValue,
    PlugboardError,
    Reconnected,
    Removed,
    RequestTimeout,
    SyncClient,
    Synced,
)
from plugboard.sdk import SyncSubscription as SyncSub
from plugboard.sdk import _client as client_module
from plugboard.sdk._socket import SEND_BYTES

from .conftest import Processes
from .processes import BrokerProcess, free_port

pytestmark = pytest.mark.integration


def until(sub: SyncSub, predicate: Callable[[Any], bool], timeout: float = 10) -> list[Any]:
    """Events up to and including the first that satisfies ``predicate``."""
    seen = []
    while True:
        seen.append(sub.next(timeout))
        if predicate(seen[-1]):
            return seen


def test_sync_client_keeps_waiting_sessions_renews_lapsed_ones(broker: BrokerProcess,
                                                                processes: Processes) -> None:
    """The test broker ends a session after 1.5 s of silence. A client waiting in
    next() pings and keeps its session; one left untouched loses it, and its next call
    says hello again, re-declares and is applied."""
    with SyncClient(broker.ipc, role="plugin", name="lapsing") as plugin, \
            SyncClient(broker.ipc) as monitor:
        plugin.declare("lapsing/x", "int", 1)
        sub = monitor.subscribe("lapsing/#")
        until(sub, lambda e: isinstance(e, Synced))
        first_session = plugin.session
        # The plugin makes no call: the broker ends its session, its property goes.
        until(sub, lambda e: isinstance(e, Removed) and e.name == "lapsing/x")
        plugin.set("lapsing/x", 5)
        assert plugin.session not in (None, first_session)
        until(sub, lambda e: isinstance(e, Change) and e.name == "lapsing/x" and e.value == 5)
        assert monitor.get("lapsing/x").value == 5


def test_sync_client_follows_a_broker_restart(processes: Processes,
                                              broker: BrokerProcess) -> None:
    with SyncClient(broker.ipc) as monitor:
        sub = monitor.subscribe("system/broker/#")
        until(sub, lambda e: isinstance(e, Synced))
        old = monitor.instance
        broker.signal(signal.SIGKILL)
        broker.wait(5)
        restarted = processes.broker(broker.state_dir)
        seen = until(sub, lambda e: isinstance(e, Synced), timeout=20)
        reconnects = [e for e in seen if isinstance(e, Reconnected)]
        assert reconnects and reconnects[0].instance_changed
        assert monitor.instance == restarted.instance != old


async def test_a_reader_that_falls_behind_is_told_and_its_subscription_made_again(
    broker: BrokerProcess,
) -> None:
    """The client reads its socket whatever the reader does: past max_pending what waits
    is dropped, the reader gets one Gap counting it, and the subscription goes on."""
    async with Client(broker.ipc, role="plugin", name="fast") as writer, \
            Client(broker.ipc) as reader:
        await writer.declare("fast/n", "int", 0)
        sub = await reader.subscribe("fast/n", policy="all", current=False, max_pending=50)
        for i in range(1, 501):
            writer.set_nowait("fast/n", i)
        await writer.request("ping")  # all applied
        await reader.request("ping")  # and all their changes read, after the batches
        gap = await sub.next(5)
        assert isinstance(gap, Gap) and gap.count == 500, gap
        await reader.request("ping")  # answered once the subscription is made again
        await writer.set("fast/n", 501)
        change = await sub.next(5)
        assert isinstance(change, Change) and change.value == 501
        sessions = (await reader.request("sessions"))["sessions"]
        assert sum(s["subscriptions"] for s in sessions) == 1  # the old one is gone
        # Closed while behind: the reader is told, and nothing is made again.
        behind = await reader.subscribe("fast/n", policy="all", current=False,
                                        max_pending=5)
        for i in range(20):
            writer.set_nowait("fast/n", i)
        await writer.request("ping")
        await reader.request("ping")
        await behind.close()
        assert isinstance(await behind.next(5), Gap)
        with pytest.raises(StopAsyncIteration):
            await behind.next(5)
        sessions = (await reader.request("sessions"))["sessions"]
        assert sum(s["subscriptions"] for s in sessions) == 1
        with pytest.raises(ValueError, match="max_pending"):
            await reader.subscribe("fast/n", max_pending=0)


async def test_a_listener_keeps_max_pending_messages_and_counts_the_rest(
    broker: BrokerProcess,
) -> None:
    async with Client(broker.ipc, role="plugin", name="talker") as talker, \
            Client(broker.ipc) as reader:
        listener = await reader.listen("news/#", max_pending=10)
        for i in range(50):
            await talker.publish("news/a", bytes([i]))
        await reader.request("ping")  # every message read by the client
        assert listener.dropped == 40
        assert [(await listener.next(5)).payload for _ in range(10)] == \
            [bytes([i]) for i in range(10)]
        await talker.publish("news/a", b"again")  # caught up: kept again
        assert (await listener.next(5)).payload == b"again" and listener.dropped == 40


def test_a_sync_reader_that_falls_behind_is_told_and_its_subscription_made_again(
    broker: BrokerProcess,
) -> None:
    with SyncClient(broker.ipc, role="plugin", name="fast") as writer, \
            SyncClient(broker.ipc) as reader:
        writer.declare("fast/n", "int", 0)
        sub = reader.subscribe("fast/n", policy="all", max_pending=50)  # a snapshot first
        for i in range(1, 501):
            writer.set_nowait("fast/n", i)
        writer.ping()
        reader.ping()  # reads what came meanwhile: the snapshot, Synced, 500 changes
        gap = sub.next(5)
        assert isinstance(gap, Gap) and gap.count == 501, gap
        snapshot = sub.next_batch(5)  # made again with current values: a fresh snapshot
        assert isinstance(snapshot, Batch) and snapshot.snapshot
        assert list(snapshot.values()) == [("fast/n", 500)]
        assert isinstance(sub.next(5), Synced)
        writer.set("fast/n", 501)
        assert sub.next(5).value == 501  # type: ignore[union-attr]
        # Closed while behind: the reader is told, and nothing is made again.
        behind = reader.subscribe("fast/n", policy="all", current=False, max_pending=5)
        for i in range(20):
            writer.set_nowait("fast/n", i)
        writer.ping()
        reader.ping()
        behind.close()
        assert isinstance(behind.next(5), Gap)
        with pytest.raises(StopIteration):
            behind.next(5)
        sessions = reader.request("sessions")["sessions"]
        assert sum(s["subscriptions"] for s in sessions) == 1  # ``sub`` only


def test_sync_batches_and_writes_that_do_not_wait(broker: BrokerProcess) -> None:
    with SyncClient(broker.ipc, role="plugin", name="batchy") as plugin, \
            SyncClient(broker.ipc) as monitor:
        for i in range(3):
            plugin.declare(f"batchy/v{i}", "int", i)
        sub = monitor.subscribe("batchy/#", policy="all")
        snapshot = sub.next_batch(5)
        assert isinstance(snapshot, Batch) and snapshot.snapshot
        assert sorted(snapshot.values()) == [("batchy/v0", 0), ("batchy/v1", 1),
                                             ("batchy/v2", 2)]
        assert isinstance(sub.next_batch(5), Synced)
        refused: list[Exception] = []
        plugin.on_error(refused.append)
        plugin.set_many_nowait({"batchy/v0": 10, "batchy/v1": 11, "batchy/v2": 12})
        plugin.set_nowait("batchy/v0", "not an int")
        plugin.ping()  # the refusal arrives before the ping's reply
        assert plugin.write_errors == 1 and isinstance(refused[0], InvalidValue)
        batch = sub.next_batch(5)
        assert isinstance(batch, Batch) and not batch.snapshot
        assert list(batch.values()) == [("batchy/v0", 10), ("batchy/v1", 11),
                                        ("batchy/v2", 12)]
        assert [c.revision for c in batch] == [2, 2, 2]
        # The items carry the write's time as nanoseconds; a Change as a Timestamp.
        written_ns = batch.items[0][TIMESTAMP]
        assert type(written_ns) is int and abs(written_ns - time.time_ns()) < 60 * 10**9
        assert all(type(c.timestamp) is Timestamp for c in batch)
        assert batch[1].timestamp.to_unix_nano() == written_ns  # one set_many, one time


async def test_async_batches_and_per_item_view_share_one_queue(broker: BrokerProcess) -> None:
    async with Client(broker.ipc, role="plugin", name="abatch") as plugin, \
            Client(broker.ipc) as monitor:
        await plugin.declare("abatch/a", "int", 0)
        await plugin.declare("abatch/b", "int", 0)
        sub = await monitor.subscribe("abatch/#", policy="all", current=False)
        await plugin.set_many({"abatch/a": 1, "abatch/b": 2})
        await plugin.set_many({"abatch/a": 3, "abatch/b": 4})
        first = await sub.next(5)  # one change taken from the first batch...
        assert isinstance(first, Change) and (first.name, first.value) == ("abatch/a", 1)
        rest = await sub.next_batch(5)  # ...the batch hands over what is left of it
        assert isinstance(rest, Batch) and list(rest.values()) == [("abatch/b", 2)]
        whole = await asyncio.wait_for(anext(aiter(sub.batches())), 5)
        assert isinstance(whole, Batch)
        assert [(c.name, c.value) for c in whole] == [("abatch/a", 3), ("abatch/b", 4)]


async def test_a_change_that_arrives_just_before_a_send_is_read(broker: BrokerProcess) -> None:
    """ZeroMQ's descriptor signals a waiting frame once, and a send can take that signal
    (ZeroMQ handles its pending commands inside a send): a change that arrived while
    the loop was busy, just before a send, is still read, by the read pass each send is
    followed by, not left waiting for a frame that may never come."""
    with SyncClient(broker.ipc, role="plugin", name="edge") as writer:
        writer.declare("edge/x", "int", 0)
        async with Client(broker.ipc) as monitor:
            sub = await monitor.subscribe("edge/x", policy="all", current=False)
            assert monitor._sock is not None
            descriptor = int(monitor._sock.getsockopt(zmq.FD))
            for value in range(1, 21):
                writer.set("edge/x", value)  # blocks this loop: nothing reads meanwhile
                # The change's signal is there; select leaves it for the send to take.
                assert select.select([descriptor], [], [], 5)[0], "the change never came"
                pinged = monitor.request_soon("ping")
                batch = await sub.next_batch(2)
                assert isinstance(batch, Batch) and [c.value for c in batch] == [value]
                await pinged


async def test_a_send_yields_the_cpu_only_outside_a_busy_exchange(
        broker: BrokerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first send since the socket was read yields the CPU to ZeroMQ's I/O thread,
    unless a frame arrived within EXCHANGING_S (a writer sending its next burst right
    after a reply): there the yield hands the CPU to other busy processes instead.
    EXCHANGING_S is set to an hour, then to nothing, so the test does not hang on how
    fast this machine is."""
    yields: list[None] = []
    monkeypatch.setattr(client_module, "_let_zmq_send", lambda: yields.append(None))
    async with Client(broker.ipc, role="plugin", name="yielding") as client:
        await client.declare("yielding/x", "int", 0)
        monkeypatch.setattr(client_module, "EXCHANGING_S", 3600.0)
        yields.clear()
        await client.request("ping")  # the declare's reply was heard: a busy exchange
        client.set_nowait("yielding/x", 1)
        assert yields == []
        monkeypatch.setattr(client_module, "EXCHANGING_S", 0.0)
        await client.request("ping")  # sent while set_nowait's read check was due
        client.set_nowait("yielding/x", 2)  # the first send since the reply was read
        assert yields == [None]
        assert (await client.get("yielding/x")).value == 2


async def test_on_batch_hands_each_event_to_the_callback_as_it_is_read(
        broker: BrokerProcess) -> None:
    """A subscription with on_batch keeps nothing: the snapshot, Synced, each
    notification's batch and a removal reach the callback in order; a callback that
    raises is counted and the events after it still come; iterating is refused."""
    async with Client(broker.ipc, role="plugin", name="onb") as plugin, \
            Client(broker.ipc) as monitor:
        await plugin.declare("onb/a", "int", 7)
        seen: list[Any] = []
        arrived = asyncio.Event()

        def on_batch(event: Any) -> None:
            seen.append(event)
            arrived.set()
            if isinstance(event, Batch) and [c.value for c in event] == [1]:
                raise ValueError("a bug of the callback's own")

        sub = await monitor.subscribe("onb/#", policy="all", on_batch=on_batch)
        await plugin.set("onb/a", 1)
        await plugin.set_many({"onb/a": 2})
        await plugin.delete("onb/a")
        async with asyncio.timeout(5):
            while not any(isinstance(event, Removed) for event in seen):
                arrived.clear()
                await arrived.wait()
        described = [(type(e).__name__, [(c.value, c.snapshot) for c in e])
                     if isinstance(e, Batch) else type(e).__name__ for e in seen]
        assert described == [("Batch", [(7, True)]), "Synced", ("Batch", [(1, False)]),
                             ("Batch", [(2, False)]), "Removed"]
        assert monitor.callback_errors == 1
        with pytest.raises(PlugboardError, match="'onb/#' hands what arrives to on_batch"):
            await sub.next_batch(1)
        await sub.close()
        await plugin.declare("onb/b", "int", 0)
        await monitor.request("ping")  # a batch sent before it would have arrived first
        assert len(seen) == 5


async def test_a_closed_client_is_freed_without_the_cycle_collector(
        broker: BrokerProcess) -> None:
    """Writes, a subscription read and close leave no cycle (a cancelled task kept by
    the client would refer back to it through its frames): a program that opens
    clients as it goes does not wait on the collector for their memory."""
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(3):
            async with Client(broker.ipc, role="plugin", name="freed") as client:
                await client.declare("freed/x", "int", 0)
                sub = await client.subscribe("freed/x", policy="all", current=False)
                await client.set("freed/x", 1)
                client.set_nowait("freed/x", 2)
                assert [c.value for c in await sub.next_batch(5)] == [1]
        gc.collect()
        # Only the SDK's own objects count: the test runner may leave cycles of its own.
        assert [type(o).__name__ for o in gc.garbage
                if type(o).__module__.startswith("plugboard.")] == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


async def test_async_waits_time_out_and_end_with_the_subscription(
        broker: BrokerProcess) -> None:
    async with Client(broker.ipc, role="plugin", name="await") as plugin, \
            Client(broker.ipc) as monitor:
        await plugin.declare("await/x", "int", 0)
        sub = await monitor.subscribe("await/#", current=False)
        async with asyncio.timeout(5):
            with pytest.raises(RequestTimeout, match="nothing on 'await/#' within 0.2 s"):
                await sub.next_batch(0.2)
            with pytest.raises(RequestTimeout):
                await sub.next(0.2)
        await plugin.set("await/x", 1)
        change = await sub.next(5)
        assert isinstance(change, Change) and change.value == 1
        await plugin.set("await/x", 2)
        await monitor.request("ping")  # its reply comes after the batch on that connection
        await sub.close()  # what arrived before the close is still read, then the end
        batch = await sub.next_batch(0)
        assert isinstance(batch, Batch) and list(batch.values()) == [("await/x", 2)]
        with pytest.raises(StopAsyncIteration):
            await sub.next_batch(5)
        with pytest.raises(StopAsyncIteration):
            await sub.next(5)


async def test_a_write_the_broker_never_confirmed_does_not_stop_the_restore(
        processes: Processes, broker: BrokerProcess) -> None:
    """A set_nowait over the maximum is refused by a notification the SDK cannot tie to
    one write, so after a restart the re-declaration carries it and is refused too: the
    property is declared again with the last value the broker confirmed, and what
    follows it is restored as well."""
    async with Client(broker.ipc, role="plugin", name="stubborn") as plugin:
        await plugin.declare("stubborn/a", "int", 1, max=10)
        await plugin.declare("stubborn/b", "int", 2)
        plugin.set_nowait("stubborn/a", 50)
        await plugin.request("ping")  # its reply comes after the refusal
        assert plugin.write_errors == 1
        broker.signal(signal.SIGKILL)
        broker.wait(5)
        restarted = processes.broker(broker.state_dir)
        async with Client(restarted.ipc) as monitor:
            sub = await monitor.subscribe("stubborn/#")
            values: dict[str, Any] = {}

            def both_back(event: object) -> bool:
                if isinstance(event, Change):
                    values[event.name] = event.value
                return len(values) == 2

            await processes.until(sub, both_back, timeout=20)
        assert values == {"stubborn/a": 1, "stubborn/b": 2}
        assert await plugin.set("stubborn/a", 3)  # the plugin's session works on


async def test_a_client_whose_connect_failed_connects_once_a_broker_is_there(
        processes: Processes) -> None:
    """An agent started before its broker retries connect on one client: a failed
    connect released everything, and used to leave a terminated ZeroMQ context behind,
    so the retry failed with "Operation not supported"."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    client = Client(endpoint, timeout=0.5, reconnect=False)
    with pytest.raises(ConnectionFailed, match="no broker answered"):
        await client.connect()
    assert client.closed.is_set()
    processes.broker(tcp=endpoint)
    await client.connect()
    try:
        assert not client.closed.is_set()
        assert (await client.request("ping"))["instance"]
    finally:
        await client.close()


async def test_a_request_without_a_connection_says_what_to_do(processes: Processes) -> None:
    """Never connected: connect first. Closed: closed. Not a bare 'not connected'."""
    client = Client(f"tcp://127.0.0.1:{free_port()}", reconnect=False)
    with pytest.raises(ConnectionFailed, match=r"await client.connect\(\) first"):
        await client.get("x")
    with pytest.raises(ConnectionFailed, match=r"await client.connect\(\) first"):
        client.set_nowait("x", 1)
    broker = processes.broker()
    async with Client(broker.ipc) as closing:
        pass
    with pytest.raises(ConnectionFailed, match="the client was closed"):
        await closing.get("x")
    await client.close()


def test_the_asyncio_client_runs_on_uvloop(broker: BrokerProcess) -> None:
    """Programs often run on uvloop, as the broker does; the SDK works there as on
    asyncio's own loop. uvloop's timers fire up to a millisecond early: a request still
    fails only once its timeout has passed, and the next timer is armed again."""
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with Client(broker.ipc, role="plugin", name="uv") as plugin, \
                Client(broker.ipc, reconnect=False) as monitor:
            await plugin.declare("uv/x", "int", 0)
            sub = await monitor.subscribe("uv/#", current=False)
            await plugin.set("uv/x", 1)
            change = await sub.next(5)
            assert isinstance(change, Change) and change.value == 1
            broker.signal(signal.SIGSTOP)
            try:
                patient = asyncio.ensure_future(monitor.request("ping", timeout=30))
                for wait in (0.2, 0.3):
                    started = loop.time()
                    async with asyncio.timeout(5):
                        with pytest.raises(RequestTimeout, match=f"no reply within {wait} s"):
                            await monitor.request("ping", timeout=wait)
                    assert loop.time() >= started + wait  # as the deadline is reckoned
                assert not patient.done()
            finally:
                broker.signal(signal.SIGCONT)
            async with asyncio.timeout(10):
                await patient

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


@pytest.mark.parametrize("blocking", [False, True], ids=["Client", "SyncClient"])
def test_large_frames_waiting_unsent_are_bounded_in_bytes(broker: BrokerProcess,
                                                          blocking: bool) -> None:
    """ZeroMQ's high-water mark counts frames: by it alone, writes of 1 MiB to a broker
    that reads nothing would hold 10 GB before a send failed. They fail once SEND_BYTES
    of large frames wait unsent (plus what the kernel's buffer took), and writing works
    again once the broker reads."""
    mib = b"\0" * (1 << 20)
    accepted = 0

    def fill(set_nowait: Callable[[str, bytes], None]) -> None:
        nonlocal accepted
        broker.signal(signal.SIGSTOP)
        try:
            with pytest.raises(ConnectionFailed, match="64 MiB of large ones wait unsent"):
                for _ in range(1000):
                    set_nowait("big/x", mib)
                    accepted += 1
        finally:
            broker.signal(signal.SIGCONT)

    if blocking:
        with SyncClient(broker.ipc, role="plugin", name="big") as sync:
            sync.declare("big/x", "bytes", b"")
            fill(sync.set_nowait)
            sync.set("big/x", b"after")
            assert sync.get("big/x").value == b"after"
    else:
        async def main() -> None:
            async with Client(broker.ipc, role="plugin", name="big") as client:
                await client.declare("big/x", "bytes", b"")
                fill(client.set_nowait)
                await client.set("big/x", b"after")
                assert (await client.get("big/x")).value == b"after"

        asyncio.run(main())
    assert (SEND_BYTES >> 20) - 1 <= accepted <= (SEND_BYTES >> 20) + 8, broker.describe()
