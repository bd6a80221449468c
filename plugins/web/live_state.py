"""What the dashboard knows of each property, fed by one subscription: its type, unit,
owner, value and time, as the page and /metrics use them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plugboard.protocol.json_values import to_json
from plugboard.protocol.values import Duration, Timestamp
from plugboard.sdk import PropertyInfo


@dataclass(slots=True)
class Shown:
    """One property as the page shows it."""

    name: str
    type: str
    owner: str
    unit: str
    writable_by: list[str]
    value: Any
    changed_ns: int

    def to_json(self) -> dict[str, Any]:
        return {"n": self.name, "t": self.type, "o": self.owner, "u": self.unit,
                "w": self.writable_by, "v": to_json(self.value),
                "ts": self.changed_ns // 1_000_000, "num": numeric(self.value)}


def shown(info: PropertyInfo) -> Shown:
    return Shown(info.name, info.type, info.owner, str(info.meta.get("unit") or ""),
                 list(info.meta.get("writable_by") or []), info.value,
                 info.timestamp.to_unix_nano())


def numeric(value: Any) -> float | None:
    """The number a gauge or a sparkline shows, or None for a value that is not one."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, Duration):
        return value.seconds
    if isinstance(value, Timestamp):
        return value.to_unix_nano() / 1e9
    return None
