"""Imports run one way: broker -> plugin_runtime -> sdk -> protocol (README, Layout).

The runtime speaks to the broker only through the protocol (the agent role), so
nothing below ``broker`` imports it, and ``protocol`` imports nothing of ours.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[2]
OURS = ("protocol", "sdk", "plugin_runtime", "broker")
MAY_IMPORT = {
    "protocol": set(),
    "sdk": {"protocol"},
    "plugin_runtime": {"protocol", "sdk"},
    "broker": {"protocol", "sdk", "plugin_runtime"},
}
def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return {name for name in found if name.split(".")[0] in OURS}


def test_imports_run_only_downward() -> None:
    upward = set()
    for package, allowed in MAY_IMPORT.items():
        for path in (ROOT / package).rglob("*.py"):
            for name in imports_of(path):
                top = name.split(".")[0]
                if top != package and top not in allowed:
                    upward.add((str(path.relative_to(ROOT)), name))
    assert upward == set(), "imports against the layering"
