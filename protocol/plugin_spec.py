"""What the broker is told about a plugin an agent manages: its exports, methods and
config, and what it provides and needs.

The plugin runtime reads a contract from ``plugin.toml`` and sends it in this shape
(``agent.register``); the broker holds a plugin to it (``declare`` within the exports,
``call`` only of exported methods) and publishes it below
``system/plugins/<name>/contract/``. One shape, parsed in one place, on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .declaration import Meta, parse_meta, who_may
from .errors import ProtocolError
from .names import matches, namespace, validate_pattern, validate_plugin_name
from .values import ValueType


@dataclass(frozen=True, slots=True, kw_only=True)
class Export:
    """A property pattern the plugin may declare, with the type and metadata it must use."""

    pattern: str
    type: ValueType
    meta: Meta

    def to_wire(self) -> dict[str, Any]:
        return {"pattern": self.pattern, "type": self.type.value, **self.meta.to_wire()}


@dataclass(frozen=True, slots=True, kw_only=True)
class MethodSpec:
    """A method the plugin serves through the broker's ``call``."""

    name: str
    params: dict[str, ValueType]
    """Every parameter, by name, with its type; all are required."""
    result: ValueType
    description: str = ""
    callable_by: tuple[str, ...] = ()
    """Who may call it besides admins and the plugin itself: plugin names, ``plugins``,
    ``clients`` or ``*`` (as ``writable_by``)."""

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "params": {k: v.value for k, v in self.params.items()},
                "result": self.result.value, "callable_by": list(self.callable_by)}


@dataclass(frozen=True, slots=True, kw_only=True)
class PluginSpec:
    """A plugin's contract as the broker enforces and publishes it."""

    name: str
    version: str = ""
    exports: tuple[Export, ...] = ()
    methods: tuple[MethodSpec, ...] = ()
    provides: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)
    """The ``[config]`` table, sent to the plugin in ``init``."""
    about: dict[str, Any] = field(default_factory=dict)
    """Descriptive fields (description, author, licence, protocol, after, before,
    restart), published as they are."""

    def export_for(self, name: str, vtype: ValueType | None = None) -> Export | None:
        """The export that allows declaring ``name`` (as ``vtype``, when one matches with
        that type), or None when no pattern covers the name."""
        found = [e for e in self.exports if matches(e.pattern, name)]
        typed = [e for e in found if e.type is vtype]
        best = typed or found
        return best[0] if best else None

    def method_for(self, name: str) -> MethodSpec | None:
        """The exported method ``name``, or None: the broker forwards no other call."""
        return next((m for m in self.methods if m.name == name), None)

    def as_properties(self) -> dict[str, Any]:
        """The contract as ``contract/...`` sub-names and values (for system/plugins/)."""
        return {"version": self.version, **self.about, "provides": list(self.provides),
                "needs": list(self.needs), "exports": [e.to_wire() for e in self.exports],
                "methods": [m.to_wire() for m in self.methods]}

    def to_wire(self) -> dict[str, Any]:
        return {"name": self.name, **self.as_properties(), "config": self.config}

    @classmethod
    def from_wire(cls, data: Any) -> PluginSpec:
        """Parse and check a contract sent by an agent; ``invalid_params`` says what and
        where when it is malformed."""
        if not isinstance(data, dict):
            raise ProtocolError("invalid_params", "a contract must be a map")
        name = validate_plugin_name(data.get("name"))
        where = f"contract of {name!r}"

        def strings(key: str) -> tuple[str, ...]:
            value = data.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ProtocolError("invalid_params", f"{where}: {key} must be a list of "
                                    "strings")
            return tuple(value)

        def vtype(text: Any, what: str) -> ValueType:
            try:
                return ValueType(text)
            except ValueError:
                raise ProtocolError("invalid_params", f"{where}: {what}: unknown type "
                                    f"{text!r}") from None

        exports = []
        for index, item in enumerate(_maps(data.get("exports", []), f"{where}: exports")):
            etype = vtype(item.get("type"), f"exports[{index}].type")
            meta_params = {k: v for k, v in item.items() if k not in ("pattern", "type")}
            try:
                pattern = validate_pattern(item.get("pattern"))
                meta = parse_meta(etype, meta_params)
            except ProtocolError as exc:
                raise ProtocolError(exc.code, f"{where}: exports[{index}]: {exc.message}",
                                    **exc.details) from None
            if namespace(pattern) != name:
                raise ProtocolError("invalid_params", f"{where}: exports[{index}].pattern "
                                    f"{pattern!r} is outside the plugin's namespace {name}/")
            exports.append(Export(pattern=pattern, type=etype, meta=meta))
        methods = []
        for index, item in enumerate(_maps(data.get("methods", []), f"{where}: methods")):
            params = item.get("params", {})
            method_name = item.get("name")
            if not isinstance(method_name, str) or not isinstance(params, dict):
                raise ProtocolError("invalid_params", f"{where}: methods[{index}] needs a "
                                    "name and a params map")
            try:
                callable_by = who_may(item.get("callable_by", []), "callable_by")
            except ProtocolError as exc:
                raise ProtocolError(exc.code, f"{where}: methods[{index}].{exc.message}"
                                    ) from None
            methods.append(MethodSpec(
                name=method_name, params={str(k): vtype(v, f"methods[{index}].params.{k}")
                                          for k, v in params.items()},
                result=vtype(item.get("result", "any"), f"methods[{index}].result"),
                description=str(item.get("description", "")),
                callable_by=callable_by))
        config = data.get("config", {})
        if not isinstance(config, dict):
            raise ProtocolError("invalid_params", f"{where}: config must be a map")
        version = data.get("version", "")
        if not isinstance(version, str):
            raise ProtocolError("invalid_params", f"{where}: version must be a string")
        known = {"name", "version", "provides", "needs", "exports", "methods", "config"}
        return cls(name=name, version=version, exports=tuple(exports),
                   methods=tuple(methods), provides=strings("provides"),
                   needs=strings("needs"), config=config,
                   about={k: v for k, v in data.items() if k not in known})


def _maps(value: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ProtocolError("invalid_params", f"{what} must be a list of maps")
    return value
