"""The plugin life cycle: hello, ``init`` with config, timers and callbacks, ``end``.

There is no update loop: a plugin reacts to subscriptions, messages and timers. A
plugin started by the runtime finds its endpoint, name and one-time token in
``PLUGBOARD_ENDPOINT``, ``PLUGBOARD_NAME`` and ``PLUGBOARD_TOKEN``.

A plugin that loses the broker keeps reconnecting for ``give_up_after`` seconds
(``PLUGBOARD_GIVE_UP_AFTER``, default 30), then exits with status 75 (EX_TEMPFAIL), a
failure: its agent restarts it, and starts it again when it has the broker back. One
that finds no broker at its start exits with 75 as well; one the broker refuses (a
key, a token, a name) exits with 1. Either says why in one line, not a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from plugboard.protocol.errors import ConnectionFailed, KeyRefused, PlugboardError, RemoteError

from . import _event_loop
from ._client import Client
from ._events import Message

log = logging.getLogger(__name__)
GIVE_UP_AFTER = 30.0
EX_TEMPFAIL = 75
"""Exit status of a plugin that gave up on an absent broker: a failure to restart from."""

Hook = Callable[["Plugin"], Awaitable[None]]
InitHook = Callable[["Plugin", dict[str, Any]], Awaitable[None]]
MethodHandler = Callable[..., Awaitable[Any]]


class Plugin:
    """Register hooks with the decorators, then call :meth:`run` (or ``await run_async()``).

    ``on_init`` hooks run once per process, when the broker first sends ``init``; after
    a broker restart the SDK re-declares and re-subscribes by itself and the hooks do
    not run again.
    """

    def __init__(self, name: str | None = None, *, endpoint: str | None = None,
                 token: str | None = None, timeout: float = 5.0,
                 give_up_after: float | None = None) -> None:
        name = name or os.environ.get("PLUGBOARD_NAME")
        if not name:
            raise ValueError("a plugin needs a name (argument or PLUGBOARD_NAME)")
        self.name = name
        if give_up_after is None:
            give_up_after = float(os.environ.get("PLUGBOARD_GIVE_UP_AFTER") or GIVE_UP_AFTER)
        self.client = Client(endpoint, role="plugin", name=name,
                             token=token or os.environ.get("PLUGBOARD_TOKEN"), timeout=timeout,
                             give_up_after=give_up_after)
        self.config: dict[str, Any] = {}
        self._init_hooks: list[InitHook] = []
        self._end_hooks: list[Hook] = []
        self._timers: list[tuple[float, Hook]] = []
        self._timer_tasks: list[asyncio.Task[None]] = []
        self._initialized = asyncio.Event()
        self.init_failed = asyncio.Event()
        self._methods: dict[str, MethodHandler] = {}
        self.client.on_request("init", self._on_init)
        self.client.on_request("call", self._on_call)

    def on_init(self, hook: InitHook) -> InitHook:
        """``async def hook(plugin, config)``: declare properties, subscribe, start work."""
        self._init_hooks.append(hook)
        return hook

    def on_end(self, hook: Hook) -> Hook:
        """``async def hook(plugin)``: last words before the process exits."""
        self._end_hooks.append(hook)
        return hook

    def every(self, seconds: float) -> Callable[[Hook], Hook]:
        """Run ``async def hook(plugin)`` every ``seconds`` after init (first run at once)."""

        def register(hook: Hook) -> Hook:
            self._timers.append((seconds, hook))
            return hook

        return register

    def method(self, name: str) -> Callable[[MethodHandler], MethodHandler]:
        """Serve the exported method ``name``: ``async def handler(plugin, **params)``
        returns the result. The broker has checked the parameters against the contract
        and checks the result too. Raise ``RemoteError(code, message)`` to refuse."""

        def register(handler: MethodHandler) -> MethodHandler:
            self._methods[name] = handler
            return handler

        return register

    async def _on_call(self, params: dict[str, Any]) -> dict[str, Any]:
        name = params.get("method")
        handler = self._methods.get(name) if isinstance(name, str) else None
        if handler is None:
            raise RemoteError("unknown_method", f"{self.name} serves no method {name!r}")
        args = params.get("params")
        return {"result": await handler(self, **(args if isinstance(args, dict) else {}))}

    def on_message(self, callback: Callable[[Message], Any]) -> None:
        self.client.on_message(callback)

    async def _on_init(self, params: dict[str, Any]) -> dict[str, Any]:
        if self._initialized.is_set():
            return {}
        self.config = params.get("config") or {}
        try:
            for init_hook in self._init_hooks:
                await init_hook(self, self.config)
        except Exception:
            # A plugin that cannot initialise exits non-zero, so its supervisor sees it.
            log.exception("init failed; exiting")
            self.init_failed.set()
            raise
        for seconds, hook in self._timers:
            self._timer_tasks.append(asyncio.create_task(self._run_timer(seconds, hook)))
        self._initialized.set()
        return {}

    async def _run_timer(self, seconds: float, hook: Hook) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                await hook(self)
            except Exception:
                # A failing timer is logged and keeps its schedule; it never kills the plugin.
                self.client.callback_errors += 1
                log.exception("timer %s raised", getattr(hook, "__name__", hook))
            next_at = max(next_at + seconds, loop.time())
            await asyncio.sleep(next_at - loop.time())

    async def run_async(self) -> None:
        """Connect, serve until the broker sends ``end`` (or SIGTERM/SIGINT), then exit."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            await self.client.connect()
        except PlugboardError as exc:
            # No broker (yet) is a failure its agent starts it again from; a refusal (a
            # key, a token, a name) or an unusable endpoint is not.
            absent = isinstance(exc, ConnectionFailed) and not isinstance(exc, KeyRefused)
            status = EX_TEMPFAIL if absent else 1
            log.error("%s; exiting with status %d", exc, status)
            raise SystemExit(status) from None
        waits = [asyncio.create_task(e.wait()) for e in (
            self.client.end_requested, stop, self.client.closed, self.init_failed)]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits + self._timer_tasks:
                task.cancel()
            for hook in self._end_hooks:
                try:
                    await hook(self)
                except Exception:
                    log.exception("end hook raised")
            await self.client.close()
        if self.init_failed.is_set():
            raise SystemExit(1)
        if self.client.closed.is_set() and not self.client.end_requested.is_set() \
                and not stop.is_set():
            log.error("the broker was gone too long; exiting with status %d", EX_TEMPFAIL)
            raise SystemExit(EX_TEMPFAIL)

    def run(self, event_loop: str = "asyncio") -> None:
        """Blocking entry point for ``if __name__ == "__main__": plugin.run()``: on
        asyncio's own loop, or ``"uvloop"`` (``"auto"``: uvloop where installed). The
        broker gains from uvloop; a plugin's SDK has not shown a gain in make bench
        (docs/BENCHMARKS.md, section 9: "uvloop instead of asyncio's own loop, in the SDK
        at both ends")."""
        if not logging.getLogger().handlers:
            logging.basicConfig(level=os.environ.get("PLUGBOARD_LOG_LEVEL", "INFO"),
                                format=f"{self.name}: %(levelname)s %(message)s")
        _event_loop.run(self.run_async(), _event_loop.chosen(event_loop))
