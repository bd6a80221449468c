"""What every benchmark scenario stands on: the worker processes, a broker and the
reference systems started for one scenario, a subscriber and a writer paired through
them, rounds that interleave systems, and the sizes of the runs (``BENCH_QUICK=1``: a
smaller run)."""

from __future__ import annotations

import json
import os
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
    """A worker process: waits for its 'ready', says 'go', reads its JSON result.
    ``program``: another program than bench/worker.py, given ``args``."""

    def __init__(self, *args: str, env: dict[str, str] | None = None,
                 program: Path | None = None) -> None:
        self.role = program.name if program else args[0]
        command = [str(program)] if program else WORKER
        self.proc = subprocess.Popen([*command, *args], stdin=subprocess.PIPE,
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
        if kind in ("raw", RELAY_UVLOOP, C_RELAY):
            bind = f"ipc://{self.dir}/r.sock" if transport == "ipc" else "tcp://127.0.0.1:*"
            self.peer = Peer(bind, program=C_RELAY_BINARY) if kind == C_RELAY else Peer(
                "raw-relay", bind, *(["uvloop"] if kind == RELAY_UVLOOP else []))
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

    @property
    def pid(self) -> int:
        """The middle process: the relay, or the server."""
        proc = self.peer.proc if self.peer is not None else self.proc
        assert proc is not None
        return proc.pid

    @staticmethod
    def available(kind: str) -> bool:
        if kind == C_RELAY:
            return C_RELAY_BINARY.exists()
        return kind in ("raw", RELAY_UVLOOP) or shutil.which({
            "redis": "redis-server", "mqtt": "mosquitto", "nats": "nats-server",
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
    got["writer_cpu_s"] = written.get("cpu_s")
    return got


def percentiles(latencies: list[int]) -> dict[str, float]:
    if not latencies:
        return {"p50_us": float("nan"), "p99_us": float("nan")}
    ordered = sorted(latencies)
    return {"p50_us": ordered[len(ordered) // 2] / 1000,
            "p99_us": ordered[int(len(ordered) * 0.99)] / 1000}


def cpu_s(ps: psutil.Process) -> float:
    """CPU seconds a process has taken so far (all its threads): from each thread's
    /proc schedstat, in nanoseconds, where Linux has it (the counters psutil reads tick
    at 10 ms, a tenth of what a relay takes in a whole run here)."""
    try:
        return sum(int((task / "schedstat").read_text().split()[0])
                   for task in Path(f"/proc/{ps.pid}/task").iterdir()) / 1e9
    except (OSError, ValueError, IndexError):
        times = ps.cpu_times()
        return float(times.user + times.system)


def run_system(kind: str, transport: str, mode: str, count: int) -> dict[str, Any]:
    """One pair through ``kind``; its figures also hold the middle process's CPU time
    over the pair (``middle_cpu_s``)."""
    if kind.startswith("plugboard"):
        broker = Broker(curve=kind == CURVE)
        try:
            address = broker.ipc if transport == "ipc" else broker.tcp
            before = cpu_s(broker.ps)
            got = pair("pb-sub", "pb-write", address, mode, count, ("bench/x",), broker.env)
            got["middle_cpu_s"] = cpu_s(broker.ps) - before
            return got
        finally:
            broker.stop()
    ref = Reference(kind, transport)
    try:
        middle = psutil.Process(ref.pid)
        before = cpu_s(middle)
        got = pair(f"{kind}-sub", f"{kind}-write", ref.address, mode, count)
        got["middle_cpu_s"] = cpu_s(middle) - before
        return got
    finally:
        ref.stop()


CURVE = "plugboard+curve"
C_RELAY = "raw-c"
RELAY_UVLOOP = "raw-uvloop"
"""The raw relay woken by its socket's descriptor in a uvloop event loop, as the broker
is, instead of receiving in a blocking loop (section 9 only)."""
C_RELAY_BINARY = ROOT / "bench" / ".build" / "c_relay"
"""The raw relay's loop in C (bench/c_relay.c, built by ``make bench``), between the
same writer and subscriber: two libzmq hops and a middle process with no Python in it."""


def c_relay_libzmq() -> str:
    """The libzmq version the C relay runs on (the system's, not pyzmq's own)."""
    if not C_RELAY_BINARY.exists():
        return "not built"
    return subprocess.run([str(C_RELAY_BINARY), "--version"], capture_output=True,
                          text=True, check=True).stdout.strip()


SYSTEMS = ["plugboard", CURVE, "raw", C_RELAY, "redis", "mqtt", "nats", "natskv"]
"""natskv: NATS JetStream KV put -> watch, the nearest thing to a property store with
push a user would pick instead."""


ROUNDS = 1 if QUICK else 3
"""Latency and throughput run every system once per round, the rounds one after the
other: a drift of the machine during the run (it moves figures by a fifth here) then
falls on every system alike instead of on whichever ran during it."""
LATENCY_ROUNDS = 1 if QUICK else 6
"""Section 1 splits its sets in more rounds: a drift of a minute moved one system's p50
by a tenth with three."""


def in_rounds(runs: list[tuple[str, Callable[[], dict[str, Any]]]], rounds: int = ROUNDS
            ) -> dict[str, list[dict[str, Any]]]:
    """Each run's figures of every round, by label. Each round starts at another place
    in the list (rotated by a share of it), so that what ran just before a system, and
    how long since the round began, differ from round to round: a bias of one place in
    the order then shows as spread between rounds instead of hiding in every round."""
    out: dict[str, list[dict[str, Any]]] = {label: [] for label, _ in runs}
    for round_number in range(rounds):
        start = round_number * len(runs) // rounds
        for label, run in runs[start:] + runs[:start]:
            out[label].append(run())
            print(f"round {round_number + 1}: {label} done", flush=True)
    return out


RELAY_FORM = {"nowait": "single", "batched-nowait": "batched"}
"""The raw relay's mode a Plugboard throughput mode is compared with."""


def round_us(rounds: list[dict[str, Any]], *, paced: bool) -> float:
    """µs from the rounds of one run: paced, the p50 of their latencies pooled; else the
    median µs per update (1 / rate)."""
    if paced:
        return percentiles([ns for f in rounds for ns in f["latencies"]])["p50_us"]
    per_update = sorted(1e6 / f["rate"] if f.get("rate") else float("nan") for f in rounds)
    return per_update[len(per_update) // 2]


HOP_PAIRS = {
    "direct": ("direct-sub", "raw-write"),
    "relay in C": ("raw-c-sub", "raw-c-write"),
    "relay": ("raw-sub", "raw-write"),
    "relay on uvloop": ("raw-uvloop-sub", "raw-uvloop-write"),
    "relay, replying to the writer": ("raw-sub", "raw-write"),
    "broker, raw clients, no reply": ("pbraw-sub", "pbraw-write"),
    "broker, raw clients": ("pbraw-sub", "pbraw-write"),
    "broker on asyncio's own loop, raw clients": ("pbraw-sub", "pbraw-write"),
    "broker, SDK writer": ("pbraw-sub", "pb-write"),
    "broker, SDK writer, no reply": ("pbraw-sub", "pb-write"),
    "broker, SyncClient writer": ("pbraw-sub", "pbsync-write"),
    "broker, SDK subscriber": ("pb-sub", "pbraw-write"),
    "broker, SDK subscriber iterating": ("pb-sub-batches", "pbraw-write"),
    "broker, SyncClient subscriber": ("pbsync-sub", "pbraw-write"),
    "broker, SDK both ends": ("pb-sub", "pb-write"),
    "broker, SDK both ends on uvloop": ("pb-sub-uvloop", "pb-write-uvloop"),
}
"""Who talks to whom for the per-hop breakdown: each row adds one piece to the one
before, so the differences are what each piece costs."""
HOP_WRITER_MODES = {
    "relay, replying to the writer": {"latency": "latency-replied",
                                      "single": "single-replied"},
    "broker, raw clients, no reply": {"latency": "latency-nowait"},
    "broker, SDK writer, no reply": {"latency": "latency-nowait"},
    "broker on asyncio's own loop, raw clients": {"latency": "latency", "single": "single",
                                                  "nowait": "nowait"},
    "broker, SDK subscriber iterating": {"latency": "latency", "nowait": "nowait"},
    "broker, SyncClient subscriber": {"latency": "latency", "nowait": "nowait"},
    "broker, SDK both ends on uvloop": {"latency": "latency", "single": "single",
                                        "nowait": "nowait"},
}
"""Rows measured in some columns only, with the writer's mode for each."""
HOP_BROKER_ARGS = {"broker on asyncio's own loop, raw clients": ("--event-loop", "asyncio")}
"""Rows whose broker runs with options of its own (the others: the defaults)."""


FANOUT_WRITES = 5_000 if QUICK else 20_000
FANOUT_RUNS = 3
