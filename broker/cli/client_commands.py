"""``get``, ``set``, ``ls`` and ``watch``: the broker's data from a terminal.

Every command connects as a ``client`` unless it asks for more, as sudo does:
``--admin`` (or ``PLUGBOARD_ADMIN=1``) for the admin role, which needs the admin
token in the state directory (the user who started the broker) or, over tcp, an admin
key. Commands that only an admin may run (``plugins start``, ``logs``, ...) ask for it
themselves and say so when it cannot be had.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

from plugboard.protocol.discovery import default_endpoint, read_admin_token
from plugboard.protocol.errors import ConfigError
from plugboard.protocol.json_values import to_json
from plugboard.protocol.values import ValueType
from plugboard.sdk import Change, Client, Gap, Reconnected, Removed, Synced
from plugboard.sdk._keys import ENV_KEY_FILE, ENV_SECRET_KEY, ENV_SERVER_KEY, CurveKeys, curve_keys

from ..security import CURVE_DIR
from . import exit_codes
from .arguments import at_least, seconds
from .tables import print_table
from .values import format_table, format_value, parse_value


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--admin", action="store_true",
                        help="act as admin (needs the admin token or an admin key; also "
                             "$PLUGBOARD_ADMIN=1); without it, as a client")
    parser.add_argument("--endpoint", metavar="EP",
                        help="broker endpoint (default: $PLUGBOARD_ENDPOINT, else "
                             "ipc://STATE_DIR/broker.sock)")
    parser.add_argument("--timeout", type=seconds, default=3.0,
                        help="seconds to wait for each reply (default 3)")
    parser.add_argument("--server-key", metavar="KEY",
                        help="tcp with CURVE: the broker's public key, as Z85 text or a .key "
                             "file (default: $PLUGBOARD_SERVER_KEY, else the state "
                             "directory's, when readable)")
    parser.add_argument("--key", metavar="FILE", dest="key_file",
                        help="tcp with CURVE: this peer's key pair, a .key_secret file "
                             "(default: $PLUGBOARD_KEY_FILE, else the state directory's "
                             "local admin key, when readable)")


def connect(args: argparse.Namespace, reconnect: bool = False, *,
            admin_only: str | None = None) -> Client:
    """A client for the command; ``admin_only`` names what needs the admin role."""
    endpoint = args.endpoint or os.environ.get("PLUGBOARD_ENDPOINT") or default_endpoint(
        args.state_dir)
    wants_admin = admin_only is not None or getattr(args, "admin", False) or \
        os.environ.get("PLUGBOARD_ADMIN", "") not in ("", "0")
    curve = curve_for(args) if endpoint.startswith("tcp://") else None
    token = read_admin_token(args.state_dir) if wants_admin and curve is None else None
    if wants_admin and curve is None and token is None:
        raise ConfigError(f"{admin_only or 'the admin role'} needs the admin token, and "
                          f"{Path(args.state_dir) / 'admin.token'} cannot be read here (run "
                          "as the user who started the broker, or give --state-dir)")
    role = "admin" if wants_admin else "client"
    client = Client(endpoint, role=role, token=token, timeout=args.timeout,
                    reconnect=reconnect, curve=curve)
    if role == "admin" and curve is None:
        # A restarted broker writes a new token: live views read it again to reconnect.
        client.extra_hello = lambda: {"token": read_admin_token(args.state_dir)}
    return client


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


def get(args: argparse.Namespace) -> int:
    async def main() -> None:
        async with connect(args) as client:
            info = await client.get(args.name)
        live = info.live
        described = {"name": info.name, "value": info.value, "type": info.type,
                     "unit": info.meta.get("unit"), "revision": info.revision,
                     "timestamp": info.timestamp, "owner": info.owner, "live": live,
                     "meta": info.meta}
        if args.json:
            print_json(described)
        elif args.verbose:
            rows = [(key, format_value(value) if value is not None else "-")
                    for key, value in described.items() if key != "meta"]
            rows.append(("state", "live" if live else "dormant (its owner is not "
                                                      "connected; the stored value)"))
            rows += [(f"meta.{k}", format_value(v)) for k, v in info.meta.items()
                     if k != "unit"]
            print(format_table(rows))  # a key and its value: the same on a terminal
        else:
            print(format_value(info.value))

    asyncio.run(main())
    return 0


def set_(args: argparse.Namespace) -> int:
    async def main() -> None:
        async with connect(args) as client:
            vtype = ValueType(args.type) if args.type else ValueType((await client.get(
                args.name)).type)
            value = parse_value(args.value, vtype)
            revision = await client.set(args.name, value)
            if args.json:
                print_json({"name": args.name, "value": value, "revision": revision})
            else:
                print(f"{args.name} = {args.value} (revision {revision})")

    asyncio.run(main())
    return 0


def ls(args: argparse.Namespace) -> int:
    async def main() -> list[Any]:
        async with connect(args) as client:
            return await client.list(args.pattern)

    items = asyncio.run(main())
    if args.json:
        for info in items:
            print_json({"name": info.name, "type": info.type, "value": info.value,
                        "owner": info.owner, "revision": info.revision,
                        "timestamp": info.timestamp, "live": info.live, "meta": info.meta})
        return 0
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
        (i.name, i.type, format_value(i.value), i.meta.get("unit") or "",
         i.owner if i.live else f"{i.owner} (away)") for i in items
    ]
    print_table(rows)
    return 0


def watch(args: argparse.Namespace) -> int:
    """Until Ctrl-C, ``-C`` changes, or ``-W`` seconds (then exit status 6 if ``-C`` was
    not reached)."""

    async def main() -> int:
        async with connect(args, reconnect=True) as client:
            sub = await client.subscribe(args.pattern, current=not args.no_current,
                                         policy=args.policy)
            seen = 0
            try:
                async with asyncio.timeout(args.wait):
                    async for event in sub:
                        seen += _show(args, event)
                        if args.count and seen >= args.count:
                            return exit_codes.OK
            except TimeoutError:
                return exit_codes.TIMED_OUT if args.count else exit_codes.OK
        return exit_codes.OK

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        sys.stdout.flush()
        return exit_codes.OK


def _show(args: argparse.Namespace, event: Any) -> int:
    """Print one subscription event as asked; 1 if it was a change or a removal."""
    stamp = dt.datetime.now().strftime("%H:%M:%S.%f")[:-3]
    if isinstance(event, Change | Removed):
        change = event if isinstance(event, Change) else None
        fields = {"name": event.name, "value": change.value if change else None,
                  "removed": change is None, "revision": change.revision if change else None,
                  "time": change.timestamp if change else None}
        shown = format_value(change.value) if change else ""
        if args.json:
            print_json(fields, flush=True)
        elif args.format:
            print(args.format.format_map({
                **fields, "value": shown, "json": json.dumps(to_json(fields["value"])),
                "time": format_value(change.timestamp) if change else ""}), flush=True)
        elif change is None:
            print(f"{stamp} {event.name} removed", flush=True)
        else:
            print(f"{stamp} {event.name} = {shown}", flush=True)
        return 1
    if args.json or args.format:
        if isinstance(event, Gap | Reconnected):
            print(f"# {event}", file=sys.stderr, flush=True)
        return 0
    if isinstance(event, Gap):
        print(f"{stamp} # {event.count} changes lost: {event.reason}", flush=True)
    elif isinstance(event, Synced):
        print(f"{stamp} # current values above, live changes below", flush=True)
    elif isinstance(event, Reconnected):
        print(f"{stamp} # reconnected (broker restarted: {event.instance_changed})",
              flush=True)
    return 0


def print_json(data: Any, flush: bool = False) -> None:
    """One JSON document per line (NDJSON): timestamps ISO 8601, durations in seconds."""
    print(json.dumps(to_json(data)), flush=flush)


def add_commands(commands: Any) -> None:
    cmd = commands.add_parser("get", help="print a property's value",
                              description="Print the current value of one property; -v "
                                          "also its type, unit, revision, timestamp, owner "
                                          "and whether it is live or dormant.")
    cmd.add_argument("name", help="property name, e.g. system/broker/uptime")
    cmd.add_argument("-v", "--verbose", action="store_true",
                     help="everything about the property, not only its value")
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
    cmd.add_argument("-C", "--count", type=at_least(0), default=0, metavar="N",
                     help="exit after N changes (default: run until Ctrl-C)")
    cmd.add_argument("-W", "--wait", type=seconds, default=None, metavar="SECONDS",
                     help="exit after SECONDS; with -C, exit status 6 if fewer changes came")
    cmd.add_argument("-F", "--format", metavar="TEMPLATE",
                     help="print each change with TEMPLATE, e.g. '{name}={value}'; fields: "
                          "name, value, json (the value as JSON), revision, time, removed")
    add_connection_arguments(cmd)
    cmd.set_defaults(handler=watch)
