"""The typed property datastore: declarations, values, revisions and handles.

Handles follow the prototype's data handles: an index into a slot table plus a check
that the slot still holds the same property. Here the check is a generation counter
bumped whenever a slot is freed, so a handle kept across delete-and-recreate is a
``stale_handle`` error instead of a write to the wrong property. A handle is
``slot * 2**24 + generation % 2**24``, below 2**53 so JavaScript numbers hold it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from plugboard.protocol.declaration import Meta
from plugboard.protocol.errors import ProtocolError
from plugboard.protocol.names import matches, namespace, validate_name
from plugboard.protocol.values import Timestamp, ValueType, check_value

if TYPE_CHECKING:
    from .subscriptions import Subscription

_GEN_BITS: Final = 24
_GEN_MASK: Final = (1 << _GEN_BITS) - 1
MAX_SLOTS: Final = 1 << 29

@dataclass(slots=True, eq=False)
class Property:
    """One declared property and its current value."""

    handle: int
    name: str
    type: ValueType
    meta: Meta
    owner: str
    """The plugin name that declared it, or ``system``."""
    value: Any = None
    revision: int = 0
    """How many times it was written; 0 while it holds no value."""
    changed_ns: int = 0
    """When it was last written, in nanoseconds since the Unix epoch (0: never). An int,
    not a Timestamp: a write builds no object for it (``set_many``'s items share one),
    and it is what subscribers with ``timestamp_ns`` are sent."""
    subscriptions: list[Subscription] | tuple[()] = ()
    """Subscriptions whose pattern matches this name, kept at subscribe/declare time
    (an empty tuple until the first: most properties of a large store have none)."""

    def watch(self, sub: Subscription) -> None:
        if self.subscriptions:
            self.subscriptions.append(sub)
        else:
            self.subscriptions = [sub]

    def unwatch(self, sub: Subscription) -> None:
        self.subscriptions.remove(sub)  # type: ignore[union-attr]

    def check(self, value: Any) -> Any:
        """``value`` as it would be stored, or ProtocolError naming the broken rule."""
        try:
            return check_value(self.type, value, minimum=self.meta.min,
                               maximum=self.meta.max, enum_values=self.meta.enum)
        except ProtocolError as exc:
            raise ProtocolError(exc.code, f"{self.name}: {exc.message}", name=self.name,
                                **exc.details) from None

    def describe(self) -> dict[str, Any]:
        """The full description ``get`` and ``list`` return."""
        return {
            "handle": self.handle, "name": self.name, "type": self.type.value,
            "owner": self.owner, "value": self.value, "revision": self.revision,
            "timestamp": Timestamp.from_unix_nano(self.changed_ns),
            "meta": self.meta.to_wire(),
        }


class Datastore:
    """All properties, by name and by handle, with a global revision counter."""

    def __init__(self) -> None:
        self._slots: list[Property | None] = []
        self._generations: list[int] = []
        self._free: list[int] = []
        self.by_name: dict[str, Property] = {}
        self.revision = 0
        """Bumped on every write to any property."""
        self._namespaces: dict[str, dict[str, Property]] = {}
        """Properties by the first segment of their name: a pattern that names its
        namespace looks at that namespace only."""

    def __len__(self) -> int:
        return len(self.by_name)

    def __iter__(self) -> Any:
        return iter(self.by_name.values())

    def add(self, name: str, vtype: ValueType, meta: Meta, owner: str) -> Property:
        """Create a property in a free slot (the caller checked it does not exist)."""
        if self._free:
            slot = self._free.pop()
        else:
            slot = len(self._slots)
            if slot >= MAX_SLOTS:
                raise ProtocolError("limit_exceeded", "the datastore is full")
            self._slots.append(None)
            self._generations.append(0)
        handle = (slot << _GEN_BITS) | (self._generations[slot] & _GEN_MASK)
        prop = Property(handle=handle, name=name, type=vtype, meta=meta, owner=owner)
        self._slots[slot] = prop
        self.by_name[name] = prop
        self._namespaces.setdefault(namespace(name), {})[name] = prop
        return prop

    def remove(self, prop: Property) -> None:
        slot = prop.handle >> _GEN_BITS
        self._slots[slot] = None
        self._generations[slot] += 1
        self._free.append(slot)
        del self.by_name[prop.name]
        siblings = self._namespaces[namespace(prop.name)]
        del siblings[prop.name]
        if not siblings:
            del self._namespaces[namespace(prop.name)]

    def matching(self, pattern: str) -> list[Property]:
        """The properties whose names match ``pattern`` (checked by the caller): a
        subscribe to ``clock/#`` among a million properties reads clock's only."""
        first = namespace(pattern)
        if first in ("+", "#"):
            candidates: Any = self.by_name.values()
        else:
            candidates = self._namespaces.get(first, {}).values()
        return [prop for prop in candidates if matches(pattern, prop.name)]

    def resolve(self, target: Any) -> Property:
        """The property a request names by handle or by name."""
        if isinstance(target, str):
            prop = self.by_name.get(target)
            if prop is None:
                validate_name(target)  # only valid names are stored: check on a miss only
                raise ProtocolError("not_found", f"no property named {target!r}", name=target)
            return prop
        if type(target) is int and target >= 0:
            slot = target >> _GEN_BITS
            prop = self._slots[slot] if slot < len(self._slots) else None
            if prop is not None and prop.handle == target:
                return prop
            if slot < len(self._generations) and (target & _GEN_MASK) != (
                self._generations[slot] & _GEN_MASK
            ):
                raise ProtocolError("stale_handle", f"handle {target} refers to a deleted "
                                    "property; look the name up again", handle=target)
            raise ProtocolError("not_found", f"no property with handle {target}", handle=target)
        if type(target) is int:
            raise ProtocolError("invalid_params", f"{target} is not a handle: handles are "
                                "0 or more")
        raise ProtocolError("invalid_params", "a property is named by a handle (int) or a "
                            f"name (str), got {type(target).__name__}")

    def write(self, prop: Property, value: Any, at_ns: int) -> None:
        """Store an already checked value, written at ``at_ns`` (Unix nanoseconds)."""
        self.revision += 1
        prop.value = value
        prop.revision += 1
        prop.changed_ns = at_ns
