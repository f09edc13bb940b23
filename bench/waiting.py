"""Polling with a deadline, shared by the benchmark scripts (run from bench/, so `import
waiting` finds this file)."""

from __future__ import annotations

import time


def until(predicate, timeout: float, interval: float = 0.002, fail: bool = True):
    """The first true result of ``predicate()`` (exceptions count as false) within
    ``timeout`` seconds; then TimeoutError, or None if not ``fail``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = predicate()
        except Exception:
            result = None
        if result:
            return result
        time.sleep(interval)
    if fail:
        raise TimeoutError("condition not reached")
    return None
