"""The typed property datastore: declarations, values, revisions and handles.

Handles follow the prototype's data handles: an index into a slot table plus a check
that the slot still holds the same property. Here the check is a generation counter
bumped whenever a slot is freed, so a handle kept across delete-and-recreate is a
``stale_handle`` error instead of a write to the wrong property. A handle is
``slot * 2**24 + generation % 2**24``, below 2**53 so JavaScript numbers hold it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from protocol.errors import ProtocolError
from protocol.names import validate_name
from protocol.values import NUMERIC_TYPES, Duration, Timestamp, ValueType, check_value

if TYPE_CHECKING:
    from .subscriptions import Subscription

_GEN_BITS = 24
_GEN_MASK = (1 << _GEN_BITS) - 1
MAX_SLOTS = 1 << 29

WRITERS_ANY = "*"
WRITERS_CLIENTS = "clients"
WRITERS_PLUGINS = "plugins"


@dataclass(frozen=True, slots=True, kw_only=True)
class Meta:
    """What a declaration says about a property besides its type."""

    unit: str | None = None
    """Unit of measurement, free text such as ``degC`` or ``B/s``."""
    description: str | None = None
    """One line for people reading ``plugboard ls``."""
    min: Any = None
    """Smallest value a write may set (numeric types only)."""
    max: Any = None
    """Largest value a write may set (numeric types only)."""
    enum: list[Any] | None = None
    """The only values a write may set."""
    writable_by: tuple[str, ...] = ()
    """Who besides the owner may write: plugin names, ``plugins``, ``clients`` or ``*``."""
    persist: bool = False
    """Keep the last value across broker restarts (stored now, honoured by the store)."""

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: getattr(self, k)
            for k in ("unit", "description", "min", "max", "enum")
            if getattr(self, k) is not None
        }
        if self.writable_by:
            out["writable_by"] = list(self.writable_by)
        if self.persist:
            out["persist"] = True
        return out


def parse_meta(vtype: ValueType, params: dict[str, Any]) -> Meta:
    """Read the metadata of a ``declare`` request, checking it fits the type."""

    def text(key: str) -> str | None:
        value = params.get(key)
        if value is not None and not isinstance(value, str):
            raise ProtocolError("invalid_params", f"{key} must be a string")
        return value

    bounds = {}
    for key in ("min", "max"):
        value = params.get(key)
        if value is not None:
            if vtype not in NUMERIC_TYPES:
                raise ProtocolError("invalid_params", f"{key} applies to int, float and "
                                    f"duration properties, not {vtype.value}")
            bounds[key] = _declared(vtype, key, value)
    if "min" in bounds and "max" in bounds and _num(bounds["min"]) > _num(bounds["max"]):
        raise ProtocolError("invalid_params", "min is greater than max")
    enum_values = params.get("enum")
    if enum_values is not None:
        if not isinstance(enum_values, list) or not enum_values:
            raise ProtocolError("invalid_params", "enum must be a non-empty list")
        enum_values = [_declared(vtype, "enum", v) for v in enum_values]
    writable_by = params.get("writable_by", [])
    if isinstance(writable_by, str):
        writable_by = [writable_by]
    if not isinstance(writable_by, list) or not all(isinstance(w, str) for w in writable_by):
        raise ProtocolError("invalid_params", "writable_by must be a list of strings")
    persist = params.get("persist", False)
    if not isinstance(persist, bool):
        raise ProtocolError("invalid_params", "persist must be a bool")
    return _shared(Meta(
        unit=text("unit"), description=text("description"), min=bounds.get("min"),
        max=bounds.get("max"), enum=enum_values, writable_by=tuple(writable_by),
        persist=persist,
    ))


def _declared(vtype: ValueType, key: str, value: Any) -> Any:
    """A min/max/enum value checked against the type: a wrong one is a bad declaration
    (``invalid_params``), not a bad write."""
    try:
        return check_value(vtype, value)
    except ProtocolError as exc:
        raise ProtocolError("invalid_params", f"{key} of a {vtype.value} property: "
                            f"{exc.message}", field=key) from None


_META_CACHE: dict[tuple[Any, ...], Meta] = {}


def _shared(meta: Meta) -> Meta:
    """One Meta object for identical declarations: a large store repeats a few shapes."""
    try:
        # Types are part of the key: 0 == 0.0 == False, but they are not the same bound.
        enum = tuple((type(v), v) for v in meta.enum) if meta.enum is not None else None
        key = (meta.unit, meta.description, type(meta.min), meta.min, type(meta.max),
               meta.max, enum, meta.writable_by, meta.persist)
        hash(key)
    except TypeError:  # enum values that are lists or maps
        return meta
    if len(_META_CACHE) > 10_000:
        _META_CACHE.clear()
    return _META_CACHE.setdefault(key, meta)


def _num(value: Any) -> Any:
    return value.ns if isinstance(value, Duration) else value


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
    changed_at: Timestamp = field(default_factory=lambda: Timestamp(0, 0))
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
            "timestamp": self.changed_at, "meta": self.meta.to_wire(),
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
        return prop

    def remove(self, prop: Property) -> None:
        slot = prop.handle >> _GEN_BITS
        self._slots[slot] = None
        self._generations[slot] += 1
        self._free.append(slot)
        del self.by_name[prop.name]

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
        raise ProtocolError("invalid_params", "a property is named by a handle (int) or a "
                            f"name (str), got {type(target).__name__}")

    def write(self, prop: Property, value: Any, at: Timestamp) -> None:
        """Store an already checked value."""
        self.revision += 1
        prop.value = value
        prop.revision += 1
        prop.changed_at = at
