"""The asyncio client: one DEALER socket, requests with timeouts, pushed notifications.

The protocol itself (numbering, reply matching, batch sequences, what to re-declare)
is the socket-free :class:`~plugboard.protocol.connection.ClientConnection`; this
module only moves its frames and waits. The socket is a plain zmq socket whose
descriptor the event loop watches; frames are received with NOBLOCK in a callback, so
no receive is ever awaited or cancelled (a cancelled receive can lose a message,
pyzmq #1925). Replies are matched through a msgid→request map; one timer, armed at
the earliest deadline, times out all requests in flight.

If the broker goes away (pings unanswered, a ``shutdown`` notice, ``hello_required``)
the client reconnects with a fresh socket, says ``hello`` again, re-declares what it
declared (with the newest values it wrote that were not refused), re-subscribes, and
puts a :class:`Reconnected` event into every subscription. Requests in flight when the
connection is lost fail with ConnectionFailed; they are not retried, because the
broker may have applied them.
"""

from __future__ import annotations

import asyncio
import builtins
import heapq
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import zmq

from plugboard.protocol.connection import (
    BrokerRequest,
    Changes,
    ClientConnection,
    Failure,
    Malformed,
    Notified,
    Reply,
    Write,
)
from plugboard.protocol.errors import (
    ConnectionFailed,
    ProtocolError,
    RemoteError,
    RequestTimeout,
)

from . import _operations as ops
from ._events import BatchEvent, Message, PropertyInfo, Reconnected, events_of
from ._keys import CurveKeys, curve_keys
from ._queue import MAX_PENDING
from ._socket import (
    HANDSHAKE_FAILED,
    NOBLOCK,
    POLLIN,
    UNSENT_LIMITS,
    Unsent,
    endpoint_from_env,
    handshake_error,
    handshake_failures,
    open_socket,
    send_frame,
)
from ._state import SessionState
from ._subscription import Listener, Subscription

log = logging.getLogger(__name__)

T = TypeVar("T")
RequestHandler = Callable[[dict[str, Any]], Awaitable[Any]]
MessageCallback = Callable[[Message], Any]
ReconnectCallback = Callable[[Reconnected], Any]

__all__ = ["Client", "endpoint_from_env"]

SEND_CHECK_S = 0.001
"""How long after a send the socket is read again, in case the send consumed the edge
of a frame that arrived meanwhile (ZeroMQ handles its pending commands inside a send).
Not at once: with a read pass right after each send, a set_nowait's set -> notify took
13-20 µs longer in A/B runs of section 9's pair here (its ZeroMQ call runs while the
frame just sent is still on its way out); docs/BENCHMARKS.md, section 9, "writer SDK
(asyncio Client), set_nowait", has what the SDK writer costs now.
A frame whose edge a send consumed waits this long at most; a read pass that runs
sooner (woken by a reply or a notification) takes it at once and cancels the check."""


_let_zmq_send: Callable[[], None] = getattr(os, "sched_yield", lambda: None)
"""Called after the first send since the socket was last read: the frame leaves through
ZeroMQ's I/O thread, which the kernel tends to wake on this thread's CPU, where it waits
until this thread blocks or yields. In A/B runs of section 9's pairs here
(docs/BENCHMARKS.md) yielding at once took 31-42 µs off a set_nowait's set -> notify
p50 and 3-10 µs off a set's (waiting for its reply, the writer blocks soon anyway), p99
within noise; it is one system call, which returns at once when nothing else waits for
the CPU. Later sends of a burst do not yield: their frames follow the first's. Nor does
a send within EXCHANGING_S of a received frame (see there)."""

EXCHANGING_S = 0.0002
"""A send this soon after a frame arrived is part of a busy exchange (a writer that
awaits a ``ping`` every few thousand writes sends its next burst right after the reply),
and does not yield: there the other CPU-bound processes, not ZeroMQ's I/O thread, take
the CPU, for a scheduler time slice. A/B runs of make bench's ``batched-nowait`` pair
(docs/BENCHMARKS.md): 863k updates/s yielding, 961k not; a set_nowait paced at one a
millisecond still yields (189 and 192 µs p50)."""


@dataclass(slots=True)
class _Pending:
    """A request sent and not answered yet."""

    future: asyncio.Future[Any]
    method: str
    wait: float
    """Its timeout, in seconds."""
    then: Callable[[Any], Any] | None
    """Runs in the reader as the reply arrives, before any later frame is handled;
    what it returns is the request's result."""
    writes: list[tuple[str, Write]] | None = None
    """The writes it carries (ClientConnection.wrote), answered with it."""


def _quietly(done: asyncio.Future[Any]) -> None:
    """A background request's outcome: a lost connection is the reconnect's to mend;
    anything else is logged."""
    if done.cancelled():
        return
    error = done.exception()
    if error is not None and not isinstance(error, (ConnectionFailed, RequestTimeout)):
        log.warning("could not subscribe again: %s", error)


def _revision(result: Any) -> int:
    return int(result["revision"])


def _revisions(result: Any) -> list[int]:
    return list(result["revisions"])


async def _acknowledge(params: dict[str, Any]) -> dict[str, Any]:
    return {}


class Client(SessionState):
    """A connection to the broker as a ``client``, ``plugin`` or ``admin``.

    Use ``async with Client(...) as client`` or ``await Client(...).connect()``.
    """

    def __init__(
        self, endpoint: str | None = None, *, role: str = "client", name: str | None = None,
        token: str | None = None, timeout: float = 5.0, reconnect: bool = True,
        give_up_after: float | None = None, curve: CurveKeys | None = None,
    ) -> None:
        self.endpoint = endpoint or endpoint_from_env()
        self.curve = curve if curve is not None or not self.endpoint.startswith("tcp://") \
            else curve_keys()
        """CURVE keys for tcp: given, else from the environment (``PLUGBOARD_SERVER_KEY``
        and the peer's pair), else None: plain tcp, for a broker run with --insecure."""
        self._conn = ClientConnection(role, name, token)
        self.timeout = timeout
        """Default timeout of every request, in seconds."""
        self.reconnect = reconnect
        self.give_up_after = give_up_after
        """Stop reconnecting after this many seconds without a broker (None: never)."""
        self.closed = asyncio.Event()
        """Set when the client is closed for good (by close() or after giving up)."""
        self.end_requested = asyncio.Event()
        """Set once the broker's ``end`` request was answered."""
        self.callback_errors = 0
        """How many user callbacks raised (each was logged)."""
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._sock: zmq.Socket[bytes] | None = None
        self._unsent = Unsent()
        """Large frames of this socket's that ZeroMQ has not written yet (SEND_BYTES)."""
        self._read_scheduled = False
        self._send_check: asyncio.TimerHandle | None = None
        """The read pass due after a send (SEND_CHECK_S), until a read pass runs."""
        self._heard_at = -math.inf
        """When the last read pass that received a frame ended (time.monotonic)."""
        self._pending: dict[int, _Pending] = {}
        self._deadlines: list[tuple[float, int, _Pending]] = []
        """A heap of (deadline, msgid) of the requests sent: one timer for all of them,
        armed at the earliest, instead of a timer and a callback per request."""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._pinger: asyncio.Task[None] | None = None
        self._reconnecting: asyncio.Task[None] | None = None
        # A bare Client in the plugin role is ready at once; Plugin installs its own.
        self._handlers: dict[str, RequestHandler] = {"init": _acknowledge, "end": _acknowledge}
        self._message_callbacks: list[MessageCallback] = []
        self._error_callbacks: list[Callable[[RemoteError], Any]] = []
        self.write_errors = 0
        """Writes sent with set_nowait/set_many_nowait that the broker refused."""
        self._notification_handlers: dict[str, Callable[[dict[str, Any]], Any]] = {}
        self.extra_hello: Callable[[], Mapping[str, Any]] | None = None
        """More ``hello`` parameters, asked for at every (re)connect: an agent's
        registrations, a token that may have changed."""
        self._reconnect_callbacks: list[ReconnectCallback] = []
        self._subs: dict[int, Subscription] = {}
        self._all_subs: list[Subscription] = []
        self._listeners: dict[int, Listener] = {}
        self._all_listeners: list[Listener] = []
        self._closing = False
        self._monitors: list[tuple[zmq.Socket[bytes], zmq.Socket[bytes], int]] = []

    @property
    def connected(self) -> bool:
        """A session is up (not closed, not between a lost connection and a new hello)."""
        return (self._sock is not None and self._reconnecting is None
                and self.session is not None and not self._closing)

    # -- life cycle -------------------------------------------------------------------

    async def connect(self) -> Client:
        """Open the socket and say hello; ConnectionFailed if no broker answers in time.
        A failed connect releases everything, and connect may be called again (an agent
        started before its broker retries so)."""
        if self._ctx.closed:  # released by a failed connect
            self._ctx = zmq.Context()
            self.closed.clear()
        try:
            await self._open_and_hello()
        except BaseException:
            await self._teardown()
            raise
        self._pinger = asyncio.create_task(self._ping_loop())
        return self

    async def __aenter__(self) -> Client:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Say ``bye`` (best effort), close the socket, end every subscription."""
        if self._closing:
            return
        self._closing = True
        tasks = [task for task in (self._pinger, self._reconnecting)
                 if task is not None and task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await self._say_bye()
        await self._teardown()
        # Wait the cancelled tasks out and let them go: a task kept here refers back to
        # this client through its frames, a cycle only the collector would free.
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pinger = self._reconnecting = None

    async def _say_bye(self) -> None:
        """End the session politely if there is one (best effort, short timeout)."""
        if self._sock is not None and self.session is not None:
            try:
                await self.request("bye", {}, timeout=min(self.timeout, 1.0))
            except Exception:
                pass
            self._conn.session = None

    async def _teardown(self) -> None:
        self._close_socket(ConnectionFailed("the client was closed"))
        for sub in self._all_subs:
            sub._finish()
        for listener in self._all_listeners:
            listener._finish()
        # Each refers back to this client: let them go, so neither waits on the cycle
        # collector (a reader may still hold one and take what it had received).
        self._all_subs, self._subs, self._all_listeners, self._listeners = [], {}, [], {}
        self._ctx.term()
        self.closed.set()

    def _close_socket(self, reason: Exception) -> None:
        for sock, monitor, fd in self._monitors:
            asyncio.get_running_loop().remove_reader(fd)
            sock.disable_monitor()
            monitor.close(linger=0)
        self._monitors = []
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(int(self._sock.getsockopt(zmq.FD)))
            self._sock.close(linger=0)
            self._sock = None
        if self._send_check is not None:
            self._send_check.cancel()
            self._send_check = None
        self._conn.reset()
        pending, self._pending = self._pending, {}
        self._deadlines.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf
        for request in pending.values():
            if not request.future.done():
                request.future.set_exception(reason)

    async def _open_and_hello(self) -> None:
        """New socket, hello."""
        sock = open_socket(self._ctx, self.endpoint, self.curve, self.timeout)
        handshake_failed: list[str] = []
        if self.curve is not None:
            self._watch_handshake(sock, handshake_failed)
        self._sock, self._unsent = sock, Unsent()
        asyncio.get_running_loop().add_reader(int(sock.getsockopt(zmq.FD)), self._on_readable, True)
        self._poke()
        try:
            await self._hello()
        except RequestTimeout:
            if handshake_failed:
                raise handshake_error(self.endpoint, handshake_failed[-1]) from None
            raise ConnectionFailed(f"no broker answered at {self.endpoint} within "
                                   f"{self.timeout:g} s") from None
        except ConnectionFailed:
            if handshake_failed:
                raise handshake_error(self.endpoint, handshake_failed[-1]) from None
            raise

    def _hello(self) -> asyncio.Future[Any]:
        try:
            msgid, frame = self._conn.hello(self.extra_hello() if self.extra_hello else None)
        except ProtocolError as exc:
            return self._failed(exc)
        return self._sent(msgid, frame, "hello", None, None)

    def _watch_handshake(self, sock: zmq.Socket[bytes], failed: list[str]) -> None:
        """Fail hello at once, with the reason, when ZeroMQ reports a failed handshake
        (a refused key, a wrong server key), instead of waiting out its timeout."""
        monitor = sock.get_monitor_socket(HANDSHAKE_FAILED)
        loop = asyncio.get_running_loop()
        fd = int(monitor.getsockopt(zmq.FD))

        def readable() -> None:
            reasons = handshake_failures(monitor)
            if not reasons:
                return
            failed.extend(reasons)
            for request in list(self._pending.values()):
                if not request.future.done():
                    request.future.set_exception(ConnectionFailed(failed[-1]))
            if self.session is not None:  # a live session: the broker revoked us
                self._connection_lost(f"CURVE handshake failed: {failed[-1]}")

        loop.add_reader(fd, readable)
        readable()  # the descriptor is edge-triggered: drain once to arm it
        self._monitors.append((sock, monitor, fd))

    # -- requests -----------------------------------------------------------------------

    async def request(self, method: str, params: Mapping[str, Any] | None = None, *,
                      timeout: float | None = None) -> Any:
        """Send one request and wait for its reply; raises RemoteError subclasses."""
        return await self._start(method, params, timeout=timeout)

    def _not_connected(self) -> ConnectionFailed:
        """Why there is no socket to send on, as the caller can act on it."""
        if self._closing:
            return ConnectionFailed("the client was closed")
        if self._reconnecting is not None and not self._reconnecting.done():
            return ConnectionFailed(f"the connection to the broker at {self.endpoint} was "
                                    "lost; reconnecting")
        return ConnectionFailed("not connected to the broker: await client.connect() "
                                "first, or use async with Client(...)")

    def _start(self, method: str, params: Mapping[str, Any] | None = None, *,
               timeout: float | None = None, then: Callable[[Any], Any] | None = None,
               writes: Iterable[tuple[str | int, Any]] | None = None) -> asyncio.Future[Any]:
        """Send a request now and return the future of its reply (of ``then(reply)``
        if given: it runs in the reader before any later frame is handled, so a
        subscription's route is in place for the snapshot that follows the reply).
        ``writes``: the writes it carries, kept for re-declaring once it is sent.

        No coroutine, task, timer or callback per request: many can be in flight
        cheaply; one timer watches all their deadlines (_expire_due).
        """
        if self._sock is None:
            return self._failed(self._not_connected())
        try:
            msgid, frame = self._conn.request(method, params)
        except ProtocolError as exc:  # too large: the broker would drop the connection
            return self._failed(exc)
        return self._sent(msgid, frame, method, timeout, then, writes)

    def _failed(self, exc: Exception) -> asyncio.Future[Any]:
        """A request that was never sent (nor its writes kept): it fails at once."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_exception(exc)
        return future

    def _sent(self, msgid: int, frame: bytes, method: str, timeout: float | None,
              then: Callable[[Any], Any] | None,
              writes: Iterable[tuple[str | int, Any]] | None = None) -> asyncio.Future[Any]:
        """Send a request frame and return the future of its reply; the writes it
        carries are kept once it is sent (after the send: a write's latency does not
        wait for this bookkeeping)."""
        try:
            self._send(frame)
        except zmq.Again:
            self._conn.forget(msgid)
            return self._failed(ConnectionFailed(f"cannot reach the broker at {self.endpoint}"))
        loop = asyncio.get_running_loop()
        wait = self.timeout if timeout is None else timeout
        request = _Pending(loop.create_future(), method, wait, then,
                           None if writes is None else self._conn.wrote(writes))
        self._pending[msgid] = request
        deadline = loop.time() + wait
        heapq.heappush(self._deadlines, (deadline, msgid, request))
        if deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = deadline
            self._timer = loop.call_at(deadline, self._expire_due)
        return request.future

    def _answered(self, msgid: int) -> _Pending | None:
        """Take request ``msgid`` off the books; None if it timed out meanwhile."""
        request = self._pending.pop(msgid, None)
        self._drop_settled(-math.inf)
        return request

    def _drop_settled(self, until: float) -> None:
        """Pop the heap's head while it is due by ``until`` (failing it with
        RequestTimeout) or no longer waited for (its reply came, its future was
        cancelled or failed). Replies come mostly in order, so the heap stays small."""
        deadlines, pending = self._deadlines, self._pending
        while deadlines:
            deadline, msgid, request = deadlines[0]
            waited = pending.get(msgid) is request
            if waited and deadline > until and not request.future.done():
                return
            heapq.heappop(deadlines)
            if waited:
                del pending[msgid]
                self._conn.forget(msgid)
                if request.writes:  # nobody will learn whether they were applied
                    self._conn.acknowledged(request.writes, applied=False)
                if not request.future.done():
                    request.future.set_exception(RequestTimeout(
                        f"{request.method}: no reply within {request.wait:g} s"))

    def _expire_due(self) -> None:
        """The timer: fail the requests past their deadline, re-arm for the next."""
        loop = asyncio.get_running_loop()
        self._timer, self._timer_at = None, math.inf
        self._drop_settled(loop.time())
        if self._deadlines:
            self._timer_at = self._deadlines[0][0]
            self._timer = loop.call_at(self._timer_at, self._expire_due)

    # The socket is a plain zmq socket whose file descriptor the event loop watches.
    # ZeroMQ's descriptor is edge-triggered and a send can consume the edge, so a send
    # is followed by a read pass SEND_CHECK_S later, unless one runs sooner anyway;
    # _on_readable is the only place that reads EVENTS. Receives never await, so none
    # can be cancelled midway.

    def _send(self, frame: bytes) -> None:
        assert self._sock is not None
        send_frame(self._sock, frame, self._unsent)
        if self._send_check is None:  # the first send since the socket was last read
            if time.monotonic() - self._heard_at > EXCHANGING_S:
                _let_zmq_send()
            self._send_check = asyncio.get_running_loop().call_later(
                SEND_CHECK_S, self._on_readable)

    def _poke(self) -> None:
        if not self._read_scheduled:
            self._read_scheduled = True
            asyncio.get_running_loop().call_soon(self._on_readable)

    def _on_readable(self, woken: bool = False) -> None:
        """A read pass: ``woken`` by the socket's descriptor, after a send, or scheduled
        to go on with a burst. Whatever started it, it reads until ZeroMQ has nothing
        more, so it also does what a send's check was due to do."""
        self._read_scheduled = False
        if self._send_check is not None:
            self._send_check.cancel()
            self._send_check = None
        sock = self._sock
        if sock is None:
            return
        # As the broker reads (broker/server.py): woken by the descriptor, a frame most
        # often waits and is received at once (EVENTS first cost 5 µs a message, paced);
        # then the next frames while EVENTS says one waits, a burst until a receive
        # fails. Either leaves the descriptor armed for the next frame; a send made
        # meanwhile (which can consume its signal) has scheduled another pass (_send
        # pokes).
        for count in range(1000):
            if woken and count == 0:
                try:
                    frame = sock.recv(NOBLOCK)
                except zmq.Again:
                    break
            elif count < 2:
                if not int(sock.getsockopt(zmq.EVENTS)) & POLLIN:
                    break
                frame = sock.recv(NOBLOCK)
            else:
                try:
                    frame = sock.recv(NOBLOCK)
                except zmq.Again:
                    break
            self._dispatch(frame)
            if self._sock is not sock:  # closed by what the frame triggered
                return
        else:
            self._poke()  # more may wait: let other callbacks and tasks run first
        if count:
            self._heard_at = time.monotonic()

    def _dispatch(self, frame: bytes) -> None:
        """Route what one frame means: a reply to its future, changes to their
        subscription, a broker request to its handler."""
        event = self._conn.receive(frame)
        if type(event) is Changes:
            sub = self._subs.get(event.batch.sub)
            if sub is not None:
                sub._put_many(events_of(event))
        elif type(event) is Reply:
            request = self._answered(event.msgid)
            if request is not None and request.writes:
                self._conn.acknowledged(request.writes)
            if request is not None and not request.future.done():
                if request.then is None:
                    request.future.set_result(event.result)
                else:
                    try:
                        request.future.set_result(request.then(event.result))
                    except Exception as exc:  # a reply of the wrong shape
                        request.future.set_exception(exc)
        elif type(event) is Failure:
            request = self._answered(event.msgid)
            if request is not None:
                if request.writes:
                    self._conn.refused(request.writes)
                if not request.future.done():
                    request.future.set_exception(event.error)
            if event.session_lost:
                self._connection_lost("the broker no longer knows this session")
        elif type(event) is Notified:
            self._on_notification(event.method, event.params)
        elif type(event) is BrokerRequest:
            asyncio.create_task(self._answer(self._sock, event.request))
        elif type(event) is Malformed:
            log.warning("undecodable frame from the broker: %s", event.error)

    async def _answer(self, sock: zmq.Socket[bytes] | None, request: Any) -> None:
        """Answer a request the broker sent (init, end, ...)."""
        handler = self._handlers.get(request.method)
        error: dict[str, Any] | None = None
        result: Any = None
        if handler is None:
            error = {"code": "unknown_method", "message": f"no handler for {request.method!r}"}
        else:
            try:
                result = await handler(request.params)
            except (RemoteError, ProtocolError) as exc:  # an answer the handler chose
                error = exc.to_wire()
            except Exception as exc:
                self.callback_errors += 1
                log.exception("handler for %s raised", request.method)
                error = {"code": "internal", "message": f"{type(exc).__name__}: {exc}"}
        if sock is not None and sock is self._sock:  # not to a connection since replaced
            try:
                frame = self._conn.answer(request, result, error)
            except ProtocolError as exc:  # a result no protocol value can carry
                self.callback_errors += 1
                log.error("the answer to %s cannot be sent: %s", request.method, exc.message)
                frame = self._conn.answer(request, None, {
                    "code": "internal", "message": f"the answer to {request.method} cannot "
                    f"be encoded: {exc.message}"})
            try:
                self._send(frame)
            except zmq.Again:
                log.warning("could not answer %s: the broker is not reading", request.method)
        if request.method == "end":
            # The broker ends the session on this reply; nothing more to say to it.
            self._conn.session = None
            self.end_requested.set()

    def _run_callback(self, callback: Callable[[Any], Any], arg: Any) -> None:
        """A user's callback never kills the loop: errors are logged and counted."""
        try:
            outcome = callback(arg)
            if outcome is not None and asyncio.iscoroutine(outcome):  # None: the usual
                task = asyncio.create_task(outcome)
                task.add_done_callback(self._log_task_error)
        except Exception:
            self.callback_errors += 1
            log.exception("callback %r raised", callback)

    def _log_task_error(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.callback_errors += 1
            log.error("callback task raised", exc_info=task.exception())

    def _on_notification(self, method: str, params: dict[str, Any]) -> None:
        if method == "message":
            message = Message(params.get("from", ""), params.get("payload", b""),
                              params.get("topic"))
            listener = self._listeners.get(params.get("listen"))  # type: ignore[arg-type]
            if listener is not None:
                listener._put(message)
            for callback in self._message_callbacks:
                self._run_callback(callback, message)
        elif method == "shutdown":
            self._connection_lost("the broker is stopping")
        elif method == "error":
            error = RemoteError.from_wire(params)
            if params.get("method") in ("set", "set_many"):
                self.write_errors += 1
            if self._error_callbacks:
                for on_error in self._error_callbacks:
                    self._run_callback(on_error, error)
            else:
                log.warning("broker reported: %s", error)
        elif method in self._notification_handlers:
            self._run_callback(self._notification_handlers[method], params)

    # -- reconnecting ---------------------------------------------------------------------

    async def _ping_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat)
            if self._reconnecting is not None:
                continue
            try:
                await self.request("ping", {}, timeout=max(self.heartbeat * 2, 1.0))
            except (RequestTimeout, ConnectionFailed):
                self._connection_lost("the broker did not answer ping")
            except RemoteError:
                pass  # hello_required was handled in request()

    def _connection_lost(self, why: str) -> None:
        if self._closing or self._reconnecting is not None:
            return
        log.warning("connection to the broker lost: %s", why)
        self._close_socket(ConnectionFailed(f"connection lost: {why}"))
        if self.reconnect:
            self._reconnecting = asyncio.create_task(self._reconnect_loop())
        else:
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self.close()))

    async def _reconnect_loop(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        delay = 0.05
        before = self.instance  # attempts may meet the new broker and still fail
        try:
            while True:
                try:
                    await self._open_and_hello()
                    await self._restore(Reconnected(self.instance or "",
                                                    self.instance != before))
                    break
                except (ConnectionFailed, RequestTimeout, RemoteError) as exc:
                    log.info("reconnect attempt failed: %s", exc)
                    await self._say_bye()  # else our half-restored session blocks our name
                    self._close_socket(ConnectionFailed("reconnecting"))
                    waited = loop.time() - started
                    if self.give_up_after is not None and waited > self.give_up_after:
                        log.error("broker gone for %.0f s, giving up: %s", self.give_up_after, exc)
                        self._reconnecting = None
                        await self.close()
                        return
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
        finally:
            self._reconnecting = None
        changed = self.instance != before
        event = Reconnected(self.instance or "", changed)
        log.info("reconnected to broker %s (restarted: %s)", self.instance, changed)
        for callback in self._reconnect_callbacks:
            self._run_callback(callback, event)

    async def _restore(self, event: Reconnected) -> None:
        """Declare, subscribe and listen again; each subscription is told ``event``."""
        for method, params in self._conn.restore():
            await self._run(ops.redeclare(self._conn, method, params))
        self._subs = {}
        for sub in self._all_subs:
            sub._put(event)
            await self._do_subscribe(sub)
        self._listeners = {}
        for listener in self._all_listeners:
            await self._do_listen(listener)

    # -- the API ------------------------------------------------------------------------

    def on_request(self, method: str, handler: RequestHandler) -> None:
        """Answer requests the broker sends with ``method`` (the Plugin uses init/end)."""
        self._handlers[method] = handler

    def on_notification(self, method: str, callback: Callable[[dict[str, Any]], Any]) -> None:
        """Call ``callback(params)`` for each notification ``method`` the broker sends
        beyond those the client handles itself (an agent's ``plugin.ready``)."""
        self._notification_handlers[method] = callback

    def request_soon(self, method: str, params: Mapping[str, Any] | None = None
                     ) -> asyncio.Future[Any]:
        """Send a request now, in order with every other, and return its reply's future
        (for reports whose answer nobody waits for)."""
        return self._start(method, params)

    def on_message(self, callback: MessageCallback) -> None:
        """Call ``callback(Message)`` for every message sent to this plugin."""
        self._message_callbacks.append(callback)

    def on_reconnect(self, callback: ReconnectCallback) -> None:
        """Call ``callback(Reconnected)`` after each successful reconnect."""
        self._reconnect_callbacks.append(callback)

    async def _run(self, operation: ops.Operation[T]) -> T:
        """Drive an operation: each request it yields is awaited and its result sent."""
        try:
            method, params, timeout = next(operation)
            while True:
                try:
                    result = await self.request(method, params, timeout=timeout)
                except RemoteError as refused:  # the operation may take another way
                    method, params, timeout = operation.throw(refused)
                else:
                    method, params, timeout = operation.send(result)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def declare(self, name: str, type: str, value: Any = ..., **meta: Any) -> int:
        """Declare a property below this plugin's name; returns its handle.

        ``meta``: unit, description, min, max, enum, writable_by, persist.
        """
        return await self._run(ops.declare(self._conn, name, type, value, meta))

    async def delete(self, target: str | int) -> None:
        await self._run(ops.delete(self._conn, target))

    async def get(self, target: str | int) -> PropertyInfo:
        return await self._run(ops.get(target))

    async def list(self, pattern: str = "#") -> builtins.list[PropertyInfo]:
        """Every property matching ``pattern``, by name, fetched page by page."""
        return await self._run(ops.list_properties(pattern))

    def set(self, target: str | int, value: Any) -> asyncio.Future[int]:
        """Write a value; ``await`` it for the property's new revision.

        It returns a future rather than being a coroutine, so many writes can be in
        flight (``asyncio.gather``) without a task each.
        """
        return self._start("set", {"target": target, "value": value}, then=_revision,
                           writes=((target, value),))

    def set_nowait(self, target: str | int, value: Any) -> None:
        """Write without waiting for (or getting) a reply: one frame, the broker's
        ``set`` notification. A refusal arrives later as an error (``on_error``,
        ``write_errors``); writes on one connection are applied in order. Nothing paces
        these writes: await any request every few thousand (``ping``) to keep pace with
        the broker; if 10,000 frames, or 64 MiB of large ones, wait unsent,
        ConnectionFailed says so."""
        self._notify("set", {"target": target, "value": value})
        self._conn.wrote(((target, value),), answered=True)

    def set_many_nowait(self, items: ops.Pairs) -> None:
        """``set_many`` as a notification: all or nothing, no reply (see set_nowait)."""
        pairs, params = ops.set_many_params(items)
        self._notify("set_many", params)
        self._conn.wrote(pairs, answered=True)

    def on_error(self, callback: Callable[[RemoteError], Any]) -> None:
        """Call ``callback(error)`` for each error the broker reports outside a reply
        (a refused set_nowait names its ``method`` and ``target`` in ``details``)."""
        self._error_callbacks.append(callback)

    def _notify(self, method: str, params: dict[str, Any]) -> None:
        if self._sock is None:
            raise self._not_connected()
        try:
            self._send(self._conn.notification(method, params))
        except zmq.Again:
            raise ConnectionFailed(f"the broker at {self.endpoint} takes no more frames "
                                   f"({UNSENT_LIMITS} wait unsent): await a request to keep "
                                   "pace") from None

    def set_many(self, items: ops.Pairs) -> asyncio.Future[builtins.list[int]]:
        """Write several values at once, all or nothing; ``await`` it for the revisions."""
        pairs, params = ops.set_many_params(items)
        return self._start("set_many", params, then=_revisions, writes=pairs)

    async def subscribe(
        self, pattern: str, *, current: bool = True, policy: str = "latest",
        queue_limit: int | None = None, min_interval: float | None = None,
        deadband: float | None = None, on_batch: Callable[[BatchEvent], Any] | None = None,
        max_pending: int = MAX_PENDING,
    ) -> Subscription:
        """Subscribe; when this returns the subscription is live (no change is missed).

        ``on_batch``: instead of keeping events to iterate, call ``on_batch(event)`` with
        each (a :class:`Batch` per notification, and :class:`Synced`, :class:`Gap`,
        :class:`Removed`, :class:`Reconnected` as they come) in the read pass that
        received it: the lowest latency the SDK offers. It runs in the event loop, so it
        should be quick; a coroutine it returns becomes a task. What it raises is logged
        and counted in ``callback_errors``, and the events after it still come.

        ``max_pending``: the most changes kept for a reader that falls behind; past it
        they are dropped, the reader is told with a :class:`Gap` once it catches up, and
        the subscription is made again (with ``current``, a fresh snapshot follows)."""
        options = ops.subscribe_options(current, policy, queue_limit, min_interval, deadband)
        ops.check_max_pending(max_pending)
        sub = Subscription(self, pattern, options, on_batch, max_pending)
        await self._do_subscribe(sub)
        self._all_subs.append(sub)
        return sub

    async def _do_subscribe(self, sub: Subscription) -> None:
        await self._subscribe_soon(sub)

    def _subscribe_soon(self, sub: Subscription) -> asyncio.Future[Any]:
        def route(result: Any) -> Any:
            sub.sid = result["sub"]
            self._subs[result["sub"]] = sub
            return result

        return self._start("subscribe", {"pattern": sub.pattern, **sub.options}, then=route)

    def _remake(self, sub: Subscription) -> None:
        """Subscribe again after ``sub``'s reader fell behind and caught up: the old
        subscription's late batches are ignored, the new one starts live."""
        if sub.sid is not None and self._subs.pop(sub.sid, None) is not None:
            self._conn.unsubscribed(sub.sid)
            if self._sock is not None:
                self._start("unsubscribe", {"sub": sub.sid}).add_done_callback(_quietly)
        if self._sock is not None and not sub.closed:
            # Sent now, so a request made after it is answered once it is live; if the
            # connection is lost, the reconnect subscribes it anew.
            self._subscribe_soon(sub).add_done_callback(_quietly)

    async def _unsubscribe(self, sub: Subscription) -> None:
        if sub in self._all_subs:
            self._all_subs.remove(sub)
        if sub.sid is not None and self._subs.pop(sub.sid, None) is not None:
            self._conn.unsubscribed(sub.sid)
            try:
                await self.request("unsubscribe", {"sub": sub.sid})
            except ConnectionFailed:
                pass
        sub._finish()

    async def call(self, plugin: str, method: str, *, timeout: float | None = None,
                   **params: Any) -> Any:
        """Call a method ``plugin`` exports and return its result. The broker checks the
        parameters against the contract and waits ``timeout`` (default: this client's)
        for the plugin; CallFailed when it is not connected, too slow, or it failed."""
        wait = self.timeout if timeout is None else timeout
        return await self._run(ops.call(plugin, method, wait, params))

    async def send(self, to: str, payload: bytes, topic: str | None = None) -> None:
        """Send a binary payload to the plugin named ``to``."""
        await self._run(ops.send(to, payload, topic))

    async def publish(self, topic: str, payload: bytes) -> int:
        """Publish on a topic; returns how many listeners it was delivered to."""
        return await self._run(ops.publish(topic, payload))

    async def listen(self, pattern: str, *,
                     on_message: Callable[[Message], Any] | None = None,
                     max_pending: int = MAX_PENDING) -> Listener:
        """Messages published on topics matching ``pattern``, as an async iterator; or,
        with ``on_message``, each handed to ``on_message(message)`` as it is read (as
        ``subscribe``'s ``on_batch``). At most ``max_pending`` wait for the reader; later
        ones are dropped while it is that far behind, counted in ``listener.dropped``."""
        ops.check_max_pending(max_pending)
        listener = Listener(self, pattern, on_message, max_pending)
        await self._do_listen(listener)
        self._all_listeners.append(listener)
        return listener

    async def _do_listen(self, listener: Listener) -> None:
        def route(result: Any) -> Any:
            listener.lid = result["listen"]
            self._listeners[listener.lid] = listener
            return result

        await self._start("listen", {"pattern": listener.pattern}, then=route)

    async def _unlisten(self, listener: Listener) -> None:
        if listener in self._all_listeners:
            self._all_listeners.remove(listener)
        if listener.lid is not None and self._listeners.pop(listener.lid, None) is not None:
            await self.request("unlisten", {"listen": listener.lid})
        listener._finish()
