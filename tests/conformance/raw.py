"""A peer that speaks the raw protocol with nothing but pyzmq and msgpack.

The conformance suite uses only this, so it checks what is on the wire, not what the
project's own codec believes.
"""

from __future__ import annotations

from typing import Any

import msgpack
import zmq


def unpack(frame: bytes) -> Any:
    return msgpack.unpackb(frame, strict_map_key=False, timestamp=0,
                           ext_hook=lambda code, data: msgpack.ExtType(code, data))


class RawPeer:
    """One DEALER; ``call`` sends a request and returns the reply, keeping the rest."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.msgid = 0
        self.other: list[Any] = []
        """Notifications and broker requests that arrived while waiting for replies."""

    def send(self, *frames: bytes) -> None:
        self.sock.send_multipart(list(frames))

    def recv(self, timeout: float = 5.0) -> Any:
        if not self.sock.poll(int(timeout * 1000)):
            raise AssertionError(f"nothing received within {timeout} s")
        return unpack(self.sock.recv())

    def request(self, method: str, params: Any = None, **kw: Any) -> int:
        self.msgid += 1
        self.send(msgpack.packb([0, self.msgid, method, params if params is not None else kw],
                                use_bin_type=True))
        return self.msgid

    def reply_to(self, msgid: int, timeout: float = 5.0) -> list[Any]:
        while True:
            message = self.recv(timeout)
            if message[0] == 1 and message[1] == msgid:
                return message  # type: ignore[no-any-return]
            self.other.append(message)

    def call(self, method: str, /, **params: Any) -> Any:
        """The result; AssertionError naming the error code if the reply is an error."""
        reply = self.reply_to(self.request(method, params))
        if reply[2] is not None:
            raise AssertionError(f"{method} failed: {reply[2]}")
        return reply[3]

    def error(self, method: str, /, **params: Any) -> dict[str, Any]:
        reply = self.reply_to(self.request(method, params))
        assert reply[2] is not None, f"{method} succeeded but should fail: {reply[3]}"
        assert isinstance(reply[2]["code"], str) and isinstance(reply[2]["message"], str)
        return {**reply[2], "_method": method}  # which request it answered, for the suite

    def hello(self, role: str = "client", **extra: Any) -> Any:
        return self.call("hello", versions=[1], role=role, **extra)

    def take(self, kind: int, method: str, timeout: float = 5.0) -> Any:
        """The next notification (kind 2) or broker request (kind 0) of ``method``."""
        for index, message in enumerate(self.other):
            if message[0] == kind and message[1 if kind == 2 else 2] == method:
                return self.other.pop(index)
        while True:
            message = self.recv(timeout)
            if message[0] == kind and message[1 if kind == 2 else 2] == method:
                return message
            self.other.append(message)

    def close(self) -> None:
        self.sock.close(linger=0)


def hung_up_after_hello(endpoint: str, timeout: float) -> bool:
    """A client says hello on a tcp endpoint, then nothing: True once the broker closed
    its connection (its session ended for silence), False if it had not within
    ``timeout`` seconds."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    quiet = RawPeer(ctx, endpoint)
    monitor = quiet.sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        assert quiet.hello()["session"]
        return bool(monitor.poll(int(timeout * 1000)))
    finally:
        quiet.sock.disable_monitor()
        monitor.close(linger=0)
        quiet.close()
        ctx.term()
