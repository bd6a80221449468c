"""Subscriptions and topic listeners as async iterators fed by the connection."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from plugboard.protocol.errors import RequestTimeout

from ._events import Change, Event, Gap, Message, Removed, Synced

if TYPE_CHECKING:
    from ._client import Client

_CLOSED = object()
T = TypeVar("T")


class _Stream(Generic[T]):
    """An async iterator over what the connection received; ends after ``_finish``.

    A deque plus one waiter future, not an asyncio.Queue: a batch of a thousand changes
    costs one wake-up, and reading what is already here does not suspend.
    """

    def __init__(self, client: Client, pattern: str) -> None:
        self.pattern = pattern
        self._client = client
        self._items: deque[Any] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.closed = False

    def _put(self, item: Any) -> None:
        self._items.append(item)
        self._wake()

    def _put_many(self, items: list[Any]) -> None:
        self._items.extend(items)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items[0]
        if item is _CLOSED:
            raise StopAsyncIteration
        return self._items.popleft()  # type: ignore[no-any-return]

    async def next(self, timeout: float | None = None) -> T:
        """The next item, waiting at most ``timeout`` seconds (RequestTimeout after)."""
        try:
            return await asyncio.wait_for(self.__anext__(), timeout)
        except TimeoutError:
            raise RequestTimeout(f"nothing on {self.pattern!r} within {timeout} s") from None

    def _finish(self) -> None:
        self.closed = True
        self._put(_CLOSED)


class Subscription(_Stream[Event]):
    """Changes to the properties matching ``pattern``; iterate with ``async for``.

    The broker bounds what it queues for a subscriber (see ``policy``); this side keeps
    what arrived until it is read.
    """

    def __init__(self, client: Client, pattern: str, options: dict[str, Any]) -> None:
        super().__init__(client, pattern)
        self.options = options
        self.sid: int | None = None
        """The broker's id for this subscription; changes after a reconnect."""
        self._names: dict[int, str] = {}
        self._seq = 0

    def _reset(self, sid: int) -> None:
        self.sid = sid
        self._names.clear()
        self._seq = 0

    def _on_changes(self, params: dict[str, Any]) -> None:
        seq = params.get("seq")
        if isinstance(seq, int):
            if seq != self._seq + 1:
                self._put(Gap(seq - self._seq - 1, "notification batches lost on the way"))
            self._seq = seq
        snapshot = bool(params.get("snapshot"))
        names = self._names
        events: list[Any] = []
        for item in params.get("items") or ():
            handle = item[0]
            if len(item) > 4:
                names[handle] = item[4]
            events.append(Change(names.get(handle, ""), handle, item[1], item[2], item[3],
                                 snapshot))
        self._put_many(events)
        for handle, name in params.get("removed") or ():
            self._names.pop(handle, None)
            self._put(Removed(name, handle))
        if params.get("gap"):
            self._put(Gap(params["gap"], "dropped at the subscription's queue limit"))
        if params.get("synced"):
            self._put(Synced())

    async def close(self) -> None:
        """Unsubscribe; iteration ends after what was already received."""
        if not self.closed:
            await self._client._unsubscribe(self)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Listener(_Stream[Message]):
    """Messages published on topics matching ``pattern``."""

    def __init__(self, client: Client, pattern: str) -> None:
        super().__init__(client, pattern)
        self.lid: int | None = None

    async def close(self) -> None:
        if not self.closed:
            await self._client._unlisten(self)
