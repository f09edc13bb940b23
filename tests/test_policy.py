"""Restart policy with a fake clock: exponential backoff with jitter, FATAL after a burst."""

import random

import pytest

from tacore.supervision.policy import RestartPolicy


def policy(**kw):
    args = dict(max_restarts=3, restart_window=60.0, backoff_initial=0.5, backoff_max=4.0,
                rng=random.Random(7))
    return RestartPolicy(**{**args, **kw})


def test_backoff_doubles_with_jitter_and_is_capped():
    """The n-th delay lies in [c/2, c] for c = min(max, initial * 2^(n-1))."""
    p = policy(max_restarts=100)
    for attempt in range(1, 10):
        ceiling = min(4.0, 0.5 * 2 ** (attempt - 1))
        delays = [p.delay(attempt) for _ in range(200)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
        assert max(delays) - min(delays) > ceiling / 4  # really jittered


def test_fatal_after_more_than_max_restarts_within_window():
    """max_restarts failures back off; the next one in the window is FATAL (None)."""
    p = policy()
    now = 1000.0
    delays = [p.record_failure(now + i, "crashed") for i in range(3)]
    assert all(d is not None for d in delays)
    assert delays[0] <= 0.5 < delays[2]
    assert p.record_failure(now + 3, "crashed") is None


def test_failures_older_than_the_window_are_forgotten():
    """A slot failing slowly (once per window) never goes FATAL and stays at the first delay."""
    p = policy(restart_window=10.0)
    for i in range(20):
        delay = p.record_failure(1000.0 + i * 11.0, "crashed")
        assert delay is not None and delay <= 0.5


def test_recent_reports_reasons_and_reset_clears():
    """recent() lists the failures in the window; reset() forgets them."""
    p = policy()
    p.record_failure(1.0, "start_timeout")
    p.record_failure(2.0, "crashed")
    assert p.recent(3.0) == [(1.0, "start_timeout"), (2.0, "crashed")]
    assert p.recent(61.5) == [(2.0, "crashed")]
    p.reset()
    assert p.recent(62.0) == []


@pytest.mark.parametrize("max_restarts", [0, 1, 5])
def test_zero_restarts_means_first_failure_is_fatal(max_restarts):
    """With max_restarts = N, exactly N failures are retried."""
    p = policy(max_restarts=max_restarts)
    results = [p.record_failure(float(i), "crashed") for i in range(max_restarts + 1)]
    assert all(r is not None for r in results[:-1]) and results[-1] is None
