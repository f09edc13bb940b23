"""Command workers: any program, started, timed, restarted and stopped like a Python worker.
The program here is tests/peers/mdp_worker.py, written from the Majordomo specs, run as a
separate interpreter that knows nothing of tacore but the documented environment."""

import os
import signal
import sys
import time

import psutil
import pytest

from tests.conftest import ROOT, pid_alive
from tests.helpers import wait_until
from tests.mdp import v1_call

PEER = [sys.executable, "-m", "tests.peers.mdp_worker"]


def frontend(d) -> str:
    return f"ipc://{d.runtime}/frontend.sock"


@pytest.mark.parametrize("version", ["1", "2"])
def test_a_command_worker_is_started_and_serves(start_daemon, version):
    d = start_daemon({"prog": {"command": PEER, "cwd": str(ROOT), "workers": 2,
                               "env": {"PEER_MDP_VERSION": version}}})
    workers = d.workers("prog")
    assert [w["state"] for w in workers] == ["READY", "READY"]
    assert v1_call(frontend(d), b"prog", [b"hello"]) == [b"MDPC01", b"prog", b"200", b"hello"]
    ready = d.events("worker.ready", service="prog")
    print("command worker fork -> READY (s):", [e["startup_seconds"] for e in ready])
    process = psutil.Process(workers[0]["pid"])
    assert os.getpgid(process.pid) == process.pid  # a process group of its own
    assert process.environ()["TACORE_SERVICE"] == "prog"
    assert any(x["line"] == "ready" for x in d.call("logs", target="prog/0"))  # its stdout


def test_a_command_worker_killed_mid_request_is_502_and_restarted(start_daemon):
    d = start_daemon({"prog": {"command": PEER, "cwd": str(ROOT), "request_timeout": 30}})
    pid = d.workers("prog")[0]["pid"]
    import threading
    result = {}
    t = threading.Thread(target=lambda: result.update(
        reply=v1_call(frontend(d), b"prog", [b"hang"], timeout=10)))
    t.start()
    wait_until(lambda: d.workers("prog")[0]["state"] == "BUSY", 5, "busy")
    os.kill(pid, signal.SIGKILL)
    t.join(10)
    assert result["reply"][2] == b"502"
    wait_until(lambda: (w := d.workers("prog")[0])["state"] == "READY" and w["pid"] != pid,
               10, "a new worker")
    assert d.events("worker.backoff", service="prog")


def test_a_command_worker_blocked_before_ready_shows_its_proc_view(start_daemon):
    d = start_daemon({"prog": {"command": PEER, "cwd": str(ROOT), "start_timeout": 1,
                               "env": {"PEER_HANG_BEFORE_READY": "1"}}}, wait_ready=False)
    event = d.wait_event("worker.start_timeout", service="prog")[0]
    assert "/proc view of pid" in event["stack"] and "wchan" in event["stack"]
    assert event["blocked_at"].startswith("wchan")
    assert "connecting to a dependency that never answers" in event["output"]
    exited = d.wait_event("worker.exited", service="prog")[0]
    assert exited["reason"] == "start_timeout" and exited["by"] == "tacore"


def test_sigkill_of_the_daemon_leaves_no_command_worker(start_daemon):
    d = start_daemon({"prog": {"command": PEER, "cwd": str(ROOT), "workers": 2}})
    pids = [p.pid for p in d.children()]
    assert len(pids) == 3  # the spawner and two programs
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait(5)
    t0 = time.monotonic()
    wait_until(lambda: not any(pid_alive(p) for p in pids), 2, "every process to exit")
    assert time.monotonic() - t0 < 2


def test_handler_and_command_exclude_each_other(tmp_path):
    from tacore import config
    from tacore.errors import ConfigError

    path = tmp_path / "t.toml"
    path.write_text('[services.x]\nhandler = "tests.workers:Echo"\ncommand = ["prog"]\n'
                    '[services.y]\ncommand = []\n')
    with pytest.raises(ConfigError) as e:
        config.load(path)
    assert f"{path}: [services.x] command: handler and command exclude each other" in \
        "\n".join(e.value.errors)
    assert any("[services.y] command: must be a program and its arguments" in line
               for line in e.value.errors)
