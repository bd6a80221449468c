"""Inside one pass of the broker's socket loop: how long each piece takes.

The broker runs in this process (a :class:`BrokerServer` whose pass is timed piece by
piece); the writer and the subscriber are raw protocol clients in their own processes.
Paced (a message every millisecond) each pass handles one message after an idle moment,
as in the latency figures; at full speed a pass handles hundreds, as in throughput.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

from plugboard.broker.core import BrokerCore, CoreConfig
from plugboard.broker.server import BrokerServer, ServerConfig

PIECES = ("read", "core_receive", "core_flush", "send", "after")
"""read: EVENTS and the receives; core_receive: decode, session, checks, apply, reply
queued; core_flush: timers, the subscriber's batch built and encoded (and the commit
check, a no-op without a store); send: the frames
handed to ZeroMQ; after: the next timer armed and EVENTS asked again."""


class _TimedCore:
    """The core, with the time spent in receive, tick and flush noted."""

    def __init__(self, core: BrokerCore, marks: dict[str, int]) -> None:
        self._core, self._marks = core, marks

    def __getattr__(self, name: str) -> Any:
        return getattr(self._core, name)

    def receive(self, peer: bytes, frames: list[bytes]) -> None:
        marks = self._marks
        started = time.perf_counter_ns()
        marks.setdefault("first_receive", started)
        self._core.receive(peer, frames)
        marks["core_receive"] = marks.get("core_receive", 0) + time.perf_counter_ns() - started
        marks["messages"] = marks.get("messages", 0) + 1

    def tick(self) -> None:
        self._marks["flush_start"] = time.perf_counter_ns()
        self._core.tick()


class _TimedServer(BrokerServer):
    def __init__(self, config: ServerConfig) -> None:
        super().__init__(config)
        self.marks: dict[str, int] = {}
        self.passes: list[dict[str, int]] = []
        self.core = _TimedCore(self.core, self.marks)  # type: ignore[assignment]

    def _pump(self) -> None:
        marks = self.marks
        marks.clear()
        marks["start"] = time.perf_counter_ns()
        super()._pump()
        marks["end"] = time.perf_counter_ns()
        if marks.get("messages") and "send_end" in marks:
            self.passes.append(dict(marks))

    def _send(self, frames: list[tuple[bytes, bytes]]) -> None:
        self.marks["send_start"] = time.perf_counter_ns()
        super()._send(frames)
        self.marks["send_end"] = time.perf_counter_ns()


def _pieces(marks: dict[str, int]) -> dict[str, float]:
    """µs of each piece of one pass."""
    read = marks["first_receive"] - marks["start"]
    receive = marks["core_receive"]
    # Reads after the first message are interleaved with receives: the rest of the
    # time before the flush is reading.
    read += marks["flush_start"] - marks["first_receive"] - receive
    return {"read": read / 1000, "core_receive": receive / 1000,
            "core_flush": (marks["send_start"] - marks["flush_start"]) / 1000,
            "send": (marks["send_end"] - marks["send_start"]) / 1000,
            "after": (marks["end"] - marks["send_end"]) / 1000}


async def _run(pair: Callable[[str, str, int], dict[str, Any]], mode: str,
               count: int) -> list[dict[str, int]]:
    server = _TimedServer(ServerConfig(endpoints=("tcp://127.0.0.1:*",),
                                       core=CoreConfig(allow_unmanaged_plugins=True)))
    serving = asyncio.create_task(server.serve())
    await server.ready.wait()
    server.passes.clear()
    try:
        await asyncio.get_running_loop().run_in_executor(
            None, pair, server.endpoints[0], mode, count)
    finally:
        server.stop()
        await serving
    return server.passes


def measure(pair: Callable[[str, str, int], dict[str, Any]], paced: int,
            full_speed: int) -> dict[str, Any]:
    """``pair(endpoint, mode, count)`` runs the raw writer and subscriber against the
    endpoint. Paced: the median µs of each piece over passes of one message. Full speed
    (writes that need no reply): µs per message of each piece over all passes."""
    lone = [_pieces(p) for p in asyncio.run(_run(pair, "latency", paced))
            if p["messages"] == 1]
    busy = asyncio.run(_run(pair, "nowait", full_speed))
    messages = sum(p["messages"] for p in busy)
    totals = {piece: sum(_pieces(p)[piece] for p in busy) for piece in PIECES}
    return {"paced": {piece: statistics.median(p[piece] for p in lone) for piece in PIECES},
            "paced_passes": len(lone),
            "full_speed": {piece: totals[piece] / messages for piece in PIECES},
            "full_speed_messages_per_pass": messages / max(len(busy), 1)}
