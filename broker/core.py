"""The broker's sans-IO core: sessions, datastore, subscriptions and ACL, with no I/O.

The socket loop hands it frames with :meth:`BrokerCore.receive`, then takes the
frames to send with :meth:`BrokerCore.flush` (one notification batch per subscription
with pending changes, and the replies) and calls :meth:`BrokerCore.tick` when
:meth:`BrokerCore.next_deadline` (asked after the flush) has passed. Time comes from
injected clocks, so tests drive the core with no socket and a fake clock.
"""

from __future__ import annotations

import hmac
import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from plugboard.protocol import limits
from plugboard.protocol._version import SUPPORTED_VERSIONS
from plugboard.protocol.codec import (
    RESPONSE,
    Notification,
    Request,
    Response,
    decode,
    encode,
    frame_msgid,
)
from plugboard.protocol.declaration import WRITERS_ANY, WRITERS_CLIENTS, WRITERS_PLUGINS, parse_meta
from plugboard.protocol.errors import ProtocolError
from plugboard.protocol.names import (
    LOG_TOPIC,
    SYSTEM_NAMESPACE,
    namespace,
    validate_agent_name,
    validate_name,
    validate_pattern,
    validate_plugin_name,
)
from plugboard.protocol.plugin_spec import MethodSpec, PluginSpec
from plugboard.protocol.values import Timestamp, ValueType, check_value

from .agents import AgentDesk
from .datastore import Datastore, Property
from .security import KeyRing
from .sessions import PendingRequest, QueueBudget, Role, Session, SessionState
from .store import Durability, Record, Store
from .subscriptions import (
    POLICY_ALL,
    POLICY_LATEST,
    PatternIndex,
    Subscription,
    Written,
    approx_size,
)
from .system import SystemProperties

log: Final = logging.getLogger(__name__)

BROKER_VERSION: Final = "0.1.0"
RETRY_FIRST_S: Final = 0.0005
RETRY_MAX_S: Final = 0.02
"""How soon frames ZeroMQ refused are offered again: it tells no one when a peer's pipe
has room, so the broker asks again after 0.5 ms while retries make progress (a busy but
healthy peer), doubling to 20 ms while ZeroMQ takes nothing (a stalled one costs
little)."""
NEVER: Final = math.inf


@dataclass(frozen=True, slots=True, kw_only=True)
class CoreConfig:
    """Settings of the broker core (the CLI fills them from its options)."""

    heartbeat_ms: int = 2000
    """How often peers must send something (a ``ping`` when idle); told in hello."""
    session_timeout_ms: int = 6000
    """A session silent this long is ended as if it disconnected."""
    max_frame: int = limits.MAX_FRAME_BYTES
    """Largest frame accepted; announced in the hello reply."""
    init_timeout_s: float = 10.0
    """How long a plugin may take to answer ``init``."""
    end_timeout_s: float = 3.0
    """How long a plugin may take to answer ``end``."""
    stats_interval_s: float = 1.0
    """How often ``system/broker/*`` figures are refreshed."""
    max_subscriptions: int = 10_000
    """Subscriptions plus topic listens one session may hold."""
    admin_token: str | None = None
    """The token the admin role must present; None disables the admin role."""
    peer_queue_bytes: int = 8 * 1024 * 1024
    """What the broker holds for one peer that does not read fast enough: frames
    ZeroMQ would not take plus changes queued under policy ``all``. Beyond it changes
    are dropped (the subscriber sees ``gap`` or a ``seq`` jump) and counted."""
    allow_unmanaged_plugins: bool = False
    """Accept a ``plugin`` hello whose name the runtime does not manage (a plugin started
    by hand). Off by default: anyone who reaches the socket could otherwise own a
    namespace."""


Clock = Callable[[], float]
WallClock = Callable[[], int]


@dataclass(frozen=True, slots=True)
class Deferred:
    """Returned by a method handler that answers later through :meth:`BrokerCore.complete`."""


DEFERRED: Final = Deferred()
FIRE_AND_FORGET: Final = ("set", "set_many")
"""Methods a peer may also send as notifications: applied, never answered."""
MethodHandler = Callable[["Session", dict[str, Any], int], Any]

_MISSING: Final = object()


def _param(params: dict[str, Any], key: str, kind: type | tuple[type, ...],
           default: Any = _MISSING) -> Any:
    value = params.get(key, _MISSING)
    if value is _MISSING or value is None:
        if default is _MISSING:
            raise ProtocolError("invalid_params", f"missing parameter {key!r}")
        return default
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ProtocolError("invalid_params", f"parameter {key!r} must be {names}, "
                            f"got {type(value).__name__}")
    return value


class BrokerCore:
    """Everything the broker decides, driven by frames in and frames out."""

    def __init__(self, config: CoreConfig | None = None, *, clock: Clock = time.monotonic,
                 wallclock: WallClock = time.time_ns) -> None:
        self.config = config or CoreConfig()
        self.clock = clock
        self.wallclock = wallclock
        self.instance = secrets.token_hex(8)
        self.store = Datastore()
        self.sessions: dict[bytes, Session] = {}
        """By peer, least recently heard from first: expiry looks at the oldest only."""
        self._awaiting: dict[Session, None] = {}
        """Sessions with requests of the broker's not answered yet."""
        self.plugins: dict[str, Session] = {}
        self.subscriptions = PatternIndex[Subscription]()
        self.listeners = PatternIndex[tuple[Session, int]]()
        self.messages_in = 0
        self.messages_out = 0
        self._drops_of_ended = 0
        self._silent: list[bytes] = []
        """Peers whose session ended for silence, for the driver to hang up
        (:meth:`take_silent`)."""
        self._congested: dict[Session, None] = {}
        """Sessions with a backlog: their frames are retried, their changes held back."""
        self._retry_in = RETRY_FIRST_S
        self._offered = self._refused = 0
        """Backlog frames offered in the last flush, and how many came back refused."""
        self.shutting_down = False
        self._outbox: list[tuple[bytes, bytes]] = []
        self._dirty: dict[Subscription, None] = {}
        self._next_id = 0
        self._next_msgid = 0
        self._next_expiry_check = 0.0
        self._methods: dict[str, Callable[[Session, dict[str, Any]], Any]] = {
            "bye": self._bye, "ping": self._ping, "declare": self._declare,
            "delete": self._delete, "get": self._get, "list": self._list, "set": self._set,
            "set_many": self._set_many, "subscribe": self._subscribe,
            "unsubscribe": self._unsubscribe, "send": self._send_message,
            "publish": self._publish, "listen": self._listen, "unlisten": self._unlisten,
            "sessions": self._list_sessions,
        }
        self.contracts: dict[str, PluginSpec] = {}
        """Plugins held to a contract: they may declare only what it exports."""
        self.plugin_tokens: dict[str, str] = {}
        """One-time tokens of launched plugins, valid while their process lives."""
        self.persistence: Store | None = None
        """Where persistent properties are kept; None keeps nothing."""
        self._stored_by_request = False
        """The request being handled changed what the persistent store keeps."""
        self._unstored: list[tuple[bytes, int]] = []
        """This turn's replies that acknowledge a change to the persistent store, each
        with its msgid, until the driver settles them (:meth:`settle_store`)."""
        self._unstored_unanswered: list[tuple[bytes, str, Any]] = []
        """This turn's writes sent as notifications that changed the persistent store
        under ``always``: the frame holding their place, the method and the target."""
        self._extra_methods: dict[str, tuple[MethodHandler, tuple[Role, ...] | None]] = {}
        self.keys: KeyRing | None = None
        """CURVE keys allowed in, with their roles and names; None without CURVE."""
        self._peer_keys: dict[bytes, str] = {}
        """The CURVE key each tcp connection proved (the ZAP handler's User-Id)."""
        self.register_method("keys.reload", self._reload_keys, roles=(Role.ADMIN,))
        self.register_method("call", self._call)
        self.system = SystemProperties(self)
        self.agents = AgentDesk(self)

    # -- the driver's interface ---------------------------------------------------

    def receive(self, peer: bytes, frames: list[bytes]) -> None:
        """Apply one incoming ZeroMQ message from ``peer``."""
        self.messages_in += 1
        sessions = self.sessions
        session = sessions.get(peer)
        if session is not None:
            session.last_seen = self.clock()
            sessions[peer] = sessions.pop(peer)  # now the most recently heard from
        if len(frames) != 1:
            self._error_to(peer, None, ProtocolError(
                "invalid_message", f"a message is exactly one frame, got {len(frames)}"))
            return
        frame = frames[0]
        try:
            message = decode(frame, self.config.max_frame)
        except ProtocolError as exc:
            self._undecodable(peer, session, frame, exc)
            return
        if isinstance(message, Request):
            self._on_request(peer, session, message)
        elif isinstance(message, Response):
            self._on_response(peer, session, message)
        elif message.method in FIRE_AND_FORGET and session is not None:
            self._write_unanswered(session, message.method, message.params)
        else:
            self._error_to(peer, None, ProtocolError(
                "unknown_method", f"no notification {message.method!r} is sent to the broker"
                + ("; say hello first" if session is None else ""),
                method=message.method))

    @property
    def drops(self) -> int:
        """Changes and frames dropped at peers' queue limits, since the start."""
        return self._drops_of_ended + sum(s.budget.dropped for s in self.sessions.values())

    def flush(self) -> list[tuple[bytes, bytes]]:
        """Frames to send now: backlogs first, then one batch per subscription with
        news, then the replies (each peer's own frames in order: :func:`_news_first`).
        A peer whose backlog is over a quarter of its budget gets no new batch until
        ZeroMQ took it: its changes wait in its subscriptions, bounded by their policy.
        (A smaller backlog is a busy peer, not a stalled one: its batches keep flowing
        behind it.)"""
        retry: list[tuple[bytes, bytes]] = []
        held: dict[bytes, None] = {}
        if self._congested:
            for session in self._congested:
                backlog = sum(map(len, session.backlog))
                if backlog > session.budget.limit // 4:
                    held[session.peer] = None
                while session.backlog:
                    frame = session.backlog.popleft()
                    session.budget.used -= len(frame)
                    retry.append((session.peer, frame))
            self._congested = {}
        self._offered, self._refused = len(retry), 0
        out, self._outbox = self._outbox, []
        if self._dirty:
            now = self.clock()
            for sub in list(self._dirty):
                if sub.peer in held:
                    continue
                batches = sub.take(now)
                if batches:
                    del self._dirty[sub]
                    for batch in batches:
                        self._outbox.append((sub.peer, batch.frame()))
            if self._outbox:
                out = _news_first(out, self._outbox)
                self._outbox = []
        if retry:
            out = retry + out
        self.messages_out += len(out)
        return out

    def blocked(self, peer: bytes, frames: list[bytes]) -> None:
        """ZeroMQ would not take these frames for ``peer`` (its pipe is full): keep them,
        in order, within the peer's budget; what does not fit is dropped and counted."""
        session = self.sessions.get(peer)
        if session is None:
            self._drops_of_ended += len(frames)
            return
        self._refused += len(frames)
        budget = session.budget
        for frame in frames:
            if budget.fits(len(frame)):
                session.backlog.append(frame)
                budget.used += len(frame)
            else:
                budget.dropped += 1
        self.messages_out -= len(frames)
        if session.backlog:
            self._congested[session] = None

    def tick(self) -> None:
        """Run timers (session expiry, request deadlines, stats); :meth:`next_deadline`
        says when to call it again."""
        now = self.clock()
        if now >= self._next_expiry_check:
            self._expire(now)
            self._next_expiry_check = now + min(self.config.heartbeat_ms / 1000, 0.5)
        self.system.refresh(now)

    def next_deadline(self) -> float:
        """When :meth:`tick` is due next. Ask after :meth:`flush`: before it, a change
        waiting to be flushed makes the deadline "now" and the driver would run a
        second, empty pass for it."""
        deadline = min(self._next_expiry_check, self.system.next_refresh)
        congested = self._congested
        for sub in self._dirty:
            if not congested or self.sessions.get(sub.peer) not in congested:
                deadline = min(deadline, sub.due_at)
        return deadline

    def identify(self, peer: bytes, key: str) -> None:
        """The driver learned which CURVE key ``peer``'s connection proved."""
        self._peer_keys[peer] = key

    def take_silent(self) -> list[bytes]:
        """Peers whose session :meth:`tick` ended for silence since the last call. The
        driver closes their connections: a vanished host's connection with data in
        flight to it never idles, so TCP keepalive never ends it, and TCP's own
        retransmissions would keep it for a quarter of an hour."""
        silent = self._silent
        if silent:  # most passes have none: no new list each pass
            self._silent = []
        return silent

    def retry_deadline(self) -> float:
        """When to offer refused frames again; ``inf`` while no peer is congested. The
        driver asks after each send (a send is what finds a peer congested) and arms a
        timer for it, besides :meth:`tick`'s deadline."""
        if not self._congested:
            self._retry_in = RETRY_FIRST_S
            return NEVER
        if self._offered and self._refused >= self._offered:  # no progress: back off
            self._retry_in = min(self._retry_in * 2, RETRY_MAX_S)
        else:
            self._retry_in = RETRY_FIRST_S
        return self.clock() + self._retry_in

    def peer_gone(self, peer: bytes, reason: str) -> None:
        """The driver learned the peer is unreachable (its connection is gone)."""
        self._peer_keys.pop(peer, None)
        session = self.sessions.get(peer)
        if session is not None:
            self.end_session(session, reason)

    def begin_shutdown(self) -> None:
        """Ask every plugin no agent manages to ``end``; tell everyone else (plugins of
        agents too: their agent decides their life, and they reconnect to the next
        broker). See :attr:`shutdown_complete`."""
        self.shutting_down = True
        for session in list(self.sessions.values()):
            if session.role is Role.PLUGIN and session.name not in self.agents.managed:
                self.ask_to_end(session)
            else:
                self._notify(session.peer, "shutdown", {"reason": "broker stopping"})

    @property
    def shutdown_complete(self) -> bool:
        """No plugin asked to ``end`` is still connected."""
        return not any(s.state is SessionState.ENDING for s in self.plugins.values())

    def ask_to_end(self, session: Session) -> None:
        """Send ``end``; the session ends on the reply or when end_timeout_s passes."""
        session.state = SessionState.ENDING
        self.request(session, "end", {}, lambda _reply: self.end_session(session, "ended"),
                     self.config.end_timeout_s)

    def request(self, session: Session, method: str, params: dict[str, Any],
                on_reply: Callable[[Response | None], None], timeout: float) -> None:
        """Send a request to a peer; ``on_reply`` gets the response or None on timeout."""
        self._next_msgid = (self._next_msgid + 1) % (limits.MAX_MSGID + 1)
        msgid = self._next_msgid
        session.requests[msgid] = PendingRequest(method, self.clock() + timeout, on_reply)
        self._awaiting[session] = None
        self._outbox.append((session.peer, encode(Request(msgid, method, params))))

    def register_method(self, name: str, handler: MethodHandler, *,
                        roles: tuple[Role, ...] | None = None) -> None:
        """Add a method, for ``roles`` only (None: every role); ``handler(session, params,
        msgid)`` returns a result, or DEFERRED and answers later with :meth:`complete`."""
        self._extra_methods[name] = (handler, roles)

    def complete(self, peer: bytes, msgid: int, result: Any = None,
                 error: ProtocolError | None = None) -> None:
        """Answer a request whose handler returned DEFERRED."""
        if peer not in self.sessions:
            return
        if error is not None:
            self._error_to(peer, msgid, error)
        else:
            self._reply(peer, msgid, result)

    def end_session(self, session: Session, reason: str) -> None:
        """Forget a session: its properties go (subscribers told), then everything else."""
        if self.sessions.get(session.peer) is not session:
            return
        log.info("session %s (%s %s) ended: %s", session.sid, session.role.value,
                 session.name or "-", reason)
        del self.sessions[session.peer]
        self._awaiting.pop(session, None)
        self._drops_of_ended += session.budget.dropped
        self._congested.pop(session, None)
        if session.name is not None and self.plugins.get(session.name) is session:
            del self.plugins[session.name]
        for prop in list(session.properties):
            if prop.meta.persist and self.persistence is not None:
                continue  # stays, dormant, with its last value until declared again
            self._remove_property(prop)
        for sub in session.subscriptions.values():
            self._drop_subscription(sub)
        for lid, pattern in session.listens.items():
            self.listeners.remove(pattern, (session, lid))
        pending, session.requests = session.requests, {}
        for request in pending.values():
            request.on_reply(None)
        if session.role is Role.PLUGIN:
            self.agents.plugin_ended(session, reason)
        elif session.role is Role.AGENT:
            self.agents.agent_ended(session)

    # -- plumbing -------------------------------------------------------------------

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _reply(self, peer: bytes, msgid: int, result: Any) -> None:
        self._outbox.append((peer, encode(Response(msgid, None, result))))

    def _error_to(self, peer: bytes, msgid: int | None, exc: ProtocolError) -> None:
        if msgid is None:
            log.debug("error to peer without msgid: %s", exc)
            self._notify(peer, "error", exc.to_wire())
        else:
            self._outbox.append((peer, encode(Response(msgid, exc.to_wire(), None))))

    def _notify(self, peer: bytes, method: str, params: dict[str, Any]) -> None:
        self._outbox.append((peer, encode(Notification(method, params))))

    def _on_request(self, peer: bytes, session: Session | None, request: Request) -> None:
        self._stored_by_request = False
        try:
            if request.method == "hello":
                result = self._hello(peer, session, request.params)
            elif session is None:
                raise ProtocolError("hello_required", "the first request on a connection "
                                    f"must be hello, not {request.method!r}")
            elif request.method in self._extra_methods:
                extra, roles = self._extra_methods[request.method]
                if roles is not None and session.role not in roles:
                    raise ProtocolError("forbidden", f"{request.method} needs the role "
                                        + " or ".join(r.value for r in roles))
                result = extra(session, request.params, request.msgid)
                if result is DEFERRED:
                    return
            else:
                handler = self._methods.get(request.method)
                if handler is None:
                    raise ProtocolError("unknown_method", f"no method {request.method!r}")
                result = handler(session, request.params)
        except ProtocolError as exc:
            self._error_to(peer, request.msgid, exc)
            return
        except Exception as exc:  # a bug here must not take every peer down
            log.exception("internal error handling %s", request.method)
            self._error_to(peer, request.msgid, ProtocolError(
                "internal", f"{type(exc).__name__} while handling {request.method}"))
            return
        then = None
        if isinstance(result, _ReplyThen):
            result, then = result.result, result.then
        self._reply(peer, request.msgid, result)
        if self._stored_by_request:
            self._unstored.append((self._outbox[-1][1], request.msgid))
        if then is not None:
            then()
        if request.method == "bye" and session is not None:
            self.end_session(session, "bye")

    def _undecodable(self, peer: bytes, session: Session | None, frame: bytes,
                     exc: ProtocolError) -> None:
        """A request's error goes back as its response; an answer to one of the broker's
        requests (a plugin's ``call`` result no decoder reads) fails that request at
        once, so its caller is not left waiting for the timeout; the peer is told."""
        head = frame_msgid(frame)
        if head is not None and head[0] == RESPONSE:
            self._error_to(peer, None, exc)
            if session is not None and head[1] in session.requests:
                self._on_response(peer, session, Response(head[1], {
                    "code": exc.code, "message": f"its answer could not be decoded: "
                    f"{exc.message}"}, None))
            return
        self._error_to(peer, head[1] if head is not None else None, exc)

    def _on_response(self, peer: bytes, session: Session | None, response: Response) -> None:
        pending = session.requests.pop(response.msgid, None) if session else None
        if pending is None:
            log.debug("unexpected response %d from %r", response.msgid, peer)
            return
        pending.on_reply(response)

    def _expire(self, now: float) -> None:
        """End silent sessions and fail late requests, looking only at the sessions
        that may be due: ten thousand quiet clients cost nothing here."""
        timeout = self.config.session_timeout_ms / 1000
        sessions = self.sessions
        while sessions:
            oldest = next(iter(sessions.values()))
            if now - oldest.last_seen <= timeout:
                break
            self.end_session(oldest, f"no message for {timeout:g} s (heartbeat lost)")
            self._silent.append(oldest.peer)
        for session in list(self._awaiting):
            if not session.requests:
                del self._awaiting[session]
            for msgid, pending in list(session.requests.items()):
                if now >= pending.deadline:
                    del session.requests[msgid]
                    log.warning("%s did not answer %s in time", session.name, pending.method)
                    pending.on_reply(None)

    def _check_room(self, session: Session) -> None:
        if len(session.subscriptions) + len(session.listens) >= self.config.max_subscriptions:
            raise ProtocolError("limit_exceeded", "this session holds "
                                f"{self.config.max_subscriptions} subscriptions and listens "
                                "already (the most one session may hold)")

    # -- handshake and session methods ----------------------------------------------

    def _hello(self, peer: bytes, session: Session | None, params: dict[str, Any]) -> Any:
        if session is not None:
            raise ProtocolError("invalid_state", "hello was already done on this connection")
        if self.shutting_down:
            raise ProtocolError("shutting_down", "the broker is stopping")
        versions = _param(params, "versions", list)
        if not all(type(v) is int for v in versions):
            raise ProtocolError("invalid_params", "versions must be a list of ints, got "
                                f"{versions!r}")
        common = [v for v in versions if v in SUPPORTED_VERSIONS]
        if not common:
            raise ProtocolError("unsupported_version", f"offered {versions!r}, the broker "
                                f"speaks {list(SUPPORTED_VERSIONS)}",
                                supported=list(SUPPORTED_VERSIONS))
        role_text = _param(params, "role", str)
        try:
            role = Role(role_text)
        except ValueError:
            raise ProtocolError("invalid_params", "role must be plugin, client, admin or "
                                f"agent, got {role_text!r}") from None
        name = _param(params, "name", str, None)
        token = _param(params, "token", str, None)
        key = self._peer_keys.get(peer)
        if key is not None:
            self._check_key(key, role, name)
        if role is Role.PLUGIN:
            if name is None:
                raise ProtocolError("invalid_params", "a plugin must say its name")
            validate_plugin_name(name)
            if name in self.plugins:
                raise ProtocolError("name_taken", f"a plugin named {name!r} is connected")
            expected = self.plugin_tokens.get(name)
            if key is not None:
                pass  # the key's grant names this plugin: that is its credential
            elif name in self.contracts:
                if expected is None or token is None or not hmac.compare_digest(token, expected):
                    raise ProtocolError("unauthorized", f"plugin {name!r} is managed by the "
                                        "runtime: it needs the token the runtime gave its "
                                        "process")
            elif not self.config.allow_unmanaged_plugins:
                raise ProtocolError("unauthorized", f"no plugin named {name!r} is managed by "
                                    "this broker's runtime, and plugins started by hand are "
                                    "not allowed (start the broker with "
                                    "--allow-unmanaged-plugins)")
        elif role in (Role.ADMIN, Role.AGENT) and key is None:
            expected = self.config.admin_token
            if expected is None or token is None or not hmac.compare_digest(token, expected):
                raise ProtocolError("unauthorized", f"the {role.value} role needs the token "
                                    "from the broker's state directory (admin.token), or "
                                    "a CURVE key granted it")
        if role is Role.AGENT:
            validate_agent_name(name)
        session = Session(peer=peer, sid=f"s{self._new_id()}", role=role, name=name,
                          version=max(common), last_seen=self.clock(),
                          budget=QueueBudget(self.config.peer_queue_bytes))
        self.sessions[peer] = session
        if role is Role.AGENT:
            try:  # its registrations come with hello, so a reconnect re-registers at once
                self.agents.connected(session, params.get("plugins", []))
            except ProtocolError:
                del self.sessions[peer]
                raise
        log.info("session %s: %s %s", session.sid, role.value, name or "-")
        result = {
            "version": session.version, "session": session.sid, "instance": self.instance,
            "broker": f"plugboard {BROKER_VERSION}", "heartbeat_ms": self.config.heartbeat_ms,
            "timeout_ms": self.config.session_timeout_ms, "max_frame": self.config.max_frame,
        }
        if role is not Role.PLUGIN:
            session.state = SessionState.READY
            return result
        self.plugins[name] = session
        contract = self.contracts.get(name)
        config = dict(contract.config) if contract is not None else {}
        return _ReplyThen(result, lambda: self.request(  # init follows the hello reply
            session, "init", {"config": config, "name": name},
            lambda reply: self._on_init_reply(session, reply), self.config.init_timeout_s))

    def _check_key(self, key: str, role: Role, name: str | None) -> None:
        """On CURVE, the key decides: its role (or the lesser ``client``) and, for a
        plugin, the names it may use; what hello claims beyond that is refused."""
        grant = self.keys.lookup(key) if self.keys is not None else None
        if grant is None:
            raise ProtocolError("unauthorized", f"key {key} is not (or no longer) authorized")
        acting_agent = role is Role.AGENT and grant.role == Role.ADMIN.value
        if role.value != grant.role and role is not Role.CLIENT and not acting_agent:
            raise ProtocolError("unauthorized", f"key {key} is granted the role "
                                f"{grant.role!r}, not {role.value!r}")
        if role is Role.PLUGIN and name not in grant.names:
            raise ProtocolError("unauthorized", f"key {key} may be plugin "
                                + (", ".join(grant.names) or "of no name") + f", not {name!r}")

    def end_sessions_of_revoked_keys(self) -> int:
        """End every session whose key is no longer granted; returns how many."""
        ended = 0
        for peer, key in list(self._peer_keys.items()):
            session = self.sessions.get(peer)
            if session is not None and (self.keys is None or self.keys.lookup(key) is None):
                self.end_session(session, f"key {key} revoked")
                ended += 1
        return ended

    def _reload_keys(self, session: Session, params: dict[str, Any], msgid: int) -> Any:
        return self.reload_keys()

    def reload_keys(self) -> dict[str, Any]:
        """Re-read the authorized keys and end the sessions of keys no longer granted
        (``keys.reload``, and SIGHUP to the daemon)."""
        if self.keys is None:
            return {"ended": 0, "curve": False}
        self.keys.reload()
        return {"ended": self.end_sessions_of_revoked_keys(), "curve": True}

    def _on_init_reply(self, session: Session, reply: Response | None) -> None:
        if reply is None:
            if session.peer in self.sessions:
                log.warning("plugin %s did not answer init in time", session.name)
            return
        if reply.error is not None:
            log.warning("plugin %s refused init: %r", session.name, reply.error)
            self.end_session(session, "init failed")
            return
        session.state = SessionState.READY
        self.agents.plugin_ready(session)

    def _bye(self, session: Session, params: dict[str, Any]) -> Any:
        return {}

    def _ping(self, session: Session, params: dict[str, Any]) -> Any:
        return {"instance": self.instance,
                "time": Timestamp.from_unix_nano(self.wallclock())}

    def _list_sessions(self, session: Session, params: dict[str, Any]) -> Any:
        return {"sessions": [s.describe() for s in self.sessions.values()]}

    # -- properties -------------------------------------------------------------------

    def _declare(self, session: Session, params: dict[str, Any]) -> Any:
        if session.role is not Role.PLUGIN:
            raise ProtocolError("forbidden", "only plugins declare properties")
        name = validate_name(_param(params, "name", str))
        if namespace(name) != session.name:
            raise ProtocolError("forbidden", f"plugin {session.name!r} may declare only below "
                                f"{session.name}/, not {name!r}", name=name)
        type_text = _param(params, "type", str)
        try:
            vtype = ValueType(type_text)
        except ValueError:
            raise ProtocolError("invalid_params", f"unknown type {type_text!r}; types are "
                                + ", ".join(t.value for t in ValueType)) from None
        meta = parse_meta(vtype, params)
        contract = self.contracts.get(session.name or "")
        if contract is not None:
            export = contract.export_for(name, vtype)
            if export is None:
                raise ProtocolError("contract_violation", f"{name} is not exported by the "
                                    f"contract of plugin {session.name!r}", name=name)
            if export.type is not vtype and export.type is not ValueType.ANY:
                raise ProtocolError("contract_violation", f"{name} is exported as "
                                    f"{export.type.value}, not {vtype.value}", name=name)
        prop = self.store.by_name.get(name)
        if prop is not None:
            dormant = prop not in session.properties
            if prop.type is not vtype:
                where = "stored" if dormant else "declared"
                raise ProtocolError("type_mismatch", f"{name} is {where} as "
                                    f"{prop.type.value}, not {vtype.value}"
                                    + ("; the stored value is kept" if dormant else ""),
                                    name=name, stored_type=prop.type.value)
            session.properties[prop] = None
            restored = dormant and prop.meta.persist and meta.persist and prop.revision > 0
            unchanged, prop.meta = prop.meta == meta, meta
            if self.persistence is not None and not unchanged:  # what is stored is current
                if meta.persist:
                    self._persist(prop)
                else:
                    self._unpersist(name)
            if restored:
                # The stored value wins over the declaration's initial value.
                return {"handle": prop.handle, "revision": prop.revision, "value": prop.value,
                        "restored": True}
        else:
            prop = self.store.add(name, vtype, meta, session.name or "")
            session.properties[prop] = None
            self._index(prop)
            if "value" not in params:
                self._changed(prop)
        if "value" in params:
            self._write(prop, prop.check(params["value"]))
        return {"handle": prop.handle, "revision": prop.revision, "value": prop.value}

    def set_system(self, name: str, vtype: ValueType, value: Any, **meta: Any) -> None:
        """Declare or update a broker-owned property below ``system/`` (written if changed)."""
        prop = self.store.by_name.get(name)
        if prop is None:
            self.declare_system(name, vtype, value, **meta)
        elif prop.value != value or prop.revision == 0:
            self._write(prop, value)

    def declare_system(self, name: str, vtype: ValueType, value: Any, **meta: Any) -> Property:
        """Declare a broker-owned property below ``system/`` (used by SystemProperties)."""
        prop = self.store.add(name, vtype, parse_meta(vtype, meta), SYSTEM_NAMESPACE)
        self._index(prop)
        self._write(prop, value)
        return prop

    def _delete(self, session: Session, params: dict[str, Any]) -> Any:
        prop = self.store.resolve(params.get("target"))
        if prop.owner != session.name or session.role is not Role.PLUGIN:
            raise ProtocolError("forbidden", f"only its owner {prop.owner!r} deletes {prop.name}")
        self._remove_property(prop)
        if self.persistence is not None and prop.meta.persist:
            self._unpersist(prop.name)
        return {}

    def _remove_property(self, prop: Property) -> None:
        for sub in prop.subscriptions:
            sub.offer_removal(prop)
            self._dirty[sub] = None
        owner = self.plugins.get(prop.owner)
        if owner is not None:
            owner.properties.pop(prop, None)
        self.store.remove(prop)

    def _get(self, session: Session, params: dict[str, Any]) -> Any:
        return self._describe(self.store.resolve(params.get("target")))

    def _describe(self, prop: Property) -> dict[str, Any]:
        """A property as ``get`` and ``list`` answer it: ``live`` is false while it is
        dormant (persistent, its plugin away)."""
        owner = self.plugins.get(prop.owner)
        return {**prop.describe(), "live": owner is not None and prop in owner.properties
                or prop.owner == SYSTEM_NAMESPACE}

    def _list(self, session: Session, params: dict[str, Any]) -> Any:
        pattern = validate_pattern(_param(params, "pattern", str, "#"))
        limit = _param(params, "limit", int, 1000)
        after = _param(params, "after", str, "")
        if not 1 <= limit <= 10_000:
            raise ProtocolError("invalid_params", "limit must be 1..10000")
        names = sorted(p.name for p in self.store.matching(pattern) if p.name > after)
        items: list[dict[str, Any]] = []
        size = 0
        for name in names[:limit]:
            prop = self.store.by_name[name]
            items.append(self._describe(prop))
            size += len(name) + approx_size(prop.value)
            if size >= limits.LIST_PAGE_BYTES:
                break
        return {"items": items, "more": len(names) > len(items)}

    def _may_write(self, session: Session, prop: Property) -> None:
        if prop.owner == SYSTEM_NAMESPACE:
            raise ProtocolError("forbidden", f"{prop.name} belongs to the broker and is read-only")
        if session.role is Role.ADMIN:
            return
        if session.role is Role.PLUGIN and session.name == prop.owner:
            return
        allowed = prop.meta.writable_by
        if not _allows(allowed, session):
            raise ProtocolError("forbidden", f"{prop.name} is writable by its owner "
                                f"{prop.owner!r}" + (f" and {list(allowed)}" if allowed else "")
                                + f", not by {_who(session)}", name=prop.name)

    def _write(self, prop: Property, value: Any, at_ns: int | None = None) -> None:
        """Store a checked value at time ``at_ns`` (now by default: the items of one
        set_many share one time, like one atomic write)."""
        self.store.write(prop, value, self.wallclock() if at_ns is None else at_ns)
        if prop.meta.persist and self.persistence is not None:
            self._persist(prop)
        self._changed(prop)

    def _persist(self, prop: Property) -> None:
        assert self.persistence is not None
        self.persistence.put(Record(prop.name, prop.type, prop.meta.to_wire(), prop.value,
                                    prop.revision, Timestamp.from_unix_nano(prop.changed_ns)))
        self._stored_by_request = True

    def _unpersist(self, name: str) -> None:
        assert self.persistence is not None
        self.persistence.delete(name)
        self._stored_by_request = True

    def settle_store(self, failure: str | None = None) -> dict[int, bytes | None]:
        """The driver committed this turn's store changes (``failure`` None) or could
        not (``failure`` says why). On failure each reply that acknowledged such a change
        is to be replaced by an ``internal`` error saying so, in its place in the peer's
        order: the error frames are keyed by ``id`` of the frame :meth:`flush` returned.
        A write sent as a notification holds a place of its own in that order (under
        durability ``always``): its ``error`` on failure, None (nothing to send) once
        committed. The changes stay in effect (subscribers were told) and queued for the
        next commit: nothing is acknowledged that the store did not keep."""
        unstored, self._unstored = self._unstored, []
        unanswered, self._unstored_unanswered = self._unstored_unanswered, []
        if failure is None:
            return {id(place): None for place, _, _ in unanswered}
        error = _not_stored(failure).to_wire()
        replaced: dict[int, bytes | None] = {
            id(frame): encode(Response(msgid, error, None)) for frame, msgid in unstored}
        for place, method, target in unanswered:
            replaced[id(place)] = self._write_error(method, target, error)
        return replaced

    def restore(self, records: list[Record]) -> None:
        """Load stored persistent properties, dormant until their plugin declares them."""
        for record in records:
            if record.name in self.store.by_name:
                continue
            try:
                record.check()
            except ProtocolError as exc:  # written by another program, or by hand
                log.error("store: left out the record of %r, which no broker can restore: "
                          "%s", record.name, exc.message)
                continue
            try:
                meta = record.declaration()
            except ProtocolError as exc:  # the value is kept; its plugin declares anew
                log.warning("store: %r is restored without its declaration, which this "
                            "broker refuses: %s", record.name, exc.message)
                meta = parse_meta(record.type, {"persist": True})
            prop = self.store.add(record.name, record.type, meta, namespace(record.name))
            prop.value, prop.revision = record.value, record.revision
            prop.changed_ns = record.timestamp.to_unix_nano()
            self._index(prop)

    def _index(self, prop: Property) -> None:
        """Attach a new property to the subscriptions whose pattern matches it."""
        for sub in self.subscriptions.match(prop.name):
            sub.properties[prop] = None
            prop.watch(sub)

    def _changed(self, prop: Property) -> None:
        if not prop.subscriptions:
            return
        # Shared by every queue that keeps every change (policy all), built once at the
        # first; a property with one subscriber needs none (nor does policy latest).
        subs = prop.subscriptions
        written: Written | None = None
        for sub in subs:
            if written is None and sub.policy == POLICY_ALL and len(subs) > 1:
                written = Written(prop)
            if sub.offer(prop, written):
                self._dirty[sub] = None

    def _set(self, session: Session, params: dict[str, Any]) -> Any:
        if "value" not in params:
            raise ProtocolError("invalid_params", "missing parameter 'value'")
        prop = self.store.resolve(params.get("target"))
        self._may_write(session, prop)
        self._write(prop, prop.check(params["value"]))
        return {"handle": prop.handle, "revision": prop.revision}

    def _write_unanswered(self, session: Session, method: str, params: dict[str, Any]) -> None:
        """A write sent as a notification: applied as the request would be, with no
        reply; a refusal comes back as an ``error`` notification naming the write, and
        so does a write to the store while it is known to fail, or found to fail by
        this turn's commit (:meth:`settle_store`): it is in effect, not stored."""
        self._stored_by_request = False
        target = params.get("target")
        try:
            if method == "set":
                self._set(session, params)
            else:
                self._write_many(session, params)
            store = self.persistence
            if self._stored_by_request and store is not None:
                if store.failure is not None:
                    raise _not_stored(store.failure)
                if store.durability is Durability.ALWAYS:
                    # Its place in the peer's order, for the error should the commit fail.
                    place = self._write_error(method, target, _not_stored("").to_wire())
                    self._outbox.append((session.peer, place))
                    self._unstored_unanswered.append((place, method, target))
        except ProtocolError as exc:
            self._outbox.append((session.peer,
                                 self._write_error(method, target, exc.to_wire())))
        except Exception as exc:  # a bug here must not take every peer down
            log.exception("internal error applying %s", method)
            self._outbox.append((session.peer, self._write_error(
                method, target, {"code": "internal", "message": f"{type(exc).__name__}"})))

    @staticmethod
    def _write_error(method: str, target: Any, error: dict[str, Any]) -> bytes:
        """The ``error`` notification for a write sent as a notification, naming it."""
        return encode(Notification("error", {
            **error, "method": method,
            **({"target": target} if isinstance(target, str | int) else {})}))

    def _set_many(self, session: Session, params: dict[str, Any]) -> Any:
        revisions: list[int] = []
        self._write_many(session, params, revisions)
        return {"revisions": revisions}

    def _write_many(self, session: Session, params: dict[str, Any],
                    revisions: list[int] | None = None) -> None:
        """A ``set_many``'s items, all or nothing: every item is checked before any is
        written. ``revisions`` gets each item's revision as its write made it (a
        notification asks for none)."""
        items = _param(params, "items", list)
        checked = []
        for index, item in enumerate(items):
            try:
                if not isinstance(item, list) or len(item) < 2:
                    raise ProtocolError("invalid_params", "each item is [target, value]")
                prop = self.store.resolve(item[0])
                self._may_write(session, prop)
                checked.append((prop, prop.check(item[1])))
            except ProtocolError as exc:
                raise ProtocolError(exc.code, f"item {index}: {exc.message}; nothing was "
                                    "written", index=index, **exc.details) from None
        at_ns = self.wallclock()
        for prop, value in checked:
            self._write(prop, value, at_ns)
            if revisions is not None:
                revisions.append(prop.revision)

    # -- subscriptions ------------------------------------------------------------------

    def _subscribe(self, session: Session, params: dict[str, Any]) -> Any:
        self._check_room(session)
        pattern = validate_pattern(_param(params, "pattern", str))
        policy = _param(params, "policy", str, POLICY_LATEST)
        if policy not in (POLICY_LATEST, POLICY_ALL):
            raise ProtocolError("invalid_params", f"policy must be latest or all, not {policy!r}")
        queue_limit = _param(params, "queue_limit", int, limits.DEFAULT_QUEUE_LIMIT)
        if not 1 <= queue_limit <= limits.MAX_QUEUE_LIMIT:
            raise ProtocolError("invalid_params",
                                f"queue_limit must be 1..{limits.MAX_QUEUE_LIMIT}")
        min_interval_ms = _param(params, "min_interval_ms", int, 0)
        if not 0 <= min_interval_ms <= limits.MAX_MIN_INTERVAL_MS:
            raise ProtocolError("invalid_params", "min_interval_ms must be "
                                f"0..{limits.MAX_MIN_INTERVAL_MS}")
        deadband = _param(params, "deadband", (int, float), None)
        if deadband is not None and not 0 <= deadband < math.inf:  # NaN fails both
            raise ProtocolError("invalid_params", "deadband must be a finite number >= 0")
        current = _param(params, "current", bool, True)
        timestamp_ns = _param(params, "timestamp_ns", bool, False)
        sub = Subscription(self._new_id(), session.peer, pattern, policy=policy,
                           queue_limit=queue_limit, min_interval=min_interval_ms / 1000,
                           deadband=deadband, budget=session.budget,
                           timestamp_ns=timestamp_ns)
        # Index once here so a later set costs only its own subscribers.
        props = self.store.matching(pattern)
        for prop in props:
            sub.properties[prop] = None
            prop.watch(sub)
        self.subscriptions.add(pattern, sub)
        session.subscriptions[sub.sid] = sub

        def send_snapshot() -> None:
            for batch in sub.snapshot(props):
                self._notify(session.peer, "changes", batch.to_params())

        result = {"sub": sub.sid, "matched": len(props)}
        return _ReplyThen(result, send_snapshot) if current else result

    def _unsubscribe(self, session: Session, params: dict[str, Any]) -> Any:
        sid = _param(params, "sub", int)
        sub = session.subscriptions.pop(sid, None)
        if sub is None:
            raise ProtocolError("not_found", f"no subscription {sid} in this session")
        self._drop_subscription(sub)
        return {}

    def _drop_subscription(self, sub: Subscription) -> None:
        sub.discard()
        self.subscriptions.remove(sub.pattern, sub)
        for prop in sub.properties:
            prop.unwatch(sub)
        sub.properties.clear()
        self._dirty.pop(sub, None)

    # -- calls to plugin methods ----------------------------------------------------------

    def _call(self, session: Session, params: dict[str, Any], msgid: int) -> Any:
        """Forward a call to the plugin that exports the method; answer when it does."""
        name = validate_plugin_name(_param(params, "plugin", str))
        method = _param(params, "method", str)
        args = _param(params, "params", dict, {})
        timeout_ms = _param(params, "timeout_ms", int, limits.DEFAULT_CALL_TIMEOUT_MS)
        if not 1 <= timeout_ms <= limits.MAX_CALL_TIMEOUT_MS:
            raise ProtocolError("invalid_params", "timeout_ms must be 1.."
                                f"{limits.MAX_CALL_TIMEOUT_MS}")
        contract = self.contracts.get(name)
        spec = contract.method_for(method) if contract is not None else None
        if spec is None:
            raise ProtocolError("not_found", f"plugin {name!r} exports no method {method!r}",
                                plugin=name, method=method)
        self._may_call(session, name, spec)
        checked = _call_params(name, spec, args)
        target = self.plugins.get(name)
        if target is None or target.state is not SessionState.READY:
            raise ProtocolError("unavailable", f"plugin {name!r} is not connected and ready",
                                plugin=name)
        if session.calls >= limits.MAX_CALLS_IN_FLIGHT:
            raise ProtocolError("limit_exceeded", f"this session has {session.calls} calls "
                                "waiting for answers already", plugin=name)
        peer, label = session.peer, f"{name}.{method}"
        session.calls += 1

        def answered(reply: Response | None) -> None:
            session.calls -= 1
            if reply is None:
                if self.sessions.get(target.peer) is target:
                    error = ProtocolError("timeout", f"{label} did not answer within "
                                          f"{timeout_ms} ms", plugin=name)
                else:
                    error = ProtocolError("unavailable", f"{label}: the plugin's session "
                                          "ended before it answered", plugin=name)
                self.complete(peer, msgid, error=error)
            elif reply.error is not None:
                code = reply.error.get("code")
                self.complete(peer, msgid, error=ProtocolError(
                    "call_failed", f"{label} failed: {reply.error.get('message', '')}",
                    plugin=name, plugin_code=code if isinstance(code, str) else "internal"))
            else:
                result = reply.result.get("result") if isinstance(reply.result, dict) else None
                try:
                    result = check_value(spec.result, result)
                except ProtocolError as exc:
                    self.complete(peer, msgid, error=ProtocolError(
                        "contract_violation", f"{label} returned a value its contract does "
                        f"not allow: {exc.message}", plugin=name))
                    return
                self.complete(peer, msgid, {"result": result})

        self.request(target, "call", {"method": method, "params": checked,
                                      "caller": session.name or session.sid},
                     answered, timeout_ms / 1000)
        return DEFERRED

    def _may_call(self, session: Session, plugin: str, spec: MethodSpec) -> None:
        if session.role is Role.ADMIN or (session.role is Role.PLUGIN and session.name == plugin):
            return
        allowed = spec.callable_by
        if not _allows(allowed, session):
            raise ProtocolError("forbidden", f"{plugin}.{spec.name} is callable by admins"
                                + (f" and {list(allowed)}" if allowed else "")
                                + f", not by {_who(session)}", plugin=plugin, method=spec.name)

    # -- messages between peers -----------------------------------------------------------

    def _payload(self, params: dict[str, Any]) -> bytes:
        return _param(params, "payload", bytes)  # type: ignore[no-any-return]

    def _send_message(self, session: Session, params: dict[str, Any]) -> Any:
        to = _param(params, "to", str)
        payload = self._payload(params)
        topic = _param(params, "topic", str, None)
        target = self.plugins.get(to)
        if target is None:
            validate_plugin_name(to)
            raise ProtocolError("not_found", f"no plugin {to!r} is connected", to=to)
        message = {"from": session.name or session.sid, "payload": payload}
        if topic is not None:
            message["topic"] = validate_name(topic, "topic")
        self._notify(target.peer, "message", message)
        return {}

    def _publish(self, session: Session, params: dict[str, Any]) -> Any:
        topic = validate_name(_param(params, "topic", str), "topic")
        if namespace(topic) == SYSTEM_NAMESPACE:
            self.agents.may_publish(session, topic)
        message = {"from": session.name or session.sid, "topic": topic,
                   "payload": self._payload(params)}
        listeners = self.listeners.match(topic)
        if topic.startswith(LOG_TOPIC):  # plugins' output may hold secrets: admins only
            listeners = [(s, lid) for s, lid in listeners if s.role is Role.ADMIN]
        for listener, lid in listeners:
            self._notify(listener.peer, "message", {**message, "listen": lid})
        return {"delivered": len(listeners)}

    def _listen(self, session: Session, params: dict[str, Any]) -> Any:
        self._check_room(session)
        pattern = validate_pattern(_param(params, "pattern", str))
        lid = self._new_id()
        session.listens[lid] = pattern
        self.listeners.add(pattern, (session, lid))
        return {"listen": lid}

    def _unlisten(self, session: Session, params: dict[str, Any]) -> Any:
        lid = _param(params, "listen", int)
        pattern = session.listens.pop(lid, None)
        if pattern is None:
            raise ProtocolError("not_found", f"no listen {lid} in this session")
        self.listeners.remove(pattern, (session, lid))
        return {}


def _not_stored(failure: str) -> ProtocolError:
    return ProtocolError("internal", f"not stored: {failure}; the write is in effect and is "
                         "stored by the next commit that succeeds")


def _news_first(replies: list[tuple[bytes, bytes]], news: list[tuple[bytes, bytes]]
                ) -> list[tuple[bytes, bytes]]:
    """This turn's change batches ahead of the replies to other peers: a subscriber's
    notification does not wait behind the writer's reply (on a busy host the writer
    waking for it competes with the subscriber waking). Each peer's own frames keep
    their order, so a subscriber's replies still precede its changes."""
    subscribers = {peer for peer, _ in news}
    first = [frame for frame in replies if frame[0] in subscribers]
    if len(first) == len(replies):
        return replies + news
    return first + news + [frame for frame in replies if frame[0] not in subscribers]


def _allows(allowed: tuple[str, ...], session: Session) -> bool:
    """The ``writable_by`` / ``callable_by`` rule: plugin names, ``plugins``,
    ``clients`` or ``*`` (owners and admins are checked by the caller)."""
    if session.role is Role.PLUGIN:
        return bool({WRITERS_ANY, WRITERS_PLUGINS, session.name} & set(allowed))
    return WRITERS_ANY in allowed or (session.role is Role.CLIENT
                                      and WRITERS_CLIENTS in allowed)


def _who(session: Session) -> str:
    return f"plugin {session.name!r}" if session.role is Role.PLUGIN else \
        f"a {session.role.value}"


def _call_params(plugin: str, spec: MethodSpec, given: dict[str, Any]) -> dict[str, Any]:
    """The call's parameters checked against the declaration: all present, none unknown,
    each of its declared type (its error names the parameter)."""
    unknown = sorted(set(given) - set(spec.params))
    missing = [p for p in spec.params if p not in given]
    if unknown or missing:
        raise ProtocolError("invalid_params", f"{plugin}.{spec.name} takes "
                            f"({', '.join(f'{k}: {v.value}' for k, v in spec.params.items())})"
                            + (f"; unknown: {', '.join(unknown)}" if unknown else "")
                            + (f"; missing: {', '.join(missing)}" if missing else ""))
    checked = {}
    for param, vtype in spec.params.items():
        try:
            checked[param] = check_value(vtype, given[param])
        except ProtocolError as exc:
            raise ProtocolError(exc.code, f"{plugin}.{spec.name}: parameter {param!r}: "
                                f"{exc.message}", param=param, **exc.details) from None
    return checked


@dataclass(frozen=True, slots=True)
class _ReplyThen:
    """A result whose reply must go out before what ``then`` sends (the snapshot)."""

    result: Any
    then: Callable[[], None]
