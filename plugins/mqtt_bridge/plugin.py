"""mqtt_bridge: properties to MQTT topics, and MQTT commands to property writes.

Every property matching ``patterns`` is published on ``topic_prefix + name``
(retained, QoS 1, JSON or msgpack); a removed property clears its retained message.
A value published on ``command_topic + name`` is written to that property by this
plugin's session, so the broker's rules for plugin ``mqtt_bridge`` decide
(``writable_by``); a refusal is published on ``error_topic``.

paho-mqtt runs its network loop in a thread of its own and reconnects by itself; its
callbacks hand over to the asyncio loop. After each (re)connect to the MQTT broker
every current value is published again, so an MQTT broker that restarted without
persistence has them all back; the SDK re-subscribes after a Plugboard restart.

The bridge hands paho at most MAX_QUEUED unacknowledged publishes, and none while the
MQTT broker is away: beyond that it keeps the newest value of each property (or its
removal) and publishes those as the MQTT broker catches up or comes back. So a slow or
absent MQTT broker costs one value per property, not a queue of every change, and the
MQTT side ends with every current value, as the subscription under policy ``latest``
it is fed by promises.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import paho.mqtt.client as mqtt

from plugboard.protocol.codec import decode_value, encode_value
from plugboard.protocol.errors import ProtocolError
from plugboard.protocol.json_values import from_json, to_json
from plugboard.sdk import Change, PlugboardError, Plugin, Removed

log = logging.getLogger("mqtt_bridge")
REPORT_EVERY_S = 0.2
"""Counters are written to their properties at most this often."""
MAX_QUEUED = 1000
"""Most publishes handed to paho and not acknowledged yet: past it, changes wait in the
bridge, one per property (the newest), for the MQTT broker to catch up."""


class Bridge:
    def __init__(self, plugin: Plugin, config: dict[str, Any]) -> None:
        self.plugin = plugin
        self.client = plugin.client
        self.loop = asyncio.get_running_loop()
        self.patterns = list(config.get("patterns", []))
        self.prefix = str(config.get("topic_prefix", "plugboard/"))
        self.command = str(config.get("command_topic", "plugboard/set/"))
        self.errors = str(config.get("error_topic", "plugboard/errors"))
        self.qos = int(config.get("qos", 1))
        self.retain = bool(config.get("retain", True))
        self.msgpack = config.get("payload", "json") == "msgpack"
        self.values: dict[str, Any] = {}
        """The last value of every mirrored property, published again on reconnect."""
        self.types: dict[str, str] = {}
        self.waiting: dict[str, None] = {}
        """Properties whose newest value (or removal) paho has not been handed yet, in
        order: while the MQTT broker is away, or has MAX_QUEUED unacknowledged."""
        self.up = False
        """Connected to the MQTT broker (as the loop last heard from paho's thread)."""
        self.published = self.refused = self.queued = 0
        self._counters_dirty = asyncio.Event()
        self.mqtt = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                client_id=f"plugboard-{plugin.name}")
        self.mqtt.max_queued_messages_set(0)  # bounded by the bridge: none while away
        self.mqtt.max_inflight_messages_set(100)
        self.mqtt.reconnect_delay_set(0.2, 5)
        self.mqtt.on_connect = self._on_connect
        self.mqtt.on_disconnect = self._on_disconnect
        self.mqtt.on_message = self._on_message
        self.mqtt.on_publish = lambda *_: self.loop.call_soon_threadsafe(self._acked)
        self.mqtt.connect_async(str(config.get("host", "127.0.0.1")),
                                int(config.get("port", 1883)))

    async def start(self) -> None:
        for name, value in (("connected", False), ("published", 0), ("refused", 0),
                            ("queued", 0), ("waiting", 0)):
            await self.client.declare(f"{self.plugin.name}/{name}",
                                      "bool" if isinstance(value, bool) else "int", value)
        self.mqtt.loop_start()
        for pattern in self.patterns:
            asyncio.create_task(self._mirror(pattern))
        asyncio.create_task(self._report_counters())

    def stop(self) -> None:
        self.mqtt.disconnect()
        self.mqtt.loop_stop()

    # -- Plugboard to MQTT ---------------------------------------------------------------

    async def _mirror(self, pattern: str) -> None:
        for info in await self.client.list(pattern):  # types up front: one request, not N
            self.types[info.name] = info.type
        async for event in await self.client.subscribe(pattern, policy="latest"):
            if isinstance(event, Change):
                if event.name not in self.types:
                    self.types[event.name] = (await self.client.get(event.name)).type
                self.values[event.name] = event.value
            elif isinstance(event, Removed):
                self.values.pop(event.name, None)
            else:
                continue
            self.waiting[event.name] = None
            self._counters_dirty.set()
            self._pump()

    def _pump(self) -> None:
        """Hand paho the newest state of each waiting property (its value, retained, or
        an empty retained message for one removed) while the MQTT broker is there and
        has fewer than MAX_QUEUED unacknowledged: paho never holds more than that."""
        while self.up and self.waiting and self.queued < MAX_QUEUED:
            name = next(iter(self.waiting))
            del self.waiting[name]
            if name in self.values:
                value = self.values[name]
                payload = encode_value(value) if self.msgpack else json.dumps(to_json(value))
            else:
                payload = b""
            self._hand_over(self.prefix + name, payload, self.retain)

    def _hand_over(self, topic: str, payload: str | bytes, retain: bool) -> None:
        self.mqtt.publish(topic, payload, self.qos, retain)
        self.queued += 1
        self._counters_dirty.set()

    def _acked(self) -> None:
        self.published += 1
        self.queued = max(0, self.queued - 1)
        self._counters_dirty.set()
        self._pump()

    # -- MQTT to Plugboard ----------------------------------------------------------------

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        self.loop.call_soon_threadsafe(lambda: asyncio.ensure_future(
            self._apply(message.topic, bytes(message.payload))))

    async def _apply(self, topic: str, payload: bytes) -> None:
        """A command: write the value to the property; report a refusal."""
        name = topic[len(self.command):]
        try:
            value = decode_value(payload) if self.msgpack else json.loads(payload)
            vtype = self.types.get(name) or (await self.client.get(name)).type
            await self.client.set(name, from_json(vtype, value))
        except (PlugboardError, ValueError) as exc:
            code = getattr(exc, "code", "invalid_value")
            self.refused += 1
            self._counters_dirty.set()
            report = {"name": name, "payload": payload.decode(errors="replace"),
                      "code": code, "message": str(exc)}
            log.info("refused %s: %s", topic, exc)
            self._hand_over(self.errors, json.dumps(report), False)

    # -- MQTT connection ------------------------------------------------------------------

    def _on_connect(self, client: Any, _userdata: Any, _flags: Any, reason: Any,
                    _properties: Any) -> None:
        if reason.is_failure:
            log.warning("MQTT broker refused the connection: %s", reason)
            return
        client.subscribe(self.command + "#", qos=self.qos)
        self.loop.call_soon_threadsafe(self._connected, True)

    def _on_disconnect(self, _client: Any, _userdata: Any, _flags: Any, reason: Any,
                       _properties: Any) -> None:
        self.loop.call_soon_threadsafe(self._connected, False)

    def _connected(self, up: bool) -> None:
        log.info("MQTT %s", "connected: publishing every value" if up else "disconnected")
        self.up = up
        self.client.set(f"{self.plugin.name}/connected", up).add_done_callback(_quiet)
        if up:
            # What paho held at the disconnect it sends again or drops; all is sent anew.
            self.queued = 0
            self.waiting.update(dict.fromkeys(self.values))
            self._pump()

    async def _report_counters(self) -> None:
        while True:
            await self._counters_dirty.wait()
            self._counters_dirty.clear()
            try:
                await self.client.set_many({f"{self.plugin.name}/published": self.published,
                                            f"{self.plugin.name}/refused": self.refused,
                                            f"{self.plugin.name}/queued": self.queued,
                                            f"{self.plugin.name}/waiting": len(self.waiting)})
            except (PlugboardError, ProtocolError) as exc:
                log.debug("counters not written: %s", exc)
            await asyncio.sleep(REPORT_EVERY_S)


def _quiet(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.debug("not written: %s", future.exception())


plugin = Plugin()


@plugin.on_init
async def init(p: Plugin, config: dict[str, Any]) -> None:
    bridge = Bridge(p, config)
    await bridge.start()
    p.bridge = bridge  # type: ignore[attr-defined]


@plugin.on_end
async def end(p: Plugin) -> None:
    bridge = getattr(p, "bridge", None)
    if bridge is not None:
        bridge.stop()


if __name__ == "__main__":
    plugin.run()
