"""What both clients show of their session: read from their protocol core."""

from __future__ import annotations

from plugboard.protocol.connection import ClientConnection


class SessionState:
    """The role, name and token a client says hello with, and what hello told it."""

    _conn: ClientConnection

    @property
    def role(self) -> str:
        return self._conn.role

    @property
    def name(self) -> str | None:
        return self._conn.name

    @property
    def token(self) -> str | None:
        return self._conn.token

    @token.setter
    def token(self, token: str | None) -> None:
        """Sent with the next hello (a credential that changed)."""
        self._conn.token = token

    @property
    def instance(self) -> str | None:
        """The broker's instance id (a new one after a broker restart)."""
        return self._conn.instance

    @property
    def session(self) -> str | None:
        """The session id while the broker knows this client."""
        return self._conn.session

    @property
    def heartbeat(self) -> float:
        """Seconds between pings (from hello)."""
        return self._conn.heartbeat

    @property
    def max_frame(self) -> int:
        """The largest frame the broker accepts (from hello); larger requests fail here."""
        return self._conn.max_frame
