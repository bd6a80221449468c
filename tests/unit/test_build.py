"""The hot modules run compiled where a compiler was present (CI has one)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from plugboard.protocol import build


@pytest.mark.skipif(not os.environ.get("CI"), reason="a machine may have no C compiler")
def test_the_suite_runs_the_compiled_broker_core() -> None:
    assert build.compiled(), "setup.py compiled nothing: is mypy or gcc missing?"
    assert build.describe() == "compiled with mypyc"


def test_the_build_lists_every_hot_module_setup_py_compiles() -> None:
    setup_py = (Path(__file__).parents[2] / "setup.py").read_text()
    for module in build.HOT:
        package, name = module.split(".")[1:]
        assert f'"{package}/{name}.py"' in setup_py, module
