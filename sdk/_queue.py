"""What a subscription received and its reader has not taken yet, with no waiting.

The asyncio and the blocking subscriptions both keep their events here and differ only
in how they wait for more. A batch stays one entry: a reader taking changes one at a
time walks through it with an offset instead of the queue holding a record per item.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ._events import Batch, BatchEvent, Event

CLOSED: Any = object()
"""Put last by ``finish``: nothing follows."""


class EventQueue:
    def __init__(self) -> None:
        self._items: deque[Any] = deque()
        self._offset = 0
        """How many items of the batch at the head were already taken one by one."""

    def __bool__(self) -> bool:
        return bool(self._items)

    def put(self, event: Any) -> None:
        self._items.append(event)

    def put_many(self, events: list[Any]) -> None:
        self._items.extend(events)

    @property
    def ended(self) -> bool:
        """Only the end mark is left."""
        return bool(self._items) and self._items[0] is CLOSED

    def take_one(self) -> Event:
        """The next event, a batch's changes one by one (call only when not empty and
        not ended)."""
        head = self._items[0]
        if type(head) is not Batch:
            return self._items.popleft()  # type: ignore[no-any-return]
        change = head[self._offset]
        self._offset += 1
        if self._offset == len(head.items):
            self._items.popleft()
            self._offset = 0
        return change

    def take_batch(self) -> BatchEvent:
        """The next event with a batch whole (what is left of it, if changes of it were
        taken one by one)."""
        head = self._items.popleft()
        if self._offset:
            head = Batch(head.items[self._offset:], head.names[self._offset:], head.snapshot)
            self._offset = 0
        return head  # type: ignore[no-any-return]
