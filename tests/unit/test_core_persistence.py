"""Persistent properties in the core: kept dormant between sessions, restored on declare."""

from pathlib import Path

import pytest

from plugboard.broker.store import Store
from plugboard.protocol import RemoteError

from .harness import REMOVED, Harness

P, C = b"plugin", b"client"


@pytest.fixture
def h(tmp_path: Path) -> Harness:
    harness = Harness()
    harness.core.persistence = Store(tmp_path / "s.sqlite")
    harness.plugin(P, "p")
    harness.client(C)
    return harness


def test_persistent_values_outlive_the_session_and_come_back(h: Harness) -> None:
    h.call(P, "declare", name="p/set", type="float", value=20.0, persist=True,
           writable_by="clients")
    h.call(P, "declare", name="p/plain", type="int", value=1)
    h.call(C, "subscribe", pattern="p/#")
    h.notes(C)
    h.call(C, "set", target="p/set", value=22.5)
    stamp = h.call(C, "get", target="p/set")["timestamp"]
    h.call(P, "bye")
    assert h.changes(C) == [("p/set", 22.5), ("p/plain", REMOVED)]
    dormant = h.call(C, "get", target="p/set")
    assert dormant["value"] == 22.5 and dormant["live"] is False
    h.clock.advance(1)
    h.call(C, "set", target="p/set", value=23.0)  # allowed while the plugin is away
    h.plugin(P, "p")
    back = h.call(P, "declare", name="p/set", type="float", value=20.0, persist=True,
                  writable_by="clients")
    assert back["value"] == 23.0 and back["revision"] == 3 and back["restored"]
    assert h.call(C, "get", target="p/set")["live"] is True
    assert h.call(C, "get", target="p/set")["timestamp"].to_unix_nano() > stamp.to_unix_nano()


def test_values_survive_a_new_core_on_the_same_store(h: Harness, tmp_path: Path) -> None:
    h.call(P, "declare", name="p/count", type="int", value=41, persist=True)
    h.call(P, "set", target="p/count", value=42)
    h.core.persistence.commit()  # type: ignore[union-attr]
    stamp = h.call(C, "get", target="p/count")["timestamp"]
    fresh = Harness()
    store = Store(tmp_path / "s.sqlite")
    fresh.core.restore(store.load())
    fresh.core.persistence = store
    fresh.client(C)
    fresh.call(C, "subscribe", pattern="p/#")
    (snapshot,) = fresh.notes(C)
    assert [i[1] for i in snapshot["items"]] == [42]  # seen before the plugin is back
    fresh.plugin(P, "p")
    back = fresh.call(P, "declare", name="p/count", type="int", value=0, persist=True)
    assert (back["value"], back["revision"]) == (42, 2)
    assert fresh.call(C, "get", target="p/count")["timestamp"] == stamp


def test_incompatible_redeclaration_names_both_types_and_keeps_the_value(h: Harness) -> None:
    h.call(P, "declare", name="p/x", type="float", value=1.5, persist=True)
    h.call(P, "bye")
    h.plugin(P, "p")
    with pytest.raises(RemoteError) as caught:
        h.call(P, "declare", name="p/x", type="str", persist=True)
    assert caught.value.code == "type_mismatch"
    assert "stored as float, not str" in caught.value.message
    assert "kept" in caught.value.message
    assert h.call(C, "get", target="p/x")["value"] == 1.5


def test_delete_removes_the_stored_value(h: Harness) -> None:
    h.call(P, "declare", name="p/x", type="int", value=1, persist=True)
    h.call(P, "delete", target="p/x")
    store = h.core.persistence
    assert store is not None
    store.commit()
    assert [r.name for r in store.load()] == []
