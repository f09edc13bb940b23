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


def test_a_stable_workers_crashes_never_make_it_fatal():
    """Deaths after min_uptime of READY are crashes: counted, replaced after backoff_initial,
    and they forget the start failures before them."""
    p = policy(min_uptime=10.0)
    assert p.record_exit(1000.0, "start_timeout", None) is not None  # a start failure first
    for i in range(50):
        assert p.kind(10.0 + i) == "crash"
        assert p.record_exit(1001.0 + i, "crashed", ready_for=10.0 + i) == 0.5
    assert p.crashes == 50 and p.recent(1051.0) == []


def test_a_crash_loop_after_ready_is_a_start_failure():
    """Each death within min_uptime of READY counts like a failed start: FATAL in the end."""
    p = policy(min_uptime=10.0)
    delays = [p.record_exit(1000.0 + i, "crashed", ready_for=0.2) for i in range(4)]
    assert delays[:3] == sorted(delays[:3]) and None not in delays[:3]
    assert delays[3] is None and p.crashes == 0


def test_fatal_is_retried_after_fatal_retry_with_the_policy_from_the_start():
    p = policy(fatal_retry=300.0)
    for i in range(4):
        delay = p.record_failure(1000.0 + i, "start_failed")
    assert delay is None and p.retry_at(1003.0) == 1303.0
    p.reset()  # the retry
    assert p.record_failure(1303.5, "start_failed") <= 0.5  # the first delay again
    assert policy(fatal_retry=0.0).retry_at(1003.0) is None  # 0: never


def test_a_retry_that_recovers_starts_clean():
    """After a retry that became READY, a later crash is a crash, not the 4th start failure."""
    p = policy(min_uptime=1.0)
    for i in range(4):
        p.record_failure(1000.0 + i, "start_failed")
    p.reset()
    assert p.record_exit(1400.0, "crashed", ready_for=5.0) == 0.5
    assert p.record_exit(1401.0, "crashed", ready_for=0.1) is not None  # 1st start failure
