"""Which event loop runs the broker: ``plugboard broker --event-loop``.

uvloop where it is installed (a dependency on Linux and macOS): its loop does the work
of each wake-up (the poll, the ready callbacks, the timers) in C where asyncio's own
loop does it in Python, which a set -> notify pays twice through the broker
(docs/BENCHMARKS.md, section 9: "the broker on asyncio's own loop"). asyncio's loop is
the fallback and the choice for comparing the two.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from plugboard.protocol.errors import ConfigError

EVENT_LOOPS = ["auto", "uvloop", "asyncio"]
"""The choices: auto is uvloop if installed, else asyncio."""

T = TypeVar("T")


def chosen(choice: str) -> str:
    """The loop ``choice`` means here; ConfigError if it asks for one not installed."""
    try:
        import uvloop  # noqa: F401
        have_uvloop = True
    except ImportError:
        have_uvloop = False
    if choice == "uvloop" and not have_uvloop:
        raise ConfigError("event_loop is uvloop, but uvloop is not installed here "
                          "(pip install uvloop, or use --event-loop asyncio)")
    if choice == "auto":
        return "uvloop" if have_uvloop else "asyncio"
    return choice


def run(main: Coroutine[Any, Any, T], loop: str) -> T:
    """Run ``main`` to its end on ``loop`` (a name :func:`chosen` returned)."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)
