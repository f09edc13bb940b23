"""Restart policy: what a worker's unwanted exit means, and how long to wait before the next.

Two kinds of failure:

- a **start failure**: the worker never became READY (start timeout, start() raised, exited
  before READY), or died within ``min_uptime`` of becoming READY (a crash loop). These count
  within ``restart_window``; each waits twice as long as the one before (from
  ``backoff_initial``, capped at ``backoff_max``, with jitter); more than ``max_restarts`` of
  them make the slot FATAL;
- a **crash**: the worker had been READY for ``min_uptime`` or longer (killed, segfault, OOM,
  an exit nobody asked for). It is counted, the start failures are forgotten, and the
  replacement starts after ``backoff_initial``: a crash never makes a slot FATAL by itself.

FATAL is retried after ``fatal_retry`` seconds (0: never), with the policy applied from the
start again. Pure: it takes ``now`` and a random source, so tests step it with a fake clock.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

START_FAILURE, CRASH = "start_failure", "crash"


@dataclass
class RestartPolicy:
    max_restarts: int
    restart_window: float
    backoff_initial: float
    backoff_max: float
    min_uptime: float = 10.0
    fatal_retry: float = 300.0
    rng: random.Random = field(default_factory=random.Random)
    failures: deque = field(default_factory=deque)  # start failures: (time, reason), oldest first
    crashes: int = 0

    @classmethod
    def of(cls, service) -> "RestartPolicy":
        return cls(service.max_restarts, service.restart_window, service.backoff_initial,
                   service.backoff_max, service.min_uptime, service.fatal_retry)

    def kind(self, ready_for: float | None) -> str:
        """A crash if the worker had been READY ``min_uptime`` or longer, else a start failure."""
        return CRASH if ready_for is not None and ready_for >= self.min_uptime else START_FAILURE

    def record_exit(self, now: float, reason: str, ready_for: float | None) -> float | None:
        """Count an unwanted exit; return the delay before the next start, or None for FATAL.
        ``ready_for``: how long the worker had been READY (None: it never was)."""
        if self.kind(ready_for) == CRASH:
            self.crashes += 1
            self.failures.clear()
            return self.backoff_initial
        return self.record_failure(now, reason)

    def record_failure(self, now: float, reason: str) -> float | None:
        """Count a start failure; return the delay before the next start, or None for FATAL."""
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

    def retry_at(self, now: float) -> float | None:
        """When a slot that became FATAL at ``now`` is tried again (None: never)."""
        return now + self.fatal_retry if self.fatal_retry > 0 else None

    def recent(self, now: float) -> list[tuple[float, str]]:
        self._forget_before(now - self.restart_window)
        return list(self.failures)

    def reset(self):
        """Forget past start failures (an operator's start, a FATAL retry)."""
        self.failures.clear()

    def _forget_before(self, horizon: float):
        while self.failures and self.failures[0][0] < horizon:
            self.failures.popleft()
