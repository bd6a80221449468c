"""``plugboard agent`` as its own process, beside a broker on tcp with CURVE: what a
second host would run, here on one host (tests/integration/test_netns.py does it with
real hosts in network namespaces)."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import time

import psutil
import pytest

from plugboard.sdk import Change, Client, Removed

from .conftest import Processes
from .processes import PLUGBOARD, ROOT, BrokerProcess, agent_key, make_plugin, short_tmpdir

pytestmark = pytest.mark.integration


def curve_broker(processes: Processes) -> BrokerProcess:
    return processes.broker(None, allow_unmanaged=False, insecure=False, ipc=True)


async def until_state(client: Client, name: str, state: str, processes: Processes,
                      timeout: float = 15) -> None:
    sub = await client.subscribe(f"system/plugins/{name}/state")
    await processes.until(sub, lambda e: isinstance(e, Change) and e.value == state, timeout)


def plugboard(broker: BrokerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PLUGBOARD, "--state-dir",
                           str(broker.state_dir), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=30)


async def test_an_agent_runs_its_plugins_for_a_remote_broker(processes: Processes) -> None:
    broker = curve_broker(processes)
    root, home = short_tmpdir(), short_tmpdir()
    make_plugin(root, "faraway")
    agent = processes.agent(broker.tcp, root, name="host-b", state_dir=home,
                            env=agent_key(broker, home, "host-b"))
    async with Client(broker.ipc) as client:
        await until_state(client, "faraway", "ready", processes)
        assert (await client.get("faraway/alive")).value is True
        assert (await client.get("system/plugins/faraway/host")).value == "host-b"
        pid = (await client.get("system/plugins/faraway/pid")).value
    # It is the agent's child, and it reached the broker with a key of its own.
    assert psutil.Process(pid).ppid() == agent.pid
    assert "PLUGBOARD_PUBLIC_KEY" in psutil.Process(pid).environ()
    listed = plugboard(broker, "plugins")
    assert listed.returncode == 0 and "host-b" in listed.stdout, listed
    row = next(line.split() for line in listed.stdout.splitlines() if "faraway" in line)
    assert re.fullmatch(r"(\d+m)?\d+s", row[5]), row  # uptime to the second
    logs = plugboard(broker, "logs", "faraway")
    assert logs.returncode == 0 and "--- starting" in logs.stdout, logs
    assert (home / "agents" / "host-b" / "logs" / "faraway.log").exists()
    restarted = plugboard(broker, "plugins", "restart", "faraway")
    assert restarted.returncode == 0 and "ready true" in restarted.stdout, restarted
    agent.signal(signal.SIGHUP)  # a closed terminal: ignored, its plugins run on
    logs = plugboard(broker, "logs", "faraway")  # routed to the agent, answered by it
    assert logs.returncode == 0 and "--- starting" in logs.stdout, agent.describe()
    assert "SIGHUP ignored" in agent.stderr_path.read_text()
    agent.signal(signal.SIGTERM)
    assert agent.wait(15) == 0, agent.describe()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


async def test_a_second_agent_claiming_a_plugin_is_refused(processes: Processes) -> None:
    broker = curve_broker(processes)
    first, second = short_tmpdir(), short_tmpdir()
    make_plugin(first, "shared")
    make_plugin(second, "shared")
    processes.agent(broker.tcp, first, name="host-a", state_dir=first,
                    env=agent_key(broker, first, "host-a"))
    rival = processes.agent(broker.tcp, second, name="host-b", state_dir=second,
                            env=agent_key(broker, second, "host-b"), wait=False)
    assert rival.wait(15) == 5  # refused by the broker (plugboard --help: exit status)
    stderr = rival.stderr_path.read_text()
    assert "plugin 'shared' is managed by agent 'host-a'" in stderr, stderr
    # Nothing of the rival's was started.
    assert not (second / "agents" / "host-b" / "logs" / "shared.log").exists()


async def test_a_killed_agent_takes_its_plugins_and_their_properties_along(
        processes: Processes) -> None:
    broker = curve_broker(processes)
    root = short_tmpdir()
    make_plugin(root, "doomed")
    agent = processes.agent(broker.tcp, root, name="host-c", state_dir=root,
                            env=agent_key(broker, root, "host-c"))
    async with Client(broker.ipc) as client:
        await until_state(client, "doomed", "ready", processes)
        pid = (await client.get("system/plugins/doomed/pid")).value
        gone = await client.subscribe("system/plugins/doomed/state", current=False)
        alive = await client.subscribe("doomed/alive", current=False)
        agent.signal(signal.SIGKILL)
        await processes.until(alive, lambda e: isinstance(e, Removed), timeout=10)
        await processes.until(gone, lambda e: isinstance(e, Removed), timeout=10)
        assert await client.request("plugins") == {"plugins": []}
    await asyncio.to_thread(psutil.wait_procs, [psutil.Process(pid)], 5)
    assert not psutil.pid_exists(pid)


async def test_an_agent_and_its_plugins_come_back_with_a_restarted_broker(
        processes: Processes) -> None:
    broker = curve_broker(processes)
    root = short_tmpdir()
    make_plugin(root, "steady")
    processes.agent(broker.tcp, root, name="host-d", state_dir=root,
                    env=agent_key(broker, root, "host-d"))
    async with Client(broker.ipc) as client:
        await until_state(client, "steady", "ready", processes)
        pid = (await client.get("system/plugins/steady/pid")).value
    port = broker.tcp.rsplit(":", 1)[1]
    broker.stop()
    again = processes.broker(broker.state_dir, allow_unmanaged=False, insecure=False,
                             tcp=f"tcp://127.0.0.1:{port}")
    async with Client(again.ipc) as client:
        await until_state(client, "steady", "ready", processes)
        await processes.until(await client.subscribe("steady/alive"),
                              lambda e: isinstance(e, Change), timeout=10)
        # The same process: it kept running and reconnected.
        assert (await client.get("system/plugins/steady/pid")).value == pid


async def test_a_plugin_waits_for_a_capability_another_agent_provides(
        processes: Processes) -> None:
    broker = curve_broker(processes)
    needing, providing = short_tmpdir(), short_tmpdir()
    make_plugin(needing, "consumer", extra='needs = ["weather"]')
    make_plugin(providing, "provider", extra='provides = ["weather"]')
    processes.agent(broker.tcp, needing, name="host-e", state_dir=needing,
                    env=agent_key(broker, needing, "host-e"))
    async with Client(broker.ipc) as client:
        reason = await client.subscribe("system/plugins/consumer/reason")
        await processes.until(reason, lambda e: isinstance(e, Change) and "waiting for "
                              "another agent's plugin to provide weather" in e.value)
        assert (await client.get("system/plugins/consumer/state")).value == "stopped"
        processes.agent(broker.tcp, providing, name="host-f", state_dir=providing,
                        env=agent_key(broker, providing, "host-f"))
        await until_state(client, "consumer", "ready", processes)
        assert (await client.get("system/plugins/provider/state")).value == "ready"


async def test_an_agent_waiting_for_its_broker_stops_at_once(processes: Processes) -> None:
    """SIGTERM in the middle of a connect attempt (here to a port that accepts but never
    answers) stops the agent at once, cleanly; it used to wait the attempt's 5 s out."""
    root = short_tmpdir()
    make_plugin(root, "idle")
    with socket.create_server(("127.0.0.1", 0)) as silent:
        silent.settimeout(15)
        port = silent.getsockname()[1]
        agent = processes.agent(f"tcp://127.0.0.1:{port}", root, name="host-w",
                                state_dir=root, wait=False)
        connection, _ = silent.accept()  # the agent is in its attempt, handlers set
        with connection:
            agent.signal(signal.SIGTERM)
            started = time.monotonic()
            assert agent.wait(10) == 0, agent.describe()
            assert time.monotonic() - started < 2, agent.describe()
