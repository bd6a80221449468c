"""Where a broker is found on this host: its state directory, ipc endpoint and admin token.

The broker, the SDK and the CLI all need these defaults; they live here, below every
package, so none of them has to import the broker for them.
"""

from __future__ import annotations

import os
from pathlib import Path

SOCKET_NAME = "broker.sock"
TOKEN_NAME = "admin.token"


def default_state_dir() -> Path:
    """``$PLUGBOARD_STATE_DIR``, else ``$XDG_STATE_HOME/plugboard``, else
    ``~/.local/state/plugboard``."""
    explicit = os.environ.get("PLUGBOARD_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "plugboard"


def default_endpoint(state_dir: Path) -> str:
    """The ipc endpoint in ``state_dir`` (``$PLUGBOARD_ENDPOINT`` wins where the CLI reads it)."""
    return f"ipc://{Path(state_dir).absolute() / SOCKET_NAME}"


def read_admin_token(state_dir: Path) -> str | None:
    """The running broker's admin token, or None if it cannot be read here."""
    try:
        return (Path(state_dir) / TOKEN_NAME).read_text().strip() or None
    except OSError:
        return None
