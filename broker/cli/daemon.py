"""``plugboard broker``: the daemon in the foreground; SIGINT/SIGTERM stop it cleanly.

With ``--plugins``, every contract is checked before anything starts (all problems
reported at once), then the plugins start in dependency order under supervision; on
stop they are ended dependents first, before the broker closes its socket.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from plugin_runtime.contract import Contract, check_contracts
from plugin_runtime.supervisor import Supervisor

from ..core import CoreConfig
from ..server import BrokerServer, ServerConfig
from ..statedir import StateDir, default_endpoint
from ..store import STORE_NAME, Durability, Store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", action="append", metavar="EP",
                        help="where to bind, repeatable (default: ipc://STATE_DIR/broker.sock); "
                             "tcp://127.0.0.1:* picks a free port")
    parser.add_argument("--plugins", action="append", metavar="PATH", type=Path, default=[],
                        help="run the plugins in this folder (a plugin folder or a folder of "
                             "them), repeatable; contracts are checked first")
    parser.add_argument("--heartbeat-ms", type=int, default=2000,
                        help="how often peers must send something (default 2000)")
    parser.add_argument("--session-timeout-ms", type=int, default=6000,
                        help="silence after which a session ends (default 6000)")
    parser.add_argument("--max-frame", type=int, default=CoreConfig().max_frame,
                        help="largest accepted frame in bytes (default 4 MiB)")
    parser.add_argument("--durability", choices=[d.value for d in Durability],
                        default="always",
                        help="persistent writes: always = committed before the reply "
                             "(default); batch = committed within --batch-ms, a crash loses "
                             "at most that window; off = written at a clean stop only")
    parser.add_argument("--batch-ms", type=int, default=100,
                        help="commit window of --durability batch (default 100)")


def run(args: argparse.Namespace) -> int:
    contracts, problems = check_contracts(args.plugins) if args.plugins else ([], [])
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"plugboard broker: {len(problems)} contract problem(s); nothing was started",
              file=sys.stderr)
        return 1
    state = StateDir(args.state_dir)
    try:
        store = Store(state.path / STORE_NAME, Durability(args.durability))
        config = ServerConfig(
            batch_ms=args.batch_ms,
            endpoints=tuple(args.endpoint or [default_endpoint(state.path)]),
            core=CoreConfig(admin_token=state.admin_token, heartbeat_ms=args.heartbeat_ms,
                            session_timeout_ms=args.session_timeout_ms,
                            max_frame=args.max_frame),
        )
        asyncio.run(_serve(BrokerServer(config, store=store), contracts, state.path))
    finally:
        state.close()
    return 0


async def _serve(server: BrokerServer, contracts: list[Contract], state_dir: Path) -> None:
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)
    serving = asyncio.create_task(server.serve())
    ready = asyncio.create_task(server.ready.wait())
    await asyncio.wait([serving, ready], return_when=asyncio.FIRST_COMPLETED)
    if not server.ready.is_set():
        ready.cancel()
        await serving  # raises what went wrong (a bind error)
        return
    # One line on stdout says the broker is serving, and where.
    print(f"plugboard broker ready: instance {server.core.instance}, listening on "
          + " ".join(server.endpoints), flush=True)
    local = next((e for e in server.endpoints if e.startswith("ipc://")), server.endpoints[0])
    supervisor = Supervisor(server.core, contracts, endpoint=local.replace("*", ""),
                            state_dir=state_dir, poke=server.poke)
    starting = asyncio.create_task(supervisor.start_all())
    await asyncio.wait([asyncio.create_task(stopping.wait()), serving],
                       return_when=asyncio.FIRST_COMPLETED)
    starting.cancel()
    await supervisor.stop_all()
    server.stop()
    await serving
