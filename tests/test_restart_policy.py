"""The restart policy against real processes: crashes of a healthy worker never make it FATAL,
a crash loop does, and FATAL heals by itself after fatal_retry."""

import os
import signal
import time

from tests.helpers import wait_until
from tests.mdp import call


def frontend(d) -> str:
    return f"ipc://{d.runtime}/frontend.sock"


def test_ten_kills_of_a_healthy_worker_are_ten_replacements(start_daemon):
    """READY for longer than min_uptime, then SIGKILLed, ten times: replaced every time after
    backoff_initial, never FATAL, though max_restarts is 2."""
    d = start_daemon({"echo": {"handler": "tests.workers:Echo", "min_uptime": 0.3,
                               "max_restarts": 2, "backoff_initial": 0.05}})
    replaced = []
    for kill in range(10):
        wait_until(lambda: (w := d.workers("echo")[0])["state"] == "READY"
                   and w["state_for"] > 0.4, 5, "min_uptime of READY")
        pid = d.workers("echo")[0]["pid"]
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        wait_until(lambda: (w := d.workers("echo")[0])["state"] == "READY" and w["pid"] != pid,
                   5, f"replacement {kill + 1}")
        replaced.append(time.monotonic() - t0)
    worker = d.workers("echo")[0]
    assert worker["crashes"] == 10 and worker["restarts"] == 10
    assert worker["last_exit"] == {**worker["last_exit"], "signal": "SIGKILL", "by": None,
                                   "reason": "crashed"}
    assert not d.events("worker.fatal")
    assert all(e["kind"] == "crash" and e["delay"] == 0.05
               for e in d.events("worker.backoff", service="echo"))
    assert call(frontend(d), "echo", "echo", 1) == ("200", 1)
    print("replacement after SIGKILL (s):", [round(t, 3) for t in replaced])


def test_a_crash_loop_after_ready_ends_in_fatal(start_daemon):
    """Each worker dies 0.1 s after READY, within min_uptime: start failures, then FATAL."""
    d = start_daemon({"flaky": {"handler": "tests.workers:CrashesLater", "min_uptime": 5,
                                "max_restarts": 2, "fatal_retry": 0,
                                "config": {"after": 0.1}}}, wait_ready=False)
    fatal = d.wait_event("worker.fatal", service="flaky", timeout=20)[0]
    assert "3 start failures" in fatal["reason"] and fatal["retry_in"] is None
    assert all(e["kind"] == "start_failure" for e in d.events("worker.exited", service="flaky"))
    worker = d.workers("flaky")[0]
    assert worker["state"] == "FATAL" and worker["crashes"] == 0
    assert worker["next_retry_in"] is None  # fatal_retry = 0: never by itself


def test_fatal_heals_by_itself_after_fatal_retry(start_daemon, workdir):
    """start() fails while a marker file exists: FATAL; once the file is gone, the next
    fatal_retry starts it, it serves "200", and worker.recovered is logged."""
    marker = workdir / "database-down"
    marker.touch()
    d = start_daemon({"db": {"handler": "tests.workers:FailsWhileFileExists", "max_restarts": 1,
                             "fatal_retry": 1.5, "config": {"path": str(marker)}}},
                     wait_ready=False)
    d.wait_event("worker.fatal", service="db", timeout=20)
    worker = d.workers("db")[0]
    assert worker["state"] == "FATAL" and 0 < worker["next_retry_in"] <= 1.5
    assert call(frontend(d), "db", "echo", 1)[0] == "503"  # service_fatal, as before
    assert "retried by itself" in d.call("health")["problems"][0]
    d.wait_event("worker.fatal_retry", service="db", timeout=5)  # still failing: FATAL again
    d.wait_event("worker.fatal", service="db", count=2, timeout=10)
    marker.unlink()
    t0 = time.monotonic()
    recovered = d.wait_event("worker.recovered", service="db", timeout=10)[0]
    wait_until(lambda: call(frontend(d), "db", "echo", 2, timeout=2) == ("200", 2), 5,
               '"200" again')
    took = time.monotonic() - t0
    assert took < 1.5 + 2, took
    assert recovered["after_fatal"] > 0
    assert d.workers("db")[0]["state"] == "READY" and d.call("health")["healthy"]
    print(f'dependency back to "200": {took:.3f}s (fatal_retry 1.5s)')
