"""thermostat: subscribes to a temperature another plugin publishes, switches a heater.

No loop: it acts when the temperature or the setpoint changes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from plugboard.sdk import Change, Plugin, RemoteError

plugin = Plugin()


@plugin.on_init
async def init(p: Plugin, config: dict[str, Any]) -> None:
    hysteresis = float(config.get("hysteresis", 0.5))
    client = p.client
    await client.declare("thermostat/setpoint", "float", float(config.get("setpoint", 21.0)),
                         unit="degC", min=5, max=30, writable_by=["*"], persist=True,
                         description="the temperature to hold; anyone may write it")
    await client.declare("thermostat/heater", "bool", False, description="heater output")
    await client.declare("thermostat/temperature", "float", unit="degC",
                         description="the temperature the thermostat last saw")
    watched = await client.subscribe(str(config.get("temperature", "room/temperature")))
    setpoint_sub = await client.subscribe("thermostat/setpoint")
    state: dict[str, Any] = {"temperature": None, "setpoint": None, "heater": False}

    async def decide() -> None:
        temperature, setpoint = state["temperature"], state["setpoint"]
        if temperature is None or setpoint is None:
            return
        heater = state["heater"]
        if temperature < setpoint - hysteresis:
            heater = True
        elif temperature > setpoint + hysteresis:
            heater = False
        if heater != state["heater"]:
            state["heater"] = heater
            await client.set("thermostat/heater", heater)

    async def follow(sub: Any, key: str) -> None:
        async for event in sub:
            if isinstance(event, Change) and event.value is not None:
                state[key] = event.value
                if key == "temperature":
                    await client.set("thermostat/temperature", event.value)
                await decide()

    p.tasks = [asyncio.create_task(follow(watched, "temperature")),  # type: ignore[attr-defined]
               asyncio.create_task(follow(setpoint_sub, "setpoint"))]
    p.boost_delta = float(config.get("boost_delta", 2.0))  # type: ignore[attr-defined]


@plugin.method("boost")
async def boost(p: Plugin, minutes: float) -> float:
    """Raise the setpoint by ``boost_delta`` for ``minutes``, then put it back; the
    boosted setpoint is the result. Writes go through the broker like anyone's."""
    if not 0 < minutes <= 24 * 60:
        raise RemoteError("out_of_range", "minutes must be above 0 and at most a day")
    client = p.client
    before = (await client.get("thermostat/setpoint")).value
    boosted = min(30.0, before + p.boost_delta)  # type: ignore[attr-defined]
    await client.set("thermostat/setpoint", boosted)

    async def restore() -> None:
        await asyncio.sleep(minutes * 60)
        if (await client.get("thermostat/setpoint")).value == boosted:
            await client.set("thermostat/setpoint", before)

    p.restore_task = asyncio.create_task(restore())  # type: ignore[attr-defined]
    return float(boosted)


if __name__ == "__main__":
    plugin.run()
