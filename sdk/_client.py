"""The asyncio client: one DEALER socket, requests with timeouts, pushed notifications.

The socket is a plain zmq socket whose descriptor the event loop watches; frames are
received with NOBLOCK in a callback, so no receive is ever awaited or cancelled (a
cancelled receive can lose a message, pyzmq #1925). Replies are matched through a
msgid→Future map, cleaned up when each future completes.

If the broker goes away (pings unanswered, a ``shutdown`` notice, ``hello_required``)
the client reconnects with a fresh socket, says ``hello`` again, re-declares what it
declared (with the last values it set), re-subscribes, and puts a
:class:`Reconnected` event into every subscription. Requests in flight when the
connection is lost fail with ConnectionFailed; they are not retried, because the
broker may have applied them.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, TypeVar

import zmq
from zmq.utils.monitor import parse_monitor_message

from plugboard.protocol._version import SUPPORTED_VERSIONS
from plugboard.protocol.codec import Notification, Request, Response, decode, encode
from plugboard.protocol.discovery import default_endpoint, default_state_dir
from plugboard.protocol.errors import (
    ConnectionFailed,
    KeyRefused,
    ProtocolError,
    RemoteError,
    RequestTimeout,
)
from plugboard.protocol.limits import MAX_FRAME_BYTES, MAX_MSGID

from ._events import Message, PropertyInfo, Reconnected
from ._keys import CurveKeys, curve_keys
from ._subscription import Listener, Subscription

log = logging.getLogger(__name__)

T = TypeVar("T")
RequestHandler = Callable[[dict[str, Any]], Awaitable[Any]]
MessageCallback = Callable[[Message], Any]
ReconnectCallback = Callable[[Reconnected], Any]


def _expire(future: asyncio.Future[Any], method: str, wait: float) -> None:
    if not future.done():
        future.set_exception(RequestTimeout(f"{method}: no reply within {wait:g} s"))


async def _acknowledge(params: dict[str, Any]) -> dict[str, Any]:
    return {}


_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
_HANDSHAKE_REASONS: dict[zmq.Event, str] = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the broker refused this key (not authorized, or "
                                     "revoked)",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "the peer does not speak CURVE with this server "
                                         "key (wrong server key, or a broker without CURVE)",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the handshake failed",
}


def _handshake_error(endpoint: str, why: str) -> ConnectionFailed:
    kind = KeyRefused if why.startswith(_HANDSHAKE_REASONS[zmq.EVENT_HANDSHAKE_FAILED_AUTH]) \
        else ConnectionFailed
    return kind(f"the CURVE handshake with {endpoint} failed: {why}")


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


def endpoint_from_env() -> str:
    """``$PLUGBOARD_ENDPOINT``, else the default broker's ipc socket."""
    explicit = os.environ.get("PLUGBOARD_ENDPOINT")
    if explicit:
        return explicit
    return default_endpoint(default_state_dir())


class Client:
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
        self.role = role
        self.name = name
        self.token = token
        self.timeout = timeout
        """Default timeout of every request, in seconds."""
        self.reconnect = reconnect
        self.give_up_after = give_up_after
        """Stop reconnecting after this many seconds without a broker (None: never)."""
        self.instance: str | None = None
        self.session: str | None = None
        self.heartbeat = 2.0
        self.max_frame = MAX_FRAME_BYTES
        """The largest frame the broker accepts (from hello); larger requests fail here."""
        self.closed = asyncio.Event()
        """Set when the client is closed for good (by close() or after giving up)."""
        self.end_requested = asyncio.Event()
        """Set once the broker's ``end`` request was answered."""
        self.callback_errors = 0
        """How many user callbacks raised (each was logged)."""
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._sock: zmq.Socket[bytes] | None = None
        self._read_scheduled = False
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._on_result: dict[int, Callable[[Any], None]] = {}
        self._msgid = 0
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
        self._declared: dict[str, dict[str, Any]] = {}
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
        """Open the socket and say hello; ConnectionFailed if no broker answers in time."""
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
        for task in (self._pinger, self._reconnecting):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        await self._say_bye()
        await self._teardown()

    async def _say_bye(self) -> None:
        """End the session politely if there is one (best effort, short timeout)."""
        if self._sock is not None and self.session is not None:
            try:
                await self.request("bye", {}, timeout=min(self.timeout, 1.0))
            except Exception:
                pass
            self.session = None

    async def _teardown(self) -> None:
        self._close_socket(ConnectionFailed("the client was closed"))
        for sub in self._all_subs:
            sub._finish()
        for listener in self._all_listeners:
            listener._finish()
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
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(reason)

    async def _open_and_hello(self) -> bool:
        """New socket, hello; True if the broker instance changed."""
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        if self.endpoint.startswith("ipc://"):
            why = _ipc_absence(self.endpoint[len("ipc://"):])
            if why is not None:
                sock.close(linger=0)
                raise ConnectionFailed(f"no broker is running at {self.endpoint} ({why})")
        sock.setsockopt(zmq.SNDHWM, 10_000)
        handshake_failed: list[str] = []
        if self.curve is not None:
            self.curve.apply(sock)
            sock.setsockopt(zmq.HANDSHAKE_IVL, int(self.timeout * 1000))
            self._watch_handshake(sock, handshake_failed)
        sock.connect(self.endpoint)
        self._sock = sock
        asyncio.get_running_loop().add_reader(int(sock.getsockopt(zmq.FD)), self._on_readable)
        self._poke()
        params: dict[str, Any] = {"versions": list(SUPPORTED_VERSIONS), "role": self.role,
                                  "client": "plugboard-sdk-python"}
        if self.name is not None:
            params["name"] = self.name
        if self.token is not None:
            params["token"] = self.token
        if self.extra_hello is not None:
            params.update(self.extra_hello())
        try:
            result = await self.request("hello", params)
        except RequestTimeout:
            if handshake_failed:
                raise _handshake_error(self.endpoint, handshake_failed[-1]) from None
            raise ConnectionFailed(f"no broker answered at {self.endpoint} within "
                                   f"{self.timeout:g} s") from None
        except ConnectionFailed:
            if handshake_failed:
                raise _handshake_error(self.endpoint, handshake_failed[-1]) from None
            raise
        changed = self.instance is not None and result["instance"] != self.instance
        self.instance = result["instance"]
        self.session = result["session"]
        self.heartbeat = result.get("heartbeat_ms", 2000) / 1000
        self.max_frame = int(result.get("max_frame", MAX_FRAME_BYTES))
        return changed

    def _watch_handshake(self, sock: zmq.Socket[bytes], failed: list[str]) -> None:
        """Fail hello at once, with the reason, when ZeroMQ reports a failed handshake
        (a refused key, a wrong server key), instead of waiting out its timeout."""
        monitor = sock.get_monitor_socket(_HANDSHAKE_FAILED)
        loop = asyncio.get_running_loop()
        fd = int(monitor.getsockopt(zmq.FD))

        def readable() -> None:
            while True:
                try:
                    event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    return
                except zmq.ZMQError:
                    return
                kind = zmq.Event(int(event["event"]))
                why = _HANDSHAKE_REASONS.get(kind, "rejected")
                failed.append(f"{why} (ZeroMQ event {kind.name}, value {int(event['value'])})")
                for future in list(self._pending.values()):
                    if not future.done():
                        future.set_exception(ConnectionFailed(failed[-1]))
                if self.session is not None:  # a live session: the broker revoked us
                    self._connection_lost(f"CURVE handshake failed: {failed[-1]}")

        loop.add_reader(fd, readable)
        readable()  # the descriptor is edge-triggered: drain once to arm it
        self._monitors.append((sock, monitor, fd))

    # -- requests -----------------------------------------------------------------------

    async def request(self, method: str, params: Mapping[str, Any] | None = None, *,
                      timeout: float | None = None,
                      on_result: Callable[[Any], None] | None = None) -> Any:
        """Send one request and wait for its reply; raises RemoteError subclasses.

        ``on_result`` runs in the reader as the reply arrives, before any later frame
        is handled: subscribe uses it so the snapshot that follows finds its route.
        """
        return await self._start(method, params, timeout=timeout, on_result=on_result)

    def _start(self, method: str, params: Mapping[str, Any] | None = None, *,
               timeout: float | None = None,
               on_result: Callable[[Any], None] | None = None) -> asyncio.Future[Any]:
        """Send a request now and return the future of its reply.

        No coroutine and no task per request: many can be in flight cheaply. The
        timeout is a timer, not wait_for (which costs a task per request).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if self._sock is None:
            future.set_exception(ConnectionFailed("not connected to the broker"))
            return future
        self._msgid = (self._msgid + 1) % (MAX_MSGID + 1)
        msgid = self._msgid
        try:
            frame = encode(Request(msgid, method, dict(params or {})))
            if len(frame) > self.max_frame:
                # The broker would drop the connection, so it is never sent.
                raise ProtocolError("too_large", f"{method} request of {len(frame)} bytes "
                                    f"exceeds the broker's max_frame of {self.max_frame}")
            self._send(frame)
        except zmq.Again:
            future.set_exception(ConnectionFailed(f"cannot reach the broker at {self.endpoint}"))
            return future
        except ProtocolError as exc:
            future.set_exception(exc)
            return future
        self._pending[msgid] = future
        if on_result is not None:
            self._on_result[msgid] = on_result
        wait = self.timeout if timeout is None else timeout
        timer = loop.call_later(wait, _expire, future, method, wait)
        future.add_done_callback(lambda done: self._finished(msgid, method, timer, done))
        return future

    def _finished(self, msgid: int, method: str, timer: asyncio.TimerHandle,
                  future: asyncio.Future[Any]) -> None:
        timer.cancel()
        self._pending.pop(msgid, None)
        self._on_result.pop(msgid, None)
        if future.cancelled():
            return
        exc = future.exception()
        if isinstance(exc, RemoteError) and exc.code == "hello_required" and method != "hello":
            self._connection_lost("the broker no longer knows this session")

    def _then(self, future: asyncio.Future[Any], transform: Callable[[Any], T]
              ) -> asyncio.Future[T]:
        """A future of ``transform(result)``, chained without a task."""
        out: asyncio.Future[T] = asyncio.get_running_loop().create_future()

        def done(source: asyncio.Future[Any]) -> None:
            if out.done():
                return
            if source.cancelled():
                out.cancel()
            elif (exc := source.exception()) is not None:
                out.set_exception(exc)
            else:
                out.set_result(transform(source.result()))

        future.add_done_callback(done)
        return out

    # The socket is a plain zmq socket whose file descriptor the event loop watches.
    # ZeroMQ's descriptor is edge-triggered and a send can consume the edge, so after
    # every send and every drain the loop checks EVENTS again (_poke); this is the only
    # place that reads EVENTS. Receives never await, so none can be cancelled midway.

    def _send(self, frame: bytes) -> None:
        assert self._sock is not None
        self._sock.send(frame, zmq.NOBLOCK)
        self._poke()

    def _poke(self) -> None:
        if not self._read_scheduled:
            self._read_scheduled = True
            asyncio.get_running_loop().call_soon(self._on_readable)

    def _on_readable(self) -> None:
        self._read_scheduled = False
        sock = self._sock
        if sock is None:
            return
        for _ in range(1000):
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            self._dispatch(frame)
            if self._sock is not sock:  # closed by what the frame triggered
                return
        if int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            self._poke()

    def _dispatch(self, frame: bytes) -> None:
        """Route one frame: a reply to its future, a notification, a broker request."""
        try:
            message = decode(frame)
        except ProtocolError as exc:
            log.warning("undecodable frame from the broker: %s", exc)
            return
        if isinstance(message, Response):
            future = self._pending.get(message.msgid)
            if future is not None and not future.done():
                if message.error is None:
                    on_result = self._on_result.pop(message.msgid, None)
                    if on_result is not None:
                        on_result(message.result)
                    future.set_result(message.result)
                else:
                    future.set_exception(RemoteError.from_wire(message.error))
        elif isinstance(message, Notification):
            self._on_notification(message)
        else:
            asyncio.create_task(self._answer(self._sock, message))

    async def _answer(self, sock: zmq.Socket[bytes] | None, request: Request) -> None:
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
                self._send(encode(Response(request.msgid, error, result)))
            except zmq.Again:
                log.warning("could not answer %s: the broker is not reading", request.method)
        if request.method == "end":
            # The broker ends the session on this reply; nothing more to say to it.
            self.session = None
            self.end_requested.set()

    def _run_callback(self, callback: Callable[[Any], Any], arg: Any) -> None:
        """A user's callback never kills the loop: errors are logged and counted."""
        try:
            outcome = callback(arg)
            if asyncio.iscoroutine(outcome):
                task = asyncio.create_task(outcome)
                task.add_done_callback(self._log_task_error)
        except Exception:
            self.callback_errors += 1
            log.exception("callback %r raised", callback)

    def _log_task_error(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.callback_errors += 1
            log.error("callback task raised", exc_info=task.exception())

    def _on_notification(self, note: Notification) -> None:
        params = note.params
        if note.method == "changes":
            sub = self._subs.get(params.get("sub"))  # type: ignore[arg-type]
            if sub is not None:
                sub._on_changes(params)
        elif note.method == "message":
            message = Message(params.get("from", ""), params.get("payload", b""),
                              params.get("topic"))
            listener = self._listeners.get(params.get("listen"))  # type: ignore[arg-type]
            if listener is not None:
                listener._put(message)
            for callback in self._message_callbacks:
                self._run_callback(callback, message)
        elif note.method == "shutdown":
            self._connection_lost("the broker is stopping")
        elif note.method == "error":
            error = RemoteError.from_wire(params)
            if params.get("method") in ("set", "set_many"):
                self.write_errors += 1
            if self._error_callbacks:
                for on_error in self._error_callbacks:
                    self._run_callback(on_error, error)
            else:
                log.warning("broker reported: %s", error)
        elif note.method in self._notification_handlers:
            self._run_callback(self._notification_handlers[note.method], params)

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
        try:
            while True:
                try:
                    changed = await self._open_and_hello()
                    await self._restore()
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
        event = Reconnected(self.instance or "", changed)
        log.info("reconnected to broker %s (restarted: %s)", self.instance, changed)
        for callback in self._reconnect_callbacks:
            self._run_callback(callback, event)

    async def _restore(self) -> None:
        for params in self._declared.values():
            await self.request("declare", params)
        self._subs = {}
        for sub in self._all_subs:
            sub._put(Reconnected(self.instance or "", True))
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

    async def declare(self, name: str, type: str, value: Any = ..., **meta: Any) -> int:
        """Declare a property below this plugin's name; returns its handle.

        ``meta``: unit, description, min, max, enum, writable_by, persist.
        """
        params: dict[str, Any] = {"name": name, "type": type, **meta}
        if value is not ...:
            params["value"] = value
        result = await self.request("declare", params)
        if result["value"] is not None:
            params["value"] = result["value"]
        self._declared[name] = params
        return result["handle"]  # type: ignore[no-any-return]

    async def delete(self, target: str | int) -> None:
        info = await self.get(target)
        await self.request("delete", {"target": info.handle})
        self._declared.pop(info.name, None)

    async def get(self, target: str | int) -> PropertyInfo:
        return PropertyInfo.from_wire(await self.request("get", {"target": target}))

    async def list(self, pattern: str = "#") -> builtins.list[PropertyInfo]:
        """Every property matching ``pattern``, by name, fetched page by page."""
        items: builtins.list[PropertyInfo] = []
        after = ""
        while True:
            result = await self.request("list", {"pattern": pattern, "after": after})
            items.extend(PropertyInfo.from_wire(i) for i in result["items"])
            if not result.get("more") or not result["items"]:
                return items
            after = items[-1].name

    def _remember(self, target: str | int, value: Any) -> None:
        if isinstance(target, str) and target in self._declared:
            self._declared[target]["value"] = value

    def set(self, target: str | int, value: Any) -> asyncio.Future[int]:
        """Write a value; ``await`` it for the property's new revision.

        It returns a future rather than being a coroutine, so many writes can be in
        flight (``asyncio.gather``) without a task each.
        """
        def written(result: Any) -> int:
            self._remember(target, value)
            return int(result["revision"])

        return self._then(self._start("set", {"target": target, "value": value}), written)

    def set_nowait(self, target: str | int, value: Any) -> None:
        """Write without waiting for (or getting) a reply: one frame, the broker's
        ``set`` notification. A refusal arrives later as an error (``on_error``,
        ``write_errors``); writes on one connection are applied in order. Nothing paces
        these writes: await any request every few thousand (``ping``) to keep pace with
        the broker; if 10,000 frames wait unsent, ConnectionFailed says so."""
        self._notify("set", {"target": target, "value": value})
        self._remember(target, value)

    def set_many_nowait(self, items: Mapping[str | int, Any]
                        | Iterable[tuple[str | int, Any]]) -> None:
        """``set_many`` as a notification: all or nothing, no reply (see set_nowait)."""
        pairs = list(items.items() if isinstance(items, Mapping) else items)
        self._notify("set_many", {"items": [list(p) for p in pairs]})
        for target, value in pairs:
            self._remember(target, value)

    def on_error(self, callback: Callable[[RemoteError], Any]) -> None:
        """Call ``callback(error)`` for each error the broker reports outside a reply
        (a refused set_nowait names its ``method`` and ``target`` in ``details``)."""
        self._error_callbacks.append(callback)

    def _notify(self, method: str, params: dict[str, Any]) -> None:
        if self._sock is None:
            raise ConnectionFailed("not connected to the broker")
        frame = encode(Notification(method, params))
        if len(frame) > self.max_frame:
            raise ProtocolError("too_large", f"{method} of {len(frame)} bytes exceeds the "
                                f"broker's max_frame of {self.max_frame}")
        try:
            self._send(frame)
        except zmq.Again:
            raise ConnectionFailed(f"the broker at {self.endpoint} takes no more frames "
                                   "(10,000 wait unsent): await a request to keep pace"
                                   ) from None

    def set_many(self, items: Mapping[str | int, Any] | Iterable[tuple[str | int, Any]]
                 ) -> asyncio.Future[builtins.list[int]]:
        """Write several values at once, all or nothing; ``await`` it for the revisions."""
        pairs = list(items.items() if isinstance(items, Mapping) else items)

        def written(result: Any) -> builtins.list[int]:
            for target, value in pairs:
                self._remember(target, value)
            return list(result["revisions"])

        return self._then(self._start("set_many", {"items": [list(p) for p in pairs]}),
                          written)

    async def subscribe(
        self, pattern: str, *, current: bool = True, policy: str = "latest",
        queue_limit: int | None = None, min_interval: float | None = None,
        deadband: float | None = None,
    ) -> Subscription:
        """Subscribe; when this returns the subscription is live (no change is missed)."""
        options: dict[str, Any] = {"current": current, "policy": policy}
        if queue_limit is not None:
            options["queue_limit"] = queue_limit
        if min_interval is not None:
            options["min_interval_ms"] = round(min_interval * 1000)
        if deadband is not None:
            options["deadband"] = deadband
        sub = Subscription(self, pattern, options)
        await self._do_subscribe(sub)
        self._all_subs.append(sub)
        return sub

    async def _do_subscribe(self, sub: Subscription) -> None:
        def route(result: Any) -> None:
            sub._reset(result["sub"])
            self._subs[result["sub"]] = sub

        await self.request("subscribe", {"pattern": sub.pattern, **sub.options}, on_result=route)

    async def _unsubscribe(self, sub: Subscription) -> None:
        if sub in self._all_subs:
            self._all_subs.remove(sub)
        if sub.sid is not None and self._subs.pop(sub.sid, None) is not None:
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
        reply = await self.request("call", {"plugin": plugin, "method": method,
                                            "params": params,
                                            "timeout_ms": max(1, int(wait * 1000))},
                                   timeout=wait + 1.0)
        return reply["result"]

    async def send(self, to: str, payload: bytes, topic: str | None = None) -> None:
        """Send a binary payload to the plugin named ``to``."""
        params: dict[str, Any] = {"to": to, "payload": payload}
        if topic is not None:
            params["topic"] = topic
        await self.request("send", params)

    async def publish(self, topic: str, payload: bytes) -> int:
        """Publish on a topic; returns how many listeners it was delivered to."""
        result = await self.request("publish", {"topic": topic, "payload": payload})
        return result["delivered"]  # type: ignore[no-any-return]

    async def listen(self, pattern: str) -> Listener:
        """Messages published on topics matching ``pattern``, as an async iterator."""
        listener = Listener(self, pattern)
        await self._do_listen(listener)
        self._all_listeners.append(listener)
        return listener

    async def _do_listen(self, listener: Listener) -> None:
        def route(result: Any) -> None:
            listener.lid = result["listen"]
            self._listeners[listener.lid] = listener

        await self.request("listen", {"pattern": listener.pattern}, on_result=route)

    async def _unlisten(self, listener: Listener) -> None:
        if listener in self._all_listeners:
            self._all_listeners.remove(listener)
        if listener.lid is not None and self._listeners.pop(listener.lid, None) is not None:
            await self.request("unlisten", {"listen": listener.lid})
        listener._finish()
