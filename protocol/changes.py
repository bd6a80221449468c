"""The ``changes`` notification: one typed shape, built by the broker, read by clients.

On the wire (PROTOCOL.md "changes") a batch is the notification
``[2, "changes", {"sub", "seq", "items", "snapshot"?, "synced"?, "removed"?, "gap"?,
"coalesced"?}]``. Each item is the array ``[handle, value, revision, timestamp]``,
with the property's name as a fifth element the first time this subscription carries
that handle. Items stay plain arrays on both sides: a batch of a thousand changes costs
one object, not a thousand; readers index them with ``HANDLE``, ``VALUE``, ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from .codec import Notification, encode, encode_value
from .errors import ProtocolError

__all__ = ["HANDLE", "NAME", "REVISION", "TIMESTAMP", "VALUE", "ChangesBatch", "Item"]

HANDLE: Final = 0
VALUE: Final = 1
REVISION: Final = 2
TIMESTAMP: Final = 3
NAME: Final = 4
"""Positions in an item array."""

Item = list[Any]
"""``[handle, value, revision, timestamp]`` or ``[handle, value, revision, timestamp,
name]``."""


@dataclass(slots=True)
class ChangesBatch:
    """One ``changes`` notification of one subscription."""

    sub: int
    seq: int
    """1, 2, 3, ... per subscription: a jump means batches were lost on the way."""
    items: list[Item]
    snapshot: bool = False
    """The items are current values sent at subscribe time, not new writes."""
    synced: bool = False
    """The last batch of the snapshot: what follows are live changes."""
    removed: list[list[Any]] = field(default_factory=list)
    """``[handle, name]`` of each property gone since the last batch."""
    gap: int = 0
    """Changes dropped at the subscription's queue limit (policy ``all``)."""
    coalesced: int = 0
    """Changes replaced by a later one before they were sent (policy ``latest``)."""
    packed: list[bytes | None] | None = None
    """Beside ``items``, each item already encoded (None: encode it here): a write's
    item is encoded once and the bytes shared by every subscriber's batch. Not on the
    wire as such: :meth:`frame` splices them in."""

    def __init__(self, sub: int, seq: int, items: list[Item], snapshot: bool = False,
                 synced: bool = False, removed: list[list[Any]] | None = None,
                 gap: int = 0, coalesced: int = 0,
                 packed: list[bytes | None] | None = None) -> None:
        # Written out, like the codec's message classes: compiled, once per batch and
        # subscriber at each flush.
        self.sub, self.seq, self.items = sub, seq, items
        self.snapshot, self.synced = snapshot, synced
        self.removed = [] if removed is None else removed
        self.gap, self.coalesced, self.packed = gap, coalesced, packed

    def frame(self) -> bytes:
        """The notification as one msgpack frame, the same bytes as encoding
        ``[2, "changes", to_params()]``, with already encoded items copied, not encoded
        again."""
        packed = self.packed
        if packed is None:
            return encode(Notification("changes", self.to_params()))
        rest = self.to_params()
        parts = [_CHANGES_HEAD, _map_header(len(rest)), _SUB, encode_value(self.sub),
                 _SEQ, encode_value(self.seq), _ITEMS, _array_header(len(self.items))]
        for item, done in zip(self.items, packed, strict=True):
            parts.append(encode_value(item) if done is None else done)
        del rest["sub"], rest["seq"], rest["items"]
        for key, value in rest.items():
            parts.append(encode_value(key))
            parts.append(encode_value(value))
        return b"".join(parts)

    def to_params(self) -> dict[str, Any]:
        """The notification's params: optional keys only when they say something."""
        params: dict[str, Any] = {"sub": self.sub, "seq": self.seq, "items": self.items}
        if self.snapshot:
            params["snapshot"] = True
        if self.synced:
            params["synced"] = True
        if self.removed:
            params["removed"] = self.removed
        if self.gap:
            params["gap"] = self.gap
        if self.coalesced:
            params["coalesced"] = self.coalesced
        return params

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ChangesBatch:
        """Check the shape a reader relies on; ProtocolError names what is wrong.

        Each item's length and handle are checked; values are taken as they came (the
        broker checked them against the property's type when they were written).
        """
        sub, seq = params.get("sub"), params.get("seq")
        if type(sub) is not int or type(seq) is not int:
            raise ProtocolError("invalid_message", "changes: 'sub' and 'seq' must be integers")
        items = params.get("items") or []
        removed = params.get("removed") or []
        if type(items) is not list or type(removed) is not list:
            raise ProtocolError("invalid_message", "changes: 'items' and 'removed' are arrays")
        for item in items:
            if type(item) is not list or not 4 <= len(item) <= 5 or type(item[0]) is not int:
                raise ProtocolError("invalid_message", "changes: an item is [handle, value, "
                                    f"revision, timestamp, name?], got {item!r:.80}")
        for entry in removed:
            if type(entry) is not list or len(entry) != 2:
                raise ProtocolError("invalid_message", "changes: a removal is [handle, name]")
        gap, coalesced = params.get("gap") or 0, params.get("coalesced") or 0
        if type(gap) is not int or type(coalesced) is not int:
            raise ProtocolError("invalid_message", "changes: 'gap' and 'coalesced' are counts")
        return cls(sub, seq, items, bool(params.get("snapshot")), bool(params.get("synced")),
                   removed, gap, coalesced)


_CHANGES_HEAD: Final = b"\x93" + encode_value(2) + encode_value("changes")
_SUB: Final = encode_value("sub")
_SEQ: Final = encode_value("seq")
_ITEMS: Final = encode_value("items")


def _map_header(size: int) -> bytes:
    """msgpack's map header (a batch's params have at most eight keys: fixmap)."""
    return bytes([0x80 | size])


def _array_header(size: int) -> bytes:
    """msgpack's array header for ``size`` elements."""
    if size < 16:
        return bytes([0x90 | size])
    if size < 0x10000:
        return b"\xdc" + size.to_bytes(2, "big")
    return b"\xdd" + size.to_bytes(4, "big")
