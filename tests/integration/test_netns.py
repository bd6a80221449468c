"""docker-compose.yml's topology on real hosts: each service's own command and
environment from the compose file, run in a network namespace of its own (volume
paths mapped to temp dirs, the service name ``broker`` to the broker host's address).

The agent's plugins reach ready and their properties reach the monitor on a third
host; cutting the agent's link ends their sessions after the session timeout and the
monitor sees the removals; restoring it brings every plugin back within 5 s; killing
the agent leaves no process behind. The compose file itself is checked by
``docker-compose config`` where Debian's docker-compose is installed.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from plugboard.sdk import Client
from plugboard.sdk._keys import CurveKeys, read_key_pair, read_public_key

from .netns import Host, Network, network_or_skip
from .processes import PLUGBOARD, ROOT, ManagedProcess, cannot_run, short_tmpdir, tail

pytestmark = pytest.mark.integration
COMPOSE_FILE = ROOT / "docker-compose.yml"
BROKER_PORT = 7700


def test_the_compose_file_is_valid() -> None:
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    assert set(compose["services"]) == {"broker", "agent", "monitor"}
    for service in compose["services"].values():
        assert service["image"] == "plugboard:latest" and "command" in service
    if shutil.which("docker-compose") is None:
        cannot_run("docker-compose (Debian's package) is not installed; checked the "
                   "structure only")
    checked = subprocess.run(["docker-compose", "-f", str(COMPOSE_FILE), "config", "-q"],
                             capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr


class Lines:
    """A process's stdout read by a thread, so a test can wait for a line (an event)
    and the process never blocks on a full pipe."""

    def __init__(self, stream: Any) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for raw in iter(stream.readline, b""):
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip())
                self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float, start: int = 0) -> int:
        """Index of the first line from ``start`` on that matches; fails after timeout.
        It blocks: call it in a thread from a test's event loop, whose clients must keep
        their heartbeats."""
        found = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for index in range(start, len(self.lines)):
                    if found.search(self.lines[index]):
                        return index
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no line matching {pattern!r} within {timeout} s; "
                                         f"last lines: {self.lines[-5:]}")
                self._changed.wait(left)


class Topology:
    """The compose services, each started on its own host."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self.folder = short_tmpdir()
        self.compose = yaml.safe_load(COMPOSE_FILE.read_text())
        self.paths = {"/app/plugins": str(ROOT / "plugins"), "/keys": str(self.folder / "keys"),
                      "/state": str(self.folder / "state"),
                      "/agent-state": str(self.folder / "agent-state"),
                      "/monitor-state": str(self.folder / "monitor-state")}
        self.hosts = {name: network.add(name) for name in self.compose["services"]}
        self.processes: list[ManagedProcess] = []

    def mapped(self, text: str) -> str:
        text = text.replace("tcp://broker:", f"tcp://{self.hosts['broker'].address}:")
        for path in sorted(self.paths, key=len, reverse=True):
            text = re.sub(rf"(?<![\w/-]){re.escape(path)}(?![\w-])", self.paths[path], text)
        return text

    def start(self, name: str) -> ManagedProcess:
        service = self.compose["services"][name]
        command = service["command"]
        argv = shlex.split(command) if isinstance(command, str) else list(command)
        env = {key: self.mapped(str(value))
               for key, value in (service.get("environment") or {}).items()}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        host = self.hosts[name]
        process = ManagedProcess([*host.exec_prefix(), *(self.mapped(a) for a in argv)],
                                 stderr_path=self.folder / f"{name}.stderr", env=env,
                                 stdout=subprocess.PIPE)
        self.processes.append(process)
        return process

    def describe(self) -> str:
        return "\n\n".join(p.describe() for p in self.processes)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


@pytest.fixture
def topology() -> Iterator[Topology]:
    network = network_or_skip()
    topology = None
    try:
        topology = Topology(network)
        yield topology
    finally:
        if topology is not None:
            topology.stop()
        network.remove()


def admin_keys(topology: Topology) -> CurveKeys:
    """A key of the test's own, allowed as admin, made as the compose broker makes its
    peers' (the broker's own provisioning keeps it)."""
    keys = topology.folder / "test-keys"
    subprocess.run([*PLUGBOARD, "--state-dir",
                    topology.paths["/state"], "keys", "provision", str(keys), "test:admin"],
                   check=True, capture_output=True, cwd=ROOT)
    return CurveKeys(read_public_key(str(keys / "broker.key")),
                     *read_key_pair(keys / "test.key_secret"))


async def plugins_of(client: Client, host: str) -> dict[str, dict[str, Any]]:
    rows = (await client.request("plugins"))["plugins"]
    return {row["name"]: row for row in rows if row["host"] == host}


async def until_plugins(client: Client, host: str, done: Any, timeout: float,
                        topology: Topology) -> dict[str, dict[str, Any]]:
    """The plugins of ``host`` once ``done(rows)`` holds, re-checked at each state change."""
    states = await client.subscribe("system/plugins/+/state")
    try:
        async with asyncio.timeout(timeout):
            rows = await plugins_of(client, host)
            while not done(rows):
                await anext(states)
                rows = await plugins_of(client, host)
            return rows
    except TimeoutError:
        raise AssertionError(f"plugins of {host} after {timeout} s: "
                             f"{await plugins_of(client, host)}\n{topology.describe()}") from None
    finally:
        await states.close()


async def test_the_compose_topology_across_hosts(topology: Topology) -> None:
    keys = admin_keys(topology)
    broker = topology.start("broker")
    broker.wait_for_line(re.compile("plugboard broker ready"), 20)
    agent = topology.start("agent")
    agent.wait_for_line(re.compile("plugboard agent agent-1 ready"), 20)
    monitor = topology.start("monitor")
    assert monitor.proc.stdout is not None
    watched = Lines(monitor.proc.stdout)
    agent_host: Host = topology.hosts["agent"]
    endpoint = f"tcp://{topology.hosts['broker'].address}:{BROKER_PORT}"
    async with Client(endpoint, role="admin", curve=keys, timeout=5) as client:
        every_ready = await until_plugins(
            client, "agent-1", lambda rows: rows and all(r["state"] == "ready"
                                                        for r in rows.values()), 30, topology)
        assert "clock" in every_ready, every_ready
        # A property of a plugin on the agent's host reaches the monitor on a third host.
        await asyncio.to_thread(watched.wait_for, r" clock/now = ", 10)
        mark = len(watched.lines)

        agent_host.link(up=False)
        await asyncio.to_thread(watched.wait_for, r" clock/now removed", 15, mark)
        await until_plugins(client, "agent-1", lambda rows: not rows, 15, topology)
        sessions = (await client.request("sessions"))["sessions"]
        assert not any(s["name"] in every_ready for s in sessions), sessions

        started = time.monotonic()
        agent_host.link(up=True)
        back = await until_plugins(
            client, "agent-1", lambda rows: set(rows) >= set(every_ready) and all(
                rows[n]["state"] == "ready" for n in every_ready), 15, topology)
        elapsed = time.monotonic() - started
        assert elapsed < 5, f"plugins back after {elapsed:.1f} s"
        # The same processes: they kept running while the link was down.
        assert {n: back[n]["pid"] for n in every_ready} == {
            n: every_ready[n]["pid"] for n in every_ready}
        await asyncio.to_thread(watched.wait_for, r" clock/now = ", 10, len(watched.lines))

        descendants = psutil.Process(agent.pid).children(recursive=True)
        assert len(descendants) >= len(every_ready)
        agent.signal(signal.SIGKILL)
        await asyncio.to_thread(agent.wait, 5)
        _, alive = await asyncio.to_thread(psutil.wait_procs, descendants, 5)
        assert not alive, f"left behind: {alive}\n{tail(topology.folder / 'agent.stderr')}"
        await until_plugins(client, "agent-1", lambda rows: not rows, 15, topology)


def established(host: Host, peer: Host) -> list[str]:
    """The tcp connections ``host`` has open to ``peer`` (ss, in the host's namespace)."""
    shown = subprocess.run([*host.exec_prefix(), "ss", "-Htn", "state", "established", "dst",
                            peer.address], capture_output=True, text=True, timeout=10, check=True)
    return shown.stdout.splitlines()


async def test_a_vanished_peers_connection_ends_with_its_session(topology: Topology) -> None:
    """The monitor watches everything, so the broker always has data in flight to it:
    the kernel's keepalive never fires on such a connection, and TCP alone would keep it
    for a quarter of an hour. Its session ends after the session timeout; the broker
    closes the connection with it."""
    keys = admin_keys(topology)
    broker = topology.start("broker")
    broker.wait_for_line(re.compile("plugboard broker ready"), 20)
    monitor = topology.start("monitor")
    assert monitor.proc.stdout is not None
    watched = Lines(monitor.proc.stdout)
    await asyncio.to_thread(watched.wait_for, r" system/broker/uptime = ", 15)
    broker_host, monitor_host = topology.hosts["broker"], topology.hosts["monitor"]
    assert len(established(broker_host, monitor_host)) == 1
    endpoint = f"tcp://{broker_host.address}:{BROKER_PORT}"
    async with Client(endpoint, role="admin", curve=keys, timeout=5) as client:
        counts = await client.subscribe("system/broker/sessions")
        monitor_host.link(up=False)
        async with asyncio.timeout(15):  # the session timeout is 6 s
            while any(s["role"] == "client" for s in
                      (await client.request("sessions"))["sessions"]):
                await anext(counts)  # re-checked as the session count changes
        ended = time.monotonic()
        while established(broker_host, monitor_host):  # no event tells: polled, bounded
            assert time.monotonic() - ended < 2, (
                f"still connected to the vanished monitor: {established(broker_host, monitor_host)}"
                f"\n{topology.describe()}")
            await asyncio.sleep(0.1)
        mark = len(watched.lines)
        monitor_host.link(up=True)  # the monitor connects again and carries on
        await asyncio.to_thread(watched.wait_for, r" system/broker/uptime = ", 20, mark)
