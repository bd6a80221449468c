"""Typed values typed by people: parsing command-line text and formatting for display."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Sequence
from typing import Any

from plugboard.protocol.errors import ConfigError
from plugboard.protocol.values import Duration, Timestamp, ValueType, format_duration

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h|d)")
_UNIT_NS = {"ns": 1, "us": 10**3, "µs": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9,
            "h": 3600 * 10**9, "d": 86400 * 10**9}
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_duration(text: str) -> Duration:
    """``1h30m``, ``250ms``, ``-1.5s``, ``2d`` or a bare number of seconds."""
    body = text.strip()
    sign = -1 if body.startswith("-") else 1
    body = body.lstrip("+-")
    try:
        return Duration(sign * round(float(body) * 10**9))
    except ValueError:
        pass
    total, pos = 0, 0
    for match in _DURATION_PART.finditer(body):
        if match.start() != pos:
            break
        total += round(float(match.group(1)) * _UNIT_NS[match.group(2)])
        pos = match.end()
    if pos != len(body) or not body:
        raise ConfigError(f"{text!r} is not a duration (examples: 250ms, 1.5s, 1h30m)")
    return Duration(sign * total)


def parse_timestamp(text: str) -> Timestamp:
    """``now``, ``@<unix seconds>`` or ISO 8601 (no zone given means UTC)."""
    body = text.strip()
    if body == "now":
        return Timestamp.from_datetime(dt.datetime.now(dt.UTC))
    if body.startswith("@"):
        try:
            return Timestamp.from_unix(float(body[1:]))
        except ValueError:
            raise ConfigError(f"{text!r}: expected @ and Unix seconds") from None
    try:
        when = dt.datetime.fromisoformat(body.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"{text!r} is not a timestamp (now, @1700000000, or "
                          "2026-01-31T12:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return Timestamp.from_datetime(when)


def from_json(node: Any) -> Any:
    """Tagged JSON to values: {"$timestamp": [s, ns] or text}, {"$duration": ns or text},
    {"$bytes": hex}. The same tags as protocol/vectors and ``plugboard store export``."""
    if isinstance(node, dict):
        if set(node) == {"$duration"}:
            ns = node["$duration"]
            return Duration(ns) if isinstance(ns, int) else parse_duration(str(ns))
        if set(node) == {"$timestamp"}:
            stamp = node["$timestamp"]
            return (Timestamp(*stamp) if isinstance(stamp, list)
                    else parse_timestamp(str(stamp)))
        if set(node) == {"$bytes"}:
            return bytes.fromhex(node["$bytes"])
        return {k: from_json(v) for k, v in node.items()}
    if isinstance(node, list):
        return [from_json(v) for v in node]
    return node


def to_json(value: Any) -> Any:
    """Values to tagged JSON (see :func:`from_json`), exactly: nothing is rounded."""
    if isinstance(value, Timestamp):
        return {"$timestamp": [value.seconds, value.nanoseconds]}
    if isinstance(value, Duration):
        return {"$duration": value.ns}
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value


def parse_value(text: str, vtype: ValueType) -> Any:
    """The value ``text`` means for a property of type ``vtype``; ConfigError if none."""
    try:
        if vtype is ValueType.BOOL:
            lowered = text.strip().lower()
            if lowered in _TRUE | _FALSE:
                return lowered in _TRUE
            raise ValueError
        if vtype is ValueType.INT:
            return int(text, 0)
        if vtype is ValueType.FLOAT:
            return float(text)
        if vtype is ValueType.STR:
            return text
        if vtype is ValueType.BYTES:
            return bytes.fromhex(text.removeprefix("0x"))
        if vtype is ValueType.TIMESTAMP:
            return parse_timestamp(text)
        if vtype is ValueType.DURATION:
            return parse_duration(text)
        return from_json(json.loads(text))
    except (ValueError, json.JSONDecodeError):
        form = _FORMS.get(vtype, _JSON_FORM)
        raise ConfigError(f"{text!r} is not a valid {vtype.value} ({form})") from None


_FORMS = {
    ValueType.BOOL: "true or false; yes, no, on, off, 1 and 0 too",
    ValueType.INT: "e.g. 42, -7 or 0x2a",
    ValueType.FLOAT: "e.g. 21.5 or 1e-3",
    ValueType.BYTES: "hex, e.g. 0x00ff or 00ff",
    ValueType.LIST: "JSON, e.g. [1, 2]",
    ValueType.MAP: 'JSON, e.g. {"a": 1}',
}
"""How each type is written on the command line, for the error that shows it."""
_JSON_FORM = 'JSON, e.g. 1, "text", [1, 2] or {"a": 1}'


def format_table(rows: Sequence[Sequence[str]], max_width: int = 60) -> str:
    """Rows as left-aligned columns (the first row is the header); the last column is
    not padded, and no padding exceeds ``max_width``."""
    widths = [min(max(len(row[c]) for row in rows), max_width) for c in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(widths[c]) for c, cell in enumerate(row)).rstrip()
                     for row in rows)


def format_value(value: Any) -> str:
    """One-line display form; parse_value reads the scalar forms back."""
    if isinstance(value, Timestamp):
        when = dt.datetime.fromtimestamp(value.seconds, dt.UTC)
        return when.strftime("%Y-%m-%dT%H:%M:%S") + f".{value.nanoseconds // 1000:06d}Z"
    if isinstance(value, Duration):
        return format_duration(value.ns)
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nil"
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=format_value, ensure_ascii=False)
    return str(value)
