"""Drive a BrokerCore with no socket: a fake clock, frames in, decoded messages out."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from plugboard.broker.core import BrokerCore, CoreConfig
from plugboard.protocol import Notification, Request, Response, decode, encode
from plugboard.protocol.errors import RemoteError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.wall_ns = 1_700_000_000 * 10**9

    def __call__(self) -> float:
        return self.now

    def wall(self) -> int:
        return self.wall_ns

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall_ns += int(seconds * 1e9)


class Harness:
    def __init__(self, **config: Any) -> None:
        self.clock = FakeClock()
        config.setdefault("allow_unmanaged_plugins", True)
        self.core = BrokerCore(CoreConfig(admin_token="secret", **config), clock=self.clock,
                               wallclock=self.clock.wall)
        self.inbox: dict[bytes, list[Any]] = defaultdict(list)
        self._msgid = 0
        self.names: dict[int, str] = {}
        """Handle → name, learned from the first item that carried the name."""

    def pump(self) -> None:
        self.core.tick()
        for peer, frame in self.core.flush():
            self.inbox[peer].append(decode(frame))

    def raw(self, peer: bytes, frame: bytes) -> None:
        self.core.receive(peer, [frame])
        self.pump()

    def call(self, peer: bytes, method: str, **params: Any) -> Any:
        """Send a request; return its result or raise the RemoteError of its error."""
        self._msgid += 1
        msgid = self._msgid
        self.core.receive(peer, [encode(Request(msgid, method, params))])
        self.pump()
        for message in self.inbox[peer]:
            if isinstance(message, Response) and message.msgid == msgid:
                self.inbox[peer].remove(message)
                if message.error is not None:
                    raise RemoteError.from_wire(message.error)
                return message.result
        raise AssertionError(f"no reply to {method}")

    def plugin(self, peer: bytes, name: str) -> None:
        self.call(peer, "hello", versions=[1], role="plugin", name=name)
        init = self.take_requests(peer, "init")[0]
        self.core.receive(peer, [encode(Response(init.msgid, None, {}))])
        self.pump()

    def client(self, peer: bytes, role: str = "client", **extra: Any) -> Any:
        return self.call(peer, "hello", versions=[1], role=role, **extra)

    def take_requests(self, peer: bytes, method: str) -> list[Request]:
        found = [m for m in self.inbox[peer] if isinstance(m, Request) and m.method == method]
        for m in found:
            self.inbox[peer].remove(m)
        return found

    def notes(self, peer: bytes, method: str = "changes") -> list[dict[str, Any]]:
        """Take the notifications of ``method`` received by ``peer``."""
        found = [m for m in self.inbox[peer]
                 if isinstance(m, Notification) and m.method == method]
        for m in found:
            self.inbox[peer].remove(m)
            for item in m.params.get("items", ()) if method == "changes" else ():
                if len(item) > 4:
                    self.names[item[0]] = item[4]
        return [m.params for m in found]

    def changes(self, peer: bytes) -> list[tuple[str, Any]]:
        """(name, value) of every change, and (name, REMOVED) of removals, in order."""
        out: list[tuple[str, Any]] = []
        for note in self.notes(peer):
            for item in note["items"]:
                out.append((self.names[item[0]], item[1]))
            for _handle, name in note.get("removed", []):
                out.append((name, REMOVED))
        return out


REMOVED = object()
