"""What a subscription or listener yields: plain frozen dataclasses."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from plugboard.protocol.values import Timestamp


class Change(NamedTuple):
    """A property's value: current at subscribe time (``snapshot``) or a new write.

    A NamedTuple, not a frozen dataclass: thousands are made per second and a tuple is
    the cheapest immutable record to build."""

    name: str
    handle: int
    value: Any
    revision: int
    timestamp: Timestamp
    snapshot: bool = False


class Removed(NamedTuple):
    """The property is gone: deleted, or its plugin ended, crashed or was unloaded."""

    name: str
    handle: int


@dataclass(frozen=True, slots=True)
class Synced:
    """Every current value has arrived; what follows are live changes."""


@dataclass(frozen=True, slots=True)
class Gap:
    """Changes were lost: ``count`` dropped at the broker's queue bound, or batches missing."""

    count: int
    reason: str


@dataclass(frozen=True, slots=True)
class Reconnected:
    """The connection was re-established; ``instance_changed`` means the broker restarted
    and changes made meanwhile were missed (a fresh snapshot follows)."""

    instance: str
    instance_changed: bool


@dataclass(frozen=True, slots=True)
class Message:
    """A binary payload sent to this plugin, or published on a topic it listens to."""

    sender: str
    payload: bytes
    topic: str | None = None


@dataclass(frozen=True, slots=True)
class PropertyInfo:
    """A property as ``get`` and ``list`` describe it."""

    name: str
    handle: int
    type: str
    owner: str
    value: Any
    revision: int
    timestamp: Timestamp
    meta: dict[str, Any]

    @classmethod
    def from_wire(cls, item: dict[str, Any]) -> PropertyInfo:
        return cls(name=item["name"], handle=item["handle"], type=item["type"],
                   owner=item.get("owner", ""), value=item.get("value"),
                   revision=item.get("revision", 0),
                   timestamp=item.get("timestamp") or Timestamp(0, 0),
                   meta=item.get("meta") or {})


Event = Change | Removed | Synced | Gap | Reconnected
