"""Value types of protocol v1 and the checks a declaration applies to a value.

Timestamps are msgpack's own extension type -1 (:class:`msgpack.Timestamp`); durations
are our extension type 1, a big-endian signed 64-bit count of nanoseconds. Python
``datetime`` and ``timedelta`` are accepted when encoding and converted.
"""

from __future__ import annotations

import datetime as _dt
import enum
import math
import time
from dataclasses import dataclass
from typing import Any, Final

from msgpack import Timestamp

from .errors import ProtocolError
from .limits import MAX_VALUE_DEPTH

__all__ = ["DURATION_EXT", "Duration", "Timestamp", "ValueType", "check_value", "now"]

DURATION_EXT: Final = 1
"""msgpack extension type code of :class:`Duration`."""

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1


@dataclass(frozen=True, slots=True, order=True)
class Duration:
    """A signed span of time in whole nanoseconds (fits int64)."""

    ns: int

    def __post_init__(self) -> None:
        if not isinstance(self.ns, int) or isinstance(self.ns, bool):
            raise TypeError("Duration.ns must be an int")
        if not INT64_MIN <= self.ns <= INT64_MAX:
            raise ValueError("Duration out of the int64 nanosecond range")

    @classmethod
    def from_seconds(cls, seconds: float) -> Duration:
        return cls(round(seconds * 1e9))

    @classmethod
    def from_timedelta(cls, delta: _dt.timedelta) -> Duration:
        return cls((delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000)

    @property
    def seconds(self) -> float:
        return self.ns / 1e9

    def to_timedelta(self) -> _dt.timedelta:
        return _dt.timedelta(microseconds=self.ns // 1000)

    def __str__(self) -> str:
        return format_duration(self.ns)


def format_duration(ns: int) -> str:
    """Human form such as ``1h2m3.5s`` or ``250ms``; parse_duration in the CLI reads it back."""
    sign, ns = ("-", -ns) if ns < 0 else ("", ns)
    if ns < 1000:
        return f"{sign}{ns}ns"
    if ns < 10**6:
        return f"{sign}{ns / 1e3:g}us"
    if ns < 10**9:
        return f"{sign}{ns / 1e6:g}ms"
    hours, rest = divmod(ns, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    if rest or not text:
        text += f"{rest / 1e9:g}s"
    return sign + text


def now() -> Timestamp:
    """The current wall-clock time as a protocol timestamp."""
    return Timestamp.from_unix_nano(time.time_ns())


class ValueType(enum.StrEnum):
    """The type a property is declared with."""

    ANY = "any"
    BOOL = "bool"
    INT = "int"
    FLOAT = "float"
    STR = "str"
    BYTES = "bytes"
    LIST = "list"
    MAP = "map"
    TIMESTAMP = "timestamp"
    DURATION = "duration"


NUMERIC_TYPES: Final = frozenset({ValueType.INT, ValueType.FLOAT, ValueType.DURATION})

_PY_TYPES: Final[dict[ValueType, tuple[type, ...]]] = {
    ValueType.BOOL: (bool,),
    ValueType.INT: (int,),
    ValueType.FLOAT: (float, int),
    ValueType.STR: (str,),
    ValueType.BYTES: (bytes,),
    ValueType.LIST: (list,),
    ValueType.MAP: (dict,),
    ValueType.TIMESTAMP: (Timestamp,),
    ValueType.DURATION: (Duration,),
}


def type_name(value: Any) -> str:
    """The protocol's name for the type of a decoded value (for error messages)."""
    if value is None:
        return "nil"
    for vtype, pytypes in _PY_TYPES.items():
        if vtype is not ValueType.FLOAT and type(value) in pytypes:
            return str(vtype.value)
    if isinstance(value, float):
        return "float"
    return type(value).__name__


def numeric(value: Any) -> float | int:
    """The number a numeric value compares by (durations by nanoseconds)."""
    return value.ns if isinstance(value, Duration) else value


def check_depth(value: Any, limit: int = MAX_VALUE_DEPTH) -> None:
    """Refuse a value whose lists and maps nest deeper than ``limit`` (``too_deep``).

    A value must fit in every envelope the broker puts around it, so the limit is on the
    value itself, below the frame's own depth limit.
    """
    level = [value]
    depth = 0
    while level:
        nested: list[Any] = []
        for item in level:
            if type(item) is list:
                nested.extend(item)
            elif type(item) is dict:
                nested.extend(item.values())
        if not nested and not any(type(i) is list or type(i) is dict for i in level):
            return
        depth += 1
        if depth > limit:
            raise ProtocolError("too_deep", f"the value nests lists and maps deeper than "
                                f"{limit} levels", limit=limit)
        level = nested


def check_value(
    vtype: ValueType,
    value: Any,
    *,
    minimum: Any = None,
    maximum: Any = None,
    enum_values: list[Any] | None = None,
) -> Any:
    """Return ``value`` as stored under a ``vtype`` declaration, or raise ProtocolError.

    An int written to a float property is stored as a float: several msgpack encoders
    (JavaScript's among them) write integral floats as ints.
    """
    if type(value) is list or type(value) is dict:
        check_depth(value)
    if vtype is not ValueType.ANY:
        pytypes = _PY_TYPES[vtype]
        # bool is an int subclass in Python but not on the wire.
        if type(value) not in pytypes or (isinstance(value, bool) and vtype is not ValueType.BOOL):
            raise ProtocolError(
                "type_mismatch", f"expected {vtype.value}, got {type_name(value)}",
                expected=vtype.value, got=type_name(value),
            )
        if vtype is ValueType.FLOAT:
            value = float(value)
            if math.isnan(value) and (minimum is not None or maximum is not None):
                raise ProtocolError("out_of_range", "NaN is outside any min/max range")
        if vtype is ValueType.INT and not INT64_MIN <= value <= INT64_MAX:
            raise ProtocolError("out_of_range", "int outside the signed 64-bit range")
    if minimum is not None and numeric(value) < numeric(minimum):
        raise ProtocolError("out_of_range", f"{value} is below the minimum {minimum}",
                            min=minimum)
    if maximum is not None and numeric(value) > numeric(maximum):
        raise ProtocolError("out_of_range", f"{value} is above the maximum {maximum}",
                            max=maximum)
    if enum_values is not None and value not in enum_values:
        raise ProtocolError("not_in_enum", f"{value!r} is not one of {enum_values!r}",
                            enum=enum_values)
    return value
