"""sysmon: host CPU, memory, disk and network figures from psutil, every ``interval`` s."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psutil

from plugboard.sdk import Plugin

plugin = Plugin()
_last_net: tuple[float, int, int] | None = None


@plugin.on_init
async def init(p: Plugin, config: dict[str, Any]) -> None:
    psutil.cpu_percent()  # the first call only starts the measurement window
    interval = float(config.get("interval", 2.0))
    p.every(interval)(sample)
    await sample(p)


def _network_rates() -> dict[str, float]:
    global _last_net
    counters = psutil.net_io_counters()
    now = time.monotonic()
    rates = {"rx_rate": 0.0, "tx_rate": 0.0}
    if _last_net is not None:
        elapsed = max(now - _last_net[0], 1e-6)
        rates = {"rx_rate": (counters.bytes_recv - _last_net[1]) / elapsed,
                 "tx_rate": (counters.bytes_sent - _last_net[2]) / elapsed}
    _last_net = (now, counters.bytes_recv, counters.bytes_sent)
    return rates


async def sample(p: Plugin) -> None:
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(p.config.get("disk_path", "/"))
    figures: dict[str, Any] = {
        "sysmon/cpu/percent": float(psutil.cpu_percent()),
        "sysmon/memory/total": memory.total,
        "sysmon/memory/used": memory.used,
        "sysmon/memory/available": memory.available,
        "sysmon/memory/percent": float(memory.percent),
        "sysmon/disk/total": disk.total,
        "sysmon/disk/used": disk.used,
        "sysmon/disk/percent": float(disk.percent),
        **{f"sysmon/net/{k}": v for k, v in _network_rates().items()},
    }
    if not getattr(p, "declared", False):
        for name, value in figures.items():
            await p.client.declare(name, "float" if isinstance(value, float) else "int", value)
        p.declared = True  # type: ignore[attr-defined]
    else:
        await p.client.set_many(figures)


@plugin.method("processes")
async def processes(p: Plugin, n: int) -> list[dict[str, Any]]:
    """The top ``n`` processes by CPU over a 0.2 s window: pid, name, CPU %, memory."""
    procs = list(psutil.process_iter(["pid", "name"]))
    for proc in procs:
        try:
            proc.cpu_percent()  # starts each one's window
        except psutil.Error:
            pass
    await asyncio.sleep(0.2)
    rows = []
    for proc in procs:
        try:
            rows.append({"pid": proc.pid, "name": proc.info["name"] or "",
                         "cpu_percent": float(proc.cpu_percent()),
                         "memory_rss": int(proc.memory_info().rss)})
        except psutil.Error:
            continue
    rows.sort(key=lambda row: row["cpu_percent"], reverse=True)
    return rows[:max(0, n)]


if __name__ == "__main__":
    plugin.run()
