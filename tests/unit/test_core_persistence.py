"""Persistent properties in the core: kept dormant between sessions, restored on declare."""

from pathlib import Path

import pytest

from plugboard.broker.store import Store
from plugboard.protocol import RemoteError, decode

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
    assert h.call(C, "list", pattern="p/#")["items"] == [dormant]  # list items as get
    h.clock.advance(1)
    h.call(C, "set", target="p/set", value=23.0)  # allowed while the plugin is away
    h.plugin(P, "p")
    back = h.call(P, "declare", name="p/set", type="float", value=20.0, persist=True,
                  writable_by="clients")
    assert back["value"] == 23.0 and back["revision"] == 3 and back["restored"]
    assert h.call(C, "get", target="p/set")["live"] is True
    assert [item["live"] for item in h.call(C, "list", pattern="p/#")["items"]] == [True]
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


def test_a_reply_the_store_could_not_keep_becomes_an_error_in_its_place(h: Harness) -> None:
    """The driver replaces, by the frame's identity, each reply acknowledging a write to
    the store with the error settle_store gives; the peer's order stays: a writer that
    also subscribes gets the error, then the batch holding its write (it is in effect)."""
    h.call(P, "declare", name="p/kept", type="int", persist=True, writable_by="clients")
    h.call(P, "declare", name="p/plain", type="int", writable_by="clients")
    h.call(C, "subscribe", pattern="p/#")
    h.notes(C)
    h.core.settle_store()
    conn = h.conns[C]
    frames = [conn.request("set", {"target": "p/kept", "value": 7}),
              conn.request("set", {"target": "p/plain", "value": 8}),
              conn.request("ping", {})]
    for _msgid, frame in frames:
        h.core.receive(C, [frame])
    outgoing = h.core.flush()
    replaced = h.core.settle_store("database or disk is full")
    assert len(replaced) == 1  # the persistent write's reply only
    sent = [decode(replaced.get(id(frame), frame)) for peer, frame in outgoing if peer == C]
    assert [type(m).__name__ for m in sent] == ["Response"] * 3 + ["Notification"]
    assert sent[0].error["code"] == "internal"
    assert sent[0].error["message"].startswith("not stored: database or disk is full")
    assert sent[1].error is None and sent[2].error is None
    assert [item[1] for item in sent[3].params["items"]] == [7, 8]  # both in effect
    assert h.core.settle_store("still full") == {}  # settled: nothing left to replace
    assert h.core.persistence is not None and h.core.persistence.dirty  # queued


def test_a_write_sent_as_a_notification_is_told_in_its_place_when_its_commit_fails(
        h: Harness) -> None:
    """No reply to replace: the write holds a place among its writer's frames, which
    becomes its ``error`` if the commit fails (before the reply to a ping sent after
    it) and is dropped once committed. A write that stores nothing holds none."""
    h.call(P, "declare", name="p/kept", type="int", persist=True, writable_by="clients")
    h.call(P, "declare", name="p/plain", type="int", writable_by="clients")
    conn = h.conns[C]
    for failure in ("database or disk is full", None):
        h.core.receive(C, [conn.notification("set", {"target": "p/kept", "value": 7})])
        h.core.receive(C, [conn.notification("set", {"target": "p/plain", "value": 8})])
        h.core.receive(C, [conn.notification("set_many", {"items": [["p/kept", 9]]})])
        _msgid, ping = conn.request("ping", {})
        h.core.receive(C, [ping])
        outgoing = h.core.flush()
        settled = h.core.settle_store(failure)
        sent = [decode(f) for peer, f in ((p, settled.get(id(f), f)) for p, f in outgoing)
                if peer == C and f is not None]
        kinds = [(type(m).__name__, getattr(m, "params", {}).get("method")) for m in sent]
        if failure is None:
            assert kinds == [("Response", None)]  # the ping's reply only
        else:
            assert kinds == [("Notification", "set"), ("Notification", "set_many"),
                             ("Response", None)]
            assert sent[0].params["target"] == "p/kept" and "target" not in sent[1].params
            assert all(m.params["message"].startswith("not stored: database or disk")
                       for m in sent[:2])
    assert h.call(C, "get", target="p/kept")["value"] == 9  # in effect either way
