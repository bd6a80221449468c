"""``get``, ``set``, ``ls`` and ``watch``: the broker's data from a terminal.

They connect as ``admin`` when the admin token in the state directory is readable
(the user who started the broker), else as a ``client``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

from protocol.discovery import default_endpoint, read_admin_token
from protocol.values import ValueType
from sdk import Change, Client, Gap, Reconnected, Removed, Synced
from sdk._keys import (
    ENV_KEY_FILE,
    ENV_SECRET_KEY,
    ENV_SERVER_KEY,
    CurveKeys,
    curve_keys,
    read_key_pair,
)

from ..security import CURVE_DIR
from .values import format_table, format_value, parse_value


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", metavar="EP",
                        help="broker endpoint (default: $PLUGBOARD_ENDPOINT, else "
                             "ipc://STATE_DIR/broker.sock)")
    parser.add_argument("--timeout", type=float, default=3.0,
                        help="seconds to wait for each reply (default 3)")
    parser.add_argument("--server-key", metavar="KEY",
                        help="tcp with CURVE: the broker's public key, as Z85 text or a .key "
                             "file (default: $PLUGBOARD_SERVER_KEY, else the state "
                             "directory's, when readable)")
    parser.add_argument("--key", metavar="FILE", dest="key_file",
                        help="tcp with CURVE: this peer's key pair, a .key_secret file "
                             "(default: $PLUGBOARD_KEY_FILE, else the state directory's "
                             "local admin key, when readable)")


def connect(args: argparse.Namespace, reconnect: bool = False) -> Client:
    endpoint = args.endpoint or os.environ.get("PLUGBOARD_ENDPOINT") or default_endpoint(
        args.state_dir)
    token = read_admin_token(args.state_dir)
    curve = curve_for(args) if endpoint.startswith("tcp://") else None
    if curve is not None:  # the key decides the role on CURVE
        role = "admin" if curve.secret == _local_admin_secret(args) else "client"
    else:
        role = "admin" if token else "client"
    return Client(endpoint, role=role, token=token, timeout=args.timeout,
                  reconnect=reconnect, curve=curve)


def curve_for(args: argparse.Namespace) -> CurveKeys | None:
    """Keys from the options or environment, else the local broker's files: its public
    key and the local admin pair (readable only by the user who runs the broker)."""
    local = Path(args.state_dir) / CURVE_DIR
    server = args.server_key or os.environ.get(ENV_SERVER_KEY)
    if not server and (local / "broker.key").exists():
        server = str(local / "broker.key")
    key_file = args.key_file
    if not key_file and not os.environ.get(ENV_KEY_FILE) and not os.environ.get(
            ENV_SECRET_KEY) and os.access(local / "admin.key_secret", os.R_OK):
        key_file = str(local / "admin.key_secret")
    return curve_keys(server, key_file)


def _local_admin_secret(args: argparse.Namespace) -> str | None:
    path = Path(args.state_dir) / CURVE_DIR / "admin.key_secret"
    return read_key_pair(path)[1] if os.access(path, os.R_OK) else None


def get(args: argparse.Namespace) -> int:
    async def main() -> None:
        async with connect(args) as client:
            info = await client.get(args.name)
            print(format_value(info.value))

    asyncio.run(main())
    return 0


def set_(args: argparse.Namespace) -> int:
    async def main() -> None:
        async with connect(args) as client:
            vtype = ValueType(args.type) if args.type else ValueType((await client.get(
                args.name)).type)
            revision = await client.set(args.name, parse_value(args.value, vtype))
            print(f"{args.name} = {args.value} (revision {revision})")

    asyncio.run(main())
    return 0


def ls(args: argparse.Namespace) -> int:
    async def main() -> list[Any]:
        async with connect(args) as client:
            return await client.list(args.pattern)

    items = asyncio.run(main())
    if args.tree:
        shown: set[str] = set()
        for info in items:
            parts = info.name.split("/")
            for depth in range(len(parts) - 1):
                prefix = "/".join(parts[:depth + 1])
                if prefix not in shown:
                    shown.add(prefix)
                    print("  " * depth + parts[depth] + "/")
            unit = f" {info.meta['unit']}" if info.meta.get("unit") else ""
            print("  " * (len(parts) - 1) + f"{parts[-1]} = {format_value(info.value)}{unit}")
        return 0
    rows = [("NAME", "TYPE", "VALUE", "UNIT", "OWNER")] + [
        (i.name, i.type, format_value(i.value), i.meta.get("unit") or "", i.owner) for i in items
    ]
    print(format_table(rows))
    return 0


def watch(args: argparse.Namespace) -> int:
    async def main() -> None:
        async with connect(args, reconnect=True) as client:
            sub = await client.subscribe(args.pattern, current=not args.no_current,
                                         policy=args.policy)
            seen = 0
            async for event in sub:
                stamp = dt.datetime.now().strftime("%H:%M:%S.%f")[:-3]
                if isinstance(event, Change):
                    print(f"{stamp} {event.name} = {format_value(event.value)}", flush=True)
                    seen += 1
                elif isinstance(event, Removed):
                    print(f"{stamp} {event.name} removed", flush=True)
                    seen += 1
                elif isinstance(event, Gap):
                    print(f"{stamp} # {event.count} changes lost: {event.reason}", flush=True)
                elif isinstance(event, Synced):
                    print(f"{stamp} # current values above, live changes below", flush=True)
                elif isinstance(event, Reconnected):
                    print(f"{stamp} # reconnected (broker restarted: "
                          f"{event.instance_changed})", flush=True)
                if args.count and seen >= args.count:
                    return

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.stdout.flush()
    return 0


def add_commands(commands: Any) -> None:
    cmd = commands.add_parser("get", help="print a property's value",
                              description="Print the current value of one property.")
    cmd.add_argument("name", help="property name, e.g. system/broker/uptime")
    add_connection_arguments(cmd)
    cmd.set_defaults(handler=get)

    cmd = commands.add_parser(
        "set", help="write a property's value",
        description="Write a value; it is parsed by the property's declared type. "
                    "Timestamps: now, @<unix seconds> or ISO 8601. Durations: 250ms, 1.5s, "
                    "1h30m. bytes: hex. list/map/any: JSON, with {\"$duration\": \"1s\"}, "
                    "{\"$timestamp\": \"now\"} and {\"$bytes\": \"00ff\"} for those types.")
    cmd.add_argument("name")
    cmd.add_argument("value")
    cmd.add_argument("--type", choices=[t.value for t in ValueType],
                     help="parse as this type instead of asking the broker")
    add_connection_arguments(cmd)
    cmd.set_defaults(handler=set_)

    cmd = commands.add_parser("ls", help="list properties matching a pattern",
                              description="List properties; patterns use + (one segment) "
                                          "and # (the rest).")
    cmd.add_argument("pattern", nargs="?", default="#")
    shape = cmd.add_mutually_exclusive_group()
    shape.add_argument("--tree", action="store_true", help="show as a tree")
    shape.add_argument("--table", action="store_true", help="show as a table (default)")
    add_connection_arguments(cmd)
    cmd.set_defaults(handler=ls)

    cmd = commands.add_parser("watch", help="print changes live until Ctrl-C",
                              description="Subscribe to a pattern and print every change "
                                          "as it is pushed, until Ctrl-C.")
    cmd.add_argument("pattern", nargs="?", default="#")
    cmd.add_argument("--no-current", action="store_true",
                     help="skip the current values, show only new changes")
    cmd.add_argument("--policy", choices=["latest", "all"], default="all",
                     help="all: every change (default); latest: coalesce per property")
    cmd.add_argument("--count", type=int, default=0, metavar="N",
                     help="exit after N changes (default: run until Ctrl-C)")
    add_connection_arguments(cmd)
    cmd.set_defaults(handler=watch)
