"""``plugboard broker --config FILE``: every broker option from a TOML file.

Keys are the options' names (``heartbeat_ms`` or ``heartbeat-ms``); the command line
wins over the file, the file over the defaults. Unknown keys and values of the wrong
type are errors that name the file, the key and what was expected. Relative plugin
paths are taken from the file's folder.
"""

from __future__ import annotations

import argparse
import difflib
import json
import tomllib
from pathlib import Path
from typing import Any

from plugboard.protocol.errors import ConfigError


def read_config(path: Path, defaults: dict[str, Any]) -> dict[str, Any]:
    """The file's settings, checked against the options and their defaults' types."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no config file at {path}") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    settings: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = raw_key.replace("-", "_")
        if key not in defaults:
            close = difflib.get_close_matches(key, defaults, n=1)
            raise ConfigError(f"{path}: unknown key {raw_key!r}"
                              + (f"; did you mean {close[0]!r}?" if close else "")
                              + f" (keys: {', '.join(defaults)})")
        settings[key] = _checked(path, key, value, defaults[key])
    for key in ("plugins",):
        if key in settings:
            settings[key] = [(path.parent / p).resolve() for p in settings[key]]
    return settings


def _checked(path: Path, key: str, value: Any, default: Any) -> Any:
    if isinstance(default, list):
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return value
        raise ConfigError(f"{path}: {key} must be a list of strings, got {value!r}")
    if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value,
                                                                              type(default)):
        raise ConfigError(f"{path}: {key} must be {type(default).__name__}, got {value!r}")
    return value


def resolve(args: argparse.Namespace, defaults: dict[str, Any],
            choices: dict[str, list[str]],
            ranges: dict[str, tuple[int, int]]) -> dict[str, Any]:
    """Command line, then the config file, then the defaults; written back into ``args``.
    A list option given on the command line replaces the file's list. A value outside
    its choices or its range is a ConfigError naming the option and where it came from."""
    from_file = read_config(Path(args.config), defaults) if args.config else {}
    settings, origin = {}, {}
    for key, default in defaults.items():
        given = getattr(args, key, None)
        settings[key] = given if given is not None else from_file.get(key, default)
        origin[key] = ("--" + key.replace("_", "-") if given is not None
                       else f"{args.config}: {key}")
        setattr(args, key, settings[key])
    for key, allowed in choices.items():
        if settings[key] not in allowed:
            raise ConfigError(f"{origin[key]} must be one of {', '.join(allowed)}, "
                              f"got {settings[key]!r}")
    for key, (low, high) in ranges.items():
        if not low <= settings[key] <= high:
            raise ConfigError(f"{origin[key]} must be {low}..{high}, got {settings[key]}")
    return settings


def as_toml(settings: dict[str, Any]) -> str:
    """The settings as a config file would give them."""
    lines = []
    for key, value in settings.items():
        if isinstance(value, list):
            value = [str(v) for v in value]
        text = str(value).lower() if isinstance(value, bool) else json.dumps(value)
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"
