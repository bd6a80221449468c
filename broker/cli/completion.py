"""Shell completion with argcomplete: commands and options from the parser, and the
names only a running broker knows (properties, plugins), asked of it with a short
timeout when the user presses Tab. ``plugboard completion bash`` prints the hook."""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import argcomplete
from argcomplete import shell_integration

from plugboard.protocol.discovery import default_endpoint, default_state_dir
from plugboard.sdk import Client

PROPERTY_ARGS = {("get", "name"), ("set", "name"), ("watch", "pattern"), ("ls", "pattern")}
PLUGIN_ARGS = {("plugins", "name"), ("logs", "name"), ("call", "plugin")}


def _ask(parsed: argparse.Namespace, ask: Callable[[Client], Any]) -> list[str]:
    """What the broker answers within half a second, or nothing: a completion must
    never hang or print an error."""
    state_dir = getattr(parsed, "state_dir", None) or default_state_dir()
    endpoint = getattr(parsed, "endpoint", None) or os.environ.get(
        "PLUGBOARD_ENDPOINT") or default_endpoint(Path(state_dir))

    async def main() -> list[str]:
        async with Client(endpoint, timeout=0.5, reconnect=False) as client:
            return list(await ask(client))

    try:
        return asyncio.run(asyncio.wait_for(main(), 1.0))
    except Exception:  # no broker, no answer: no completions
        return []


def properties(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    async def names(client: Client) -> list[str]:
        return [info.name for info in await client.list("#")]

    return [n for n in _ask(parsed_args, names) if n.startswith(prefix)]


def plugins(prefix: str, parsed_args: argparse.Namespace, **_: Any) -> list[str]:
    async def names(client: Client) -> list[str]:
        return [row["name"] for row in (await client.request("plugins"))["plugins"]]

    return [n for n in _ask(parsed_args, names) if n.startswith(prefix)]


def attach(parser: argparse.ArgumentParser) -> None:
    """Give the name arguments of each command their completer, then hook argcomplete
    in (it does nothing unless the shell is asking)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for command, sub in action.choices.items():
                for argument in sub._actions:
                    if (command, argument.dest) in PROPERTY_ARGS:
                        argument.completer = properties
                    elif (command, argument.dest) in PLUGIN_ARGS:
                        argument.completer = plugins
    argcomplete.autocomplete(parser)


def shellcode(args: argparse.Namespace) -> int:
    print(shell_integration.shellcode(["plugboard"], shell=args.shell))
    return 0


def add_command(commands: Any) -> None:
    cmd = commands.add_parser(
        "completion", help="print the shell hook for Tab completion",
        description="Print the code that makes your shell complete plugboard's commands, "
                    "options, property names and plugin names: add "
                    "'eval \"$(plugboard completion bash)\"' to ~/.bashrc (zsh and fish "
                    "alike).")
    cmd.add_argument("shell", choices=["bash", "zsh", "fish", "tcsh"], nargs="?",
                     default="bash")
    cmd.set_defaults(handler=shellcode)
