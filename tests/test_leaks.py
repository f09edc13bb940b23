"""A thousand worker restarts leave the daemon's descriptors, threads and memory where they were."""

import psutil
import pytest

from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(180)
# What the daemon holds per live worker: its pidfd, stack pipe, stdout and stderr pipes.
FDS_PER_WORKER = 4


def figures(pid: int) -> dict:
    p = psutil.Process(pid)
    return {"fds": p.num_fds(), "threads": p.num_threads(), "rss": p.memory_info().rss}


def restarts(d) -> int:
    return sum(w["restarts"] for w in d.workers("crashy"))


def test_a_thousand_restarts_leak_nothing(start_daemon):
    """A crash loop with FATAL out of reach: 1000 restarts, then the same fds and threads,
    and RSS within a few MB of the figures after the first 100."""
    d = start_daemon({"crashy": {"handler": "tests.workers:CrashesLater", "workers": 2,
                                 "config": {"after": 0.0}, "max_restarts": 10**9,
                                 "restart_window": 0.001, "backoff_initial": 0.001,
                                 "backoff_max": 0.001}},
                     daemon={"log_level": "error"}, state={"enabled": False},
                     wait_ready=False)
    wait_until(lambda: restarts(d) >= 100, 60, "100 restarts")
    before = figures(d.proc.pid)
    wait_until(lambda: restarts(d) >= 1000, 150, "1000 restarts")
    wait_until(lambda: len(d.worker_processes()) == 2, 10, "two live workers at a moment")
    after = figures(d.proc.pid)
    print(before, after)
    # Either moment may catch 0-2 workers mid-restart, each with its descriptors:
    assert abs(after["fds"] - before["fds"]) <= 2 * FDS_PER_WORKER, (before, after)
    assert after["threads"] == before["threads"]
    assert after["rss"] < before["rss"] + 8 * 2**20, (before, after)
