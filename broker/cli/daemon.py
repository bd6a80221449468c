"""``plugboard broker``: the daemon in the foreground; SIGINT/SIGTERM stop it cleanly,
SIGHUP re-reads the authorized keys.

With ``--plugins``, every contract is checked before anything starts (all problems
reported at once), then the plugins start in dependency order under supervision; on
stop they are ended dependents first, before the broker closes its socket.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from plugboard.protocol import build, limits
from plugboard.protocol.discovery import default_endpoint
from plugboard.protocol.errors import ConfigError, PlugboardError
from plugboard.runtime.contract import BUNDLED, Contract
from plugboard.runtime.link import BrokerLink, default_agent_name
from plugboard.runtime.orphans import LaunchLog, become_subreaper
from plugboard.runtime.supervisor import Supervisor
from plugboard.sdk import _event_loop as event_loop
from plugboard.sdk._keys import CurveKeys

from ..core import CoreConfig
from ..security import KeyRing, curve_dir, ensure_key_pair
from ..server import BrokerServer, ServerConfig
from ..statedir import StateDir
from ..store import STORE_NAME, Durability, Store
from . import config_file, systemd
from .plugin_commands import contracts_to_run

log = logging.getLogger(__name__)


def defaults() -> dict[str, Any]:
    """Every option a config file may set, with its default."""
    core = CoreConfig()
    return {"endpoint": [], "plugins": [], "heartbeat_ms": core.heartbeat_ms,
            "session_timeout_ms": core.session_timeout_ms, "max_frame": core.max_frame,
            "durability": Durability.ALWAYS.value, "batch_ms": 100,
            "peer_queue_bytes": core.peer_queue_bytes, "allow_unmanaged_plugins": False,
            "insecure": False, "agent_name": default_agent_name(), "handshake_ms": 5000,
            "event_loop": "auto"}


RANGES: dict[str, tuple[int, int]] = {
    "heartbeat_ms": (10, 3_600_000),
    "session_timeout_ms": (20, 86_400_000),
    "max_frame": (64 * 1024, limits.MAX_FRAME_BYTES),  # no more than protocol v1 allows
    "batch_ms": (1, 60_000),
    "peer_queue_bytes": (64 * 1024, 2**40),
    "handshake_ms": (100, 600_000),
}
"""The values each numeric option may take (a config file's too); --help says them."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options default to None here: the defaults are applied after the config file."""
    parser.add_argument("--config", metavar="FILE", type=Path,
                        default=os.environ.get("PLUGBOARD_CONFIG"),
                        help="read options from this TOML file (keys are the option names, "
                             "e.g. heartbeat_ms = 2000); the command line wins "
                             "(default: $PLUGBOARD_CONFIG)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the options in effect, as a config file, and exit")
    parser.add_argument("--endpoint", action="append", metavar="EP",
                        help="where to bind, repeatable (default: ipc://STATE_DIR/broker.sock); "
                             "tcp://127.0.0.1:* picks a free port")
    parser.add_argument("--plugins", action="append", metavar="PATH", type=Path,
                        nargs="?", const=BUNDLED,
                        help="run the plugins in PATH (a plugin folder or a folder of them), "
                             "repeatable; without PATH, the bundled ones; contracts are "
                             "checked first")
    parser.add_argument("--heartbeat-ms", type=int,
                        help="how often peers must send something, 10..3600000 (default 2000)")
    parser.add_argument("--session-timeout-ms", type=int,
                        help="silence after which a session ends, more than --heartbeat-ms and at "
                             "most 86400000 (default 6000)")
    parser.add_argument("--max-frame", type=int,
                        help="largest accepted frame in bytes, 65536..4194304 (default 4 MiB, "
                             "the most protocol v1 allows)")
    parser.add_argument("--durability", choices=[d.value for d in Durability],
                        help="persistent writes: always = committed before the reply "
                             "(default); batch = committed within --batch-ms, a crash loses "
                             "at most that window; off = written at a clean stop only")
    parser.add_argument("--batch-ms", type=int,
                        help="commit window of --durability batch, 1..60000 (default 100)")
    parser.add_argument("--peer-queue-bytes", type=int,
                        help="most bytes held for one peer that reads too slowly (frames "
                             "ZeroMQ would not take, changes queued under policy all); "
                             "beyond it changes are dropped and counted; at least 65536 "
                             "(default 8 MiB)")
    parser.add_argument("--allow-unmanaged-plugins", action="store_true", default=None,
                        help="accept plugins started by hand (a plugin hello whose name no "
                             "--plugins contract manages); off by default, since anyone who "
                             "reaches the socket could then own a namespace")
    parser.add_argument("--insecure", action="store_true", default=None,
                        help="plain tcp: no CURVE, so no authentication and no encryption "
                             "(a warning at every start). Without it, tcp endpoints speak "
                             "CURVE only and admit the keys of 'plugboard keys'")
    parser.add_argument("--agent-name", metavar="NAME",
                        help="the host name the --plugins are shown under "
                             "(default: this host's name)")
    parser.add_argument("--handshake-ms", type=int,
                        help="close tcp connections that have not finished the ZeroMQ "
                             "handshake within this, 100..600000 (default 5000)")
    parser.add_argument("--event-loop", choices=event_loop.EVENT_LOOPS,
                        help="the loop the broker runs on: uvloop (faster wake-ups: "
                             "lower latency), asyncio's own, or auto = uvloop if installed "
                             "(default auto)")


def run(args: argparse.Namespace) -> int:
    settings = config_file.resolve(args, defaults(),
                                   {"durability": [d.value for d in Durability],
                                    "event_loop": event_loop.EVENT_LOOPS}, RANGES)
    if args.session_timeout_ms <= args.heartbeat_ms:
        raise ConfigError(f"session_timeout_ms ({args.session_timeout_ms}) must be more than "
                          f"heartbeat_ms ({args.heartbeat_ms}): every idle session would "
                          "end between two heartbeats")
    if args.print_config:
        print(config_file.as_toml(settings), end="")
        return 0
    loop = event_loop.chosen(args.event_loop)
    endpoints = args.endpoint or []
    contracts = contracts_to_run(args.plugins, "broker")
    if contracts is None:
        return 1
    state = StateDir(args.state_dir)
    if contracts and not become_subreaper():
        log.info("cannot become a child subreaper here; escaped plugin descendants are "
                 "found by their launch token only")
    try:
        store = Store(state.path / STORE_NAME, Durability(args.durability))
        keys, pair = _security(endpoints, args.insecure, state.path)
        config = ServerConfig(
            curve_secret_key=pair[1] if pair else None, handshake_ms=args.handshake_ms,
            batch_ms=args.batch_ms,
            endpoints=tuple(endpoints or [default_endpoint(state.path)]),
            core=CoreConfig(admin_token=state.admin_token, heartbeat_ms=args.heartbeat_ms,
                            session_timeout_ms=args.session_timeout_ms,
                            max_frame=args.max_frame,
                            peer_queue_bytes=args.peer_queue_bytes,
                            allow_unmanaged_plugins=args.allow_unmanaged_plugins),
        )
        server = BrokerServer(config, store=store)
        server.core.keys = keys
        log.info("event loop: %s", loop)
        event_loop.run(_serve(server, contracts, args.plugins, state, args.agent_name), loop)
    finally:
        state.close()
    return 0


def _security(endpoints: list[str], insecure: bool, state_dir: Path
              ) -> tuple[KeyRing | None, tuple[str, str] | None]:
    """CURVE for tcp unless ``--insecure``: the key ring and the broker's key pair."""
    tcp = [e for e in endpoints if e.startswith("tcp://")]
    if not tcp:
        return None, None
    if insecure:
        log.warning("INSECURE: %s without CURVE: no authentication, no encryption; anyone "
                    "who reaches it reads every property", ", ".join(tcp))
        return None, None
    directory = curve_dir(state_dir)
    pair = ensure_key_pair(directory, "broker")
    admin_public, _ = ensure_key_pair(directory, "admin")
    keys = KeyRing(directory)
    keys.grant_local_admin(admin_public)
    return keys, pair


async def _serve(server: BrokerServer, contracts: list[Contract], plugin_paths: list[Path],
                 state: StateDir,
                 agent_name: str) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, _reload_keys, server)
    serving = asyncio.create_task(server.serve())
    ready = asyncio.create_task(server.ready.wait())
    await asyncio.wait([serving, ready], return_when=asyncio.FIRST_COMPLETED)
    if not server.ready.is_set():
        ready.cancel()
        await serving  # raises what went wrong (a bind error)
        return
    collect_less()
    # A large frame's zero-copy send is known to have left ZeroMQ's queue when pyzmq's
    # garbage-collector thread takes the GIL; at the default 5 ms interval a busy loop
    # kept it waiting, and a peer's large changes with it (server.LARGE_FRAME).
    sys.setswitchinterval(0.0005)
    # One line on stdout says the broker is serving, and where.
    print(f"plugboard broker ready: instance {server.core.instance}, listening on "
          + " ".join(server.endpoints), flush=True)
    systemd.notify(f"READY=1\nSTATUS=serving on {' '.join(server.endpoints)}")
    (log.warning if build.stale() else log.info)("broker core: %s", build.describe())
    agent = asyncio.create_task(_local_agent(server, contracts, plugin_paths, state,
                                             agent_name, stopping))
    await asyncio.wait([asyncio.create_task(stopping.wait()), serving],
                       return_when=asyncio.FIRST_COMPLETED)
    stopping.set()
    systemd.notify("STOPPING=1")
    await agent
    server.stop()
    await serving


def _reload_keys(server: BrokerServer) -> None:
    """SIGHUP, as daemons take it: reload what can be, here the authorized keys (what
    ``plugboard keys allow`` and ``revoke`` change). Without it a hangup would end the
    broker on the spot, with no clean stop."""
    try:
        outcome = server.core.reload_keys()
    except PlugboardError as exc:  # a broken keys file: the broker keeps the keys it had
        log.error("SIGHUP: %s; the authorized keys stay as they were", exc)
        return
    server.poke()
    if outcome["curve"]:
        log.warning("SIGHUP: authorized keys re-read; %d session(s) of revoked keys ended",
                    outcome["ended"])
    else:
        log.warning("SIGHUP: no CURVE endpoint, so no authorized keys to re-read")


def collect_less() -> None:
    """Tune Python's cycle collector for a server. A message's lists and dicts live
    for microseconds, but with the default gen-0 threshold (700 allocations) a loaded
    broker runs the collector over them thousands of times a second (bench/core_speed.py
    measures the core both ways: docs/BENCHMARKS.md, section 10). At 10,000 most are
    gone before it runs. What start-up built (modules, the restored store) is frozen out
    of later full collections, which would otherwise walk all of it each time."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


async def _local_agent(server: BrokerServer, contracts: list[Contract],
                       plugin_paths: list[Path], state: StateDir, name: str,
                       stopping: asyncio.Event) -> None:
    """The plugins of ``--plugins``, run by an agent in this process that speaks to the
    broker over its own endpoint, as any agent does: the admin token on ipc, the local
    admin key on tcp (its plugins then get per-launch CURVE keys)."""
    if not plugin_paths:
        LaunchLog(state.path).end_leftovers()  # of a broker before this one, killed
        return
    local = next((e for e in server.endpoints if e.startswith("ipc://")), server.endpoints[0])
    curve = None
    if local.startswith("tcp://") and server.core.keys is not None:
        directory = curve_dir(state.path)
        public, secret = ensure_key_pair(directory, "admin")
        curve = CurveKeys(ensure_key_pair(directory, "broker")[0], public, secret)
    link = BrokerLink(local, name=name, token=state.admin_token, curve=curve)
    try:
        await Supervisor(link, contracts, state_dir=state.path,
                         paths=plugin_paths).run(stopping)
    except PlugboardError as exc:
        log.error("the local agent could not start its plugins: %s", exc)
