"""Suite-wide guards: no child process may outlive the suite."""

from __future__ import annotations

from collections.abc import Iterator

import psutil
import pytest


@pytest.fixture(scope="session", autouse=True)
def no_child_process_left_behind() -> Iterator[None]:
    yield
    leftovers = psutil.Process().children(recursive=True)
    for child in leftovers:
        try:
            child.kill()
        except psutil.Error:
            pass
    assert not leftovers, "child processes outlived the suite: " + ", ".join(
        f"{c.pid}" for c in leftovers)
