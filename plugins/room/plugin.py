"""room: a simulated room whose temperature follows a heater another plugin drives."""

from __future__ import annotations

from typing import Any

from plugboard.sdk import Change, Plugin, Removed

plugin = Plugin()
state: dict[str, Any] = {"heating": False, "temperature": 18.0}


@plugin.on_init
async def init(p: Plugin, config: dict[str, Any]) -> None:
    state["temperature"] = float(config.get("start", 18.0))
    await p.client.declare("room/temperature", "float", state["temperature"], unit="degC")
    await p.client.declare("room/outside", "float", float(config.get("outside", 10.0)),
                           unit="degC", writable_by=["*"], min=-40, max=50)
    heater = await p.client.subscribe(str(config.get("heater", "thermostat/heater")))

    async def follow_heater() -> None:
        async for event in heater:
            if isinstance(event, Change):
                state["heating"] = bool(event.value)
            elif isinstance(event, Removed):
                state["heating"] = False

    import asyncio

    p.follow = asyncio.create_task(follow_heater())  # type: ignore[attr-defined]
    p.every(float(config.get("step", 1.0)))(simulate)


async def simulate(p: Plugin) -> None:
    outside = (await p.client.get("room/outside")).value
    temperature = state["temperature"]
    temperature += 0.1 * (outside - temperature) + (0.8 if state["heating"] else 0.0)
    state["temperature"] = round(temperature, 2)
    await p.client.set("room/temperature", state["temperature"])


if __name__ == "__main__":
    plugin.run()
