"""CurveZMQ on tcp: the broker's keys, who may connect as what, and the ZAP answers.

On ``tcp://`` every peer proves a key with CURVE. The ZAP handler (ZeroMQ's
authentication protocol, RFC 27) admits a key only if :class:`KeyRing` grants it a
role, and names the key as the connection's ``User-Id``; the core then takes the role
and the names a peer may use from that grant, never from what ``hello`` claims. It
fails closed: the tcp socket requires a handler (``ZAP_ENFORCE_DOMAIN``), so with
none running no connection is admitted (pyzmq's Authenticator is not used: it runs a
thread of its own, and here the handler is one more socket in the broker's loop).

Files in ``<state dir>/curve/`` (0700): ``broker.key`` and ``broker.key_secret`` (the
broker's long-term pair, made on first start), ``admin.key_secret`` (a pair the local
CLI uses over tcp, always granted ``admin``), and ``authorized_keys.json`` (0600), kept
by ``plugboard keys``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth
from zmq.utils import z85

from plugboard.protocol.errors import ConfigError
from plugboard.sdk._keys import is_z85_key, read_key_pair

log = logging.getLogger(__name__)

CURVE_DIR = "curve"
AUTHORIZED_NAME = "authorized_keys.json"
ROLES = ("client", "admin", "plugin", "agent")
"""Roles a key may be granted; a plugin key is held to the names it is given. An admin
key may also act as an agent (the local agent of ``plugboard broker`` uses it)."""
ZAP_DOMAIN = "plugboard"


@dataclass(frozen=True, slots=True)
class Grant:
    """What one key may do."""

    key: str
    role: str
    names: tuple[str, ...] = ()
    """For ``plugin``: the plugin names it may say hello as (empty: none)."""
    comment: str = ""

    def to_json(self) -> dict[str, object]:
        return {"key": self.key, "role": self.role, "names": list(self.names),
                "comment": self.comment}


class KeyRing:
    """The keys allowed in: the authorized-keys file, the local admin key and the
    per-launch keys of plugins the runtime started (in memory, gone with the process)."""

    def __init__(self, curve_dir: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(curve_dir) / AUTHORIZED_NAME
        self._file: dict[str, Grant] = {}
        self._launched: dict[str, Grant] = {}
        self._local: dict[str, Grant] = {}
        self._clock = clock
        self._refusals: dict[str, tuple[float, int]] = {}
        """Refused key -> when its refusal was last logged, and refusals since."""
        self.reload()

    def reload(self) -> None:
        """Read the authorized-keys file again (after ``plugboard keys`` changed it)."""
        self._file = {g.key: g for g in read_authorized(self.path)}

    def grant_local_admin(self, public: str) -> None:
        self._local[public] = Grant(public, "admin", comment="local admin key")

    def lookup(self, key: str) -> Grant | None:
        return self._launched.get(key) or self._local.get(key) or self._file.get(key)

    def allow_launch(self, public: str, name: str) -> None:
        """A per-launch plugin key: ``name`` only, until :meth:`revoke_launch`."""
        self._launched[public] = Grant(public, "plugin", (name,), "per-launch key")

    def revoke_launch(self, public: str) -> None:
        self._launched.pop(public, None)

    def zap_reply(self, request: list[bytes]) -> list[bytes]:
        """The ZAP reply frames for one request (RFC 27); 200 only for a granted key."""
        if len(request) < 6:
            return [b"1.0", request[1] if len(request) > 1 else b"", b"400",
                    b"malformed ZAP request", b"", b""]
        version, request_id, domain, _address, _identity, mechanism = request[:6]
        credentials = request[6:]
        if version != b"1.0":
            return [b"1.0", request_id, b"400", b"unsupported ZAP version", b"", b""]
        if domain != ZAP_DOMAIN.encode() or mechanism != b"CURVE" or len(credentials) != 1:
            return [b"1.0", request_id, b"400", b"CURVE required", b"", b""]
        key = z85.encode(credentials[0]).decode()
        grant = self.lookup(key)
        if grant is None:
            self._log_refusal(key, _address.decode(errors="replace"))
            return [b"1.0", request_id, b"400", b"key not authorized", b"", b""]
        return [b"1.0", request_id, b"200", b"OK", key.encode(), b""]


    def _log_refusal(self, key: str, address: str) -> None:
        """Once per key, then at most once per REFUSAL_LOG_S with how many came since:
        a peer that retries a refused key every 100 ms must not flood the log."""
        now = self._clock()
        logged, since = self._refusals.get(key, (-math.inf, 0))
        if now - logged < REFUSAL_LOG_S:
            self._refusals[key] = (logged, since + 1)
            return
        if len(self._refusals) >= REFUSALS_KEPT:  # many keys: a scan, not one peer
            self._refusals.clear()
        self._refusals[key] = (now, 0)
        log.warning("refused a CURVE connection from %s: key %s is not authorized%s",
                    address, key, f" ({since} more refusals of it since)" if since else "")


REFUSAL_LOG_S = 60.0
"""A refused key is logged at most this often."""
REFUSALS_KEPT = 1000
"""Refused keys remembered for that; past it the memory starts over."""


def read_authorized(path: Path) -> list[Grant]:
    """The grants of an authorized-keys file; a missing file grants nothing."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    grants = []
    for index, entry in enumerate(data.get("keys", []) if isinstance(data, dict) else []):
        try:
            key, role = entry["key"], entry["role"]
            if not is_z85_key(key) or role not in ROLES:
                raise ValueError
            grants.append(Grant(key, role, tuple(entry.get("names", [])),
                                str(entry.get("comment", ""))))
        except (KeyError, TypeError, ValueError):
            raise ConfigError(f"{path}: entry {index} is not {{key, role, names}} with a "
                              f"40-character Z85 key and a role of {', '.join(ROLES)}"
                              ) from None
    return grants


def write_authorized(path: Path, grants: list[Grant]) -> None:
    """Replace the file at once (a rename): a full disk leaves the old one as it was."""
    temporary = path.with_suffix(".tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            json.dump({"keys": [g.to_json() for g in grants]}, file, indent=1)
        temporary.replace(path)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise ConfigError(f"cannot write {path}: {exc.strerror}; it is unchanged") from exc


def curve_dir(state_dir: Path) -> Path:
    Path(state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    path = Path(state_dir) / CURVE_DIR
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def ensure_key_pair(directory: Path, name: str) -> tuple[str, str]:
    """(public, secret) of ``NAME.key_secret`` in ``directory``, made if missing (0600)."""
    secret_file = directory / f"{name}.key_secret"
    if not secret_file.exists():
        public_file, secret_file = (Path(p) for p in zmq.auth.create_certificates(
            directory, name))
        os.chmod(secret_file, 0o600)
        log.info("made CURVE key pair %s", secret_file)
    return read_key_pair(secret_file)
