"""Sessions: one per connected peer, named by its ZeroMQ routing id."""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from plugboard.protocol.codec import Response

    from .datastore import Property
    from .subscriptions import Subscription


class Role(enum.StrEnum):
    """What a peer said it is in ``hello``; decides what it may do."""

    PLUGIN = "plugin"
    """Owns the namespace of its name: declares, deletes and writes there."""
    CLIENT = "client"
    """Reads and subscribes; writes only where a declaration allows it."""
    ADMIN = "admin"
    """Reads and writes every property outside ``system/``; needs the admin token."""
    AGENT = "agent"
    """The plugin runtime of one host: registers and supervises the plugins it manages
    and reports them below ``system/plugins/``; needs the admin token or an agent key."""


class SessionState(enum.StrEnum):
    CONNECTED = "connected"
    """hello done; a plugin is waiting for its ``init`` reply."""
    READY = "ready"
    """Serving: a plugin answered ``init``, or a client or admin said hello."""
    ENDING = "ending"
    """The broker asked the plugin to ``end`` and waits for its reply."""


@dataclass(slots=True, eq=False)
class PendingRequest:
    """A request the broker sent to a peer and the callback for its reply."""

    method: str
    deadline: float
    on_reply: Callable[[Response | None], None]
    """Called with the response, or with None when the deadline passes."""


@dataclass(slots=True, eq=False)
class QueueBudget:
    """Bytes the broker holds for one peer: frames ZeroMQ would not take yet (the
    backlog) and changes waiting in the peer's ``all`` queues. Past ``limit`` further
    changes are dropped (a ``gap``) and frames are dropped (a ``seq`` jump), counted."""

    limit: int
    used: int = 0
    dropped: int = 0
    """Changes and frames dropped for this peer."""

    def fits(self, size: int) -> bool:
        """Room for a frame: replies and notifications may use the whole budget."""
        return self.used + size <= self.limit

    def fits_change(self, size: int) -> bool:
        """Room for a queued change: it may use three quarters, so that a peer whose
        queues are full still gets the replies to its requests."""
        return self.used + size <= self.limit - self.limit // 4


@dataclass(slots=True, eq=False)
class Session:
    peer: bytes
    sid: str
    role: Role
    name: str | None
    version: int
    last_seen: float
    state: SessionState = SessionState.CONNECTED
    properties: dict[Property, None] = field(default_factory=dict)
    subscriptions: dict[int, Subscription] = field(default_factory=dict)
    listens: dict[int, str] = field(default_factory=dict)
    """Topic listen id → pattern."""
    requests: dict[int, PendingRequest] = field(default_factory=dict)
    calls: int = 0
    """This session's ``call``s waiting for their plugins' answers."""
    budget: QueueBudget = field(default_factory=lambda: QueueBudget(0))
    backlog: deque[bytes] = field(default_factory=deque)
    """Frames ZeroMQ refused (the peer's pipe is full), sent first when it takes again."""

    def describe(self) -> dict[str, Any]:
        return {"session": self.sid, "role": self.role.value, "name": self.name,
                "state": self.state.value, "properties": len(self.properties),
                "subscriptions": len(self.subscriptions), "drops": self.budget.dropped,
                "queued_bytes": self.budget.used}
