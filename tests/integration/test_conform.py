"""plugboard conform: passes good plugins in three languages, names what a bad one gets wrong."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from .processes import FIXTURE_PLUGINS, PLUGBOARD, ROOT, short_tmpdir
from .test_other_languages import missing

pytestmark = pytest.mark.integration


def conform(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*PLUGBOARD, "--log-level", "ERROR",
                           "conform", str(path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("plugin", ["thermostat", "counter_c", "scaler_js"])
def test_bundled_plugins_conform(plugin: str) -> None:
    if plugin != "thermostat" and missing():
        pytest.skip(str(missing()))
    out = conform(ROOT / "plugins" / plugin)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "7 passed, 0 failed" in out.stdout and "PASS  methods: " in out.stdout


def test_a_plugin_that_ignores_end_fails_that_step() -> None:
    folder = short_tmpdir() / "stubborn"
    folder.mkdir()
    (folder / "plugin.toml").write_text(textwrap.dedent(f"""\
        name = "stubborn"
        version = "1"
        protocol = [1]
        [run]
        command = ["{{python}}", "{FIXTURE_PLUGINS / 'misbehave.py'}"]
        stop_timeout = 1
        env = {{ PYTHONPATH = "{ROOT}", IGNORE_SIGTERM = "1" }}
        [[exports]]
        pattern = "stubborn/+"
        type = "any"
        """))
    out = conform(folder)
    assert out.returncode == 1
    assert "PASS  hello and init" in out.stdout
    assert "FAIL  end: still running" in out.stdout
