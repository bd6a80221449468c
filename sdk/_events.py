"""What a subscription or listener yields: plain frozen dataclasses."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from plugboard.protocol.changes import HANDLE, REVISION, TIMESTAMP, VALUE, Item
from plugboard.protocol.connection import Changes
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
    live: bool = True
    """False while the property is dormant: persistent, its plugin away, the stored
    value kept."""

    @classmethod
    def from_wire(cls, item: dict[str, Any]) -> PropertyInfo:
        return cls(name=item["name"], handle=item["handle"], type=item["type"],
                   owner=item.get("owner", ""), value=item.get("value"),
                   revision=item.get("revision", 0),
                   timestamp=item.get("timestamp") or Timestamp(0, 0),
                   meta=item.get("meta") or {}, live=item.get("live", True) is not False)


def _timestamp(time: int | Timestamp) -> Timestamp:
    """An item's time as a Timestamp: the SDK asks for nanoseconds (``timestamp_ns``);
    a broker older than that option ignores it and sends a timestamp."""
    return Timestamp.from_unix_nano(time) if type(time) is int else time


class Batch:
    """The changes of one notification as they came: ``items`` stay the wire's arrays
    (``[handle, value, revision, time_ns, ...]``, the time of the write as an integer of
    nanoseconds since the Unix epoch), so reading a batch of a thousand builds nothing
    per item. Iterating it yields :class:`Change` records, their ``timestamp`` a
    :class:`Timestamp`, for those who want them."""

    __slots__ = ("items", "names", "snapshot")

    def __init__(self, items: list[Item], names: list[str], snapshot: bool) -> None:
        self.items = items
        self.names = names
        """The property name of each item, in order."""
        self.snapshot = snapshot

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Change]:
        snapshot = self.snapshot
        for name, item in zip(self.names, self.items, strict=True):
            yield Change(name, item[HANDLE], item[VALUE], item[REVISION],
                         _timestamp(item[TIMESTAMP]), snapshot)

    def values(self) -> Iterator[tuple[str, Any]]:
        """``(name, value)`` of each item, in order."""
        return zip(self.names, (item[VALUE] for item in self.items), strict=True)

    def __getitem__(self, index: int) -> Change:
        item = self.items[index]
        return Change(self.names[index], item[HANDLE], item[VALUE], item[REVISION],
                      _timestamp(item[TIMESTAMP]), self.snapshot)

    def __repr__(self) -> str:
        return f"Batch({len(self.items)} items, snapshot={self.snapshot})"


Event = Change | Removed | Synced | Gap | Reconnected
BatchEvent = Batch | Removed | Synced | Gap | Reconnected
"""What a subscription's ``batches()`` yields: changes a notification at a time."""


def events_of(changes: Changes) -> list[BatchEvent]:
    """One notification as events, in the order a reader must see them."""
    batch = changes.batch
    events: list[BatchEvent] = []
    if changes.lost > 0:
        events.append(Gap(changes.lost, "notification batches lost on the way"))
    if batch.items:
        events.append(Batch(batch.items, changes.names, batch.snapshot))
    if batch.removed:
        events.extend(Removed(name, handle) for handle, name in batch.removed)
    if batch.gap:
        events.append(Gap(batch.gap, "dropped at the subscription's queue limit"))
    if batch.synced:
        events.append(Synced())
    return events
