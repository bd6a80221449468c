"""Imports run one way: broker -> runtime -> sdk -> protocol (README, Layout), always
by their installed names (``plugboard.broker``, ...), never by their folders' names.

The runtime speaks to the broker only through the protocol (the agent role), so
nothing below ``broker`` imports it, and ``protocol`` imports nothing of ours.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).parents[2]
FOLDERS = {"protocol": "protocol", "sdk": "sdk", "runtime": "plugin_runtime",
           "broker": "broker"}
"""Each package below ``plugboard``, and the repository folder it is installed from."""
MAY_IMPORT = {
    "protocol": set(),
    "sdk": {"protocol"},
    "runtime": {"protocol", "sdk"},
    "broker": {"protocol", "sdk", "runtime"},
}
FOLDER_NAMES = {"protocol", "sdk", "plugin_runtime", "broker"}


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def python_files() -> list[Path]:
    return [p for p in ROOT.rglob("*.py") if not {".venv", "node_modules", ".typecheck",
                                                  "build"} & set(p.parts)]


def test_imports_run_only_downward() -> None:
    upward = set()
    for package, allowed in MAY_IMPORT.items():
        for path in (ROOT / FOLDERS[package]).rglob("*.py"):
            for name in imports_of(path):
                parts = name.split(".")
                if parts[0] == "plugboard" and len(parts) > 1 and parts[1] != package \
                        and parts[1] not in allowed:
                    upward.add((str(path.relative_to(ROOT)), name))
    assert upward == set(), "imports against the layering"


def test_nothing_imports_a_folder_name() -> None:
    """``import broker`` would load a second copy of a module beside plugboard.broker."""
    bare = {(str(path.relative_to(ROOT)), name) for path in python_files()
            for name in imports_of(path) if name.split(".")[0] in FOLDER_NAMES}
    assert bare == set()


def test_every_package_and_bundled_plugin_is_installed() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {f"plugboard.{p}": f for p, f in FOLDERS.items()}.items() <= \
        setuptools["package-dir"].items()
    bundled = {f"plugboard.bundled.{d.name}" for d in (ROOT / "plugins").iterdir()
               if (d / "plugin.toml").exists()}
    assert bundled <= set(setuptools["packages"]), "list new bundled plugins in pyproject"
