"""The persistent store: last value of every persistent property, in SQLite (WAL).

Each row holds one property's declaration and last value as a msgpack record with a
CRC-32 over name and record. SQLite does not checksum its pages, so a flipped byte
inside a value would otherwise be served as a wrong value; with the CRC a damaged
record is dropped (and logged) instead. A file SQLite itself cannot read is refused
with a one-line message that names the file and the way out.

Durability policies, as Redis's ``appendfsync``:

- ``always``: the writes of one loop turn are committed in one transaction
  (``synchronous=FULL``) before any reply of that turn is sent. Nothing acknowledged
  is lost, not even on power loss.
- ``batch``: replies go out at once; writes are committed at least every
  ``batch_ms`` (``synchronous=NORMAL``). A crash loses at most that window.
- ``off``: written only when the broker stops cleanly; a crash loses every write since.
"""

from __future__ import annotations

import enum
import logging
import sqlite3
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from plugboard.protocol.codec import decode_value, encode_value
from plugboard.protocol.declaration import Meta, parse_meta
from plugboard.protocol.errors import ConfigError, ProtocolError, StoreError
from plugboard.protocol.names import SYSTEM_NAMESPACE, namespace, validate_name
from plugboard.protocol.values import Timestamp, ValueType, check_value

log = logging.getLogger(__name__)

STORE_NAME = "store.sqlite"
SCHEMA_VERSION = 1


class Durability(enum.StrEnum):
    ALWAYS = "always"
    BATCH = "batch"
    OFF = "off"


_SYNCHRONOUS = {Durability.ALWAYS: "FULL", Durability.BATCH: "NORMAL", Durability.OFF: "OFF"}


@dataclass(frozen=True, slots=True)
class Record:
    """What is kept of one persistent property."""

    name: str
    type: ValueType
    meta: dict[str, Any]
    value: Any
    revision: int
    timestamp: Timestamp

    def encode(self) -> bytes:
        return encode_value([self.type.value, self.meta, self.value, self.revision,
                             self.timestamp])

    @classmethod
    def decode(cls, name: str, blob: bytes) -> Record:
        vtype, meta, value, revision, timestamp = decode_value(blob)[:5]
        return cls(name, ValueType(vtype), meta, value, revision, timestamp)

    def check(self) -> None:
        """Whether a broker can restore the record: a valid name outside ``system/``, a
        value of its type (or none), a revision and a timestamp. ProtocolError says which
        part is not. (Not at :meth:`Store.load`: the broker checks as it restores.)"""
        validate_name(self.name)
        if namespace(self.name) == SYSTEM_NAMESPACE:
            raise ProtocolError("forbidden", "the namespace 'system' belongs to the broker")
        if self.value is not None:
            try:
                check_value(self.type, self.value)
            except ProtocolError as exc:
                raise ProtocolError(exc.code, f"value: {exc.message}") from None
        if type(self.revision) is not int or self.revision < 0:
            raise ProtocolError("invalid_params", "revision must be an int of 0 or more, "
                                f"got {self.revision!r}")
        if not isinstance(self.timestamp, Timestamp):
            raise ProtocolError("invalid_params", "timestamp must be a timestamp, got "
                                f"{self.timestamp!r}")

    def declaration(self) -> Meta:
        """The declaration kept with the value, parsed; ProtocolError if it does not
        parse (a rule a newer broker refuses, a file edited by hand)."""
        if not isinstance(self.meta, dict):
            raise ProtocolError("invalid_params", f"meta must be a map, got {self.meta!r}")
        try:
            return parse_meta(self.type, self.meta)
        except ProtocolError as exc:
            raise ProtocolError(exc.code, f"meta: {exc.message}") from None


def _crc(name: str, blob: bytes) -> int:
    return zlib.crc32(blob, zlib.crc32(name.encode()))


def damaged(path: Path, why: str) -> ConfigError:
    why = " ".join(why.split())[:200]  # SQLite's reports span lines; the message is one
    return ConfigError(f"store {path} is damaged ({why}); move it aside "
                       f"(mv {path} {path}.broken) to start with an empty store, or restore "
                       "an export with 'plugboard store import'")


_DAMAGE = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
"""What SQLite says of a file that is not (or no longer) a database. Anything else (a
full disk, a read-only file, an I/O error) is the machine's problem, not the file's."""


def unusable(path: Path, exc: sqlite3.Error) -> ConfigError:
    """Why the store cannot be opened: damaged, with the way out, or the machine's
    problem, which moving the file aside would not solve and could lose it."""
    if getattr(exc, "sqlite_errorname", None) in _DAMAGE:
        return damaged(path, str(exc))
    why = " ".join(str(exc).split())[:200]
    return ConfigError(f"store {path} cannot be used ({why}); the file itself is kept as "
                       "it is: free some space or fix its permissions, then start again")


class Store:
    """One SQLite file; ``put``/``delete`` queue changes, ``commit`` writes them at once."""

    def __init__(self, path: Path, durability: Durability | None = Durability.ALWAYS) -> None:
        """``durability`` None opens the file to inspect it (the CLI), not to serve."""
        self.path = Path(path)
        self.durability = Durability(durability or Durability.ALWAYS)
        self._pending: dict[str, Record | None] = {}
        self.commits = 0
        """Transactions written since the store was opened (system/broker/store_commits)."""
        self.failure: str | None = None
        """Why the last commit failed (a full disk); None while the store writes."""
        self.dropped: list[str] = []
        """Names of records dropped at load because they were damaged."""
        try:
            if self.path.stat().st_size == 0:
                # SQLite takes an empty file as a new database: say so, since a store
                # emptied by a failed copy or a full disk would otherwise pass unnoticed.
                log.warning("store %s is an empty file (0 bytes): starting with no stored "
                            "properties", self.path)
        except FileNotFoundError:
            pass
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={_SYNCHRONOUS[self.durability]}")
            check = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise damaged(self.path, f"quick_check: {check}")
            self._db.execute("CREATE TABLE IF NOT EXISTS properties (name TEXT PRIMARY KEY, "
                             "record BLOB NOT NULL, crc INTEGER NOT NULL) WITHOUT ROWID")
            self._db.execute("CREATE TABLE IF NOT EXISTS info (key TEXT PRIMARY KEY, value)")
            self._db.execute("INSERT OR IGNORE INTO info VALUES ('schema', ?)", (SCHEMA_VERSION,))
            if durability is not None:
                self._db.execute("INSERT OR REPLACE INTO info VALUES ('durability', ?)",
                                 (self.durability.value,))
        except sqlite3.Error as exc:
            raise unusable(self.path, exc) from exc

    # -- reading ---------------------------------------------------------------------------

    def load(self) -> list[Record]:
        """Every intact record; damaged ones are dropped and logged (see ``dropped``)."""
        records = []
        try:
            rows = self._db.execute("SELECT name, record, crc FROM properties").fetchall()
        except sqlite3.Error as exc:
            raise unusable(self.path, exc) from exc
        for name, blob, crc in rows:
            try:
                if not isinstance(name, str) or _crc(name, blob) != crc:
                    raise ValueError("checksum mismatch")
                records.append(Record.decode(name, blob))
            except (ValueError, TypeError, ProtocolError) as exc:
                self.dropped.append(str(name))
                log.error("store %s: dropped the damaged record of %r (%s)", self.path, name,
                          exc)
        return records

    # -- writing ---------------------------------------------------------------------------

    @property
    def dirty(self) -> bool:
        return bool(self._pending)

    def put(self, record: Record) -> None:
        self._pending[record.name] = record

    def delete(self, name: str) -> None:
        self._pending[name] = None

    def commit(self) -> int:
        """Write everything queued in one transaction; returns how many rows changed.
        Raises StoreError when SQLite cannot (a full disk, an I/O error): the
        transaction is rolled back and everything stays queued for the next commit."""
        if not self._pending:
            return 0
        pending, self._pending = self._pending, {}
        upserts = [(n, r.encode(), 0) for n, r in pending.items() if r is not None]
        upserts = [(n, blob, _crc(n, blob)) for n, blob, _ in upserts]
        deletes = [(n,) for n, r in pending.items() if r is None]
        try:
            with self._transaction():
                self._db.executemany("INSERT OR REPLACE INTO properties VALUES (?, ?, ?)",
                                     upserts)
                self._db.executemany("DELETE FROM properties WHERE name = ?", deletes)
        except sqlite3.Error as exc:
            self._pending = {**pending, **self._pending}  # what was queued since wins
            self.failure = " ".join(str(exc).split())
            raise StoreError(f"store {self.path} could not commit {len(pending)} "
                             f"write(s): {self.failure}") from exc
        self.failure = None
        self.commits += 1
        return len(pending)

    def _transaction(self) -> Any:
        db = self._db

        class _Tx:
            def __enter__(self) -> None:
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, kind: object, *rest: object) -> None:
                if kind is None:
                    try:
                        db.execute("COMMIT")
                        return
                    except sqlite3.Error:
                        if db.in_transaction:  # a failed COMMIT (SQLITE_FULL) stays open
                            db.execute("ROLLBACK")
                        raise
                if db.in_transaction:
                    db.execute("ROLLBACK")

        return _Tx()

    def replace_all(self, records: list[Record]) -> None:
        """Make the store hold exactly ``records`` (import)."""
        self._pending.clear()
        with self._transaction():
            self._db.execute("DELETE FROM properties")
            self._db.executemany("INSERT INTO properties VALUES (?, ?, ?)", [
                (r.name, blob, _crc(r.name, blob)) for r in records
                for blob in (r.encode(),)])

    @property
    def last_durability(self) -> str:
        """The policy of the last broker that served this store."""
        row = self._db.execute("SELECT value FROM info WHERE key = 'durability'").fetchone()
        return str(row[0]) if row else "unknown"

    def integrity(self) -> str:
        return str(self._db.execute("PRAGMA integrity_check").fetchone()[0])

    def close(self) -> None:
        try:
            self.commit()
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except StoreError as exc:
            log.error("%s; they are lost with this stop", exc)
        except sqlite3.Error as exc:  # the checkpoint: the log keeps what it holds
            log.warning("store %s: no checkpoint at close (%s)", self.path, exc)
        self._db.close()
