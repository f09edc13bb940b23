"""The daemon supervising real worker processes: start timeouts, crashes, backoff, FATAL."""

import os
import signal
import time

import psutil
import pytest

from tests.conftest import pid_alive
from tests.helpers import wait_until

pytestmark = pytest.mark.timeout(60)


def test_workers_become_ready_and_status_shows_them(start_daemon):
    """Every configured worker is forked, READY, and fully described by status."""
    d = start_daemon({"echo": {"handler": "tests.workers:Echo", "workers": 2}})
    workers = d.workers("echo")
    assert [w["slot"] for w in workers] == [0, 1]
    for w in workers:
        assert w["state"] == "READY" and pid_alive(w["pid"])
        assert w["restarts"] == 0 and w["last_exit"] is None and w["uptime"] >= 0
    spawner = d.status()["daemon"]["spawner_pid"]
    assert {c.pid for c in d.children()} == {w["pid"] for w in workers} | {spawner}
    assert {p.pid for p in psutil.Process(d.proc.pid).children()} == {spawner}
    assert {p.ppid() for p in d.children() if p.pid != spawner} == {spawner}
    wait_until(lambda: all(w["last_seen"] is not None and w["last_seen"] < 1.0
                           for w in d.workers("echo")), 5, "heartbeats from both workers")
    assert d.call("health") == {"healthy": True, "problems": [], "warnings": []}


def test_status_of_a_worker_that_never_reported(start_daemon):
    """A STARTING worker has a pid but last_seen null: status never crashes on it."""
    d = start_daemon({"slow": {"handler": "tests.workers:SlowStart", "config": {"seconds": 30}}},
                     wait_ready=False)
    wait_until(lambda: d.workers("slow")[0]["pid"] is not None, 5, "the fork")
    worker = d.workers("slow")[0]
    assert worker["state"] == "STARTING" and worker["last_seen"] is None
    health = d.call("health")
    assert not health["healthy"] and health["problems"][0].startswith("slow: 0/1 ready")


def test_blocked_start_is_dumped_killed_and_restarted(start_daemon):
    """A start() that never returns is caught at start_timeout; its stack names the line."""
    d = start_daemon({"stuck": {"handler": "tests.workers:BlocksInStart", "start_timeout": 1,
                                "max_restarts": 5}}, wait_ready=False)
    spawned = d.wait_event("worker.spawned", service="stuck")[0]
    event = d.wait_event("worker.start_timeout", service="stuck")[0]
    assert event["pid"] == spawned["pid"]
    assert 1.0 <= event["elapsed"] < 1.6
    assert event["blocked_at"].endswith("BLOCKS-HERE")
    assert "tests/workers.py" in event["blocked_at"]
    assert "threading.Event().wait()  # BLOCKS-HERE" in event["stack"]
    assert "[main thread]" in event["stack"]
    exited = d.wait_event("worker.exited", service="stuck")[0]
    assert exited["reason"] == "start_timeout" and exited["pid"] == spawned["pid"]
    assert not pid_alive(spawned["pid"])
    d.wait_event("worker.backoff", service="stuck")
    respawned = d.wait_event("worker.spawned", service="stuck", count=2)[1]
    assert respawned["pid"] != spawned["pid"] and respawned["restarts"] == 1


def test_repeated_failures_end_in_fatal_and_unhealthy(start_daemon):
    """More than max_restarts failures within the window: FATAL, in status and health."""
    d = start_daemon({"stuck": {"handler": "tests.workers:BlocksInStart", "start_timeout": 0.3,
                                "max_restarts": 2},
                      "echo": {"handler": "tests.workers:Echo"}}, wait_ready=False)
    fatal = d.wait_event("worker.fatal", service="stuck", timeout=20)[0]
    assert "3 start failures" in fatal["reason"] and "start_timeout" in fatal["reason"]
    assert len(d.events("worker.start_timeout", service="stuck")) == 3
    worker = d.workers("stuck")[0]
    assert worker["state"] == "FATAL" and worker["pid"] is None
    assert worker["last_exit"]["reason"] == "start_timeout"
    health = d.call("health")
    assert not health["healthy"]
    assert worker["next_retry_in"] > 290 and worker["last_exit"]["by"] == "tacore"
    assert health["problems"] == [f"stuck: 0/1 ready (min_ready 1); slot 0 FATAL: "
                                  f"{worker['fatal_reason']}; retried by itself in 300s"]
    assert d.workers("echo")[0]["state"] == "READY"  # the rest keeps serving
    assert len(d.events("worker.spawned", service="stuck")) == 3  # no restart after FATAL


def test_exception_in_start_is_logged_and_retried(start_daemon):
    """start() raising is logged with its traceback by the worker and counted as a failure."""
    d = start_daemon({"bad": {"handler": "tests.workers:CrashesInStart", "max_restarts": 1}},
                     wait_ready=False)
    failed = d.wait_event("worker.start_failed", service="bad")[0]
    assert "cannot reach the database" in failed["error"]
    assert "raise RuntimeError" in failed["exception"]
    exited = d.wait_event("worker.exited", service="bad")[0]
    assert exited["reason"] == "start_failed" and exited["code"] == 3
    d.wait_event("worker.fatal", service="bad")


def test_crash_after_ready_is_restarted(start_daemon):
    """A READY worker that dies is recorded with its exit code and replaced."""
    d = start_daemon({"crashy": {"handler": "tests.workers:CrashesLater",
                                 "config": {"after": 0.3}, "max_restarts": 10}},
                     wait_ready=False)
    d.wait_event("worker.ready", service="crashy", count=2)
    first = d.events("worker.exited", service="crashy")[0]
    assert first["code"] == 17 and first["reason"] == "crashed" and first["signal"] is None


def test_sigkilled_worker_is_ready_again(start_daemon):
    """A worker killed by a signal is replaced; last_exit names the signal."""
    d = start_daemon({"echo": {"handler": "tests.workers:Echo"}})
    old = d.workers("echo")[0]["pid"]
    os.kill(old, signal.SIGKILL)
    wait_until(lambda: (w := d.workers("echo")[0])["state"] == "READY" and w["pid"] != old,
               10, "a READY replacement")
    worker = d.workers("echo")[0]
    assert worker["restarts"] == 1
    assert worker["last_exit"]["signal"] == "SIGKILL" and worker["last_exit"]["code"] is None


def test_worker_ignoring_sigterm_is_killed_after_stop_timeout(start_daemon):
    """SIGTERM, then SIGKILL once stop_timeout has passed."""
    d = start_daemon({"deaf": {"handler": "tests.workers:IgnoresTerm", "start_timeout": 0.5,
                               "stop_timeout": 0.5}}, wait_ready=False)
    timeout = d.wait_event("worker.start_timeout", service="deaf")[0]
    killed = d.wait_event("worker.killed", service="deaf")[0]
    assert killed["reason"] == "start_timeout" and killed["after"] >= 0.5
    exited = d.wait_event("worker.exited", service="deaf")[0]
    assert exited["signal"] == "SIGKILL"
    assert "time.sleep(3600)" in timeout["blocked_at"]


def test_frozen_worker_is_replaced_after_missed_heartbeats(start_daemon):
    """A SIGSTOPped worker stops heartbeating; it is killed and a new one becomes READY."""
    d = start_daemon({"echo": {"handler": "tests.workers:Echo"}},
                     broker={"heartbeat_interval": 0.2, "heartbeat_liveness": 3})
    old = d.workers("echo")[0]["pid"]
    os.kill(old, signal.SIGSTOP)
    event = d.wait_event("worker.heartbeat_timeout", service="echo")[0]
    assert event["pid"] == old and event["silent_for"] >= 0.6
    assert event["process_state"].startswith("stopped")
    wait_until(lambda: (w := d.workers("echo")[0])["state"] == "READY" and w["pid"] != old,
               10, "a READY replacement")
    assert not pid_alive(old)


def test_sigkill_of_the_daemon_leaves_no_worker(start_daemon):
    """The spawner dies with the daemon and the workers with the spawner (PR_SET_PDEATHSIG),
    within 2 seconds."""
    d = start_daemon({"echo": {"handler": "tests.workers:Echo", "workers": 3},
                      "slow": {"handler": "tests.workers:SlowStart", "config": {"seconds": 60}}},
                     wait_ready=False)
    wait_until(lambda: len(d.worker_processes()) == 4, 10, "four workers")
    pids = [c.pid for c in d.children()]  # and the spawner
    assert len(pids) == 5
    os.kill(d.proc.pid, signal.SIGKILL)
    d.proc.wait(timeout=5)
    t0 = time.monotonic()
    wait_until(lambda: not any(pid_alive(p) for p in pids), 2, "every worker to exit")
    assert time.monotonic() - t0 < 2


def test_sigterm_stops_everything_and_exits_zero(start_daemon):
    """SIGTERM: workers asked to stop, killed if deaf, daemon exits 0, no child, no socket."""
    d = start_daemon({"echo": {"handler": "tests.workers:Echo", "workers": 2},
                      "deaf": {"handler": "tests.workers:IgnoresTerm", "start_timeout": 30,
                               "stop_timeout": 0.5}}, wait_ready=False)
    wait_until(lambda: len(d.worker_processes()) == 3, 10, "three workers")
    d.wait_event("worker.ready", count=2)
    pids = [c.pid for c in d.children()]
    wait_until(lambda: any(ignores_sigterm(p) for p in pids), 10, "the deaf worker's start()")
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(timeout=10) == 0
    assert not any(pid_alive(p) for p in pids)
    assert d.events("daemon.stopped")
    assert d.events("worker.killed", service="deaf")
    assert not list(d.runtime.glob("*.sock"))


def test_second_sigint_kills_at_once(start_daemon):
    """An impatient second Ctrl-C does not wait for stop_timeout."""
    d = start_daemon({"deaf": {"handler": "tests.workers:IgnoresTerm", "start_timeout": 30,
                               "stop_timeout": 30}}, wait_ready=False)
    wait_until(lambda: d.worker_processes() and ignores_sigterm(d.worker_processes()[0].pid), 10,
               "the worker to ignore SIGTERM")
    d.proc.send_signal(signal.SIGINT)
    d.wait_event("daemon.stopping")
    d.proc.send_signal(signal.SIGINT)
    assert d.proc.wait(timeout=5) == 0


def test_sigterm_to_the_whole_process_group_is_an_orderly_stop(start_daemon):
    """SIGTERM to the daemon's process group (as `timeout` or `kill -TERM -PGID` send it): the
    daemon stops as for its own SIGTERM, and the spawner, which ignores it, is not lost."""
    d = start_daemon({"tool": {"handler": "tests.workers:Echo", "workers": 2}})
    os.killpg(d.proc.pid, signal.SIGTERM)
    assert d.proc.wait(timeout=15) == 0
    assert d.events("daemon.stopped") and not d.events("spawner.exited")
    assert {e["reason"] for e in d.events("worker.exited")} == {"shutdown"}


def _sockets(pid: int) -> set[str]:
    """The socket inodes a process holds (a reconnecting worker has new ones)."""
    return {link for link in _links(pid) if link.startswith("socket:")}


def ignores_sigterm(pid: int) -> bool:
    """The process has SIGTERM set to SIG_IGN (from /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        mask = next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))
    return bool(mask & (1 << (signal.SIGTERM - 1)))


def _links(pid: int, skip_stdio: bool = False) -> set[str]:
    fds = [fd for fd in os.listdir(f"/proc/{pid}/fd") if not (skip_stdio and int(fd) <= 2)]
    links = set()
    for fd in fds:
        try:
            links.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except FileNotFoundError:
            pass
    return links


def test_worker_holds_none_of_the_daemons_sockets(start_daemon):
    """A worker closes what it inherited by fork: no socket of the daemon stays open in it."""
    d = start_daemon({"echo": {"handler": "tests.workers:Echo", "workers": 2}})
    daemon = _links(d.proc.pid)
    assert any(link.startswith("socket:") for link in daemon)
    assert any(link.endswith("tacored.pid") for link in daemon)
    for worker in d.workers("echo"):
        shared = daemon & _links(worker["pid"], skip_stdio=True)
        # Only pipes are shared (multiprocessing's sentinels, the stack pipes): no socket,
        # no lock file, no database. (anon_inode names say nothing of identity: skipped.)
        assert all(link.startswith(("pipe:", "anon_inode:")) for link in shared), shared


def test_a_paused_daemon_does_not_kill_its_workers(start_daemon):
    """After the daemon itself was stopped, silent workers are not blamed; they re-register."""
    d = start_daemon({"echo": {"handler": "tests.workers:Echo", "workers": 2}},
                     broker={"heartbeat_interval": 0.2, "heartbeat_liveness": 3})
    pids = [w["pid"] for w in d.workers("echo")]
    sockets = {pid: _sockets(pid) for pid in pids}
    os.kill(d.proc.pid, signal.SIGSTOP)
    try:
        # The workers notice the silent broker and reconnect: each has new sockets. (Their
        # log lines say so too, but those reach the log through the daemon, stopped here.)
        wait_until(lambda: all(_sockets(pid).isdisjoint(sockets[pid]) for pid in pids), 10,
                   "both workers to reconnect")
    finally:
        os.kill(d.proc.pid, signal.SIGCONT)
    d.wait_event("worker.broker_lost", count=2)
    d.wait_event("daemon.stalled")
    wait_until(lambda: all(w["state"] == "READY" and w["last_seen"] is not None
                           and w["last_seen"] < 0.5 for w in d.workers("echo")),
               5, "both workers heard from again")
    assert [w["pid"] for w in d.workers("echo")] == pids
    assert not d.events("worker.heartbeat_timeout")


def test_workers_are_forked_by_a_spawner_without_threads(start_daemon):
    """The process that forks workers has exactly one thread; the daemon has libzmq's."""
    d = start_daemon({"echo": {"handler": "tests.workers:Echo", "workers": 2}})
    spawner = d.status()["daemon"]["spawner_pid"]
    assert len(os.listdir(f"/proc/{spawner}/task")) == 1
    assert len(os.listdir(f"/proc/{d.proc.pid}/task")) > 1  # the I/O threads
    assert {p.ppid() for p in d.worker_processes()} == {spawner}


def test_a_spawner_that_dies_is_replaced_and_its_workers_restarted(start_daemon):
    """SIGKILL of the spawner: its workers die with it (PR_SET_PDEATHSIG), each exit is a
    "spawner_died" failure, a new spawner starts and the workers are READY again."""
    d = start_daemon({"echo": {"handler": "tests.workers:Echo", "workers": 2}})
    spawner = d.status()["daemon"]["spawner_pid"]
    old = {p.pid for p in d.worker_processes()}
    os.kill(spawner, signal.SIGKILL)
    died = d.wait_event("spawner.exited")[0]
    assert died["pid"] == spawner and died["returncode"] == -signal.SIGKILL
    exits = d.wait_event("worker.exited", count=2)
    assert {e["pid"] for e in exits} == old and {e["reason"] for e in exits} == {"spawner_died"}
    new = d.wait_event("spawner.started")[0]["pid"]
    wait_until(lambda: all(w["state"] == "READY" for w in d.workers("echo")), 10, "READY again")
    assert d.status()["daemon"]["spawner_pid"] == new != spawner
    assert {p.ppid() for p in d.worker_processes()} == {new}
    assert not old & {p.pid for p in d.worker_processes()}
    assert len(os.listdir(f"/proc/{new}/task")) == 1
