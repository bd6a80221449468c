"""web: a live dashboard in the browser and ``/metrics`` for Prometheus.

aiohttp serves both, in the plugin's own event loop beside the SDK (one library for
HTTP and WebSocket on asyncio, no second server or thread). One subscription to
``#`` feeds everything: the page gets the property tree and the plugins table pushed
over a WebSocket (it never polls), and Prometheus reads the same figures.

Rights: writes from the page are made by this plugin's session, so the broker's rules
for plugin ``web`` apply (``writable_by``), never an admin's. Log tails need the admin
role; with ``admin_logs`` the plugin reads the admin token where the broker keeps it
(an ipc endpoint on this host) and uses it only to read logs.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web
from live_state import Shown, shown
from prometheus_export import Exporter

from plugboard.protocol.discovery import read_admin_token
from plugboard.protocol.json_values import from_text, to_json
from plugboard.protocol.names import LOG_TOPIC
from plugboard.sdk import Change, Client, PlugboardError, Plugin, Removed

log = logging.getLogger("web")
PAGE = Path(__file__).with_name("page.html")
LOOPBACK = ("127.0.0.1", "::1", "localhost")
FLUSH_S = 0.1
"""Changes reach the pages at most this often, in one message."""
PAGE_SEND_S = 2.0
"""How long a page may take to read one message (its connection's buffers full) before
it is dropped: one page that stopped reading must not hold the others' updates."""


@dataclass(slots=True)
class Page:
    """An open page: its connection, and the plugin whose log it follows."""

    request: web.BaseRequest
    logs: str | None = None


class Dashboard:
    def __init__(self, plugin: Plugin, config: dict[str, Any]) -> None:
        self.plugin = plugin
        self.client = plugin.client
        self.props: dict[str, Shown] = {}
        self.rows: list[dict[str, Any]] = []
        self.pages: dict[web.WebSocketResponse, Page] = {}
        self.exporter = Exporter(self.props, list(config.get("metrics", [])))
        self.scrapes = 0
        # A deployment may override the contract's config (a container must listen on
        # every interface): PLUGBOARD_WEB_HOST, PLUGBOARD_WEB_PORT, PLUGBOARD_WEB_TOKEN.
        self.host = os.environ.get("PLUGBOARD_WEB_HOST") or str(config.get("host", "127.0.0.1"))
        self.port = int(os.environ.get("PLUGBOARD_WEB_PORT") or config.get("port", 8780))
        token = os.environ.get("PLUGBOARD_WEB_TOKEN") or str(config.get("token") or "")
        self.token = token or (None if self.host in LOOPBACK else secrets.token_urlsafe(16))
        self.admin = self._admin_client() if config.get("admin_logs", True) else None
        self._changed: set[str] = set()
        self._removed: set[str] = set()
        self._plugins_dirty = False
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- serving -----------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application(middlewares=[self._check_token])
        app.router.add_get("/", self._page)
        app.router.add_get("/ws", self._socket)
        app.router.add_get("/metrics", self._metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.host, self.port).start()
        for info in await self.client.list("#"):
            self.props[info.name] = shown(info)
        self.rows = (await self.client.request("plugins"))["plugins"]
        self._tasks = [asyncio.create_task(self._follow()), asyncio.create_task(self._flush())]
        if self.admin is not None:
            self._tasks.append(asyncio.create_task(self._follow_logs()))
        where = "localhost" if self.host in LOOPBACK else self.host
        return f"http://{where}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    @web.middleware
    async def _check_token(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.token is not None and not hmac.compare_digest(
                request.query.get("token", ""), self.token):
            return web.Response(status=401, text="missing or wrong token: open the address "
                                                 "in the property web/url\n")
        return await handler(request)  # type: ignore[no-any-return]

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE.read_text(), content_type="text/html")

    async def _metrics(self, request: web.Request) -> web.Response:
        try:
            sessions = (await self.client.request("sessions"))["sessions"]
        except PlugboardError:
            sessions = []
        self.scrapes += 1
        self._figure("web/metrics_scrapes", self.scrapes)
        return web.Response(body=self.exporter.render(sessions),
                            content_type="text/plain", charset="utf-8")

    async def _socket(self, request: web.Request) -> web.WebSocketResponse:
        page = web.WebSocketResponse(heartbeat=20)
        await page.prepare(request)
        self.pages[page] = Page(request)
        self._figure("web/pages", len(self.pages))
        await self._send(page, {"t": "props", "reset": True,
                                "items": [s.to_json() for s in self.props.values()]})
        await self._send(page, {"t": "plugins", "rows": _json_rows(self.rows)})
        try:
            async for message in page:
                if message.type == WSMsgType.TEXT:
                    await self._from_page(page, message.data)
        finally:
            del self.pages[page]
            self._figure("web/pages", len(self.pages))
        return page

    def _figure(self, name: str, value: int) -> None:
        """Write one of the plugin's own figures without waiting: a page or a scrape is
        served as well while the broker is away."""
        try:
            self.client.set_nowait(name, value)
        except PlugboardError as exc:
            log.debug("%s not written: %s", name, exc)

    async def _from_page(self, page: web.WebSocketResponse, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        if not isinstance(message, dict):
            await self._send(page, {"t": "error", "error": "a message is a JSON object "
                                    f"with t = set or logs, got {text[:80]!r}"})
        elif message.get("t") == "set":
            await self._send(page, {"t": "set", "id": message.get("id"),
                                    **await self._set(str(message.get("name")),
                                                      str(message.get("value", "")))})
        elif message.get("t") == "logs":
            name = str(message.get("name"))
            self.pages[page].logs = name
            await self._send(page, {"t": "log", "name": name, "reset": True,
                                    **await self._log_tail(name)})

    async def _set(self, name: str, text: str) -> dict[str, Any]:
        """A write from the page, as plugin ``web``; the broker's refusal is the answer."""
        prop = self.props.get(name)
        if prop is None:
            return {"ok": False, "error": f"no property {name!r}"}
        try:
            value = from_text(prop.type, text)
        except (ValueError, PlugboardError) as exc:
            return {"ok": False, "error": f"not a {prop.type}: {exc}"}
        try:
            await self.client.set(name, value)
        except PlugboardError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True, "error": ""}

    # -- what the broker pushes --------------------------------------------------------------

    async def _follow(self) -> None:
        async for event in await self.client.subscribe("#", min_interval=FLUSH_S):
            if isinstance(event, Change):
                prop = self.props.get(event.name)
                if prop is None:
                    await self._learn(event.name)
                else:
                    prop.value, prop.changed_ns = event.value, event.timestamp.to_unix_nano()
                    self._changed.add(event.name)
            elif isinstance(event, Removed):
                self.props.pop(event.name, None)
                self._removed.add(event.name)
                self._changed.discard(event.name)
            else:
                continue
            if event.name.startswith("system/plugins/"):
                self._plugins_dirty = True
            self._wake.set()

    async def _learn(self, name: str) -> None:
        try:
            self.props[name] = shown(await self.client.get(name))
        except PlugboardError:
            return  # gone again already
        self._changed.add(name)
        self._removed.discard(name)

    async def _flush(self) -> None:
        """One message per FLUSH_S with every change since the last, to every page."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            changed, self._changed = self._changed, set()
            removed, self._removed = self._removed, set()
            messages: list[dict[str, Any]] = []
            if changed or removed:
                messages.append({"t": "props", "removed": sorted(removed), "items": [
                    self.props[n].to_json() for n in sorted(changed) if n in self.props]})
            if self._plugins_dirty:
                self._plugins_dirty = False
                try:
                    self.rows = (await self.client.request("plugins"))["plugins"]
                    messages.append({"t": "plugins", "rows": _json_rows(self.rows)})
                except PlugboardError:
                    pass
            for page in list(self.pages):
                for message in messages:
                    await self._send(page, message)
            await asyncio.sleep(FLUSH_S)

    # -- log tails (admin) -------------------------------------------------------------------

    def _admin_client(self) -> Client | None:
        endpoint = self.client.endpoint
        if not endpoint.startswith("ipc://"):
            return None
        state_dir = Path(endpoint[len("ipc://"):]).parent
        if read_admin_token(state_dir) is None:
            return None
        admin = Client(endpoint, role="admin", timeout=5)
        admin.extra_hello = lambda: {"token": read_admin_token(state_dir)}  # new each start
        return admin

    async def _log_tail(self, name: str) -> dict[str, Any]:
        if self.admin is None:
            return {"text": "", "error": "log tails need the admin token (admin_logs = true, "
                                         "and the broker's ipc endpoint on this host)"}
        try:
            return {"text": (await self.admin.request("plugins.logs", {
                "name": name, "lines": 200}))["text"]}
        except PlugboardError as exc:
            return {"text": "", "error": str(exc)}

    async def _follow_logs(self) -> None:
        assert self.admin is not None
        try:
            await self.admin.connect()
        except PlugboardError as exc:
            log.warning("no admin session for log tails: %s", exc)
            self.admin = None
            return
        async for message in await self.admin.listen(LOG_TOPIC + "+"):
            name = message.topic[len(LOG_TOPIC):] if message.topic else ""
            text = message.payload.decode(errors="replace")
            for page, shown_page in list(self.pages.items()):
                if shown_page.logs == name:
                    await self._send(page, {"t": "log", "name": name, "text": text})

    async def _send(self, page: web.WebSocketResponse, message: dict[str, Any]) -> None:
        """One message to one page, or the page dropped if it cannot take it in time."""
        if page.closed:
            return
        try:
            await asyncio.wait_for(page.send_json(message), PAGE_SEND_S)
        except ConnectionError:
            pass
        except TimeoutError:
            shown_page = self.pages.get(page)
            if shown_page is None:
                return
            log.warning("a page at %s read nothing for %g s; dropped",
                        shown_page.request.remote, PAGE_SEND_S)
            transport = shown_page.request.transport
            if transport is not None:
                transport.abort()  # its handler ends, and the page is forgotten


def _json_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: to_json(v) for k, v in row.items()} for row in rows]


plugin = Plugin()


@plugin.on_init
async def init(p: Plugin, config: dict[str, Any]) -> None:
    await p.client.declare("web/url", "str", "")
    await p.client.declare("web/pages", "int", 0)
    await p.client.declare("web/metrics_scrapes", "int", 0)
    dashboard = Dashboard(p, config)
    url = await dashboard.start()
    await p.client.set("web/url", url)
    p.dashboard = dashboard  # type: ignore[attr-defined]
    log.info("dashboard at %s", url)


if __name__ == "__main__":
    plugin.run()
