"""The broker's own figures, published below ``system/broker/`` like any property.

They are refreshed on a timer (``stats_interval_s``), not per message, so the hot
path only bumps plain counters. A figure is written only when it changed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from plugboard.protocol.values import Duration, Timestamp, ValueType

if TYPE_CHECKING:
    from .core import BrokerCore
    from .datastore import Property

PREFIX = "system/broker/"


class SystemProperties:
    def __init__(self, core: BrokerCore) -> None:
        from .core import BROKER_VERSION

        self._core = core
        self._started = core.clock()
        self.next_refresh = 0.0
        declare = core.declare_system
        declare(PREFIX + "version", ValueType.STR, BROKER_VERSION,
                description="broker software version")
        declare(PREFIX + "instance", ValueType.STR, core.instance,
                description="changes on every broker start")
        declare(PREFIX + "started_at", ValueType.TIMESTAMP,
                Timestamp.from_unix_nano(core.wallclock()), description="when the broker started")
        self._figures: dict[str, Property] = {
            key: declare(PREFIX + key, vtype, initial, description=text, unit=unit)
            for key, vtype, initial, text, unit in [
                ("uptime", ValueType.DURATION, Duration(0), "time since start", None),
                ("sessions", ValueType.INT, 0, "connected peers", None),
                ("properties", ValueType.INT, 0, "declared properties", None),
                ("messages_in", ValueType.INT, 0, "messages received", "messages"),
                ("messages_out", ValueType.INT, 0, "messages sent", "messages"),
                ("drops", ValueType.INT, 0, "messages to peers dropped at their queue limit",
                 "messages"),
                ("store_commits", ValueType.INT, 0, "store transactions written (persistent "
                 "properties)", "commits"),
                ("store_error", ValueType.STR, "", "why the store cannot write (a full disk); "
                 "empty while it writes", None),
            ]
        }

    def refresh(self, now: float) -> None:
        if now < self.next_refresh:
            return
        core = self._core
        self.next_refresh = now + core.config.stats_interval_s
        current: dict[str, Any] = {
            "uptime": Duration.from_seconds(now - self._started),
            "sessions": len(core.sessions),
            "properties": len(core.store),
            "messages_in": core.messages_in,
            "messages_out": core.messages_out,
            "drops": core.drops,
            "store_commits": core.persistence.commits if core.persistence is not None else 0,
            "store_error": (core.persistence.failure or "") if core.persistence is not None
            else "",
        }
        for key, value in current.items():
            prop = self._figures[key]
            if prop.value != value:
                core._write(prop, value)
