"""Tables on a terminal are drawn by rich, with colour (none when ``NO_COLOR`` is set);
piped, they are plain aligned text that ``grep``, ``awk`` and ``cut`` can read."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from rich.console import Console
from rich.table import Table

from .values import format_table

STATE_STYLES = {"ready": "green", "starting": "yellow", "stopping": "yellow",
                "backoff": "red", "failed": "bold red", "exited": "red", "stopped": "dim"}
"""How plugin states are coloured, wherever a STATE column appears."""


def on_terminal() -> bool:
    return sys.stdout.isatty()


def rich_table(rows: Sequence[Sequence[str]]) -> Table:
    table = Table(show_edge=False, box=None, header_style="bold", pad_edge=False)
    header, *body = rows
    state = header.index("STATE") if "STATE" in header else -1
    for name in header:
        table.add_column(name, overflow="fold")
    for row in body:
        cells = list(row)
        if state >= 0:
            cells[state] = f"[{STATE_STYLES.get(row[state], '')}]{row[state]}[/]" \
                if row[state] in STATE_STYLES else row[state]
        table.add_row(*cells)
    return table


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """The first row is the header."""
    if on_terminal():
        Console().print(rich_table(rows))
    else:
        print(format_table(rows))
