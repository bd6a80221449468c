"""When to restart a plugin: policy, exponential backoff and flapping detection.

Pure logic on an injected clock, so it is tested without processes or waiting.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Decision:
    restart: bool
    delay: float = 0.0
    failed: bool = False
    """True when the plugin keeps failing and is left down (flapping)."""
    reason: str = ""


class RestartTracker:
    """One per plugin: remembers recent failures to space restarts and spot flapping."""

    def __init__(self, policy: str, *, base_delay: float = 0.5, max_delay: float = 30.0,
                 flap_window: float = 60.0, flap_limit: int = 5) -> None:
        self.policy = policy
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.flap_window = flap_window
        self.flap_limit = flap_limit
        self._failures: deque[float] = deque()
        self.consecutive = 0

    def started_ok(self) -> None:
        """The plugin became ready: the next failure starts the backoff from the base."""
        self.consecutive = 0

    def on_exit(self, now: float, *, failed: bool, requested: bool) -> Decision:
        """Decide after an exit. ``failed``: non-zero status, signal, start failure or a
        limit; ``requested``: a person asked for the stop, which is never undone."""
        if requested:
            return Decision(False, reason="stopped on request")
        if self.policy == "never" or (self.policy == "on-failure" and not failed):
            return Decision(False, reason=f"restart policy {self.policy!r}")
        self._failures.append(now)
        while self._failures and now - self._failures[0] > self.flap_window:
            self._failures.popleft()
        if len(self._failures) > self.flap_limit:
            return Decision(False, failed=True, reason=(
                f"flapping: {len(self._failures)} restarts within {self.flap_window:g} s"))
        delay = min(self.base_delay * 2 ** self.consecutive, self.max_delay)
        self.consecutive += 1
        return Decision(True, delay=delay, reason=f"restart in {delay:g} s")
