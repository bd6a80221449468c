"""Property values as JSON and back, for bridges to the JSON world (the web dashboard,
MQTT payloads): timestamps as ISO 8601 text, durations as seconds, bytes as
``{"base64": ...}``. :func:`from_json` takes the declared type into account, so ``3``
may set a float and ``"2026-01-31T12:00:00Z"`` a timestamp; the broker still checks
the result against the declaration."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

from .values import Duration, Timestamp, ValueType, check_value, now


def to_json(value: Any) -> Any:
    """A value made of JSON types only."""
    if isinstance(value, Timestamp):
        return value.to_datetime().isoformat()
    if isinstance(value, Duration):
        return value.seconds
    if isinstance(value, bytes):
        return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    return value


def from_json(vtype: ValueType | str, value: Any) -> Any:
    """A decoded JSON value as a value of ``vtype``; ValueError says why it cannot be."""
    vtype = ValueType(vtype)
    if vtype is ValueType.FLOAT and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if vtype is ValueType.DURATION and isinstance(value, int | float):
        return Duration.from_seconds(float(value))
    if vtype is ValueType.TIMESTAMP:
        if value == "now":
            return now()
        if isinstance(value, str):
            try:
                parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"{value!r} is not an ISO 8601 time") from None
            if parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=dt.UTC)
            return Timestamp.from_datetime(parsed)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return Timestamp.from_unix_nano(int(value * 1e9))
    if vtype is ValueType.BYTES and isinstance(value, dict) and "base64" in value:
        return base64.b64decode(value["base64"])
    return value


def from_text(vtype: ValueType | str, text: str) -> Any:
    """What a person typed, for a property of ``vtype``: JSON, except that a ``str``
    property takes the text as it is and bare words are taken as strings."""
    if ValueType(vtype) is ValueType.STR:
        return text
    try:
        decoded = json.loads(text)
    except json.JSONDecodeError:
        decoded = text.strip()
    return check_value(ValueType(vtype), from_json(vtype, decoded))  # ProtocolError: why not
