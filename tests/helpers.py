"""Waiting for a condition with a deadline: the only way tests wait."""

import time


def wait_until(predicate, timeout: float, what: str = "the condition", interval: float = 0.01):
    """Poll ``predicate`` until it is true; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
