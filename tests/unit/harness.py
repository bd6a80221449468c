"""Drive a BrokerCore with no socket: a fake clock, frames in, decoded messages out.

Each peer speaks through its own :class:`ClientConnection`, the same protocol core the
SDK's clients drive: requests are numbered and replies matched by it, and changes
batches are read by it (sequence and names)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from plugboard.broker.core import BrokerCore, CoreConfig
from plugboard.protocol import Notification, Request, Response, decode, encode
from plugboard.protocol.connection import Changes, ClientConnection, Failure, Reply


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
        """Each peer's messages, decoded, in the order received."""
        self._frames: dict[bytes, list[bytes]] = defaultdict(list)
        """The same messages as frames, for the peer's connection to read."""
        self.conns: dict[bytes, ClientConnection] = defaultdict(ClientConnection)
        self.names: dict[int, str] = {}
        """Handle → name, as the connections learned them."""

    def pump(self) -> None:
        """What the server does each turn, the store's commit taken as done."""
        self.core.tick()
        frames = self.core.flush()
        settled = self.core.settle_store()
        for peer, frame in frames:
            kept = settled.get(id(frame), frame)
            if kept is not None:
                self.inbox[peer].append(decode(kept))
                self._frames[peer].append(kept)

    def clear(self, peer: bytes) -> None:
        """Forget what ``peer`` received and has not read."""
        self.inbox[peer].clear()
        self._frames[peer].clear()

    def _take(self, peer: bytes, index: int) -> bytes:
        del self.inbox[peer][index]
        return self._frames[peer].pop(index)

    def raw(self, peer: bytes, frame: bytes) -> None:
        self.core.receive(peer, [frame])
        self.pump()

    def call(self, peer: bytes, method: str, **params: Any) -> Any:
        """Send a request; return its result or raise the RemoteError of its error."""
        conn = self.conns[peer]
        msgid, frame = conn.request(method, params)
        self.core.receive(peer, [frame])
        self.pump()
        for index, message in enumerate(self.inbox[peer]):
            if isinstance(message, Response) and message.msgid == msgid:
                event = conn.receive(self._take(peer, index))
                if isinstance(event, Failure):
                    raise event.error
                assert isinstance(event, Reply)
                return event.result
        raise AssertionError(f"no reply to {method}")

    def plugin(self, peer: bytes, name: str) -> None:
        self.call(peer, "hello", versions=[1], role="plugin", name=name)
        init = self.take_requests(peer, "init")[0]
        self.core.receive(peer, [encode(Response(init.msgid, None, {}))])
        self.pump()

    def client(self, peer: bytes, role: str = "client", **extra: Any) -> Any:
        return self.call(peer, "hello", versions=[1], role=role, **extra)

    def take_requests(self, peer: bytes, method: str) -> list[Request]:
        found = [i for i, m in enumerate(self.inbox[peer])
                 if isinstance(m, Request) and m.method == method]
        requests = [self.inbox[peer][i] for i in found]
        for index in reversed(found):
            self._take(peer, index)
        return requests

    def notes(self, peer: bytes, method: str = "changes") -> list[dict[str, Any]]:
        """Take the notifications of ``method`` received by ``peer``."""
        found = [i for i, m in enumerate(self.inbox[peer])
                 if isinstance(m, Notification) and m.method == method]
        params = [self.inbox[peer][i].params for i in found]
        for index in found:  # in order: the connection follows each batch's seq
            event = self.conns[peer].receive(self._frames[peer][index])
            if isinstance(event, Changes):
                self.names.update(zip((i[0] for i in event.batch.items), event.names,
                                      strict=True))
        for index in reversed(found):
            self._take(peer, index)
        return params

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
