"""The DEALER socket both clients talk through, and what its failures mean.

Both the asyncio Client and the blocking SyncClient open their socket here, so they
connect, authenticate and explain failures the same way.
"""

from __future__ import annotations

import errno
import os
import socket
from collections import deque

import zmq
from zmq.utils.monitor import parse_monitor_message

from plugboard.protocol.discovery import default_endpoint, default_state_dir
from plugboard.protocol.errors import ConfigError, ConnectionFailed, KeyRefused

from ._keys import CurveKeys

POLLIN = int(zmq.POLLIN)
NOBLOCK = int(zmq.NOBLOCK)
"""Plain ints: pyzmq's flags are enum members, and each operation on them builds one."""

SEND_HWM = 10_000
"""Frames a client queues for the broker before a send fails (zmq.Again)."""

LARGE_FRAME = 32 * 1024
"""A frame this large or larger is handed to ZeroMQ tracked (zero-copy), so that the
bytes it holds unsent can be counted: ZeroMQ's high-water marks count frames, not bytes.
Smaller frames are bounded by the high-water mark times this."""

SEND_BYTES = 64 * 1024 * 1024
"""Bytes of large frames a client lets wait unsent before a send fails (zmq.Again): by
SEND_HWM alone, 10,000 frames of 4 MiB could hold 40 GB while the broker is away."""

UNSENT_LIMITS = f"{SEND_HWM:,} frames, or {SEND_BYTES >> 20} MiB of large ones"
"""What a refused send means, in the words of its error."""


class Unsent:
    """Large frames handed to ZeroMQ and not yet written to their connection, by the
    trackers of their zero-copy sends (one peer's: the broker keeps one per peer)."""

    __slots__ = ("frames", "size")

    def __init__(self) -> None:
        self.frames: deque[tuple[zmq.MessageTracker, int]] = deque()
        self.size = 0

    def waiting(self) -> int:
        """Bytes still in ZeroMQ's queue (those written are forgotten)."""
        frames = self.frames
        while frames and frames[0][0].done:
            self.size -= frames.popleft()[1]
        return self.size

    def admits(self, size: int, allowance: int) -> bool:
        """Whether a large frame of ``size`` bytes may join those waiting: up to
        ``allowance`` bytes in all, and one always when none waits."""
        return not self.waiting() or self.size + size <= allowance

    def track(self, tracker: zmq.MessageTracker, size: int) -> None:
        self.frames.append((tracker, size))
        self.size += size


def send_frame(sock: zmq.Socket[bytes], frame: bytes, unsent: Unsent) -> None:
    """Hand ZeroMQ one frame of a client's: zmq.Again past SEND_HWM frames, or, for a
    frame of LARGE_FRAME bytes or more, past SEND_BYTES of such frames waiting unsent
    (``unsent``: the socket's)."""
    if len(frame) < LARGE_FRAME:
        sock.send(frame, NOBLOCK)
        return
    if not unsent.admits(len(frame), SEND_BYTES):
        raise zmq.Again(errno.EAGAIN)
    unsent.track(sock.send(frame, NOBLOCK, copy=False, track=True), len(frame))


HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
_HANDSHAKE_REASONS: dict[zmq.Event, str] = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the broker refused this key (not authorized, or "
                                     "revoked)",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the peer does not speak CURVE with this server "
                                         "key (wrong server key, or a broker without CURVE)",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the handshake failed",
}


def endpoint_from_env() -> str:
    """``$PLUGBOARD_ENDPOINT``, else the default broker's ipc socket."""
    explicit = os.environ.get("PLUGBOARD_ENDPOINT")
    if explicit:
        return explicit
    return default_endpoint(default_state_dir())


def _ipc_absence(path: str) -> str | None:
    """Why nothing can answer at an ipc path, or None when something listens. A socket
    file left by a broker that crashed refuses the connection at once: say so now
    rather than after a hello timeout."""
    if not os.path.exists(path):
        return "socket file missing"
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        return "a stale socket file: the broker that made it is gone"
    except OSError:
        return None  # let ZeroMQ try and report
    finally:
        probe.close()
    return None


def open_socket(ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, curve: CurveKeys | None,
                timeout: float) -> zmq.Socket[bytes]:
    """A DEALER connected to ``endpoint``; ConnectionFailed at once when an ipc endpoint
    has no broker behind it, ConfigError for an endpoint ZeroMQ cannot use."""
    if endpoint.startswith("ipc://"):
        why = _ipc_absence(endpoint[len("ipc://"):])
        if why is not None:
            raise ConnectionFailed(f"no broker is running at {endpoint} ({why})")
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
    sock.setsockopt(zmq.SNDHWM, SEND_HWM)
    if curve is not None:
        curve.apply(sock)
        sock.setsockopt(zmq.HANDSHAKE_IVL, int(timeout * 1000))
    try:
        sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close(linger=0)  # a socket left open would hold its context's term forever
        raise ConfigError(f"cannot connect to {endpoint!r}: {zmq.strerror(exc.errno or 0)}; "
                          "an endpoint is ipc://PATH or tcp://HOST:PORT") from exc
    return sock


def handshake_failures(monitor: zmq.Socket[bytes]) -> list[str]:
    """Drain a socket monitor; why each failed CURVE handshake it reported failed."""
    reasons: list[str] = []
    while True:
        try:
            event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))
        except zmq.ZMQError:  # Again: drained; anything else: the monitor is gone
            return reasons
        kind = zmq.Event(int(event["event"]))
        why = _HANDSHAKE_REASONS.get(kind, "rejected")
        reasons.append(f"{why} (ZeroMQ event {kind.name}, value {int(event['value'])})")


def handshake_error(endpoint: str, why: str) -> ConnectionFailed:
    """The error to raise for a failed handshake: KeyRefused when the key was refused."""
    refused = why.startswith(_HANDSHAKE_REASONS[zmq.EVENT_HANDSHAKE_FAILED_AUTH])
    kind = KeyRefused if refused else ConnectionFailed
    return kind(f"the CURVE handshake with {endpoint} failed: {why}")
