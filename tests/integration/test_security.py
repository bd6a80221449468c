"""CurveZMQ on tcp fails closed: each way in that should be shut, tried over real sockets.

The broker runs in the test's event loop (so its core's counters can be read); every
blocking socket wait runs off the loop, so the broker keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import os
import selectors
import signal
import socket
import stat
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import msgpack
import psutil
import pytest
import zmq

from plugboard.broker import BrokerServer, CoreConfig, ServerConfig
from plugboard.broker.security import Grant, KeyRing, write_authorized
from plugboard.runtime.supervisor import PluginState
from plugboard.sdk import Client, ConnectionFailed, NotAllowed
from plugboard.sdk._keys import CurveKeys

from .conftest import Processes
from .processes import PLUGBOARD, ROOT, make_plugin, short_tmpdir, start_agent, stop_agent

pytestmark = pytest.mark.integration
HANDSHAKE_MS = 1000


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def pair() -> tuple[str, str]:
    public, secret = zmq.curve_keypair()
    return public.decode(), secret.decode()


@dataclass
class Secured:
    server: BrokerServer
    tcp: str
    server_key: str
    client: tuple[str, str]
    admin: tuple[str, str]
    folder: Path

    def keys(self, which: tuple[str, str]) -> CurveKeys:
        return CurveKeys(self.server_key, *which)

    def dealer(self, ctx: zmq.Context[zmq.Socket[bytes]], which: tuple[str, str] | None,
               routing_id: bytes | None = None) -> zmq.Socket[bytes]:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        if routing_id is not None:
            sock.setsockopt(zmq.ROUTING_ID, routing_id)
        if which is not None:
            self.keys(which).apply(sock)
        sock.connect(self.tcp)
        return sock


@pytest.fixture
async def secured() -> AsyncIterator[Secured]:
    folder = short_tmpdir()
    server_public, server_secret = pair()
    client, admin = pair(), pair()
    write_authorized(folder / "authorized_keys.json", [
        Grant(client[0], "client"), Grant(admin[0], "admin")])
    server = BrokerServer(ServerConfig(
        endpoints=("tcp://127.0.0.1:*", f"ipc://{folder}/b.sock"),
        curve_secret_key=server_secret, handshake_ms=HANDSHAKE_MS,
        core=CoreConfig(session_timeout_ms=60_000, heartbeat_ms=200)))
    server.core.keys = KeyRing(folder)
    serving = asyncio.create_task(server.serve())
    await server.ready.wait()
    tcp = next(e for e in server.endpoints if e.startswith("tcp://"))
    try:
        yield Secured(server, tcp, server_public, client, admin, folder)
    finally:
        server.stop()
        await serving


def hello(role: str = "client", **extra: object) -> bytes:
    return msgpack.packb([0, 1, "hello", {"versions": [1], "role": role, **extra}])


async def answered(sock: zmq.Socket[bytes], within: float) -> bool:
    return bool(await asyncio.to_thread(sock.poll, int(within * 1000)))


async def test_unknown_null_plain_and_garbage_peers_reach_nothing(secured: Secured) -> None:
    core = secured.server.core
    before = core.messages_in
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    raw = socket.create_connection(("127.0.0.1", int(secured.tcp.rsplit(":", 1)[1])))
    try:
        unknown = secured.dealer(ctx, pair())
        null = secured.dealer(ctx, None)
        plain = ctx.socket(zmq.DEALER)
        plain.setsockopt(zmq.LINGER, 0)
        plain.plain_username, plain.plain_password = b"admin", b"admin"
        plain.connect(secured.tcp)
        for sock in (unknown, null, plain):
            sock.send(hello("admin"))
        raw.sendall(os.urandom(4096))
        for sock in (unknown, null, plain):
            assert not await answered(sock, 1.0)
        # The broker closed the garbage connection without a word.
        raw.settimeout(HANDSHAKE_MS / 1000 + 1)
        assert await asyncio.to_thread(_read_until_closed, raw) == b""
        assert core.messages_in == before and not core.sessions
        async with Client(secured.tcp, curve=secured.keys(secured.client)) as good:
            assert (await good.request("ping"))["instance"] == core.instance
    finally:
        raw.close()
        ctx.destroy(linger=0)


def _read_until_closed(sock: socket.socket) -> bytes:
    """What the peer sends until it closes; the broker's ZMTP greeting is skipped."""
    while True:
        try:
            data = sock.recv(4096)
        except ConnectionResetError:
            return b""
        if not data:
            return data


async def test_without_the_authenticator_nobody_gets_in(secured: Secured) -> None:
    async with Client(secured.tcp, curve=secured.keys(secured.client)) as before:
        assert await before.request("ping")
    secured.server.stop_authenticator()
    with pytest.raises(ConnectionFailed):
        async with Client(secured.tcp, curve=secured.keys(secured.client), timeout=2,
                          reconnect=False):
            pass
    assert not secured.server.core.sessions


async def test_a_key_cannot_claim_another_role_or_name(secured: Secured) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        sock = secured.dealer(ctx, secured.client)
        for role, extra in (("admin", {}), ("plugin", {"name": "clock"})):
            sock.send(hello(role, **extra))
            assert await answered(sock, 5)
            reply = msgpack.unpackb(sock.recv())
            assert reply[2]["code"] == "unauthorized", reply
            assert "granted the role 'client'" in reply[2]["message"]
        assert not secured.server.core.sessions
    finally:
        ctx.destroy(linger=0)


async def test_a_revoked_key_is_out_within_a_second_and_stays_out(secured: Secured) -> None:
    core = secured.server.core
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        victim = secured.dealer(ctx, secured.client)
        victim.send(hello())
        assert await answered(victim, 5)
        victim.recv()
        assert len(core.sessions) == 1
        write_authorized(secured.folder / "authorized_keys.json",
                         [Grant(secured.admin[0], "admin")])
        started = time.monotonic()
        async with Client(secured.tcp, role="admin", curve=secured.keys(secured.admin)) as admin:
            assert (await admin.request("keys.reload"))["ended"] == 1
            assert len(core.sessions) == 1  # the admin's own
        assert time.monotonic() - started < 1.0
        # The old connection may not say hello again, nor may a new one connect.
        victim.send(hello())
        assert await answered(victim, 5)
        assert msgpack.unpackb(victim.recv())[2]["code"] == "unauthorized"
        with pytest.raises(ConnectionFailed, match="refused this key"):
            async with Client(secured.tcp, curve=secured.keys(secured.client), timeout=3,
                              reconnect=False):
                pass
    finally:
        ctx.destroy(linger=0)


async def test_a_reused_routing_id_cannot_act_as_its_owner(secured: Secured) -> None:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        owner = secured.dealer(ctx, secured.admin, routing_id=b"victim")
        owner.send(hello("admin"))
        assert await answered(owner, 5)
        owner.recv()
        intruder = secured.dealer(ctx, secured.client, routing_id=b"victim")
        intruder.send(msgpack.packb([0, 2, "set", {"target": "system/x", "value": 1}]))
        assert not await answered(intruder, 1.0)
        owner.send(msgpack.packb([0, 3, "ping", {}]))
        assert await answered(owner, 5)
        assert msgpack.unpackb(owner.recv(), timestamp=0)[1] == 3
        roles = [s.role.value for s in secured.server.core.sessions.values()]
        assert roles == ["admin"]
    finally:
        ctx.destroy(linger=0)


async def test_a_handshake_flood_is_shed_and_others_are_served(secured: Secured) -> None:
    port = int(secured.tcp.rsplit(":", 1)[1])
    flood = await asyncio.to_thread(
        lambda: [socket.create_connection(("127.0.0.1", port)) for _ in range(1000)])
    try:
        opened = time.monotonic()
        latencies = []
        async with Client(secured.tcp, curve=secured.keys(secured.client)) as good:
            while time.monotonic() - opened < HANDSHAKE_MS / 1000 + 0.5:
                start = time.monotonic()
                await good.request("ping")
                latencies.append(time.monotonic() - start)
        closed = await asyncio.to_thread(_closed_within, flood, HANDSHAKE_MS / 1000 + 1,
                                         opened)
        assert closed == len(flood), f"{len(flood) - closed} connections still open"
        latencies.sort()
        assert latencies[int(len(latencies) * 0.99) - 1] < 1.0, latencies[-5:]
    finally:
        for sock in flood:
            sock.close()


def _closed_within(socks: list[socket.socket], seconds: float, since: float) -> int:
    """How many of ``socks`` the peer closed by ``since + seconds``."""
    selector = selectors.DefaultSelector()
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    closed = 0
    while closed < len(socks):
        left = since + seconds - time.monotonic()
        if left <= 0:
            break
        for key, _ in selector.select(left):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            try:
                data = sock.recv(4096)  # the broker's greeting, then the close
            except BlockingIOError:
                continue
            except ConnectionResetError:
                data = b""
            if not data:
                selector.unregister(sock)
                closed += 1
    selector.close()
    return closed


async def test_a_per_launch_plugin_key_is_void_once_its_process_ends(
        secured: Secured) -> None:
    root = short_tmpdir()
    make_plugin(root, "launched")
    supervisor = await start_agent(secured.tcp, root, secured.folder,
                                   curve=secured.keys(secured.admin))
    try:
        plugin = supervisor.plugins["launched"]
        assert plugin.state is PluginState.READY, plugin.reason
        assert plugin.process is not None and plugin.process.pid is not None
        env = psutil.Process(plugin.process.pid).environ()
        launched = (env["PLUGBOARD_PUBLIC_KEY"], env["PLUGBOARD_SECRET_KEY"])
        assert launched[1] not in " ".join(psutil.Process(plugin.process.pid).cmdline())
        # While it runs, the key is good for its own name only.
        with pytest.raises(NotAllowed, match="may be plugin launched, not 'other'"):
            async with Client(secured.tcp, role="plugin", name="other", reconnect=False,
                              curve=secured.keys(launched)):
                pass
        await supervisor.stop("launched")
        with pytest.raises(ConnectionFailed, match="refused this key"):
            async with Client(secured.tcp, role="plugin", name="launched", timeout=3,
                              reconnect=False, curve=secured.keys(launched)):
                pass
    finally:
        await stop_agent(supervisor)


def test_plugboard_keys_from_a_new_pair_to_a_revoked_one(processes: Processes) -> None:
    broker = processes.broker(insecure=False)
    state = broker.state_dir

    def plugboard(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*PLUGBOARD, "--state-dir", str(state),
                               *args], capture_output=True, text=True, timeout=30, cwd=ROOT)

    shown = plugboard("keys", "show")
    assert shown.stdout.strip() == broker.local_admin_keys().server
    made = plugboard("keys", "new", "alice", "--dir", str(state))
    assert "public key" in made.stdout and mode(state / "alice.key_secret") == 0o600
    as_alice = ("--endpoint", broker.tcp, "--key", str(state / "alice.key_secret"))
    refused = plugboard("get", "system/broker/version", *as_alice)
    assert refused.returncode == 5 and "refused this key" in refused.stderr
    allowed = plugboard("keys", "allow", str(state / "alice.key"), "--role", "client",
                        "--comment", "test")
    assert allowed.returncode == 0 and "re-read its keys" in allowed.stdout, allowed.stderr
    listed = plugboard("keys", "list")
    assert "client" in listed.stdout and "test" in listed.stdout
    got = plugboard("get", "system/broker/version", *as_alice)
    assert got.returncode == 0 and got.stdout.strip(), got.stderr
    written = plugboard("set", "system/broker/version", "x", *as_alice)
    assert "forbidden" in written.stderr  # a client key writes as a client
    assert plugboard("keys", "revoke", str(state / "alice.key")).returncode == 0
    assert "refused this key" in plugboard("get", "system/broker/version", *as_alice).stderr


async def test_sighup_rereads_the_authorized_keys_and_the_broker_serves_on(
        processes: Processes) -> None:
    """A hangup, as daemons take it (systemctl reload): the keys file is read again and
    the sessions of a key taken out of it end, as after plugboard keys revoke; before,
    SIGHUP ended the broker on the spot."""
    broker = processes.broker(insecure=False)
    alice = pair()
    allowed = subprocess.run([*PLUGBOARD, "--state-dir", str(broker.state_dir), "keys",
                              "allow", "--role", "client", "--", alice[0]],
                             capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert allowed.returncode == 0, allowed.stderr  # it told the broker, which re-read
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        CurveKeys(broker.local_admin_keys().server, *alice).apply(sock)
        sock.connect(broker.tcp)

        async def ask(method: str) -> list[object]:
            sock.send(msgpack.packb([0, 1, method, {"versions": [1], "role": "client"}]))
            assert await answered(sock, 5), f"no answer to {method}\n{broker.describe()}"
            return msgpack.unpackb(sock.recv())  # type: ignore[no-any-return]

        assert (await ask("hello"))[2] is None
        write_authorized(broker.state_dir / "curve" / "authorized_keys.json", [])
        broker.signal(signal.SIGHUP)
        async with asyncio.timeout(5):
            while (await ask("ping"))[2] is None:  # answered until the session ends
                pass
        assert broker.proc.poll() is None, "SIGHUP ended the broker"
        assert "SIGHUP: authorized keys re-read; 1 session(s)" in broker.stderr_path.read_text()
    finally:
        ctx.destroy(linger=0)
