import collections
import datetime as dt
import enum

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugboard.protocol import (
    Duration,
    Notification,
    ProtocolError,
    Request,
    Response,
    Timestamp,
    decode,
    encode,
)
from plugboard.protocol.codec import decode_value, encode_value, frame_msgid
from plugboard.protocol.limits import MAX_FRAME_BYTES
from plugboard.protocol.malformed import WALK_LIMIT

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False),
    st.text(), st.binary(),
    st.builds(Duration, st.integers(-(2**63), 2**63 - 1)),
    st.builds(Timestamp, st.integers(-(2**40), 2**40), st.integers(0, 999_999_999)),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(), inner, max_size=4), max_leaves=20)


@given(values)
def test_any_value_round_trips(value: object) -> None:
    assert decode_value(encode_value(value)) == value


@given(st.integers(0, 2**32 - 1), st.text(), st.dictionaries(st.text(), values, max_size=3))
def test_envelopes_round_trip(msgid: int, method: str, params: dict) -> None:
    for message in (Request(msgid, method, params), Response(msgid, None, params),
                    Response(msgid, {"code": "x", "message": "y"}, None),
                    Notification(method, params)):
        assert decode(encode(message)) == message


def test_datetime_and_timedelta_encode_as_timestamp_and_duration() -> None:
    when = dt.datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=dt.UTC)
    out = decode_value(encode_value([when, dt.timedelta(seconds=1.5)]))
    assert out == [Timestamp.from_datetime(when), Duration(1_500_000_000)]


def test_subclasses_of_built_in_types_encode_as_their_base_type() -> None:
    class Level(enum.IntEnum):
        HIGH = 3

    class Mode(enum.StrEnum):
        AUTO = "auto"

    class Pair(tuple):  # type: ignore[type-arg]
        pass

    value = [Level.HIGH, Mode.AUTO, collections.OrderedDict(a=1),
             collections.defaultdict(list, b=[Pair((1, 2))]), type("Row", (list,), {})([1]),
             bytearray(b"xy"), type("Ratio", (float,), {})(0.5), True, (4, 5)]
    expected = [3, "auto", {"a": 1}, {"b": [[1, 2]]}, [1], b"xy", 0.5, True, [4, 5]]
    assert encode_value(value) == msgpack.packb(expected, use_bin_type=True)
    assert decode_value(encode_value(value)) == expected


def test_naive_datetime_is_refused_with_a_reason() -> None:
    with pytest.raises(ProtocolError, match="naive datetime"):
        encode_value(dt.datetime(2026, 1, 1))


def test_oversize_frame_is_refused_before_decoding() -> None:
    with pytest.raises(ProtocolError) as caught:
        decode(b"\x00" * (MAX_FRAME_BYTES + 1))
    assert caught.value.code == "too_large"


def test_msgid_is_recovered_from_a_frame_that_fails_validation() -> None:
    frame = msgpack.packb([0, 42, "set", [1, 2]])
    with pytest.raises(ProtocolError):
        decode(frame)
    assert frame_msgid(frame) == (0, 42)
    assert frame_msgid(b"\xc1") is None
    # Whatever follows the msgid: nesting past the decoder's stack, an impossible length,
    # a byte that is not msgpack, the frame cut short.
    for rest in (b"\x91" * 100_000 + b"\xc0", b"\xdf\xff\xff\xff\xff", b"\xc1", b""):
        assert frame_msgid(b"\x94\x00\x07\xa4ping" + rest) == (0, 7)
    assert frame_msgid(msgpack.packb([1, 9, None, {"result": {1: 2}}])) == (1, 9)
    assert frame_msgid(b"\x94\xc2\x07") is None  # false is not a request's 0
    assert frame_msgid(b"\x94\x02\x07") is None  # a notification has no msgid


PING = b"\x94\x00\x07\xa4ping"
"""[0, 7, "ping", ...: a request's first 8 bytes, its params to follow."""


@pytest.mark.parametrize(("frame", "says"), [
    (b"", "empty frame"),
    (PING + b"\x81\xa1a\xc1", "byte 0xc1 at offset 11 starts no msgpack value"),
    (PING + b"\x82\xa1a\x01", "the frame ends at offset 12, inside the map at offset 8: "
     "1 more entry was announced"),
    (PING + b"\xdd\xff\xff\xff\xff", "inside the array at offset 8: 4294967295 more items"),
    (PING + b"\x81\xa1a\xdb\xff\xff\xff\xff",
     "the str at offset 11 runs past the frame's end (16 bytes)"),
    (PING + b"\x81\xa1a\xc9\xff\xff\xff\xff\x05", "the ext at offset 11 runs past"),
    (PING + b"\x81\x01\x02", "the map key at offset 9 is an int: map keys must be strings"),
    (PING + b"\x81\xc4\x01a\x02", "the map key at offset 9 is a bin"),
    (PING + b"\x81\x91\x01\x02", "the map key at offset 9 is an array"),
    (PING + b"\x81\xa1a\xa2\xffx", "the str at offset 11 is not UTF-8 (invalid start byte at "
     "its byte 0)"),
    (PING + b"\x80\xc0\x00", "more than one msgpack object: the first ends at offset 9, "
     "2 bytes more follow"),
])
def test_a_malformed_frame_is_explained_with_its_offset(frame: bytes, says: str) -> None:
    """msgpack's own words ("FormatError()", "incomplete input") say neither what nor
    where; a peer debugging its encoder gets both."""
    with pytest.raises(ProtocolError) as caught:
        decode(frame)
    assert caught.value.code == "malformed"
    assert says in caught.value.message


def test_explaining_a_huge_malformed_frame_stays_cheap() -> None:
    """The walk that finds the offset stops after WALK_LIMIT values: a peer sending 4 MiB
    frames of small values with a bad byte at the end cannot make each cost seconds."""
    frame = msgpack.packb(list(range(100)) * 20_000)[:-1] + b"\xc1"  # 5-byte header
    with pytest.raises(ProtocolError) as caught:
        decode(frame)
    assert caught.value.message == (
        f"a byte that starts no msgpack value, past offset {5 + WALK_LIMIT - 1}: the "
        f"{WALK_LIMIT} values before it are sound")
    with pytest.raises(ProtocolError) as caught:  # a bin map key, found by the shape check
        decode(msgpack.packb([1] * WALK_LIMIT + [{b"key": 1}], use_bin_type=True))
    assert caught.value.message.startswith("map keys must be strings, past offset")


@given(st.binary(max_size=64))
def test_random_bytes_only_ever_raise_protocol_error(data: bytes) -> None:
    try:
        decode(data)
    except ProtocolError:
        pass


def test_duration_helpers() -> None:
    assert Duration.from_seconds(1.5) == Duration(1_500_000_000)
    assert str(Duration(3_723_500_000_000)) == "1h2m3.5s"
    assert str(Duration(-250_000_000)) == "-250ms"
    with pytest.raises(ValueError):
        Duration(2**63)
