"""``make bench``: Plugboard side by side with raw pyzmq, Redis, MQTT and NATS, in one run.

Runs the scenarios (``harness.py`` starts what each needs, ``report.py`` writes the
report) and writes docs/BENCHMARKS.md and bench/results/bench.json. Absolute figures drift
10-30 % between runs on a 2-core machine; the ratios within one run are what to read.
Benchmarks report: a missed target is said plainly, never an error. The Redis, MQTT
and NATS columns need ``redis-server``, ``mosquitto`` and ``nats-server`` on the PATH
(Debian packages of those names); without them those columns say "not installed".
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import platform
import shutil
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
from harness import (
    BATCHED_N,
    C_RELAY,
    CURVE,
    FANOUT_RUNS,
    FANOUT_WRITES,
    HOP_BROKER_ARGS,
    HOP_PAIRS,
    HOP_WRITER_MODES,
    LATENCY_N,
    LATENCY_ROUNDS,
    QUICK,
    RELAY_UVLOOP,
    ROOT,
    ROUNDS,
    SCALES,
    SYSTEMS,
    THROUGHPUT_N,
    Broker,
    Peer,
    Reference,
    c_relay_libzmq,
    cpu_s,
    in_rounds,
    pair,
    percentiles,
    round_us,
    run_system,
)
from report import write_report

from plugboard.sdk import _event_loop as event_loop


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
    for label, rounds in in_rounds(runs, LATENCY_ROUNDS).items():
        latencies = [ns for figures in rounds for ns in figures["latencies"]]
        out[label] = {**percentiles(latencies), "lost": sum(f["lost"] for f in rounds)}
        print(f"latency {label}: {out[label]}", flush=True)
    return out


def scenario_throughput() -> dict[str, Any]:
    """The median rate of the rounds; lost: the most any round lost; cpu_us: µs of CPU
    per update delivered, by process (writer, middle, subscriber), the median of the
    rounds."""
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
    for label, rounds in in_rounds(runs).items():
        rates = sorted(figures["rate"] for figures in rounds)
        out[label] = {"rate": rates[len(rates) // 2],
                      "lost": max(figures["lost"] for figures in rounds),
                      "cpu_us": {process: _median_per_update(rounds, key) for process, key in
                                 (("writer", "writer_cpu_s"), ("middle", "middle_cpu_s"),
                                  ("subscriber", "cpu_s"))}}
        print(f"throughput {label}: {out[label]}", flush=True)
    return out



def _median_per_update(rounds: list[dict[str, Any]], key: str) -> float | None:
    """The median over the rounds of ``key`` (CPU seconds) per update delivered, in µs;
    None if a round lacks it."""
    if any(f.get(key) is None or not f.get("received") for f in rounds):
        return None
    per_update = sorted(float(f[key]) / float(f["received"]) * 1e6 for f in rounds)
    return per_update[len(per_update) // 2]


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
    if path == "relay in C":
        return run_system(C_RELAY, "tcp", mode, count)
    if path == "relay on uvloop":
        return run_system(RELAY_UVLOOP, "tcp", mode, count)
    if path.startswith("relay"):
        return run_system("raw", "tcp", mode, count)
    broker = Broker(*HOP_BROKER_ARGS.get(path, ()))
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
            if mode == "nowait" and path in ("direct", "relay in C", "relay", "relay on uvloop"):
                continue  # their writers never wait: their single is this
            if path == "relay in C" and not Reference.available(C_RELAY):
                continue
            writer_mode = HOP_WRITER_MODES.get(path, {}).get(mode, mode)
            if path in HOP_WRITER_MODES and mode not in HOP_WRITER_MODES[path]:
                continue
            runs.append((f"{path}/{mode}",
                         functools.partial(_hop_run, path, writer_mode, count)))
            counts[f"{path}/{mode}"] = count
    out: dict[str, Any] = {}
    for label, rounds in in_rounds(runs).items():
        paced = label.endswith("/latency")
        lost = max(counts[label] - f.get("received", 0) for f in rounds)
        out[label] = {"us": round_us(rounds, paced=paced), "lost": lost}
        if paced:  # each round's own p50: section 9 shows how much a piece moved
            out[label]["round_p50s"] = [percentiles(f["latencies"])["p50_us"] for f in rounds]
        print(f"hops {label}: {out[label]}", flush=True)
    return out



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
    for label, rounds in in_rounds(runs).items():
        build, mode = label.split("/")
        out[build][mode] = round_us(rounds, paced=mode == "latency")
    print(f"compiled or pure: {out}", flush=True)
    return out



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


def _broker_us_per_set(broker: Broker, writes: int = 5000) -> float:
    """The broker's CPU time per set (request form, 200 in flight), fan-out included:
    every notification was handed to ZeroMQ before the last reply was."""
    writer = Peer("pb-write", broker.tcp, "single", str(writes))
    writer.ready()
    before = cpu_s(broker.ps)
    writer.go()
    writer.result()
    return (cpu_s(broker.ps) - before) / writes * 1e6


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
            cpu = cpu_s(broker.ps)
            time.sleep(5)  # idle but for the pings: the broker's cost of holding them
            idle = (cpu_s(broker.ps) - cpu) / 5 * 100
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
             "pyzmq": zmq.pyzmq_version(), "broker_loop": event_loop.chosen("auto"),
             "libzmq": zmq.zmq_version(), "libzmq_c": c_relay_libzmq()}
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
