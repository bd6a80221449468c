"""The ``plugboard`` command. The only place that configures logging."""

from __future__ import annotations

import argparse
import importlib.resources
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from plugboard.protocol import build
from plugboard.protocol._version import SUPPORTED_VERSIONS
from plugboard.protocol.discovery import default_state_dir
from plugboard.protocol.errors import PlugboardError

from ..core import BROKER_VERSION
from . import (
    agent_command,
    client_commands,
    completion,
    daemon,
    exit_codes,
    key_commands,
    plugin_commands,
    store_commands,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plugboard",
        description="Plugboard: an out-of-process plugin runner. A broker owns a typed "
                    "datastore; plugins and clients talk msgpack over ZeroMQ and get "
                    "changes pushed.",
        epilog=exit_codes.EPILOG,
    )
    parser.add_argument("--version", action="version",
                        version=f"plugboard {BROKER_VERSION} (protocol versions "
                                f"{', '.join(map(str, SUPPORTED_VERSIONS))}; "
                                f"{build.describe()})")
    parser.add_argument("--log-level", default=None,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="log verbosity on stderr (default: INFO for broker and agent, "
                             "WARNING for the other commands)")
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="broker state directory (default: $PLUGBOARD_STATE_DIR, else "
                             "$XDG_STATE_HOME/plugboard, else ~/.local/state/plugboard)")
    # The same two options are accepted after the command too (plugboard ls --state-dir X).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-level", default=argparse.SUPPRESS,
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help=argparse.SUPPRESS)
    common.add_argument("--state-dir", type=Path, default=argparse.SUPPRESS,
                        help="broker state directory (see plugboard --help)")
    common.add_argument("--json", action="store_true",
                        help="machine-readable output: one JSON document per line "
                             "(timestamps ISO 8601, durations in seconds)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser = _with_parents(commands.add_parser, common)  # type: ignore[method-assign]
    cmd = commands.add_parser("broker", help="run the broker daemon in the foreground",
                              description="Run the broker in the foreground until Ctrl-C "
                                          "or SIGTERM (a clean stop: plugins ended, store "
                                          "committed). SIGHUP re-reads the authorized keys "
                                          "(what plugboard keys allow and revoke change).")
    daemon.add_arguments(cmd)
    cmd.set_defaults(handler=daemon.run)
    cmd = commands.add_parser(
        "agent", help="run this host's plugins for a broker on another host",
        description="Check the contracts, connect to the broker as an agent and run the "
                    "plugins in --plugins under supervision, as plugboard broker --plugins "
                    "does. Logs and launch records go to STATE_DIR/agents/NAME. Over tcp "
                    "the agent needs a key the broker allows as agent (plugboard keys "
                    "allow KEY --role agent) and the broker's public key. Ctrl-C or SIGTERM "
                    "stops its plugins and it; SIGHUP is ignored.")
    agent_command.add_arguments(cmd)
    cmd.set_defaults(handler=agent_command.run)
    cmd = commands.add_parser("spec", help="print the wire protocol (PROTOCOL.md)",
                              description="Print PROTOCOL.md, the specification a plugin or "
                                          "client in any language is written from; --path "
                                          "prints where it is installed.")
    cmd.add_argument("--path", action="store_true", help="print the file's path only")
    cmd.set_defaults(handler=_spec)
    client_commands.add_commands(commands)
    plugin_commands.add_commands(commands)
    store_commands.add_commands(commands)
    key_commands.add_commands(commands)
    completion.add_command(commands)
    return parser


def _spec(args: argparse.Namespace) -> int:
    spec = importlib.resources.files("plugboard.protocol") / "PROTOCOL.md"
    print(spec if args.path else spec.read_text(), end="\n" if args.path else "")
    return exit_codes.OK


def _with_parents(add_parser: Any, common: argparse.ArgumentParser) -> Any:
    def add(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return add_parser(name, parents=[common], **kwargs)  # type: ignore[no-any-return]

    return add


DAEMONS = ("broker", "agent")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    completion.attach(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        key_commands.hint_dash_key(sys.argv[1:] if argv is None else argv, exc)
        raise
    if args.state_dir is None:
        args.state_dir = default_state_dir()
    daemon_command = args.command in DAEMONS
    if not daemon_command:
        # A closed pipe (plugboard watch | head) ends the command quietly, as it ends cat.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    level = args.log_level or ("INFO" if daemon_command else "WARNING")
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args))
    except PlugboardError as exc:
        print(f"plugboard {args.command}: {exc}", file=sys.stderr)
        return exit_codes.for_error(exc)
    except OSError as exc:  # a file or disk the command needed (full, read-only, gone)
        where = f": {exc.filename}" if exc.filename else ""
        print(f"plugboard {args.command}: {exc.strerror or exc}{where}", file=sys.stderr)
        return exit_codes.ERROR
    except KeyboardInterrupt:
        return exit_codes.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
