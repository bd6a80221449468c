"""Name and pattern grammar: ``/``-separated segments, MQTT's ``+`` and ``#`` in patterns.

A name is 1 to 16 segments of ``[A-Za-z0-9_][A-Za-z0-9_.-]*`` joined by ``/``, at most
255 bytes. The first segment is the owner's namespace: a plugin's name, or ``system``
for the broker. A pattern is a name whose segments may also be ``+`` (exactly one
segment) or, as the last segment only, ``#`` (the rest: zero or more segments).
"""

from __future__ import annotations

import re
from typing import Final

from .errors import ProtocolError
from .limits import MAX_NAME_BYTES, MAX_SEGMENTS

SYSTEM_NAMESPACE: Final = "system"
PLUGINS_PREFIX: Final = "system/plugins/"
"""Where the broker publishes what agents report of each plugin: ``<name>/state`` ..."""
LOG_TOPIC: Final = "system/logs/"
"""The topic prefix a plugin's captured output is published on by its agent."""

_SEGMENT: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*\Z")
_PLUGIN_NAME: Final = re.compile(r"[a-z][a-z0-9_\-]{0,63}\Z")
_AGENT_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")


def _segments(text: object, what: str, code: str) -> list[str]:
    if not isinstance(text, str):
        raise ProtocolError(code, f"{what} must be a string, got {type(text).__name__}")
    if not text:
        raise ProtocolError(code, f"{what} is empty")
    if len(text.encode()) > MAX_NAME_BYTES:
        raise ProtocolError(code, f"{what} is longer than {MAX_NAME_BYTES} bytes")
    parts = text.split("/")
    if len(parts) > MAX_SEGMENTS:
        raise ProtocolError(code, f"{what} {text!r} has more than {MAX_SEGMENTS} segments")
    return parts


def validate_name(name: object, what: str = "name") -> str:
    """Return ``name`` if it is a valid property name or topic, else raise invalid_name."""
    for segment in _segments(name, what, "invalid_name"):
        if not _SEGMENT.match(segment):
            raise ProtocolError(
                "invalid_name", f"{what} {name!r}: bad segment {segment!r} "
                "(segments are [A-Za-z0-9_][A-Za-z0-9_.-]*, separated by single '/')",
            )
    return name  # type: ignore[return-value]


def validate_pattern(pattern: object) -> str:
    """Return ``pattern`` if valid, else raise invalid_pattern."""
    parts = _segments(pattern, "pattern", "invalid_pattern")
    for index, segment in enumerate(parts):
        if segment == "#" and index != len(parts) - 1:
            raise ProtocolError("invalid_pattern", f"pattern {pattern!r}: '#' must be last")
        if segment not in ("+", "#") and not _SEGMENT.match(segment):
            raise ProtocolError(
                "invalid_pattern", f"pattern {pattern!r}: bad segment {segment!r}"
            )
    return pattern  # type: ignore[return-value]


def validate_plugin_name(name: object) -> str:
    """Plugin names are one lowercase segment: ``[a-z][a-z0-9_-]{0,63}``, not ``system``."""
    if not isinstance(name, str) or not _PLUGIN_NAME.match(name):
        raise ProtocolError(
            "invalid_name", f"plugin name {name!r} must match [a-z][a-z0-9_-]{{0,63}}"
        )
    if name == SYSTEM_NAMESPACE:
        raise ProtocolError("forbidden", "the namespace 'system' belongs to the broker")
    return name


def validate_agent_name(name: object) -> str:
    """Agent names label a host: ``[A-Za-z0-9][A-Za-z0-9_.-]{0,63}`` (a host name fits)."""
    if not isinstance(name, str) or not _AGENT_NAME.match(name):
        raise ProtocolError(
            "invalid_name", f"agent name {name!r} must match [A-Za-z0-9][A-Za-z0-9_.-]{{0,63}}"
        )
    return name


def matches(pattern: str, name: str) -> bool:
    """Whether ``name`` matches ``pattern`` (both assumed valid)."""
    pparts = pattern.split("/")
    nparts = name.split("/")
    for index, segment in enumerate(pparts):
        if segment == "#":
            return True
        if index >= len(nparts) or (segment != "+" and segment != nparts[index]):
            return False
    return len(pparts) == len(nparts)


def namespace(name: str) -> str:
    """The owner's namespace: the first segment."""
    return name.split("/", 1)[0]
