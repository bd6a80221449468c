"""Argument types for numbers that must be in range, so a bad one is a usage error
naming the option (exit status 2) instead of a hang or a traceback later."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def seconds(text: str) -> float:
    """A duration in seconds, more than 0 (``--timeout``, ``--wait``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds, got {text}")
    return value


def at_least(low: int) -> Callable[[str], int]:
    """A whole number, ``low`` or more (``--count`` 0 or more, ``--lines`` 1 or more)."""
    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, got {text}")
        return value
    return whole
