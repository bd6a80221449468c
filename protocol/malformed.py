"""Why a frame is not one protocol msgpack object, and where: the error path of decoding.

msgpack's own exceptions say little (``FormatError()``, "Unpack failed: incomplete
input", "4294967295 exceeds max_array_len(5)") and never where. A peer written in
another language needs both to find the bug in its encoder, so a frame that failed to
decode is read again here one element at a time, and the first element that cannot be
read is named with its offset in the frame. This runs only for frames already refused.
"""

from __future__ import annotations

from typing import Any

import msgpack

from .errors import ProtocolError

__all__ = ["explain"]

WALK_LIMIT = 10_000
"""Values read, at most, to find where a refused frame goes wrong."""

_ARRAYS = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}
_MAPS = frozenset(range(0x80, 0x90)) | {0xDE, 0xDF}


def explain(frame: bytes, refusal: Exception) -> str:
    """What is wrong with ``frame``, which msgpack refused with ``refusal``, and at
    which offset. The walk reads at most :data:`WALK_LIMIT` values: past them the
    message says what the decoder found, and how far the frame was found sound (a 4 MiB
    frame of small values would otherwise cost seconds of Python)."""
    if not frame:
        return "empty frame: a message is one msgpack object"
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, ext_hook=_any_ext,
                                timestamp=0, max_buffer_size=len(frame))
    unpacker.feed(frame)
    # Values still to read at each open level: [left, map?, the container's offset].
    levels: list[list[Any]] = [[1, False, 0]]
    read = 0
    while levels:
        left, is_map, opened = levels[-1]
        if left == 0:
            levels.pop()
            continue
        levels[-1][0] = left - 1
        at = unpacker.tell()
        read += 1
        if read > WALK_LIMIT:
            return (f"{_words(refusal)}, past offset {at}: the {WALK_LIMIT} values "
                    "before it are sound")
        if at >= len(frame):
            container = "map" if is_map else "array"
            count = (left + 1) // 2 if is_map else left
            things = ("entry" if is_map else "item") if count == 1 else \
                ("entries" if is_map else "items")
            return (f"the frame ends at offset {at}, inside the {container} at offset "
                    f"{opened}: {count} more {things} {'was' if count == 1 else 'were'} announced "
                    "(truncated, or a wrong length)")
        head = frame[at]
        key = is_map and left % 2 == 0
        try:
            if head in _ARRAYS and not key:
                levels.append([unpacker.read_array_header(), False, at])
            elif head in _MAPS and not key:
                levels.append([2 * unpacker.read_map_header(), True, at])
            else:
                value = unpacker.unpack()
                if key and type(value) is not str:
                    return (f"the map key at offset {at} is {_a(_kind(head))}: map keys "
                            "must be strings")
        except UnicodeDecodeError as exc:
            return (f"the str at offset {at} is not UTF-8 ({exc.reason} at its byte "
                    f"{exc.start}); binary data goes in a bin")
        except msgpack.FormatError:
            return f"byte 0x{head:02x} at offset {at} starts no msgpack value"
        except Exception as exc:
            # A length past the frame's end shows as OutOfData, or as a ValueError
            # naming one of the limits msgpack derives from the frame's size.
            if isinstance(exc, msgpack.OutOfData) or "exceeds max_" in str(exc):
                return (f"the {_kind(head)} at offset {at} runs past the frame's end "
                        f"({len(frame)} bytes): truncated, or a wrong length")
            return (f"the {_kind(head)} at offset {at} cannot be read "
                    f"({str(exc) or type(exc).__name__})")
    end = unpacker.tell()
    if end < len(frame):
        return (f"the frame holds more than one msgpack object: the first ends at offset "
                f"{end}, {_bytes(len(frame) - end)} more follow")
    return _words(refusal)  # a check this walk does not repeat


def _bytes(count: int) -> str:
    return "1 byte" if count == 1 else f"{count} bytes"


def _words(refusal: Exception) -> str:
    """What the decoder said, where the walk could not place it: msgpack's terse
    exceptions (FormatError has no message at all) in plain words."""
    if isinstance(refusal, ProtocolError):
        return refusal.message
    if isinstance(refusal, msgpack.FormatError):
        return "a byte that starts no msgpack value"
    if isinstance(refusal, msgpack.OutOfData) or "incomplete input" in str(refusal):
        return "a value runs past the frame's end"
    return f"not valid msgpack ({str(refusal) or type(refusal).__name__})"


def _any_ext(code: int, data: bytes) -> None:
    """Ext types are judged by the decoder itself (unknown_ext); here any is read."""
    return None


def _a(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def _kind(head: int) -> str:
    """The msgpack type a first byte announces, as a reader would name it."""
    if head <= 0x7F or head >= 0xE0 or 0xCC <= head <= 0xD3:
        return "int"
    if 0xA0 <= head <= 0xBF or 0xD9 <= head <= 0xDB:
        return "str"
    if 0xC4 <= head <= 0xC6:
        return "bin"
    if head in (0xCA, 0xCB):
        return "float"
    if head in (0xC2, 0xC3):
        return "bool"
    if head == 0xC0:
        return "nil"
    if head in _ARRAYS:
        return "array"
    if head in _MAPS:
        return "map"
    return "ext"
