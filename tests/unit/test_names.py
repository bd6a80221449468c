import pytest

from plugboard.broker.subscriptions import PatternIndex
from plugboard.protocol import ProtocolError, matches, validate_name, validate_pattern
from plugboard.protocol.names import validate_plugin_name


@pytest.mark.parametrize("name", ["a", "clock/time", "sysmon/cpu/0", "a_b/c-d/e.f", "x/1"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", ["", "/a", "a/", "a//b", "a/+", "a/#", "a b", "a/.x",
                                  "ü", "a/" * 20 + "a", "x" * 256, 5])
def test_invalid_names_say_why(name: object) -> None:
    with pytest.raises(ProtocolError) as caught:
        validate_name(name)
    assert caught.value.code == "invalid_name"
    assert caught.value.message


@pytest.mark.parametrize("pattern", ["#", "+", "a/#", "a/+/c", "+/+/#"])
def test_valid_patterns(pattern: str) -> None:
    assert validate_pattern(pattern) == pattern


@pytest.mark.parametrize("pattern", ["#/a", "a/#/b", "a//b", "a/b+", ""])
def test_invalid_patterns(pattern: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        validate_pattern(pattern)
    assert caught.value.code == "invalid_pattern"


@pytest.mark.parametrize("pattern,name,expected", [
    ("#", "a/b", True), ("a/#", "a", True), ("a/#", "a/b/c", True), ("a/#", "b", False),
    ("a/+", "a/b", True), ("a/+", "a/b/c", False), ("a/+", "a", False),
    ("+/b", "a/b", True), ("a/b", "a/b", True), ("a/b", "a/c", False),
])
def test_matching(pattern: str, name: str, expected: bool) -> None:
    assert matches(pattern, name) is expected
    index: PatternIndex[str] = PatternIndex()
    index.add(pattern, "x")
    assert (index.match(name) == ["x"]) is expected


def test_pattern_index_remove_prunes_and_keeps_others() -> None:
    index: PatternIndex[int] = PatternIndex()
    index.add("a/+/c", 1)
    index.add("a/#", 2)
    index.remove("a/+/c", 1)
    index.remove("missing/x", 3)
    assert index.match("a/b/c") == [2]
    index.remove("a/#", 2)
    assert index.match("a/b/c") == [] and not index._root.children


@pytest.mark.parametrize("name", ["system", "Clock", "1abc", "a/b", ""])
def test_plugin_names(name: str) -> None:
    with pytest.raises(ProtocolError):
        validate_plugin_name(name)
