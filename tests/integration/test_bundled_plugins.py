"""End to end: plugboard broker --plugins plugins, as make run starts it."""

from __future__ import annotations

import shutil
import signal
import subprocess

import psutil
import pytest

from plugboard.sdk import Change, Client, Removed

from .conftest import Processes
from .processes import PLUGBOARD, ROOT, BrokerProcess, short_tmpdir

pytestmark = pytest.mark.integration


def test_plugboard_check_passes_on_the_bundled_plugins() -> None:
    out = subprocess.run([*PLUGBOARD, "check", "plugins"], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "start order:" in out.stdout


def test_broken_contract_means_nothing_starts(tmp_path) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "plugin.toml").write_text('name = "bad"\n')
    out = subprocess.run([*PLUGBOARD, "--state-dir", str(tmp_path),
                          "broker", "--plugins", str(tmp_path)], cwd=ROOT,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert "version: missing obligatory clause" in out.stderr
    assert "nothing was started" in out.stderr


async def test_bundled_plugins_run_restart_and_stop(processes: Processes) -> None:
    broker = processes.broker(None, "--plugins", str(ROOT / "plugins"))
    async with Client(broker.ipc, role="admin", token=broker.admin_token) as admin:
        heater = await admin.subscribe("thermostat/heater")
        await processes.until(heater, lambda e: isinstance(e, Change) and e.value is not None,
                              timeout=30)
        clock = await admin.subscribe("clock/now", current=False)
        await processes.until(clock, lambda e: isinstance(e, Change))
        # The thermostat reacts to the room's temperature and to a setpoint anyone may write.
        await admin.set("thermostat/setpoint", 5.0)
        await processes.until(heater, lambda e: isinstance(e, Change) and e.value is False,
                              timeout=30)
        await admin.set("thermostat/setpoint", 30.0)
        await processes.until(heater, lambda e: isinstance(e, Change) and e.value is True,
                              timeout=30)

        # Their methods, through the broker: the thermostat's boost, sysmon's processes.
        await admin.set("thermostat/setpoint", 20.0)
        assert await admin.call("thermostat", "boost", minutes=1.0) == 22.0
        assert (await admin.get("thermostat/setpoint")).value == 22.0
        top = await admin.call("sysmon", "processes", n=3)
        assert len(top) == 3 and {"pid", "name", "cpu_percent", "memory_rss"} <= set(top[0])

        # A plugin killed with SIGKILL is restarted and its properties come back.
        pid = (await admin.get("system/plugins/clock/pid")).value
        clock_all = await admin.subscribe("clock/#", current=False)
        state = await admin.subscribe("system/plugins/clock/state", current=False)
        psutil.Process(pid).kill()
        await processes.until(clock_all, lambda e: isinstance(e, Removed), timeout=15)
        await processes.until(clock_all, lambda e: isinstance(e, Change), timeout=15)
        await processes.until(state, lambda e: isinstance(e, Change) and e.value == "ready")
        assert (await admin.get("system/plugins/clock/restarts")).value == 1
        new_pid = (await admin.get("system/plugins/clock/pid")).value
        assert new_pid and new_pid != pid

        # A stopped plugin's properties are gone.
        result = await admin.request("plugins.stop", {"name": "sysmon"}, timeout=30)
        assert result["step"] == "end"
        assert await admin.list("sysmon/#") == []
        assert (await admin.get("system/plugins/sysmon/state")).value == "stopped"
        pids = [row["pid"] for row in (await admin.request("plugins"))["plugins"]
                if row["pid"]]

    # Plugins never outlive the broker, even when it is killed with SIGKILL.
    broker.signal(signal.SIGKILL)
    broker.wait(5)
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            proc.wait(10)
        except psutil.NoSuchProcess:
            pass


async def test_sigterm_stops_plugins_dependents_first(processes: Processes) -> None:
    broker: BrokerProcess = processes.broker(None, "--plugins", str(ROOT / "plugins"))
    async with Client(broker.ipc) as client:
        ready = await client.subscribe("system/plugins/thermostat/state")
        await processes.until(ready, lambda e: isinstance(e, Change) and e.value == "ready",
                              timeout=30)
    broker.signal(signal.SIGTERM)
    assert broker.wait(30) == 0, broker.describe()
    log = broker.stderr_path.read_text()
    stops = [line.split("plugin ")[1].split(":")[0] for line in log.splitlines()
             if "stopped (stopped on request)" in line]
    assert stops.index("thermostat") < stops.index("room"), stops
    logs = subprocess.run([*PLUGBOARD, "--state-dir",
                           str(broker.state_dir), "logs", "thermostat"], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)
    assert logs.returncode == 0 and "--- starting" in logs.stdout


async def test_the_readme_demo_shows_the_push(processes: Processes) -> None:
    """README, "What to type next": watch thermostat/#, set the setpoint, see the heater."""
    root = short_tmpdir()
    for name in ("room", "thermostat"):
        shutil.copytree(ROOT / "plugins" / name, root / name)
    broker = processes.broker(None, "--plugins", str(root))
    async with Client(broker.ipc) as client:
        heater = await client.subscribe("thermostat/heater")
        await processes.until(heater, lambda e: isinstance(e, Change) and e.value is True,
                              timeout=20)
    watching = subprocess.Popen(
        [*PLUGBOARD, "--state-dir", str(broker.state_dir), "watch",
         "thermostat/heater", "-C", "2", "-F", "{name} = {value}"], cwd=ROOT,
        stdout=subprocess.PIPE, text=True)
    try:
        assert watching.stdout is not None
        assert watching.stdout.readline().strip() == "thermostat/heater = true"
        cold = subprocess.run([*PLUGBOARD, "--state-dir",
                               str(broker.state_dir), "set", "thermostat/setpoint", "10"],
                              cwd=ROOT, capture_output=True, text=True, timeout=20)
        assert cold.returncode == 0, cold.stderr
        assert watching.wait(15) == 0
        assert watching.stdout.read().strip() == "thermostat/heater = false"
    finally:
        watching.kill()
        watching.wait()
        if watching.stdout is not None:
            watching.stdout.close()
