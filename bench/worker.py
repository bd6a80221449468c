"""Benchmark peers, one process each: ``python bench/worker.py ROLE ARGS...``.

A peer prints ``ready`` once it is set up (a subscriber: once its subscription is
live), a writer then waits for ``go`` on stdin. At the end each prints one JSON line.
Values carry ``time.monotonic_ns()`` at sending; CLOCK_MONOTONIC is shared by all
processes of a machine, so the receiver computes one-way latency.
"""

from __future__ import annotations

import array
import asyncio
import json
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parents[1]))

import msgpack  # noqa: E402
import zmq  # noqa: E402

PACE_S = 0.001  # latency mode: one message per millisecond, so nothing queues
IDLE_END_S = 2.0


def ready() -> None:
    print("ready", flush=True)


def go() -> None:
    sys.stdin.readline()


def report(**figures: Any) -> None:
    print(json.dumps(figures), flush=True)


class Run:
    """A writer's measured run, from ``go`` to its last send: its CPU time (every
    thread of the process, ZeroMQ's I/O thread too: what it takes of the machine's
    CPUs, which the writer, the middle process and the subscriber share)."""

    def __init__(self) -> None:
        self.cpu = time.process_time()

    def report(self) -> None:
        report(cpu_s=time.process_time() - self.cpu)


class Receipts:
    """What a subscriber saw: latencies, the time span of the receipts, and the CPU
    time it took from being set up to its report (every thread, as :class:`Run`)."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.cpu = time.process_time()
        self.latencies = array.array("q")
        """An array, not a list: the cycle collector walks a list's every element at
        each full collection, which would charge a subscriber that allocates more (the
        SDK's) for the benchmark's own bookkeeping."""
        self.count = 0
        self.first = 0.0
        self.last = 0.0

    def got(self, sent_ns: int | None = None) -> bool:
        now = time.monotonic()
        if self.count == 0:
            self.first = now
        self.last = now
        self.count += 1
        if sent_ns:
            self.latencies.append(time.monotonic_ns() - sent_ns)
        return self.count >= self.expected

    def got_many(self, count: int) -> bool:
        """``count`` updates arrived at once (a batch): one clock reading for all."""
        now = time.monotonic()
        if self.count == 0:
            self.first = now
        self.last = now
        self.count += count
        return self.count >= self.expected

    def report(self) -> None:
        span = max(self.last - self.first, 1e-9)
        report(received=self.count, rate=(self.count - 1) / span if self.count > 1 else 0,
               cpu_s=time.process_time() - self.cpu,
               latencies=self.latencies.tolist())


# -- Plugboard ------------------------------------------------------------------------------

async def pb_sub(endpoint: str, pattern: str, expected: int, current: str,
                 reader: str) -> None:
    """Changes taken a batch at a time, items read as the arrays they came as: handed
    to an ``on_batch`` callback (``reader`` "callback") or iterated ("batches")."""
    from plugboard.sdk import Batch, BatchEvent, Client, Gap, Synced

    async with Client(endpoint, timeout=30) as client:
        receipts = Receipts(expected)
        finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def take(event: BatchEvent) -> None:
            if isinstance(event, Batch):
                done = False
                if event.snapshot:
                    for _item in event.items:
                        done = receipts.got()
                else:  # per item no more than the raw subscriber does
                    for item in event.items:
                        value = item[1]
                        if value:  # not the declared 0
                            done = receipts.got(value)
                if done and not finished.done():
                    finished.set_result(None)
            elif isinstance(event, Gap):
                print(f"gap {event.count}", file=sys.stderr)
            elif isinstance(event, Synced) and current == "current" and not finished.done():
                finished.set_result(None)

        async def read() -> None:
            async for event in sub.batches():
                take(event)
                if finished.done():
                    return

        start = time.monotonic()  # a snapshot is timed from the subscribe request
        sub = await client.subscribe(pattern, policy="all", current=current == "current",
                                     queue_limit=1_000_000,
                                     on_batch=take if reader == "callback" else None)
        iterating = asyncio.create_task(read()) if reader == "batches" else None
        if current != "current":
            ready()
        # Ended by the last value or by a quiet spell: one timer a quarter second, none
        # per event on the measured path.
        while not finished.done():
            await asyncio.wait([finished], timeout=0.25)
            if time.monotonic() - (receipts.last or start) > (
                    IDLE_END_S if receipts.count else 120):
                break
        await sub.close()
        if iterating is not None:
            await iterating
        if current == "current":
            report(received=receipts.count, seconds=time.monotonic() - start)
        else:
            receipts.report()


async def pb_subs(endpoint: str, clients: int, expected: int) -> None:
    """Several subscribers in one process (fan-out): total updates per second, read a
    batch at a time."""
    from plugboard.sdk import Batch, Client

    async def one() -> Receipts:
        async with Client(endpoint, timeout=30) as client:
            sub = await client.subscribe("bench/x", policy="all", current=False,
                                         queue_limit=1_000_000)
            started.append(1)
            if len(started) == clients:
                ready()
            receipts = Receipts(expected)
            while True:
                try:
                    event = await sub.next_batch(IDLE_END_S if receipts.count else 120)
                except Exception:
                    return receipts
                if isinstance(event, Batch):
                    fresh = len(event.items) - (event.items[0][1] == 0)  # not the declared 0
                    if receipts.got_many(fresh):
                        return receipts

    started: list[int] = []
    all_receipts = await asyncio.gather(*(one() for _ in range(clients)))
    first = min(r.first for r in all_receipts)
    last = max(r.last for r in all_receipts)
    total = sum(r.count for r in all_receipts)
    report(received=total, rate=total / max(last - first, 1e-9))


async def pb_write(endpoint: str, mode: str, count: int) -> None:
    from plugboard.sdk import Client

    async with Client(endpoint, role="plugin", name="bench", timeout=60) as client:
        await client.declare("bench/x", "int", 0)
        ready()
        await asyncio.get_running_loop().run_in_executor(None, go)
        run = Run()
        if mode == "latency":
            for _ in range(count):
                await client.set("bench/x", time.monotonic_ns())
                await asyncio.sleep(PACE_S)
        elif mode == "latency-nowait":  # the writer gets no reply to wake up for
            for _ in range(count):
                client.set_nowait("bench/x", time.monotonic_ns())
                await asyncio.sleep(PACE_S)
            await client.request("ping")
        elif mode == "single":
            window = 200
            for first in range(0, count, window):
                await asyncio.gather(*(client.set("bench/x", time.monotonic_ns())
                                       for _ in range(min(window, count - first))))
        elif mode == "nowait":  # sets as notifications; a ping per window keeps pace
            window = 2000
            for first in range(0, count, window):
                for _ in range(min(window, count - first)):
                    client.set_nowait("bench/x", time.monotonic_ns())
                await client.request("ping")
        elif mode == "batched-nowait":  # set_many of 100 as notifications, a ping per 2,000
            for first in range(0, count, 2000):
                for start in range(first, min(first + 2000, count), 100):
                    client.set_many_nowait([("bench/x", time.monotonic_ns())
                                            for _ in range(min(100, count - start))])
                await client.request("ping")
        else:  # batched: set_many of 100 values on one property, 10 in flight
            for first in range(0, count, 1000):
                await asyncio.gather(*(
                    client.set_many([("bench/x", time.monotonic_ns())
                                     for _ in range(min(100, count - start))])
                    for start in range(first, min(first + 1000, count), 100)))
        run.report()


async def pb_fill(endpoint: str, count: int) -> None:
    """Declare ``count`` properties (for the snapshot and memory scenarios)."""
    from plugboard.sdk import Client

    async with Client(endpoint, role="plugin", name="fill", timeout=120) as client:
        pending = []
        for i in range(count):
            pending.append(client.declare(f"fill/p{i // 1000}/v{i % 1000}", "int", i))
            if len(pending) == 500:
                await asyncio.gather(*pending)
                pending = []
        await asyncio.gather(*pending)
        ready()
        await asyncio.get_running_loop().run_in_executor(None, go)


async def pb_idle(endpoint: str, name: str) -> None:
    from plugboard.sdk import Client

    async with Client(endpoint, role="plugin", name=name, timeout=30) as client:
        await client.declare(f"{name}/x", "int", 1)
        ready()
        await asyncio.get_running_loop().run_in_executor(None, go)


# -- raw pyzmq relay: the physical limit for a Python broker -------------------------------

def raw_relay(bind: str, driver: str = "blocking") -> None:
    """``driver``: ``blocking`` receives in a loop; ``uvloop`` is woken by the socket's
    descriptor in an event loop, as the broker is (section 9 sets the two side by side)."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(bind)
    print(f"ready {router.getsockopt_string(zmq.LAST_ENDPOINT)}", flush=True)
    if driver == "uvloop":
        relay_on_uvloop(router)
    else:
        relay_loop(router)


class Relay:
    """The raw relay's whole logic. Subscribers say "sub"; a writer's ``[name, value]``
    or list of them goes to every subscriber, and a ``[name, value, msgid]`` is answered
    with its msgid besides. ``router``: a ROUTER socket, or anything with its
    ``send_multipart`` (bench/broker_pass.py times it)."""

    def __init__(self, router: Any) -> None:
        self.router = router
        self.values: dict[str, Any] = {}
        self.subscribers: list[bytes] = []
        self.packer = msgpack.Packer()

    def handle(self, peer: bytes, frame: bytes) -> bool:
        """Relay one frame; False once told "stop"."""
        router = self.router
        message = msgpack.unpackb(frame)
        if message == "sub":
            self.subscribers.append(peer)
            router.send_multipart([peer, b"ok"])
            return True
        if message == "stop":
            return False
        batch = isinstance(message[0], list)
        reply_to = message.pop() if not batch and len(message) == 3 else None
        items = message if batch else [message]
        for name, value in items:
            self.values[name] = value
        out = self.packer.pack(items)
        for subscriber in self.subscribers:
            router.send_multipart([subscriber, out])
        if reply_to is not None:  # after the news, as the broker does
            router.send_multipart([peer, self.packer.pack(reply_to)])
        return True


def relay_loop(router: Any) -> None:
    """The relay receiving in a blocking loop until "stop"; ``router`` as for Relay, with
    its ``recv_multipart`` too."""
    relay = Relay(router)
    while relay.handle(*router.recv_multipart()):
        pass


def relay_on_uvloop(router: zmq.Socket[bytes]) -> None:
    """The relay in an event loop: woken by the socket's descriptor, it receives
    without blocking until ZeroMQ has nothing more, as the broker's pass does."""
    import uvloop

    relay = Relay(router)
    loop = uvloop.new_event_loop()
    stopped = loop.create_future()

    def readable() -> None:
        while not stopped.done():
            try:
                peer, frame = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if not relay.handle(peer, frame):
                stopped.set_result(None)

    loop.add_reader(router.getsockopt(zmq.FD), readable)
    loop.call_soon(readable)
    loop.run_until_complete(stopped)


def raw_sub(endpoint: str, expected: int) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(endpoint)
    sock.send(msgpack.packb("sub"))
    sock.recv()
    ready()
    _read_relayed(sock, expected)


def _read_relayed(sock: zmq.Socket[bytes], expected: int, routed: bool = False) -> None:
    """Count the writer's ``[name, value]`` frames, or lists of them, as they come (the
    Python relay repacks a lone one as a list, the C relay forwards it as written;
    ``routed``: a ROUTER's, the sender's id first)."""
    receipts = Receipts(expected)
    while sock.poll(int(IDLE_END_S * 1000) if receipts.count else 120_000):
        done = False
        message = msgpack.unpackb(sock.recv_multipart()[-1] if routed else sock.recv())
        for _name, value in message if isinstance(message[0], list) else [message]:
            done = receipts.got(value)
        if done:
            break
    receipts.report()


def raw_write(endpoint: str, mode: str, count: int) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(endpoint)
    ready()
    go()
    run = Run()
    if mode == "latency":
        for _ in range(count):
            sock.send(msgpack.packb(["bench/x", time.monotonic_ns()]))
            time.sleep(PACE_S)
    elif mode == "latency-replied":  # each set waits for the relay's reply
        for msgid in range(count):
            sock.send(msgpack.packb(["bench/x", time.monotonic_ns(), msgid]))
            sock.recv()
            time.sleep(PACE_S)
    elif mode == "single":
        for _ in range(count):
            sock.send(msgpack.packb(["bench/x", time.monotonic_ns()]))
    elif mode == "single-replied":  # 200 in flight, then their replies, like pbraw-write
        for first in range(0, count, 200):
            window = min(200, count - first)
            for msgid in range(first, first + window):
                sock.send(msgpack.packb(["bench/x", time.monotonic_ns(), msgid]))
            for _ in range(window):
                sock.recv()
    else:
        for first in range(0, count, 100):
            sock.send(msgpack.packb([["bench/x", time.monotonic_ns()]
                                     for _ in range(min(100, count - first))]))
    run.report()
    sock.close(linger=5000)


def direct_sub(bind: str, expected: int) -> None:
    """The writer's frames straight to this process: one libzmq hop, no relay."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(bind)
    print(f"ready {router.getsockopt_string(zmq.LAST_ENDPOINT)}", flush=True)
    _read_relayed(router, expected, routed=True)


# -- raw protocol clients: Plugboard's wire by hand (pyzmq + msgpack, no SDK) ---------------

class RawPeer:
    """A blocking DEALER speaking PROTOCOL.md by hand: what the broker costs when
    nothing of the SDK runs at either end."""

    def __init__(self, endpoint: str, role: str, name: str | None = None) -> None:
        self.sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.connect(endpoint)
        self.msgid = 0
        self.last_ping = time.monotonic()
        hello: dict[str, Any] = {"versions": [1], "role": role}
        if name is not None:
            hello["name"] = name
        self.call("hello", hello)

    def send(self, method: str, params: dict[str, Any]) -> int:
        self.msgid += 1
        self.sock.send(msgpack.packb([0, self.msgid, method, params]))
        return self.msgid

    def notify(self, method: str, params: dict[str, Any]) -> None:
        self.sock.send(msgpack.packb([2, method, params]))

    def receive(self) -> list[Any]:
        """The next message; a request of the broker's (``init``) is answered here."""
        while True:
            message = msgpack.unpackb(self.sock.recv())
            if message[0] != 0:
                return message  # type: ignore[no-any-return]
            self.sock.send(msgpack.packb([1, message[1], None, {}]))

    def replies(self, count: int) -> None:
        """Read until ``count`` replies came (changes and the like are skipped)."""
        while count:
            message = self.receive()
            if message[0] == 1:
                if message[2] is not None:
                    raise RuntimeError(f"refused: {message[2]}")
                count -= 1

    def call(self, method: str, params: dict[str, Any]) -> Any:
        msgid = self.send(method, params)
        while True:
            message = self.receive()
            if message[0] == 1 and message[1] == msgid:
                if message[2] is not None:
                    raise RuntimeError(f"{method} refused: {message[2]}")
                return message[3]

    def keep_alive(self) -> None:
        """A ping now and then: a session that sends nothing for 6 s is ended."""
        if time.monotonic() - self.last_ping > 1.0:
            self.send("ping", {})
            self.last_ping = time.monotonic()


def pbraw_sub(endpoint: str, expected: int) -> None:
    peer = RawPeer(endpoint, "client")
    peer.call("subscribe", {"pattern": "bench/x", "policy": "all", "current": False,
                            "queue_limit": 1_000_000, "timestamp_ns": True})  # as the SDK
    ready()
    receipts = Receipts(expected)
    done = False
    while not done and peer.sock.poll(int(IDLE_END_S * 1000) if receipts.count else 120_000):
        message = peer.receive()
        if message[0] == 2 and message[1] == "changes":
            for item in message[2]["items"]:
                if item[1] > 10**9:  # not the value 0 the writer declared
                    done = receipts.got(item[1])
        peer.keep_alive()
    receipts.report()


def pbraw_write(endpoint: str, mode: str, count: int) -> None:
    peer = RawPeer(endpoint, "plugin", "bench")
    peer.call("declare", {"name": "bench/x", "type": "int", "value": 0})
    ready()
    go()
    run = Run()
    if mode == "latency":
        for _ in range(count):
            peer.call("set", {"target": "bench/x", "value": time.monotonic_ns()})
            time.sleep(PACE_S)
    elif mode == "latency-nowait":
        for _ in range(count):
            peer.notify("set", {"target": "bench/x", "value": time.monotonic_ns()})
            time.sleep(PACE_S)
        peer.call("ping", {})
    elif mode == "single":  # 200 requests in flight, then their replies
        for first in range(0, count, 200):
            window = min(200, count - first)
            for _ in range(window):
                peer.send("set", {"target": "bench/x", "value": time.monotonic_ns()})
            peer.replies(window)
    elif mode == "nowait":
        for first in range(0, count, 2000):
            for _ in range(min(2000, count - first)):
                peer.notify("set", {"target": "bench/x", "value": time.monotonic_ns()})
            peer.call("ping", {})
    elif mode == "batched-nowait":
        for first in range(0, count, 2000):
            for offset in range(first, min(first + 2000, count), 100):
                peer.notify("set_many", {"items": [["bench/x", time.monotonic_ns()]
                                                   for _ in range(min(100, count - offset))]})
            peer.call("ping", {})
    else:  # batched: set_many of 100, 10 in flight like the SDK writer
        for first in range(0, count, 1000):
            offsets = range(first, min(first + 1000, count), 100)
            for offset in offsets:
                peer.send("set_many", {"items": [["bench/x", time.monotonic_ns()]
                                                 for _ in range(min(100, count - offset))]})
            peer.replies(len(offsets))
    run.report()


def pbsync_sub(endpoint: str, expected: int) -> None:
    """The SDK's blocking SyncClient as the subscriber, a batch at a time."""
    from plugboard.sdk import Batch, RequestTimeout, SyncClient

    with SyncClient(endpoint, timeout=60) as client:
        sub = client.subscribe("bench/x", policy="all", current=False,
                               queue_limit=1_000_000)
        ready()
        receipts = Receipts(expected)
        done = False
        while not done:
            try:
                event = sub.next_batch(IDLE_END_S if receipts.count else 120)
            except RequestTimeout:
                break
            if isinstance(event, Batch):
                for item in event.items:
                    value = item[1]
                    if type(value) is int and value > 10**9:  # not the declared 0
                        done = receipts.got(value)
        receipts.report()


def pbsync_write(endpoint: str, mode: str, count: int) -> None:
    """The SDK's blocking SyncClient as the writer (no event loop at all)."""
    from plugboard.sdk import SyncClient

    with SyncClient(endpoint, role="plugin", name="bench", timeout=60) as client:
        client.declare("bench/x", "int", 0)
        ready()
        go()
        run = Run()
        if mode == "latency":
            for _ in range(count):
                client.set("bench/x", time.monotonic_ns())
                time.sleep(PACE_S)
        elif mode == "latency-nowait":
            for _ in range(count):
                client.set_nowait("bench/x", time.monotonic_ns())
                time.sleep(PACE_S)
            client.ping()
        elif mode == "single":
            for _ in range(count):
                client.set("bench/x", time.monotonic_ns())
        elif mode == "nowait":
            for first in range(0, count, 2000):
                for _ in range(min(2000, count - first)):
                    client.set_nowait("bench/x", time.monotonic_ns())
                client.ping()
        else:
            for first in range(0, count, 100):
                client.set_many([("bench/x", time.monotonic_ns())
                                 for _ in range(min(100, count - first))])
        run.report()


def pb_sessions(endpoint: str, role: str, first: int, count: int, each: int,
                pattern: str) -> None:
    """Hold ``count`` sessions open (one DEALER each) until ``go``, pinging each every
    2 s as the SDK does and reading what arrives. Plugins (``p<first+i>``) declare
    ``each`` properties; clients make ``each`` subscriptions to ``pattern`` (``{i}``:
    the session's number, ``{k}``: the subscription's). Prints ``ready SECONDS`` once
    all are set up: how long the broker took to admit them."""
    import resource
    import select

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ctx = zmq.Context()
    ctx.setsockopt(zmq.LINGER, 0)
    ctx.set(zmq.MAX_SOCKETS, count + 16)
    socks = [ctx.socket(zmq.DEALER) for _ in range(count)]  # connected chunk by chunk
    pack = msgpack.packb
    received = 0

    def drain(sock: zmq.Socket[bytes]) -> None:
        nonlocal received
        while True:
            try:
                sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            received += 1

    ping = pack([0, 0, "ping", {}])  # its reply is read and dropped

    def wait_replies(chunk: range, replies: int) -> None:
        """Wait in zmq_poll, not spinning, until each socket of ``chunk`` got
        ``replies`` replies, answering the broker's init on the way."""
        poller = zmq.Poller()
        left = {}
        for index in chunk:
            poller.register(socks[index], zmq.POLLIN)
            left[socks[index]] = replies
        while left:
            for sock, _ in poller.poll(60_000):
                message = msgpack.unpackb(sock.recv())
                if message[0] == 0:  # init: ready at once
                    sock.send(pack([1, message[1], None, {}]))
                elif message[0] == 1:
                    if message[2] is not None:
                        raise RuntimeError(f"session: {message[2]}")
                    left[sock] -= 1
                    if not left[sock]:
                        poller.unregister(sock)
                        del left[sock]

    started = time.monotonic()
    pinged = started
    for start in range(0, count, 200):  # 200 sessions at a time, each fully set up
        chunk = range(start, min(start + 200, count))
        for index in chunk:
            socks[index].connect(endpoint)
            i = first + index
            if role == "plugin":
                steps = [pack([0, 1, "hello", {"versions": [1], "role": "plugin",
                                               "name": f"p{i}"}])]
                steps += [pack([0, 2 + k, "declare", {"name": f"p{i}/v{k}", "type": "float",
                                                      "value": 0.0, "unit": "C"}])
                          for k in range(each)]
            else:
                steps = [pack([0, 1, "hello", {"versions": [1], "role": "client"}])]
                steps += [pack([0, 2 + k, "subscribe", {
                    "pattern": pattern.format(i=i, k=k), "current": False,
                    "policy": "all"}]) for k in range(each)]
            for frame in steps:  # queued at once: the broker answers them in order
                socks[index].send(frame)
        wait_replies(chunk, 1 + each)
        if time.monotonic() - pinged > 1.0:  # those admitted already must not time out
            for sock in socks[:start]:
                sock.send(ping)
                drain(sock)
            pinged = time.monotonic()
    print(f"ready {time.monotonic() - started:.3f}", flush=True)
    tick = 0
    while not select.select([sys.stdin], [], [], 0.01)[0]:
        # A two-hundredth of the sessions every 10 ms: each pings every 2 s, spread out
        # as independent clients' pings would be (many at once would be a burst that a
        # set arriving behind it waits out); those pinged 2 s ago are read.
        for index in range(tick % 200, count, 200):
            socks[index].send(ping)
        tick += 1
        for index in range(tick % 200, count, 200):
            drain(socks[index])
    sys.stdin.readline()
    report(sessions=count, received=received)


# -- Redis: SET + PUBLISH ----------------------------------------------------------------------

def redis_sub(port: str, expected: int) -> None:
    import redis

    client: Any = redis.Redis(port=int(port))  # redis types its pub/sub loosely
    pubsub = client.pubsub()
    pubsub.subscribe("bench/x")
    pubsub.get_message(timeout=5)  # the subscribe confirmation
    ready()
    receipts = Receipts(expected)
    while True:
        message = pubsub.get_message(timeout=IDLE_END_S if receipts.count else 120)
        if message is None:
            break
        if message["type"] == "message" and receipts.got(int(message["data"])):
            break
    receipts.report()


def redis_write(port: str, mode: str, count: int) -> None:
    import redis

    client: Any = redis.Redis(port=int(port))  # its pipeline's methods are typed loosely
    ready()
    go()
    run = Run()
    if mode == "latency":
        for _ in range(count):
            value = time.monotonic_ns()
            client.pipeline(transaction=False).set("bench/x", value).publish(
                "bench/x", value).execute()
            time.sleep(PACE_S)
    else:  # Redis's fast path: SET+PUBLISH pipelined, 100 pairs per round trip
        for first in range(0, count, 100):
            pipe = client.pipeline(transaction=False)
            for _ in range(min(100, count - first)):
                value = time.monotonic_ns()
                pipe.set("bench/x", value).publish("bench/x", value)
            pipe.execute()
    run.report()


# -- MQTT: retained QoS 0 ----------------------------------------------------------------------

def _mqtt_client() -> Any:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    return mqtt.Client(CallbackAPIVersion.VERSION2)


def mqtt_sub(port: str, expected: int) -> None:
    import threading

    client = _mqtt_client()
    receipts = Receipts(expected)
    done = threading.Event()
    subscribed = threading.Event()

    def on_message(_c: Any, _u: Any, message: Any) -> None:
        if message.retain:
            return  # the retained value from before the run
        if receipts.got(int(message.payload)):
            done.set()

    client.on_message = on_message
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect("127.0.0.1", int(port))
    client.subscribe("bench/x", qos=0)
    client.loop_start()
    subscribed.wait(10)
    ready()
    last = -1
    while not done.wait(IDLE_END_S if receipts.count else 120):
        if receipts.count == last:
            break
        last = receipts.count
    client.loop_stop()
    receipts.report()


def mqtt_write(port: str, mode: str, count: int) -> None:
    client = _mqtt_client()
    client.connect("127.0.0.1", int(port))
    client.loop_start()
    ready()
    go()
    run = Run()
    for _ in range(count):
        client.publish("bench/x", str(time.monotonic_ns()), qos=0, retain=True)
        if mode == "latency":
            time.sleep(PACE_S)
    run.report()
    time.sleep(0.5)
    client.loop_stop()


# -- NATS: core publish/subscribe, and JetStream KV put -> watch ------------------------------

async def _nats(port: str) -> Any:
    import nats

    return await nats.connect(f"nats://127.0.0.1:{port}")


async def _kv(nc: Any) -> Any:
    """The bucket both sides use: a property store with push, as NATS offers one."""
    js = nc.jetstream()
    try:
        return await js.key_value("bench")
    except Exception:
        return await js.create_key_value(bucket="bench", history=1)


async def nats_sub(port: str, kv: bool, expected: int) -> None:
    nc = await _nats(port)
    receipts = Receipts(expected)
    if kv:
        watcher = await (await _kv(nc)).watch("x", ignore_deletes=True)
        await watcher.updates(timeout=5)  # the current value (or the end-of-initial marker)

        async def next_value() -> int | None:
            entry = await watcher.updates(timeout=IDLE_END_S if receipts.count else 120)
            return int(entry.value) if entry is not None and entry.value else None
    else:
        queue: asyncio.Queue[int] = asyncio.Queue()

        async def received(msg: Any) -> None:
            queue.put_nowait(int(msg.data))

        await nc.subscribe("bench.x", cb=received)
        await nc.flush()

        async def next_value() -> int | None:
            return await queue.get()
    ready()
    while True:
        try:
            value = await asyncio.wait_for(next_value(),
                                           IDLE_END_S if receipts.count else 120)
        except TimeoutError:
            break
        except Exception:  # nats-py signals a watcher timeout with its own error
            break
        if value is not None and receipts.got(value):
            break
    receipts.report()
    await nc.close()


async def nats_write(port: str, kv: bool, mode: str, count: int) -> None:
    nc = await _nats(port)
    bucket = await _kv(nc) if kv else None
    ready()
    await asyncio.get_running_loop().run_in_executor(None, go)
    run = Run()
    for _ in range(count):
        value = str(time.monotonic_ns()).encode()
        if bucket is not None:
            await bucket.put("x", value)  # acknowledged by JetStream, as a set is
        else:
            await nc.publish("bench.x", value)
        if mode == "latency":
            await asyncio.sleep(PACE_S)
    await nc.flush()
    run.report()
    await nc.close()


def on_loop(main: Coroutine[Any, Any, None], loop: str = "asyncio") -> None:
    """Run an asyncio program as Plugin.run runs a plugin by default: on asyncio's own
    loop; ``loop="uvloop"``: on uvloop (section 9 compares the two)."""
    from plugboard.sdk import _event_loop

    _event_loop.run(main, _event_loop.chosen(loop))


ROLES = {
    "pb-sub": lambda a: on_loop(pb_sub(a[0], a[1], int(a[2]), a[3], "callback")),
    "pb-sub-uvloop": lambda a: on_loop(pb_sub(a[0], a[1], int(a[2]), a[3], "callback"),
                                       "uvloop"),
    "pb-sub-batches": lambda a: on_loop(pb_sub(a[0], a[1], int(a[2]), a[3], "batches")),
    "pb-subs": lambda a: on_loop(pb_subs(a[0], int(a[1]), int(a[2]))),
    "pb-write": lambda a: on_loop(pb_write(a[0], a[1], int(a[2]))),
    "pb-write-uvloop": lambda a: on_loop(pb_write(a[0], a[1], int(a[2])), "uvloop"),
    "pb-fill": lambda a: on_loop(pb_fill(a[0], int(a[1]))),
    "pb-idle": lambda a: on_loop(pb_idle(a[0], a[1])),
    "raw-relay": lambda a: raw_relay(a[0], *a[1:]),
    "raw-sub": lambda a: raw_sub(a[0], int(a[1])),
    "raw-write": lambda a: raw_write(a[0], a[1], int(a[2])),
    "raw-c-sub": lambda a: raw_sub(a[0], int(a[1])),  # the C relay: bench/c_relay.c
    "raw-c-write": lambda a: raw_write(a[0], a[1], int(a[2])),
    "raw-uvloop-sub": lambda a: raw_sub(a[0], int(a[1])),  # the relay on uvloop
    "raw-uvloop-write": lambda a: raw_write(a[0], a[1], int(a[2])),
    "direct-sub": lambda a: direct_sub(a[0], int(a[1])),
    "pbraw-sub": lambda a: pbraw_sub(a[0], int(a[1])),
    "pbraw-write": lambda a: pbraw_write(a[0], a[1], int(a[2])),
    "pbsync-sub": lambda a: pbsync_sub(a[0], int(a[1])),
    "pbsync-write": lambda a: pbsync_write(a[0], a[1], int(a[2])),
    "pb-sessions": lambda a: pb_sessions(a[0], a[1], int(a[2]), int(a[3]), int(a[4]), a[5]),
    "redis-sub": lambda a: redis_sub(a[0], int(a[1])),
    "redis-write": lambda a: redis_write(a[0], a[1], int(a[2])),
    "mqtt-sub": lambda a: mqtt_sub(a[0], int(a[1])),
    "mqtt-write": lambda a: mqtt_write(a[0], a[1], int(a[2])),
    "nats-sub": lambda a: on_loop(nats_sub(a[0], False, int(a[1]))),  # nats-py: asyncio
    "nats-write": lambda a: on_loop(nats_write(a[0], False, a[1], int(a[2]))),
    "natskv-sub": lambda a: on_loop(nats_sub(a[0], True, int(a[1]))),
    "natskv-write": lambda a: on_loop(nats_write(a[0], True, a[1], int(a[2]))),
}

if __name__ == "__main__":
    ROLES[sys.argv[1]](sys.argv[2:])
