"""Inside one pass of the broker's socket loop: how long each piece takes.

The broker runs in this process (a :class:`BrokerServer` whose pass is timed piece by
piece); the writer and the subscriber are raw protocol clients in their own processes.
Paced (a message every millisecond) each pass handles one message after an idle moment,
as in the latency figures; at full speed a pass handles hundreds, as in throughput.
The raw relay's loop is timed the same way (paced), so the libzmq calls of the two
can be set side by side.
"""

from __future__ import annotations

import asyncio
import select
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import msgpack
import zmq
from worker import relay_loop

from plugboard.broker.core import BrokerCore, CoreConfig
from plugboard.broker.server import BrokerServer, ServerConfig
from plugboard.sdk import _event_loop as event_loop

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


def _on_the_daemons_loop(main: Any) -> Any:
    """Run the in-process broker on the event loop ``plugboard broker`` would pick."""
    return event_loop.run(main, event_loop.chosen("auto"))


def measure(pair: Callable[[str, str, int], dict[str, Any]], paced: int,
            full_speed: int) -> dict[str, Any]:
    """``pair(endpoint, mode, count)`` runs the raw writer and subscriber against the
    endpoint. Paced: the median µs of each piece over passes of one message, for a set
    that gets a reply and for one that does not. Full speed (writes that need no
    reply): µs per message of each piece over all passes."""

    def paced_pieces(mode: str) -> tuple[dict[str, float], int]:
        lone = [_pieces(p) for p in _on_the_daemons_loop(_run(pair, mode, paced))
                if p["messages"] == 1]
        return {piece: statistics.median(p[piece] for p in lone) for piece in PIECES}, len(lone)

    replied, passes = paced_pieces("latency")
    unanswered, _ = paced_pieces("latency-nowait")
    busy = _on_the_daemons_loop(_run(pair, "nowait", full_speed))
    messages = sum(p["messages"] for p in busy)
    totals = {piece: sum(_pieces(p)[piece] for p in busy) for piece in PIECES}
    return {"paced": replied, "paced_no_reply": unanswered, "paced_passes": passes,
            "full_speed": {piece: totals[piece] / messages for piece in PIECES},
            "full_speed_messages_per_pass": messages / max(len(busy), 1)}


RELAY_PIECES = ("read", "relay", "send")
"""read: ``EVENTS`` and the receive once the descriptor fired; relay: its Python
(unpack, store, pack); send: the frames handed to ZeroMQ."""


class _TimedRouter:
    """The relay's ROUTER, each pass timed as the broker's is: the wait for its
    descriptor excluded, then ``EVENTS`` and the receive, the relay's own Python up to
    its first send, and the sends."""

    def __init__(self, sock: zmq.Socket[bytes]) -> None:
        self._sock = sock
        self._fd = int(sock.getsockopt(zmq.FD))
        self._pass: list[int] = []
        self.passes: list[dict[str, float]] = []

    def recv_multipart(self) -> list[bytes]:
        if len(self._pass) == 4:  # the previous pass sent something: keep it
            start, read, first_send, sent = self._pass
            self.passes.append({"read": (read - start) / 1000,
                                "relay": (first_send - read) / 1000,
                                "send": (sent - first_send) / 1000})
        start = time.perf_counter_ns()
        while not int(self._sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            select.select([self._fd], [], [])  # the wait, as the broker's in epoll
            start = time.perf_counter_ns()
        frames = self._sock.recv_multipart()
        self._pass = [start, time.perf_counter_ns()]
        return frames

    def send_multipart(self, frames: list[bytes]) -> None:
        if len(self._pass) == 2:
            self._pass.append(time.perf_counter_ns())
        self._sock.send_multipart(frames)
        self._pass[3:] = [time.perf_counter_ns()]


def measure_relay(pair: Callable[[str, str, int], dict[str, Any]],
                  paced: int) -> dict[str, float]:
    """The raw relay's loop in this process, ``pair(endpoint, mode, count)`` running its
    writer and subscriber: the median µs of each piece of a pass, paced."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.bind("tcp://127.0.0.1:*")
    endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
    timed = _TimedRouter(router)

    def clients() -> None:
        try:
            pair(endpoint, "latency", paced)
        finally:
            stop = ctx.socket(zmq.DEALER)
            stop.connect(endpoint)
            stop.send(msgpack.packb("stop"))
            stop.close(linger=5000)

    thread = threading.Thread(target=clients)
    thread.start()
    try:
        relay_loop(timed)
    finally:
        thread.join()
        router.close(linger=0)
    return {piece: statistics.median(p[piece] for p in timed.passes)
            for piece in RELAY_PIECES}
