"""Subscriptions: which properties a peer watches and what it has not been sent yet.

A subscription never holds unbounded memory. Under policy ``latest`` it keeps at most
one pending change per property (later writes replace earlier ones, and the number
replaced is reported as ``coalesced``). Under ``all`` it keeps an ordered queue up to
``queue_limit`` changes and within its peer's byte budget (:class:`QueueBudget`); what
overflows is dropped and reported as ``gap``. A batch closes at BATCH_ITEMS items or
about BATCH_BYTES, so no single frame to a slow peer is large.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

from plugboard.protocol.changes import HANDLE, NAME, ChangesBatch, Item
from plugboard.protocol.codec import encode_value
from plugboard.protocol.limits import BATCH_ITEMS, SNAPSHOT_CHUNK
from plugboard.protocol.values import Duration, Timestamp

from .sessions import QueueBudget

if TYPE_CHECKING:
    from .datastore import Property

BATCH_BYTES: Final = 16 * 1024
"""A ``changes`` batch closes once its items reach about this many bytes: small, since
ZeroMQ holds up to send_hwm frames for a peer whatever their size."""
_ITEM_OVERHEAD: Final = 24

T = TypeVar("T")

POLICY_LATEST: Final = "latest"
POLICY_ALL: Final = "all"


class _Node(Generic[T]):
    __slots__ = ("children", "items")

    def __init__(self) -> None:
        self.children: dict[str, _Node[T]] = {}
        self.items: dict[T, None] = {}


class PatternIndex(Generic[T]):
    """A trie of patterns, so matching a name costs its depth, not the number of patterns."""

    def __init__(self) -> None:
        self._root: _Node[T] = _Node()

    def add(self, pattern: str, item: T) -> None:
        node = self._root
        for segment in pattern.split("/"):
            node = node.children.setdefault(segment, _Node())
        node.items[item] = None

    def remove(self, pattern: str, item: T) -> None:
        segments = pattern.split("/")
        path = [self._root]
        for segment in segments:
            child = path[-1].children.get(segment)
            if child is None:
                return
            path.append(child)
        path[-1].items.pop(item, None)
        for depth in range(len(segments), 0, -1):  # prune emptied nodes, deepest first
            node = path[depth]
            if node.items or node.children:
                break
            del path[depth - 1].children[segments[depth - 1]]

    def match(self, name: str) -> list[T]:
        found: list[T] = []
        self._match(self._root, name.split("/"), 0, found)
        return found

    def _match(self, node: _Node[T], parts: list[str], index: int, found: list[T]) -> None:
        rest = node.children.get("#")
        if rest is not None:
            found.extend(rest.items)
        if index == len(parts):
            found.extend(node.items)
            return
        exact = node.children.get(parts[index])
        if exact is not None:
            self._match(exact, parts, index + 1, found)
        one = node.children.get("+")
        if one is not None:
            self._match(one, parts, index + 1, found)


def approx_size(value: Any) -> int:
    """About the bytes ``value`` takes encoded: cheap, for budgets and batch sizes."""
    kind = type(value)
    if kind is str or kind is bytes:
        return len(value) + 5
    if kind is list:
        return 5 + sum(map(approx_size, value))
    if kind is dict:
        return 5 + sum(len(key) + 5 + approx_size(item) for key, item in value.items())
    return 9


class _LastTimestamp:
    """The last write time made into a timestamp: the items of one set_many share one
    time, so subscribers without ``timestamp_ns`` get one Timestamp for all of them."""

    __slots__ = ("at", "ns")

    def __init__(self) -> None:
        self.ns = -1
        self.at = Timestamp(0, 0)


_LAST_TIMESTAMP: Final = _LastTimestamp()


def _timestamp(ns: int) -> Timestamp:
    """``Timestamp.from_unix_nano(ns)``, made once for a run of items of the same time."""
    last = _LAST_TIMESTAMP
    if ns != last.ns:
        last.at = Timestamp.from_unix_nano(ns)
        last.ns = ns
    return last.at


class Written:
    """One write as every subscriber under policy ``all`` queues it: the item array and
    its size are made once per write, however many subscribers there are, and not at
    all when none keeps every change (``latest`` builds its items when it flushes).
    Queued by several subscribers, it is also encoded once (:meth:`shared`) and the
    bytes spliced into each batch; queued by one, it is encoded with its batch, in the
    one msgpack call that is cheaper than a call per item. Each form of an item's time
    (a timestamp, or nanoseconds for ``timestamp_ns``) has its own item, encoding and
    count, in slots rather than pairs: one is built per write and property."""

    __slots__ = ("_item", "_item_ns", "_packed", "_packed_ns", "_prop", "_size", "queued",
                 "queued_ns")

    def __init__(self, prop: Property) -> None:
        self._prop = prop
        self._item: Item | None = None
        self._item_ns: Item | None = None
        self._packed: bytes | None = None
        self._packed_ns: bytes | None = None
        self._size = -1
        self.queued = 0
        """How many subscriptions queued it with the time as a timestamp."""
        self.queued_ns = 0
        """How many queued it with the time as nanoseconds."""

    def item(self, ns: bool) -> Item:
        """``[handle, value, revision, time]``, the time as a timestamp or (``ns``) as
        nanoseconds since the epoch."""
        prop = self._prop
        if ns:
            if self._item_ns is None:
                self._item_ns = [prop.handle, prop.value, prop.revision, prop.changed_ns]
            return self._item_ns
        if self._item is None:
            self._item = [prop.handle, prop.value, prop.revision, _timestamp(prop.changed_ns)]
        return self._item

    def count(self, ns: bool) -> None:
        """One more subscription queued the item of this form."""
        if ns:
            self.queued_ns += 1
        else:
            self.queued += 1

    def shared(self, ns: bool) -> bytes | None:
        """The item of this form encoded, if more than one subscription queued it (the
        bytes are spliced into each one's batch: ChangesBatch.frame); else None."""
        if ns:
            if self.queued_ns < 2:
                return None
            if self._packed_ns is None:
                self._packed_ns = encode_value(self.item(True))
            return self._packed_ns
        if self.queued < 2:
            return None
        if self._packed is None:
            self._packed = encode_value(self.item(False))
        return self._packed

    @property
    def size(self) -> int:
        if self._size < 0:
            self._size = approx_size(self._prop.value) + _ITEM_OVERHEAD
        return self._size


def _shared_encodings(queued: list[Written | None], ns: bool) -> list[bytes | None] | None:
    """Each item's encoding where its write went to more than one subscriber (None
    where not); None when no item is shared, so the batch is encoded in one call."""
    packed: list[bytes | None] = []
    shared = False
    for written in queued:
        done = None if written is None else written.shared(ns)
        packed.append(done)
        if done is not None:
            shared = True
    return packed if shared else None


def _cuts(sizes: list[int], max_items: int = BATCH_ITEMS) -> list[tuple[int, int]]:
    """Where items of these sizes are cut into batches of at most ``max_items`` and
    about BATCH_BYTES each: (start, end) of each batch."""
    if len(sizes) <= 1:
        return [(0, len(sizes))]
    cuts: list[tuple[int, int]] = []
    start = total = 0
    for index, size in enumerate(sizes):
        if index > start and (index - start >= max_items or total + size > BATCH_BYTES):
            cuts.append((start, index))
            start, total = index, 0
        total += size
    cuts.append((start, len(sizes)))
    return cuts


def _numeric(value: Any) -> float | None:
    if isinstance(value, Duration):
        return value.ns
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    return None


class Subscription:
    """One subscriber's view of a pattern, with its pending changes and counters."""

    __slots__ = (
        "_all",
        "_all_bytes",
        "_all_written",
        "_all_sizes",
        "budget",
        "_last_value",
        "_latest",
        "_named",
        "_removed",
        "coalesced",
        "deadband",
        "due_at",
        "gap",
        "min_interval",
        "pattern",
        "peer",
        "policy",
        "properties",
        "queue_limit",
        "seq",
        "sid",
        "timestamp_ns",
    )

    def __init__(
        self, sid: int, peer: bytes, pattern: str, *, queue_limit: int,
        policy: str = POLICY_LATEST, min_interval: float = 0.0,
        deadband: float | None = None, budget: QueueBudget | None = None,
        timestamp_ns: bool = False,
    ) -> None:
        # The required keyword first: mypyc's signature text breaks on a required
        # keyword-only argument after one with a default.
        self.sid = sid
        self.peer = peer
        self.pattern = pattern
        self.policy = policy
        self.queue_limit = queue_limit
        self.min_interval = min_interval
        self.deadband = deadband
        self.timestamp_ns = timestamp_ns
        """Items carry their time as nanoseconds since the epoch, not as a timestamp."""
        self.properties: dict[Property, None] = {}
        self.seq = 0
        self._latest: dict[Property, None] = {}
        self._all: list[Item] = []
        self._all_written: list[Written | None] = []
        """Beside ``_all``, each queued item's write, for its shared encoding (None for
        an item of its own); empty until an item of a shared write is queued."""
        self._all_sizes: list[int] = []
        self._all_bytes = 0
        self.budget = budget or QueueBudget(2**62)
        """Shared by every subscription of one peer: what they queue counts against it."""
        self._removed: list[list[Any]] = []
        self.gap = 0
        self.coalesced = 0
        self._named: set[int] = set()
        self._last_value: dict[int, float] = {}
        self.due_at = 0.0
        """Monotonic time before which no batch is sent (min_interval)."""

    def discard(self) -> None:
        """Give back what the queue holds of the budget (the subscription is dropped)."""
        self.budget.used -= self._all_bytes
        self._all, self._all_written, self._all_sizes, self._all_bytes = [], [], [], 0

    @property
    def pending(self) -> bool:
        return bool(self._latest or self._all or self._removed or self.gap)

    def _item(self, prop: Property, value: Any, revision: int, at_ns: int) -> list[Any]:
        time: Any = at_ns if self.timestamp_ns else _timestamp(at_ns)
        if prop.handle in self._named:
            return [prop.handle, value, revision, time]
        self._named.add(prop.handle)
        return [prop.handle, value, revision, time, prop.name]

    def _passes_deadband(self, prop: Property) -> bool:
        if self.deadband is None:
            return True
        number = _numeric(prop.value)
        if number is None:
            return True
        last = self._last_value.get(prop.handle)
        if last is not None and abs(number - last) < self.deadband:
            return False
        self._last_value[prop.handle] = number
        return True

    def offer(self, prop: Property, written: Written | None) -> bool:
        """Queue the property's current value; True if something is now pending.
        ``written`` is the write as queues under policy ``all`` share it; None for a
        write no other subscription queues (its item is built here: no object per
        write besides it) and under ``latest``."""
        if not self._passes_deadband(prop):
            return False
        if self.policy == POLICY_LATEST:
            if prop in self._latest:
                self.coalesced += 1
            else:
                self._latest[prop] = None
            return True
        size = approx_size(prop.value) + _ITEM_OVERHEAD if written is None else written.size
        if len(self._all) >= self.queue_limit or not self.budget.fits_change(size):
            self.gap += 1
            self.budget.dropped += 1
            return True
        queued = self._all_written
        if written is not None and prop.handle in self._named:
            if not queued and self._all:  # the first shared one: those before are not
                queued = self._all_written = [None] * len(self._all)
            ns = self.timestamp_ns
            self._all.append(written.item(ns))
            queued.append(written)
            written.count(ns)
        else:  # an item of its own: the write is not shared, or it carries the name
            self._all.append(self._item(prop, prop.value, prop.revision, prop.changed_ns))
            if queued:
                queued.append(None)
        self._all_sizes.append(size)
        self._all_bytes += size
        self.budget.used += size
        return True

    def offer_removal(self, prop: Property) -> None:
        self._latest.pop(prop, None)
        self.properties.pop(prop, None)
        self._named.discard(prop.handle)
        self._last_value.pop(prop.handle, None)
        self._removed.append([prop.handle, prop.name])

    def snapshot(self, props: list[Property]) -> list[ChangesBatch]:
        """Batches of current values, the last one marked ``synced``."""
        items, sizes = [], []
        for prop in props:
            self._passes_deadband(prop)
            items.append(self._item(prop, prop.value, prop.revision, prop.changed_ns))
            sizes.append(approx_size(prop.value) + _ITEM_OVERHEAD)
        batches = []
        for start, end in _cuts(sizes, SNAPSHOT_CHUNK):
            self.seq += 1
            batches.append(ChangesBatch(self.sid, self.seq, items[start:end], snapshot=True))
        batches[-1].synced = True
        return batches

    def _batches(self, items: list[Item], packed: list[bytes | None] | None,
                 sizes: list[int], first: int, end: int) -> list[ChangesBatch]:
        """Items ``first``..``end`` in numbered batches (one, empty, if there are none)."""
        batches = []
        for start, stop in _cuts(sizes[first:end]):
            start, stop = start + first, stop + first
            self.seq += 1
            batches.append(ChangesBatch(self.sid, self.seq, items[start:stop],
                                        packed=None if packed is None else packed[start:stop]))
        return batches

    def take(self, now: float) -> list[ChangesBatch]:
        """The pending changes in batches; empties the queue."""
        if now < self.due_at:
            return []
        packed: list[bytes | None] | None = None
        if self.policy == POLICY_LATEST:
            items = [self._item(p, p.value, p.revision, p.changed_ns) for p in self._latest]
            sizes = [approx_size(item[1]) + _ITEM_OVERHEAD for item in items]
            self._latest.clear()
        else:
            items, self._all = self._all, []
            if self._all_written:
                packed = _shared_encodings(self._all_written, self.timestamp_ns)
                self._all_written = []
            sizes, self._all_sizes = self._all_sizes, []
            self.budget.used -= self._all_bytes
            self._all_bytes = 0
        # A property removed and declared again under its name (a new handle) since the
        # last batch: its removal closes a batch and the new handle's items follow in
        # the next (removals in a batch come after its items).
        again = len(items)
        if self._removed:
            names = {name for _handle, name in self._removed}
            handles = {handle for handle, _name in self._removed}
            again = next((index for index, item in enumerate(items)
                          if len(item) > NAME and item[NAME] in names
                          and item[HANDLE] not in handles), len(items))
        batches = self._batches(items, packed, sizes, 0, again)
        last = batches[-1]
        last.removed, self._removed = self._removed, []
        last.gap, self.gap = self.gap, 0
        last.coalesced, self.coalesced = self.coalesced, 0
        if again < len(items):
            batches += self._batches(items, packed, sizes, again, len(items))
        if self.min_interval:
            self.due_at = now + self.min_interval
        return batches
