"""What a subscription received and its reader has not taken yet, with no waiting.

The asyncio and the blocking subscriptions both keep their events here and differ only
in how they wait for more. A batch stays one entry: a reader taking changes one at a
time walks through it with an offset instead of the queue holding a record per item.

A queue is bounded: the client reads its socket whatever its readers do (replies and
pings share it), so a reader that falls behind would otherwise grow the process without
end. Past its limit the queue drops what it holds and what comes until its reader
catches up; the reader then gets one :class:`Gap` counting it, and the subscription is
made again (a fresh snapshot follows when it asked for current values).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ._events import Batch, BatchEvent, Event, Gap, Removed

CLOSED: Any = object()
"""Put last by ``finish``: nothing follows."""
_BEHIND: Any = object()
"""Where the dropped events were: the reader gets a Gap here."""

MAX_PENDING = 100_000
"""Changes and events a subscription keeps for its reader, by default."""


class EventQueue:
    def __init__(self, limit: int | None = MAX_PENDING) -> None:
        self._items: deque[Any] = deque()
        self._offset = 0
        """How many items of the batch at the head were already taken one by one."""
        self.limit = limit
        """The most changes and events kept (None: no bound)."""
        self.pending = 0
        """Changes and events kept, a batch counting its changes."""
        self.dropped = 0
        """Changes and removals dropped since the reader fell behind (0: it did not)."""
        self.remake = False
        """The reader took the Gap of a fall behind: its subscription is to be made
        again (the owner does, and clears this)."""

    def __bool__(self) -> bool:
        return bool(self._items)

    def put(self, event: Any) -> None:
        self.put_many([event])

    def put_many(self, events: list[Any]) -> None:
        if self.dropped:  # behind: nothing but the end mark until the reader catches up
            for event in events:
                if event is CLOSED:
                    self._items.append(event)
                else:
                    self.dropped += _changes_in(event)
            return
        self._items.extend(events)
        for event in events:
            self.pending += len(event.items) if type(event) is Batch else event is not CLOSED
        if self.limit is not None and self.pending > self.limit:
            self._fall_behind()

    def _fall_behind(self) -> None:
        closed = self._items[-1] is CLOSED
        self.dropped = sum(map(_changes_in, self._items)) - self._offset or 1
        self._items.clear()
        self._offset = 0
        self._items.append(_BEHIND)
        self.pending = 1
        if closed:
            self._items.append(CLOSED)

    def _caught_up(self) -> Gap:
        gap = Gap(self.dropped, f"the reader fell behind: more than {self.limit:,} events "
                                "waited, and these were dropped; the subscription is made "
                                "again")
        self.dropped = 0
        self.pending -= 1
        self.remake = True
        return gap

    @property
    def ended(self) -> bool:
        """Only the end mark is left."""
        return bool(self._items) and self._items[0] is CLOSED

    def take_one(self) -> Event:
        """The next event, a batch's changes one by one (call only when not empty and
        not ended)."""
        head = self._items[0]
        if type(head) is not Batch:
            self._items.popleft()
            if head is _BEHIND:
                return self._caught_up()
            self.pending -= 1
            return head  # type: ignore[no-any-return]
        change = head[self._offset]
        self._offset += 1
        self.pending -= 1
        if self._offset == len(head.items):
            self._items.popleft()
            self._offset = 0
        return change

    def take_batch(self) -> BatchEvent:
        """The next event with a batch whole (what is left of it, if changes of it were
        taken one by one)."""
        head = self._items.popleft()
        if head is _BEHIND:
            return self._caught_up()
        if type(head) is not Batch:
            self.pending -= 1
            return head  # type: ignore[no-any-return]
        if self._offset:
            head = Batch(head.items[self._offset:], head.names[self._offset:], head.snapshot)
            self._offset = 0
        self.pending -= len(head.items)
        return head


def _changes_in(event: Any) -> int:
    """What dropping ``event`` loses: its changes (a batch's, a gap's) or its removal."""
    if type(event) is Batch:
        return len(event.items)
    if type(event) is Gap:
        return event.count
    return 1 if type(event) is Removed else 0
