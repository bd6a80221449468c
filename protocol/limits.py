"""Size and shape limits every peer can rely on (PROTOCOL.md, "Limits").

They are constants of protocol v1, so a plugin in any language can be written against
them; the broker may be configured with a smaller ``max_frame`` and announces the value
it enforces in the ``hello`` reply.
"""

from typing import Final

MAX_FRAME_BYTES: Final = 4 * 1024 * 1024
"""Largest frame a peer may send. The broker disconnects senders of larger frames."""

MAX_DEPTH: Final = 32
"""Deepest nesting of lists and maps in one message, counting the envelope itself."""

MAX_VALUE_DEPTH: Final = 24
"""Deepest nesting of lists and maps inside one property value (a scalar is 0, ``[1]`` is
1). The broker wraps a value in up to 5 levels (a ``changes`` item, a ``list`` reply), so
every value it accepts still fits in a frame of MAX_DEPTH levels for every reader."""

MAX_NAME_BYTES: Final = 255
"""Longest property name, topic or pattern, in UTF-8 bytes."""

MAX_SEGMENTS: Final = 16
"""Most ``/``-separated segments in a name or pattern."""

MAX_MSGID: Final = 2**32 - 1
"""Message ids are unsigned 32-bit integers, as in MessagePack-RPC."""

SNAPSHOT_CHUNK: Final = 1000
"""Current values sent after ``subscribe`` arrive in batches of at most this many."""

BATCH_ITEMS: Final = 1000
"""A ``changes`` notification carries at most this many items."""

LIST_PAGE_BYTES: Final = 1024 * 1024
"""A ``list`` page also ends once its values reach about this many bytes (at least one
item), so a reply never grows with the values stored: the client pages on ``more``."""

DEFAULT_QUEUE_LIMIT: Final = 10_000
"""Default bound of a subscription's queue under policy ``all``."""

MAX_QUEUE_LIMIT: Final = 1_000_000
"""Largest queue bound a subscriber may ask for."""

MAX_MIN_INTERVAL_MS: Final = 3_600_000
"""The longest ``min_interval_ms`` a subscription may ask for (an hour)."""

DEFAULT_CALL_TIMEOUT_MS: Final = 5000
"""How long the broker waits for a plugin to answer a ``call`` unless told otherwise."""

MAX_CALL_TIMEOUT_MS: Final = 300_000
"""The longest ``timeout_ms`` a ``call`` may ask for."""

MAX_CALLS_IN_FLIGHT: Final = 1000
"""Most ``call``s one session may have waiting for their plugins' answers: each is held
by the broker until answered or timed out, so a caller cannot make it hold without end."""
