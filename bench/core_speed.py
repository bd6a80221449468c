"""The broker core alone, in-process: µs per item of ``set_many`` (checked, applied,
queued for one subscriber under policy ``all``, or under ``latest``, encoded), per
single ``set``, and the msgpack share of an item (decoded and encoded again, nothing
else). Prints one JSON line.

``set_many`` is timed under the collector settings the daemon sets
(:func:`collect_less`) and under Python's defaults, alternately, the best of three each.

Run as is for the modules as installed (compiled where they were), or through
``bench/pure.py`` for pure Python.
"""

from __future__ import annotations

import gc
import json
import time

from plugboard.broker.cli.daemon import collect_less
from plugboard.broker.core import BrokerCore, CoreConfig
from plugboard.protocol import Timestamp
from plugboard.protocol.codec import Notification, decode, encode
from plugboard.protocol.connection import BrokerRequest, ClientConnection

WRITER, WATCHER = b"w", b"c"


def _core(policy: str) -> tuple[BrokerCore, ClientConnection]:
    """A core with a plugin of 100 int properties and one subscriber to them all."""
    core = BrokerCore(CoreConfig(allow_unmanaged_plugins=True))
    writer, watcher = ClientConnection("plugin", "w"), ClientConnection()

    def call(peer: bytes, frame: bytes) -> None:
        """Hand the core a frame; read what it sends back (answering its ``init``)."""
        core.receive(peer, [frame])
        for to, out in core.flush():
            event = (writer if to == WRITER else watcher).receive(out)
            if isinstance(event, BrokerRequest):
                call(to, writer.answer(event.request, {}))

    call(WRITER, writer.hello()[1])
    for i in range(100):
        call(WRITER, writer.request("declare", {"name": f"w/v{i}", "type": "int",
                                                        "value": 0})[1])
    call(WATCHER, watcher.hello()[1])
    call(WATCHER, watcher.request("subscribe", {  # as the SDK subscribes
        "pattern": "w/#", "policy": policy, "current": False, "queue_limit": 1_000_000,
        "timestamp_ns": True})[1])
    return core, writer


def main() -> None:
    core, writer = _core("all")
    latest_core, _ = _core("latest")  # the SDK's default policy
    batches = [writer.notification("set_many", {"items": [[f"w/v{i}", n * 100 + i]
                                                          for i in range(100)]})
               for n in range(2000)]
    singles = [writer.notification("set", {"target": "w/v0", "value": n})
               for n in range(20000)]

    def per_item(frames: list[bytes], items: int, on: BrokerCore = core) -> float:
        started = time.perf_counter()
        for first in range(0, len(frames), 100):  # 100 frames per loop turn, then a flush
            for frame in frames[first:first + 100]:
                on.receive(WRITER, [frame])
            on.flush()
        return (time.perf_counter() - started) / (len(frames) * items) * 1e6

    default_gc = gc.get_threshold()
    per_item(batches, 100)  # warm up
    per_item(batches, 100, latest_core)
    timings: dict[str, list[float]] = {"set_many_us_per_item": [],
                                       "set_many_default_gc_us_per_item": [],
                                       "set_many_latest_us_per_item": []}
    for _ in range(3):
        gc.set_threshold(*default_gc)
        timings["set_many_default_gc_us_per_item"].append(per_item(batches, 100))
        collect_less()
        timings["set_many_us_per_item"].append(per_item(batches, 100))
        timings["set_many_latest_us_per_item"].append(per_item(batches, 100, latest_core))
    out = {label: min(values) for label, values in timings.items()}
    out["set_us"] = per_item(singles, 1)
    # The msgpack share of a set_many item: its frame decoded, the changes batch of the
    # same items encoded (what any broker speaking msgpack pays, in C).
    batch = [[i, n * 100 + i, n, Timestamp.from_unix_nano(time.time_ns())]
             for n, i in enumerate(range(100))]
    started = time.perf_counter()
    for frame in batches:
        decode(frame)
        encode(Notification("changes", {"sub": 1, "seq": 1, "items": batch}))
    out["msgpack_us_per_item"] = (time.perf_counter() - started) / (len(batches) * 100) * 1e6
    print(json.dumps(out))


if __name__ == "__main__":
    main()
