"""Real broker and plugin processes for integration tests, cleaned up without fail.

Waits are on events (the broker's ready line, replies, notifications), each with a
timeout; failures carry the process's state and the tail of its stderr.
"""

from __future__ import annotations

import json
import os
import re
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import NoReturn

import pytest

from plugboard.runtime.contract import check_contracts
from plugboard.runtime.link import BrokerLink
from plugboard.runtime.supervisor import Supervisor
from plugboard.sdk._keys import CurveKeys, read_key_pair, read_public_key

ROOT = Path(__file__).parents[2]
FIXTURE_PLUGINS = ROOT / "tests" / "fixtures" / "plugins"
READY = re.compile(r"plugboard broker ready: instance (\w+), listening on (.+)$")


PLUGBOARD = [sys.executable, "-m", "plugboard.broker.cli"]
"""The plugboard command, run by the interpreter the tests run under."""
MADE_DIRS: list[Path] = []
"""Every short temp dir made, removed when the suite ends."""


def cannot_run(why: str) -> NoReturn:
    """A skip saying why this machine cannot run the test; a failure under CI=true,
    where .ci/run sets up everything the suite needs."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true: {why}")
    pytest.skip(why)


def short_tmpdir() -> Path:
    """A temp dir short enough for ipc:// paths (Unix sockets allow 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="pb-"))
    MADE_DIRS.append(path)
    return path


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no stderr file)"


class ManagedProcess:
    """A child process with stderr in a file, stopped for sure by ``stop``."""

    def __init__(self, argv: list[str], *, stderr_path: Path, env: dict[str, str] | None = None,
                 stdout: int | None = None, cwd: Path = ROOT) -> None:
        self.argv = argv
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb")
        full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc = subprocess.Popen(argv, stdout=stdout, stderr=self._stderr, env=full_env,
                                     cwd=cwd, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def describe(self) -> str:
        code = self.proc.poll()
        state = "running" if code is None else f"exited with {code}"
        return (f"{' '.join(self.argv[-3:])} (pid {self.pid}) {state}; stderr tail:\n"
                f"{tail(self.stderr_path)}")

    def wait_for_line(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """The first stdout line matching ``pattern`` (the ready line); stops the process
        and fails if none comes within ``timeout``."""
        assert self.proc.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        buffer = b""
        try:
            while time.monotonic() < deadline:
                if not selector.select(deadline - time.monotonic()):
                    break
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                buffer += chunk
                for line in buffer.decode(errors="replace").splitlines():
                    match = pattern.search(line)
                    if match:
                        return match
        finally:
            selector.close()
        self.stop()
        raise AssertionError(f"never printed {pattern.pattern!r}: {self.describe()}")

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"did not exit within {timeout} s: {self.describe()}") from None

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL of the whole process group; always reaps."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout)
            except ProcessLookupError:
                pass
        self._stderr.close()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


class BrokerProcess(ManagedProcess):
    """``plugboard broker`` on ipc in a short temp dir and on a free tcp port."""

    def __init__(self, state_dir: Path | None = None, *extra: str, timeout: float = 15.0,
                 allow_unmanaged: bool = True, tcp: str = "tcp://127.0.0.1:*",
                 insecure: bool = True, ipc: bool = True,
                 env: dict[str, str] | None = None, stderr_path: Path | None = None) -> None:
        self.state_dir = state_dir or short_tmpdir()
        argv = [*PLUGBOARD, "--state-dir", str(self.state_dir),
                "--log-level", "DEBUG", "broker",
                *(["--endpoint", f"ipc://{self.state_dir}/broker.sock"] if ipc else []),
                "--endpoint", tcp, "--heartbeat-ms", "200", "--session-timeout-ms", "1500",
                *(["--allow-unmanaged-plugins"] if allow_unmanaged else []),
                *(["--insecure"] if insecure else []), *extra]
        super().__init__(argv, stderr_path=stderr_path or self.state_dir / "broker.stderr",
                         stdout=subprocess.PIPE, env=env)
        ready = self.wait_for_line(READY, timeout)
        self.instance, self.endpoints = ready.group(1), ready.group(2).split()
        self.ipc = next((e for e in self.endpoints if e.startswith("ipc://")), "")
        self.tcp = next(e for e in self.endpoints if e.startswith("tcp://"))

    @property
    def admin_token(self) -> str:
        return (self.state_dir / "admin.token").read_text().strip()

    def local_admin_keys(self) -> CurveKeys:
        """The CURVE keys the local CLI uses: the broker's public key, the admin pair."""
        curve = self.state_dir / "curve"
        return CurveKeys(read_public_key(str(curve / "broker.key")),
                         *read_key_pair(curve / "admin.key_secret"))


class AgentProcess(ManagedProcess):
    """``plugboard agent`` for the plugins below ``root``, ready once it registered."""

    def __init__(self, broker_endpoint: str, root: Path, *, name: str, state_dir: Path,
                 env: dict[str, str] | None = None, wait: bool = True,
                 argv_prefix: tuple[str, ...] = ()) -> None:
        self.name = name
        self.state_dir = state_dir
        argv = [*argv_prefix, sys.executable, "-m", "plugboard.broker.cli", "--state-dir",
                str(state_dir), "--log-level", "DEBUG", "agent", "--broker", broker_endpoint,
                "--plugins", str(root), "--name", name]
        super().__init__(argv, stderr_path=state_dir / f"agent-{name}.stderr", env=env,
                         stdout=subprocess.PIPE)
        if wait:
            self.wait_for_line(re.compile(rf"plugboard agent {re.escape(name)} ready"), 15)


def agent_key(broker: BrokerProcess, folder: Path, name: str) -> dict[str, str]:
    """A key pair for an agent, allowed by the broker (through ``plugboard keys``), as
    the environment ``plugboard agent`` reads it from."""
    plugboard = [*PLUGBOARD, "--state-dir", str(broker.state_dir),
                 "keys"]
    subprocess.run([*plugboard, "new", name, "--dir", str(folder)], check=True, cwd=ROOT,
                   capture_output=True)
    # The public key file, not its text: a Z85 key may begin with "-", like an option.
    subprocess.run([*plugboard, "allow", str(folder / f"{name}.key"), "--role", "agent"],
                   check=True, cwd=ROOT, capture_output=True)
    return {"PLUGBOARD_SERVER_KEY": str(broker.state_dir / "curve" / "broker.key"),
            "PLUGBOARD_KEY_FILE": str(folder / f"{name}.key_secret")}


class PluginProcess(ManagedProcess):
    """A fixture plugin launched as the runtime would: settings in the environment."""

    def __init__(self, script: str, name: str, endpoint: str, workdir: Path,
                 **env: str) -> None:
        self.name = name
        super().__init__(
            [sys.executable, str(FIXTURE_PLUGINS / script)],
            stderr_path=workdir / f"{name}.stderr",
            env={"PLUGBOARD_ENDPOINT": endpoint, "PLUGBOARD_NAME": name, **env},
        )


def make_plugin(root: Path, name: str, *, restart: str = "on-failure", extra: str = "",
                **env: str) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    env_lines = "".join(f'{k} = "{v}"\n' for k, v in env.items())
    (folder / "plugin.toml").write_text(textwrap.dedent(f"""\
        name = "{name}"
        version = "1.0"
        protocol = [1]
        {extra}
        [run]
        command = ["{{python}}", "{FIXTURE_PLUGINS / 'misbehave.py'}"]
        restart = "{restart}"
        start_timeout = 3
        stop_timeout = 1

        [run.env]
        PYTHONPATH = "{Path(__file__).parents[2]}"
        {env_lines}
        [[exports]]
        pattern = "{name}/+"
        type = "any"

        [limits]
        memory_mb = 150
        sustained_s = 1
        """))


async def start_agent(endpoint: str, root: Path, state_dir: Path, *,
                      token: str | None = None, curve: CurveKeys | None = None) -> Supervisor:
    """An agent in the test's loop for the plugins below ``root``: connected, and every
    plugin started (and reported: a ping after the reports is answered after them)."""
    contracts, problems = check_contracts([root])
    assert problems == []
    link = BrokerLink(endpoint, name="here", token=token, curve=curve)
    supervisor = Supervisor(link, contracts, state_dir=state_dir)
    await link.connect()
    await supervisor.start_all()
    await link.client.request("ping")
    return supervisor


async def stop_agent(supervisor: Supervisor) -> None:
    await supervisor.stop_all()
    await supervisor.link.close()


def free_port() -> int:
    """A tcp port free on loopback now (for servers that need one given)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def bundled_plugin(root: Path, name: str, **config: object) -> Path:
    """A copy of the bundled plugin ``name`` below ``root`` with ``[config]`` keys
    replaced (values written as TOML: str, int, bool, list of str)."""
    folder = root / name
    shutil.copytree(ROOT / "plugins" / name, folder,
                    ignore=shutil.ignore_patterns("__pycache__"))
    manifest = folder / "plugin.toml"
    text = manifest.read_text()
    for key, value in config.items():
        toml = json.dumps(value) if not isinstance(value, bool) else str(value).lower()
        text, count = re.subn(rf"(?m)^{key} = .*$", f"{key} = {toml}", text)
        assert count == 1, f"no config key {key} in {manifest}"
    manifest.write_text(text)
    return folder
