"""Whether the hot modules run compiled (mypyc, see setup.py) or as pure Python.

An editable install compiles them in place, next to their sources; a source edited
after that would be shadowed by its older extension, so a stale one is reported.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

HOT = ("plugboard.protocol.codec", "plugboard.protocol.values", "plugboard.protocol.changes",
       "plugboard.protocol.names", "plugboard.protocol.limits",
       "plugboard.protocol.declaration", "plugboard.protocol.errors",
       "plugboard.protocol.connection",
       "plugboard.broker.core", "plugboard.broker.subscriptions",
       "plugboard.broker.datastore", "plugboard.broker.sessions")
"""The modules setup.py compiles (the same list, as module names)."""


def _origin(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    return Path(spec.origin) if spec is not None and spec.origin else None


def compiled() -> bool:
    """The broker's hot path is running as C extensions."""
    origin = _origin("plugboard.broker.core")
    return origin is not None and origin.suffix != ".py"


def stale() -> list[str]:
    """Compiled modules whose Python source changed after they were built."""
    out = []
    for module in HOT:
        origin = _origin(module)
        if origin is None or origin.suffix == ".py":
            continue
        source = origin.with_name(module.rsplit(".", 1)[1] + ".py")
        if source.exists() and source.stat().st_mtime > origin.stat().st_mtime:
            out.append(module)
    return out


def describe() -> str:
    """One line for ``--version`` and the broker's log."""
    if not compiled():
        return "pure Python"
    behind = stale()
    return "compiled with mypyc" + (f"; STALE, rebuild with `make install`: "
                                    f"{', '.join(behind)}" if behind else "")
