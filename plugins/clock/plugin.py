"""clock: wall time as a timestamp and the broker's uptime as a duration, every second.

Run it by hand against a running broker:

    PLUGBOARD_NAME=clock .venv/bin/python plugins/clock/plugin.py
"""

from __future__ import annotations

from plugboard.protocol import Duration
from plugboard.protocol.values import now
from plugboard.sdk import Plugin

plugin = Plugin()


@plugin.on_init
async def declare(p: Plugin, config: dict[str, object]) -> None:
    await p.client.declare(f"{p.name}/now", "timestamp", now(), description="wall-clock time")
    await p.client.declare(f"{p.name}/broker_uptime", "duration", Duration(0),
                           description="how long the broker has been running")


@plugin.every(1.0)
async def tick(p: Plugin) -> None:
    uptime = (await p.client.get("system/broker/uptime")).value
    await p.client.set_many({f"{p.name}/now": now(), f"{p.name}/broker_uptime": uptime})


if __name__ == "__main__":
    plugin.run()
