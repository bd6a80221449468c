"""Compile the broker's hot path with mypyc when possible; pure Python otherwise.

The modules below are plain, mypy-strict Python. mypyc turns them into C extensions
that apply a batch of writes about three times faster (docs/BENCHMARKS.md, section 10,
"Compiled or pure").
Their module-level constants are ``Final``: mypyc inlines those, where it looks any
other global up in the module's dict at every use (per item, in a loop).
Each extension is optional: without mypy or a C compiler, or with
``PLUGBOARD_PURE_PYTHON=1``, the same modules run as Python and behave the same.
Everything else about the package is in pyproject.toml.
"""

from __future__ import annotations

import glob
import os
import sys
from typing import Any

from setuptools import setup

HOT_MODULES = [
    "protocol/codec.py", "protocol/values.py", "protocol/changes.py", "protocol/names.py",
    "protocol/limits.py", "protocol/declaration.py", "protocol/errors.py",
    "protocol/connection.py",
    "broker/core.py", "broker/subscriptions.py", "broker/datastore.py", "broker/sessions.py",
]
"""Paths below .typecheck/plugboard/, whose links give each its installed module name
(protocol/build.py lists the same modules by name, to report stale builds)."""


def remove_stale_builds() -> None:
    """Python imports an extension before the .py beside it, and the compiled modules
    call each other directly: if any source is newer than its extension (edited since
    the last build), every extension goes, so a build that makes none leaves pure
    Python, not old code (protocol/build.py reports the same staleness at run time)."""
    built = {path: glob.glob(path[:-3] + ".*.so") for path in HOT_MODULES}
    if any(found and os.path.getmtime(found[0]) < os.path.getmtime(path)
           for path, found in built.items()):
        for folder in {os.path.dirname(path) for path in HOT_MODULES}:
            for extension in glob.glob(os.path.join(folder, "*.so")):
                os.remove(extension)


def pure_python(why: str) -> list[Any]:
    print(f"plugboard: {why}; the broker runs as pure Python", file=sys.stderr)
    return []


def compiled_extensions() -> list[Any]:
    remove_stale_builds()
    if os.environ.get("PLUGBOARD_PURE_PYTHON"):
        return pure_python("PLUGBOARD_PURE_PYTHON is set")
    try:
        from mypyc.build import mypycify
    except ImportError:
        return pure_python("mypy is not installed")
    try:
        extensions = mypycify([f".typecheck/plugboard/{path}" for path in HOT_MODULES],
                              opt_level="3", group_name="plugboard.protocol.compiled")
    except (SystemExit, Exception) as error:  # mypyc exits when its type check fails
        return pure_python(f"mypyc could not compile the hot modules ({error!r})")
    for extension in extensions:
        extension.optional = True  # no C compiler: the pure-Python modules are used
    return list(extensions)


setup(ext_modules=compiled_extensions())
