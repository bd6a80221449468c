"""One exception hierarchy for all of Plugboard, and the table of wire error codes.

::

    PlugboardError                  root: catch this to catch anything Plugboard raises
    ├── ProtocolError               a frame or request refused by PROTOCOL.md's rules (.code)
    ├── RemoteError                 an error reply from the other side (.code, .message, .details)
    │   ├── InvalidRequest          malformed, invalid_message, invalid_params, unknown_method, ...
    │   ├── NotAllowed              unauthorized, forbidden, contract_violation
    │   ├── NotFound                not_found, stale_handle
    │   ├── InvalidValue            type_mismatch, out_of_range, not_in_enum
    │   ├── CallFailed              unavailable, timeout, call_failed (plugin methods)
    │   └── Conflict                name_taken, invalid_state
    ├── ConnectionFailed            no broker at the endpoint, or the connection was lost
    │   └── KeyRefused            the broker refused this CURVE key in the handshake
    ├── RequestTimeout              no reply within the request's timeout
    └── ConfigError                 a bad setting or file given to the broker or CLI

Wire errors are a stable string code plus a human message; :data:`ERROR_CODES` is the
one table of codes, and :meth:`RemoteError.from_wire` maps a code to its class.
"""

from __future__ import annotations

from typing import Any, Final


class PlugboardError(Exception):
    """Root of every exception Plugboard raises."""


class ProtocolError(PlugboardError):
    """A frame or request the protocol's rules refuse, detected on this side.

    ``code`` is from :data:`ERROR_CODES`; the broker sends it back as the error reply.
    """

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}


class ConnectionFailed(PlugboardError):
    """The broker could not be reached, or the connection to it was lost."""


class KeyRefused(ConnectionFailed):
    """The broker refused this peer's CURVE key during the handshake (not authorized,
    or revoked): a refusal, though no session ever started."""


class RequestTimeout(PlugboardError):
    """A request got no reply within its timeout."""


class ConfigError(PlugboardError):
    """A setting, path or file given to Plugboard is unusable; the message says which."""


class StoreError(PlugboardError):
    """The persistent store could not write (a full disk, an I/O error); what it held
    before is intact and the writes stay queued for its next commit."""


ERROR_CODES: Final[dict[str, str]] = {
    "malformed": "the frame is not exactly one valid msgpack object",
    "invalid_message": "the envelope or a field has the wrong shape",
    "too_large": "a frame or field is over a size limit",
    "too_deep": "lists and maps are nested deeper than the limit",
    "unknown_ext": "a msgpack extension type the protocol does not define",
    "unknown_method": "no such method",
    "invalid_params": "a parameter is missing or of the wrong type",
    "hello_required": "the first request on a connection must be hello",
    "invalid_state": "the request does not fit the session's state",
    "unsupported_version": "no protocol version in common",
    "unauthorized": "missing or wrong token for the role",
    "forbidden": "the session's role or namespace does not allow this",
    "contract_violation": "the plugin's contract does not export this",
    "invalid_name": "a name or topic breaks the name grammar",
    "invalid_pattern": "a pattern breaks the pattern grammar",
    "not_found": "no such property, plugin, subscription or topic",
    "stale_handle": "the handle's property was deleted (generation changed)",
    "type_mismatch": "the value or declaration has another type",
    "out_of_range": "the value is outside the declared min/max",
    "not_in_enum": "the value is not one of the declared enum values",
    "name_taken": "another connected plugin already uses this name",
    "limit_exceeded": "a per-session limit was reached",
    "shutting_down": "the broker is stopping",
    "unavailable": "the called plugin is not connected, or its session ended mid-call",
    "timeout": "the called plugin did not answer in time",
    "call_failed": "the called plugin answered with an error (plugin_code says which)",
    "internal": "the broker failed; the message says how",
}
"""Every wire error code with its meaning. PROTOCOL.md lists the same table."""


class RemoteError(PlugboardError):
    """The other side answered a request with an error."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details or {}

    @classmethod
    def from_wire(cls, error: Any) -> RemoteError:
        """Build the matching subclass from a wire error map; tolerant of bad shapes."""
        if not isinstance(error, dict):
            return RemoteError("internal", f"error reply of unexpected shape: {error!r}")
        code = error.get("code")
        code = code if isinstance(code, str) else "internal"
        message = error.get("message")
        message = message if isinstance(message, str) else ""
        details = {k: v for k, v in error.items() if k not in ("code", "message")}
        return _CLASS_BY_CODE.get(code, RemoteError)(code, message, details)

    def to_wire(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}


class InvalidRequest(RemoteError):
    """The request itself was malformed or named an unknown method."""


class NotAllowed(RemoteError):
    """The session may not do this (role, token, namespace or contract)."""


class NotFound(RemoteError):
    """The property, plugin, subscription or handle does not exist (any more)."""


class InvalidValue(RemoteError):
    """The value breaks the property's declaration (type, range, enum)."""


class CallFailed(RemoteError):
    """A called plugin method gave no result: not connected, too slow, or it failed."""


class Conflict(RemoteError):
    """The request conflicts with existing state (a taken name, a repeated hello)."""


_CLASS_BY_CODE: Final[dict[str, type[RemoteError]]] = {
    **dict.fromkeys(
        ["malformed", "invalid_message", "too_large", "too_deep", "unknown_ext",
         "unknown_method", "invalid_params", "hello_required", "unsupported_version",
         "invalid_name", "invalid_pattern"],
        InvalidRequest,
    ),
    **dict.fromkeys(["unauthorized", "forbidden", "contract_violation"], NotAllowed),
    **dict.fromkeys(["not_found", "stale_handle"], NotFound),
    **dict.fromkeys(["type_mismatch", "out_of_range", "not_in_enum"], InvalidValue),
    **dict.fromkeys(["name_taken", "invalid_state"], Conflict),
    **dict.fromkeys(["unavailable", "timeout", "call_failed"], CallFailed),
}
