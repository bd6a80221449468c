"""Runs protocol/vectors/codec.json, the vectors any implementation can check itself with."""

import json
from pathlib import Path
from typing import Any

import pytest

from plugboard.broker.cli.values import from_json
from plugboard.protocol import (
    ProtocolError,
    Request,
    Response,
    encode_value,
)
from plugboard.protocol.codec import decode

VECTORS = json.loads((Path(__file__).parents[2] / "protocol/vectors/codec.json").read_text())


def as_list(message: Any) -> list[Any]:
    if isinstance(message, Request):
        return [0, message.msgid, message.method, message.params]
    if isinstance(message, Response):
        return [1, message.msgid, message.error, message.result]
    return [2, message.method, message.params]


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_vector(vector: dict[str, Any]) -> None:
    frame = bytes.fromhex(vector["hex"])
    if "error" in vector:
        with pytest.raises(ProtocolError) as caught:
            decode(frame)
        assert caught.value.code == vector["error"], caught.value
        return
    expected = from_json(vector["message"])
    assert as_list(decode(frame)) == expected
    if "note" not in vector:
        assert encode_value(expected).hex() == vector["hex"]


def test_vectors_cover_every_ext_type_and_failure_class() -> None:
    names = " ".join(v["name"] for v in VECTORS["vectors"])
    errors = {v["error"] for v in VECTORS["vectors"] if "error" in v}
    assert "duration" in names and "timestamp 32" in names and "timestamp 96" in names
    assert {"malformed", "invalid_message", "unknown_ext", "too_deep"} <= errors
    assert VECTORS["protocol_version"] == 1
