"""docs/BENCHMARKS.md from the figures ``bench/run.py`` saved: each section's table, its
reading, and every target met or missed, as ratios to the raw relay of the same run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness import (
    C_RELAY,
    CURVE,
    FANOUT_RUNS,
    FANOUT_WRITES,
    HOP_PAIRS,
    LATENCY_N,
    LATENCY_ROUNDS,
    RELAY_FORM,
    ROUNDS,
)


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
             "rounds' latencies pooled. Plugboard's rows: the broker on its default event "
             f"loop ({facts.get('broker_loop', 'asyncio')}), the asyncio SDK at both ends on "
             "asyncio's own loop (Plugin.run's default), the subscriber's changes "
             "handed to an `on_batch` callback (section 9 has the "
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
    if lat.get(f"{C_RELAY}/tcp"):
        lines += ["", "`raw`: the raw pyzmq relay, the ratios' base. `raw-c`: the same relay "
                  "loop in C (bench/c_relay.c), each frame forwarded undecoded, between the same "
                  "writer and subscriber: two libzmq hops and a middle process with no "
                  "Python in it, the floor of any broker on ZeroMQ here (it links the "
                  f"system's libzmq, {facts.get('libzmq_c')}; pyzmq bundles "
                  f"{facts.get('libzmq')}). Both relays send without waiting, so ZeroMQ "
                  "drops what a subscriber's queue cannot take (section 2's lost)."]
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
    lines += _cpu_per_update(thr, facts["cpus"])
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


def _cpu_per_update(thr: dict[str, Any], cpus: int) -> list[str]:
    """Section 2's rows taken apart by process: on ``cpus`` CPUs shared by the writer,
    the middle process and the subscriber, their CPU per update together bounds the
    rate."""
    rows = []
    for key, fig in thr.items():
        cpu = (fig or {}).get("cpu_us") or {}
        if None in cpu.values() or len(cpu) < 3:
            continue
        kind, mode = key.split("/")
        total = sum(cpu.values())
        rows.append(f"| {kind} | {mode} | {cpu['writer']:.2f} | {cpu['middle']:.2f} | "
                    f"{cpu['subscriber']:.2f} | {total:.2f} | {cpus / total:.2f} |")
    if not rows:
        return []
    return ["", "### CPU per update, by process", "",
            "The same runs, each process's CPU time (all its threads, ZeroMQ's I/O thread "
            "included) per update delivered, in µs: the writer's from its first send to "
            "its last, the middle process's (broker, relay or server) and the "
            "subscriber's over the pair; the median of the rounds. The processes share "
            f"{cpus} CPUs, so their sum bounds the rate: at most {cpus} µs of CPU per µs, "
            "the `bound` in millions of updates per second, which section 2's rate "
            "reaches as far as the three keep the CPUs busy (the rest is waiting: on each "
            "other, on replies, on the scheduler). The clients' own bookkeeping (a clock "
            "reading and a latency kept per update) is in the subscriber's column of "
            "every system alike.", "",
            "| system | mode | writer | middle | subscriber | all three | bound M/s |",
            "|---|---|---|---|---|---|---|", *rows]


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


RAW = "broker, raw clients"
Row = tuple[str, str]
"""A per-hop row and column: (path, mode)."""
Piece = Callable[[str], "tuple[Row, Row | None] | None"]
"""Per column (mode): the row a piece adds to and the row it is added to (None: the
row alone), or None where the piece is not measured."""


def _less(path: str, base: str) -> Piece:
    """The piece ``path`` minus ``base``, in every column."""
    return lambda mode: ((path, mode), (base, mode))


def _alone(path: str) -> Piece:
    return lambda mode: ((path, mode), None)


def _broker_over_relay(mode: str) -> tuple[Row, Row | None]:
    """The broker against the relay doing the same: a reply per set in both or in
    neither (the relay's writer never waits, so its single is the nowait's peer)."""
    if mode == "latency":
        return (RAW + ", no reply", mode), ("relay", mode)
    if mode == "nowait":
        return (RAW, mode), ("relay", "single")
    if mode == "single":
        return (RAW, mode), ("relay, replying to the writer", mode)
    return (RAW, mode), ("relay", mode)


def _broker_reply(mode: str) -> tuple[Row, Row | None] | None:
    if mode == "latency":
        return (RAW, mode), (RAW + ", no reply", mode)
    if mode == "single":
        return (RAW, mode), (RAW, "nowait")
    return None


PIECES: list[tuple[str, Piece]] = [
    ("libzmq + kernel, one hop (direct)", _alone("direct")),
    ("a middle process in C, two hops (relay in C)", _alone("relay in C")),
    ("the relay's Python instead of C", _less("relay", "relay in C")),
    ("a middle process: the relay, two hops (relay)", _alone("relay")),
    ("an event loop (uvloop) instead of a blocking receive, in the relay",
     _less("relay on uvloop", "relay")),
    ("a reply per set, in the relay", _less("relay, replying to the writer", "relay")),
    ("the broker in the middle instead of the relay (replying alike)", _broker_over_relay),
    ("a reply per set, in the broker", _broker_reply),
    ("asyncio's own loop instead of uvloop, in the broker",
     _less("broker on asyncio's own loop, raw clients", RAW)),
    ("uvloop instead of asyncio's own loop, in the SDK at both ends",
     _less("broker, SDK both ends on uvloop", "broker, SDK both ends")),
    ("writer SDK (asyncio Client)", _less("broker, SDK writer", RAW)),
    ("writer SDK (asyncio Client), set_nowait",
     _less("broker, SDK writer, no reply", RAW + ", no reply")),
    ("writer SDK (SyncClient)", _less("broker, SyncClient writer", RAW)),
    ("subscriber SDK (asyncio Client, on_batch)", _less("broker, SDK subscriber", RAW)),
    ("subscriber SDK (asyncio Client, `async for` over batches())",
     _less("broker, SDK subscriber iterating", RAW)),
    ("subscriber SDK (SyncClient, next_batch)", _less("broker, SyncClient subscriber", RAW)),
]
"""Section 9's pieces, each as the difference of two per-hop rows."""


def round_differences(hops: dict[str, Any], row: Row, base: Row | None) -> list[float]:
    """Per round, ``row``'s p50 less ``base``'s (paced rows; empty for figures saved
    before the rounds' p50s were)."""
    ours = hops.get(f"{row[0]}/{row[1]}", {}).get("round_p50s")
    if not ours:
        return []
    if base is None:
        return list(ours)
    theirs = hops.get(f"{base[0]}/{base[1]}", {}).get("round_p50s")
    return [a - b for a, b in zip(ours, theirs, strict=True)] if theirs else []


def hops_section(hops: dict[str, Any] | None) -> list[str]:
    """The per-hop table: each piece's µs as the difference of two rows."""
    if not hops:
        return []

    def us(path: str, mode: str) -> float:
        return hop_us(hops, path, mode)

    modes = ("latency", "single", "nowait", "batched")
    lines = ["## 9. Where the time goes, hop by hop", "",
             "The same set → notify over tcp, one piece added at a time. `direct`: the "
             "writer's frames straight into the subscriber (one libzmq hop); `relay in C`: "
             "the relay's loop in C, each frame forwarded undecoded (two hops and a middle "
             "process, no Python: bench/c_relay.c); `relay`: the "
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
    lines += ["", "Each piece's share, as the difference of two rows above (µs; negative "
              "or tiny means within run-to-run noise). Latency: the difference of the "
              "pooled p50s, and in brackets the least and the most it was between the "
              f"two rows' p50s of one round ({ROUNDS} rounds): a piece whose range holds 0 "
              "is not told apart from noise.", "",
              "| piece | latency p50 | single | nowait | batched |", "|---|---|---|---|---|"]
    for label, of in PIECES:
        cells = []
        for mode in modes:
            rows = of(mode)
            value = float("nan") if rows is None else \
                us(*rows[0]) - (us(*rows[1]) if rows[1] else 0.0)
            cell = f"{value:.1f}" if value == value else "—"
            spread = None if rows is None else round_differences(hops, *rows)
            if mode == "latency" and spread:
                cell += f" ({min(spread):.0f} to {max(spread):.0f})"
            cells.append(cell)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    hop, relay = us("direct", "latency"), us("relay", "latency")
    broker = us("broker, raw clients, no reply", "latency")
    reply = us("broker, raw clients", "latency") - broker
    own_loop = us("broker on asyncio's own loop, raw clients", "latency") - us(
        "broker, raw clients", "latency")
    relay_reply = us("relay, replying to the writer", "latency") - relay
    blocking = us("broker, raw clients", "latency")
    subscriber = us("broker, SDK subscriber", "latency") - blocking
    iterating = us("broker, SDK subscriber iterating", "latency") - blocking
    sync_subscriber = us("broker, SyncClient subscriber", "latency") - blocking
    in_c = us("relay in C", "latency")
    on_loop = us("relay on uvloop", "latency") - relay
    lines += ["", f"Read for latency: one libzmq hop, with the wake-up of an idle process, "
              f"costs {hop:.0f} µs here"
              + (f", two with a middle process in C {in_c:.0f} µs" if in_c == in_c else "")
              + f" and the relay's two with its Python {relay:.0f} µs"
              + (f"; woken by its socket's descriptor in uvloop, as the broker is, instead "
                 f"of a blocking receive, the relay takes {on_loop:+.0f} µs"
                 if on_loop == on_loop else "")
              + ". The broker in the middle instead of the relay adds "
              f"{broker - relay:.0f} µs (decode, session and ACL, apply, queue, encode, "
              "send, on uvloop; "
              f"{own_loop:+.0f} µs on asyncio's own loop). A writer "
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
    lines[-1] += _below_references(results.get("latency", {}))
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
    thr = results.get("throughput", {})
    ours, relay_cpu = ((thr.get(key) or {}).get("cpu_us") for key in
                       ("plugboard/batched-nowait", "raw/batched"))
    if ours and relay_cpu and None not in ours.values() and None not in relay_cpu.values():
        lines[-1] += (
            " Sent as notifications (`set_many_nowait`), an update takes µs of CPU: "
            f"the writer {ours['writer']:.2f} (the relay's writer {relay_cpu['writer']:.2f}), "
            f"the broker {ours['middle']:.2f} (the relay {relay_cpu['middle']:.2f}), the "
            f"subscriber {ours['subscriber']:.2f} (the relay's {relay_cpu['subscriber']:.2f}; "
            f"section 2, \"CPU per update\"): {sum(ours.values()):.2f} µs against "
            f"{sum(relay_cpu.values()):.2f} on CPUs the three processes share, which bounds "
            "the rate; the broker's share is its core's per-item work (section 10's "
            "\"core in-process\"), the clients' the SDK's decoding and events.")
    return lines


def _below_references(lat: dict[str, Any]) -> str:
    """Section 1's p50s that tell whether "below Redis, MQTT, NATS" is in reach of a
    broker on ZeroMQ (the relay in C) and of one with Python in the middle (the relay)."""
    in_c, relay, ours = (lat.get(f"{kind}/tcp") for kind in (C_RELAY, "raw", "plugboard"))
    refs = {ref: lat[f"{ref}/tcp"]["p50_us"] for ref in ("redis", "mqtt", "nats")
            if lat.get(f"{ref}/tcp")}
    if not (in_c and relay and ours and refs):
        return ""
    c_us, relay_us = in_c["p50_us"], relay["p50_us"]
    names = {"redis": "Redis", "mqtt": "MQTT", "nats": "NATS"}
    text = (f" Below the references (section 1, tcp p50): the relay in C, with no Python "
            f"between the same two libzmq hops, takes {c_us:.0f} µs and the Python relay "
            f"{relay_us:.0f} µs, against " + ", ".join(
                f"{names[ref]} {us:.0f}" for ref, us in refs.items()) + ".")
    def named(kinds: list[str]) -> tuple[str, str, str]:
        """The names joined, their verb and their pronoun."""
        return " and ".join(kinds), "is" if len(kinds) == 1 else "are", \
            "it" if len(kinds) == 1 else "them"

    floor = [names[ref] for ref, us in refs.items() if us <= c_us]
    if floor:
        who, verb, them = named(floor)
        text += (f" {who} {verb} at or below the relay in C: no broker with the same two "
                 f"libzmq hops could be below {them} here, whatever it is written in.")
    under = [names[ref] for ref, us in refs.items() if c_us < us < relay_us]
    if under:
        who, verb, them = named(under)
        text += (f" {who} {verb} above the relay in C and below the Python relay: a broker "
                 f"on ZeroMQ could be below {them}, but not one that runs even the relay's "
                 "few lines of Python between the hops.")
    beyond = [names[ref] for ref, us in refs.items() if relay_us <= us <= relay_us * 1.05]
    if beyond:
        who, verb, them = named(beyond)
        text += (f" {who} {verb} at most 5 % above the Python relay: a broker on ZeroMQ "
                 f"could be below {them}, but one with Python between the hops would have to "
                 "add next to nothing to the relay's few lines.")
    return text


def targets(results: dict[str, Any]) -> list[str]:
    lat, thr = results["latency"], results["throughput"]
    out = []

    def line(ok: bool | None, text: str) -> None:
        out.append(f"- {'met' if ok else 'MISSED' if ok is not None else 'not measured'}: "
                   f"{text}")

    raw, nowait, replied = (lat.get(f"{kind}/tcp")
                            for kind in ("raw", "plugboard nowait", "plugboard"))
    if raw and nowait and replied:
        # As for throughput below: the relay's writer never waits, so Plugboard's set in
        # the same form is set_nowait; a set that waits for its reply is shown beside it,
        # and against the relay replying alike (section 9).
        hops = results.get("hops") or {}
        alike = hop_us(hops, "broker, SDK both ends", "latency") / hop_us(
            hops, "relay, replying to the writer", "latency")
        for pct, bound in (("p50", 1.25), ("p99", 1.5)):
            key = f"{pct}_us"
            line(nowait[key] <= bound * raw[key],
                 f"latency {pct} ≤ {bound}× raw relay (tcp): sent as a notification "
                 f"(`set_nowait`, like the relay's writer) {nowait[key] / raw[key]:.2f}×; "
                 f"with a reply to each set (`set`, which the relay does not send) "
                 f"{replied[key] / raw[key]:.2f}×"
                 + (f", {alike:.2f}× the relay replying alike (section 9)"
                    if pct == "p50" and alike == alike else ""))
        floor = lat.get(f"{C_RELAY}/tcp")
        for ref in ("redis", "mqtt", "nats"):
            other = lat.get(f"{ref}/tcp")
            line(bool(other) and nowait["p50_us"] < other["p50_us"],
                 f"latency p50 below {ref}" + (
                     f" (`set_nowait` {nowait['p50_us']:.0f} µs, `set` "
                     f"{replied['p50_us']:.0f}, against {other['p50_us']:.0f}; the relay in "
                     f"C, no Python between the same two libzmq hops: "
                     f"{floor['p50_us']:.0f} µs, the Python relay {raw['p50_us']:.0f})"
                     if other and floor else ""))
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
