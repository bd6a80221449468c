"""A clean, non-editable install in a fresh virtual environment, used from a folder
that is not the checkout: everything under ``plugboard.*``, the bundled plugins and
PROTOCOL.md inside the installed package, no licence warnings from the build. It is
built without compiling (``PLUGBOARD_PURE_PYTHON=1``), the fallback of a machine with
no C compiler; the rest of the suite runs the compiled modules of the editable install."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from plugboard.sdk import Change, Client

from .conftest import Processes
from .processes import ROOT, ManagedProcess, short_tmpdir

pytestmark = pytest.mark.integration


def run(*argv: str | Path, cwd: Path, env: dict[str, str] | None = None
        ) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})
    assert done.returncode == 0, f"{argv}: {done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed() -> Path:
    """The bin folder of a fresh venv with Plugboard's wheel (and its dependencies)."""
    folder = short_tmpdir()
    built = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", folder / "wheel",
                ROOT, cwd=folder, env={"PLUGBOARD_PURE_PYTHON": "1"})
    assert "License classifiers are deprecated" not in built.stderr
    assert "license" not in built.stderr.lower(), built.stderr
    venv.create(folder / "venv", with_pip=True)
    bin_dir = folder / "venv" / "bin"
    wheel = next((folder / "wheel").glob("plugboard-*.whl"))
    run(bin_dir / "python", "-m", "pip", "install", "--quiet", wheel, cwd=folder)
    return bin_dir


def test_the_packages_install_under_one_namespace(installed: Path) -> None:
    away = short_tmpdir()
    where = run(installed / "python", "-c", "import plugboard.broker, plugboard.sdk, "
                "plugboard.protocol, plugboard.runtime as r; print(r.__file__)", cwd=away)
    assert "site-packages/plugboard/runtime/" in where.stdout
    for generic in ("broker", "sdk", "protocol", "plugin_runtime"):
        missing = subprocess.run([installed / "python", "-c", f"import {generic}"], cwd=away,
                                 capture_output=True, text=True)
        assert missing.returncode != 0, f"{generic} is installed at the top level"
    spec = run(installed / "plugboard", "spec", "--path", cwd=away).stdout.strip()
    assert spec.endswith("site-packages/plugboard/protocol/PROTOCOL.md")
    assert run(installed / "plugboard", "spec", cwd=away).stdout.startswith(
        "# Plugboard wire protocol")
    version = run(installed / "plugboard", "--version", cwd=away).stdout
    assert re.match(r"plugboard \d+\.\d+\.\d+ .*; pure Python\)", version), version
    assert not list(installed.parent.glob("lib/*/site-packages/plugboard/**/*.so"))


async def test_the_bundled_plugins_run_from_the_installed_package(
        installed: Path, processes: Processes) -> None:
    state, away = short_tmpdir(), short_tmpdir()
    broker = ManagedProcess([str(installed / "plugboard"), "--state-dir", str(state), "broker",
                             "--plugins"], stderr_path=state / "broker.stderr",
                            stdout=subprocess.PIPE, env={"PYTHONPATH": ""}, cwd=away)
    processes.started.append(broker)
    broker.wait_for_line(re.compile("plugboard broker ready"), 20)
    async with Client(f"ipc://{state}/broker.sock") as client:
        clock = await client.subscribe("system/plugins/clock/state")
        await processes.until(clock, lambda e: isinstance(e, Change) and e.value == "ready",
                              timeout=30)
        now = await client.subscribe("clock/now")
        await processes.until(now, lambda e: isinstance(e, Change))
        pid = (await client.get("system/plugins/clock/pid")).value
    command = Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    assert "site-packages/plugboard/bundled/clock/plugin.py" in command, command
