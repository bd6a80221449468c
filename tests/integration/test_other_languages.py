"""Plugins in C and JavaScript, written from PROTOCOL.md alone, under the real runtime,
next to Python: values cross from C to Node to Python and back."""

from __future__ import annotations

import os
import shutil
import signal

import pytest

from plugboard.sdk import Change, Client

from .conftest import Processes
from .processes import ROOT, ManagedProcess

pytestmark = pytest.mark.integration

C_PLUGIN = ROOT / "plugins" / "counter_c"
JS_PLUGIN = ROOT / "plugins" / "scaler_js"


def missing() -> str | None:
    if not (C_PLUGIN / "counter").exists():
        return "plugins/counter_c/counter is not built (make plugins; needs libzmq3-dev, " \
               "libmsgpack-dev and a C compiler)"
    if shutil.which("node") is None:
        return "node is not installed"
    if not (JS_PLUGIN / "node_modules" / "zeromq").exists():
        return "plugins/scaler_js has no node_modules (make plugins runs npm ci)"
    return None


@pytest.fixture(autouse=True)
def require_toolchains() -> None:
    reason = missing()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the other-language plugins: {reason}")
        pytest.skip(reason)


def is_change(name: str, check: object = lambda v: True) -> object:
    return lambda e: isinstance(e, Change) and e.name == name and check(e.value)  # type: ignore[operator]


async def test_c_node_and_python_plugins_talk_both_ways(processes: Processes) -> None:
    broker = processes.broker(None, "--plugins", str(C_PLUGIN), "--plugins", str(JS_PLUGIN),
                              "--plugins", str(ROOT / "plugins" / "clock"))
    async with Client(broker.ipc, role="admin", token=broker.admin_token) as python:
        counts = await python.subscribe("counter_c/count")
        await processes.until(counts, is_change("counter_c/count", lambda v: v >= 2), 30)
        typed = await python.list("counter_c/#")
        assert {i.name: i.type for i in typed} == {
            "counter_c/count": "int", "counter_c/step": "int",
            "counter_c/started": "timestamp", "counter_c/period": "duration"}
        # C's values reach the Node plugin, whose derived value reaches Python.
        scaled = await python.subscribe("scaler_js/scaled", current=False)
        await processes.until(scaled, is_change("scaler_js/scaled", lambda v: v >= 2), 30)
        # Python writes Node's factor; Node and C both react to it.
        steps = await python.subscribe("counter_c/step", current=False)
        await python.set("scaler_js/factor", 4)
        await processes.until(steps, is_change("counter_c/step", lambda v: v == 4), 30)
        last = (await python.get("counter_c/count")).value
        await processes.until(scaled, is_change("scaler_js/scaled",
                                                lambda v: v >= last * 4), 30)
        assert (await python.get("scaler_js/updated_at")).type == "timestamp"
        # Each serves the method its contract exports, called from Python.
        assert await python.call("counter_c", "jump", by=1000) >= 1000
        assert await python.call("scaler_js", "scale", value=2.5) == 10.0
        # Both answer end and exit cleanly.
        for name in ("counter_c", "scaler_js"):
            result = await python.request("plugins.stop", {"name": name}, timeout=30)
            assert result["step"] == "end", (name, result)
            plugin_state = await python.get(f"system/plugins/{name}/exit_code")
            assert plugin_state.value == 0
    broker.signal(signal.SIGTERM)
    assert broker.wait(30) == 0


async def test_they_connect_over_curve_with_their_per_launch_keys(
        processes: Processes) -> None:
    broker = processes.broker(None, "--plugins", str(C_PLUGIN), "--plugins", str(JS_PLUGIN),
                              insecure=False, ipc=False)
    async with Client(broker.tcp, role="admin", curve=broker.local_admin_keys()) as python:
        scaled = await python.subscribe("scaler_js/scaled")
        await processes.until(scaled, is_change("scaler_js/scaled", lambda v: v >= 2), 30)
        sessions = (await python.request("sessions"))["sessions"]
        assert {s["name"] for s in sessions if s["role"] == "plugin"} == {
            "counter_c", "scaler_js"}


async def test_they_reconnect_after_a_broker_restart(processes: Processes) -> None:
    """Driven without the runtime, so the plugins survive the broker."""
    broker = processes.broker()
    env = {"PLUGBOARD_ENDPOINT": broker.ipc}
    state = broker.state_dir
    c = ManagedProcess([str(C_PLUGIN / "counter")], stderr_path=state / "c.stderr",
                       env={**env, "PLUGBOARD_NAME": "counter_c"})
    js = ManagedProcess(["node", str(JS_PLUGIN / "plugin.js")], stderr_path=state / "js.stderr",
                        env={**env, "PLUGBOARD_NAME": "scaler_js"})
    processes.started += [c, js]
    async with Client(broker.ipc) as python:
        scaled = await python.subscribe("scaler_js/scaled")
        await processes.until(scaled, is_change("scaler_js/scaled", lambda v: v >= 1), 30)
    broker.signal(signal.SIGKILL)
    broker.wait(10)
    restarted = processes.broker(state)
    async with Client(restarted.ipc) as python:
        scaled = await python.subscribe("scaler_js/scaled")
        await processes.until(scaled, is_change("scaler_js/scaled", lambda v: v >= 1), 40)
        counts = await python.subscribe("counter_c/count", current=False)
        await processes.until(counts, is_change("counter_c/count"), 30)
    assert c.proc.poll() is None and js.proc.poll() is None
