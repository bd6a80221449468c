"""The SDK's view of a batch: raw items, and Change records built on demand."""

from __future__ import annotations

from plugboard.protocol.values import Timestamp
from plugboard.sdk import Batch, Change


def test_a_batch_gives_each_item_time_as_a_timestamp_in_either_wire_form() -> None:
    """The SDK subscribes with ``timestamp_ns`` (integer nanoseconds); a broker that
    predates the option sends timestamps. A Change carries a Timestamp either way."""
    at = Timestamp(1_700_000_000, 123)
    batch = Batch([[1, 5, 2, at.to_unix_nano()], [2, at, 3, at]], ["p/a", "p/b"], False)
    assert list(batch) == [Change("p/a", 1, 5, 2, at), Change("p/b", 2, at, 3, at)]
    assert batch[0].timestamp == at and type(batch[0].timestamp) is Timestamp
    assert batch.items[0][3] == 1_700_000_000_000_000_123  # the wire's array, untouched
