"""Which event loop runs the broker (``plugboard broker --event-loop``) or a plugin
(``Plugin.run(event_loop=...)``).

uvloop where it is installed (a dependency on Linux and macOS): its loop does the work
of each wake-up (the poll, the ready callbacks, the timers) in C where asyncio's own
loop does it in Python; a set -> notify pays it once in each process when messages
come one at a time (docs/BENCHMARKS.md, section 9: "asyncio's own loop instead of
uvloop, in the broker"; the SDK has shown no such gain there). asyncio's loop is the
fallback, and the one to compare with.
"""

from __future__ import annotations

import asyncio
import importlib
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from plugboard.protocol.errors import ConfigError

EVENT_LOOPS = ["auto", "uvloop", "asyncio"]
"""The choices: auto is uvloop if installed, else asyncio."""

T = TypeVar("T")


def chosen(choice: str) -> str:
    """The loop ``choice`` means here; ConfigError if it asks for one not installed."""
    if choice == "asyncio":
        return choice
    try:
        _uvloop()
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("event_loop is uvloop, but uvloop is not installed here "
                              "(pip install uvloop, or use --event-loop asyncio)") from None
        return "asyncio"
    return "uvloop"


def _uvloop() -> Any:
    """uvloop, imported by name: setup.py's compile type-checks this module (the broker's
    hot modules reach it through the SDK) in a build environment without uvloop."""
    return importlib.import_module("uvloop")


def run(main: Coroutine[Any, Any, T], loop: str) -> T:
    """Run ``main`` to its end on ``loop`` (a name :func:`chosen` returned)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop == "uvloop":
        factory = _uvloop().new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
