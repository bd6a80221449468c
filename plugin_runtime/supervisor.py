"""The supervisor: starts plugins in dependency order, watches them, restarts or stops them.

It runs in the broker's event loop and speaks to plugins only through the protocol
(the core sends ``init`` and ``end``); it learns about their sessions from the core's
runtime hooks. Everything about a plugin is published below
``system/plugins/<name>/``: its contract, state, pid, restarts, exit code, start time,
uptime and resource figures.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from broker.core import DEFERRED, BrokerCore
from broker.sessions import Session
from protocol.errors import ProtocolError
from protocol.values import Duration, Timestamp, ValueType
from sdk._keys import ENV_PUBLIC_KEY, ENV_SECRET_KEY, ENV_SERVER_KEY

from .contract import Contract, dependents, load_contract, replacement_problems
from .orphans import LaunchLog, reap_adopted
from .process import PluginProcess, StopStep
from .restart import RestartTracker

log = logging.getLogger(__name__)
PREFIX = "system/plugins/"
STATS_INTERVAL = 1.0
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

    @property
    def name(self) -> str:
        return self.contract.name


class Supervisor:
    """Owns every plugin process of one broker."""

    def __init__(self, core: BrokerCore, contracts: list[Contract], *, endpoint: str,
                 state_dir: Path, poke: Callable[[], None] = lambda: None,
                 clock: Callable[[], float] = time.monotonic,
                 server_key: str | None = None) -> None:
        self.core = core
        self.endpoint = endpoint
        self.server_key = server_key
        """The broker's public key when ``endpoint`` is tcp with CURVE: each launch then
        gets a key pair of its own, allowed for its name only while it runs."""
        self.log_dir = Path(state_dir) / "logs"
        self.launches = LaunchLog(Path(state_dir))
        self.poke = poke
        self.clock = clock
        self.order = [c.name for c in contracts]
        self.plugins: dict[str, ManagedPlugin] = {}
        for contract in contracts:
            self.plugins[contract.name] = ManagedPlugin(contract, RestartTracker(
                contract.run.restart))
            self._adopt_contract(contract)
        core.runtime = self
        core.register_method("plugins", self._m_list)
        for action in ("start", "stop", "restart", "reload"):
            core.register_method(f"plugins.{action}", self._control(action), admin_only=True)
        self._stats_task: asyncio.Task[None] | None = None
        self._closing = False

    # -- publishing -----------------------------------------------------------------------

    def _adopt_contract(self, contract: Contract) -> None:
        self.core.contracts[contract.name] = contract
        base = f"{PREFIX}{contract.name}/contract/"
        for key, value in contract.as_properties().items():
            vtype = ValueType.LIST if isinstance(value, list) else ValueType.STR
            self.core.set_system(base + key, vtype, value)
        self._publish(self.plugins[contract.name])

    def _publish(self, plugin: ManagedPlugin, stats: dict[str, Any] | None = None) -> None:
        base = f"{PREFIX}{plugin.name}/"
        running = (plugin.process is not None and plugin.process.pid is not None
                   and plugin.process.poll() is None)
        figures: list[tuple[str, ValueType, Any]] = [
            ("state", ValueType.STR, plugin.state.value),
            ("pid", ValueType.INT, plugin.process.pid if running and plugin.process else 0),
            ("restarts", ValueType.INT, plugin.restarts),
            ("exit_code", ValueType.ANY, plugin.exit_code),
            ("reason", ValueType.STR, plugin.reason),
            ("started_at", ValueType.ANY, plugin.started_at),
            ("uptime", ValueType.DURATION, Duration.from_seconds(
                self.clock() - plugin.started_mono) if running else Duration(0)),
        ]
        stats = (stats or {}) if running else {}
        figures += [("cpu_percent", ValueType.FLOAT, float(stats.get("cpu_percent", 0.0))),
                    ("memory_rss", ValueType.INT, stats.get("memory_rss", 0)),
                    ("threads", ValueType.INT, stats.get("threads", 0)),
                    ("open_files", ValueType.INT, stats.get("open_files", 0))]
        for key, vtype, value in figures:
            self.core.set_system(base + key, vtype, value)
        self.poke()

    def _set_state(self, plugin: ManagedPlugin, state: PluginState, reason: str = "") -> None:
        plugin.state = state
        if reason:
            plugin.reason = reason
        log.info("plugin %s: %s%s", plugin.name, state.value, f" ({reason})" if reason else "")
        self._publish(plugin)

    # -- the core's hooks ---------------------------------------------------------------------

    def plugin_ready(self, session: Session) -> None:
        plugin = self.plugins.get(session.name or "")
        if plugin is not None and plugin.state is PluginState.STARTING:
            plugin.ready.set()

    def plugin_session_ended(self, session: Session, reason: str) -> None:
        plugin = self.plugins.get(session.name or "")
        if plugin is None or plugin.state is not PluginState.READY or self._closing:
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
        loop, a hang): replace it."""
        if (plugin.process is not process or process.poll() is not None or self._closing
                or plugin.name in self.core.plugins):
            return
        log.warning("plugin %s lost its session (%s); killing it", plugin.name, reason)
        plugin.reason = f"session lost: {reason}"
        process.kill()

    # -- life cycle ---------------------------------------------------------------------------

    async def start_all(self) -> None:
        """Start in dependency order, each ready before those that need it."""
        self.launches.end_leftovers()
        self._stats_task = asyncio.create_task(self._stats_loop())
        failed: set[str] = set()
        for name in self.order:
            contract = self.plugins[name].contract
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
        self.core.plugin_tokens[name] = token
        env, launch_key = self._launch_keys(name)
        process = PluginProcess(plugin.contract, endpoint=self.endpoint, token=token,
                                log_path=self.log_dir / f"{name}.log", env=env)
        process.launch_key = launch_key
        plugin.process = process
        plugin.exit_code = None
        plugin.reason = ""
        self._set_state(plugin, PluginState.STARTING)
        try:
            await process.spawn()
        except OSError as exc:
            self.core.plugin_tokens.pop(name, None)
            self._revoke_launch_key(process)
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
        tail = process.stderr_tail()
        plugin.reason = f"{why}; stderr: {tail[-800:]}" if tail else why
        log.error("plugin %s %s", name, plugin.reason)
        if code is None:
            await process.stop(lambda: None, plugin.contract.run.stop_timeout)
        return False

    def _launch_keys(self, name: str) -> tuple[dict[str, str], str | None]:
        """A fresh CURVE pair for one launch, through the environment (never argv)."""
        keys = self.core.keys
        if self.server_key is None or keys is None or not self.endpoint.startswith("tcp://"):
            return {}, None
        public, secret = (k.decode() for k in zmq.curve_keypair())
        keys.allow_launch(public, name)
        return {ENV_SERVER_KEY: self.server_key, ENV_PUBLIC_KEY: public,
                ENV_SECRET_KEY: secret}, public

    def _revoke_launch_key(self, process: PluginProcess) -> None:
        if process.launch_key is not None and self.core.keys is not None:
            self.core.keys.revoke_launch(process.launch_key)
            self.core.end_sessions_of_revoked_keys()

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
        self._revoke_launch_key(process)
        if process.escaped:
            log.warning("plugin %s left processes outside its process group; killed %s",
                        plugin.name, ", ".join(process.escaped))
        if plugin.process is not process:
            return
        self.launches.remove(plugin.name)
        escaped = (f"; killed {len(process.escaped)} process(es) that escaped its process "
                   "group: " + ", ".join(process.escaped)) if process.escaped else ""
        self.core.plugin_tokens.pop(plugin.name, None)  # one-time: gone with the process
        session = self.core.plugins.get(plugin.name)
        if session is not None:
            self.core.end_session(session, f"process exited with status {code}")
        plugin.exit_code = code
        if self._closing:
            return
        failed = code != 0 or plugin.state is PluginState.STARTING
        if plugin.state is not PluginState.STARTING and not plugin.stop_requested:
            plugin.reason = plugin.reason or f"exited with status {code}"
        decision = plugin.tracker.on_exit(self.clock(), failed=failed,
                                          requested=plugin.stop_requested)
        if plugin.stop_requested:
            self._set_state(plugin, PluginState.STOPPED, "stopped on request" + escaped)
        elif decision.restart:
            self._set_state(plugin, PluginState.BACKOFF,
                            f"{plugin.reason}{escaped}; {decision.reason}")
            plugin.restart_timer = asyncio.get_running_loop().call_later(
                decision.delay, lambda: asyncio.ensure_future(self._restart_after_backoff(plugin)))
        else:
            state = PluginState.FAILED if decision.failed or failed else PluginState.EXITED
            self._set_state(plugin, state, f"{plugin.reason}{escaped}; {decision.reason}")

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
            session = self.core.plugins.get(name)
            if session is None:
                return False
            self.core.ask_to_end(session)
            self.poke()
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
        self._adopt_contract(new)
        await self.start(name)
        for other in affected:
            await self.start(other)
        return affected

    async def stop_all(self) -> None:
        """Stop every plugin, dependents first."""
        for name in reversed(self.order):
            await self.stop(name)
        self._closing = True
        if self._stats_task is not None:
            self._stats_task.cancel()

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

    # -- methods for the CLI ---------------------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        rows = []
        for name in self.order:
            plugin = self.plugins[name]
            stats = {}
            prefix = f"{PREFIX}{name}/"
            for key in ("pid", "uptime", "cpu_percent", "memory_rss"):
                prop = self.core.store.by_name.get(prefix + key)
                stats[key] = prop.value if prop else None
            rows.append({"name": name, "version": plugin.contract.version,
                         "state": plugin.state.value, "restarts": plugin.restarts,
                         "exit_code": plugin.exit_code, "reason": plugin.reason, **stats})
        return rows

    def _m_list(self, session: Session, params: dict[str, Any], msgid: int) -> Any:
        return {"plugins": self.describe()}

    def _control(self, action: str) -> Callable[[Session, dict[str, Any], int], Any]:
        def handler(session: Session, params: dict[str, Any], msgid: int) -> Any:
            name = params.get("name")
            if name not in self.plugins:
                raise ProtocolError("not_found", f"no plugin {name!r} is configured; "
                                    f"configured: {', '.join(self.order) or 'none'}")
            peer = session.peer

            async def run() -> None:
                try:
                    if action == "start":
                        ok = await self.start(name)
                        result: Any = {"ready": ok, "reason": self.plugins[name].reason}
                    elif action == "stop":
                        result = {"step": (await self.stop(name)).value}
                    elif action == "restart":
                        result = {"ready": await self.restart(name)}
                    else:
                        result = {"restarted_dependents": await self.reload(
                            name, bool(params.get("force")))}
                    self.core.complete(peer, msgid, result)
                except ProtocolError as exc:
                    self.core.complete(peer, msgid, error=exc)
                self.poke()

            asyncio.ensure_future(run())
            return DEFERRED

        return handler
