"""Property values as JSON, for the dashboard and the MQTT bridge."""

import pytest

from plugboard.protocol import Duration, ProtocolError, Timestamp
from plugboard.protocol.json_values import from_json, from_text, to_json


def test_values_become_json_and_come_back_by_their_type() -> None:
    stamp = Timestamp.from_unix_nano(1_700_000_000_500_000_000)
    assert to_json(stamp) == "2023-11-14T22:13:20.500000+00:00"
    assert from_json("timestamp", to_json(stamp)) == stamp
    assert to_json(Duration.from_seconds(1.5)) == 1.5
    assert from_json("duration", 1.5) == Duration.from_seconds(1.5)
    assert from_json("bytes", to_json(b"\x00\xff")) == b"\x00\xff"
    assert to_json({"a": [Duration(0)]}) == {"a": [0.0]}
    assert from_json("float", 3) == 3.0 and isinstance(from_json("float", 3), float)


def test_typed_text_is_parsed_for_the_declared_type() -> None:
    assert from_text("str", " 25 ") == " 25 "
    assert from_text("float", "25") == 25.0
    assert from_text("bool", "true") is True
    assert from_text("list", "[1, 2]") == [1, 2]
    with pytest.raises(ProtocolError, match="expected int, got str"):
        from_text("int", "warm")
    with pytest.raises(ValueError, match="ISO 8601"):
        from_text("timestamp", "yesterday")
