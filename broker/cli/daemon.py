"""``plugboard broker``: the daemon in the foreground; SIGINT/SIGTERM stop it cleanly."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from ..core import CoreConfig
from ..server import BrokerServer, ServerConfig
from ..statedir import StateDir, default_endpoint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", action="append", metavar="EP",
                        help="where to bind, repeatable (default: ipc://STATE_DIR/broker.sock); "
                             "tcp://127.0.0.1:* picks a free port")
    parser.add_argument("--heartbeat-ms", type=int, default=2000,
                        help="how often peers must send something (default 2000)")
    parser.add_argument("--session-timeout-ms", type=int, default=6000,
                        help="silence after which a session ends (default 6000)")
    parser.add_argument("--max-frame", type=int, default=CoreConfig().max_frame,
                        help="largest accepted frame in bytes (default 4 MiB)")


def run(args: argparse.Namespace) -> int:
    state = StateDir(args.state_dir)
    try:
        config = ServerConfig(
            endpoints=tuple(args.endpoint or [default_endpoint(state.path)]),
            core=CoreConfig(admin_token=state.admin_token, heartbeat_ms=args.heartbeat_ms,
                            session_timeout_ms=args.session_timeout_ms,
                            max_frame=args.max_frame),
        )
        server = BrokerServer(config)
        asyncio.run(_serve(server))
    finally:
        state.close()
    return 0


async def _serve(server: BrokerServer) -> None:
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, server.stop)
    task = asyncio.create_task(server.serve())
    ready = asyncio.create_task(server.ready.wait())
    await asyncio.wait([task, ready], return_when=asyncio.FIRST_COMPLETED)
    if server.ready.is_set():
        # One line on stdout says the broker is serving, and where.
        print(f"plugboard broker ready: instance {server.core.instance}, listening on "
              + " ".join(server.endpoints), flush=True)
        sys.stdout.flush()
    else:
        ready.cancel()
    await task
