"""``make bench``: Plugboard side by side with raw pyzmq, Redis, MQTT and NATS, in one run.

Writes docs/BENCHMARKS.md and bench/results/bench.json. Absolute figures drift
10-30 % between runs on a 2-core machine; the ratios within one run are what to read.
Benchmarks report: a missed target is said plainly, never an error. The Redis, MQTT
and NATS columns need ``redis-server``, ``mosquitto`` and ``nats-server`` on the PATH
(Debian packages of those
names); without them those columns say "not installed".
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import platform
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import zmq
import zmq.auth

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))
WORKER = [sys.executable, str(ROOT / "bench" / "worker.py")]
QUICK = bool(os.environ.get("BENCH_QUICK"))
LATENCY_N = 1000 if QUICK else 6000
THROUGHPUT_N = 10_000 if QUICK else 30_000
BATCHED_N = 50_000 if QUICK else 200_000
SCALES = [10_000, 100_000] if QUICK else [10_000, 100_000, 1_000_000]


class Peer:
    """A worker process: waits for its 'ready', says 'go', reads its JSON result."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.role = args[0]
        self.proc = subprocess.Popen([*WORKER, *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, cwd=ROOT, text=True,
                                     env={**os.environ, **(env or {})})

    def ready(self, timeout: float = 300) -> str:
        assert self.proc.stdout is not None
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            self.proc.kill()
            raise RuntimeError(f"{self.role} not ready within {timeout:g} s")
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            self.proc.kill()
            raise RuntimeError(f"{self.role} did not get ready: {line!r}")
        return line.strip()

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def result(self, timeout: float = 300) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.proc.wait(timeout)
        return json.loads(line) if line.strip() else {}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def free_port() -> int:
    """For servers that cannot pick their own port; a small race, acceptable here."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


class Broker:
    """A broker for one scenario; with ``curve`` its tcp endpoint speaks CurveZMQ and
    ``env`` holds the keys a worker needs (one pair, granted plugin ``bench``)."""

    def __init__(self, *extra: str, profile: Path | None = None, curve: bool = False,
                 pure: bool = False) -> None:
        self.state = Path(tempfile.mkdtemp(prefix="pbb-"))
        self.env: dict[str, str] = {}
        if curve:
            keys = self.state / "curve"
            keys.mkdir(mode=0o700)
            public, secret = zmq.auth.create_certificates(keys, "peer")
            (keys / "authorized_keys.json").write_text(json.dumps({"keys": [{
                "key": zmq.auth.load_certificate(public)[0].decode(), "role": "plugin",
                "names": ["bench"]}]}))
            self.env = {"PLUGBOARD_KEY_FILE": str(secret)}
        profiler = ["-m", "cProfile", "-o", str(profile)] if profile else []
        if pure:  # the hot modules as Python even though compiled ones are installed
            profiler = [str(ROOT / "bench" / "pure.py")]
        self.proc = subprocess.Popen(
            [sys.executable, *profiler, "-m", "plugboard.broker.cli", "--state-dir",
             str(self.state), "--log-level", "WARNING", "broker", "--durability", "off",
             "--endpoint", f"ipc://{self.state}/b.sock", "--endpoint", "tcp://127.0.0.1:*",
             "--allow-unmanaged-plugins", *([] if curve else ["--insecure"]), *extra],
            stdout=subprocess.PIPE, cwd=ROOT, text=True)
        assert self.proc.stdout is not None
        self.started = time.monotonic()
        line = self.proc.stdout.readline()
        endpoints = re.search(r"listening on (.+)$", line)
        if not endpoints:
            raise RuntimeError(f"broker did not start: {line!r}")
        ipc, tcp = endpoints.group(1).split()
        self.ipc: str = ipc
        self.tcp: str = tcp
        self.ps = psutil.Process(self.proc.pid)
        if curve:
            server = zmq.auth.load_certificate(self.state / "curve" / "broker.key")[0]
            self.env["PLUGBOARD_SERVER_KEY"] = server.decode()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        shutil.rmtree(self.state, ignore_errors=True)


class Reference:
    """A raw relay, redis-server, mosquitto or nats-server (JetStream on, for the KV
    bucket), started for this run only."""

    def __init__(self, kind: str, transport: str = "tcp") -> None:
        self.kind = kind
        self.proc: subprocess.Popen[Any] | None = None
        self.peer: Peer | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="pbr-"))
        if kind == "raw":
            bind = f"ipc://{self.dir}/r.sock" if transport == "ipc" else "tcp://127.0.0.1:*"
            self.peer = Peer("raw-relay", bind)
            self.address = self.peer.ready().split()[1]
        elif kind == "redis":
            port = free_port()
            self.proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind",
                                          "127.0.0.1", "--save", "", "--appendonly", "no"],
                                         stdout=subprocess.DEVNULL, text=True)
            wait_port(port)
            self.address = str(port)
        elif kind in ("nats", "natskv"):
            port = free_port()
            self.proc = subprocess.Popen(["nats-server", "-a", "127.0.0.1", "-p", str(port),
                                          "-js", "-sd", str(self.dir)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_port(port)
            self.address = str(port)
        else:
            port = free_port()
            conf = self.dir / "mosquitto.conf"
            conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                            "max_queued_messages 1000000\n")
            self.proc = subprocess.Popen(["mosquitto", "-c", str(conf)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_port(port)
            self.address = str(port)

    @staticmethod
    def available(kind: str) -> bool:
        return kind == "raw" or shutil.which({"redis": "redis-server", "mqtt": "mosquitto",
                                              "nats": "nats-server",
                                              "natskv": "nats-server"}[kind]) is not None

    def stop(self) -> None:
        if self.peer is not None:
            self.peer.stop()
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def pair(sub_role: str, write_role: str, address: str, mode: str, count: int,
         sub_args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> dict[str, Any]:
    """One subscriber and one writer; the subscriber's figures plus the writer's time."""
    sub = Peer(sub_role, address, *sub_args, str(count), *(
        ("live",) if sub_role.startswith("pb-sub") else ()), env=env)
    sub.ready()
    writer = Peer(write_role, address, mode, str(count), env=env)
    writer.ready()
    writer.go()
    written = writer.result()
    got = sub.result()
    got["lost"] = count - got.get("received", 0)
    got["writer_seconds"] = written.get("seconds")
    return got


def percentiles(latencies: list[int]) -> dict[str, float]:
    if not latencies:
        return {"p50_us": float("nan"), "p99_us": float("nan")}
    ordered = sorted(latencies)
    return {"p50_us": ordered[len(ordered) // 2] / 1000,
            "p99_us": ordered[int(len(ordered) * 0.99)] / 1000}


def run_system(kind: str, transport: str, mode: str, count: int) -> dict[str, Any]:
    if kind.startswith("plugboard"):
        broker = Broker(curve=kind == CURVE)
        try:
            address = broker.ipc if transport == "ipc" else broker.tcp
            return pair("pb-sub", "pb-write", address, mode, count, ("bench/x",), broker.env)
        finally:
            broker.stop()
    ref = Reference(kind, transport)
    try:
        role = kind
        return pair(f"{role}-sub", f"{role}-write", ref.address, mode, count)
    finally:
        ref.stop()


CURVE = "plugboard+curve"
SYSTEMS = ["plugboard", CURVE, "raw", "redis", "mqtt", "nats", "natskv"]
"""natskv: NATS JetStream KV put -> watch, the nearest thing to a property store with
push a user would pick instead."""


ROUNDS = 1 if QUICK else 3
"""Latency and throughput run every system once per round, the rounds one after the
other: a drift of the machine during the run (it moves figures by a fifth here) then
falls on every system alike instead of on whichever ran during it."""
LATENCY_ROUNDS = 1 if QUICK else 6
"""Section 1 splits its sets in more rounds: a drift of a minute moved one system's p50
by a tenth with three."""


def _rounds(runs: list[tuple[str, Callable[[], dict[str, Any]]]], rounds: int = ROUNDS
            ) -> dict[str, list[dict[str, Any]]]:
    """Each run's figures of every round, by label."""
    out: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in runs}
    for round_number in range(rounds):
        for label, run in runs:
            out[label].append(run())
            print(f"round {round_number + 1}: {label} done", flush=True)
    return out


RELAY_FORM = {"nowait": "single", "batched-nowait": "batched"}
"""The raw relay's mode a Plugboard throughput mode is compared with."""


def _round_us(rounds: list[dict[str, Any]], *, paced: bool) -> float:
    """µs from the rounds of one run: paced, the p50 of their latencies pooled; else the
    median µs per update (1 / rate)."""
    if paced:
        return percentiles([ns for f in rounds for ns in f["latencies"]])["p50_us"]
    per_update = sorted(1e6 / f["rate"] if f.get("rate") else float("nan") for f in rounds)
    return per_update[len(per_update) // 2]


def scenario_latency() -> dict[str, Any]:
    """Latencies of every round pooled, ``LATENCY_N`` messages per system in all."""
    out: dict[str, Any] = {}
    runs: list[tuple[str, Callable[[], dict[str, Any]]]] = []
    for transport in ("ipc", "tcp"):
        for kind in SYSTEMS:
            if transport == "ipc" and kind in ("redis", "mqtt", "nats", "natskv", CURVE):
                continue
            if not Reference.available(kind if not kind.startswith("plugboard") else "raw"):
                out[f"{kind}/{transport}"] = None
                continue
            modes = [("latency", kind)]
            if kind == "plugboard":  # also writes that need no reply, like MQTT's
                modes.append(("latency-nowait", f"{kind} nowait"))
            for mode, label in modes:
                runs.append((f"{label}/{transport}", functools.partial(
                    run_system, kind, transport, mode, LATENCY_N // LATENCY_ROUNDS)))
    for label, rounds in _rounds(runs, LATENCY_ROUNDS).items():
        latencies = [ns for figures in rounds for ns in figures["latencies"]]
        out[label] = {**percentiles(latencies), "lost": sum(f["lost"] for f in rounds)}
        print(f"latency {label}: {out[label]}", flush=True)
    return out


def scenario_throughput() -> dict[str, Any]:
    """The median rate of the rounds; lost: the most any round lost."""
    out: dict[str, Any] = {}
    runs: list[tuple[str, Callable[[], dict[str, Any]]]] = []
    for mode, count in (("single", THROUGHPUT_N), ("nowait", THROUGHPUT_N),
                        ("batched", BATCHED_N), ("batched-nowait", BATCHED_N)):
        for kind in SYSTEMS:
            if mode.endswith("nowait") and kind != "plugboard":
                continue  # Plugboard's writes as notifications; the others' single is that
            if not kind.startswith("plugboard") and not Reference.available(kind):
                out[f"{kind}/{mode}"] = None
                continue
            if mode == "batched" and kind in ("mqtt", "nats", "natskv"):
                continue  # no batch of updates in one message
            runs.append((f"{kind}/{mode}", functools.partial(
                run_system, kind, "tcp", mode, count if kind != "mqtt" else THROUGHPUT_N)))
    for label, rounds in _rounds(runs).items():
        rates = sorted(figures["rate"] for figures in rounds)
        out[label] = {"rate": rates[len(rates) // 2],
                      "lost": max(figures["lost"] for figures in rounds)}
        print(f"throughput {label}: {out[label]}", flush=True)
    return out


HOP_PAIRS = {
    "direct": ("direct-sub", "raw-write"),
    "relay": ("raw-sub", "raw-write"),
    "relay, replying to the writer": ("raw-sub", "raw-write"),
    "broker, raw clients, no reply": ("pbraw-sub", "pbraw-write"),
    "broker, raw clients": ("pbraw-sub", "pbraw-write"),
    "broker, SDK writer": ("pbraw-sub", "pb-write"),
    "broker, SyncClient writer": ("pbraw-sub", "pbsync-write"),
    "broker, SDK subscriber": ("pb-sub", "pbraw-write"),
    "broker, SDK subscriber iterating": ("pb-sub-batches", "pbraw-write"),
    "broker, SyncClient subscriber": ("pbsync-sub", "pbraw-write"),
    "broker, SDK both ends": ("pb-sub", "pb-write"),
}
"""Who talks to whom for the per-hop breakdown: each row adds one piece to the one
before, so the differences are what each piece costs."""
HOP_WRITER_MODES = {
    "relay, replying to the writer": {"latency": "latency-replied",
                                      "single": "single-replied"},
    "broker, raw clients, no reply": {"latency": "latency-nowait"},
    "broker, SDK subscriber iterating": {"latency": "latency", "nowait": "nowait"},
    "broker, SyncClient subscriber": {"latency": "latency", "nowait": "nowait"},
}
"""Rows measured in some columns only, with the writer's mode for each."""


def _hop_run(path: str, mode: str, count: int) -> dict[str, Any]:
    sub_role, write_role = HOP_PAIRS[path]
    if path == "direct":
        sub = Peer("direct-sub", "tcp://127.0.0.1:*", str(count))
        address = sub.ready().split()[1]
        writer = Peer("raw-write", address, mode, str(count))
        writer.ready()
        writer.go()
        writer.result()
        return sub.result()
    if path.startswith("relay"):
        return run_system("raw", "tcp", mode, count)
    broker = Broker()
    try:
        sub_args = ("bench/x",) if sub_role.startswith("pb-sub") else ()
        return pair(sub_role, write_role, broker.tcp, mode, count, sub_args)
    finally:
        broker.stop()


def scenario_hops() -> dict[str, Any]:
    """The same set -> notify over tcp, adding one piece at a time: one libzmq hop, the
    raw relay's two, the broker with hand-written protocol clients at both ends, then
    the SDK at one end or both. Latency p50 (paced; the rounds' latencies pooled) and µs
    per update at full speed (the median of the rounds), every row once per round: the
    pieces are differences of rows, which one run's drift would swamp."""
    runs: list[tuple[str, Callable[[], dict[str, Any]]]] = []
    counts: dict[str, int] = {}
    for mode, count in (("latency", LATENCY_N // ROUNDS), ("single", THROUGHPUT_N),
                        ("nowait", THROUGHPUT_N), ("batched", BATCHED_N)):
        for path in HOP_PAIRS:
            if mode == "nowait" and path in ("direct", "relay"):
                continue  # their writers never wait: their single is this
            writer_mode = HOP_WRITER_MODES.get(path, {}).get(mode, mode)
            if path in HOP_WRITER_MODES and mode not in HOP_WRITER_MODES[path]:
                continue
            runs.append((f"{path}/{mode}",
                         functools.partial(_hop_run, path, writer_mode, count)))
            counts[f"{path}/{mode}"] = count
    out: dict[str, Any] = {}
    for label, rounds in _rounds(runs).items():
        value = _round_us(rounds, paced=label.endswith("/latency"))
        lost = max(counts[label] - f.get("received", 0) for f in rounds)
        out[label] = {"us": value, "lost": lost}
        print(f"hops {label}: {out[label]}", flush=True)
    return out


FANOUT_WRITES = 5_000 if QUICK else 20_000


def scenario_broker_pass() -> dict[str, Any]:
    """Each piece of the broker's pass, paced and at full speed (bench/broker_pass.py)."""
    from broker_pass import measure, measure_relay

    def raw_pair(endpoint: str, mode: str, count: int) -> dict[str, Any]:
        return pair("pbraw-sub", "pbraw-write", endpoint, mode, count)

    def relay_pair(endpoint: str, mode: str, count: int) -> dict[str, Any]:
        return pair("raw-sub", "raw-write", endpoint, mode, count)

    figures = measure(raw_pair, LATENCY_N, THROUGHPUT_N)
    figures["relay_paced"] = measure_relay(relay_pair, LATENCY_N)
    print(f"broker pass: {figures}", flush=True)
    return figures


def _raw_clients(build: str, mode: str, count: int) -> dict[str, Any]:
    """The broker, compiled or pure, between raw protocol clients."""
    broker = Broker(pure=build == "pure")
    try:
        return pair("pbraw-sub", "pbraw-write", broker.tcp, mode, count)
    finally:
        broker.stop()


def scenario_compiled() -> dict[str, Any]:
    """The hot modules compiled by mypyc against the same modules as pure Python, in
    the same run: the core in-process, and the broker between raw protocol clients
    (each build once per round: latencies pooled, the median µs per update)."""
    out: dict[str, Any] = {}
    for build in ("compiled", "pure"):
        via = [str(ROOT / "bench" / "pure.py")] if build == "pure" else []
        line = subprocess.run([sys.executable, *via, str(ROOT / "bench" / "core_speed.py")],
                              capture_output=True, text=True, check=True, cwd=ROOT).stdout
        out[build] = json.loads(line)
    runs: list[tuple[str, Callable[[], dict[str, Any]]]] = []
    for mode, count in (("latency", LATENCY_N // ROUNDS), ("single", THROUGHPUT_N),
                        ("batched", BATCHED_N)):
        for build in ("compiled", "pure"):
            runs.append((f"{build}/{mode}", functools.partial(_raw_clients, build, mode, count)))
    for label, rounds in _rounds(runs).items():
        build, mode = label.split("/")
        out[build][mode] = _round_us(rounds, paced=mode == "latency")
    print(f"compiled or pure: {out}", flush=True)
    return out


FANOUT_RUNS = 3


def _fanout_once(subscribers: int) -> dict[str, Any]:
    broker = Broker()
    peers = []
    try:
        per_process = min(subscribers, 10)
        for _ in range(subscribers // per_process):
            peers.append(Peer("pb-subs", broker.tcp, str(per_process), str(FANOUT_WRITES)))
        for peer in peers:
            peer.ready()
        writer = Peer("pb-write", broker.tcp, "nowait", str(FANOUT_WRITES))
        writer.ready()
        writer.go()
        writer.result()
        results = [peer.result() for peer in peers]
        return {"delivered_per_s": sum(r["rate"] for r in results),
                "lost": FANOUT_WRITES * subscribers - sum(r["received"] for r in results)}
    finally:
        for peer in peers:
            peer.stop()
        broker.stop()


def scenario_fanout() -> dict[str, Any]:
    """One writer sending sets as notifications (``set_nowait``), N subscribers to the
    property (10 per process) reading a batch at a time: updates delivered per second.
    Eleven processes share two CPUs here, so one run varies by a quarter: the median of
    FANOUT_RUNS runs is reported, with the most any run lost."""
    out = {}
    for subscribers in (1, 10, 100):
        runs = sorted((_fanout_once(subscribers) for _ in range(FANOUT_RUNS)),
                      key=lambda run: float(run["delivered_per_s"]))
        out[str(subscribers)] = {**runs[len(runs) // 2],
                                 "lost": max(run["lost"] for run in runs),
                                 "runs": [round(run["delivered_per_s"]) for run in runs]}
        print(f"fanout {subscribers}: {out[str(subscribers)]}", flush=True)
    return out


def scenario_snapshot_and_memory() -> dict[str, Any]:
    out: dict[str, Any] = {"memory": {}}
    for scale in SCALES:
        broker = Broker()
        try:
            before = broker.ps.memory_info().rss
            filler = Peer("pb-fill", broker.ipc, str(scale))
            filler.ready(timeout=900)
            after = broker.ps.memory_info().rss
            out["memory"][str(scale)] = {"rss_mb": after / 2**20,
                                         "bytes_per_property": (after - before) / scale}
            print(f"memory {scale}: {out['memory'][str(scale)]}", flush=True)
            if scale == 100_000:
                sub = Peer("pb-sub", broker.ipc, "fill/#", str(scale), "current")
                out["snapshot_100k"] = sub.result(timeout=300)
                print(f"snapshot: {out['snapshot_100k']}", flush=True)
            filler.go()
            filler.result()
        finally:
            broker.stop()
    return out


class Sessions:
    """Sessions held open by worker processes (``pb-sessions``), ``per_process`` each."""

    def __init__(self, broker: Broker, role: str, count: int, each: int = 1,
                 pattern: str = "watch/{i}/#", per_process: int = 2000) -> None:
        self.peers = [Peer("pb-sessions", broker.tcp, role, str(first),
                           str(min(per_process, count - first)), str(each), pattern)
                      for first in range(0, count, per_process)]
        try:
            self.seconds = max(float(peer.ready(timeout=300).split()[1])
                               for peer in self.peers)
            """How long the slowest holder waited for the broker to admit its sessions."""
        except RuntimeError:
            for peer in self.peers:
                peer.stop()
            raise

    def stop(self) -> None:
        for peer in self.peers:
            peer.go()
            peer.result()


def _cpu(ps: psutil.Process) -> float:
    times = ps.cpu_times()
    return float(times.user + times.system)


def _broker_us_per_set(broker: Broker, writes: int = 5000) -> float:
    """The broker's CPU time per set (request form, 200 in flight), fan-out included:
    every notification was handed to ZeroMQ before the last reply was."""
    writer = Peer("pb-write", broker.tcp, "single", str(writes))
    writer.ready()
    before = _cpu(broker.ps)
    writer.go()
    writer.result()
    return (_cpu(broker.ps) - before) / writes * 1e6


def scenario_set_cost() -> dict[str, Any]:
    """How a set's cost in the broker grows with subscribers of the property, with
    properties in the store, and with unrelated subscription patterns."""
    out: dict[str, Any] = {"subscribers": {}, "properties": {}, "patterns": {}}

    def measure(table: str, key: int, setup: Callable[[Broker], Callable[[], None]]) -> None:
        broker = Broker()
        try:
            teardown = setup(broker)
            out[table][str(key)] = _broker_us_per_set(broker)
            teardown()
        finally:
            broker.stop()
        print(f"set cost {table} {key}: {out[table][str(key)]:.1f} µs", flush=True)

    for count in (1, 10, 100, 1000):
        measure("subscribers", count, lambda b, n=count: Sessions(  # type: ignore[misc]
            b, "client", n, pattern="bench/x", per_process=500).stop)
    for count in (1_000, 100_000):
        def filled(broker: Broker, n: int = count) -> Callable[[], None]:
            filler = Peer("pb-fill", broker.ipc, str(n))
            filler.ready(timeout=600)
            watcher = Sessions(broker, "client", 1, pattern="bench/x")

            def stop() -> None:
                watcher.stop()
                filler.go()
                filler.result()
            return stop
        measure("properties", count, filled)
    for count in (0, 10_000):
        def patterns(broker: Broker, n: int = count) -> Callable[[], None]:
            watcher = Sessions(broker, "client", 1, pattern="bench/x")
            unrelated = Sessions(broker, "client", 1, each=n, pattern="other/{k}/#") \
                if n else None

            def stop() -> None:
                watcher.stop()
                if unrelated is not None:
                    unrelated.stop()
            return stop
        measure("patterns", count, patterns)
    return out


def _latency_now(broker: Broker) -> dict[str, float]:
    figures = pair("pb-sub", "pb-write", broker.tcp, "latency", LATENCY_N, ("bench/x",))
    return percentiles(figures["latencies"])


SESSIONS_N = 2_000 if QUICK else 10_000
PLUGINS_N = 200 if QUICK else 1_000
PLUGIN_PROPERTIES = 20


def scenario_sessions() -> dict[str, Any]:
    """Many peers at once: 1,000 plugins' declarations, then 10,000 client sessions
    (each pinging every 2 s, each with a subscription), on one broker. Broker memory,
    its idle CPU, and set -> notify latency beside them versus alone."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the broker inherits it
    out: dict[str, Any] = {}
    broker = Broker()
    held: list[Sessions] = []
    try:
        base_rss = broker.ps.memory_info().rss
        out["alone"] = _latency_now(broker)
        print(f"sessions alone: {out['alone']}", flush=True)
        for role, count, each, key in (("plugin", PLUGINS_N, PLUGIN_PROPERTIES, "plugins"),
                                       ("client", SESSIONS_N, 1, "clients")):
            rss = broker.ps.memory_info().rss
            held.append(Sessions(broker, role, count, each,
                                 per_process=250 if role == "plugin" else 2000))
            grown = broker.ps.memory_info().rss - rss
            cpu = _cpu(broker.ps)
            time.sleep(5)  # idle but for the pings: the broker's cost of holding them
            idle = (_cpu(broker.ps) - cpu) / 5 * 100
            out[key] = {"count": count, "each": each, "admit_seconds": held[-1].seconds,
                        "kb_per_session": grown / count / 1024,
                        "rss_mb": broker.ps.memory_info().rss / 2**20,
                        "idle_cpu_percent": idle, **_latency_now(broker)}
            print(f"sessions {key}: {out[key]}", flush=True)
        out["base_rss_mb"] = base_rss / 2**20
    finally:
        for sessions in held:
            sessions.stop()
        broker.stop()
    return out


async def _slow_subscriber(endpoint: str, broker: psutil.Process, writes: int) -> dict[str, Any]:
    """A client subscribed to ``#`` under policy ``all`` that never reads, while a
    plugin makes ``writes`` sets of 1 KB: what does the broker's memory do?"""
    import msgpack

    from plugboard.sdk import Client

    ctx = zmq.Context()
    slow = ctx.socket(zmq.DEALER)
    slow.setsockopt(zmq.RCVHWM, 1)
    slow.setsockopt(zmq.RCVBUF, 4096)
    slow.setsockopt(zmq.LINGER, 0)
    slow.connect(endpoint)
    try:
        slow.send(msgpack.packb([0, 1, "hello", {"versions": [1], "role": "client"}]))
        slow.send(msgpack.packb([0, 2, "subscribe", {"pattern": "#", "policy": "all",
                                                     "current": False}]))
        async with Client(endpoint, role="plugin", name="slowbench", timeout=60) as writer:
            await writer.declare("slowbench/blob", "bytes", b"")
            before = broker.memory_info().rss
            pending = []
            for index in range(writes):
                pending.append(writer.set("slowbench/blob", index.to_bytes(8, "big") * 128))
                if len(pending) == 200:
                    await asyncio.gather(*pending)
                    pending = []
                if index % 10_000 == 0:  # keeps the slow session alive; never read
                    slow.send(msgpack.packb([0, 3 + index, "ping", {}]))
            await asyncio.gather(*pending)
            after = broker.memory_info().rss
            sessions = (await writer.request("sessions"))["sessions"]
            stalled = next(s for s in sessions if s["role"] == "client")
    finally:
        slow.close(linger=0)
        ctx.term()
    return {"writes": writes, "rss_before_mb": before / 2**20, "rss_after_mb": after / 2**20,
            "drops": stalled["drops"], "queued_bytes": stalled["queued_bytes"]}


def scenario_slow_subscriber() -> dict[str, Any]:
    broker = Broker()
    try:
        out = asyncio.run(_slow_subscriber(broker.ipc, broker.ps, 100_000))
    finally:
        broker.stop()
    print(f"slow subscriber: {out}", flush=True)
    return out


CALLS_N = 2000


async def _call_round_trips(endpoint: str) -> list[int]:
    from plugboard.sdk import Client

    async with Client(endpoint, timeout=30) as caller:
        state = await caller.subscribe("system/plugins/echo/state")
        async for event in state:
            if getattr(event, "value", None) == "ready":
                break
        await state.close()
        times = []
        for index in range(CALLS_N + 100):
            start = time.perf_counter_ns()
            await caller.call("echo", "echo", value=index)
            if index >= 100:  # warm-up excluded
                times.append(time.perf_counter_ns() - start)
        return times


def _raw_echo_round_trips() -> list[int]:
    """A DEALER asking a ROUTER that echoes in another thread: the floor of a round trip."""
    import threading

    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")

    def serve() -> None:
        for _ in range(CALLS_N + 100):
            router.send_multipart(router.recv_multipart())

    thread = threading.Thread(target=serve)
    thread.start()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{port}")
    times = []
    for index in range(CALLS_N + 100):
        start = time.perf_counter_ns()
        dealer.send(index.to_bytes(8, "big"))
        dealer.recv()
        if index >= 100:
            times.append(time.perf_counter_ns() - start)
    thread.join()
    dealer.close(linger=0)
    router.close(linger=0)
    ctx.term()
    return times


def scenario_calls() -> dict[str, Any]:
    broker = Broker("--plugins", str(ROOT / "bench" / "plugins" / "echo"))
    try:
        through = percentiles(asyncio.run(_call_round_trips(broker.tcp)))
    finally:
        broker.stop()
    out = {"call": through, "raw_echo": percentiles(_raw_echo_round_trips())}
    print(f"calls: {out}", flush=True)
    return out


def scenario_idle() -> dict[str, Any]:
    broker = Broker()
    peers = [Peer("pb-idle", broker.ipc, f"idle{i}") for i in range(20)]
    try:
        for peer in peers:
            peer.ready()
        broker.ps.cpu_percent()
        time.sleep(10)  # the measurement window itself
        out = {"cpu_percent_of_one_core": broker.ps.cpu_percent()}
    finally:
        for peer in peers:
            peer.go()
            peer.stop()
        broker.stop()
    print(f"idle: {out}", flush=True)
    return out


def _plugin_dirs(root: Path, count: int) -> None:
    for i in range(count):
        folder = root / f"p{i}"
        folder.mkdir(parents=True)
        (folder / "plugin.toml").write_text(
            f'name = "p{i}"\nversion = "1"\nprotocol = [1]\n[run]\n'
            f'command = ["{{python}}", "{ROOT}/plugins/clock/plugin.py"]\n'
            f'env = {{ PYTHONPATH = "{ROOT}" }}\n'
            f'[[exports]]\npattern = "p{i}/+"\ntype = "any"\n')


async def _until_ready(endpoint: str, count: int, started: float) -> float:
    from plugboard.sdk import Change, Client

    async with Client(endpoint, timeout=60) as client:
        sub = await client.subscribe("system/plugins/+/state")
        ready: set[str] = set()
        async for event in sub:
            if isinstance(event, Change) and event.value == "ready":
                ready.add(event.name)
                if len(ready) == count:
                    return time.monotonic() - started
    return float("nan")


def scenario_startup() -> dict[str, Any]:
    out = {}
    for count in (1, 20):
        root = Path(tempfile.mkdtemp(prefix="pbp-"))
        _plugin_dirs(root, count)
        launched = time.monotonic()
        broker = Broker("--plugins", str(root))
        try:
            out[f"{count}_plugins_s"] = asyncio.run(_until_ready(broker.ipc, count, launched))
        finally:
            broker.stop()
            shutil.rmtree(root, ignore_errors=True)
    print(f"startup: {out}", flush=True)
    return out


def scenario_profile() -> dict[str, Any]:
    """Where the broker's time goes in the one-set-per-message throughput scenario."""
    import pstats

    path = Path(tempfile.mkdtemp(prefix="pbprof-")) / "broker.prof"
    broker = Broker(profile=path)
    try:
        pair("pb-sub", "pb-write", broker.tcp, "single", THROUGHPUT_N // 2, ("bench/x",))
    finally:
        broker.stop()
    stats = pstats.Stats(str(path))
    rows = []
    total = 0.0
    for (filename, line, name), (_, calls, tottime, _cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        if name == "poll" or "epoll" in name:
            continue
        total += tottime
        rows.append((tottime, calls, f"{Path(filename).name}:{line}({name})"))
    rows.sort(reverse=True)
    out: dict[str, Any] = {"busy_seconds": total, "messages": THROUGHPUT_N // 2,
           "top": [{"function": f, "calls": c, "share": t / total} for t, c, f in rows[:10]]}
    shutil.rmtree(path.parent, ignore_errors=True)
    print(f"profile: {out['top'][:3]}", flush=True)
    return out


def ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "n/a"
    return f"{a / b:.2f}"


def write_report(results: dict[str, Any], facts: dict[str, Any]) -> str:
    lat, thr = results["latency"], results["throughput"]
    lines = ["# Benchmarks", "",
             f"Measured {facts['date']} by `make bench` on {facts['cpus']} CPUs "
             f"({facts['machine']}, Python {facts['python']}, pyzmq {facts['pyzmq']}). "
             "Every reference ran on the same machine in the same run; read the ratios, "
             "absolute figures drift 10-30 % between runs here." + ran_note(facts), "",
             "## 1. Set → notify latency (one-way, writer process → subscriber process)", "",
             f"One set per millisecond, {LATENCY_N // LATENCY_ROUNDS * LATENCY_ROUNDS:,} per "
             f"system in {LATENCY_ROUNDS} rounds (every system runs once per round), the "
             "rounds' latencies pooled. Plugboard's rows: the asyncio SDK at both ends, the "
             "subscriber's changes handed to an `on_batch` callback (section 9 has the "
             "SDK's other ways to read them).", "",
             "| system | transport | p50 µs | p99 µs | p50 vs raw relay |", "|---|---|---|---|---|"]
    for key, fig in lat.items():
        kind, transport = key.split("/")
        raw = lat.get(f"raw/{transport}")
        if fig is None:
            lines.append(f"| {kind} | {transport} | not installed | | |")
            continue
        lines.append(f"| {kind} | {transport} | {fig['p50_us']:.0f} | {fig['p99_us']:.0f} | "
                     f"{ratio(fig['p50_us'], raw and raw['p50_us'])} |")
    lines += ["", "## 2. Throughput (updates delivered to one subscriber per second, tcp)", "",
              f"The median of {ROUNDS} rounds (every system runs once per round); lost: "
              "the most any round lost.", "",
              "| system | mode | updates/s | lost | vs raw relay |", "|---|---|---|---|---|"]
    for key, fig in thr.items():
        kind, mode = key.split("/")
        raw = thr.get(f"raw/{RELAY_FORM.get(mode, mode)}")
        if fig is None:
            lines.append(f"| {kind} | {mode} | not installed | | |")
            continue
        lines.append(f"| {kind} | {mode} | {fig['rate']:.0f} | {fig['lost']} | "
                     f"{ratio(fig['rate'], raw and raw['rate'])} |")
    curve_lat, plain_lat = lat.get(f"{CURVE}/tcp"), lat.get("plugboard/tcp")
    curve_thr, plain_thr = thr.get(f"{CURVE}/single"), thr.get("plugboard/single")
    if curve_lat and plain_lat and curve_thr and plain_thr:
        lines += ["", f"CurveZMQ on tcp (`{CURVE}`) against plain tcp in the same run: "
                  f"latency p50 {ratio(curve_lat['p50_us'], plain_lat['p50_us'])}×, "
                  f"one-set-per-message throughput "
                  f"{ratio(curve_thr['rate'], plain_thr['rate'])}×."]
    lines += ["", "`nowait`: one set per message sent as a notification (`set_nowait`, no "
              "reply), a `ping` after every 2,000; its ratio is to the raw relay's `single`. "
              "`batched-nowait`: `set_many` of 100 sent as notifications "
              "(`set_many_nowait`), a `ping` after every 2,000 updates; its ratio is to "
              "the raw relay's `batched`.",
              "`single`: one set per message, 200 requests in flight (Plugboard), "
              "fire-and-forget sends (raw relay), SET+PUBLISH pipelined by 100 (Redis), "
              "QoS 0 retained publishes (MQTT), core publishes (`nats`), JetStream KV `put`s "
              "each acknowledged, seen by a KV watch (`natskv`). `batched`: `set_many` of "
              "100 (Plugboard), "
              "100 updates per frame (raw relay). Plugboard's subscriber takes the changes "
              "as in section 1, through `on_batch`.", "",
              "## 3. Fan-out (one writer, N subscribers to the same property)", "",
              f"{FANOUT_WRITES:,} sets sent as notifications; subscribers read a batch at a "
              f"time, 10 per process. The median of {FANOUT_RUNS} runs (eleven processes "
              "on two CPUs vary by a quarter from run to run); lost: the most any run "
              "lost.", "",
              "| subscribers | updates delivered/s | lost |", "|---|---|---|"]
    for n, fig in results["fanout"].items():
        lines.append(f"| {n} | {fig['delivered_per_s']:.0f} | {fig['lost']} |")
    snap = results["scale"].get("snapshot_100k", {})
    lines += ["", "## 4. Initial snapshot of 100,000 properties", "",
              f"{snap.get('received', 0)} of 100000 current values arrived in "
              f"{snap.get('seconds', float('nan')):.2f} s, timed from the subscribe "
              "request to the last value read.", "",
              "## 5. Scale and memory", "", "| properties | broker RSS MB | bytes/property |",
              "|---|---|---|"]
    for n, fig in results["scale"]["memory"].items():
        lines.append(f"| {n} | {fig['rss_mb']:.0f} | {fig['bytes_per_property']:.0f} |")
    lines += set_cost_section(results.get("set_cost")) + \
        sessions_section(results.get("sessions"))
    slow = results["slow_subscriber"]
    lines += ["### A subscriber that never reads", "",
              f"A client subscribed to `#` under policy `all` that reads nothing while a "
              f"plugin makes {slow['writes']:,} sets of 1 KB: broker RSS "
              f"{slow['rss_before_mb']:.0f} MB before, {slow['rss_after_mb']:.0f} MB after "
              f"({slow['queued_bytes'] / 2**20:.1f} MiB held for it, the default "
              f"`--peer-queue-bytes` is 8 MiB; {slow['drops']:,} changes dropped and "
              "reported to it as `gap`).",
              ""]
    calls = results["calls"]
    lines += ["### Plugin method calls", "",
              "| round trip (tcp) | p50 µs | p99 µs | p50 vs raw echo |", "|---|---|---|---|",
              f"| client → broker → plugin → back (`call`, SDK) | "
              f"{calls['call']['p50_us']:.0f} | {calls['call']['p99_us']:.0f} | "
              f"{ratio(calls['call']['p50_us'], calls['raw_echo']['p50_us'])} |",
              f"| DEALER ↔ ROUTER echo (pyzmq, no broker) | "
              f"{calls['raw_echo']['p50_us']:.0f} | {calls['raw_echo']['p99_us']:.0f} | 1.00 |",
              "", "## 6. Idle cost", "",
              f"Broker CPU over 10 s with 20 idle plugins connected: "
              f"{results['idle']['cpu_percent_of_one_core']:.2f} % of one core.", "",
              "## 7. Start-up", ""]
    start = results["startup"]
    lines += [f"From broker launch to ready: 1 Python plugin {start['1_plugins_s']:.2f} s; "
              f"20 Python plugins {start['20_plugins_s']:.2f} s.", "",
              "## 8. Persistence", "", "See [BENCHMARKS-persistence.md]"
              "(BENCHMARKS-persistence.md) (`bench/persistence.py`).", ""]
    lines += hops_section(results.get("hops")) + \
        broker_pass_section(results.get("broker_pass")) + \
        compiled_section(results.get("compiled"))
    lines += ["## Targets", ""] + targets(results) + remaining(results)
    prof = results["profile"]
    lines += ["", "## Where the broker's time goes", "",
              f"cProfile of the broker during the one-set-per-message scenario "
              f"({prof['messages']} sets, {prof['busy_seconds']:.2f} s busy, waiting in "
              "epoll excluded; cProfile itself inflates the figures). A compiled module "
              "shows as one entry (`BrokerCore.receive`: decode, checks, apply, queue); "
              "`compile`, `exec` and `marshal` are the imports at start-up:", "",
              "| function | calls | share of busy time |", "|---|---|---|"]
    for row in prof["top"]:
        lines.append(f"| `{row['function']}` | {row['calls']} | {row['share']:.0%} |")
    return "\n".join(lines) + "\n"


def ran_note(facts: dict[str, Any]) -> str:
    """Say which scenarios ran at another time than the rest (``run.py NAME...``)."""
    ran: dict[str, str] = facts.get("ran", {})
    if len(set(ran.values())) <= 1:
        return ""
    dates: dict[str, list[str]] = {}
    for name, date in ran.items():
        dates.setdefault(date, []).append(name)
    return " Scenarios by the time they ran: " + "; ".join(
        f"{date}: {', '.join(names)}" for date, names in sorted(dates.items())) + "."


def set_cost_section(cost: dict[str, Any] | None) -> list[str]:
    if not cost or "subscribers" not in cost:
        return []
    lines = ["", "### What a set costs the broker", "",
             "Broker CPU time per set (request form, 200 in flight), fan-out included, "
             "read from the process's CPU counters:", "",
             "| grows with | count | µs of broker CPU per set |", "|---|---|---|"]
    for table, label in (("subscribers", "subscribers of the property"),
                         ("properties", "properties in the store"),
                         ("patterns", "unrelated subscription patterns")):
        for count, us in cost[table].items():
            lines.append(f"| {label} | {int(count):,} | {us:.1f} |")
    return lines + [""]


def sessions_section(fig: dict[str, Any] | None) -> list[str]:
    if not fig:
        return []
    alone, plugins, clients = fig["alone"], fig["plugins"], fig["clients"]
    return [
        "### Many peers at once", "",
        f"One broker; first {plugins['count']:,} plugin sessions declaring "
        f"{plugins['each']} properties each, then {clients['count']:,} client sessions "
        "with a subscription each, every session pinging every 2 s (as the SDK does), "
        "the pings spread evenly over the 2 s (a two-hundredth of the sessions every "
        "10 ms). Set → notify latency of one more writer and subscriber beside them "
        "(tcp). Idle CPU: the broker's, holding the sessions with nothing else to do; a "
        "ping arriving alone gets a pass of its own, run cold:", "",
        "| broker holds | admitted in s | KiB per session | broker RSS MB | idle CPU % "
        "| p50 µs | p99 µs | p99 vs alone |", "|---|---|---|---|---|---|---|---|",
        f"| nothing else | | | {fig['base_rss_mb']:.0f} | | {alone['p50_us']:.0f} | "
        f"{alone['p99_us']:.0f} | 1.00 |",
        f"| + {plugins['count']:,} plugins | {plugins['admit_seconds']:.1f} | "
        f"{plugins['kb_per_session']:.1f} | {plugins['rss_mb']:.0f} | "
        f"{plugins['idle_cpu_percent']:.1f} | {plugins['p50_us']:.0f} | "
        f"{plugins['p99_us']:.0f} | {ratio(plugins['p99_us'], alone['p99_us'])} |",
        f"| + {clients['count']:,} clients | {clients['admit_seconds']:.1f} | "
        f"{clients['kb_per_session']:.1f} | {clients['rss_mb']:.0f} | "
        f"{clients['idle_cpu_percent']:.1f} | {clients['p50_us']:.0f} | "
        f"{clients['p99_us']:.0f} | {ratio(clients['p99_us'], alone['p99_us'])} |",
        ""]


def hop_us(hops: dict[str, Any], path: str, mode: str) -> float:
    """µs of one per-hop row and column; NaN where it was not measured (a row added
    since the saved figures)."""
    fig = hops.get(f"{path}/{mode}")
    return float(fig["us"]) if fig else float("nan")


def hops_section(hops: dict[str, Any] | None) -> list[str]:
    """The per-hop table: each piece's µs as the difference of two rows."""
    if not hops:
        return []

    def us(path: str, mode: str) -> float:
        return hop_us(hops, path, mode)

    modes = ("latency", "single", "nowait", "batched")
    lines = ["## 9. Where the time goes, hop by hop", "",
             "The same set → notify over tcp, one piece added at a time. `direct`: the "
             "writer's frames straight into the subscriber (one libzmq hop); `relay`: the "
             "raw pyzmq relay (two hops and its Python); `raw clients`: the broker with "
             "PROTOCOL.md spoken by hand (pyzmq + msgpack) at both ends; then the SDK at "
             "one end or both (an asyncio subscriber's changes handed to an `on_batch` "
             "callback, unless the row says otherwise). Latency: p50 µs one-way, paced, over "
             f"{LATENCY_N // ROUNDS * ROUNDS:,} sets. The other columns: µs per update at "
             "full speed (1 / rate), the median of the rounds. Every row ran once in each "
             f"of {ROUNDS} rounds, so a drift of the machine falls on all rows alike.", "",
             "| path | latency p50 | single | nowait | batched (set_many of 100) |",
             "|---|---|---|---|---|"]
    for path in HOP_PAIRS:
        cells = [f"{us(path, m):.1f}" if us(path, m) == us(path, m) else "—" for m in modes]
        lines.append(f"| {path} | " + " | ".join(cells) + " |")
    def broker_over_relay(mode: str) -> float:
        """The broker against the relay doing the same: a reply per set in both or in
        neither."""
        if mode == "latency":
            return us("broker, raw clients, no reply", mode) - us("relay", mode)
        if mode == "nowait":
            return us("broker, raw clients", mode) - us("relay", "single")
        if mode == "single":
            return us("broker, raw clients", mode) - us("relay, replying to the writer", mode)
        return us("broker, raw clients", mode) - us("relay", mode)

    def broker_reply(mode: str) -> float:
        if mode == "latency":
            return us("broker, raw clients", mode) - us("broker, raw clients, no reply", mode)
        if mode == "single":
            return us("broker, raw clients", mode) - us("broker, raw clients", "nowait")
        return float("nan")

    rows: list[tuple[str, Callable[[str], float]]] = [
        ("libzmq + kernel, one hop (direct)", lambda m: us("direct", m)),
        ("a middle process: the relay, two hops (relay)", lambda m: us("relay", m)),
        ("a reply per set, in the relay",
         lambda m: us("relay, replying to the writer", m) - us("relay", m)),
        ("the broker in the middle instead of the relay (replying alike)",
         broker_over_relay),
        ("a reply per set, in the broker", broker_reply),
        ("writer SDK (asyncio Client)",
         lambda m: us("broker, SDK writer", m) - us("broker, raw clients", m)),
        ("writer SDK (SyncClient)",
         lambda m: us("broker, SyncClient writer", m) - us("broker, raw clients", m)),
        ("subscriber SDK (asyncio Client, on_batch)",
         lambda m: us("broker, SDK subscriber", m) - us("broker, raw clients", m)),
        ("subscriber SDK (asyncio Client, `async for` over batches())",
         lambda m: us("broker, SDK subscriber iterating", m) - us("broker, raw clients", m)),
        ("subscriber SDK (SyncClient, next_batch)",
         lambda m: us("broker, SyncClient subscriber", m) - us("broker, raw clients", m)),
    ]
    lines += ["", "Each piece's share, as the difference of two rows above (µs; negative "
              "or tiny means within run-to-run noise):", "",
              "| piece | latency p50 | single | nowait | batched |", "|---|---|---|---|---|"]
    for label, of in rows:
        cells = []
        for mode in modes:
            value = of(mode)
            cells.append(f"{value:.1f}" if value == value else "—")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    hop, relay = us("direct", "latency"), us("relay", "latency")
    broker = us("broker, raw clients, no reply", "latency")
    reply = us("broker, raw clients", "latency") - broker
    relay_reply = us("relay, replying to the writer", "latency") - relay
    blocking = us("broker, raw clients", "latency")
    subscriber = us("broker, SDK subscriber", "latency") - blocking
    iterating = us("broker, SDK subscriber iterating", "latency") - blocking
    sync_subscriber = us("broker, SyncClient subscriber", "latency") - blocking
    lines += ["", f"Read for latency: one libzmq hop, with the wake-up of an idle process, "
              f"costs {hop:.0f} µs here and the relay's two {relay:.0f} µs. The broker in "
              f"the middle instead of the relay adds {broker - relay:.0f} µs (decode, "
              "session and ACL, apply, queue, encode, send, in an asyncio loop). A writer "
              f"that waits for its reply adds {reply:.0f} µs to the subscriber's latency "
              f"through the broker and {relay_reply:.0f} µs through the relay: on this "
              "2-CPU machine the writer waking for its reply competes with the subscriber "
              "waking for its notification. The asyncio SDK subscriber adds "
              f"{subscriber:.0f} µs over a blocking raw one when its changes go to an "
              "`on_batch` callback (the event loop's wake-up, the frame decoded and "
              f"routed to its subscription) and {iterating:.0f} µs when a task iterates "
              "`batches()` (the task resumed as well); the SyncClient's `next_batch` "
              f"adds {sync_subscriber:.0f} µs. Code that runs once per message after an "
              "idle "
              "millisecond runs cold (caches and branch predictors), several times slower "
              "than the same code in a tight loop, which is why the per-message pieces "
              "weigh more in the paced latency column than in the throughput ones."]
    return lines + [""]


PASS_PIECES = {
    "read": "read: `EVENTS` and the receives (libzmq)",
    "core_receive": "core receive: decode, session, checks, apply, reply queued",
    "core_flush": "core flush: timers, the subscriber's batch built and encoded",
    "send": "send: the frames handed to libzmq",
    "after": "after: the next timer, `EVENTS` asked again",
}


def broker_pass_section(fig: dict[str, Any] | None) -> list[str]:
    """Each piece of the broker's pass beside the relay's (bench/broker_pass.py)."""
    if not fig:
        return []
    paced, alone, busy = fig["paced"], fig["paced_no_reply"], fig["full_speed"]
    relay = fig.get("relay_paced", {})
    lines = ["### Inside the broker's pass", "",
             "The broker in the benchmark's own process with each piece of its socket "
             "loop's pass timed (`bench/broker_pass.py`), raw protocol clients at both "
             "ends; the raw relay's loop timed the same way. Paced: the median µs of a "
             "pass that handles one message after an idle millisecond "
             f"({fig['paced_passes']} passes), for a set the writer waits a reply to and "
             "for one it does not (`set` as a notification, like the relay's). Full "
             "speed: µs per message over all passes, writes that need no reply "
             f"({fig['full_speed_messages_per_pass']:.0f} messages a pass on average).", "",
             "| piece | broker, paced, reply | broker, paced, no reply | relay, paced | "
             "broker, full speed, per message |", "|---|---|---|---|---|"]
    relay_of = {"read": "read", "core_receive": "relay", "send": "send"}
    for key, label in PASS_PIECES.items():
        mine = relay.get(relay_of.get(key, ""))
        theirs = f"{mine:.1f}" if mine is not None else "—"
        lines.append(f"| {label} | {paced[key]:.1f} | {alone[key]:.1f} | {theirs} | "
                     f"{busy[key]:.2f} |")
    lines.append(f"| the pass | {sum(paced.values()):.1f} | {sum(alone.values()):.1f} | "
                 f"{sum(relay.values()):.1f} | {sum(busy.values()):.2f} |")
    core = alone["core_receive"] + alone["core_flush"]
    lines += ["", "In the relay's column the core rows hold its Python (unpack, store, "
              "pack)."]
    if relay:
        lines[-1] += (
            f" Paced, with no reply on either side: reading takes {alone['read']:.0f} µs "
            f"(the relay {relay['read']:.0f}), sending {alone['send']:.0f} µs (the relay "
            f"{relay['send']:.0f}), and the core (ours, compiled) {core:.0f} µs where the "
            f"relay's Python takes {relay['relay']:.0f} µs; after its send the broker "
            f"spends {alone['after']:.0f} µs more (the next timer, `EVENTS`), off the "
            "change's path. With a reply "
            f"the pass also sends the reply, after the change (send {alone['send']:.0f} "
            f"µs without, {paced['send']:.0f} µs with). "
            "Each libzmq call made after an idle moment asks the kernel (a `poll` of "
            "the socket's mailbox, an eventfd write to wake libzmq's I/O thread) and "
            "runs with cold caches; on two CPUs a send can also find the broker's thread "
            "set aside while libzmq's I/O thread and the woken subscriber run, which is "
            "why the send varies most from run to run. The core's work is the decode, "
            "checks, apply and encode that the relay does not do; warm, in a tight "
            "loop, the same work "
            "is section 10's \"one set\".")
    return lines + [""]


def compiled_section(fig: dict[str, Any] | None) -> list[str]:
    if not fig:
        return []
    rows = [("core in-process: set_many, µs per item", "set_many_us_per_item"),
            ("the same under Python's default collector thresholds",
             "set_many_default_gc_us_per_item"),
            ("the same, the subscriber under policy latest (the SDK's default: writes "
             "between two flushes coalesce)",
             "set_many_latest_us_per_item"),
            ("core in-process: one set, µs", "set_us"),
            ("msgpack alone: a set_many item decoded and encoded, µs", "msgpack_us_per_item"),
            ("broker, raw clients: latency p50 µs", "latency"),
            ("broker, raw clients: single, µs per update", "single"),
            ("broker, raw clients: set_many of 100, µs per update", "batched")]
    lines = ["## 10. Compiled or pure", "",
             "The hot modules (setup.py) compiled by mypyc, against the very same modules "
             "run as Python (`bench/pure.py`), in the same run. The core in-process runs "
             "under the cycle collector's thresholds the daemon sets (`collect_less`: "
             "10,000 allocations before a gen-0 collection, start-up frozen), and once "
             "more under Python's defaults (700). The broker rows ran both builds once in "
             f"each of {ROUNDS} rounds:", "",
             "| figure | compiled | pure Python | pure / compiled |", "|---|---|---|---|"]
    for label, key in rows:
        if key not in fig["compiled"] or key not in fig["pure"]:
            continue  # measured by a later version of bench/core_speed.py
        compiled, pure = fig["compiled"][key], fig["pure"][key]
        digits = 2 if compiled < 10 else 1  # the in-process rows are fractions of a µs
        lines.append(f"| {label} | {compiled:.{digits}f} | {pure:.{digits}f} | "
                     f"{ratio(pure, compiled)} |")
    return lines + [""]


def remaining(results: dict[str, Any]) -> list[str]:
    """What stands between the missed targets and the relay, from the per-hop rows and
    the broker's pass."""
    hops, inside = results.get("hops"), results.get("broker_pass")
    if not hops:
        return []

    def us(path: str, mode: str) -> float:
        return hop_us(hops, path, mode)

    relay, broker = us("relay", "latency"), us("broker, raw clients, no reply", "latency")
    sdk_sub = us("broker, SDK subscriber", "latency") - us("broker, raw clients", "latency")
    lines = [
        "", "What stands between the missed targets and the relay (section 9): for "
        f"latency, the broker in the middle adds {broker - relay:.0f} µs to the relay's "
        f"{relay:.0f} µs, an asyncio subscriber (`on_batch`) {sdk_sub:.0f} µs and a "
        "writer waiting for its reply the rest."]
    if inside:
        paced, relay = inside["paced_no_reply"], inside.get("relay_paced", {})
        core = paced["core_receive"] + paced["core_flush"]
        warm = results.get("compiled", {}).get("compiled", {}).get("set_us")
        lines[-1] += (
            f" Inside the broker's pass, paced, the core (decode, checks, apply, encode: "
            f"ours) takes {core:.0f} µs and the libzmq calls around it "
            f"{sum(paced.values()) - core:.0f} µs"
            + (f" (the relay's: its Python {relay['relay']:.0f} µs, its libzmq calls "
               f"{relay['read'] + relay['send']:.0f} µs)" if relay else "")
            + (f"; the same core work takes {warm:.1f} µs in a tight loop (section 10), "
               "so most of it is code run cold after an idle millisecond, which compiling "
               "did not change" if warm else "") + ".")
    lines[-1] += (
        " For one set per message with a reply to each, the relay replying alike costs "
        f"{us('relay, replying to the writer', 'single'):.1f} µs per update against its "
        f"{us('relay', 'single'):.1f} µs without replies, the broker between raw clients "
        f"{us('broker, raw clients', 'single'):.1f} µs and the SDK at both ends "
        f"{us('broker, SDK both ends', 'single'):.1f} µs."
        " For one set per message without replies, the broker between raw clients costs "
        f"{us('broker, raw clients', 'nowait'):.1f} µs per update against the relay's "
        f"{us('relay', 'single'):.1f} µs, and the SDK at both ends "
        f"{us('broker, SDK both ends', 'nowait'):.1f} µs. For `set_many`, "
        f"{us('broker, raw clients', 'batched'):.1f} µs per update between raw clients "
        f"against the relay's {us('relay', 'batched'):.1f} µs: the broker checks each "
        "item against its declaration and keeps its revision and timestamp, which the "
        "relay does not (msgpack's own share of an item is section 10's \"msgpack "
        "alone\").")
    return lines


def targets(results: dict[str, Any]) -> list[str]:
    lat, thr = results["latency"], results["throughput"]
    out = []

    def line(ok: bool | None, text: str) -> None:
        out.append(f"- {'met' if ok else 'MISSED' if ok is not None else 'not measured'}: "
                   f"{text}")

    raw = lat.get("raw/tcp")
    for label in ("plugboard", "plugboard nowait"):
        pb = lat.get(f"{label}/tcp")
        if not (pb and raw):
            continue
        line(pb["p50_us"] <= 1.25 * raw["p50_us"], f"{label}: latency p50 ≤ 1.25× raw "
             f"relay (tcp: {pb['p50_us'] / raw['p50_us']:.2f}×)")
        line(pb["p99_us"] <= 1.5 * raw["p99_us"], f"{label}: latency p99 ≤ 1.5× raw relay "
             f"(tcp: {pb['p99_us'] / raw['p99_us']:.2f}×)")
        for ref in ("redis", "mqtt", "nats"):
            other = lat.get(f"{ref}/tcp")
            line(bool(other) and pb["p50_us"] < other["p50_us"],
                 f"{label}: latency p50 below {ref}")
    nowait, replied, rawt = (thr.get("plugboard/nowait"), thr.get("plugboard/single"),
                             thr.get("raw/single"))
    if nowait and replied and rawt:
        # The relay's writer never waits; Plugboard's set in the same form is set_nowait
        # (the "writers that do not wait"). A reply per set is shown beside it.
        line(nowait["rate"] >= rawt["rate"] and not nowait["lost"],
             "one set per message ≥ 1.0× raw relay, 0 lost: sent as notifications "
             f"(`set_nowait`, like the relay's writer) {nowait['rate'] / rawt['rate']:.2f}×, "
             f"{nowait['lost']} lost; with a reply to each set (`set`, which the relay does "
             f"not send) {replied['rate'] / rawt['rate']:.2f}× (the relay replying alike: "
             "section 9)")
    nowait, replied, rawt = (thr.get("plugboard/batched-nowait"), thr.get("plugboard/batched"),
                             thr.get("raw/batched"))
    if nowait and replied and rawt:
        line(nowait["rate"] >= 0.5 * rawt["rate"] and not nowait["lost"],
             "`set_many` of 100 ≥ 0.5× raw relay, 0 lost: sent as notifications "
             f"(`set_many_nowait`, like the relay's writer) {nowait['rate'] / rawt['rate']:.2f}×, "
             f"{nowait['lost']} lost; each answered (`set_many`, 10 in flight) "
             f"{replied['rate'] / rawt['rate']:.2f}×")
    fan = results.get("fanout", {}).get("100")
    line(fan and fan["delivered_per_s"] >= 1e6 if fan else None,
         "fan-out to 100 subscribers ≥ 1M updates/s"
         + (f" ({fan['delivered_per_s'] / 1e6:.2f}M)" if fan else ""))
    snap = results["scale"].get("snapshot_100k", {})
    line(snap.get("received") == 100_000 and snap.get("seconds", 99) < 1.0,
         f"100k snapshot complete in under 1 s ({snap.get('seconds', float('nan')):.2f} s)")
    mem = results["scale"]["memory"].get("1000000")
    line(mem and mem["bytes_per_property"] < 512 if mem else None,
         "under 512 bytes per property at 1M properties"
         + (f" ({mem['bytes_per_property']:.0f})" if mem else ""))
    line(results["idle"]["cpu_percent_of_one_core"] < 1.0, "idle CPU under 1 % of one core")
    return out


SCENARIOS: dict[str, Callable[[], dict[str, Any]]] = {
    "latency": scenario_latency,
    "throughput": scenario_throughput,
    "hops": scenario_hops,
    "broker_pass": scenario_broker_pass,
    "compiled": scenario_compiled,
    "fanout": scenario_fanout,
    "scale": scenario_snapshot_and_memory,
    "set_cost": scenario_set_cost,
    "sessions": scenario_sessions,
    "slow_subscriber": scenario_slow_subscriber,
    "calls": scenario_calls,
    "idle": scenario_idle,
    "startup": scenario_startup,
    "profile": scenario_profile,
}


def main() -> None:
    """``bench/run.py`` runs every scenario; ``bench/run.py hops fanout`` runs those
    and keeps the other figures of the last run (the report says when each scenario
    ran); ``bench/run.py --report`` writes the report again from the saved figures."""
    saved = ROOT / "bench" / "results" / "bench.json"
    if sys.argv[1:] == ["--report"]:
        previous = json.loads(saved.read_text())
        (ROOT / "docs" / "BENCHMARKS.md").write_text(
            write_report(previous["results"], previous["facts"]))
        return
    chosen = sys.argv[1:] or list(SCENARIOS)
    unknown = set(chosen) - set(SCENARIOS)
    if unknown:
        sys.exit(f"unknown scenario(s) {sorted(unknown)}; choose from {list(SCENARIOS)}")
    facts: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"),
                             "machine": platform.machine(),
             "cpus": os.cpu_count(), "python": platform.python_version(),
             "pyzmq": zmq.pyzmq_version()}
    results: dict[str, Any] = {}
    ran: dict[str, str] = {}
    if len(chosen) < len(SCENARIOS) and saved.exists():
        previous = json.loads(saved.read_text())
        results, ran = previous["results"], previous.get("ran", {})
        ran = {name: ran.get(name, previous["facts"]["date"]) for name in results}
    for name in chosen:
        results[name] = SCENARIOS[name]()
        ran[name] = facts["date"]
    facts["ran"] = ran
    saved.parent.mkdir(exist_ok=True)
    saved.write_text(json.dumps({"facts": facts, "results": results, "ran": ran}, indent=1))
    report = write_report(results, facts)
    (ROOT / "docs").mkdir(exist_ok=True)
    (ROOT / "docs" / "BENCHMARKS.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
