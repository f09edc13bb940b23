"""Workers' stdout, stderr and stdlib logging: captured by the daemon, attributed, rate-limited,
tailable with `tacorectl logs`. Real daemon, real workers."""

import json
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import wait_until
from tests.mdp import call
from tests.test_cli import TACORECTL, ctl


LINES = 2_000_000  # several seconds of flood: longer than the throughput measurement


def frontend(d) -> str:
    return f"ipc://{d.runtime}/frontend.sock"


def test_prints_stderr_and_logging_are_attributed_once(start_daemon):
    d = start_daemon({"chatty": {"handler": "tests.workers:Chatty"}})
    (worker,) = d.workers("chatty")
    assert call(frontend(d), "chatty", "m", 7) == ("200", 7)
    printed = d.wait_event("worker.output", line="handling m")
    assert [(e["service"], e["slot"], e["pid"], e["stream"]) for e in printed] == [
        ("chatty", 0, worker["pid"], "stdout")]
    assert d.wait_event("worker.output", line="stderr says 7", stream="stderr")
    logged = d.wait_event("worker.log", message="logged m")
    assert len(logged) == 1 and logged[0]["level"] == "error"
    assert logged[0]["logger"] == "chatty" and logged[0]["pid"] == worker["pid"]
    assert d.events("worker.log", message="a library warns", level="warning")  # in start()
    assert d.events("worker.output", line="starting up")
    result = ctl("--config", str(d.config), "logs", "chatty/0", "--json")
    assert result.returncode == 0, result.stderr
    lines = [json.loads(x) for x in result.stdout.splitlines()]
    assert [x["line"] for x in lines if x["stream"] == "stdout"] == ["starting up", "handling m"]
    assert all(x["service"] == "chatty" and x["slot"] == 0 for x in lines)
    text = ctl("--config", str(d.config), "logs", "-n", "1").stdout
    assert text.count("\n") == 1 and "chatty/0 pid" in text


class Lines:
    """A process's stdout lines, read by a thread, so a test can wait for one with a deadline."""

    def __init__(self, stream):
        self.queue: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [self.queue.put(x.rstrip("\n")) for x in stream],
                         daemon=True).start()

    def until(self, predicate, timeout: float) -> list[str]:
        """Every line up to the first at which ``predicate(lines so far)`` holds."""
        seen, deadline = [], time.monotonic() + timeout
        while not (seen and predicate(seen)):
            try:
                seen.append(self.queue.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"no such line within {timeout}s; seen: {seen}") from None
        return seen


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_logs_follow_shows_new_lines_attributed_and_ends_cleanly(start_daemon, stop):
    """logs -f prints what a worker writes after it started, with service, slot, pid and
    stream, and exits 0 with nothing on stderr on Ctrl-C or SIGTERM."""
    d = start_daemon({"chatty": {"handler": "tests.workers:Chatty"}})
    (worker,) = d.workers("chatty")
    # As from a terminal: SIGINT at its default. (A shell starts background jobs with SIGINT
    # ignored, and Python then leaves it ignored: a suite run from such a job would pass that on.)
    follower = subprocess.Popen([TACORECTL, "--control", d.control, "logs", "chatty", "-f",
                                 "-n", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                            signal.SIG_DFL))
    try:
        lines = Lines(follower.stdout)
        lines.until(lambda seen: True, 5)  # the last line so far: it follows from here
        assert call(frontend(d), "chatty", "m", 7) == ("200", 7)
        where = f"chatty/0 pid {worker['pid']}"
        wanted = [f"{where}: handling m", f"{where} !: stderr says 7"]  # stdout, stderr
        # Two pipes: either line may come first. Polled twice a second; 5 s is ten polls.
        seen = lines.until(lambda seen: all(any(x.endswith(w) for x in seen) for w in wanted),
                           5)
        assert [sum(x.endswith(w) for x in seen) for w in wanted] == [1, 1], seen
        follower.send_signal(stop)
        try:
            assert follower.wait(5) == 0
        except subprocess.TimeoutExpired:  # say where it is stuck
            state = Path(f"/proc/{follower.pid}/stat").read_text().split(") ")[1][0]
            wchan = Path(f"/proc/{follower.pid}/wchan").read_text()
            pytest.fail(f"logs -f did not stop on {stop.name} within 5 s: state {state}, "
                        f"wchan {wchan}, signals pending/blocked/caught " +
                        " ".join(x for x in Path(f"/proc/{follower.pid}/status").read_text()
                                 .splitlines() if x.startswith(("SigPnd", "ShdPnd", "SigBlk",
                                                                "SigIgn", "SigCgt"))))
        assert follower.stderr.read() == ""  # no traceback, no "Aborted!"
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait(5)
        follower.stdout.close()
        follower.stderr.close()


def test_output_of_a_failed_start_is_in_its_exit_event_and_kept(start_daemon):
    d = start_daemon({"db": {"handler": "tests.workers:PrintsThenFails", "max_restarts": 0,
                             "fatal_retry": 0}}, wait_ready=False)
    exited = d.wait_event("worker.exited", service="db")[0]
    assert "connecting to db.example:5432" in exited["output"]
    fatal = d.wait_event("worker.fatal", service="db")[0]
    assert "connecting to db.example:5432" in fatal["output"]
    lines = d.call("logs", target="db/0")
    assert any("db unreachable" in x["line"] for x in lines)  # the traceback, attributed


def test_a_flooding_worker_is_rate_limited_and_the_broker_keeps_serving(start_daemon):
    """One worker prints two million lines; lines over the limit are counted, not kept; while
    it floods, the other service keeps answering promptly. The throughput ratio is a figure for
    bench/ on a quiet machine; here, on a busy one, only a starved broker fails (it answers
    under a fifth of its quiet rate, or one call waits a second)."""
    d = start_daemon({"chatty": {"handler": "tests.workers:Chatty", "request_timeout": 60},
                      "echo": {"handler": "tests.workers:Echo"}})

    slowest = []

    def rate(seconds=1.5):
        done, t0, worst = 0, time.monotonic(), 0.0
        while (start := time.monotonic()) - t0 < seconds:
            call(frontend(d), "echo", "x", done)
            worst = max(worst, time.monotonic() - start)
            done += 1
        slowest.append(worst)
        return done / (time.monotonic() - t0)

    quiet = rate()
    took = {}

    def flood():
        t0 = time.monotonic()
        call(frontend(d), "chatty", "flood", LINES, timeout=60)
        took["flood"] = time.monotonic() - t0  # the pipe holds 64 KiB: the daemon kept up

    flooding = threading.Thread(target=flood)
    flooding.start()
    wait_until(lambda: d.events("worker.output_dropped"), 10, "the limit to act")
    loud = rate()
    assert flooding.is_alive(), "the flood ended before the measurement did"
    flooding.join(60)
    dropped = sum(e["dropped"] for e in d.events("worker.output_dropped"))
    kept = len(d.events("worker.output", service="chatty"))
    assert dropped > 0 and kept < LINES
    assert loud > 0.2 * quiet and slowest[1] < 1.0, (quiet, loud, slowest)
    print(f"echo calls/s: quiet {quiet:.0f}, with a flooding worker {loud:.0f}; "
          f"kept {kept} lines, dropped {dropped}; the daemon read "
          f"{LINES / took['flood']:.0f} lines/s from the worker")
