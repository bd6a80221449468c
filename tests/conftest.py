"""Suite-wide guards: no child process may outlive the suite."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import psutil
import pytest

from .integration.processes import MADE_DIRS


@pytest.fixture(scope="session", autouse=True)
def no_child_process_left_behind() -> Iterator[None]:
    yield
    leftovers = psutil.Process().children(recursive=True)
    for child in leftovers:
        try:
            child.kill()
        except psutil.Error:
            pass
    for path in MADE_DIRS:
        shutil.rmtree(path, ignore_errors=True)
    assert not leftovers, "child processes outlived the suite: " + ", ".join(
        f"{c.pid}" for c in leftovers)
