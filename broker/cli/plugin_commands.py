"""Plugin commands: ``check`` (the contract checker the runtime runs first), ``plugins``,
``logs`` and ``top``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.live import Live

from plugboard.protocol.errors import ConfigError, ConnectionFailed, NotFound
from plugboard.protocol.names import LOG_TOPIC
from plugboard.protocol.values import Duration, ValueType
from plugboard.runtime.contract import Contract, check_contracts
from plugboard.sdk import Client

from .arguments import at_least
from .client_commands import add_connection_arguments, connect, print_json
from .tables import on_terminal, print_table, rich_table
from .values import format_table, format_value, parse_value


def contracts_to_run(paths: list[Path], command: str) -> list[Contract] | None:
    """The contracts a daemon is to run (needs another agent may meet allowed), or None
    after printing every problem: then nothing may start."""
    contracts, problems = check_contracts(paths, remote_needs=True) if paths else ([], [])
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"plugboard {command}: {len(problems)} contract problem(s); nothing was started",
              file=sys.stderr)
        return None
    return contracts


def check(args: argparse.Namespace) -> int:
    contracts, problems = check_contracts([Path(p) for p in args.paths])
    if args.json:
        print_json({"ok": not problems, "problems": [dataclasses.asdict(p) for p in problems],
                    "start_order": [c.name for c in contracts]})
        return 1 if problems else 0
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) found", file=sys.stderr)
        return 1
    for contract in contracts:
        print(f"ok  {contract.name} {contract.version}  ({contract.file})")
    print("start order: " + " -> ".join(c.name for c in contracts))
    return 0


def conform(args: argparse.Namespace) -> int:
    from plugboard.runtime.conformance import conform as run_checks

    steps = asyncio.run(run_checks(Path(args.path)))
    for step in steps:
        print_json(dataclasses.asdict(step)) if args.json else print(step)
    failed = [s for s in steps if not s.ok]
    if not args.json:
        print(f"{len(steps) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


def add_commands(commands: Any) -> None:
    cmd = commands.add_parser(
        "check", help="check plugin contracts (plugin.toml)",
        description="Check every plugin contract below the given paths, each a plugin "
                    "folder or a folder of plugin folders. Reports every problem with file, "
                    "field and reason, and exits 1 if there is any.")
    cmd.add_argument("paths", nargs="+", metavar="PATH")
    cmd.set_defaults(handler=check)

    cmd = commands.add_parser(
        "conform", help="drive one plugin (any language) through its life cycle",
        description="Start a private broker, launch the plugin in PATH as the runtime "
                    "would, and check: hello and init, declarations within its contract, a "
                    "subscription delivery (from the contract's [conformance] table), "
                    "heartbeats, reconnecting after a broker restart, and end. Prints each "
                    "step and exits 1 if any failed.")
    cmd.add_argument("path", metavar="PATH", help="the plugin's folder (with plugin.toml)")
    cmd.set_defaults(handler=conform)
    add_runtime_commands(commands)


def _shortened(reason: str, width: int = 100) -> str:
    """A reason for a table cell: its end says what went wrong, so the start goes."""
    return reason if len(reason) <= width else "…" + reason[-(width - 1):]


def _seconds(uptime: Any) -> str:
    """An uptime to the whole second (``1h2m3s``), as a table shows it."""
    if isinstance(uptime, Duration):
        seconds = round(uptime.ns / 1e9)
        return format_value(Duration(seconds * 10**9)) if seconds else "0s"
    return format_value(uptime)


def _rows(rows: list[dict[str, Any]]) -> list[Sequence[str]]:
    """The plugins table, header first."""
    header = ("NAME", "VERSION", "HOST", "STATE", "PID", "UPTIME", "RESTARTS", "CPU%", "MEMORY",
              "REASON")
    lines: list[Sequence[str]] = [header]
    for row in rows:
        rss = row.get("memory_rss") or 0
        lines.append((
            row["name"], row["version"], row.get("host") or "-", row["state"],
            str(row.get("pid") or "-"),
            _seconds(row["uptime"]) if row.get("pid") else "-", str(row["restarts"]),
            f"{row.get('cpu_percent') or 0:.1f}", f"{rss / 2**20:.1f} MB" if rss else "-",
            _shortened(row.get("reason") or ""),
        ))
    return lines


def plugins(args: argparse.Namespace) -> int:
    async def main() -> int:
        admin_only = None if args.action in ("list", "show") else f"plugins {args.action}"
        async with connect(args, admin_only=admin_only) as client:
            if args.action == "list":
                rows = (await client.request("plugins"))["plugins"]
                if args.json:
                    for row in rows:
                        print_json(row)
                else:
                    print_table(_rows(rows))
                return 0
            if args.action == "reread":
                found = await client.request("plugins.reread", _host(args),
                                             timeout=max(args.timeout, 30.0))
                print_json(found) if args.json else print(_reread_report(found))
                return 1 if found["problems"] else 0
            if not args.name:
                raise ConfigError(f"plugins {args.action} needs a plugin NAME")
            if args.action == "show":
                values = await _plugin_values(client, args.name)
                print_json(values) if args.json else print(_story(args.name, values))
                return 0
            params = {"name": args.name, "force": args.force,
                      **(_host(args) if args.action == "add" else {})}
            result = await client.request(f"plugins.{args.action}", params,
                                          timeout=max(args.timeout, 60.0))
            if args.json:
                print_json({"action": args.action, "name": args.name, **result})
            else:
                print(f"{args.action} {args.name}: " + ", ".join(
                    f"{k} {format_value(v)}" for k, v in result.items()))
            return 0 if result.get("ready", True) else 1

    return asyncio.run(main())


def _host(args: argparse.Namespace) -> dict[str, Any]:
    return {"host": args.host} if args.host else {}


def _reread_report(found: dict[str, Any]) -> str:
    lines = [f"{found['host']}:"]
    for key, hint in (("available", "plugboard plugins add NAME starts it"),
                      ("changed", "plugboard plugins reload NAME replaces it"),
                      ("removed", "its folder is gone; plugboard plugins remove NAME")):
        if found[key]:
            lines.append(f"  {key}: {', '.join(found[key])}  ({hint})")
    lines += [f"  problem: {p}" for p in found["problems"]]
    return "\n".join(lines) if len(lines) > 1 else f"{found['host']}: no changes"


async def _plugin_values(client: Client, name: str) -> dict[str, Any]:
    """Everything below system/plugins/NAME/, by sub-name."""
    prefix = f"system/plugins/{name}/"
    items = await client.list(prefix + "#")
    if not items:
        raise NotFound("not_found", f"no plugin {name!r} is managed by a connected agent")
    return {i.name[len(prefix):]: i.value for i in items}


def _story(name: str, values: dict[str, Any]) -> str:
    """One plugin's whole story: where and how it runs, what happened to it (state
    history with exit codes and reasons, the end of its stderr) and its contract."""
    lines = [f"{name} {values.get('contract/version', '')} on {values.get('host', '?')}: "
             f"{values.get('state', '?')}"]
    for key in ("reason", "pid", "started_at", "uptime", "restarts", "exit_code",
                "cpu_percent", "memory_rss", "threads", "open_files"):
        if values.get(key) not in (None, ""):
            shown = _seconds(values[key]) if key == "uptime" else format_value(values[key])
            lines.append(f"  {key:<12} {shown}")
    history = values.get("history") or []
    if history:
        lines.append("history:")
        for entry in history:
            code = entry.get("exit_code")
            lines.append(f"  {format_value(entry.get('time'))}  {entry.get('state', ''):<9}"
                         + (f" exit {code}" if code is not None else "")
                         + (f"  {entry['reason']}" if entry.get("reason") else ""))
    if values.get("stderr_tail"):
        lines.append("stderr (last lines of the last launch that ended):")
        lines += [f"  {line}" for line in str(values["stderr_tail"]).splitlines()]
    lines.append("contract:")
    for key in ("description", "provides", "needs", "after", "before", "restart", "limits"):
        if values.get(f"contract/{key}") not in (None, "", [], {}):
            lines.append(f"  {key:<12} {format_value(values[f'contract/{key}'])}")
    lines.append("  exports:")
    for export in values.get("contract/exports") or []:
        lines.append(f"    {export['pattern']} ({export['type']})")
    lines.append("  methods:")
    for method in values.get("contract/methods") or []:
        params = ", ".join(f"{k}: {v}" for k, v in method["params"].items())
        who = ", ".join(method["callable_by"]) or "admins only"
        lines.append(f"    {method['name']}({params}) -> {method['result']}  "
                     f"[callable by {who}] {method['description']}")
    return "\n".join(lines)


def call(args: argparse.Namespace) -> int:
    async def main() -> int:
        async with connect(args) as client:
            methods = (await client.get(f"system/plugins/{args.plugin}/contract/methods")).value
            spec = next((m for m in methods or [] if m["name"] == args.method), None)
            if spec is None:
                raise ConfigError(f"plugin {args.plugin!r} exports no method {args.method!r}"
                                  f"; it exports: " + (", ".join(
                                      m["name"] for m in methods or []) or "none"))
            params = {}
            for pair in args.params:
                key, sep, text = pair.partition("=")
                if not sep or key not in spec["params"]:
                    raise ConfigError(f"{pair!r}: give KEY=VALUE with KEY one of "
                                      + ", ".join(spec["params"]))
                params[key] = parse_value(text, ValueType(spec["params"][key]))
            result = await client.call(args.plugin, args.method, timeout=args.timeout,
                                       **params)
            print_json({"result": result}) if args.json else print(format_value(result))
            return 0

    return asyncio.run(main())


def logs(args: argparse.Namespace) -> int:
    """The tail comes from the plugin's agent, wherever it runs; ``-f`` then prints the
    output its agent publishes on ``system/logs/NAME`` as it is captured."""

    async def main() -> int:
        async with connect(args, reconnect=args.follow, admin_only="logs") as client:
            follow = await client.listen(LOG_TOPIC + args.name) if args.follow else None
            result = await client.request("plugins.logs", {"name": args.name,
                                                           "lines": args.lines})
            if args.json:
                for line in result["text"].splitlines():
                    print_json({"name": args.name, "line": line}, flush=True)
            else:
                sys.stdout.write(result["text"])
                sys.stdout.flush()
            if follow is not None:
                async for message in follow:
                    if args.json:
                        print_json({"name": args.name, "line": message.payload.decode(
                            errors="replace").rstrip("\n")}, flush=True)
                    else:
                        sys.stdout.buffer.write(message.payload)
                        sys.stdout.flush()
            return 0

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return 0
    except (ConnectionFailed, ConfigError):
        if args.follow:
            raise
        return _local_log(args)  # a post-mortem: the broker is down, its files are here


def _local_log(args: argparse.Namespace) -> int:
    """Without a broker: the log file of the broker's own agent or of an agent run on
    this host with this state directory."""
    state = Path(args.state_dir)
    found = [state / "logs" / f"{args.name}.log",
             *sorted(state.glob(f"agents/*/logs/{args.name}.log"))]
    path = next((p for p in found if p.exists()), None)
    if path is None:
        raise ConnectionFailed(f"no broker is running, and no log of plugin {args.name!r} "
                               f"is in {state}")
    print(f"(no broker running: from {path})", file=sys.stderr)
    lines = path.read_bytes().splitlines(keepends=True)[-args.lines:]
    sys.stdout.buffer.write(b"".join(lines))
    sys.stdout.flush()
    return 0


def top(args: argparse.Namespace) -> int:
    """Redrawn at each change of a plugin's figures: a live rich view on a terminal,
    a table (or one JSON document) per change when piped."""

    async def main() -> None:
        async with connect(args, reconnect=True) as client:
            changes = await client.subscribe("system/plugins/+/+", min_interval=0.5)
            live = Live(auto_refresh=False, screen=False) if on_terminal() and not args.json \
                else None
            with live or contextlib.nullcontext():
                async for _event in changes:
                    rows = (await client.request("plugins"))["plugins"]
                    if args.json:
                        print_json({"plugins": rows}, flush=True)
                    elif live is not None:
                        live.update(rich_table(_rows(rows)), refresh=True)
                    else:
                        print(format_table(_rows(rows)) + "\n", flush=True)

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    return 0


def add_runtime_commands(commands: Any) -> None:
    cmd = commands.add_parser(
        "plugins", help="list plugins; show, start, stop, restart, reload, add, remove one",
        description="Without an action: each plugin with its host, state, pid, uptime, "
                    "restarts, CPU and memory. show NAME: its whole story (history, exit "
                    "codes, stderr) and contract. start/stop/restart/reload act on one "
                    "plugin (admin). reload replaces it with the version on disk when the "
                    "new contract provides at least as much and needs no more; --force "
                    "replaces it anyway and restarts the plugins that depend on it. reread "
                    "reads the plugin folders again and lists new, changed and removed "
                    "plugins (contracts checked); add NAME starts a new one; remove NAME "
                    "stops one and forgets it, as supervisorctl does.")
    cmd.add_argument("action", nargs="?", default="list",
                     choices=["list", "show", "start", "stop", "restart", "reload", "reread",
                              "add", "remove"])
    cmd.add_argument("name", nargs="?")
    cmd.add_argument("--force", action="store_true", help="reload: replace even if the "
                     "contract provides less or needs more")
    cmd.add_argument("--host", help="reread/add: the agent to ask (needed when several "
                                    "are connected)")
    add_connection_arguments(cmd)
    cmd.set_defaults(handler=plugins)

    cmd = commands.add_parser(
        "call", help="call a method a plugin exports",
        description="Call METHOD of plugin NAME through the broker and print the result. "
                    "Each KEY=VALUE is parsed by the parameter's declared type, as set "
                    "parses values; plugins show NAME lists the methods.")
    cmd.add_argument("plugin", metavar="NAME")
    cmd.add_argument("method", metavar="METHOD")
    cmd.add_argument("params", nargs="*", metavar="KEY=VALUE")
    add_connection_arguments(cmd)
    cmd.set_defaults(handler=call)

    cmd = commands.add_parser("logs", help="show a plugin's captured stdout and stderr",
                              description="Print the end of a plugin's log, from the agent "
                                          "that runs it, wherever that is (admin). Each "
                                          "agent keeps logs/NAME.log in its state "
                                          "directory, rotated at 1 MiB.")
    cmd.add_argument("name")
    cmd.add_argument("-f", "--follow", action="store_true",
                     help="keep printing new output as it is captured, until Ctrl-C")
    cmd.add_argument("-n", "--lines", type=at_least(1), default=50,
                     help="lines to show (default 50)")
    add_connection_arguments(cmd)
    cmd.set_defaults(handler=logs)

    cmd = commands.add_parser("top", help="a live table of plugins and their resource use",
                              description="Redraw the plugin table whenever a plugin's "
                                          "figures change, until Ctrl-C.")
    add_connection_arguments(cmd)
    cmd.set_defaults(handler=top)
