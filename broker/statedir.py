"""The broker's state directory: its ipc socket, admin token and lock file.

One broker per state directory: a second one would silently take over the ipc
socket file from the first, so the directory is locked with ``flock`` while a broker
runs. The admin token is written anew on every start, readable only by its owner.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import stat
from pathlib import Path

from plugboard.protocol.discovery import SOCKET_NAME, TOKEN_NAME
from plugboard.protocol.errors import ConfigError

LOCK_NAME = "broker.lock"
_IPC_PATH_MAX = 107  # sun_path is 108 bytes on Linux, one for the NUL

log = logging.getLogger(__name__)


def check_endpoint(endpoint: str) -> str:
    """Refuse endpoints libzmq would mangle, with a message that says why."""
    if endpoint.startswith("ipc://"):
        path = endpoint[len("ipc://"):]
        if len(path.encode()) > _IPC_PATH_MAX:
            raise ConfigError(f"ipc path {path!r} is {len(path.encode())} bytes, over the "
                              f"{_IPC_PATH_MAX}-byte limit of Unix sockets; use a shorter "
                              "--state-dir or a tcp:// endpoint")
    elif not endpoint.startswith(("tcp://", "inproc://")):
        raise ConfigError(f"endpoint {endpoint!r} must start with ipc:// or tcp://")
    return endpoint


def _tighten(path: Path) -> None:
    """The state directory holds the admin token, the socket and the logs: only its
    owner may enter it. One found open to group or others is closed, and logged."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        os.chmod(path, 0o700)
        log.warning("state directory %s was open to group or others (mode %04o); "
                    "tightened to 0700", path, mode)


class StateDir:
    """Holds the lock for the broker's lifetime; ``close`` releases it and the token."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).absolute()
        try:
            self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
            _tighten(self.path)
            self._lock = open(self.path / LOCK_NAME, "a+")
        except OSError as exc:
            raise ConfigError(f"cannot use state directory {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.seek(0)
            owner = self._lock.read().strip() or "unknown"
            self._lock.close()
            raise ConfigError(f"another broker (pid {owner}) is running with state directory "
                              f"{self.path}; stop it or pass another --state-dir") from None
        self.admin_token = secrets.token_urlsafe(32)
        token_path = self.path / TOKEN_NAME
        try:
            os.ftruncate(self._lock.fileno(), 0)  # unbuffered: nothing left to flush
            os.pwrite(self._lock.fileno(), str(os.getpid()).encode(), 0)
            fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.fchmod(fd, 0o600)
                os.write(fd, self.admin_token.encode() + b"\n")
            finally:
                os.close(fd)
        except OSError as exc:  # a full disk, a read-only one
            self._lock.close()
            raise ConfigError(f"cannot write to state directory {self.path}: "
                              f"{exc.strerror}") from exc

    def close(self) -> None:
        for name in (TOKEN_NAME, SOCKET_NAME):
            try:
                (self.path / name).unlink()
            except FileNotFoundError:
                pass
        self._lock.close()
