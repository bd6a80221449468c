"""Subscriptions and topic listeners: async iterators fed by the connection, or callbacks
it calls as frames are read."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from plugboard.protocol.errors import PlugboardError, RequestTimeout

from ._events import BatchEvent, Event, Message
from ._queue import CLOSED, MAX_PENDING, EventQueue

if TYPE_CHECKING:
    from ._client import Client

T = TypeVar("T")
log = logging.getLogger(__name__)


class _Stream(Generic[T]):
    """An async iterator over what the connection received; ends after ``_finish``.

    An :class:`EventQueue` plus one waiter future, not an asyncio.Queue: a batch of a
    thousand changes costs one wake-up, and reading what is already here does not
    suspend.
    """

    _CALLBACK: ClassVar[str]
    """The name of the argument that hands what arrives to a callback instead."""

    def __init__(self, client: Client, pattern: str,
                 callback: Callable[[Any], Any] | None = None,
                 limit: int | None = None) -> None:
        self.pattern = pattern
        self._client = client
        self._queue = EventQueue(limit)
        self._waiter: asyncio.Future[None] | None = None
        self._callback = callback
        self.closed = False

    # With a callback, what arrives goes to it here, in the read pass that received
    # it: no future resolved, no loop turn, no reader task resumed per notification
    # (11-20 µs after an idle moment; docs/BENCHMARKS.md section 9).

    def _put(self, item: Any) -> None:
        if self._callback is not None and item is not CLOSED:
            self._client._run_callback(self._callback, item)
            return
        self._queue.put(item)
        self._wake()

    def _put_many(self, items: list[Any]) -> None:
        if self._callback is not None:
            for item in items:
                self._client._run_callback(self._callback, item)
            return
        self._queue.put_many(items)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _wait(self) -> None:
        if self._callback is not None:
            raise PlugboardError(f"{self.pattern!r} hands what arrives to {self._CALLBACK}; "
                                 "there is nothing to iterate")
        while not self._queue:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        if self._queue.ended:
            raise StopAsyncIteration

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        await self._wait()
        return self._take_one()

    async def next(self, timeout: float | None = None) -> T:
        """The next item, waiting at most ``timeout`` seconds (RequestTimeout after)."""
        await self._wait_at_most(timeout)
        return self._take_one()

    def _take_one(self) -> T:
        item = self._queue.take_one()
        self._taken()
        return item  # type: ignore[return-value]

    def _taken(self) -> None:
        """After a take: a subscription whose reader caught up after falling behind is
        made again (listeners keep no bound)."""

    async def _wait_at_most(self, timeout: float | None) -> None:
        """:meth:`_wait` with a timeout. What is already here is taken without a timer,
        and a wait costs a timer, not a task (as ``asyncio.wait_for`` would)."""
        if self._queue:
            if self._queue.ended:
                raise StopAsyncIteration
            return
        try:
            async with asyncio.timeout(timeout):
                await self._wait()
        except TimeoutError:
            raise RequestTimeout(f"nothing on {self.pattern!r} within {timeout} s") from None

    def _finish(self) -> None:
        self.closed = True
        self._put(CLOSED)


class Subscription(_Stream[Event]):
    """Changes to the properties matching ``pattern``.

    ``async for event in sub`` yields a :class:`Change` per property change;
    ``async for event in sub.batches()`` yields each notification's changes as one
    :class:`Batch` (cheaper when many arrive at once). The broker bounds what it queues
    for a subscriber (see ``policy``); this side keeps what arrived until it is read, up
    to ``max_pending`` changes: past it what waits is dropped, the reader is given a
    :class:`Gap` counting it once it catches up, and the subscription is made again.

    Subscribed with ``on_batch``, the events are not kept: each is handed to the
    callback as its frame is read, and the subscription has nothing to iterate.
    """

    _CALLBACK = "on_batch"

    def __init__(self, client: Client, pattern: str, options: dict[str, Any],
                 on_batch: Callable[[BatchEvent], Any] | None = None,
                 max_pending: int = MAX_PENDING) -> None:
        super().__init__(client, pattern, on_batch, max_pending)
        self.options = options
        self.sid: int | None = None
        """The broker's id for this subscription; changes after a reconnect."""

    def _taken(self) -> None:
        if self._queue.remake:
            self._queue.remake = False
            self._client._remake(self)

    async def batches(self) -> AsyncIterator[BatchEvent]:
        """Each notification's changes as one :class:`Batch`; other events as they are."""
        while True:
            try:
                await self._wait()
            except StopAsyncIteration:
                return
            yield self._take_batch()

    async def next_batch(self, timeout: float | None = None) -> BatchEvent:
        """The next batch or event, waiting at most ``timeout`` seconds."""
        await self._wait_at_most(timeout)
        return self._take_batch()

    def _take_batch(self) -> BatchEvent:
        batch = self._queue.take_batch()
        self._taken()
        return batch

    async def close(self) -> None:
        """Unsubscribe; iteration ends after what was already received."""
        if not self.closed:
            await self._client._unsubscribe(self)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class Listener(_Stream[Message]):
    """Messages published on topics matching ``pattern``; with ``on_message``, each is
    handed to the callback as it is read and there is nothing to iterate.

    At most ``max_pending`` messages wait for the reader; past it new ones are dropped
    and counted in ``dropped`` (a warning is logged as it starts). A subscription drops
    what waits instead and starts again from a snapshot; messages have none."""

    _CALLBACK = "on_message"

    def __init__(self, client: Client, pattern: str,
                 on_message: Callable[[Message], Any] | None = None,
                 max_pending: int = MAX_PENDING) -> None:
        super().__init__(client, pattern, on_message)
        self.lid: int | None = None
        self.max_pending = max_pending
        self.dropped = 0
        """Messages dropped because the reader was more than max_pending behind."""
        self._dropping = False

    def _put(self, item: Any) -> None:
        if self._callback is None and item is not CLOSED:
            if self._queue.pending >= self.max_pending:
                if not self._dropping:
                    log.warning("the reader of %r fell %d messages behind: dropping new "
                                "ones until it catches up", self.pattern, self.max_pending)
                    self._dropping = True
                self.dropped += 1
                return
            self._dropping = False
        super()._put(item)

    async def close(self) -> None:
        if not self.closed:
            await self._client._unlisten(self)
