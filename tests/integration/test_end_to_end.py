"""A real broker, real plugin processes and a monitoring client over ipc and tcp."""

from __future__ import annotations

import asyncio
import signal

import pytest

from plugboard.protocol import Duration, Timestamp
from plugboard.sdk import (
    Batch,
    BatchEvent,
    Change,
    Client,
    InvalidValue,
    NotAllowed,
    Reconnected,
    Removed,
    SyncClient,
    Synced,
)

from .conftest import Processes
from .processes import BrokerProcess

pytestmark = pytest.mark.integration


def is_change(name: str, value: object = ...) -> object:
    return lambda e: isinstance(e, Change) and e.name == name and (
        value is ... or e.value == value)


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
async def test_plugin_and_monitoring_client(processes: Processes, broker: BrokerProcess,
                                            transport: str) -> None:
    endpoint = broker.ipc if transport == "ipc" else broker.tcp
    async with Client(endpoint) as monitor:
        sub = await monitor.subscribe("echo1/#", policy="all")
        await processes.until(sub, lambda e: isinstance(e, Synced))
        processes.plugin("echo.py", "echo1", broker, endpoint)
        seen = await processes.until(sub, is_change("echo1/echo"))
        names = {e.name for e in seen if isinstance(e, Change)}
        assert {"echo1/started", "echo1/period", "echo1/setpoint"} <= names
        typed = {e.name: e.value for e in seen if isinstance(e, Change)}
        assert isinstance(typed["echo1/started"], Timestamp)
        assert typed["echo1/period"] == Duration(250_000_000)

        # A client writes where the declaration allows; the plugin reacts by subscription.
        await monitor.set("echo1/setpoint", 21.5)
        await processes.until(sub, is_change("echo1/echo", 43.0))
        # Refusals say which rule.
        with pytest.raises(InvalidValue, match="above the maximum"):
            await monitor.set("echo1/setpoint", 1000)
        with pytest.raises(NotAllowed, match="writable by its owner"):
            await monitor.set("echo1/echo", 1.0)
        # Messages reach the plugin by name.
        await monitor.send("echo1", b"\x00ping")
        await processes.until(sub, is_change("echo1/messages", 1))


async def test_killed_plugin_properties_are_removed(processes: Processes,
                                                    broker: BrokerProcess) -> None:
    async with Client(broker.ipc) as monitor:
        plugin = processes.plugin("echo.py", "victim", broker)
        sub = await monitor.subscribe("victim/#", current=False)
        await processes.until(sub, is_change("victim/echo"))
        plugin.signal(signal.SIGKILL)
        plugin.wait(5)
        removed: set[str] = set()
        await processes.until(sub, lambda e: isinstance(e, Removed) and not removed.add(e.name)
                              and len(removed) == 5)
        assert (await monitor.list("victim/#")) == []


async def test_broker_stop_ends_plugins_cleanly(processes: Processes,
                                                broker: BrokerProcess) -> None:
    async with Client(broker.ipc) as monitor:
        plugin = processes.plugin("echo.py", "polite", broker)
        sub = await monitor.subscribe("polite/echo")
        await processes.until(sub, is_change("polite/echo"))
    broker.signal(signal.SIGINT)
    assert broker.wait(10) == 0, broker.describe()
    assert plugin.wait(10) == 0, plugin.describe()
    assert "end received" in plugin.stderr_path.read_text()


async def test_clients_reconnect_after_broker_restart(processes: Processes,
                                                      broker: BrokerProcess) -> None:
    processes.plugin("echo.py", "survivor", broker)
    async with Client(broker.ipc) as monitor:
        events: list[Reconnected] = []
        monitor.on_reconnect(events.append)
        sub = await monitor.subscribe("survivor/echo", policy="all")
        handed: list[BatchEvent] = []
        back = asyncio.Event()

        def on_batch(event: BatchEvent) -> None:
            """A callback subscription is told of the reconnect, then gets a snapshot."""
            handed.append(event)
            if any(isinstance(e, Reconnected) for e in handed) and isinstance(event, Batch) \
                    and ("survivor/echo", 14.0) in list(event.values()):
                back.set()

        await monitor.subscribe("survivor/echo", policy="all", on_batch=on_batch)
        await processes.until(sub, is_change("survivor/echo"))
        await monitor.set("survivor/setpoint", 7.0)
        await processes.until(sub, is_change("survivor/echo", 14.0))
        old_instance = monitor.instance

        broker.signal(signal.SIGKILL)
        broker.wait(5)
        restarted = processes.broker(broker.state_dir)

        seen = await processes.until(sub, is_change("survivor/echo", 14.0), timeout=20)
        reconnects = [e for e in seen if isinstance(e, Reconnected)]
        assert reconnects and reconnects[0].instance_changed
        assert monitor.instance == restarted.instance != old_instance
        # The plugin re-declared with the last value it had written itself (values other
        # peers wrote survive a restart only when persistent).
        assert (await monitor.get("survivor/echo")).value == 14.0
        assert events and events[0].instance_changed
        await asyncio.wait_for(back.wait(), 20)


async def test_sync_client_facade(broker: BrokerProcess, processes: Processes) -> None:
    processes.plugin("echo.py", "syncy", broker)

    def work() -> float:
        with SyncClient(broker.tcp) as client:
            sub = client.subscribe("syncy/echo")
            while not isinstance(event := sub.next(10), Change) or event.value != 4.0:
                if isinstance(event, Change) and event.value is None:  # declared: ready
                    client.set("syncy/setpoint", 2.0)
            return client.get("syncy/setpoint").value  # type: ignore[no-any-return]

    assert await asyncio.to_thread(work) == 2.0
