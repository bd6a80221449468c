"""Finding the properties a pattern matches."""

from __future__ import annotations

from plugboard.broker.datastore import Datastore
from plugboard.protocol.declaration import parse_meta
from plugboard.protocol.values import ValueType


def test_matching_reads_the_named_namespace_and_forgets_removed_properties() -> None:
    store = Datastore()
    for name in ("a/x", "a/y/z", "b/x", "ab/x"):
        store.add(name, ValueType.INT, parse_meta(ValueType.INT, {}), name.split("/")[0])

    def names(pattern: str) -> list[str]:
        return sorted(p.name for p in store.matching(pattern))

    assert names("a/#") == ["a/x", "a/y/z"]
    assert names("a/+") == ["a/x"]
    assert names("+/x") == ["a/x", "ab/x", "b/x"]
    assert names("#") == ["a/x", "a/y/z", "ab/x", "b/x"]
    assert names("c/#") == []
    store.remove(store.by_name["a/x"])
    assert names("a/#") == ["a/y/z"]
    store.remove(store.by_name["a/y/z"])
    assert names("a/#") == [] and names("#") == ["ab/x", "b/x"]
