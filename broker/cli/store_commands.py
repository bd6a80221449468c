"""``plugboard store info|export|import``: the persistent store as a file a person handles.

Export and import work on the file directly; import refuses while a broker runs on
the state directory (it would overwrite what the broker writes).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import msgpack

from plugboard.protocol.codec import decode_value, encode_value
from plugboard.protocol.errors import ConfigError, ProtocolError
from plugboard.protocol.values import ValueType

from ..statedir import StateDir
from ..store import STORE_NAME, Record, Store
from .client_commands import print_json
from .values import from_json, to_json


def _open(args: argparse.Namespace) -> Store:
    path = Path(args.state_dir) / STORE_NAME
    if not path.exists():
        raise ConfigError(f"no store at {path}")
    return Store(path, durability=None)


def info(args: argparse.Namespace) -> int:
    store = _open(args)
    try:
        records = store.load()
        if args.json:
            print_json({"path": str(store.path), "size": store.path.stat().st_size,
                        "properties": len(records), "damaged": len(store.dropped),
                        "integrity": store.integrity(), "durability": store.last_durability})
            return 0
        print(f"path         {store.path}")
        print(f"size         {store.path.stat().st_size} bytes")
        print(f"properties   {len(records)}")
        print(f"damaged      {len(store.dropped)}")
        print(f"integrity    {store.integrity()}")
        print(f"durability   {store.last_durability} (of the last broker start; set with "
              "plugboard broker --durability)")
    finally:
        store.close()
    return 0


def export(args: argparse.Namespace) -> int:
    store = _open(args)
    try:
        rows = [{"name": r.name, "type": r.type.value, "meta": r.meta, "value": r.value,
                 "revision": r.revision, "timestamp": r.timestamp} for r in store.load()]
    finally:
        store.close()
    target = Path(args.file)
    if target.suffix == ".json":
        target.write_text(json.dumps({"plugboard_store": 1, "properties": to_json(rows)},
                                     indent=1, ensure_ascii=False))
    else:
        target.write_bytes(encode_value({"plugboard_store": 1, "properties": rows}))
    print(f"exported {len(rows)} properties to {target}")
    return 0


def import_(args: argparse.Namespace) -> int:
    source = Path(args.file)
    try:
        if source.suffix == ".json":
            data = from_json(json.loads(source.read_text()))
        else:
            data = decode_value(source.read_bytes(), max_frame=2**31)
    except (OSError, ValueError, TypeError, msgpack.UnpackException) as exc:
        raise ConfigError(f"cannot import {source}: {exc}") from exc
    records = _records(source, data)
    lock = StateDir(Path(args.state_dir))  # refuses while a broker runs here
    try:
        store = Store(Path(args.state_dir) / STORE_NAME, durability=None)
        store.replace_all(records)
        store.close()
    finally:
        lock.close()
    print(f"imported {len(records)} properties into {Path(args.state_dir) / STORE_NAME}")
    return 0


def _records(source: Path, data: Any) -> list[Record]:
    """The export's records, each checked as a broker would restore it; ConfigError
    names the first that is not, by its place in the file and its name."""
    rows = data.get("properties") if isinstance(data, dict) else None
    if not isinstance(rows, list):
        raise ConfigError(f"cannot import {source}: not an export of 'plugboard store "
                          "export' (a map with a list 'properties')")
    records = []
    for index, row in enumerate(rows):
        name = row.get("name") if isinstance(row, dict) else None
        where = f"cannot import {source}: properties[{index}]" + (
            f" ({name})" if isinstance(name, str) else "")
        if not isinstance(row, dict):
            raise ConfigError(f"{where}: not a map")
        missing = [k for k in ("name", "type", "value", "revision", "timestamp")
                   if k not in row]
        if missing:
            raise ConfigError(f"{where}: missing {', '.join(missing)}")
        try:
            record = Record(row["name"], ValueType(row["type"]), row.get("meta") or {},
                            row["value"], row["revision"], row["timestamp"])
            record.check()
            record.declaration()
            records.append(record)
        except ValueError:
            raise ConfigError(f"{where}: unknown type {row['type']!r}") from None
        except ProtocolError as exc:
            raise ConfigError(f"{where}: {exc.message}") from None
    return records


def add_commands(commands: Any) -> None:
    cmd = commands.add_parser("store", help="inspect, export or import the persistent store",
                              description="The persistent store (STATE_DIR/store.sqlite).")
    actions = cmd.add_subparsers(dest="store_action", metavar="ACTION", required=True)
    sub = actions.add_parser("info", help="path, size, stored properties, integrity",
                             description="Path, size, number of stored properties, "
                                         "damaged records and integrity of the store.")
    sub.set_defaults(handler=info)
    sub = actions.add_parser("export", help="write every stored property to a file",
                             description="Write every stored property to FILE: JSON if it "
                                         "ends in .json, msgpack otherwise.")
    sub.add_argument("file")
    sub.set_defaults(handler=export)
    sub = actions.add_parser("import", help="replace the store's contents with a file",
                             description="Replace the store's contents with an export "
                                         "(.json or msgpack). The broker must be stopped.")
    sub.add_argument("file")
    sub.set_defaults(handler=import_)
