"""A synchronous facade: the asyncio Client runs on a private loop thread it owns.

Never nest event loops and never share a zmq.asyncio socket across loops: every call
is handed to that one thread and waited for with a timeout.
"""

from __future__ import annotations

import asyncio
import builtins
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any, TypeVar

from ._client import Client
from ._events import Event, PropertyInfo
from ._subscription import Subscription

T = TypeVar("T")


async def _awaited(start: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Start ``start(*args)`` inside the loop thread (it needs the running loop)."""
    return await start(*args)


class SyncSubscription:
    """Iterate with ``for event in sub`` or take one with ``sub.next(timeout)``."""

    def __init__(self, owner: SyncClient, sub: Subscription) -> None:
        self._owner = owner
        self._sub = sub

    def next(self, timeout: float | None = None) -> Event:
        return self._owner._call(self._sub.next(timeout), None)

    def __iter__(self) -> Iterator[Event]:
        while True:
            try:
                yield self._owner._call(self._sub.__anext__(), None)
            except StopAsyncIteration:
                return

    def close(self) -> None:
        self._owner._call(self._sub.close())


class SyncClient:
    """The Client's API as blocking calls; ``with SyncClient() as client: ...``."""

    def __init__(self, endpoint: str | None = None, **options: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="plugboard-sdk", daemon=True)
        self._thread.start()
        self._timeout = options.get("timeout", 5.0)
        try:
            self.client: Client = self._call(self._connect(endpoint, options))
        except BaseException:
            self._stop_loop()
            raise

    async def _connect(self, endpoint: str | None, options: dict[str, Any]) -> Client:
        return await Client(endpoint, **options).connect()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = -1.0) -> T:
        if timeout == -1.0:
            timeout = self._timeout * 2 + 1
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        try:
            self._call(self.client.close())
        finally:
            self._stop_loop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def instance(self) -> str | None:
        return self.client.instance

    def request(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return self._call(self.client.request(method, params))

    def call(self, plugin: str, method: str, *, timeout: float | None = None,
             **params: Any) -> Any:
        return self._call(self.client.call(plugin, method, timeout=timeout, **params))

    def get(self, target: str | int) -> PropertyInfo:
        return self._call(self.client.get(target))

    def list(self, pattern: str = "#") -> builtins.list[PropertyInfo]:
        return self._call(self.client.list(pattern))

    def set(self, target: str | int, value: Any) -> int:
        return self._call(_awaited(self.client.set, target, value))

    def set_many(self, items: Any) -> builtins.list[int]:
        return self._call(_awaited(self.client.set_many, items))

    def declare(self, name: str, type: str, value: Any = ..., **meta: Any) -> int:
        return self._call(self.client.declare(name, type, value, **meta))

    def delete(self, target: str | int) -> None:
        self._call(self.client.delete(target))

    def subscribe(self, pattern: str, **options: Any) -> SyncSubscription:
        return SyncSubscription(self, self._call(self.client.subscribe(pattern, **options)))

    def send(self, to: str, payload: bytes, topic: str | None = None) -> None:
        self._call(self.client.send(to, payload, topic))

    def publish(self, topic: str, payload: bytes) -> int:
        return self._call(self.client.publish(topic, payload))
