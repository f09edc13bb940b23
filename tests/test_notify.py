"""sd_notify without systemd: a datagram socket stands in for it and reads what tacored says."""

import os
import signal
import socket
import time

import pytest

from tests.helpers import wait_until
from tests.mdp import call


@pytest.fixture
def systemd(workdir):
    """A NOTIFY_SOCKET listener collecting every message (one datagram = one message)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(workdir / "notify.sock"))
    sock.setblocking(False)
    messages = []

    def received():
        while True:
            try:
                messages.append(dict(line.split("=", 1) for line in
                                     sock.recv(4096).decode().splitlines()))
            except BlockingIOError:
                return messages

    yield str(workdir / "notify.sock"), received
    sock.close()


def index_of(messages, key, start=0):
    return next(i for i, m in enumerate(messages) if i >= start and key in m)


def test_notify_sequence(start_daemon, systemd):
    """READY once min_ready workers are READY (not before), WATCHDOG at half WATCHDOG_USEC, RELOADING then READY
    on SIGHUP, STOPPING on SIGTERM; workers never see NOTIFY_SOCKET."""
    path, received = systemd
    d = start_daemon({"tool": {"handler": "tests.workers:SlowTool", "workers": 2,
                               "min_ready": 2, "config": {"seconds": 0.3}}},
                     env={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"}, wait_ready=False)
    wait_until(lambda: any("READY" in m for m in received()), 10, "READY=1")
    ready = received()[index_of(received(), "READY")]
    assert ready["STATUS"] == "tool 2/2 ready" and ready["MAINPID"] == str(d.proc.pid)
    assert all(w["state"] == "READY" for w in d.workers("tool"))
    t0 = time.monotonic()
    wait_until(lambda: sum("WATCHDOG" in m for m in received()) >= 5, 5, "watchdog pings")
    assert time.monotonic() - t0 < 1.5  # about every 0.1 s
    frontend = f"ipc://{d.runtime}/frontend.sock"
    for variable in ("NOTIFY_SOCKET", "WATCHDOG_USEC"):
        assert call(frontend, "tool", "environ", variable) == ("200", None)
    assert call(frontend, "tool", "environ", "PATH")[1]  # the check itself works
    d.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any("RELOADING" in m for m in received()), 5, "RELOADING=1")
    reloading = index_of(received(), "RELOADING")
    assert int(received()[reloading]["MONOTONIC_USEC"]) > 0
    wait_until(lambda: any("READY" in m for m in received()[reloading:]), 5, "READY after reload")
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(10) == 0
    assert any(m.get("STOPPING") == "1" for m in received())


def test_fatal_service_still_reports_ready_with_status(start_daemon, systemd):
    """A service that goes FATAL at start does not hold READY back; STATUS names it."""
    path, received = systemd
    start_daemon({"tool": {"handler": "tests.workers:Tool"},
                  "stuck": {"handler": "tests.workers:BlocksInStart", "start_timeout": 0.2,
                            "max_restarts": 0}},
                 env={"NOTIFY_SOCKET": path}, wait_ready=False)
    wait_until(lambda: any("READY" in m for m in received()), 10, "READY=1")
    status = received()[index_of(received(), "READY")]["STATUS"]
    assert status == "tool 1/1, stuck 0/1 ready; FATAL: stuck/0 (retry in 300s)"


def test_no_notify_socket_no_messages(start_daemon, systemd):
    """Without NOTIFY_SOCKET nothing is sent (and nothing breaks)."""
    path, received = systemd
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    d = start_daemon({"tool": {"handler": "tests.workers:Tool"}}, env=env)
    assert d.call("ping")["pong"] and received() == []
