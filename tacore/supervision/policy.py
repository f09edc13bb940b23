"""Restart policy: exponential backoff with jitter, and FATAL after too many fast failures.

Pure: it takes ``now`` and a random source, so tests step it with a fake clock.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field


@dataclass
class RestartPolicy:
    max_restarts: int
    restart_window: float
    backoff_initial: float
    backoff_max: float
    rng: random.Random = field(default_factory=random.Random)
    failures: deque = field(default_factory=deque)  # (time, reason), oldest first

    def record_failure(self, now: float, reason: str) -> float | None:
        """Count a failure; return the delay before the next start, or None for FATAL."""
        self.failures.append((now, reason))
        self._forget_before(now - self.restart_window)
        if len(self.failures) > self.max_restarts:
            return None
        return self.delay(len(self.failures))

    def delay(self, attempt: int) -> float:
        """Backoff for the n-th failure in the window: doubling from backoff_initial, capped,
        with "equal jitter" (between half and all of it) so crash-looping slots spread out."""
        ceiling = min(self.backoff_max, self.backoff_initial * 2 ** (attempt - 1))
        return ceiling / 2 + self.rng.uniform(0, ceiling / 2)

    def recent(self, now: float) -> list[tuple[float, str]]:
        self._forget_before(now - self.restart_window)
        return list(self.failures)

    def reset(self):
        """Forget past failures (an operator cleared FATAL)."""
        self.failures.clear()

    def _forget_before(self, horizon: float):
        while self.failures and self.failures[0][0] < horizon:
            self.failures.popleft()
