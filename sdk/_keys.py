"""CURVE keys for tcp: the broker's public key and a peer's own pair, and where they come from.

Keys are ZeroMQ's: 40-character Z85 text of a 32-byte Curve25519 key. On disk they are
ZeroMQ's certificate files (``NAME.key`` holds the public key, ``NAME.key_secret`` the
pair; ``zmq.auth.create_certificates`` writes them, ``plugboard keys new`` too).

A peer is told its keys by, in order: the arguments it is given, the environment
(``PLUGBOARD_SERVER_KEY``, and ``PLUGBOARD_PUBLIC_KEY`` with ``PLUGBOARD_SECRET_KEY``,
or ``PLUGBOARD_KEY_FILE`` naming a ``.key_secret`` file), which is how the runtime
hands a launched plugin its per-launch pair.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from plugboard.protocol.errors import ConfigError

ENV_SERVER_KEY = "PLUGBOARD_SERVER_KEY"
ENV_PUBLIC_KEY = "PLUGBOARD_PUBLIC_KEY"
ENV_SECRET_KEY = "PLUGBOARD_SECRET_KEY"
ENV_KEY_FILE = "PLUGBOARD_KEY_FILE"
Z85_KEY_LENGTH = 40


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """What a peer needs to connect over CURVE (all Z85 text)."""

    server: str
    """The broker's public key (``plugboard keys show`` prints it)."""
    public: str
    secret: str

    def apply(self, sock: zmq.Socket[bytes]) -> None:
        """Set the socket's CURVE options; before ``connect`` (options apply to later
        connects only)."""
        sock.curve_serverkey = self.server.encode()
        sock.curve_publickey = self.public.encode()
        sock.curve_secretkey = self.secret.encode()


Z85_ALPHABET = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                         ".-:+=^!/*?&<>()[]{}@%$#")
"""The characters of Z85 text (ZeroMQ RFC 32)."""


def is_z85_key(text: str) -> bool:
    """Whether ``text`` is a key as Z85 text: 40 characters of its alphabet."""
    return len(text) == Z85_KEY_LENGTH and all(c in Z85_ALPHABET for c in text)


def read_public_key(text_or_path: str) -> str:
    """A Z85 public key given as itself, or as a certificate file holding it."""
    if is_z85_key(text_or_path):
        return text_or_path
    public, _ = _load(Path(text_or_path))
    return public


def read_key_pair(path: str | Path) -> tuple[str, str]:
    """(public, secret) from a ``.key_secret`` certificate file."""
    public, secret = _load(Path(path))
    if secret is None:
        raise ConfigError(f"{path} holds no secret key (use the .key_secret file)")
    return public, secret


def _load(path: Path) -> tuple[str, str | None]:
    if not path.is_file():  # pyzmq says "Invalid certificate file" for a missing one too
        raise ConfigError(f"{path} is neither a Z85 key ({Z85_KEY_LENGTH} characters) nor "
                          "a certificate file")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read a CURVE key from {path}: {exc}") from exc
    return public.decode(), secret.decode() if secret else None


def curve_keys(server_key: str | None = None, key_file: str | Path | None = None
               ) -> CurveKeys | None:
    """Keys from the arguments, else the environment; None when no server key is known
    (then the connection is plain, which only a broker run with ``--insecure`` accepts)."""
    server = server_key or os.environ.get(ENV_SERVER_KEY)
    if not server:
        return None
    server = read_public_key(server)
    key_file = key_file or os.environ.get(ENV_KEY_FILE)
    if key_file:
        public, secret = read_key_pair(key_file)
    else:
        public, secret = os.environ.get(ENV_PUBLIC_KEY, ""), os.environ.get(ENV_SECRET_KEY, "")
        if not (is_z85_key(public) and is_z85_key(secret)):
            raise ConfigError(f"a server key is set but no key pair of this peer: give "
                              f"--key FILE, or set {ENV_KEY_FILE}, or {ENV_PUBLIC_KEY} and "
                              f"{ENV_SECRET_KEY}")
    return CurveKeys(server, public, secret)
