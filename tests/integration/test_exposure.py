"""What the broker exposes and to whom: network binds, plugins started by hand, file modes."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
import zmq

from plugboard.sdk import Change, Client
from tests.conformance.raw import RawPeer

from .conftest import Processes
from .processes import PLUGBOARD, ROOT, short_tmpdir

pytestmark = pytest.mark.integration


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_tcp_speaks_curve_only_unless_insecure(processes: Processes) -> None:
    secure = processes.broker(insecure=False)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        plain = RawPeer(ctx, secure.tcp)
        plain.request("hello", {"versions": [1], "role": "client"})
        assert not plain.sock.poll(1000), "a plain tcp peer was answered"
        plain.close()
        # The local CLI finds the broker's key and its admin pair in the state directory.
        got = subprocess.run([*PLUGBOARD, "--state-dir",
                              str(secure.state_dir), "get", "system/broker/version",
                              "--endpoint", secure.tcp], capture_output=True, text=True,
                             timeout=20, cwd=ROOT)
        assert got.returncode == 0 and got.stdout.strip(), got.stderr
        assert mode(secure.state_dir / "curve" / "broker.key_secret") == 0o600
        assert "INSECURE" not in secure.stderr_path.read_text()
    finally:
        ctx.term()
    insecure = processes.broker(None, tcp="tcp://0.0.0.0:*")
    assert "INSECURE: tcp://0.0.0.0:* without CURVE" in insecure.stderr_path.read_text()


def test_a_plugin_started_by_hand_is_refused_unless_allowed(processes: Processes) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        strict = processes.broker(allow_unmanaged=False)
        peer = RawPeer(ctx, strict.tcp)
        error = peer.error("hello", versions=[1], role="plugin", name="intruder")
        assert error["code"] == "unauthorized" and "--allow-unmanaged-plugins" in error[
            "message"]
        assert peer.hello("client")["session"]  # clients are still welcome
        peer.close()
        open_broker = processes.broker()
        peer = RawPeer(ctx, open_broker.tcp)
        assert peer.hello("plugin", name="byhand")["session"]
        peer.close()
    finally:
        ctx.term()


async def test_state_logs_and_store_are_owner_only(processes: Processes) -> None:
    state = short_tmpdir()
    os.chmod(state, 0o755)
    (state / "store.sqlite").write_bytes(b"")
    broker = processes.broker(state, "--plugins", str(ROOT / "plugins" / "clock"))
    async with Client(broker.ipc) as client:
        sub = await client.subscribe("system/plugins/clock/state")
        await processes.until(sub, lambda e: isinstance(e, Change) and e.value == "ready")
    assert mode(state) == 0o700
    logs = state / "logs"
    assert mode(logs) == 0o700 and mode(logs / "clock.log") == 0o600
    assert mode(state / "admin.token") == 0o600
    stderr = broker.stderr_path.read_text()
    assert "was open to group or others (mode 0755); tightened to 0700" in stderr
    assert "is an empty file (0 bytes)" in stderr
