"""The agent's connection to the broker: an SDK client in the ``agent`` role.

Everything the supervisor tells the broker goes through here, as protocol requests on
one connection (so in order): registrations with contracts and credentials (in
``hello``, so a reconnect re-registers at once), launches and exits, figures, the
``end`` a stop begins with, and the plugins' output on ``system/logs/<name>``. What the
broker tells the agent comes back as notifications (``plugin.ready``,
``plugin.ended``) and routed ``plugins.*`` requests.

Reports are sent without waiting for their answers. While the broker is unreachable
they fail and are dropped; after a reconnect the supervisor reports everything again.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from plugboard.protocol.errors import ConnectionFailed, PlugboardError
from plugboard.protocol.names import LOG_TOPIC
from plugboard.sdk import Client
from plugboard.sdk._keys import CurveKeys

log = logging.getLogger(__name__)



def default_agent_name() -> str:
    """The host's name, cut to what an agent name may be."""
    name = "".join(c if c.isalnum() or c in "_.-" else "-" for c in socket.gethostname())
    return name.lstrip("_.-")[:64] or "agent"


class BrokerLink:
    """One agent's session with the broker."""

    def __init__(self, endpoint: str, *, name: str,
                 token: str | Callable[[], str | None] | None = None,
                 curve: CurveKeys | None = None, timeout: float = 5.0) -> None:
        self.name = name
        self._token = token
        self.client = Client(endpoint, role="agent", name=name, timeout=timeout,
                             curve=curve, give_up_after=None)
        self.client.extra_hello = self._hello_params
        self.registrations: Callable[[], list[dict[str, Any]]] = list
        """The plugins to register, with their current credentials (set by the supervisor)."""

    @property
    def endpoint(self) -> str:
        return self.client.endpoint

    @property
    def server_key(self) -> str | None:
        """The broker's public CURVE key, when the link speaks CURVE."""
        return self.client.curve.server if self.client.curve is not None else None

    def _hello_params(self) -> Mapping[str, Any]:
        token = self._token() if callable(self._token) else self._token
        params: dict[str, Any] = {"plugins": self.registrations()}
        if token is not None:
            params["token"] = token
        return params

    async def connect(self, stopping: asyncio.Event | None = None) -> None:
        """Say hello, retrying until a broker answers; CancelledError once ``stopping``
        is set, at once, even in the middle of an attempt (a stop must not wait out a
        hello's timeout). A refusal (a plugin another agent manages, a wrong token) or
        an endpoint ZeroMQ cannot use is raised at once; a CURVE key refused in the
        handshake is retried, as it may be allowed later."""
        if stopping is None:
            return await self._connect_retrying()
        attempts = asyncio.ensure_future(self._connect_retrying())
        stop = asyncio.ensure_future(stopping.wait())
        try:
            await asyncio.wait((attempts, stop), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            if not attempts.done():  # the failed attempt releases its socket and context
                attempts.cancel()
                await asyncio.gather(attempts, return_exceptions=True)
        if attempts.cancelled():
            raise asyncio.CancelledError
        return attempts.result()

    async def _connect_retrying(self) -> None:
        delay = 0.1
        while True:
            try:
                await self.client.connect()
                return
            except ConnectionFailed as exc:  # no broker yet, or the key not allowed yet
                log.info("no broker yet at %s (%s); retrying", self.endpoint, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    def on_reconnect(self, callback: Callable[[], Any]) -> None:
        self.client.on_reconnect(lambda _event: callback())

    def on_plugin_ready(self, callback: Callable[[str], None]) -> None:
        self.client.on_notification("plugin.ready", lambda p: callback(str(p.get("name"))))

    def on_plugin_ended(self, callback: Callable[[str, str], None]) -> None:
        self.client.on_notification("plugin.ended", lambda p: callback(
            str(p.get("name")), str(p.get("reason", ""))))

    def serve(self, method: str, handler: Callable[[dict[str, Any]], Awaitable[Any]]) -> None:
        """Answer a ``plugins.*`` request the broker routes to this agent."""
        self.client.on_request(method, handler)

    async def register(self, entries: list[dict[str, Any]]) -> None:
        await self.client.request("agent.register", {"plugins": entries})

    async def launch(self, name: str, token: str, key: str | None) -> None:
        """Tell the broker the credential of a launch before its process starts."""
        try:
            await self.client.request("agent.launch", {"name": name, "token": token,
                                                       "key": key})
        except PlugboardError as exc:  # it goes with the next hello's registrations
            log.warning("could not tell the broker about the launch of %s: %s", name, exc)

    def exited(self, name: str, reason: str) -> None:
        self._report("agent.exited", {"name": name, "reason": reason})

    def end_plugin(self, name: str) -> None:
        self._report("agent.end_plugin", {"name": name})

    def status(self, name: str, figures: dict[str, Any]) -> None:
        self._report("agent.status", {"name": name, "figures": figures})

    def output(self, name: str, data: bytes) -> None:
        self._report("publish", {"topic": LOG_TOPIC + name, "payload": data})

    def _report(self, method: str, params: dict[str, Any]) -> None:
        if not self.client.connected:
            return  # the supervisor reports everything again after the reconnect
        future = self.client.request_soon(method, params)
        future.add_done_callback(_quiet)

    async def close(self) -> None:
        await self.client.close()


def _quiet(future: asyncio.Future[Any]) -> None:
    """A report's answer: refusals are logged, a lost connection is expected."""
    if future.cancelled():
        return
    exc = future.exception()
    if exc is not None and getattr(exc, "code", None) is not None:
        log.warning("the broker refused a report: %s", exc)
