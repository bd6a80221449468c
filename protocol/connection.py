"""The client half of the protocol with no socket: frames in, events out.

:class:`ClientConnection` is to a Plugboard peer what h11's ``Connection`` is to HTTP:
it numbers requests, matches replies to them, keeps the session's state from
``hello``, follows each subscription's batch sequence and names, and remembers what to
re-declare after a reconnect. It never touches a socket or a clock, so the asyncio
``Client``, the blocking ``SyncClient`` and the tests drive the very same object, each
with its own way of waiting.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ._version import SUPPORTED_VERSIONS
from .changes import HANDLE, NAME, ChangesBatch
from .codec import Notification, Request, Response, decode, encode
from .errors import ProtocolError, RemoteError
from .limits import MAX_FRAME_BYTES, MAX_MSGID

__all__ = [
    "BrokerRequest", "Changes", "ClientConnection", "Event", "Failure", "Malformed",
    "Notified", "Reply", "Write",
]


_PENDING: Final = 0
_APPLIED: Final = 1
_UNCONFIRMED: Final = 2
_REFUSED: Final = 3
"""A write's state: sent and not answered; applied (the broker's reply said so); taken
as meant with no confirmation (sent as a notification, or its reply never came); or
refused."""


class Write:
    """One write of a declared property, as :meth:`ClientConnection.wrote` keeps it."""

    __slots__ = ("state", "value")

    def __init__(self, value: Any, state: int) -> None:
        self.value = value
        self.state = state


@dataclass(slots=True)
class Reply:
    """The result of request ``msgid``."""

    msgid: int
    method: str
    result: Any

    def __init__(self, msgid: int, method: str, result: Any) -> None:
        # Written out, like the codec's message classes: compiled, once per reply.
        self.msgid, self.method, self.result = msgid, method, result


@dataclass(frozen=True, slots=True)
class Failure:
    """The broker answered request ``msgid`` with an error."""

    msgid: int
    method: str
    error: RemoteError

    @property
    def session_lost(self) -> bool:
        """The broker no longer knows this session (a new ``hello`` is needed)."""
        return self.error.code == "hello_required" and self.method != "hello"


@dataclass(slots=True)
class Changes:
    """A ``changes`` batch of a subscription this connection made."""

    batch: ChangesBatch
    names: list[str]
    """The property name of each item, in order (items carry a name only once)."""
    lost: int
    """Batches missing before this one (a jump in ``seq``)."""

    def __init__(self, batch: ChangesBatch, names: list[str], lost: int) -> None:
        # Written out, like the codec's message classes: compiled, once per batch.
        self.batch, self.names, self.lost = batch, names, lost


@dataclass(frozen=True, slots=True)
class Notified:
    """Any other notification: ``message``, ``error``, ``shutdown``, ``plugin.ready``..."""

    method: str
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BrokerRequest:
    """The broker asks this peer something (``init``, ``end``, ``call``); answer it with
    :meth:`ClientConnection.answer`."""

    request: Request


@dataclass(frozen=True, slots=True)
class Malformed:
    """A frame that could not be read; the connection carries on."""

    error: ProtocolError


Event = Reply | Failure | Changes | Notified | BrokerRequest | Malformed


@dataclass(slots=True)
class _Route:
    seq: int = 0
    names: dict[int, str] = field(default_factory=dict)


class ClientConnection:
    """One peer's protocol state. Build frames with :meth:`request`,
    :meth:`notification` and :meth:`answer`; feed every received frame to
    :meth:`receive`; call :meth:`reset` when the socket is replaced."""

    def __init__(self, role: str = "client", name: str | None = None,
                 token: str | None = None, software: str = "plugboard-sdk-python") -> None:
        self.role = role
        self.name = name
        self.token = token
        self.software = software
        self.instance: str | None = None
        """The broker's instance id from the last hello: a new one means it restarted."""
        self.session: str | None = None
        """The session id while the broker knows this peer."""
        self.heartbeat = 2.0
        """Seconds between the pings an idle peer sends (from hello)."""
        self.session_timeout = 6.0
        """Seconds of silence after which the broker ends the session (from hello)."""
        self.max_frame = MAX_FRAME_BYTES
        """The largest frame the broker accepts (from hello); larger ones fail here."""
        self.declared: dict[str, dict[str, Any]] = {}
        """Declarations to repeat after a reconnect, with the last value written."""
        self._writes: dict[str, list[Write]] = {}
        """Per declared property, the writes sent and not yet answered, oldest first
        (and any answered behind them, until those are answered too)."""
        self._confirmed: dict[str, dict[str, Any]] = {}
        """Per declared property, its declaration with the newest value the broker
        confirmed (by a reply), where that is not the value :meth:`restore` carries."""
        self._msgid = 0
        self._pending: dict[int, str] = {}
        self._routes: dict[int, _Route] = {}

    # -- frames out -----------------------------------------------------------------------

    def hello(self, extra: Mapping[str, Any] | None = None) -> tuple[int, bytes]:
        """The ``hello`` request: versions, role, name and token, plus ``extra``."""
        params: dict[str, Any] = {"versions": list(SUPPORTED_VERSIONS), "role": self.role,
                                  "client": self.software}
        if self.name is not None:
            params["name"] = self.name
        if self.token is not None:
            params["token"] = self.token
        params.update(extra or {})
        return self.request("hello", params)

    def request(self, method: str, params: Mapping[str, Any] | None = None
                ) -> tuple[int, bytes]:
        """A numbered request frame; ProtocolError ``too_large`` instead of a frame the
        broker would refuse (it would drop the connection)."""
        self._msgid = (self._msgid + 1) % (MAX_MSGID + 1)
        frame = encode(Request(self._msgid, method, dict(params or {})))
        self._check_size(method, frame)
        self._pending[self._msgid] = method
        return self._msgid, frame

    def notification(self, method: str, params: Mapping[str, Any]) -> bytes:
        """A notification frame (``set`` that wants no reply, ``bye``...)."""
        frame = encode(Notification(method, dict(params)))
        self._check_size(method, frame)
        return frame

    def answer(self, request: Request, result: Any = None,
               error: dict[str, Any] | None = None) -> bytes:
        """The reply to a request the broker sent."""
        if request.method == "end" and error is None:
            self.session = None  # the broker ends the session on this reply
        return encode(Response(request.msgid, error, result))

    def forget(self, msgid: int) -> None:
        """Stop waiting for ``msgid`` (it timed out); a late reply is then ignored."""
        self._pending.pop(msgid, None)

    def _check_size(self, method: str, frame: bytes) -> None:
        if len(frame) > self.max_frame:
            raise ProtocolError("too_large", f"{method} of {len(frame)} bytes exceeds the "
                                f"broker's max_frame of {self.max_frame}")

    # -- frames in ------------------------------------------------------------------------

    def receive(self, frame: bytes) -> Event | None:
        """What one frame from the broker means; None for what needs no action (a
        reply nobody waits for, a batch of a subscription since dropped)."""
        try:
            message = decode(frame)
        except ProtocolError as exc:
            return Malformed(exc)
        if isinstance(message, Response):
            method = self._pending.pop(message.msgid, None)
            if method is None:
                return None
            if message.error is not None:
                failure = Failure(message.msgid, method, RemoteError.from_wire(message.error))
                if failure.session_lost:
                    self.session = None
                return failure
            self._on_result(method, message.result)
            return Reply(message.msgid, method, message.result)
        if isinstance(message, Request):
            return BrokerRequest(message)
        if message.method == "changes":
            return self._on_changes(message.params)
        if message.method == "shutdown":
            self.session = None
        return Notified(message.method, message.params)

    def _on_result(self, method: str, result: Any) -> None:
        if method == "hello":
            self.instance = result["instance"]
            self.session = result["session"]
            self.heartbeat = result.get("heartbeat_ms", 2000) / 1000
            self.session_timeout = result.get("timeout_ms", 6000) / 1000
            self.max_frame = int(result.get("max_frame", MAX_FRAME_BYTES))
        elif method == "subscribe":
            self._routes[result["sub"]] = _Route()
        elif method == "bye":
            self.session = None

    def _on_changes(self, params: dict[str, Any]) -> Event | None:
        try:
            batch = ChangesBatch.from_params(params)
        except ProtocolError as exc:
            return Malformed(exc)
        route = self._routes.get(batch.sub)
        if route is None:
            return None
        lost = batch.seq - route.seq - 1
        route.seq = batch.seq
        known = route.names
        names = []
        for item in batch.items:
            if len(item) > NAME:
                known[item[HANDLE]] = item[NAME]
            names.append(known.get(item[HANDLE], ""))
        for handle, _name in batch.removed:
            known.pop(handle, None)
        return Changes(batch, names, lost)

    # -- session state --------------------------------------------------------------------

    def unsubscribed(self, sub: int) -> None:
        """Drop a subscription's route: its late batches are ignored."""
        self._routes.pop(sub, None)

    def reset(self) -> list[int]:
        """The socket is gone: the requests that will never be answered, and no session
        or subscription any more (declarations are kept for :meth:`restore`)."""
        lost, self._pending = list(self._pending), {}
        self._routes.clear()
        self.session = None
        return lost

    def declaring(self, name: str, params: dict[str, Any], result: Any) -> None:
        """Remember a declaration the broker accepted (with the value it holds)."""
        if result.get("value") is not None:
            params = {**params, "value": result["value"]}
        self.declared[name] = params
        self._confirmed.pop(name, None)

    def wrote(self, pairs: Iterable[tuple[str | int, Any]], *, answered: bool = False
              ) -> list[tuple[str, Write]]:
        """Writes are being sent (``answered``: as notifications, which get no reply).
        A re-declaration carries the value of the newest write the broker did not
        refuse: one still unanswered when the connection is lost counts (the broker may
        have applied it, and it is what this peer means its property to hold). Pass
        what this returns to :meth:`acknowledged` or :meth:`refused` with the reply.

        One write is kept per property per call: the pairs go in one message, applied
        or refused together, so a property's last value among them is the one that
        counts (a ``set_many`` of many values to one property keeps one)."""
        latest: dict[str, Any] = {}
        declared = self.declared
        for target, value in pairs:
            if isinstance(target, str) and target in declared:
                latest[target] = value
        state = _UNCONFIRMED if answered else _PENDING
        sent: list[tuple[str, Write]] = []
        for target, value in latest.items():
            write = Write(value, state)
            self._writes.setdefault(target, []).append(write)
            sent.append((target, write))
            self._fold(target)
        return sent

    def acknowledged(self, sent: list[tuple[str, Write]], *, applied: bool = True) -> None:
        """The broker applied these writes (``applied``: its reply said so; False: no
        reply came, and nobody will learn whether it did)."""
        for target, write in sent:
            write.state = _APPLIED if applied else _UNCONFIRMED
            self._fold(target)

    def refused(self, sent: list[tuple[str, Write]]) -> None:
        """The broker refused these writes: no re-declaration carries them."""
        for target, write in sent:
            write.state = _REFUSED
            self._fold(target)

    def _fold(self, target: str) -> None:
        """Answered writes at the head of ``target``'s queue go into its declaration."""
        writes = self._writes.get(target)
        if writes is None:
            return
        params = self.declared.get(target)
        settled = 0
        for write in writes:
            if write.state == _PENDING:
                break
            settled += 1
            if params is None or write.state == _REFUSED:
                continue
            if write.state == _UNCONFIRMED and target not in self._confirmed:
                self._confirmed[target] = dict(params)  # the value before it
            params["value"] = write.value
            if write.state == _APPLIED:
                self._confirmed.pop(target, None)
        if settled == len(writes):
            del self._writes[target]
        elif settled:
            del writes[:settled]

    def restore(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """The requests that re-create this peer's declarations after a new hello, each
        with the value of its newest write not refused (unanswered ones included). If
        the broker refuses one, :meth:`confirmed` gives it with the last value the
        broker confirmed instead."""
        for name, writes in list(self._writes.items()):
            for write in writes:
                if write.state == _PENDING:  # its reply will never come now
                    write.state = _UNCONFIRMED
            self._fold(name)
        for params in list(self.declared.values()):
            yield "declare", params

    def confirmed(self, name: str) -> dict[str, Any] | None:
        """The broker refused re-declaring ``name`` with the value of a write it never
        confirmed (sent as a notification, or unanswered; an invalid one, then): the
        declaration with the newest value it did confirm, kept from now on, or None if
        the refused one held no such value."""
        params = self._confirmed.pop(name, None)
        if params is not None:
            self.declared[name] = params
        return params
