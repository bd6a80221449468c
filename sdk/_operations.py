"""Each API call once, as a generator of requests that a client drives.

An operation yields ``(method, params, timeout)`` and is sent each reply's result (a
refusal, RemoteError, is thrown into it, so it may try another way); its return value
is the call's. The asyncio Client awaits each request, the SyncClient
blocks on it: the same steps, written once, with no I/O here.
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterable, Mapping
from typing import Any, TypeVar

from plugboard.protocol.connection import ClientConnection
from plugboard.protocol.errors import RemoteError

from ._events import PropertyInfo

log = logging.getLogger(__name__)

T = TypeVar("T")
Step = tuple[str, dict[str, Any], float | None]
Operation = Generator[Step, Any, T]
"""Yields requests, is sent their results, returns the call's value."""

Pairs = Mapping[str | int, Any] | Iterable[tuple[str | int, Any]]
"""What set_many takes: a mapping of target to value, or pairs."""


def declare(conn: ClientConnection, name: str, type: str, value: Any, meta: dict[str, Any]
            ) -> Operation[int]:
    """Declare a property (``value`` ... for none); remembered for re-declaring."""
    params: dict[str, Any] = {"name": name, "type": type, **meta}
    if value is not ...:
        params["value"] = value
    result = yield "declare", params, None
    conn.declaring(name, params, result)
    return int(result["handle"])


def redeclare(conn: ClientConnection, method: str, params: dict[str, Any]
              ) -> Operation[None]:
    """One of :meth:`ClientConnection.restore`'s requests. A declaration carrying the
    value of a write the broker never confirmed (an invalid one sent as a notification,
    or one unanswered when the connection dropped) may be refused: it is declared again
    with the last value the broker did confirm, so the rest is still restored."""
    try:
        yield method, params, None
    except RemoteError as refused:
        confirmed = conn.confirmed(params["name"]) if method == "declare" else None
        if confirmed is None:
            raise
        log.warning("re-declaring %s: the broker refused %r (%s), a value it never "
                    "confirmed; declared with %r, the last it did", params["name"],
                    params.get("value"), refused, confirmed.get("value"))
        yield method, confirmed, None


def delete(conn: ClientConnection, target: str | int) -> Operation[None]:
    info = PropertyInfo.from_wire((yield "get", {"target": target}, None))
    yield "delete", {"target": info.handle}, None
    conn.declared.pop(info.name, None)


def get(target: str | int) -> Operation[PropertyInfo]:
    return PropertyInfo.from_wire((yield "get", {"target": target}, None))


def list_properties(pattern: str) -> Operation[list[PropertyInfo]]:
    """Every property matching ``pattern``, by name, fetched page by page."""
    items: list[PropertyInfo] = []
    after = ""
    while True:
        result = yield "list", {"pattern": pattern, "after": after}, None
        items.extend(PropertyInfo.from_wire(i) for i in result["items"])
        if not result.get("more") or not result["items"]:
            return items
        after = items[-1].name


def call(plugin: str, method: str, wait: float, params: dict[str, Any]) -> Operation[Any]:
    """Call an exported method; the broker waits ``wait`` s for the plugin, we a second
    longer for the broker."""
    reply = yield "call", {"plugin": plugin, "method": method, "params": params,
                           "timeout_ms": max(1, int(wait * 1000))}, wait + 1.0
    return reply["result"]


def send(to: str, payload: bytes, topic: str | None) -> Operation[None]:
    params: dict[str, Any] = {"to": to, "payload": payload}
    if topic is not None:
        params["topic"] = topic
    yield "send", params, None


def publish(topic: str, payload: bytes) -> Operation[int]:
    result = yield "publish", {"topic": topic, "payload": payload}, None
    return int(result["delivered"])


def set_many_params(items: Pairs) -> tuple[list[tuple[str | int, Any]], dict[str, Any]]:
    """The pairs (to remember them) and the ``set_many`` params."""
    pairs = list(items.items() if isinstance(items, Mapping) else items)
    return pairs, {"items": [list(p) for p in pairs]}


def check_max_pending(max_pending: int) -> None:
    """A subscription keeps at least one change for its reader."""
    if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
        raise ValueError(f"max_pending must be an int of at least 1, not {max_pending!r}")


def subscribe_options(current: bool, policy: str, queue_limit: int | None,
                      min_interval: float | None, deadband: float | None) -> dict[str, Any]:
    """The ``subscribe`` params beyond the pattern. Items carry their time as integer
    nanoseconds (``timestamp_ns``): a timestamp object per item (built by msgpack's
    Python class, then walked by the cycle collector) was about a third of a
    subscriber's CPU per change; :class:`Batch` builds the ones a reader asks for."""
    options: dict[str, Any] = {"current": current, "policy": policy, "timestamp_ns": True}
    if queue_limit is not None:
        options["queue_limit"] = queue_limit
    if min_interval is not None:
        options["min_interval_ms"] = round(min_interval * 1000)
    if deadband is not None:
        options["deadband"] = deadband
    return options
