"""The store never serves a wrong value: damaged files are recovered record by record or
refused with a message naming the file and the way out."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from plugboard.broker.core import BrokerCore, CoreConfig
from plugboard.broker.store import Durability, Record, Store
from plugboard.protocol import ConfigError, Duration, StoreError, Timestamp, ValueType


def record(i: int, value: object = None) -> Record:
    return Record(f"p/v{i}", ValueType.ANY, {"persist": True},
                  value if value is not None else f"value-{i}-" + "x" * (i % 50),
                  i + 1, Timestamp(1_700_000_000 + i, i))


def make_store(path: Path, count: int = 200) -> dict[str, Record]:
    store = Store(path)
    written = {}
    for i in range(count):
        written[f"p/v{i}"] = record(i)
        store.put(written[f"p/v{i}"])
    store.commit()
    store.close()
    return written


def outcome(path: Path, written: dict[str, list[Record] | Record]) -> str:
    """'refused' or 'recovered': and every record served equals one that was written."""
    try:
        store = Store(path)
    except ConfigError as exc:
        message = str(exc)
        assert str(path) in message and "move it aside" in message
        assert len(message.splitlines()) == 1
        return "refused"
    try:
        for rec in store.load():
            options = written[rec.name]
            assert rec in (options if isinstance(options, list) else [options]), rec
        return "recovered"
    except ConfigError as exc:
        assert str(path) in str(exc)
        return "refused"
    finally:
        try:
            store._db.close()
        except sqlite3.Error:
            pass


def test_round_trip_of_every_value_type(tmp_path: Path) -> None:
    values = [None, True, -5, 2.5, "text", b"\x00\x01", [1, "a"], {"k": [1]},
              Timestamp(5, 6), Duration(-7)]
    store = Store(tmp_path / "s.sqlite")
    for i, value in enumerate(values):
        store.put(Record(f"p/{i}", ValueType.ANY, {"unit": "u"}, value, i, Timestamp(i, 0)))
    store.delete("p/0")
    store.commit()
    store.close()
    loaded = {r.name: r.value for r in Store(tmp_path / "s.sqlite").load()}
    assert loaded == {f"p/{i}": v for i, v in enumerate(values) if i != 0}


def test_a_record_no_broker_could_restore_is_left_out_not_fatal(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Written by another program or an old import: it failed the broker's start (a
    timestamp that is not one); now the broker leaves it out, saying which and why."""
    store = Store(tmp_path / "s.sqlite")
    store.put(Record("p/good", ValueType.INT, {}, 1, 1, Timestamp(1, 0)))
    store.put(Record("p/when", ValueType.INT, {}, 1, 1, "yesterday"))  # type: ignore[arg-type]
    store.put(Record("p/typed", ValueType.INT, {}, "one", 1, Timestamp(1, 0)))
    store.put(Record("system/x", ValueType.INT, {}, 1, 1, Timestamp(1, 0)))
    # A rule this broker refuses (writable_by naming no one): the value is kept.
    store.put(Record("p/ruled", ValueType.INT, {"writable_by": ["Bad Name"], "persist": True},
                     5, 3, Timestamp(1, 0)))
    store.commit()
    store.close()
    core = BrokerCore(CoreConfig())
    core.restore(Store(tmp_path / "s.sqlite").load())
    assert sorted(n for n in core.store.by_name if not n.startswith("system/")) == [
        "p/good", "p/ruled"]
    ruled = core.store.by_name["p/ruled"]
    assert (ruled.value, ruled.revision, ruled.meta.writable_by) == (5, 3, ())
    assert any("'p/ruled' is restored without its declaration" in r.getMessage()
               for r in caplog.records)
    assert "system/x" not in core.store.by_name
    left_out = sorted(r.getMessage() for r in caplog.records if "left out" in r.getMessage())
    assert len(left_out) == 3 and "'p/typed'" in left_out[0] and "value: expected int" in \
        left_out[0] and "timestamp must be a timestamp" in left_out[1], left_out


def test_a_flipped_byte_inside_a_record_drops_that_record_only(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    written = make_store(path, 20)
    data = bytearray(path.read_bytes())
    at = data.find(b"value-7-")
    data[at + 6] ^= 0x01
    path.write_bytes(bytes(data))
    store = Store(path)
    names = {r.name for r in store.load()}
    assert store.dropped == ["p/v7"] and names == set(written) - {"p/v7"}


def test_truncation_at_every_offset_of_the_tail(tmp_path: Path) -> None:
    source = tmp_path / "s.sqlite"
    written = make_store(source)
    data = source.read_bytes()
    outcomes = set()
    # Every offset of the last 1 KiB, and every 512th before it.
    cuts = list(range(len(data) - 1024, len(data))) + list(range(0, len(data) - 1024, 512))
    for cut in cuts:
        target = tmp_path / "cut.sqlite"
        target.write_bytes(data[:cut])
        outcomes.add(outcome(target, written))
        target.unlink()
    assert outcomes <= {"refused", "recovered"}


def test_truncated_write_ahead_log_recovers_committed_records(tmp_path: Path) -> None:
    source = tmp_path / "s.sqlite"
    written: dict[str, list[Record] | Record] = {k: [v] for k, v in make_store(source).items()}
    store = Store(source)  # reopen and commit more, leaving them in the -wal file
    for i in range(0, 200, 3):
        newer = record(i, f"newer-{i}")
        written[newer.name].append(newer)  # type: ignore[union-attr]
        store.put(newer)
        store.commit()
    wal = source.with_name("s.sqlite-wal").read_bytes()
    main = source.read_bytes()
    for cut in range(0, len(wal), 97):
        target = tmp_path / "w.sqlite"
        target.write_bytes(main)
        target.with_name("w.sqlite-wal").write_bytes(wal[:cut])
        assert outcome(target, written) == "recovered"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{target}{suffix}").unlink(missing_ok=True)
    store._db.close()


def test_bytes_flipped_in_the_middle(tmp_path: Path) -> None:
    source = tmp_path / "s.sqlite"
    written = make_store(source)
    data = source.read_bytes()
    outcomes = []
    for at in range(len(data) // 4, 3 * len(data) // 4, 251):
        damaged = bytearray(data)
        damaged[at] ^= 0xFF
        target = tmp_path / "f.sqlite"
        target.write_bytes(bytes(damaged))
        outcomes.append(outcome(target, written))
        target.unlink()
    assert set(outcomes) <= {"refused", "recovered"}


def test_garbage_file_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(ConfigError) as caught:
        Store(path)
    assert f"mv {path} {path}.broken" in str(caught.value)


def test_a_store_the_machine_cannot_open_is_not_called_damaged(tmp_path: Path) -> None:
    """A full disk or a path SQLite cannot open is not the file's fault: the message
    must not advise moving the file aside, which could lose it."""
    with pytest.raises(ConfigError) as refused:
        Store(tmp_path)  # a directory: SQLite cannot open it (SQLITE_CANTOPEN)
    message = str(refused.value)
    assert str(tmp_path) in message and "cannot be used" in message
    assert "damaged" not in message and "move it aside" not in message


def test_durability_policy_is_recorded(tmp_path: Path) -> None:
    Store(tmp_path / "s.sqlite", Durability.BATCH).close()
    assert Store(tmp_path / "s.sqlite", None).last_durability == "batch"
    shutil.rmtree(tmp_path / "nothing", ignore_errors=True)


def test_a_commit_the_disk_refuses_keeps_the_writes_queued_and_the_file_intact(
        tmp_path: Path) -> None:
    """SQLite's own limit on the file's pages makes the same SQLITE_FULL a full disk
    does: the commit raises StoreError naming the file, nothing half-written is kept,
    and the queued writes go in with the first commit that has room."""
    path = tmp_path / "store.sqlite"
    store = Store(path)
    store.put(record(1))
    store.commit()
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count={pages}")
    big = record(1, "y" * 100_000)
    store.put(big)
    with pytest.raises(StoreError, match="full") as raised:
        store.commit()
    assert str(path) in str(raised.value)
    assert store.dirty
    assert Store(path).load() == [record(1)]  # another reader: the last commit only
    store.put(record(2))  # queued meanwhile; both go in together
    with pytest.raises(StoreError):
        store.commit()
    store._db.execute("PRAGMA max_page_count=1000000")
    assert store.commit() == 2
    assert not store.dirty
    store.close()
    assert sorted(Store(path).load(), key=lambda r: r.name) == [big, record(2)]
