"""What a declaration says about a property besides its type: unit, bounds, enum, who
may write it, persistence.

Both the broker (checking ``declare``) and the plugin runtime (checking a contract's
exports) parse it, so it lives with the wire format and imports nothing else of ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from .errors import ProtocolError
from .names import validate_plugin_name
from .values import NUMERIC_TYPES, ValueType, check_value, numeric

WRITERS_ANY: Final = "*"
WRITERS_CLIENTS: Final = "clients"
WRITERS_PLUGINS: Final = "plugins"


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
    bounds = {}
    for key in ("min", "max"):
        value = params.get(key)
        if value is not None:
            if vtype not in NUMERIC_TYPES:
                raise ProtocolError("invalid_params", f"{key} applies to int, float and "
                                    f"duration properties, not {vtype.value}")
            bounds[key] = _declared(vtype, key, value)
            if value != value:  # NaN: every comparison with it is false, no bound at all
                raise ProtocolError("invalid_params", f"{key} must be a number, not NaN",
                                    field=key)
    if "min" in bounds and "max" in bounds and numeric(bounds["min"]) > numeric(bounds["max"]):
        raise ProtocolError("invalid_params", "min is greater than max")
    enum_values = params.get("enum")
    if enum_values is not None:
        if not isinstance(enum_values, list) or not enum_values:
            raise ProtocolError("invalid_params", "enum must be a non-empty list")
        enum_values = [_declared(vtype, "enum", v) for v in enum_values]
    writable_by = who_may(params.get("writable_by", []), "writable_by")
    persist = params.get("persist", False)
    if not isinstance(persist, bool):
        raise ProtocolError("invalid_params", "persist must be a bool")
    return _shared(Meta(
        unit=_text(params, "unit"), description=_text(params, "description"),
        min=bounds.get("min"),
        max=bounds.get("max"), enum=enum_values, writable_by=writable_by,
        persist=persist,
    ))


def who_may(value: Any, field: str) -> tuple[str, ...]:
    """A ``writable_by`` or ``callable_by`` rule, checked: plugin names, ``plugins``,
    ``clients`` or ``*``; one string is a list of one. A name that can never match is
    refused rather than kept as a rule that allows no one."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
        raise ProtocolError("invalid_params", f"{field} must be a list of strings")
    for who in value:
        if who in (WRITERS_ANY, WRITERS_CLIENTS, WRITERS_PLUGINS):
            continue
        try:
            validate_plugin_name(who)
        except ProtocolError:
            raise ProtocolError("invalid_params", f"{field}: {who!r} is not a plugin name, "
                                f"{WRITERS_PLUGINS}, {WRITERS_CLIENTS} or {WRITERS_ANY}",
                                field=field) from None
    return tuple(value)


def _text(params: dict[str, Any], key: str) -> str | None:
    # Not a closure inside parse_meta: compiled, a closure and its environment refer to
    # each other, a cycle left for the collector at every declaration.
    value = params.get(key)
    if value is not None and not isinstance(value, str):
        raise ProtocolError("invalid_params", f"{key} must be a string")
    return value


def _declared(vtype: ValueType, key: str, value: Any) -> Any:
    """A min/max/enum value checked against the type: a wrong one is a bad declaration
    (``invalid_params``), not a bad write."""
    try:
        return check_value(vtype, value)
    except ProtocolError as exc:
        raise ProtocolError("invalid_params", f"{key} of a {vtype.value} property: "
                            f"{exc.message}", field=key) from None


_META_CACHE: Final[dict[tuple[Any, ...], Meta]] = {}


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
