"""Operating a running daemon: rolling restart, stop/start, scale, reload, recycle, dump, drain."""

import os
import signal
import time

import pytest

from tests.conftest import write_config
from tests.helpers import Load, wait_until
from tests.mdp import call

pytestmark = pytest.mark.timeout(90)
TOOL = {"handler": "tests.workers:Tool", "workers": 4}


def frontend(d) -> str:
    return f"ipc://{d.runtime}/frontend.sock"


def ready_count(d, service: str) -> int:
    return sum(w["state"] in ("READY", "BUSY") and not w["draining"]
               for w in d.workers(service))


def test_rolling_restart_under_load_loses_nothing(start_daemon):
    """Every worker is replaced while clients call; all requests are answered "200" and the
    service never has fewer than N-1 ready workers."""
    d = start_daemon({"tool": TOOL})
    old = {w["pid"] for w in d.workers("tool")}
    with Load(frontend(d), "tool", clients=6, method="sleep", params=0.005) as load:
        wait_until(lambda: load.answered > 50, 10, "load to flow")
        t0 = time.monotonic()
        d.call("restart", target="tool")
        lowest = 4
        while True:
            workers = d.workers("tool")
            lowest = min(lowest, ready_count(d, "tool"))
            if not {w["pid"] for w in workers} & old and all(
                    w["state"] in ("READY", "BUSY") for w in workers) and len(workers) == 4:
                break
            assert time.monotonic() - t0 < 30, workers
        took = time.monotonic() - t0
        wait_until(lambda: load.answered > 100, 10, "more load after the restart")
    assert load.sent == load.answered and load.statuses == {"200": load.answered}
    assert lowest >= 3, lowest
    assert [w["slot"] for w in d.workers("tool")] == [0, 1, 2, 3]
    assert len(d.events("worker.restarting")) == 4
    print(f"rolling restart of 4 workers: {took:.2f}s, {load.answered} requests, all 200")


def test_restart_wait_and_restart_of_a_fatal_slot(start_daemon):
    """restart --wait blocks until done; restart of a FATAL slot starts it again."""
    d = start_daemon({"tool": {**TOOL, "workers": 2}})
    before = {w["pid"] for w in d.workers("tool")}
    from tests.test_cli import ctl
    result = ctl("--control", d.control, "restart", "tool/1", "--wait")
    assert result.returncode == 0, result.stderr
    after = {w["slot"]: w["pid"] for w in d.workers("tool")}
    assert after[0] in before and after[1] not in before


def test_stop_and_start_a_slot(start_daemon):
    """stop keeps a slot STOPPED (no restart); start brings it back."""
    d = start_daemon({"tool": {**TOOL, "workers": 2}})
    d.call("stop", target="tool/1")
    wait_until(lambda: d.workers("tool")[1]["state"] == "STOPPED", 5, "slot 1 stopped")
    assert d.workers("tool")[0]["state"] == "READY"
    assert d.workers("tool")[1]["last_exit"]["reason"] == "stopped by operator"
    d.call("start", target="tool/1")
    wait_until(lambda: d.workers("tool")[1]["state"] == "READY", 5, "slot 1 back")


def test_start_clears_fatal(start_daemon, workdir):
    """A FATAL slot is started again by `start`, with its failures forgotten."""
    flag = workdir / "broken"
    flag.write_text("")
    d = start_daemon({"flaky": {"handler": "tests.workers:FailsWhileFileExists",
                                "max_restarts": 0, "config": {"path": str(flag)}}},
                     wait_ready=False)
    d.wait_event("worker.fatal")
    flag.unlink()
    d.call("start", target="flaky")
    wait_until(lambda: d.workers("flaky")[0]["state"] == "READY", 5, "the slot READY")
    assert d.workers("flaky")[0]["fatal_reason"] is None


def test_scale_up_and_down_under_load(start_daemon):
    """scale adds slots, and drains and removes the highest ones, losing no request."""
    d = start_daemon({"tool": {**TOOL, "workers": 2}})
    with Load(frontend(d), "tool", clients=4, method="sleep", params=0.01) as load:
        d.call("scale", service="tool", workers=4)
        wait_until(lambda: [w["state"] for w in d.workers("tool")] == ["READY"] * 4 or
                   ready_count(d, "tool") == 4, 10, "four workers")
        d.call("scale", service="tool", workers=1)
        wait_until(lambda: [w["slot"] for w in d.workers("tool")] == [0], 10, "one worker left")
        wait_until(lambda: load.answered > 50, 10, "load")
    assert load.sent == load.answered and load.statuses == {"200": load.answered}
    assert d.status()["services"]["tool"]["desired"] == 1


def test_reload_with_an_invalid_file_keeps_serving(start_daemon):
    """An invalid file changes nothing: every error is reported and the old config serves."""
    d = start_daemon({"tool": {**TOOL, "workers": 1}})
    pid = d.workers("tool")[0]["pid"]
    d.config.write_text(d.config.read_text() + "\n[services.bad]\nhandler = 'nope:X'\nworkrs = 1\n")
    result = d.call("reload")
    assert result["ok"] is False and len(result["errors"]) == 2
    assert any("workrs: unknown key" in e for e in result["errors"])
    assert d.events("daemon.reload_failed")
    assert d.workers("tool")[0]["pid"] == pid and call(frontend(d), "tool", "echo", 1)[0] == "200"


def test_reload_applies_only_the_differences(start_daemon):
    """Added service started, removed one drained and gone, changed one rolled, unchanged
    one untouched; SIGHUP does the same as `tacorectl reload`."""
    d = start_daemon({"keep": {**TOOL, "workers": 1}, "change": {**TOOL, "workers": 1},
                      "drop": {**TOOL, "workers": 1}})
    keep, change = d.workers("keep")[0]["pid"], d.workers("change")[0]["pid"]
    write_config(d.config, {"keep": {**TOOL, "workers": 1}, "change": {**TOOL, "workers": 2},
                            "add": {**TOOL, "workers": 1}})
    d.proc.send_signal(signal.SIGHUP)
    event = d.wait_event("daemon.reload")[0]
    assert (event["added"], event["removed"], event["changed"], event["unchanged"]) == (
        ["add"], ["drop"], ["change"], ["keep"])
    wait_until(lambda: set(d.status()["services"]) == {"keep", "change", "add"}, 10,
               "drop to be gone")
    wait_until(lambda: ready_count(d, "change") == 2 and
               change not in {w["pid"] for w in d.workers("change")}, 10, "change rolled")
    assert d.workers("keep")[0]["pid"] == keep
    wait_until(lambda: ready_count(d, "add") == 1, 10, "add started")
    assert call(frontend(d), "drop", "echo", 1)[0] == "404"


def test_restart_runs_the_code_now_on_disk(start_daemon, workdir):
    """A restart imports the operator's module afresh: a deploy takes effect."""
    module = workdir / "lib" / "versioned_service.py"
    module.parent.mkdir()
    module.write_text("class S:\n    def handle(self, method, params):\n        return 1\n")
    d = start_daemon({"v": {"handler": "versioned_service:S"}},
                     daemon={"python_path": [str(module.parent)]})
    assert call(frontend(d), "v", "x") == ("200", 1)
    module.write_text("class S:\n    def handle(self, method, params):\n        return 2\n")
    d.call("restart", target="v")
    wait_until(lambda: call(frontend(d), "v", "x") == ("200", 2), 10, "the new code")


def test_recycle_after_max_requests(start_daemon):
    """A worker that served max_requests is replaced, with an event saying why."""
    d = start_daemon({"tool": {**TOOL, "workers": 1, "max_requests": 5}})
    pid = d.workers("tool")[0]["pid"]
    for i in range(5):
        assert call(frontend(d), "tool", "echo", i) == ("200", i)
    event = d.wait_event("worker.recycle")[0]
    assert event["reason"] == "max_requests" and event["pid"] == pid
    wait_until(lambda: [w["pid"] != pid and w["state"] == "READY" for w in d.workers("tool")]
               == [True], 10, "the replacement alone")


def test_recycle_on_memory(start_daemon):
    """A worker over max_memory_mb (sampled with psutil) is replaced."""
    d = start_daemon({"hog": {"handler": "tests.workers:Hog", "max_memory_mb": 80}},
                     state={"sample_interval": 0.1})
    pid = d.workers("hog")[0]["pid"]
    assert call(frontend(d), "hog", "grow", 120)[0] == "200"
    event = d.wait_event("worker.recycle")[0]
    assert event["reason"] == "max_memory" and event["rss_bytes"] > 80 * 2**20
    wait_until(lambda: [w["pid"] != pid for w in d.workers("hog")] == [True], 10,
               "the replacement alone")
    assert d.workers("hog")[0]["rss_bytes"] is None or d.workers("hog")[0]["rss_bytes"] < 80 * 2**20


def test_dump_names_the_line_a_busy_worker_is_on(start_daemon):
    """dump returns every thread's stack without stopping the worker."""
    d = start_daemon({"tool": {**TOOL, "workers": 1, "request_timeout": 30}})
    import threading
    caller = threading.Thread(target=lambda: call(frontend(d), "tool", "sleep", 1.0))
    caller.start()
    wait_until(lambda: d.workers("tool")[0]["state"] == "BUSY", 5, "busy")
    result = d.call("dump", target="tool/0")
    assert "SLEEPS-HERE" in result["blocked_at"] and "[main thread]" in result["stack"]
    caller.join(5)
    assert d.workers("tool")[0]["pid"] == result["pid"]  # not stopped


def test_sigterm_drains_running_requests_first(start_daemon):
    """A request longer than the service's stop_timeout still completes on shutdown."""
    d = start_daemon({"tool": {**TOOL, "workers": 1, "stop_timeout": 0.3}},
                     daemon={"stop_timeout": 10})
    import threading
    result = {}
    caller = threading.Thread(target=lambda: result.update(r=call(frontend(d), "tool", "sleep", 1.0)))
    caller.start()
    wait_until(lambda: d.workers("tool")[0]["state"] == "BUSY", 5, "busy")
    d.call("shutdown")
    caller.join(10)
    assert result["r"] == ("200", 1.0)
    assert d.proc.wait(10) == 0


def test_control_socket_refuses_another_user(start_daemon):
    """Another uid cannot even reach the control socket (directory 0700, socket 0600)."""
    if os.getuid() != 0:
        pytest.skip("needs root to act as another user")
    d = start_daemon({"tool": {**TOOL, "workers": 1}})
    import multiprocessing

    def attempt(path, out):
        import socket
        os.setgid(65534)
        os.setuid(65534)
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(path)
            out.put("connected")
        except OSError as e:
            out.put(e.errno)

    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    p = ctx.Process(target=attempt, args=(str(d.runtime / "control.sock"), out))
    p.start()
    p.join(10)
    import errno
    assert out.get(timeout=5) == errno.EACCES
