"""``plugboard agent``: run this host's plugins for a broker on another host.

The agent checks every contract first (all problems at once), connects to the broker
in the ``agent`` role (an ``agent`` key over tcp with CURVE, the admin token over
ipc), registers its plugins and supervises them as ``plugboard broker --plugins``
does. Its plugins connect to the broker themselves, each with a key pair of its own.
If the broker goes away the plugins keep running and reconnect; so does the agent,
registering again. If the agent dies its plugins die with it (parent-death signal).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path

from plugboard.protocol.discovery import default_endpoint, read_admin_token
from plugboard.protocol.errors import ConfigError
from plugboard.runtime.contract import BUNDLED
from plugboard.runtime.link import BrokerLink, default_agent_name
from plugboard.runtime.orphans import become_subreaper
from plugboard.runtime.supervisor import Supervisor

from .arguments import seconds
from .client_commands import curve_for
from .plugin_commands import contracts_to_run

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", metavar="EP", dest="endpoint",
                        help="the broker's endpoint, e.g. tcp://broker.example:7000 "
                             "(default: $PLUGBOARD_ENDPOINT, else ipc://STATE_DIR/broker.sock)")
    parser.add_argument("--plugins", action="append", metavar="PATH", type=Path, default=[],
                        nargs="?", const=BUNDLED,
                        help="run the plugins in PATH (a plugin folder or a folder of them), "
                             "repeatable; without PATH, the bundled ones; contracts are "
                             "checked first", required=True)
    parser.add_argument("--name", default=default_agent_name(),
                        help="this agent's name, shown as the HOST of its plugins; one "
                             "connected agent per name (default: the host name)")
    parser.add_argument("--plugin-endpoint", metavar="EP",
                        help="where the plugins reach the broker, if not at --broker")
    parser.add_argument("--server-key", metavar="KEY",
                        help="tcp: the broker's public key, Z85 text or a .key file "
                             "(default: $PLUGBOARD_SERVER_KEY)")
    parser.add_argument("--key", metavar="FILE", dest="key_file",
                        help="tcp: this agent's key pair, a .key_secret file whose public "
                             "key the broker allows as agent (plugboard keys allow KEY "
                             "--role agent); default: $PLUGBOARD_KEY_FILE")
    parser.add_argument("--timeout", type=seconds, default=5.0,
                        help="seconds to wait for each reply from the broker (default 5)")


def run(args: argparse.Namespace) -> int:
    contracts = contracts_to_run(args.plugins, "agent")
    if contracts is None:
        return 1
    endpoint = args.endpoint or os.environ.get("PLUGBOARD_ENDPOINT") or default_endpoint(
        args.state_dir)
    curve = curve_for(args) if endpoint.startswith("tcp://") else None
    if endpoint.startswith("tcp://") and curve is None:
        log.warning("INSECURE: no server key for %s: plain tcp, for a broker run with "
                    "--insecure (which then needs its admin token)", endpoint)
    files = agent_dir(Path(args.state_dir), args.name)
    link = BrokerLink(endpoint, name=args.name, timeout=args.timeout, curve=curve,
                      token=lambda: read_admin_token(args.state_dir))
    supervisor = Supervisor(link, contracts, state_dir=files,
                            endpoint=args.plugin_endpoint or endpoint, paths=args.plugins)
    if not become_subreaper():
        log.info("cannot become a child subreaper here; escaped plugin descendants are "
                 "found by their launch token only")
    asyncio.run(_serve(supervisor))
    return 0


def agent_dir(state_dir: Path, name: str) -> Path:
    """Where an agent keeps its plugins' logs and launch records: STATE_DIR/agents/NAME."""
    path = state_dir / "agents" / name
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError(f"cannot make the agent's directory {path}: {exc}") from exc
    return path


async def _serve(supervisor: Supervisor) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    # A hangup (its terminal closed) would end it on the spot, its plugins with it.
    loop.add_signal_handler(signal.SIGHUP, log.warning, "SIGHUP ignored: the agent has "
                            "nothing to re-read (plugboard plugins reread does that)")
    link = supervisor.link
    log.info("agent %s: connecting to %s", link.name, link.endpoint)
    try:
        await link.connect(stopping)
    except asyncio.CancelledError:
        return
    # One line on stdout says the agent is registered, and for what.
    print(f"plugboard agent {link.name} ready: connected to {link.endpoint}, managing "
          + ", ".join(supervisor.order), flush=True)
    await supervisor.run(stopping)
