"""The supervisor: starts plugins in dependency order, watches them, restarts or stops them.

It is the heart of an agent and speaks to the broker only through the protocol, over
its :class:`~plugin_runtime.link.BrokerLink`: it registers its plugins (contract and
per-launch credential), hears when their sessions start and end, reports their
figures (state, pid, restarts, exit code, start time, uptime, resources; the broker
publishes them below ``system/plugins/<name>/``) and serves the ``plugins.*`` requests
the broker routes to it. A plugin that needs a capability no plugin of this agent
provides waits until another agent's plugin providing it is ready.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from plugboard.protocol.errors import ProtocolError
from plugboard.protocol.names import PLUGINS_PREFIX
from plugboard.protocol.values import Duration, Timestamp
from plugboard.sdk import Change, Removed
from plugboard.sdk._keys import ENV_PUBLIC_KEY, ENV_SECRET_KEY, ENV_SERVER_KEY

from .contract import (
    Contract,
    check_contracts,
    dependents,
    load_contract,
    replacement_problems,
)
from .link import BrokerLink
from .orphans import LaunchLog, reap_adopted
from .process import PluginProcess, StopStep
from .restart import RestartTracker

log = logging.getLogger(__name__)
STATS_INTERVAL = 1.0
LOG_TAIL_LINES = 50
HISTORY = 20
"""State changes kept per plugin (``system/plugins/<name>/history``)."""
SESSION_LOST_GRACE = 1.0
"""Seconds a plugin process may live on without a session before it is replaced."""


class PluginState(enum.StrEnum):
    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    BACKOFF = "backoff"
    """Exited; waiting to be restarted."""
    FAILED = "failed"
    """Left down: start failures or restarts in a row (flapping), or not restartable."""
    EXITED = "exited"
    """Exited and left down by its restart policy."""


@dataclass(eq=False)
class ManagedPlugin:
    contract: Contract
    tracker: RestartTracker
    state: PluginState = PluginState.STOPPED
    process: PluginProcess | None = None
    restarts: int = 0
    exit_code: int | None = None
    reason: str = ""
    started_at: Timestamp | None = None
    started_mono: float = 0.0
    stop_requested: bool = False
    over_limit_since: float | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    watcher: asyncio.Task[None] | None = None
    restart_timer: asyncio.TimerHandle | None = None
    waiting_for: set[str] = field(default_factory=set)
    """Plugins it needs that failed to start; it starts once all of them are ready."""
    remote_needs: set[str] = field(default_factory=set)
    """Capabilities it waits for from another agent's plugins before it starts."""
    connected: bool = False
    """Its session with the broker is up (between ``plugin.ready`` and ``plugin.ended``)."""
    reported: dict[str, Any] = field(default_factory=dict)
    """Figures last reported to the broker (only changes are sent)."""
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=HISTORY))
    """Its last state changes: time, state, reason, exit code."""
    stderr_tail: str = ""
    """The end of the stderr of its last launch that ended."""

    @property
    def name(self) -> str:
        return self.contract.name


class Supervisor:
    """Owns every plugin process of one agent."""

    def __init__(self, link: BrokerLink, contracts: list[Contract], *, state_dir: Path,
                 endpoint: str | None = None, clock: Callable[[], float] = time.monotonic,
                 paths: Sequence[Path] = ()) -> None:
        self.link = link
        self.paths = list(paths)
        """The folders the plugins came from, read again by ``plugins reread``."""
        self.available: dict[str, Contract] = {}
        """Plugins found on disk by the last reread that this agent does not run yet."""
        self.endpoint = endpoint or link.endpoint
        """Where the plugins connect: the broker's endpoint as seen from this host."""
        self.log_dir = Path(state_dir) / "logs"
        self.launches = LaunchLog(Path(state_dir))
        self.clock = clock
        self.order = [c.name for c in contracts]
        self.plugins: dict[str, ManagedPlugin] = {
            c.name: ManagedPlugin(c, RestartTracker(c.run.restart)) for c in contracts}
        self._provides: dict[str, list[str]] = {}
        self._states: dict[str, str] = {}
        """Other agents' plugins: what each provides and its state."""
        link.registrations = self.registrations
        link.on_plugin_ready(self.plugin_ready)
        link.on_plugin_ended(self.plugin_session_ended)
        link.on_reconnect(self._report_all)
        for action in ("start", "stop", "restart", "reload", "logs", "reread", "add", "remove"):
            link.serve(f"plugins.{action}", self._control(action))
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    # -- what the broker is told ----------------------------------------------------------

    def registrations(self) -> list[dict[str, Any]]:
        """Every plugin with its contract and the credential of its running launch."""
        return [self._registration(p) for p in self.plugins.values()]

    def _registration(self, plugin: ManagedPlugin) -> dict[str, Any]:
        process = plugin.process
        live = process is not None and process.poll() is None
        return {"contract": plugin.contract.spec().to_wire(),
                "token": process.token if live and process else None,
                "key": process.launch_key if live and process else None}

    def _report_all(self) -> None:
        """After a reconnect the broker knows nothing of our figures: send them all.
        Plugins that failed while it was away (they give up on a broker gone too long)
        are started again."""
        for plugin in self.plugins.values():
            plugin.reported = {}
            plugin.connected = False
            self._publish(plugin)
            if plugin.state is PluginState.FAILED and not plugin.waiting_for \
                    and not self._closing:
                plugin.tracker = RestartTracker(plugin.contract.run.restart)
                asyncio.ensure_future(self.start(plugin.name))

    def _publish(self, plugin: ManagedPlugin, stats: dict[str, Any] | None = None) -> None:
        running = (plugin.process is not None and plugin.process.pid is not None
                   and plugin.process.poll() is None)
        figures: dict[str, Any] = {
            "state": plugin.state.value,
            "pid": plugin.process.pid if running and plugin.process else 0,
            "restarts": plugin.restarts, "exit_code": plugin.exit_code,
            "reason": plugin.reason, "started_at": plugin.started_at,
            "history": list(plugin.history), "stderr_tail": plugin.stderr_tail,
            "uptime": Duration.from_seconds(self.clock() - plugin.started_mono)
            if running else Duration(0),
        }
        stats = (stats or {}) if running else {}
        figures |= {"cpu_percent": float(stats.get("cpu_percent", 0.0)),
                    "memory_rss": stats.get("memory_rss", 0),
                    "threads": stats.get("threads", 0),
                    "open_files": stats.get("open_files", 0)}
        changed = {k: v for k, v in figures.items()
                   if k not in plugin.reported or plugin.reported[k] != v}
        if changed:
            plugin.reported |= changed
            self.link.status(plugin.name, changed)

    def _set_state(self, plugin: ManagedPlugin, state: PluginState, reason: str = "") -> None:
        plugin.state = state
        if reason:
            plugin.reason = reason
        plugin.history.append({"time": Timestamp.from_unix_nano(time.time_ns()),
                               "state": state.value, "reason": reason,
                               "exit_code": plugin.exit_code})
        # A plugin left down (failed) or about to be restarted is worth an operator's
        # look; the other steps of its life are routine.
        level = logging.WARNING if state in (PluginState.FAILED, PluginState.BACKOFF) \
            else logging.INFO
        log.log(level, "plugin %s: %s%s", plugin.name, state.value,
                f" ({reason})" if reason else "")
        self._publish(plugin)

    # -- what the broker tells ------------------------------------------------------------------

    def plugin_ready(self, name: str) -> None:
        plugin = self.plugins.get(name)
        if plugin is not None:
            plugin.connected = True
            if plugin.state is PluginState.STARTING:
                plugin.ready.set()

    def plugin_session_ended(self, name: str, reason: str) -> None:
        plugin = self.plugins.get(name)
        if plugin is None:
            return
        plugin.connected = False
        if plugin.state is not PluginState.READY or self._closing:
            return
        process = plugin.process
        if process is None or process.poll() is not None:
            return
        # A closed connection usually means the process is exiting: its exit status
        # says more than "session lost", so it gets a moment to exit by itself.
        asyncio.get_running_loop().call_later(
            SESSION_LOST_GRACE, self._replace_if_hung, plugin, process, reason)

    def _replace_if_hung(self, plugin: ManagedPlugin, process: PluginProcess,
                         reason: str) -> None:
        """The session is gone but the process lives on without a new one (a blocked
        loop, a hang): replace it. Not while the broker is out of reach: then the
        plugin is waiting for it too, and reconnects by itself."""
        if (plugin.process is not process or process.poll() is not None or self._closing
                or plugin.connected or self.link.client.session is None):
            return
        log.warning("plugin %s lost its session (%s); killing it", plugin.name, reason)
        plugin.reason = f"session lost: {reason}"
        process.kill()

    def _on_remote_change(self, event: Change | Removed) -> None:
        """Track which capabilities other agents' plugins provide and are ready to serve;
        start the plugins that were waiting for them."""
        name, _, key = event.name[len(PLUGINS_PREFIX):].partition("/")
        if name in self.plugins:
            return
        value = event.value if isinstance(event, Change) else None
        if key == "state":
            self._states[name] = value if isinstance(value, str) else ""
        else:
            self._provides[name] = list(value) if isinstance(value, list) else []
        provided = {capability for n, state in self._states.items()
                    if state == PluginState.READY.value for capability in self._provides.get(n, [])}
        for plugin in self.plugins.values():
            if plugin.remote_needs and plugin.remote_needs <= provided and \
                    plugin.state is PluginState.STOPPED and not plugin.stop_requested:
                plugin.remote_needs = set()
                asyncio.ensure_future(self.start(plugin.name))

    async def _watch_other_agents(self, pattern: str) -> None:
        async for event in await self.link.client.subscribe(pattern):
            if isinstance(event, (Change, Removed)):
                self._on_remote_change(event)

    # -- life cycle ---------------------------------------------------------------------------

    async def start_all(self) -> None:
        """Report every plugin, then start them in dependency order, each ready before
        those that need it; one needing what only another agent provides waits for it."""
        self.launches.end_leftovers()
        self._tasks = [asyncio.create_task(self._stats_loop())]
        local = {c for p in self.plugins.values() for c in p.contract.provides}
        for plugin in self.plugins.values():
            plugin.remote_needs = set(plugin.contract.needs) - local
            self._publish(plugin)
        if any(p.remote_needs for p in self.plugins.values()):
            self._tasks += [asyncio.create_task(self._watch_other_agents(PLUGINS_PREFIX + key))
                            for key in ("+/state", "+/contract/provides")]
        failed: set[str] = set()
        for name in self.order:
            contract = self.plugins[name].contract
            waiting = self.plugins[name].remote_needs
            if waiting:
                self._set_state(self.plugins[name], PluginState.STOPPED, "waiting for "
                                f"another agent's plugin to provide {', '.join(sorted(waiting))}")
                continue
            blocked = [n for n in failed if name in dependents(self._contracts(), n)]
            if blocked:
                self.plugins[name].waiting_for = set(blocked)
                self._set_state(self.plugins[name], PluginState.FAILED,
                                f"not started: it depends on {', '.join(blocked)}, which "
                                "failed; it starts when they are ready")
                failed.add(name)
                continue
            if not await self.start(contract.name):
                failed.add(name)

    def _contracts(self) -> list[Contract]:
        return [p.contract for p in self.plugins.values()]

    async def start(self, name: str) -> bool:
        """Spawn and wait until ready (hello and init done) or the start timeout."""
        plugin = self.plugins[name]
        if plugin.process is not None and plugin.process.poll() is None:
            return plugin.state is PluginState.READY
        if plugin.restart_timer is not None:
            plugin.restart_timer.cancel()
            plugin.restart_timer = None
        plugin.stop_requested = False
        plugin.ready.clear()
        token = secrets.token_urlsafe(24)
        env, launch_key = self._launch_keys()
        await self.link.launch(name, token, launch_key)
        process = PluginProcess(plugin.contract, endpoint=self.endpoint, token=token,
                                log_path=self.log_dir / f"{name}.log", env=env)
        process.launch_key = launch_key
        process.on_output = lambda line: self.link.output(name, line)
        plugin.process = process
        plugin.exit_code = None
        plugin.reason = ""
        self._set_state(plugin, PluginState.STARTING)
        try:
            await process.spawn()
        except OSError as exc:
            self.link.exited(name, f"cannot start: {exc.strerror}")
            self._set_state(plugin, PluginState.FAILED, f"cannot start "
                            f"{' '.join(plugin.contract.argv())}: {exc.strerror}")
            return False
        assert process.pid is not None
        self.launches.add(name, process.pid, token)
        plugin.started_at = Timestamp.from_unix_nano(time.time_ns())
        plugin.started_mono = self.clock()
        plugin.watcher = asyncio.create_task(self._watch(plugin, process))
        exited = asyncio.create_task(process.wait())
        ready = asyncio.create_task(plugin.ready.wait())
        done, _ = await asyncio.wait([ready, exited], timeout=plugin.contract.run.start_timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        exited.cancel()
        if plugin.ready.is_set() and process.poll() is None:
            plugin.tracker.started_ok()
            self._set_state(plugin, PluginState.READY, "")
            self._release_dependents(name)
            return True
        code = process.poll()
        why = (f"exited with status {code} before it was ready" if code is not None else
               f"not ready within {plugin.contract.run.start_timeout:g} s")
        plugin.stderr_tail = process.stderr_tail()
        last = process.last_words()
        plugin.reason = f"{why}: {last}" if last else why
        log.error("plugin %s %s", name, plugin.reason)
        if code is None:
            await process.stop(lambda: None, plugin.contract.run.stop_timeout)
        return False

    def _launch_keys(self) -> tuple[dict[str, str], str | None]:
        """A fresh CURVE pair for one launch, through the environment (never argv), when
        the plugins reach the broker over tcp with CURVE."""
        server_key = self.link.server_key
        if server_key is None or not self.endpoint.startswith("tcp://"):
            return {}, None
        public, secret = (k.decode() for k in zmq.curve_keypair())
        return {ENV_SERVER_KEY: server_key, ENV_PUBLIC_KEY: public,
                ENV_SECRET_KEY: secret}, public

    def _release_dependents(self, name: str) -> None:
        """Start plugins that were held back only because ``name`` had failed."""
        for other in self.plugins.values():
            if name in other.waiting_for:
                other.waiting_for.discard(name)
                if not other.waiting_for and other.state is PluginState.FAILED:
                    asyncio.ensure_future(self.start(other.name))

    async def _watch(self, plugin: ManagedPlugin, process: PluginProcess) -> None:
        """Everything that happens when a plugin process exits, for whatever reason."""
        code = await process.wait()
        process.kill()  # the rest of its group and known descendants
        process.close()
        if process.escaped:
            log.warning("plugin %s left processes outside its process group; killed %s",
                        plugin.name, ", ".join(process.escaped))
        if plugin.process is not process:
            return
        self.launches.remove(plugin.name)
        escaped = (f"; killed {len(process.escaped)} process(es) that escaped its process "
                   "group: " + ", ".join(process.escaped)) if process.escaped else ""
        # The credential was for this launch only: the broker voids it and ends the session.
        self.link.exited(plugin.name, f"process exited with status {code}")
        plugin.connected = False
        plugin.exit_code = code
        plugin.stderr_tail = process.stderr_tail() or plugin.stderr_tail
        if self._closing:
            return
        failed = code != 0 or plugin.state is PluginState.STARTING
        if not plugin.stop_requested and not plugin.reason:
            last = process.last_words() if code != 0 else ""
            when = " before it was ready" if plugin.state is PluginState.STARTING else ""
            plugin.reason = f"exited with status {code}{when}" + (f": {last}" if last else "")
        decision = plugin.tracker.on_exit(self.clock(), failed=failed,
                                          requested=plugin.stop_requested)
        if plugin.stop_requested:
            self._set_state(plugin, PluginState.STOPPED, "stopped on request" + escaped)
        elif decision.restart:
            self._set_state(plugin, PluginState.BACKOFF,
                            _joined(plugin.reason + escaped, decision.reason))
            plugin.restart_timer = asyncio.get_running_loop().call_later(
                decision.delay, lambda: asyncio.ensure_future(self._restart_after_backoff(plugin)))
        else:
            state = PluginState.FAILED if decision.failed or failed else PluginState.EXITED
            self._set_state(plugin, state, _joined(plugin.reason + escaped, decision.reason))

    async def _restart_after_backoff(self, plugin: ManagedPlugin) -> None:
        plugin.restart_timer = None
        if plugin.state is PluginState.BACKOFF and not self._closing:
            plugin.restarts += 1
            await self.start(plugin.name)

    async def stop(self, name: str) -> StopStep:
        """A stop a person asked for: never undone by the restart policy."""
        plugin = self.plugins[name]
        plugin.stop_requested = True
        if plugin.restart_timer is not None:
            plugin.restart_timer.cancel()
            plugin.restart_timer = None
        process = plugin.process
        if process is None or process.poll() is not None:
            self._set_state(plugin, PluginState.STOPPED, "stopped on request")
            return StopStep.NONE
        self._set_state(plugin, PluginState.STOPPING, "stopping on request")

        def ask_to_end() -> bool:
            if not plugin.connected:
                return False
            self.link.end_plugin(name)
            return True

        step = await process.stop(ask_to_end, plugin.contract.run.stop_timeout)
        if plugin.watcher is not None:
            await asyncio.shield(plugin.watcher)
        log.info("plugin %s stopped at step %s", name, step.value)
        return step

    async def restart(self, name: str) -> bool:
        await self.stop(name)
        return await self.start(name)

    async def reload(self, name: str, force: bool = False) -> list[str]:
        """Replace a plugin by the version now on disk (Elektra's rule, unless forced)."""
        plugin = self.plugins[name]
        new, problems = load_contract(plugin.contract.directory)
        if new is None:
            raise ProtocolError("contract_violation", "; ".join(str(p) for p in problems))
        reasons = replacement_problems(plugin.contract, new)
        if reasons and not force:
            raise ProtocolError("contract_violation", f"{name} {new.version} cannot replace "
                                f"{plugin.contract.version} in place: " + "; ".join(reasons)
                                + " (use --force)", reasons=reasons)
        affected = dependents(self._contracts(), name) if force and reasons else []
        for other in reversed(affected):
            await self.stop(other)
        await self.stop(name)
        plugin.contract = new
        plugin.tracker = RestartTracker(new.run.restart)
        await self.link.register([self._registration(plugin)])
        await self.start(name)
        for other in affected:
            await self.start(other)
        return affected

    async def stop_all(self) -> None:
        """Stop every plugin, dependents first."""
        for name in reversed(self.order):
            await self.stop(name)
        self._closing = True
        for task in self._tasks:
            task.cancel()

    # -- stats and limits -----------------------------------------------------------------------

    async def _stats_loop(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL)
            reap_adopted({p.process.pid for p in self.plugins.values()
                          if p.process is not None and p.process.pid is not None})
            for plugin in self.plugins.values():
                process = plugin.process
                if process is None or process.poll() is not None:
                    continue
                stats = process.stats()
                self._publish(plugin, stats)
                self._check_limits(plugin, stats)

    def _check_limits(self, plugin: ManagedPlugin, stats: dict[str, Any]) -> None:
        limits = plugin.contract.limits
        over = []
        if limits.memory_mb is not None and stats.get("memory_rss", 0) > limits.memory_mb * 2**20:
            over.append(f"memory {stats['memory_rss'] / 2**20:.0f} MB over {limits.memory_mb:g} MB")
        if limits.cpu_percent is not None and stats.get("cpu_percent", 0) > limits.cpu_percent:
            over.append(f"CPU {stats['cpu_percent']:.0f}% over {limits.cpu_percent:g}%")
        now = self.clock()
        if not over:
            plugin.over_limit_since = None
            return
        if plugin.over_limit_since is None:
            plugin.over_limit_since = now
        elif now - plugin.over_limit_since >= limits.sustained_s and plugin.process:
            plugin.over_limit_since = None
            plugin.reason = "limit exceeded: " + ", ".join(over)
            log.warning("plugin %s %s; restarting it", plugin.name, plugin.reason)
            plugin.process.kill()

    # -- requests the broker routes here ---------------------------------------------------

    def _control(self, action: str) -> Callable[[dict[str, Any]], Awaitable[Any]]:
        async def handler(params: dict[str, Any]) -> Any:
            name = params.get("name")
            if action == "reread":
                return self.reread()
            if action == "add":
                return await self.add(str(name))
            if not isinstance(name, str) or name not in self.plugins:
                raise ProtocolError("not_found", f"no plugin {name!r} is configured; "
                                    f"configured: {', '.join(self.order) or 'none'}")
            if action == "start":
                ok = await self.start(name)
                return {"ready": ok, "reason": self.plugins[name].reason}
            if action == "stop":
                return {"step": (await self.stop(name)).value}
            if action == "restart":
                return {"ready": await self.restart(name)}
            if action == "logs":
                return {"text": self._log_tail(name, params.get("lines"))}
            if action == "remove":
                return await self.remove(name)
            return {"restarted_dependents": await self.reload(name, bool(params.get("force")))}

        return handler

    def reread(self) -> dict[str, Any]:
        """What changed on disk since the plugins were read (supervisorctl's reread):
        new plugins (``add`` starts them), changed contracts (``reload``), folders gone
        (``remove``), and every contract problem."""
        contracts, problems = check_contracts(self.paths, remote_needs=True)
        on_disk = {c.name: c for c in contracts}
        self.available = {n: c for n, c in on_disk.items() if n not in self.plugins}
        return {"host": self.link.name, "available": sorted(self.available),
                "changed": sorted(n for n, c in on_disk.items()
                                  if n in self.plugins and c != self.plugins[n].contract),
                "removed": sorted(n for n in self.plugins if n not in on_disk),
                "problems": [str(p) for p in problems]}

    async def add(self, name: str) -> dict[str, Any]:
        """Run a plugin a reread found: its contract checked with the others first."""
        found = self.reread()
        contract = self.available.get(name)
        if contract is None:
            bad = [p for p in found["problems"] if f"/{name}/" in p]
            raise ProtocolError("not_found", f"no new plugin {name!r} in "
                                + ", ".join(map(str, self.paths))
                                + (f": {'; '.join(bad)}" if bad else "; new: "
                                   + (", ".join(found["available"]) or "none")))
        plugin = ManagedPlugin(contract, RestartTracker(contract.run.restart))
        local = {c for p in self.plugins.values() for c in p.contract.provides}
        plugin.remote_needs = set(contract.needs) - local - set(contract.provides)
        self.plugins[name] = plugin
        self.order.append(name)
        del self.available[name]
        await self.link.register([self._registration(plugin)])
        self._publish(plugin)
        ready = await self.start(name)
        return {"ready": ready, "reason": plugin.reason}

    async def remove(self, name: str) -> dict[str, Any]:
        """Stop a plugin and stop running it: the broker forgets it too."""
        step = await self.stop(name)
        await self.link.client.request("agent.unregister", {"names": [name]})
        del self.plugins[name]
        self.order.remove(name)
        return {"step": step.value}

    def _log_tail(self, name: str, lines: Any) -> str:
        count = lines if isinstance(lines, int) and lines > 0 else LOG_TAIL_LINES
        try:
            data = (self.log_dir / f"{name}.log").read_bytes()
        except FileNotFoundError:
            return ""
        return b"".join(data.splitlines(keepends=True)[-count:]).decode(errors="replace")

    async def run(self, stopping: asyncio.Event) -> None:
        """An agent's whole life: connect (waiting for the broker), start every plugin,
        serve until ``stopping`` is set, stop them all, say goodbye. A broker that
        refuses the agent (a plugin name another agent manages) raises RemoteError."""
        if self.link.client.session is None:
            try:
                await self.link.connect(stopping)
            except asyncio.CancelledError:
                return
        starting = asyncio.create_task(self.start_all())
        try:
            await stopping.wait()
        finally:
            starting.cancel()
            await self.stop_all()
            await self.link.close()


def _joined(*parts: str) -> str:
    return "; ".join(part for part in parts if part)
