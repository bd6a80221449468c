"""Persistent-write throughput under each durability policy, as a ratio to in-memory writes.

Each scenario starts its own broker process (same machine, same run) and one writer
process (this one) that sets one property over ipc, sequentially (each write waits for
its acknowledgement) and pipelined (64 in flight). Writes the results to
docs/BENCHMARKS-persistence.md and bench/results/persistence.json. It reports; it
never fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).parents[1]
sys.path.insert(0, str(ROOT))

from plugboard.sdk import Client  # noqa: E402

SECONDS = float(os.environ.get("BENCH_SECONDS", "2"))
REPEATS = int(os.environ.get("BENCH_REPEATS", "3"))
"""Scenarios run interleaved this many times; the median is reported (2 cores are noisy)."""
READY = re.compile(r"listening on (\S+)")


def start_broker(state: Path, durability: str) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen([sys.executable, "-m", "plugboard.broker.cli", "--state-dir",
                             str(state), "--log-level", "WARNING", "broker", "--durability",
                             durability, "--allow-unmanaged-plugins"],
                            stdout=subprocess.PIPE, cwd=ROOT)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    match = READY.search(line)
    if not match:
        proc.kill()
        raise RuntimeError(f"broker did not start: {line!r}")
    return proc, match.group(1)


async def measure(endpoint: str, persist: bool) -> dict[str, float]:
    async with Client(endpoint, role="plugin", name="bench", timeout=30) as client:
        await client.declare("bench/value", "int", 0, persist=persist)
        results = {}
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < SECONDS:
            count += 1
            await client.set("bench/value", count)
        results["sequential_per_s"] = count / (time.perf_counter() - start)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < SECONDS:
            batch = [client.set("bench/value", count + i) for i in range(64)]
            await asyncio.gather(*batch)
            count += 64
        results["pipelined_per_s"] = count / (time.perf_counter() - start)
        return results


def main() -> None:
    scenarios = [("in-memory", "always", False), ("always", "always", True),
                 ("batch", "batch", True), ("off", "off", True)]
    runs: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in scenarios}
    for _ in range(REPEATS):
        for label, durability, persist in scenarios:
            state = Path(tempfile.mkdtemp(prefix="pbb-"))
            proc, endpoint = start_broker(state, durability)
            try:
                runs[label].append(asyncio.run(measure(endpoint, persist)))
            finally:
                proc.terminate()
                proc.wait(10)
                shutil.rmtree(state, ignore_errors=True)
            last = runs[label][-1]
            print(f"{label:10s} sequential {last['sequential_per_s']:9.0f}/s  "
                  f"pipelined {last['pipelined_per_s']:9.0f}/s", flush=True)
    results = {label: {key: statistics.median(r[key] for r in figures)
                       for key in figures[0]} for label, figures in runs.items()}
    base = results["in-memory"]
    facts = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.machine(),
             "cpus": os.cpu_count(), "python": platform.python_version(),
             "seconds_per_measurement": SECONDS}
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "persistence.json").write_text(json.dumps({"facts": facts,
                                                          "results": results}, indent=1))
    lines = [
        "# Persistent writes by durability policy", "",
        f"Measured {facts['date']} on {facts['cpus']} CPUs ({facts['machine']}, Python "
        f"{facts['python']}) by `bench/persistence.py`: one writer over ipc, one property, "
        f"{SECONDS:g} s per figure, median of {REPEATS} interleaved runs. Ratios are to "
        "in-memory writes in the same run.", "",
        "| policy | sequential writes/s | ratio | pipelined (64 in flight) writes/s | ratio |",
        "|---|---|---|---|---|",
    ]
    for label, figures in results.items():
        lines.append(
            f"| {label} | {figures['sequential_per_s']:.0f} | "
            f"{figures['sequential_per_s'] / base['sequential_per_s']:.2f} | "
            f"{figures['pipelined_per_s']:.0f} | "
            f"{figures['pipelined_per_s'] / base['pipelined_per_s']:.2f} |")
    lines += ["", "`always` commits (with fsync) before each loop turn's replies, so pipelined "
              "writes share commits (group commit); `batch` and `off` acknowledge at once."]
    docs = ROOT / "docs"
    docs.mkdir(exist_ok=True)
    (docs / "BENCHMARKS-persistence.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
