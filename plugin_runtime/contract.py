"""Plugin contracts: ``plugin.toml`` parsed into a :class:`Contract`, every problem reported.

Modelled on Elektra's contracts: obligatory clauses (name, version, protocol) without
which a plugin is refused, expected ones (description, author, licence), what it
provides and needs as abstract capabilities, its placement relative to other plugins,
and the property patterns it exports with their types. The checker never stops at
the first problem: it returns all of them, each with file, field and reason.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from plugboard.protocol._version import SUPPORTED_VERSIONS
from plugboard.protocol.declaration import parse_meta, who_may
from plugboard.protocol.errors import ConfigError, ProtocolError
from plugboard.protocol.names import validate_pattern, validate_plugin_name
from plugboard.protocol.plugin_spec import Export, MethodSpec, PluginSpec
from plugboard.protocol.values import ValueType

MANIFEST = "plugin.toml"
RESTART_POLICIES = ("never", "on-failure", "always")
TOP_KEYS = ("name", "version", "protocol", "description", "author", "licence", "run",
            "provides", "needs", "after", "before", "exports", "methods", "limits", "config",
            "conformance")
METHOD_KEYS = ("name", "description", "params", "result", "callable_by")
RUN_KEYS = ("command", "args", "env", "cwd", "restart", "start_timeout", "stop_timeout")
EXPORT_KEYS = ("pattern", "type", "unit", "description", "min", "max", "enum",
               "writable_by", "persist")
LIMIT_KEYS = ("memory_mb", "cpu_percent", "sustained_s")
CONFORMANCE_KEYS = ("stimulus", "value", "response", "expect", "call")


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a contract, said so a person can fix it."""

    file: str
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: {self.field}: {self.reason}"


@dataclass(frozen=True, slots=True, kw_only=True)
class RunSpec:
    """How the runtime starts and stops the plugin."""

    command: tuple[str, ...]
    """argv; ``{python}`` is replaced by the broker's interpreter, ``{dir}`` by the folder."""
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = Path(".")
    start_timeout: float = 10.0
    """Seconds from spawn to ready (hello done and init answered)."""
    stop_timeout: float = 5.0
    """Seconds each stop step (end, SIGTERM) may take before the next."""
    restart: str = "on-failure"


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    memory_mb: float | None = None
    """Resident memory above which, sustained, the plugin is restarted."""
    cpu_percent: float | None = None
    """CPU share (percent of one core) above which, sustained, the plugin is restarted."""
    sustained_s: float = 10.0
    """How long a limit must be exceeded before the restart."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Contract:
    name: str
    version: str
    protocol: tuple[int, ...]
    directory: Path
    description: str = ""
    author: str = ""
    licence: str = ""
    run: RunSpec
    provides: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    after: tuple[str, ...] = ()
    before: tuple[str, ...] = ()
    exports: tuple[Export, ...] = ()
    methods: tuple[MethodSpec, ...] = ()
    limits: Limits = field(default_factory=Limits)
    config: dict[str, Any] = field(default_factory=dict)
    conformance: dict[str, Any] = field(default_factory=dict)
    """For ``plugboard conform``: a stimulus property the checker writes (playing its
    owner), the value, and the response property and value the plugin must produce."""

    @property
    def file(self) -> str:
        return str(self.directory / MANIFEST)

    def argv(self) -> list[str]:
        return [part.replace("{python}", sys.executable).replace("{dir}", str(self.directory))
                for part in self.run.command]

    def spec(self) -> PluginSpec:
        """What the broker is told about this plugin (``agent.register``)."""
        return PluginSpec(
            name=self.name, version=self.version, exports=self.exports,
            methods=self.methods, provides=self.provides, needs=self.needs,
            config=self.config,
            about={"protocol": list(self.protocol), "description": self.description,
                   "author": self.author, "licence": self.licence,
                   "after": list(self.after), "before": list(self.before),
                   "restart": self.run.restart,
                   "limits": {k: v for k, v in (("memory_mb", self.limits.memory_mb),
                                                ("cpu_percent", self.limits.cpu_percent),
                                                ("sustained_s", self.limits.sustained_s))
                              if v is not None}})


class _Reader:
    """Typed access to the manifest's fields, collecting problems instead of raising."""

    def __init__(self, file: str, data: dict[str, Any]) -> None:
        self.file = file
        self.data = data
        self.problems: list[Problem] = []

    def problem(self, field_name: str, reason: str) -> None:
        self.problems.append(Problem(self.file, field_name, reason))

    def get(self, path: str, kind: type | tuple[type, ...], default: Any = None, *,
            required: bool = False) -> Any:
        node: Any = self.data
        for key in path.split("."):
            if not isinstance(node, dict) or key not in node:
                if required:
                    self.problem(path, "missing obligatory clause")
                return default
            node = node[key]
        if not isinstance(node, kind) or (isinstance(node, bool) and bool not in (
                kind if isinstance(kind, tuple) else (kind,))):
            names = kind.__name__ if isinstance(kind, type) else " or ".join(
                k.__name__ for k in kind)
            self.problem(path, f"must be {names}, got {type(node).__name__}")
            return default
        return node

    def known_keys(self, table: Any, where: str, known: tuple[str, ...]) -> None:
        """Every key of ``table`` must be one of ``known``: a typo is an error, with a
        did-you-mean, never silently ignored."""
        if not isinstance(table, dict):
            return
        for key in table:
            if key in known:
                continue
            path = f"{where}.{key}" if where else key
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else (
                "; known keys: " + ", ".join(known))
            self.problem(path, f"unknown key {key!r}" + hint)

    def strings(self, path: str) -> tuple[str, ...]:
        value = self.get(path, list, [])
        if not all(isinstance(v, str) for v in value):
            self.problem(path, "must be a list of strings")
            return ()
        return tuple(value)


def load_contract(directory: Path) -> tuple[Contract | None, list[Problem]]:
    """Parse ``directory/plugin.toml``; the contract is None when it cannot be used."""
    directory = Path(directory).absolute()
    file = str(directory / MANIFEST)
    try:
        # UTF-8 whatever the locale, as TOML is; a byte-order mark some editors write
        # is not a problem worth refusing a plugin for.
        data = tomllib.loads((directory / MANIFEST).read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        link = directory / MANIFEST
        return None, [Problem(file, "-", f"a link to {os.readlink(link)}, which does not "
                              "exist" if link.is_symlink() else "file not found")]
    except UnicodeDecodeError as exc:
        line = exc.object[:exc.start].count(b"\n") + 1
        return None, [Problem(file, "-", f"not UTF-8: byte 0x{exc.object[exc.start]:02x} "
                                         f"on line {line}")]
    except OSError as exc:
        return None, [Problem(file, "-", f"cannot read: {exc}")]
    except tomllib.TOMLDecodeError as exc:
        return None, [Problem(file, "-", f"not valid TOML: {exc}")]
    r = _Reader(file, data)
    r.known_keys(data, "", TOP_KEYS)
    r.known_keys(data.get("run"), "run", RUN_KEYS)
    r.known_keys(data.get("limits"), "limits", LIMIT_KEYS)
    r.known_keys(data.get("conformance"), "conformance", CONFORMANCE_KEYS)

    name = r.get("name", str, required=True)
    if name is not None:
        try:
            validate_plugin_name(name)
        except ProtocolError as exc:
            r.problem("name", exc.message)
            name = None
    version = r.get("version", str, required=True)
    protocol_field = r.get("protocol", (int, list), required=True)
    protocols: tuple[int, ...] = ()
    if protocol_field is not None:
        protocols = tuple(protocol_field) if isinstance(protocol_field, list) else (
            protocol_field,)
        if not all(type(p) is int for p in protocols):
            r.problem("protocol", "must be an int or a list of ints")
        elif not set(protocols) & set(SUPPORTED_VERSIONS):
            r.problem("protocol", f"unsupported protocol {list(protocols)}; this broker "
                      f"speaks {list(SUPPORTED_VERSIONS)}")

    command = r.get("run.command", (str, list), required=True)
    argv: tuple[str, ...] = ()
    if isinstance(command, str):
        # A shell line would be run as one program name: say so now, not at start.
        example = ", ".join(f'"{part}"' for part in command.split()) or '"program"'
        r.problem("run.command", f"must be a list of strings (the argv, no shell), got "
                  f"the string {command!r}; write command = [{example}]")
    elif isinstance(command, list):
        if not command or not all(isinstance(c, str) for c in command):
            r.problem("run.command", "must be a non-empty list of strings")
        else:
            argv = tuple(command)
    argv += r.strings("run.args")
    env = r.get("run.env", dict, {})
    if not all(isinstance(v, str) for v in env.values()):
        r.problem("run.env", "values must be strings")
        env = {}
    restart = r.get("run.restart", str, "on-failure")
    if restart not in RESTART_POLICIES:
        r.problem("run.restart", f"must be one of {', '.join(RESTART_POLICIES)}, "
                  f"got {restart!r}")
    timeouts = {}
    for key, default in (("start_timeout", 10.0), ("stop_timeout", 5.0)):
        value = r.get(f"run.{key}", (int, float), default)
        if value <= 0:
            r.problem(f"run.{key}", "must be positive")
        timeouts[key] = float(value)
    cwd = directory / r.get("run.cwd", str, ".")
    if not cwd.is_dir():
        r.problem("run.cwd", f"{cwd} is not a directory")

    exports = []
    for index, item in enumerate(r.get("exports", list, [])):
        where = f"exports[{index}]"
        if not isinstance(item, dict):
            r.problem(where, "must be a table")
            continue
        r.known_keys(item, where, EXPORT_KEYS)
        try:
            pattern = validate_pattern(item.get("pattern"))
            if name is not None and pattern.split("/", 1)[0] != name:
                r.problem(f"{where}.pattern", f"{pattern!r} is outside the plugin's "
                          f"namespace {name}/")
        except ProtocolError as exc:
            r.problem(f"{where}.pattern", exc.message)
            continue
        try:
            vtype = ValueType(str(item.get("type")))
        except ValueError:
            r.problem(f"{where}.type", f"unknown type {item.get('type')!r}; types are "
                      + ", ".join(t.value for t in ValueType))
            continue
        try:
            meta = parse_meta(vtype, {k: v for k, v in item.items()
                                      if k not in ("pattern", "type")})
        except ProtocolError as exc:
            r.problem(where, exc.message)
            continue
        exports.append(Export(pattern=pattern, type=vtype, meta=meta))

    methods = _methods(r)
    limits = Limits(memory_mb=r.get("limits.memory_mb", (int, float)),
                    cpu_percent=r.get("limits.cpu_percent", (int, float)),
                    sustained_s=float(r.get("limits.sustained_s", (int, float), 10.0)))
    for expected in ("description", "author", "licence"):
        r.get(expected, str, "")
    contract = None
    if name is not None and version is not None and argv and not r.problems:
        contract = Contract(
            name=name, version=version, protocol=protocols, directory=directory,
            description=r.get("description", str, ""), author=r.get("author", str, ""),
            licence=r.get("licence", str, ""),
            run=RunSpec(command=argv, env=dict(env), cwd=cwd, restart=restart, **timeouts),
            provides=r.strings("provides"), needs=r.strings("needs"),
            after=r.strings("after"), before=r.strings("before"), exports=tuple(exports),
            methods=methods,
            limits=limits, config=r.get("config", dict, {}),
            conformance=r.get("conformance", dict, {}),
        )
    return contract, r.problems


_METHOD_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")


def _value_type(r: _Reader, where: str, text: Any) -> ValueType | None:
    try:
        return ValueType(str(text))
    except ValueError:
        r.problem(where, f"unknown type {text!r}; types are "
                  + ", ".join(t.value for t in ValueType))
        return None


def _methods(r: _Reader) -> tuple[MethodSpec, ...]:
    """The ``[[methods]]`` tables: name, params (name = type), result type, callable_by."""
    found: list[MethodSpec] = []
    for index, item in enumerate(r.get("methods", list, [])):
        where = f"methods[{index}]"
        if not isinstance(item, dict):
            r.problem(where, "must be a table")
            continue
        r.known_keys(item, where, METHOD_KEYS)
        name = item.get("name")
        if not isinstance(name, str) or not _METHOD_NAME.match(name):
            r.problem(f"{where}.name", f"must match [a-z][a-z0-9_]{{0,63}}, got {name!r}")
            continue
        if any(m.name == name for m in found):
            r.problem(f"{where}.name", f"method {name!r} is exported twice")
            continue
        params: dict[str, ValueType] = {}
        raw_params = item.get("params", {})
        if not isinstance(raw_params, dict):
            r.problem(f"{where}.params", "must be a table of parameter = type")
            continue
        for param, text in raw_params.items():
            vtype = _value_type(r, f"{where}.params.{param}", text)
            if vtype is not None:
                params[param] = vtype
        result = _value_type(r, f"{where}.result", item.get("result", "any"))
        try:
            callable_by = who_may(item.get("callable_by", []), "callable_by")
        except ProtocolError as exc:
            r.problem(f"{where}.callable_by",
                      exc.message.removeprefix("callable_by").lstrip(": "))
            continue
        description = item.get("description", "")
        if not isinstance(description, str):
            r.problem(f"{where}.description", "must be a string")
            continue
        if result is not None and len(params) == len(raw_params):
            found.append(MethodSpec(name=name, params=params, result=result,
                                    description=description, callable_by=callable_by))
    return tuple(found)


BUNDLED = Path("<bundled>")
"""Stands for the bundled plugins in a list of plugin paths (``--plugins`` alone)."""


def bundled_plugins() -> Path:
    """Where the bundled plugins are: the repository's plugins/ in a checkout, the
    installed ``plugboard.bundled`` package otherwise."""
    spec = importlib.util.find_spec("plugboard.bundled")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise ConfigError("the bundled plugins are not installed (package plugboard.bundled)")
    return Path(locations[0])


def find_plugin_dirs(paths: list[Path]) -> list[Path]:
    """Each path is a plugin folder (it has plugin.toml) or a folder of plugin folders."""
    found = []
    for path in paths:
        path = bundled_plugins() if path == BUNDLED else Path(path)
        # lexists: a manifest that is a broken link is reported, not passed over.
        inside = sorted(p for p in path.iterdir() if os.path.lexists(p / MANIFEST)
                        ) if path.is_dir() else []
        # A folder with no plugin at all is reported as its own missing manifest.
        found.extend(inside if inside and not (path / MANIFEST).exists() else [path])
    return found


def check_contracts(paths: list[Path], *, remote_needs: bool = False
                    ) -> tuple[list[Contract], list[Problem]]:
    """Load every plugin below ``paths`` and check them together; return them in start order.

    Besides each manifest's own problems: two plugins with one name, needs nobody
    provides, placement naming unknown plugins, and dependency cycles.
    """
    contracts: list[Contract] = []
    problems: list[Problem] = []
    for directory in find_plugin_dirs(paths):
        contract, found = load_contract(directory)
        problems.extend(found)
        if contract is not None:
            contracts.append(contract)
    by_name: dict[str, Contract] = {}
    for contract in contracts:
        if contract.name in by_name:
            other = by_name[contract.name].file
            problems.append(Problem(contract.file, "name", f"two plugins are named "
                                    f"{contract.name!r} (the other: {other})"))
        else:
            by_name[contract.name] = contract
    ordered, order_problems = start_order(list(by_name.values()), remote_needs=remote_needs)
    return ordered, problems + order_problems


def start_order(contracts: list[Contract], *, remote_needs: bool = False
                ) -> tuple[list[Contract], list[Problem]]:
    """Providers before those who need them, ``after``/``before`` honoured; cycles reported.
    With ``remote_needs`` a need no plugin here provides is not a problem: an agent waits
    for another agent's plugin to provide it."""
    by_name = {c.name: c for c in contracts}
    providers: dict[str, list[str]] = {}
    for contract in contracts:
        for capability in contract.provides:
            providers.setdefault(capability, []).append(contract.name)
    problems: list[Problem] = []
    edges: dict[str, set[str]] = {c.name: set() for c in contracts}  # name -> must start first
    for contract in contracts:
        for capability in contract.needs:
            if capability not in providers and not remote_needs:
                problems.append(Problem(contract.file, "needs", f"unmet need {capability!r}: "
                                        "no plugin provides it"))
            edges[contract.name].update(p for p in providers.get(capability, [])
                                        if p != contract.name)
        for other in contract.after:
            if other in by_name:
                edges[contract.name].add(other)
            else:
                problems.append(Problem(contract.file, "after", f"no plugin named {other!r}"))
        for other in contract.before:
            if other in by_name:
                edges[other].add(contract.name)
            else:
                problems.append(Problem(contract.file, "before", f"no plugin named {other!r}"))
    ordered: list[Contract] = []
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            cycle = trail[trail.index(name):] + [name]
            problems.append(Problem(by_name[name].file, "needs/after/before",
                                    "dependency cycle: " + " -> ".join(cycle)))
            return
        state[name] = "visiting"
        for first in sorted(edges[name]):
            visit(first, trail + [name])
        state[name] = "done"
        ordered.append(by_name[name])

    for name in sorted(by_name):
        visit(name, [])
    return ordered, problems


def dependents(contracts: list[Contract], name: str) -> list[str]:
    """Plugins that need a capability ``name`` provides, or start after it (transitively)."""
    by_name = {c.name: c for c in contracts}
    target = by_name.get(name)
    if target is None:
        return []
    found: list[str] = []
    frontier = [target]
    while frontier:
        current = frontier.pop()
        for other in contracts:
            if other.name in found or other.name == name:
                continue
            if set(other.needs) & set(current.provides) or current.name in other.after:
                found.append(other.name)
                frontier.append(other)
    return found


def replacement_problems(old: Contract, new: Contract) -> list[str]:
    """Elektra's rule: a new version may replace the old in place only when its contract
    provides at least what the old did and needs no more."""
    reasons = []
    if new.name != old.name:
        reasons.append(f"the name changed from {old.name!r} to {new.name!r}")
    lost = sorted(set(old.provides) - set(new.provides))
    if lost:
        reasons.append("no longer provides " + ", ".join(lost))
    gained = sorted(set(new.needs) - set(old.needs))
    if gained:
        reasons.append("needs more: " + ", ".join(gained))
    old_exports = {(e.pattern, e.type) for e in old.exports}
    new_exports = {(e.pattern, e.type) for e in new.exports}
    dropped = sorted(f"{p} ({t.value})" for p, t in old_exports - new_exports)
    if dropped:
        reasons.append("no longer exports " + ", ".join(dropped))
    lost_methods = sorted(m.name for m in old.methods if m not in new.methods)
    if lost_methods:
        reasons.append("no longer exports method(s) " + ", ".join(lost_methods)
                       + " as before")
    return reasons
