"""Plugboard wire protocol v1: pure encode/decode, value types, names, error codes.

Nothing here touches sockets or event loops; ``PROTOCOL.md`` beside this file is the
language-neutral specification and ``vectors/`` holds test vectors for any language.
"""

from ._version import PROTOCOL_VERSION, SUPPORTED_VERSIONS
from .codec import (
    Message,
    Notification,
    Request,
    Response,
    decode,
    decode_value,
    encode,
    encode_value,
)
from .errors import (
    ERROR_CODES,
    ConfigError,
    Conflict,
    ConnectionFailed,
    InvalidRequest,
    InvalidValue,
    KeyRefused,
    NotAllowed,
    NotFound,
    PlugboardError,
    ProtocolError,
    RemoteError,
    RequestTimeout,
    StoreError,
)
from .names import matches, validate_name, validate_pattern, validate_plugin_name
from .values import Duration, Timestamp, ValueType, check_value

__all__ = [
    "ERROR_CODES", "PROTOCOL_VERSION", "SUPPORTED_VERSIONS",
    "ConfigError", "Conflict", "ConnectionFailed", "Duration", "InvalidRequest",
    "InvalidValue", "KeyRefused", "Message", "NotAllowed", "NotFound", "Notification",
    "PlugboardError",
    "ProtocolError", "RemoteError", "Request", "RequestTimeout", "Response", "StoreError",
    "Timestamp",
    "ValueType", "check_value", "decode", "decode_value", "encode", "encode_value",
    "matches", "validate_name", "validate_pattern", "validate_plugin_name",
]
