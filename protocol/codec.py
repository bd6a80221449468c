"""Encode and decode protocol messages: pure functions from objects to bytes and back.

One ZeroMQ frame holds exactly one msgpack object, the MessagePack-RPC envelope:
request ``[0, msgid, method, params]``, response ``[1, msgid, error, result]``,
notification ``[2, method, params]``. Elements past these are ignored (forward
compatibility), as are unknown keys in ``params``.

Decoding enforces the limits of :mod:`protocol.limits`. ``unpackb`` is used once per
frame, so msgpack's own per-type limits follow the frame's length.
"""

from __future__ import annotations

import datetime as _dt
import struct
import threading
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from .errors import ProtocolError
from .limits import MAX_DEPTH, MAX_FRAME_BYTES, MAX_MSGID
from .malformed import explain
from .values import DURATION_EXT, Duration

__all__ = [
    "Message", "Notification", "Request", "Response",
    "decode", "decode_value", "encode", "encode_value",
]

REQUEST: Final = 0
RESPONSE: Final = 1
NOTIFICATION: Final = 2
_INT64: Final = struct.Struct(">q")


# The message classes below write their __init__ out: dataclasses generate a Python one,
# which mypyc leaves interpreted (a frozen one sets each field through
# object.__setattr__); written out, it is compiled. One of each is built per message.


@dataclass(slots=True)
class Request:
    msgid: int
    method: str
    params: dict[str, Any]

    def __init__(self, msgid: int, method: str, params: dict[str, Any]) -> None:
        self.msgid, self.method, self.params = msgid, method, params


@dataclass(slots=True)
class Response:
    msgid: int
    error: dict[str, Any] | None
    result: Any

    def __init__(self, msgid: int, error: dict[str, Any] | None, result: Any) -> None:
        self.msgid, self.error, self.result = msgid, error, result


@dataclass(slots=True)
class Notification:
    method: str
    params: dict[str, Any]

    def __init__(self, method: str, params: dict[str, Any]) -> None:
        self.method, self.params = method, params


Message = Request | Response | Notification


def _default(obj: Any) -> Any:
    """What the packer does not take as it is: our extension types, and (it packs exact
    types only, see :func:`encode_value`) subclasses of the built-in ones as their base
    type, the way msgpack packs them when not strict."""
    if isinstance(obj, Duration):
        return msgpack.ExtType(DURATION_EXT, _INT64.pack(obj.ns))
    if isinstance(obj, _dt.timedelta):
        return msgpack.ExtType(DURATION_EXT, _INT64.pack(Duration.from_timedelta(obj).ns))
    if isinstance(obj, _dt.datetime):
        if obj.tzinfo is None:
            raise TypeError("naive datetime: attach a timezone (UTC) to send it as a timestamp")
        return msgpack.Timestamp.from_datetime(obj)
    if isinstance(obj, (list, tuple, frozenset, set)):
        return list(obj)
    if isinstance(obj, dict):
        return dict(obj)
    if isinstance(obj, int):  # an IntEnum, say (bool is packed before this is asked)
        return int.__index__(obj)
    if isinstance(obj, float):
        return float.__float__(obj)
    if isinstance(obj, str):  # a StrEnum: its text, not its str()
        return str.__str__(obj)
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj)
    raise TypeError(f"cannot encode a {type(obj).__name__} as a protocol value")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == DURATION_EXT:
        if len(data) != 8:
            raise ProtocolError("malformed", f"duration ext must be 8 bytes, got {len(data)}")
        return Duration(_INT64.unpack(data)[0])
    raise ProtocolError("unknown_ext", f"msgpack ext type {code} is not defined by the protocol")


_local: Final = threading.local()


def encode_value(obj: Any) -> bytes:
    """msgpack bytes of any protocol value or envelope (bin type for bytes, ext types)."""
    packer = getattr(_local, "packer", None)
    if packer is None:  # one reusable Packer per thread: packers are not thread-safe
        # strict_types: exact types only, so a list or int is not first asked whether it
        # is an ExtType (about a quarter of the time of a changes batch); _default packs
        # subclasses as their base type, the same bytes.
        packer = _local.packer = msgpack.Packer(default=_default, use_bin_type=True,
                                                datetime=False, strict_types=True)
    try:
        frame: bytes = packer.pack(obj)
        return frame
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError("invalid_params", f"cannot encode: {exc}") from exc


def encode(message: Message) -> bytes:
    """The frame for one message."""
    if isinstance(message, Request):
        return encode_value([REQUEST, message.msgid, message.method, message.params])
    if isinstance(message, Response):
        return encode_value([RESPONSE, message.msgid, message.error, message.result])
    return encode_value([NOTIFICATION, message.method, message.params])


def decode_value(frame: bytes, max_frame: int = MAX_FRAME_BYTES) -> Any:
    """One msgpack object from one frame, with every limit checked."""
    if len(frame) > max_frame:
        raise ProtocolError("too_large", f"frame of {len(frame)} bytes exceeds {max_frame}")
    try:
        obj = msgpack.unpackb(
            frame, raw=False, strict_map_key=True, ext_hook=_ext_hook, timestamp=0,
            use_list=True,
        )
    except ProtocolError:
        raise
    except msgpack.exceptions.StackError as exc:
        raise ProtocolError("too_deep", "nested deeper than the decoder's stack") from exc
    except Exception as exc:  # msgpack raises ValueError, OverflowError, TypeError, ...
        raise ProtocolError("malformed", explain(frame, exc)) from exc
    try:
        _check_shape(obj, 1)
    except ProtocolError as exc:
        if exc.code == "malformed":  # a map key that is no string: say where
            raise ProtocolError("malformed", explain(frame, exc)) from exc
        raise
    return obj


def _check_shape(obj: Any, depth: int) -> None:
    """Depth limit, and map keys must be strings (msgpack also lets bytes through)."""
    if depth > MAX_DEPTH:
        raise ProtocolError("too_deep", f"lists and maps nested deeper than {MAX_DEPTH}")
    if type(obj) is list:
        for item in obj:
            if type(item) is list or type(item) is dict:
                _check_shape(item, depth + 1)
    elif type(obj) is dict:
        for key, item in obj.items():
            if type(key) is not str:
                raise ProtocolError("malformed", "map keys must be strings")
            if type(item) is list or type(item) is dict:
                _check_shape(item, depth + 1)


def _int_in(value: Any, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def decode(frame: bytes, max_frame: int = MAX_FRAME_BYTES) -> Message:
    """Decode and validate one envelope; raise ProtocolError with the offending part named."""
    obj = decode_value(frame, max_frame)
    if type(obj) is not list or not obj:
        raise ProtocolError("invalid_message", "a message is a non-empty array [type, ...]")
    kind = obj[0]
    if kind == REQUEST and type(kind) is int:
        if len(obj) < 4:
            raise ProtocolError("invalid_message", "request is [0, msgid, method, params]")
        _, msgid, method, params = obj[:4]
        if not _int_in(msgid, 0, MAX_MSGID):
            raise ProtocolError("invalid_message", "request msgid must be an int 0..2^32-1")
        if type(method) is not str:
            raise ProtocolError("invalid_message", "request method must be a string",
                                msgid=msgid)
        if params is None:
            params = {}
        if type(params) is not dict:
            raise ProtocolError("invalid_message", "request params must be a map", msgid=msgid)
        return Request(msgid, method, params)
    if kind == RESPONSE and type(kind) is int:
        if len(obj) < 4:
            raise ProtocolError("invalid_message", "response is [1, msgid, error, result]")
        _, msgid, error, result = obj[:4]
        if not _int_in(msgid, 0, MAX_MSGID):
            raise ProtocolError("invalid_message", "response msgid must be an int 0..2^32-1")
        if error is not None and type(error) is not dict:
            raise ProtocolError("invalid_message", "response error must be nil or a map")
        return Response(msgid, error, result)
    if kind == NOTIFICATION and type(kind) is int:
        if len(obj) < 3:
            raise ProtocolError("invalid_message", "notification is [2, method, params]")
        _, method, params = obj[:3]
        if type(method) is not str:
            raise ProtocolError("invalid_message", "notification method must be a string")
        if params is None:
            params = {}
        if type(params) is not dict:
            raise ProtocolError("invalid_message", "notification params must be a map")
        return Notification(method, params)
    raise ProtocolError("invalid_message", f"message type must be 0, 1 or 2, got {kind!r}")


def frame_msgid(frame: bytes) -> tuple[int, int] | None:
    """Best-effort kind (REQUEST or RESPONSE) and msgid of a frame that failed to
    decode, so a request's error can be answered and a response's waiter told: read
    from its first two elements alone, whatever follows them (nesting past the
    decoder's stack, a length no frame holds, bytes that are not msgpack)."""
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, ext_hook=_no_ext,
                                max_buffer_size=max(len(frame), 1))
    unpacker.feed(frame)
    try:
        if unpacker.read_array_header() < 2:
            return None
        kind = unpacker.unpack()
        msgid = unpacker.unpack()
    except Exception:
        return None
    if type(kind) is int and kind in (REQUEST, RESPONSE) and _int_in(msgid, 0, MAX_MSGID):
        return kind, msgid
    return None


def _no_ext(code: int, data: bytes) -> None:
    return None
