"""The broker's side of the ``agent`` role: who manages which plugin, and routing.

An agent (the plugin runtime of one host) registers the plugins it manages with their
contracts and per-launch credentials, reports their figures, and serves the
``plugins.*`` control requests the broker routes to it. The broker holds each plugin
to its contract, admits it only with the credential of its current launch, tells its
agent when its session starts and ends, and publishes what the agent reports below
``system/plugins/<name>/``. When an agent's session ends, its plugins' sessions end
and their ``system/plugins/`` properties go: nothing is served on behalf of an agent
that is not there.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from plugboard.protocol.codec import Response
from plugboard.protocol.errors import ProtocolError
from plugboard.protocol.names import LOG_TOPIC, PLUGINS_PREFIX
from plugboard.protocol.plugin_spec import PluginSpec
from plugboard.protocol.values import ValueType, check_value
from plugboard.sdk._keys import Z85_KEY_LENGTH, is_z85_key

from .sessions import Role, Session

if TYPE_CHECKING:
    from .core import BrokerCore

log = logging.getLogger(__name__)

PREFIX = PLUGINS_PREFIX
FIGURES: dict[str, ValueType] = {
    "state": ValueType.STR, "pid": ValueType.INT, "restarts": ValueType.INT,
    "exit_code": ValueType.ANY, "reason": ValueType.STR, "started_at": ValueType.ANY,
    "uptime": ValueType.DURATION, "cpu_percent": ValueType.FLOAT,
    "memory_rss": ValueType.INT, "threads": ValueType.INT, "open_files": ValueType.INT,
    "history": ValueType.LIST, "stderr_tail": ValueType.STR,
}
"""What an agent reports of a plugin with ``agent.status``, and the type of each."""
CONTROL_ACTIONS = ("start", "stop", "restart", "reload", "logs", "remove")
"""Routed to the agent that manages the plugin ``name``."""
HOST_ACTIONS = ("reread", "add")
"""Routed to the agent ``host`` (or the only one): they concern plugins not yet managed."""
CONTROL_TIMEOUT_S = 300.0
"""How long a routed ``plugins.*`` request may take at the agent (a start waits for
the plugin to be ready; a forced reload restarts its dependents too)."""
REGISTERED = "registered"
"""A plugin's state from its registration until its agent reports the first one."""
STATES = (REGISTERED, "stopped", "starting", "ready", "stopping", "backoff", "failed",
          "exited")
"""The values of the ``state`` figure (PROTOCOL.md, section 10)."""
LIST_FIGURES = ("state", "restarts", "exit_code", "reason", "pid", "uptime",
                "cpu_percent", "memory_rss")


@dataclass(slots=True, eq=False)
class Managed:
    """A plugin some agent manages, and the credential of its current launch."""

    spec: PluginSpec
    agent: Session
    token: str | None = None
    key: str | None = None


class AgentDesk:
    """Registrations, credentials and routing for every connected agent."""

    def __init__(self, core: BrokerCore) -> None:
        self.core = core
        self.managed: dict[str, Managed] = {}
        agent_only = (Role.AGENT,)
        for name, handler in (("agent.register", self._register),
                              ("agent.launch", self._launch),
                              ("agent.exited", self._exited),
                              ("agent.status", self._status),
                              ("agent.end_plugin", self._end_plugin)):
            core.register_method(name, handler, roles=agent_only)
        core.register_method("plugins", self._list)
        for action in CONTROL_ACTIONS + HOST_ACTIONS:
            core.register_method(f"plugins.{action}", self._route(action),
                                 roles=(Role.ADMIN,))
        core.register_method("agent.unregister", self._unregister, roles=agent_only)

    # -- registration ---------------------------------------------------------------------

    def register(self, agent: Session, entries: Any, replacing: Session | None = None
                 ) -> list[str]:
        """Take over the plugins in ``entries`` ([{contract, token?, key?}]) for
        ``agent``: all of them or, when any is malformed or managed by another agent,
        none. Returns their names."""
        if not isinstance(entries, list):
            raise ProtocolError("invalid_params", "plugins must be a list of "
                                "{contract, token, key}")
        parsed: list[tuple[PluginSpec, str | None, str | None]] = []
        seen: set[str] = set()
        for entry in entries:
            if not isinstance(entry, dict):
                raise ProtocolError("invalid_params", "each plugin is {contract, token, key}")
            spec = PluginSpec.from_wire(entry.get("contract"))
            if spec.name in seen:
                raise ProtocolError("invalid_params", f"plugin {spec.name!r} is registered "
                                    "twice in one request", plugin=spec.name)
            seen.add(spec.name)
            owner = self.managed.get(spec.name)
            if owner is not None and owner.agent not in (agent, replacing):
                raise ProtocolError("name_taken", f"plugin {spec.name!r} is managed by "
                                    f"agent {owner.agent.name!r}; a plugin name is managed "
                                    "by one agent at a time", plugin=spec.name,
                                    agent=owner.agent.name)
            parsed.append((spec, _credential(entry, "token"), _credential(entry, "key")))
        for spec, token, key in parsed:
            managed = self.managed.get(spec.name)
            if managed is None:
                self.managed[spec.name] = Managed(spec, agent)
                log.info("agent %s manages plugin %s", agent.name, spec.name)
                unmanaged = self.core.plugins.get(spec.name)
                if unmanaged is not None:  # connected by hand, without this credential
                    self.core.end_session(unmanaged, f"plugin name {spec.name!r} is now "
                                          f"managed by agent {agent.name!r}")
            else:
                managed.spec, managed.agent = spec, agent
            self.core.contracts[spec.name] = spec
            self._set_credential(spec.name, token, key)
            self._publish_contract(self.managed[spec.name])
        return [spec.name for spec, _, _ in parsed]

    def connected(self, agent: Session, entries: Any) -> None:
        """An agent said hello, with its registrations. A connected agent of the same
        name is this agent reconnecting before the broker noticed its old connection was
        gone: its plugins pass to the new session and the old one ends."""
        old = next((s for s in self.core.sessions.values() if s.role is Role.AGENT
                    and s.name == agent.name and s is not agent), None)
        self.register(agent, entries, replacing=old)
        if old is not None:
            for managed in self.managed.values():
                if managed.agent is old:
                    managed.agent = agent
            self.core.end_session(old, f"agent {agent.name!r} connected again")

    def _register(self, agent: Session, params: dict[str, Any], _msgid: int) -> Any:
        return {"plugins": self.register(agent, params.get("plugins"))}

    def _publish_contract(self, managed: Managed) -> None:
        base = f"{PREFIX}{managed.spec.name}/"
        self.core.set_system(base + "host", ValueType.STR, managed.agent.name or "")
        if base + "state" not in self.core.store.by_name:  # until its agent reports one
            self.core.set_system(base + "state", ValueType.STR, REGISTERED)
        for key, value in managed.spec.as_properties().items():
            vtype = ValueType.LIST if isinstance(value, list) else ValueType.ANY \
                if not isinstance(value, str) else ValueType.STR
            self.core.set_system(f"{base}contract/{key}", vtype, value)

    def _mine(self, agent: Session, params: dict[str, Any]) -> Managed:
        name = params.get("name")
        managed = self.managed.get(name) if isinstance(name, str) else None
        if managed is None or managed.agent is not agent:
            raise ProtocolError("not_found", f"agent {agent.name!r} has not registered a "
                                f"plugin {name!r}", plugin=name)
        return managed

    # -- credentials and sessions of launches -----------------------------------------------

    def _set_credential(self, name: str, token: str | None, key: str | None) -> None:
        managed = self.managed[name]
        keys = self.core.keys
        if managed.key is not None and managed.key != key and keys is not None:
            keys.revoke_launch(managed.key)
        managed.token, managed.key = token, key
        if token is None:
            self.core.plugin_tokens.pop(name, None)
        else:
            self.core.plugin_tokens[name] = token
        if key is not None and keys is not None:
            keys.allow_launch(key, name)

    def _launch(self, agent: Session, params: dict[str, Any], _msgid: int) -> Any:
        managed = self._mine(agent, params)
        self._set_credential(managed.spec.name, _credential(params, "token"),
                             _credential(params, "key"))
        return {}

    def _exited(self, agent: Session, params: dict[str, Any], _msgid: int) -> Any:
        """The launch is over: its credential is void and its session, if any, ends."""
        managed = self._mine(agent, params)
        reason = params.get("reason", "exited")
        if not isinstance(reason, str):
            raise ProtocolError("invalid_params", "reason must be a string")
        name = managed.spec.name
        self._set_credential(name, None, None)
        self.core.end_sessions_of_revoked_keys()
        session = self.core.plugins.get(name)
        if session is not None:
            self.core.end_session(session, reason)
        return {}

    def _end_plugin(self, agent: Session, params: dict[str, Any], _msgid: int) -> Any:
        """Ask the plugin to ``end`` (the first step of a stop)."""
        session = self.core.plugins.get(self._mine(agent, params).spec.name)
        if session is None:
            return {"asked": False}
        self.core.ask_to_end(session)
        return {"asked": True}

    def _status(self, agent: Session, params: dict[str, Any], _msgid: int) -> Any:
        managed = self._mine(agent, params)
        figures = params.get("figures")
        if not isinstance(figures, dict):
            raise ProtocolError("invalid_params", "figures must be a map")
        checked = []
        for key, value in figures.items():
            vtype = FIGURES.get(key)
            if vtype is None:
                raise ProtocolError("invalid_params", f"unknown figure {key!r}; figures are "
                                    + ", ".join(FIGURES))
            try:
                checked.append((key, vtype, check_value(vtype, value)))
            except ProtocolError as exc:
                raise ProtocolError(exc.code, f"figure {key!r}: {exc.message}",
                                    **exc.details) from None
            if key == "state" and value not in STATES:
                raise ProtocolError("invalid_params", f"figure 'state': {value!r} is not "
                                    "one of " + ", ".join(STATES))
        base = f"{PREFIX}{managed.spec.name}/"
        for key, vtype, value in checked:
            self.core.set_system(base + key, vtype, value)
        return {}

    def may_publish(self, session: Session, topic: str) -> None:
        """Topics below ``system/`` are the broker's: only ``system/logs/<name>``, by the
        agent managing that plugin (its captured output)."""
        name = topic[len(LOG_TOPIC):] if topic.startswith(LOG_TOPIC) else None
        managed = self.managed.get(name) if name else None
        if managed is None or managed.agent is not session:
            raise ProtocolError("forbidden", f"topics below system/ are the broker's; "
                                f"{topic} is not published by {_who(session)}", topic=topic)

    # -- the core's hooks -----------------------------------------------------------------

    def plugin_ready(self, session: Session) -> None:
        managed = self.managed.get(session.name or "")
        if managed is not None:
            self.core._notify(managed.agent.peer, "plugin.ready", {"name": session.name})

    def plugin_ended(self, session: Session, reason: str) -> None:
        managed = self.managed.get(session.name or "")
        if managed is not None and managed.agent.peer in self.core.sessions:
            self.core._notify(managed.agent.peer, "plugin.ended",
                              {"name": session.name, "reason": reason})

    def agent_ended(self, agent: Session) -> None:
        """Its plugins' sessions end, their credentials and system properties go."""
        for name, managed in list(self.managed.items()):
            if managed.agent is agent:
                self._drop(name, f"its agent {agent.name!r} is gone")
        self.core.end_sessions_of_revoked_keys()

    def _drop(self, name: str, reason: str) -> None:
        """Forget a managed plugin: its credential, contract, session and properties."""
        self._set_credential(name, None, None)
        del self.managed[name]
        self.core.contracts.pop(name, None)
        session = self.core.plugins.get(name)
        if session is not None:
            self.core.end_session(session, reason)
        prefix = f"{PREFIX}{name}/"
        for prop in [p for n, p in self.core.store.by_name.items() if n.startswith(prefix)]:
            self.core._remove_property(prop)

    def _unregister(self, agent: Session, params: dict[str, Any], _msgid: int) -> Any:
        """The agent no longer runs these plugins (``plugins remove``)."""
        names = params.get("names")
        if not isinstance(names, list):
            raise ProtocolError("invalid_params", "names must be a list of plugin names")
        for name in names:
            self._mine(agent, {"name": name})
        for name in names:
            self._drop(name, f"removed from agent {agent.name!r}")
        self.core.end_sessions_of_revoked_keys()
        return {"plugins": names}

    # -- what admins and clients see ------------------------------------------------------

    def describe(self) -> list[dict[str, Any]]:
        """One row per managed plugin, from what its agent reported."""
        rows = []
        by_name = self.core.store.by_name
        for name, managed in self.managed.items():
            row: dict[str, Any] = {"name": name, "version": managed.spec.version,
                                   "host": managed.agent.name}
            for key in LIST_FIGURES:
                prop = by_name.get(f"{PREFIX}{name}/{key}")
                row[key] = prop.value if prop is not None else None
            row["restarts"] = row["restarts"] or 0
            row["state"] = row["state"] or REGISTERED
            row["reason"] = row["reason"] or ""
            rows.append(row)
        return rows

    def _list(self, session: Session, params: dict[str, Any], _msgid: int) -> Any:
        return {"plugins": self.describe()}

    def _route(self, action: str) -> Any:
        def handler(session: Session, params: dict[str, Any], msgid: int) -> Any:
            from .core import DEFERRED

            name = _route_params(action, params)
            agent = self._host(params) if action in HOST_ACTIONS else None
            if agent is None:
                managed = self.managed.get(name) if isinstance(name, str) else None
                if managed is None:
                    raise ProtocolError("not_found", f"no plugin {name!r} is managed by a "
                                        "connected agent; managed: "
                                        + (", ".join(self.managed) or "none"), plugin=name)
                agent = managed.agent
            peer, target = session.peer, agent

            def answered(reply: Response | None) -> None:
                if reply is None:
                    error = ProtocolError("unavailable", f"agent {target.name!r} "
                                          f"did not answer plugins.{action} {name or ''}")
                    self.core.complete(peer, msgid, error=error)
                elif reply.error is not None:
                    self.core.complete(peer, msgid, error=_passed_on(reply.error))
                else:
                    self.core.complete(peer, msgid, reply.result)

            self.core.request(target, f"plugins.{action}", dict(params), answered,
                              CONTROL_TIMEOUT_S)
            return DEFERRED

        return handler


    def _host(self, params: dict[str, Any]) -> Session:
        """The agent named ``host``, or the only agent connected."""
        agents = {s.name: s for s in self.core.sessions.values() if s.role is Role.AGENT}
        host = params.get("host")
        if host is None and len(agents) == 1:
            return next(iter(agents.values()))
        if host not in agents:
            raise ProtocolError("not_found" if host is not None else "invalid_params",
                                (f"no agent {host!r} is connected" if host is not None
                                 else "several agents are connected: say which (host)")
                                + "; agents: " + (", ".join(map(str, agents)) or "none"))
        return agents[str(host)]


def _route_params(action: str, params: dict[str, Any]) -> str | None:
    """Check a routed request's params before the agent sees them; returns ``name``
    (required but for ``reread``)."""
    name = params.get("name")
    if name is None and action != "reread":
        raise ProtocolError("invalid_params", f"plugins.{action} needs name (a plugin name)")
    for key, kind, what in (("name", str, "a string"), ("host", str, "a string"),
                            ("force", bool, "true or false"), ("lines", int, "an int")):
        value = params.get(key)
        if value is not None and type(value) is not kind:
            raise ProtocolError("invalid_params", f"{key} must be {what}, got {value!r}")
    lines = params.get("lines")
    if lines is not None and lines < 1:
        raise ProtocolError("invalid_params", f"lines must be 1 or more, got {lines}")
    return name


def _who(session: Session) -> str:
    return f"{session.role.value} {session.name or session.sid!r}"


def _passed_on(error: Any) -> ProtocolError:
    """An agent's error answer, handed to the caller as it was given."""
    if not isinstance(error, dict):
        return ProtocolError("internal", f"the agent answered with a malformed error {error!r}")
    details = {k: v for k, v in error.items() if k not in ("code", "message")}
    return ProtocolError(str(error.get("code", "internal")), str(error.get("message", "")),
                         **details)


def _credential(params: dict[str, Any], key: str) -> str | None:
    value = params.get(key)
    if value is not None and not isinstance(value, str):
        raise ProtocolError("invalid_params", f"{key} must be a string")
    if key == "key" and value is not None and not is_z85_key(value):
        raise ProtocolError("invalid_params", f"key must be a {Z85_KEY_LENGTH}-character "
                            f"Z85 public key, got {value!r}")
    return value
