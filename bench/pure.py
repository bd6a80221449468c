"""Run Python with the hot modules as pure Python even where compiled ones exist:
``python bench/pure.py -m plugboard.broker.cli ...`` (for the compiled-or-pure rows).

The mypyc extensions sit next to their sources and Python prefers them; this finder,
first on the meta path, hands out the ``.py`` beside each instead.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import runpy
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from plugboard.protocol.build import HOT


class PureFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if name not in HOT:
            return None
        for entry in path or ():
            source = Path(entry) / f"{name.rsplit('.', 1)[1]}.py"
            if source.exists():
                return importlib.util.spec_from_file_location(name, source)
        return None


def main() -> None:
    for name in [n for n in sys.modules if n.startswith("plugboard.")]:
        del sys.modules[name]  # loaded compiled to read HOT: load them again, as Python
    sys.meta_path.insert(0, PureFinder())
    if sys.argv[1] == "-m":
        module = sys.argv[2]
        sys.argv = [module, *sys.argv[3:]]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    else:
        sys.argv = sys.argv[1:]
        runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
