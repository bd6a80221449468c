"""The SDK's view of a batch: raw items, and Change records built on demand."""

from __future__ import annotations

from plugboard.protocol.values import Timestamp
from plugboard.sdk import Batch, Change, Gap, Removed, Synced
from plugboard.sdk._queue import CLOSED, EventQueue


def test_a_batch_gives_each_item_time_as_a_timestamp_in_either_wire_form() -> None:
    """The SDK subscribes with ``timestamp_ns`` (integer nanoseconds); a broker that
    predates the option sends timestamps. A Change carries a Timestamp either way."""
    at = Timestamp(1_700_000_000, 123)
    batch = Batch([[1, 5, 2, at.to_unix_nano()], [2, at, 3, at]], ["p/a", "p/b"], False)
    assert list(batch) == [Change("p/a", 1, 5, 2, at), Change("p/b", 2, at, 3, at)]
    assert batch[0].timestamp == at and type(batch[0].timestamp) is Timestamp
    assert batch.items[0][3] == 1_700_000_000_000_000_123  # the wire's array, untouched


def _batch(*values: int) -> Batch:
    return Batch([[1, v, v, 0] for v in values], ["p/a"] * len(values), False)


def test_a_queue_past_its_limit_drops_until_its_reader_catches_up_then_says_how_many() -> None:
    queue = EventQueue(limit=5)
    queue.put_many([_batch(1, 2, 3)])
    assert queue.take_one().value == 1  # a reader part-way through a batch
    queue.put_many([_batch(4, 5), Synced()])
    assert queue.pending == 5 and not queue.dropped
    queue.put_many([_batch(6, 7)])  # 7 > 5: what waits (2, 3, 4, 5, 6, 7) is dropped
    assert queue.pending == 1 and queue.dropped == 6
    queue.put_many([_batch(8), Removed("p/a", 1), Gap(4, "at the broker")])
    queue.put(CLOSED)  # the end mark is kept
    assert queue.dropped == 6 + 1 + 1 + 4
    gap = queue.take_batch()
    assert isinstance(gap, Gap) and gap.count == 12 and "fell behind" in gap.reason
    assert queue.remake and queue.ended and queue.pending == 0


def test_a_caught_up_queue_keeps_again_and_counts_what_it_holds() -> None:
    queue = EventQueue(limit=3)
    queue.put_many([_batch(1, 2, 3, 4)])
    assert isinstance(queue.take_one(), Gap)
    queue.remake = False  # the owner made its subscription again
    queue.put_many([_batch(5, 6), Synced()])
    assert queue.pending == 3 and not queue.dropped
    assert [c.value for c in queue.take_batch()] == [5, 6] and queue.pending == 1
    assert isinstance(queue.take_one(), Synced) and queue.pending == 0 and not queue


def test_an_unbounded_queue_never_drops() -> None:
    queue = EventQueue(limit=None)
    queue.put_many([_batch(*range(1000))] * 200)
    assert queue.pending == 200_000 and not queue.dropped
