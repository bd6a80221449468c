"""Suite-wide guards: the code under test is the code in the tree, and no child process
may outlive the suite."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import psutil
import pytest

from plugboard.protocol import build

from .integration.processes import MADE_DIRS


def pytest_sessionstart(session: pytest.Session) -> None:
    stale = build.stale()
    if stale:
        pytest.exit(f"compiled modules are older than their sources ({', '.join(stale)}): "
                    "`make test` rebuilds them (or `make install-test`)", returncode=4)


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
