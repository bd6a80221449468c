"""The socket loop: moves frames between one ROUTER socket and the sans-IO core.

The socket is a plain (non-asyncio) zmq socket whose file descriptor is watched by
the asyncio loop. ZeroMQ's descriptor is edge-triggered, so every pass drains up to a
batch of messages with NOBLOCK, applies them, flushes, and re-checks ``EVENTS``
before returning; nothing else reads ``EVENTS``. Receives are never cancelled, so
no message is lost to a cancelled await (pyzmq #1925).

Disconnects are learned from ZeroMQ itself, not from a timeout: a socket monitor
reports ``DISCONNECTED`` with the connection's file descriptor, and the first message
of every peer tells which descriptor it came through (``SRCFD``). (``ROUTER_NOTIFY``
would say it directly but is a draft option that released libzmq builds lack.) The
monitor is drained when its descriptor signals, and always before a new peer's first
message is taken in: libzmq queues the event before it closes the descriptor, so a new
connection that reuses the number is never mistaken for the old one.

Every ZeroMQ call costs microseconds, so a pass makes as few as it can. A pass's
first messages are read while ``EVENTS`` says one waits: a lone message after an idle
moment is then read with no failing receive (a raised ``zmq.Again`` costs more, cold,
than two ``EVENTS``). From the third message on, a burst, the ROUTER is read until a
receive fails: one failure per pass instead of ``EVENTS`` (1.6 µs) per message. A
failed receive has drained the socket's command mailbox, so the descriptor signals
again on the next message; ``EVENTS`` is still asked after the sends, which may
consume that signal. A known peer's message is read with three calls, and an idle
monitor is not touched.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import struct
import sys
from dataclasses import dataclass, field

import zmq

from plugboard.protocol.errors import ConfigError, StoreError
from plugboard.sdk._socket import LARGE_FRAME, Unsent

from .core import BrokerCore, CoreConfig
from .security import ZAP_DOMAIN
from .statedir import check_endpoint
from .store import Durability, Store

log = logging.getLogger(__name__)

# Plain ints: pyzmq's flags are enum members, and every | and & on them builds a new
# member in Python, which the per-message path would pay several times.
_POLLIN = int(zmq.POLLIN)
_EVENTS = int(zmq.EVENTS)
_RCVMORE = int(zmq.RCVMORE)
_NOBLOCK = int(zmq.NOBLOCK)
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)

STORE_RETRY_S = 1.0
"""How soon a commit the store refused (a full disk) is tried again, writes or not."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """Socket settings of the broker."""

    endpoints: tuple[str, ...]
    """Where to bind; ``tcp://127.0.0.1:*`` picks a free port (see ``endpoints``)."""
    core: CoreConfig = field(default_factory=CoreConfig)
    send_hwm: int = 1000
    """Frames ZeroMQ queues per peer; past it the core keeps them (within the peer's
    ``peer_queue_bytes``) and holds back new changes for it. Small, because ZeroMQ
    counts frames, not bytes: this times LARGE_FRAME bounds what it holds of smaller
    frames (a change batch closes at ~16 KiB); larger ones are paced by what left."""
    receive_batch: int = 1000
    """Most messages applied before one flush."""
    receive_hwm: int = 64
    """Frames ZeroMQ reads ahead per peer before TCP's flow control holds the peer back.
    It counts frames, not bytes: a peer that sends faster than the broker applies makes
    it hold this times ``max_frame`` at most (256 MiB at the 4 MiB default; with 1,000,
    a peer flooding 3 MB writes took the broker to 753 MiB, 210 MiB with 64). One set per
    message as notifications ran ~9 % slower than with 1,000 in A/B runs; set and
    set_many no slower."""
    batch_ms: int = 100
    """Under durability ``batch``: the longest a persistent write waits to be committed."""
    curve_secret_key: str | None = None
    """The broker's CURVE secret key (Z85). Set: tcp endpoints speak CURVE only, every
    key checked by the core's KeyRing. None: tcp is plain (``--insecure``)."""
    handshake_ms: int = 5000
    """A connection that has not finished its ZeroMQ handshake by then is closed."""


class _Listener:
    """One ROUTER socket. Peers are named by a one-byte socket index plus their routing
    id, so the two sockets' routing ids cannot collide in the core."""

    def __init__(self, index: int, sock: zmq.Socket[bytes]) -> None:
        self.prefix = bytes([index])
        self.sock = sock
        self.monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        self.monitor.setsockopt(zmq.RCVHWM, 0)  # a lost event would leave a session behind
        self.fd = int(sock.getsockopt(zmq.FD))
        self.monitor_fd = int(self.monitor.getsockopt(zmq.FD))
        self.monitor_due = True
        """The monitor's descriptor signalled since it was last drained."""
        self.woken = False
        """The socket's descriptor signalled: a frame most likely waits."""

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)


class BrokerServer:
    """Binds the ROUTER sockets, pumps frames through the core until :meth:`stop`."""

    def __init__(self, config: ServerConfig, core: BrokerCore | None = None,
                 store: Store | None = None) -> None:
        self.config = config
        self.core = core or BrokerCore(config.core)
        self.store = store
        if store is not None:
            self.core.restore(store.load())
            self.core.persistence = store
        self._commit_timer: asyncio.TimerHandle | None = None
        self.endpoints: list[str] = []
        """The endpoints actually bound (with the port a ``*`` picked)."""
        self.ready = asyncio.Event()
        self._stop = asyncio.Event()
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._listeners: list[_Listener] = []
        self._socks: dict[int, zmq.Socket[bytes]] = {}
        """Each listener's socket by the index byte its peers' ids begin with."""
        self.zap: zmq.Socket[bytes] | None = None
        """The ZAP handler's socket (CURVE only); closing it refuses every new tcp peer."""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._pump_scheduled = False
        self._plugins_gone = asyncio.Event()
        self._peer_at: dict[int, bytes] = {}
        """Connection file descriptor → the peer using it."""
        self._fd_of: dict[bytes, int] = {}
        self._in_zmq: dict[bytes, Unsent] = {}
        """Peers with large frames handed to ZeroMQ (LARGE_FRAME), each frame only while
        the peer's earlier ones have left ZeroMQ's queue, up to a quarter of its
        ``peer_queue_bytes`` (one at least): 1,000 frames of 4 MiB to a peer that does
        not read would be 4 GB held for it."""
        self._large_allowance = max(1, self.config.core.peer_queue_bytes // 4)

    def poke(self) -> None:
        """Have the loop flush soon: for changes made to the core outside a pump."""
        if not self._pump_scheduled and self._listeners:
            self._pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._pump)

    def stop(self) -> None:
        """Begin an orderly shutdown (safe to call from a signal handler)."""
        self._stop.set()

    def _router(self, curve: bool) -> zmq.Socket[bytes]:
        assert self._ctx is not None
        sock = self._ctx.socket(zmq.ROUTER)
        core_config = self.config.core
        # Options apply to later binds only, so all are set first.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        sock.setsockopt(zmq.LINGER, 0)
        # One rule for oversize frames: libzmq drops the connection (the peer's socket
        # reconnects, its session is ended); the broker never reads such a frame.
        sock.setsockopt(zmq.MAXMSGSIZE, core_config.max_frame)
        sock.setsockopt(zmq.SNDHWM, self.config.send_hwm)
        sock.setsockopt(zmq.RCVHWM, self.config.receive_hwm)
        # A dead host on tcp is found by the kernel's keepalive, not ZMTP heartbeats:
        # libzmq 4.3 cancels a connection's heartbeat timer by a linear search over
        # every timer, so heartbeats on N connections cost O(N²) in its one I/O thread
        # (65 % of a core at 8,000 idle connections here, and no more connections
        # admitted past ~8,600). Sessions still end after session_timeout_ms of silence.
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, max(1, core_config.session_timeout_ms // 1000))
        sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 1)
        sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)
        sock.setsockopt(zmq.HANDSHAKE_IVL, self.config.handshake_ms)
        # Thousands of peers reconnecting at once (a broker restart): libzmq's listen
        # backlog of 100 would leave most waiting on TCP's SYN retries (1 s, 3 s, 7 s...).
        sock.setsockopt(zmq.BACKLOG, 4096)
        if curve:
            assert self.config.curve_secret_key is not None
            sock.curve_server = True
            sock.curve_secretkey = self.config.curve_secret_key.encode()
            sock.zap_domain = ZAP_DOMAIN.encode()
            sock.setsockopt(zmq.ZAP_ENFORCE_DOMAIN, 1)  # no handler: nobody gets in
        return sock

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        self._ctx = zmq.Context()
        curve = self.config.curve_secret_key is not None
        plain = [e for e in self.config.endpoints if not (curve and e.startswith("tcp://"))]
        secured = [e for e in self.config.endpoints if e not in plain]
        fds: list[int] = []
        try:
            if secured:
                self._start_zap()
                assert self.zap is not None
                loop.add_reader(int(self.zap.getsockopt(zmq.FD)), self._answer_zap)
                self._answer_zap()  # the descriptor is edge-triggered: drain once to arm it
            for index, (endpoints, secure) in enumerate(((plain, False), (secured, True))):
                if not endpoints:
                    continue
                listener = _Listener(index, self._router(secure))
                self._listeners.append(listener)
                self._socks[index] = listener.sock
                for endpoint in endpoints:
                    try:
                        listener.sock.bind(check_endpoint(endpoint))
                    except zmq.ZMQError as exc:  # a port in use, an address not this host's
                        why = zmq.strerror(exc.errno or 0)
                        raise ConfigError(f"cannot listen on {endpoint}: {why}") from exc
                    self.endpoints.append(listener.sock.getsockopt_string(zmq.LAST_ENDPOINT))
                fds += [listener.fd, listener.monitor_fd]
                loop.add_reader(listener.fd, self._readable, listener)
                loop.add_reader(listener.monitor_fd, self._monitor_signalled, listener)
            self._pump()
            log.info("broker %s listening on %s%s", self.core.instance,
                     ", ".join(self.endpoints), " (tcp with CURVE)" if secured else "")
            self.ready.set()
            await self._stop.wait()
            await self._shutdown()
        finally:
            for fd in fds:
                loop.remove_reader(fd)
            if self._timer is not None:
                self._timer.cancel()
            if self._commit_timer is not None:
                self._commit_timer.cancel()
            if self.store is not None:
                self.store.close()  # commits what is queued (all of it, under "off")
            listeners, self._listeners = self._listeners, []  # a pump still scheduled
            for listener in listeners:                       # finds nothing to do
                listener.close()
            self.stop_authenticator()
            self._ctx.term()

    def _start_zap(self) -> None:
        """Bind the ZAP handler before any CURVE socket binds (pitfall: CURVE with no
        handler authenticates nobody, or with ZAP_ENFORCE_DOMAIN everybody is refused)."""
        assert self._ctx is not None
        if self.core.keys is None:
            raise ConfigError("CURVE needs the broker's key ring (core.keys)")
        zap = self._ctx.socket(zmq.REP)
        zap.setsockopt(zmq.LINGER, 0)
        try:
            zap.bind("inproc://zeromq.zap.01")
        except zmq.ZMQError as exc:
            zap.close(linger=0)
            raise ConfigError(f"cannot start the CURVE authenticator: {exc}") from exc
        self.zap = zap

    def _answer_zap(self) -> None:
        zap, keys = self.zap, self.core.keys
        assert zap is not None and keys is not None
        while True:
            try:
                request = zap.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError:  # closed
                return
            try:
                reply = keys.zap_reply(request)
            except Exception:  # fail closed: a bug here admits nobody
                log.exception("the CURVE authenticator failed; refusing the connection")
                reply = [b"1.0", request[1] if len(request) > 1 else b"", b"500",
                         b"authenticator error", b"", b""]
            zap.send_multipart(reply)

    def stop_authenticator(self) -> None:
        """Stop answering ZAP: from then on no new tcp peer gets in (ZAP_ENFORCE_DOMAIN)."""
        if self.zap is not None and not self.zap.closed:
            asyncio.get_running_loop().remove_reader(int(self.zap.getsockopt(zmq.FD)))
            self.zap.close(linger=0)

    async def _shutdown(self) -> None:
        """Ask plugins to end, keep serving their replies, give up after end_timeout_s."""
        self.core.begin_shutdown()
        self._pump()
        try:
            # The core's own deadline ends an unanswered `end`; this is a backstop.
            await asyncio.wait_for(self._plugins_gone.wait(),
                                   self.config.core.end_timeout_s + 1.0)
        except TimeoutError:
            log.warning("plugins did not answer end in time")
        log.info("broker stopped")

    def _readable(self, listener: _Listener) -> None:
        """The listener's descriptor signalled: most often a frame waits, so the pass
        receives at once instead of asking EVENTS first (2 µs less a pass, paced, in
        bench/broker_pass.py; a wake-up with nothing to read costs a failed receive)."""
        listener.woken = True
        self._pump()

    def _pump(self) -> None:
        """Drain a batch, run timers, send what the core produced, re-arm."""
        self._pump_scheduled = False
        if not self._listeners:  # closed already
            return
        core = self.core
        gone = self._disconnected()
        known = self._fd_of
        for listener in self._listeners:
            sock, prefix = listener.sock, listener.prefix
            woken, listener.woken = listener.woken, False
            for count in range(self.config.receive_batch):
                if woken and count == 0:
                    try:
                        peer = prefix + sock.recv(_NOBLOCK)
                    except zmq.Again:
                        break
                elif count < 2:  # alone after an idle moment: no failing receive
                    if not int(sock.getsockopt(_EVENTS)) & _POLLIN:
                        break
                    peer = prefix + sock.recv(_NOBLOCK)
                else:  # a burst: no EVENTS per message
                    try:
                        peer = prefix + sock.recv(_NOBLOCK)
                    except zmq.Again:
                        break
                if peer in known:  # the frame after the routing id (a second one is an error)
                    # As a Frame, whose `more` is cheaper than asking RCVMORE (0.5 µs a
                    # message warm; 5 % of the broker's CPU per set at full speed).
                    part = sock.recv(_NOBLOCK, copy=False)
                    frames = [part.bytes]
                    while part.more:
                        part = sock.recv(_NOBLOCK, copy=False)
                        frames.append(part.bytes)
                else:
                    frames = self._first_message(listener, peer, gone)
                core.receive(peer, frames)
        for peer in gone:
            core.peer_gone(peer, "connection closed")
        core.tick()
        outgoing = self._persist(core.flush())
        self._send(outgoing)
        for peer in core.take_silent():
            self._hang_up(peer)
        self._arm_timer(min(core.next_deadline(), core.retry_deadline()))
        if core.shutting_down and core.shutdown_complete:
            self._plugins_gone.set()
        if not self._pump_scheduled:
            for listener in self._listeners:
                if int(listener.sock.getsockopt(_EVENTS)) & _POLLIN:
                    # More is waiting: yield to the loop first so other tasks run too.
                    self._pump_scheduled = True
                    asyncio.get_running_loop().call_soon(self._pump)
                    break

    def _monitor_signalled(self, listener: _Listener) -> None:
        listener.monitor_due = True
        self.poke()

    def _disconnected(self) -> list[bytes]:
        """Peers whose connection ZeroMQ reported closed since the last pass."""
        gone: list[bytes] = []
        for listener in self._listeners:
            if listener.monitor_due:
                self._drain_monitor(listener, gone)
        return gone

    def _drain_monitor(self, listener: _Listener, gone: list[bytes]) -> None:
        listener.monitor_due = False
        monitor = listener.monitor
        while True:
            try:
                event = monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            # Frame 1 is 16-bit event id + 32-bit value (the fd for DISCONNECTED).
            if len(event[0]) >= 6 and int.from_bytes(event[0][:2], sys.byteorder) == \
                    zmq.EVENT_DISCONNECTED:
                peer = self._peer_at.pop(int.from_bytes(event[0][2:6], sys.byteorder), None)
                if peer is not None:
                    self._fd_of.pop(peer, None)
                    self._in_zmq.pop(peer, None)
                    gone.append(peer)

    def _hang_up(self, peer: bytes) -> None:
        """Close the tcp connection of a peer whose session ended for silence. ZeroMQ
        has no call for it, so the connection's socket is shut down under libzmq, which
        then closes it as if the peer had (SO_LINGER 0: at once, with a reset, not
        after retransmitting what the peer never acknowledged). The monitor is drained
        first, so the descriptor is still this peer's. An ipc peer is on this host: it
        is left alone, its process's end closes its connection."""
        listener = next(lst for lst in self._listeners if lst.prefix[0] == peer[0])
        gone: list[bytes] = []
        self._drain_monitor(listener, gone)
        for closed in gone:
            self.core.peer_gone(closed, "connection closed")
        fd = self._fd_of.get(peer)
        if fd is None:
            return
        try:
            conn = socket.socket(fileno=os.dup(fd))
        except OSError:  # closed meanwhile
            return
        with conn:
            if conn.family not in (socket.AF_INET, socket.AF_INET6):
                return
            try:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:  # the connection is going already
                return
        log.debug("closed the connection of silent peer %r", peer)

    def _first_message(self, listener: _Listener, peer: bytes, gone: list[bytes]
                       ) -> list[bytes]:
        """The frames after a new peer's routing id; learns its connection descriptor
        (after the disconnects that may have freed it)."""
        sock = listener.sock
        self._drain_monitor(listener, gone)
        frames: list[bytes] = []
        if sock.getsockopt(_RCVMORE):
            first = sock.recv(copy=False)
            fd = int(first.get(zmq.SRCFD))
            if fd >= 0:  # inproc has no descriptor
                previous = self._peer_at.get(fd)
                if previous is not None:
                    # One descriptor, one connection: the previous one is gone.
                    self._fd_of.pop(previous, None)
                    self._in_zmq.pop(previous, None)
                    self.core.peer_gone(previous, "connection closed")
                self._peer_at[fd] = peer
                self._fd_of[peer] = fd
            key = first.get("User-Id") if sock.curve_server else None
            if key:  # the ZAP handler named the connection by its CURVE key
                self.core.identify(peer, str(key))
            frames.append(first.bytes)
        while sock.getsockopt(_RCVMORE):
            frames.append(sock.recv())
        return frames

    def _persist(self, outgoing: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """Group commit: under ``always`` this turn's writes are committed before its
        replies are sent; under ``batch`` a timer commits them within batch_ms. A reply
        whose write the store could not keep (or, under ``batch``, is known to fail to
        keep) becomes an error in its place."""
        store = self.store
        if store is None or not store.dirty:
            return outgoing
        # While the store fails, only its retry timer tries: a busy broker does not pay
        # a failing transaction every turn.
        failure = store.failure
        if store.durability is Durability.ALWAYS:
            failure = failure or self._commit()
        elif store.durability is Durability.BATCH:
            self._commit_later(self.config.batch_ms / 1000)
        replaced = self.core.settle_store(failure)
        if replaced:
            settled = ((peer, replaced.get(id(frame), frame)) for peer, frame in outgoing)
            outgoing = [(peer, frame) for peer, frame in settled if frame is not None]
        return outgoing

    def _commit(self) -> str | None:
        """Commit what is queued; None, or why the store could not (a full disk). It
        keeps what it could not write and is tried again every STORE_RETRY_S, so writes
        that were in effect when the disk filled are stored once it has room."""
        store = self.store
        assert store is not None
        failing = store.failure is not None
        try:
            store.commit()
        except StoreError as exc:
            if not failing:
                log.error("%s; until it can, writes to persistent properties are in effect "
                          "but answered with an error", exc)
            self._commit_later(STORE_RETRY_S)
            return store.failure
        if failing:
            log.warning("store %s writes again", store.path)
        return None

    def _commit_later(self, delay: float) -> None:
        if self._commit_timer is None:
            self._commit_timer = asyncio.get_running_loop().call_later(delay, self._commit_due)

    def _commit_due(self) -> None:
        self._commit_timer = None
        if self.store is not None and self.store.dirty:
            self._commit()

    def _send(self, frames: list[tuple[bytes, bytes]]) -> None:
        core = self.core
        socks = self._socks
        large = LARGE_FRAME
        while frames:
            gone: set[bytes] = set()
            stuck: dict[bytes, list[bytes]] = {}
            for peer, frame in frames:
                if peer in gone:
                    continue
                held = stuck.get(peer)
                if held is not None:  # keep this peer's order: after the refused one
                    held.append(frame)
                    continue
                try:
                    # Two sends, not send_multipart (whose wrapper costs more than
                    # both): a refusal comes at the routing frame, before any is queued.
                    sock = socks[peer[0]]
                    if len(frame) >= large:
                        if not self._send_large(sock, peer, frame):
                            stuck[peer] = [frame]
                        continue
                    sock.send(peer[1:], _MORE_NOBLOCK)
                    sock.send(frame, _NOBLOCK)
                except zmq.Again:
                    # ROUTER would drop silently at the peer's HWM: the core keeps it.
                    stuck[peer] = [frame]
                except zmq.ZMQError as exc:
                    if exc.errno != errno.EHOSTUNREACH:
                        raise
                    gone.add(peer)
            for peer, held in stuck.items():
                core.blocked(peer, held)
            for peer in gone:
                self._in_zmq.pop(peer, None)
                core.peer_gone(peer, "connection closed")
            frames = core.flush() if gone else []

    def _send_large(self, sock: zmq.Socket[bytes], peer: bytes, frame: bytes) -> bool:
        """Hand ZeroMQ a large frame if the peer's allowance has room (False: keep it,
        as if ZeroMQ had refused it; the core offers it again). zmq.Again as send."""
        queued = self._in_zmq.get(peer)
        if queued is not None and not queued.admits(len(frame), self._large_allowance):
            return False
        sock.send(peer[1:], _MORE_NOBLOCK)
        tracker = sock.send(frame, _NOBLOCK, copy=False, track=True)
        if queued is None:
            queued = self._in_zmq[peer] = Unsent()
        queued.track(tracker, len(frame))
        return True

    def _arm_timer(self, deadline: float) -> None:
        if self._timer is not None and self._timer_at == deadline:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = asyncio.get_running_loop().call_at(deadline, self._timer_due)

    def _timer_due(self) -> None:
        """The timer fired: forget it before the pass, which arms the next one. uvloop
        fires up to a millisecond early (its clock counts milliseconds); the pass then
        finds nothing due and must arm the same deadline again, not take it as armed."""
        self._timer = None
        self._pump()
