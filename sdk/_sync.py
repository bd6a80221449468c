"""The blocking client: the same protocol core on a plain zmq socket, no thread, no loop.

Everything happens inside the caller's own calls: a request sends its frame and reads
frames until its reply comes, routing whatever else arrives (changes into their
subscriptions, the broker's ``init``/``end`` answered). While a call waits it pings
the broker once a heartbeat, so a session stays alive as long as the program is
inside ``next()`` or any other call. A program that leaves the client untouched for
longer than the broker's session timeout (6 s by default) loses its session: the next
call notices (``hello_required``), says hello again, re-declares, re-subscribes, puts
a :class:`Reconnected` event into every subscription, and carries on. A request the
broker refused with ``hello_required`` was not applied, so it is sent again.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import zmq

from plugboard.protocol.connection import (
    BrokerRequest,
    Changes,
    ClientConnection,
    Event,
    Failure,
    Malformed,
    Notified,
    Reply,
)
from plugboard.protocol.errors import ConnectionFailed, ProtocolError, RemoteError, RequestTimeout

from . import _operations as ops
from ._events import BatchEvent, PropertyInfo, Reconnected, events_of
from ._events import Event as SubscriptionEvent
from ._keys import CurveKeys, curve_keys
from ._queue import CLOSED, MAX_PENDING, EventQueue
from ._socket import (
    HANDSHAKE_FAILED,
    NOBLOCK,
    UNSENT_LIMITS,
    Unsent,
    endpoint_from_env,
    handshake_error,
    handshake_failures,
    open_socket,
    send_frame,
)
from ._state import SessionState

log = logging.getLogger(__name__)

T = TypeVar("T")
_ANSWERED_HERE = ("init", "end")
"""Requests from the broker a SyncClient answers by itself (a plugin's life cycle)."""


class SyncSubscription:
    """Iterate with ``for event in sub``, take one with ``sub.next(timeout)``, or a
    notification's changes at once with ``sub.next_batch(timeout)``."""

    def __init__(self, owner: SyncClient, pattern: str, options: dict[str, Any],
                 max_pending: int = MAX_PENDING) -> None:
        self._owner = owner
        self.pattern = pattern
        self.options = options
        self.sid: int | None = None
        self.closed = False
        self._queue = EventQueue(max_pending)

    def _wait(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._queue:
            if not self._owner._pump_until(deadline, lambda: bool(self._queue)):
                raise RequestTimeout(f"nothing on {self.pattern!r} within {timeout} s")
        if self._queue.ended:
            raise StopIteration

    def next(self, timeout: float | None = None) -> SubscriptionEvent:
        """The next event, waiting at most ``timeout`` seconds (RequestTimeout after);
        StopIteration once the subscription is closed and read to its end."""
        self._wait(timeout)
        event = self._queue.take_one()
        self._taken()
        return event

    def next_batch(self, timeout: float | None = None) -> BatchEvent:
        """The next notification's changes as one Batch, or the next other event."""
        self._wait(timeout)
        batch = self._queue.take_batch()
        self._taken()
        return batch

    def _taken(self) -> None:
        """After a take: made again if the reader just caught up after falling behind
        (see Client.subscribe's ``max_pending``)."""
        if self._queue.remake:
            self._queue.remake = False
            self._owner._remake(self)

    def __iter__(self) -> Iterator[SubscriptionEvent]:
        while True:
            try:
                yield self.next()
            except StopIteration:
                return

    def close(self) -> None:
        """Unsubscribe; iteration ends after what was already received."""
        if not self.closed:
            self._owner._unsubscribe(self)

    def _finish(self) -> None:
        self.closed = True
        self._queue.put(CLOSED)


class SyncClient(SessionState):
    """The Client's API as blocking calls; ``with SyncClient() as client: ...``."""

    def __init__(
        self, endpoint: str | None = None, *, role: str = "client", name: str | None = None,
        token: str | None = None, timeout: float = 5.0, curve: CurveKeys | None = None,
    ) -> None:
        self.endpoint = endpoint or endpoint_from_env()
        self.curve = curve if curve is not None or not self.endpoint.startswith("tcp://") \
            else curve_keys()
        self.timeout = timeout
        """Default timeout of every request, in seconds."""
        self.write_errors = 0
        """Writes sent with set_nowait/set_many_nowait that the broker refused."""
        self._conn = ClientConnection(role, name, token)
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._sock: zmq.Socket[bytes] | None = None
        self._unsent = Unsent()
        """Large frames of this socket's that ZeroMQ has not written yet (SEND_BYTES)."""
        self._monitor: zmq.Socket[bytes] | None = None
        self._poller = zmq.Poller()
        self._last_sent = 0.0
        self._subs: dict[int, SyncSubscription] = {}
        self._all_subs: list[SyncSubscription] = []
        self._error_callbacks: list[Callable[[RemoteError], Any]] = []
        self._waiting: tuple[int, list[Reply | Failure]] = (-1, [])
        """The request a call waits for, and where its answer goes."""
        self._ping: tuple[int, float] | None = None
        """The ping not answered yet, and when it was sent."""
        self._restored: str | None = None
        """The broker instance this client last set everything up with."""
        try:
            self._open_and_hello()
            self._restored = self._conn.instance
        except BaseException:
            self._close_socket()
            self._ctx.term()
            raise

    # -- life cycle -----------------------------------------------------------------------

    def _open_and_hello(self) -> None:
        self._close_socket()
        self._sock = open_socket(self._ctx, self.endpoint, self.curve, self.timeout)
        self._unsent = Unsent()
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        if self.curve is not None:
            self._monitor = self._sock.get_monitor_socket(HANDSHAKE_FAILED)
            self._poller.register(self._monitor, zmq.POLLIN)
        msgid, frame = self._conn.hello()
        self._send(frame)
        try:
            self._await_reply(msgid, "hello", self.timeout)
        except RequestTimeout:
            raise ConnectionFailed(f"no broker answered at {self.endpoint} within "
                                   f"{self.timeout:g} s") from None

    def _close_socket(self) -> None:
        if self._monitor is not None and self._sock is not None:
            self._sock.disable_monitor()
            self._monitor.close(linger=0)
        self._monitor = None
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None
        self._conn.reset()
        self._ping = None

    def _renew_session(self) -> None:
        """A new hello (on a new socket), then everything this client had set up."""
        log.info("session lost; saying hello again to %s", self.endpoint)
        self._open_and_hello()
        for method, params in self._conn.restore():
            self._run(ops.redeclare(self._conn, method, params))
        self._subs = {}
        event = Reconnected(self._conn.instance or "", self._conn.instance != self._restored)
        self._restored = self._conn.instance
        for sub in self._all_subs:
            sub._queue.put(event)
            self._do_subscribe(sub)

    def close(self) -> None:
        """Say ``bye`` (best effort), close the socket, end every subscription."""
        if self._ctx.closed:
            return
        if self._sock is not None and self._conn.session is not None:
            try:
                msgid, frame = self._conn.request("bye")
                self._send(frame)
                self._await_reply(msgid, "bye", min(self.timeout, 1.0))
            except Exception:
                pass
        self._close_socket()
        self._ctx.term()
        for sub in self._all_subs:
            sub._finish()
        self._all_subs, self._subs = [], {}  # each refers back to this client: a cycle

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- frames ---------------------------------------------------------------------------

    def _send(self, frame: bytes) -> None:
        if self._sock is None:
            raise ConnectionFailed("the client was closed")
        try:
            send_frame(self._sock, frame, self._unsent)
        except zmq.Again:
            raise ConnectionFailed(f"the broker at {self.endpoint} takes no more frames "
                                   f"({UNSENT_LIMITS} wait unsent)") from None
        self._last_sent = time.monotonic()

    def _pump_until(self, deadline: float | None, done: Callable[[], bool]) -> bool:
        """Read and route frames until ``done()`` or the deadline (False then), pinging
        once a heartbeat so the session stays alive, renewing it if it was lost."""
        while not done():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return False
            if self._conn.session is None:
                try:
                    self._renew_session()
                except ConnectionFailed as exc:
                    log.info("no session yet: %s", exc)
                    time.sleep(min(0.5, max(0.0, (deadline or now + 1) - now)))
                continue
            if self._ping is not None and now - self._ping[1] > self._conn.session_timeout:
                log.warning("the broker did not answer ping; connecting again")
                self._close_socket()
                continue
            if now - self._last_sent >= self._conn.heartbeat:
                msgid, frame = self._conn.request("ping")
                self._send(frame)
                self._ping = self._ping or (msgid, now)
            wait = self._conn.heartbeat if deadline is None else min(deadline - now,
                                                                       self._conn.heartbeat)
            self._read(wait)
        return True

    def _read(self, wait: float) -> None:
        """Wait up to ``wait`` s for frames; route what arrived, stopping right after
        the awaited reply (so a subscription is routed before its snapshot is read)."""
        ready = dict(self._poller.poll(max(0, int(wait * 1000))))
        if self._monitor is not None and ready.get(self._monitor):
            reasons = handshake_failures(self._monitor)
            if reasons:
                self._conn.session = None
                raise handshake_error(self.endpoint, reasons[-1])
        if self._sock is None or not ready.get(self._sock):
            return
        answer = self._waiting[1]
        while not answer:
            try:
                frame = self._sock.recv(NOBLOCK)
            except zmq.Again:
                return
            self._route(self._conn.receive(frame))

    def _await_reply(self, msgid: int, method: str, timeout: float) -> Any:
        """Read and route frames until request ``msgid`` is answered."""
        answer: list[Reply | Failure] = []
        self._waiting = (msgid, answer)
        deadline = time.monotonic() + timeout
        try:
            while not answer:
                now = time.monotonic()
                if now >= deadline:
                    self._conn.forget(msgid)
                    raise RequestTimeout(f"{method}: no reply within {timeout:g} s")
                self._read(deadline - now)
        finally:
            self._waiting = (-1, [])
        if isinstance(answer[0], Failure):
            raise answer[0].error
        return answer[0].result

    def _route(self, event: Event | None) -> None:
        if isinstance(event, (Reply, Failure)):
            msgid, answer = self._waiting
            if event.msgid == msgid:
                answer.append(event)
            elif self._ping is not None and event.msgid == self._ping[0]:
                self._ping = None
        elif isinstance(event, Changes):
            sub = self._subs.get(event.batch.sub)
            if sub is not None:
                sub._queue.put_many(events_of(event))
        elif isinstance(event, BrokerRequest):
            request = event.request
            if request.method in _ANSWERED_HERE:
                self._send(self._conn.answer(request, {}))
            else:
                self._send(self._conn.answer(request, error={
                    "code": "unknown_method",
                    "message": f"a SyncClient answers no {request.method!r}"}))
        elif isinstance(event, Notified):
            self._on_notification(event)
        elif isinstance(event, Malformed):
            log.warning("undecodable frame from the broker: %s", event.error)

    def _on_notification(self, note: Notified) -> None:
        if note.method == "error":
            error = RemoteError.from_wire(note.params)
            if note.params.get("method") in ("set", "set_many"):
                self.write_errors += 1
            for on_error in self._error_callbacks:
                on_error(error)
            if not self._error_callbacks:
                log.warning("broker reported: %s", error)
        elif note.method != "shutdown":  # shutdown: the session is renewed on next use
            log.debug("notification %s not handled by a SyncClient", note.method)

    # -- the API --------------------------------------------------------------------------

    def request(self, method: str, params: dict[str, Any] | None = None, *,
                timeout: float | None = None) -> Any:
        """Send one request and wait for its reply; raises RemoteError subclasses."""
        wait = self.timeout if timeout is None else timeout
        if self._conn.session is None and method != "hello":
            self._renew_session()
        msgid, frame = self._conn.request(method, params)
        self._send(frame)
        try:
            return self._await_reply(msgid, method, wait)
        except RemoteError as exc:
            if exc.code != "hello_required":
                raise
        self._renew_session()  # the broker did not apply it: send it again, once
        msgid, frame = self._conn.request(method, params)
        self._send(frame)
        return self._await_reply(msgid, method, wait)

    def ping(self) -> dict[str, Any]:
        return self.request("ping")  # type: ignore[no-any-return]

    def _run(self, operation: ops.Operation[T]) -> T:
        """Drive an operation: each request it yields is answered in turn."""
        try:
            method, params, timeout = next(operation)
            while True:
                try:
                    result = self.request(method, params, timeout=timeout)
                except RemoteError as refused:  # the operation may take another way
                    method, params, timeout = operation.throw(refused)
                else:
                    method, params, timeout = operation.send(result)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def call(self, plugin: str, method: str, *, timeout: float | None = None,
             **params: Any) -> Any:
        """Call a method ``plugin`` exports and return its result (see Client.call)."""
        wait = self.timeout if timeout is None else timeout
        return self._run(ops.call(plugin, method, wait, params))

    def get(self, target: str | int) -> PropertyInfo:
        return self._run(ops.get(target))

    def list(self, pattern: str = "#") -> builtins.list[PropertyInfo]:
        """Every property matching ``pattern``, by name."""
        return self._run(ops.list_properties(pattern))

    def declare(self, name: str, type: str, value: Any = ..., **meta: Any) -> int:
        """Declare a property below this plugin's name; returns its handle."""
        return self._run(ops.declare(self._conn, name, type, value, meta))

    def delete(self, target: str | int) -> None:
        self._run(ops.delete(self._conn, target))

    def set(self, target: str | int, value: Any) -> int:
        """Write a value; returns the property's new revision."""
        return int(self._write("set", {"target": target, "value": value},
                               ((target, value),))["revision"])

    def set_many(self, items: ops.Pairs) -> builtins.list[int]:
        """Write several values at once, all or nothing; returns the revisions."""
        pairs, params = ops.set_many_params(items)
        return list(self._write("set_many", params, pairs)["revisions"])

    def _write(self, method: str, params: dict[str, Any],
               pairs: Iterable[tuple[str | int, Any]]) -> Any:
        """A write request, its values kept for re-declaring unless it is refused."""
        sent = self._conn.wrote(pairs)
        try:
            result = self.request(method, params)
        except (RemoteError, ProtocolError, ConnectionFailed):
            self._conn.refused(sent)  # refused, or never sent (too large, no broker)
            raise
        except RequestTimeout:  # nobody will learn whether it was applied
            self._conn.acknowledged(sent, applied=False)
            raise
        self._conn.acknowledged(sent)
        return result

    def set_nowait(self, target: str | int, value: Any) -> None:
        """Write without waiting for a reply (see Client.set_nowait): a refusal comes
        back as an error (``on_error``, ``write_errors``) during a later call."""
        if self._conn.session is None:
            self._renew_session()
        self._send(self._conn.notification("set", {"target": target, "value": value}))
        self._conn.wrote(((target, value),), answered=True)

    def set_many_nowait(self, items: ops.Pairs) -> None:
        """``set_many`` as a notification: all or nothing, no reply."""
        if self._conn.session is None:
            self._renew_session()
        pairs, params = ops.set_many_params(items)
        self._send(self._conn.notification("set_many", params))
        self._conn.wrote(pairs, answered=True)

    def on_error(self, callback: Callable[[RemoteError], Any]) -> None:
        """Call ``callback(error)`` for each error the broker reports outside a reply."""
        self._error_callbacks.append(callback)

    def subscribe(self, pattern: str, *, current: bool = True, policy: str = "latest",
                  queue_limit: int | None = None, min_interval: float | None = None,
                  deadband: float | None = None,
                  max_pending: int = MAX_PENDING) -> SyncSubscription:
        """Subscribe; when this returns the subscription is live (no change is missed).
        ``max_pending``: as Client.subscribe's (what the program has not taken, read
        while it waits in any call)."""
        options = ops.subscribe_options(current, policy, queue_limit, min_interval, deadband)
        ops.check_max_pending(max_pending)
        sub = SyncSubscription(self, pattern, options, max_pending)
        self._do_subscribe(sub)
        self._all_subs.append(sub)
        return sub

    def _do_subscribe(self, sub: SyncSubscription) -> None:
        # Routed before the next frame is read, so the snapshot finds its subscription.
        result = self.request("subscribe", {"pattern": sub.pattern, **sub.options})
        sub.sid = result["sub"]
        self._subs[result["sub"]] = sub

    def _remake(self, sub: SyncSubscription) -> None:
        """Subscribe again after ``sub``'s reader fell behind and caught up; if the
        broker cannot be reached now, the session's renewal subscribes it."""
        if sub.closed:
            return
        old, sub.sid = sub.sid, None
        if old is not None and self._subs.pop(old, None) is not None:
            self._conn.unsubscribed(old)
            with contextlib.suppress(RemoteError, ConnectionFailed, RequestTimeout):
                self.request("unsubscribe", {"sub": old})
        try:
            self._do_subscribe(sub)
        except (ConnectionFailed, RequestTimeout) as exc:
            log.warning("could not subscribe %r again: %s", sub.pattern, exc)

    def _unsubscribe(self, sub: SyncSubscription) -> None:
        if sub in self._all_subs:
            self._all_subs.remove(sub)
        if sub.sid is not None and self._subs.pop(sub.sid, None) is not None:
            self._conn.unsubscribed(sub.sid)
            try:
                self.request("unsubscribe", {"sub": sub.sid})
            except ConnectionFailed:
                pass
        sub._finish()

    def send(self, to: str, payload: bytes, topic: str | None = None) -> None:
        """Send a binary payload to the plugin named ``to``."""
        self._run(ops.send(to, payload, topic))

    def publish(self, topic: str, payload: bytes) -> int:
        """Publish on a topic; returns how many listeners it was delivered to."""
        return self._run(ops.publish(topic, payload))
