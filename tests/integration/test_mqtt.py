"""The MQTT bridge against a real mosquitto, checked with mosquitto's own
``mosquitto_sub`` and ``mosquitto_pub``."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from plugboard.sdk import Change, Client

from .conftest import Processes
from .processes import BrokerProcess, ManagedProcess, bundled_plugin, free_port, short_tmpdir
from .test_web import needs

pytestmark = pytest.mark.integration
BULK = 5000


@dataclass
class Bridged:
    broker: BrokerProcess
    port: int
    mosquitto: ManagedProcess
    panel: Client
    """Plugin ``panel`` (started by hand): panel/level, 0..10, writable by anyone."""
    subs: list[subprocess.Popen[str]] = field(default_factory=list)
    """Every mosquitto_sub started, killed at teardown whatever the test did."""

    def sub(self, *args: str) -> subprocess.Popen[str]:
        """mosquitto_sub, printing ``topic payload`` lines."""
        process = subprocess.Popen([needs("mosquitto_sub", "mosquitto-clients"), "-p",
                                    str(self.port), "-v", *args], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        self.subs.append(process)
        return process

    def pub(self, topic: str, payload: str) -> None:
        subprocess.run([needs("mosquitto_pub", "mosquitto-clients"), "-p", str(self.port),
                        "-q", "1", "-t", topic, "-m", payload], check=True, timeout=10)


def mosquitto(processes: Processes, port: int) -> ManagedProcess:
    """A mosquitto of the test's own on ``port``, ready once it says it is running (its
    log is line-buffered through stdbuf, or the line would wait in a pipe buffer), with
    mosquitto's default limits."""
    folder = short_tmpdir()
    (folder / "mosquitto.conf").write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest stdout\n")
    server = ManagedProcess(["stdbuf", "-oL", needs("mosquitto", "mosquitto"), "-c",
                             str(folder / "mosquitto.conf")],
                            stderr_path=folder / "mosquitto.stderr", stdout=subprocess.PIPE)
    processes.started.append(server)
    server.wait_for_line(re.compile(r"mosquitto version \S+ running"), 10)
    return server


async def until_value(client: Client, name: str, done: object, processes: Processes,
                      timeout: float = 15) -> None:
    sub = await client.subscribe(name)
    await processes.until(sub, lambda e: isinstance(e, Change) and done(e.value),  # type: ignore[operator]
                          timeout)


@pytest.fixture
async def bridged(processes: Processes) -> AsyncIterator[Bridged]:
    port = free_port()
    server = mosquitto(processes, port)
    root = short_tmpdir()
    bundled_plugin(root, "mqtt_bridge", port=port, patterns=["panel/#", "bulk/#"])
    broker = processes.broker(None, "--plugins", str(root))
    async with Client(broker.ipc, role="plugin", name="panel") as panel:
        await panel.declare("panel/level", "int", 1, min=0, max=10, writable_by=["*"])
        async with Client(broker.ipc) as client:
            await until_value(client, "mqtt_bridge/connected", lambda v: v is True, processes)
        bridged = Bridged(broker, port, server, panel)
        try:
            yield bridged
        finally:
            for process in bridged.subs:
                process.kill()
                process.communicate()


def lines_of(process: subprocess.Popen[str], timeout: float) -> list[str]:
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    assert process.returncode == 0, f"mosquitto_sub: {err}"
    return out.splitlines()


async def test_changes_reach_mosquitto_sub(bridged: Bridged) -> None:
    watching = bridged.sub("-t", "plugboard/panel/level", "-C", "2", "-W", "15")
    assert watching.stdout is not None
    # The retained value comes first: it also says mosquitto_sub is subscribed.
    first = await asyncio.to_thread(watching.stdout.readline)
    assert first.strip() == "plugboard/panel/level 1"
    await bridged.panel.set("panel/level", 5)
    assert await asyncio.to_thread(lines_of, watching, 20) == ["plugboard/panel/level 5"]


async def test_a_command_sets_a_property_and_a_refusal_is_published(
        bridged: Bridged, processes: Processes) -> None:
    changes = await bridged.panel.subscribe("panel/level", current=False)
    bridged.pub("plugboard/set/panel/level", "3")
    await processes.until(changes, lambda e: isinstance(e, Change) and e.value == 3)
    # Errors are not retained: a retained marker on a second topic tells when the
    # subscriber is listening.
    subprocess.run([needs("mosquitto_pub", "mosquitto-clients"), "-p", str(bridged.port),
                    "-r", "-t", "test/marker", "-m", "here"], check=True, timeout=10)
    errors = bridged.sub("-t", "plugboard/errors", "-t", "test/marker", "-C", "2", "-W", "15")
    assert errors.stdout is not None
    assert (await asyncio.to_thread(errors.stdout.readline)).strip() == "test/marker here"
    bridged.pub("plugboard/set/panel/level", "42")
    (line,) = await asyncio.to_thread(lines_of, errors, 20)
    topic, _, payload = line.partition(" ")
    report = json.loads(payload)
    assert topic == "plugboard/errors" and report["name"] == "panel/level"
    assert report["code"] == "out_of_range" and "maximum" in report["message"], report
    assert (await bridged.panel.get("panel/level")).value == 3


async def test_thousands_of_retained_topics_all_arrive(
        bridged: Bridged, processes: Processes) -> None:
    async with Client(bridged.broker.ipc, role="plugin", name="bulk", timeout=30) as bulk:
        await asyncio.gather(*(bulk.declare(f"bulk/p{i:04d}", "int", i) for i in range(BULK)))
        async with Client(bridged.broker.ipc) as client:
            # Every publish is acknowledged by mosquitto (QoS 1) before anyone subscribes.
            await until_value(client, "mqtt_bridge/published", lambda v: v >= BULK + 1,
                              processes, timeout=60)
        received = await asyncio.to_thread(
            lines_of, bridged.sub("-t", "plugboard/bulk/#", "-C", str(BULK), "-W", "60"), 70)
    assert len(received) == BULK
    assert {line.split(" ")[0] for line in received} == {
        f"plugboard/bulk/p{i:04d}" for i in range(BULK)}
    assert "plugboard/bulk/p4999 4999" in received


async def test_a_restarted_mqtt_broker_gets_every_value_again(
        bridged: Bridged, processes: Processes) -> None:
    async with Client(bridged.broker.ipc) as client:
        connected = await client.subscribe("mqtt_bridge/connected", current=False)
        before = (await client.get("mqtt_bridge/published")).value
        bridged.mosquitto.stop()  # no persistence: its retained messages are gone
        await processes.until(connected, lambda e: isinstance(e, Change) and e.value is False)
        bridged.mosquitto = mosquitto(processes, bridged.port)
        await processes.until(connected, lambda e: isinstance(e, Change) and e.value is True,
                              timeout=20)
        # Published again, and acknowledged: the new mosquitto holds it, retained.
        await until_value(client, "mqtt_bridge/published", lambda v: v > before, processes)
    first = await asyncio.to_thread(lines_of, bridged.sub(
        "-t", "plugboard/panel/level", "-C", "1", "-W", "10"), 15)
    assert first == ["plugboard/panel/level 1"]


async def test_an_outage_costs_one_value_per_property_not_a_queue_of_changes(
        bridged: Bridged, processes: Processes) -> None:
    """While mosquitto is away the bridge hands paho nothing (its queue would grow with
    every change for as long as the outage lasts): it keeps each property's newest
    value and publishes that on the reconnect."""
    async with Client(bridged.broker.ipc) as client:
        await until_value(client, "mqtt_bridge/queued", lambda v: v == 0, processes)
        before = (await client.get("mqtt_bridge/published")).value
        connected = await client.subscribe("mqtt_bridge/connected", current=False)
        bridged.mosquitto.stop()
        await processes.until(connected, lambda e: isinstance(e, Change) and e.value is False)
        seen = await client.subscribe("panel/level", current=False, policy="all")
        for i in range(300):
            await bridged.panel.set("panel/level", i % 11)
        await bridged.panel.set("panel/level", 7)
        await processes.until(seen, lambda e: isinstance(e, Change) and e.value == 7
                              and e.revision >= 302)
        bridged.mosquitto = mosquitto(processes, bridged.port)
        await processes.until(connected, lambda e: isinstance(e, Change) and e.value is True,
                              timeout=20)
        retained = await asyncio.to_thread(lines_of, bridged.sub(
            "-t", "plugboard/panel/level", "-C", "1", "-W", "10"), 15)
        assert retained == ["plugboard/panel/level 7"]
        await until_value(client, "mqtt_bridge/queued", lambda v: v == 0, processes)
        after = (await client.get("mqtt_bridge/published")).value
    assert after - before < 10, f"{after - before} publishes for one property's outage"


async def test_a_stalled_mqtt_broker_is_handed_no_more_than_the_bound(
        bridged: Bridged, processes: Processes) -> None:
    """mosquitto stopped (SIGSTOP: the connection stays up, nothing is acknowledged):
    paho is handed at most 1000 publishes, the other changes wait in the bridge, one per
    property, and all go out once mosquitto runs again."""
    figures: dict[str, int] = {}

    def counted(event: object) -> bool:
        if isinstance(event, Change):
            figures[event.name.rsplit("/", 1)[1]] = event.value
        return figures.get("queued", 0) + figures.get("waiting", 0) >= 3000

    async with Client(bridged.broker.ipc, role="plugin", name="bulk", timeout=30) as bulk, \
            Client(bridged.broker.ipc) as client:
        before = (await client.get("mqtt_bridge/published")).value
        watch = await client.subscribe("mqtt_bridge/+")
        bridged.mosquitto.signal(signal.SIGSTOP)
        try:
            await asyncio.gather(*(bulk.declare(f"bulk/s{i:04d}", "int", i)
                                   for i in range(3000)))
            await processes.until(watch, counted, timeout=30)
            assert figures["queued"] <= 1000 and figures["waiting"] >= 2000, figures
        finally:
            bridged.mosquitto.signal(signal.SIGCONT)
        await until_value(client, "mqtt_bridge/published", lambda v: v >= before + 3000,
                          processes, timeout=60)
        await until_value(client, "mqtt_bridge/waiting", lambda v: v == 0, processes)
