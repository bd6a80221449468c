"""``plugboard check``: the contract checker, the same check the runtime runs first."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from plugin_runtime.contract import check_contracts


def check(args: argparse.Namespace) -> int:
    contracts, problems = check_contracts([Path(p) for p in args.paths])
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    for contract in contracts:
        print(f"ok  {contract.name} {contract.version}  ({contract.file})")
    print("start order: " + " -> ".join(c.name for c in contracts))
    return 0


def add_commands(commands: Any) -> None:
    cmd = commands.add_parser(
        "check", help="check plugin contracts (plugin.toml)",
        description="Check every plugin contract below the given paths, each a plugin "
                    "folder or a folder of plugin folders. Reports every problem with file, "
                    "field and reason, and exits 1 if there is any.")
    cmd.add_argument("paths", nargs="+", metavar="PATH")
    cmd.set_defaults(handler=check)
