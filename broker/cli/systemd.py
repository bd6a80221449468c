"""Readiness for systemd (``Type=notify``): ``READY=1`` once the broker serves,
``STOPPING=1`` when it stops, sent to ``$NOTIFY_SOCKET`` when it is set (sd_notify's
protocol: one datagram on a unix socket, a leading ``@`` for the abstract namespace).
Without ``NOTIFY_SOCKET`` nothing is sent."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(state: str) -> bool:
    """Send ``state`` (e.g. ``READY=1``); True if a notify socket took it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError as exc:
        log.warning("could not notify systemd at %s: %s", address.lstrip("\0"), exc)
        return False
    return True
