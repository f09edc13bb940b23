"""The edges third-party peers reach: workers that vanish, that break the body convention, that
try to join services they may not serve. Real daemon, real worker processes (tests/peers),
every request answered exactly once."""

import signal
import subprocess
import sys
import time

import pytest
import zmq

from tests.conftest import ROOT
from tests.helpers import wait_until
from tests.mdp import ExternalWorker, call, v1_call

INTERVAL = 0.25  # heartbeat_interval of these daemons
TOOL = {"tool": {"handler": "tests.workers:Tool", "workers": 1, "request_timeout": 30}}


def frontend(d) -> str:
    return f"ipc://{d.runtime}/frontend.sock"


class Peer:
    """tests/peers/mdp_worker.py in a process of its own."""

    def __init__(self, d, service: str, version: int = 1, interval: float = INTERVAL):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.peers.mdp_worker", f"ipc://{d.runtime}/backend.sock",
             service, str(version), str(interval)], cwd=ROOT, stdout=subprocess.PIPE)
        assert self.proc.stdout.readline() == b"ready\n"

    def kill(self):
        self.proc.kill()
        self.proc.wait(5)
        self.proc.stdout.close()


@pytest.fixture
def peers():
    started = []
    yield lambda *a, **kw: started.append(Peer(*a, **kw)) or started[-1]
    for p in started:
        p.kill()


class Dealer:
    """A 7/MDP client on a DEALER, so a second reply to one request would be seen."""

    def __init__(self, endpoint: str):
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)

    def send(self, service: bytes, *frames: bytes):
        self.sock.send_multipart([b"", b"MDPC01", service, *frames])

    def replies(self, timeout: float, then: float = 0.3) -> list[list[bytes]]:
        """The first reply within ``timeout``, and anything more that comes in ``then``."""
        got = []
        if self.sock.poll(timeout * 1000):
            got.append(self.sock.recv_multipart())
            while self.sock.poll(then * 1000):
                got.append(self.sock.recv_multipart())
        return got

    def close(self):
        self.sock.close()


def registered(d, service: str, count: int = 1):
    return lambda: len(d.status()["services"].get(service, {}).get("workers", [])) == count


def test_a_request_for_a_vanished_idle_worker_is_answered_once(start_daemon, peers):
    """The only worker of an unconfigured service dies silently while idle; a request arrives
    before it expires. It is answered exactly once: by the next worker of the service."""
    d = start_daemon(TOOL, broker={"heartbeat_interval": INTERVAL, "heartbeat_liveness": 40})
    first = peers(d, "outside")
    wait_until(registered(d, "outside"), 5, "the first worker")
    first.kill()  # no DISCONNECT: the broker still counts it as registered
    client = Dealer(frontend(d))
    try:
        client.send(b"outside", b"one")
        peers(d, "outside")  # a new worker for the service
        replies = client.replies(timeout=2 * INTERVAL + 2)
        assert len(replies) == 1, replies
        # The dispatch found the connection gone and the request waited for the new worker,
        # or it reached the dead pipe and the next heartbeat found the worker gone.
        assert replies[0][3:] in ([b"200", b"one"], [b"502"] + replies[0][4:]), replies
    finally:
        client.close()


def test_a_lingering_queue_is_picked_up_by_a_returning_worker(start_daemon, peers):
    """A service whose last external worker left keeps its queue for queue_timeout."""
    d = start_daemon({**TOOL, "outside": {"workers": 0, "queue_timeout": 5}},
                     broker={"heartbeat_interval": INTERVAL})
    first = peers(d, "outside")
    wait_until(registered(d, "outside"), 5, "the first worker")
    first.kill()
    wait_until(lambda: v1_call(frontend(d), b"mmi.service", [b"outside"])[2] == b"404", 5,
               "mmi.service to see the worker gone")
    client = Dealer(frontend(d))
    try:
        client.send(b"outside", b"queued")
        assert client.replies(timeout=0.3) == []  # it waits
        peers(d, "outside")
        assert [r[3:] for r in client.replies(timeout=5)] == [[b"200", b"queued"]]
    finally:
        client.close()


def test_a_lingering_queue_without_worker_answers_503(start_daemon, peers):
    d = start_daemon({**TOOL, "outside": {"workers": 0, "queue_timeout": 0.5}},
                     broker={"heartbeat_interval": INTERVAL})
    peers(d, "outside").kill()
    t0 = time.monotonic()
    status, payload = call(frontend(d), "outside", "x", timeout=5)
    assert status == "503" and payload["error"] == "no_worker"
    assert 0.4 < time.monotonic() - t0 < 3


def held_by_outside(d) -> "Dealer":
    """A client whose request ("hang") the registered external worker of "outside" holds."""
    wait_until(registered(d, "outside"), 5, "the worker")
    client = Dealer(frontend(d))
    client.send(b"outside", b"hang")
    wait_until(lambda: d.workers("outside")[0]["state"] == "BUSY", 5, "the worker busy")
    return client


@pytest.mark.parametrize("version", [1, 2])
def test_a_sigkilled_busy_external_worker_gives_502_within_two_intervals(start_daemon, peers,
                                                                        version):
    """A busy 7/MDP or 18/MDP worker SIGKILLed: its client gets "502" within two heartbeat
    intervals, not at request_timeout (30 s). The interval is 1 s here, not INTERVAL: on a
    busy machine a few hundred ms of scheduling delay must stay a small part of the limit."""
    interval = 1.0
    d = start_daemon({**TOOL, "outside": {"workers": 0, "request_timeout": 30}},
                     broker={"heartbeat_interval": interval})
    peer = peers(d, "outside", version, interval)
    client = held_by_outside(d)
    try:
        t0 = time.monotonic()
        peer.proc.send_signal(signal.SIGKILL)
        replies = client.replies(timeout=5)
        took = time.monotonic() - t0
        assert len(replies) == 1 and replies[0][3] == b"502", replies
        assert took < 2 * interval, f"502 after {took:.3f}s"
        d.wait_event("worker.lost", service="outside", external=True)
    finally:
        client.close()


@pytest.mark.parametrize("version", [1, 2])
def test_a_busy_external_worker_silent_beyond_the_expiry_is_answered_once(start_daemon, peers,
                                                                          version):
    """A spec-written worker busy three times longer than interval x liveness (it reads none
    of the broker's heartbeats meanwhile) is neither expired nor "502"ed: its one reply
    reaches the client as "200", and it stays registered."""
    d = start_daemon({**TOOL, "outside": {"workers": 0, "request_timeout": 30}},
                     broker={"heartbeat_interval": INTERVAL, "heartbeat_liveness": 3})
    peer = peers(d, "outside", version)
    wait_until(registered(d, "outside"), 5, "the worker")
    (before,) = d.workers("outside")
    busy = 3 * 3 * INTERVAL  # three expiries: long past what an idle worker is allowed
    client = Dealer(frontend(d))
    try:
        t0 = time.monotonic()
        client.send(b"outside", b"sleep:%g" % busy)
        replies = client.replies(timeout=busy + 5, then=2 * INTERVAL)  # nothing after it
        took = time.monotonic() - t0
    finally:
        client.close()
    assert [r[3:] for r in replies] == [[b"200", b"sleep:%g" % busy]], replies
    assert took >= busy, took
    # The broker heartbeated the busy worker all along (about busy / INTERVAL beats; at least
    # liveness of them even on a starved machine), and still waited for its reply:
    heard = peer.proc.stdout.readline().decode()
    assert heard.startswith(f"busy {busy:g}, heard "), heard
    assert int(heard.split()[3]) >= 3, heard
    assert peer.proc.poll() is None  # no DISCONNECT
    (after,) = d.workers("outside")
    assert after["identity"] == before["identity"] and after["requests"] == 1
    assert not d.events("worker.lost") and not d.events("request.timeout")
    assert d.call("metrics")["services"]["outside"]["by_status"] == {"200": 1}
    assert v1_call(frontend(d), b"outside", [b"again"])[2:] == [b"200", b"again"]


def test_a_stopping_daemon_waits_for_the_reply_of_an_external_worker(start_daemon, peers):
    """SIGTERM while an external worker runs a request: its reply still reaches the client,
    and only then does the daemon exit 0."""
    d = start_daemon({**TOOL, "outside": {"workers": 0, "request_timeout": 30}},
                     broker={"heartbeat_interval": INTERVAL}, daemon={"stop_timeout": 10})
    peers(d, "outside")
    wait_until(registered(d, "outside"), 5, "the worker")
    client = Dealer(frontend(d))
    try:
        client.send(b"outside", b"sleep:0.5")
        wait_until(lambda: d.workers("outside")[0]["state"] == "BUSY", 5, "the worker busy")
        d.proc.send_signal(signal.SIGTERM)
        replies = client.replies(timeout=5)
    finally:
        client.close()
    assert [r[3:] for r in replies] == [[b"200", b"sleep:0.5"]], replies
    assert d.proc.wait(10) == 0


def test_a_stopping_daemon_gives_up_on_an_external_worker_at_stop_timeout(start_daemon, peers):
    """An external worker that never answers gets its request answered "502" shutting_down at
    [daemon] stop_timeout, even while one of the daemon's own workers is still being stopped."""
    d = start_daemon({**TOOL, "outside": {"workers": 0, "request_timeout": 30},
                      "deaf": {"handler": "tests.workers:IgnoresTerm", "start_timeout": 30,
                               "stop_timeout": 3}},
                     broker={"heartbeat_interval": INTERVAL}, daemon={"stop_timeout": 0.5},
                     wait_ready=False)
    wait_until(lambda: len(d.worker_processes()) == 2, 10, "tool's and deaf's workers")
    peers(d, "outside")
    client = held_by_outside(d)
    try:
        t0 = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        replies = client.replies(timeout=10)
        took = time.monotonic() - t0
    finally:
        client.close()
    assert len(replies) == 1 and replies[0][3] == b"502", replies
    assert b"shutting_down" in replies[0][4]
    # At stop_timeout (0.5 s), not when deaf is SIGKILLed (3 s after the SIGTERM); 1.5 s of
    # slack for a busy machine.
    assert 0.5 <= took < 2.0, took
    assert d.proc.wait(10) == 0


def test_mmi_service_counts_only_live_workers(start_daemon, peers):
    d = start_daemon(TOOL, broker={"heartbeat_interval": 5})  # no heartbeat would notice
    peer = peers(d, "outside")
    wait_until(registered(d, "outside"), 5, "the worker")
    assert v1_call(frontend(d), b"mmi.service", [b"outside"])[2] == b"200"
    peer.kill()
    wait_until(lambda: v1_call(frontend(d), b"mmi.service", [b"outside"])[2] == b"404", 2,
               "mmi.service to answer 404 for a dead worker")


def test_non_convention_replies_are_bounded_and_502_for_tacore_services(start_daemon, peers):
    """Raw replies on an external-only service pass through, counted under one label; on a
    service that uses tacore's body convention they reach the client as "502" bad_reply."""
    d = start_daemon({"echo": {"handler": "tests.workers:Echo", "workers": 1, "external": True}},
                     broker={"heartbeat_interval": INTERVAL})
    peers(d, "outside")
    wait_until(registered(d, "outside"), 5, "the worker")
    for i in range(30):
        v1_call(frontend(d), b"outside", [b"status-%d" % i])  # echoed: first frame "200"
        assert v1_call(frontend(d), b"outside", [b"raw"])[2] == b"not-a-status"
    by_status = d.call("metrics")["services"]["outside"]["by_status"]
    assert by_status == {"200": 30, "other": 30}
    d.call("stop", target="echo")
    wait_until(lambda: d.workers("echo")[0]["state"] == "STOPPED", 10, "echo stopped")
    peers(d, "echo")  # admitted: [services.echo] external = true
    wait_until(lambda: any(w["external"] for w in d.workers("echo")), 5, "the external echo")
    status, payload = call(frontend(d), "echo", "x")  # the body is echoed: [200][body]
    assert status == "200"
    reply = v1_call(frontend(d), b"echo", [b"raw"])
    assert reply[2] == b"502" and b"bad_reply" in reply[3]
    assert d.wait_event("worker.bad_reply", service="echo")
    assert set(d.call("metrics")["services"]["echo"]["by_status"]) <= {"200", "502"}


def test_an_external_worker_may_not_join_a_tacore_service(start_daemon):
    """An unmodified MDP worker registering "echo" beside tacore's own echo is refused."""
    d = start_daemon({"echo": {"handler": "tests.workers:Echo", "workers": 1}})
    intruder = ExternalWorker(f"ipc://{d.runtime}/backend.sock", b"echo",
                              handler=lambda frames: [[b"hijacked"]])
    t0 = time.monotonic()
    intruder.start()
    try:
        wait_until(lambda: intruder.disconnects >= 2, 5, "DISCONNECT for the intruder")
        for i in range(20):
            assert call(frontend(d), "echo", "echo", i)[0] == "200"
        assert intruder.served == 0
        refused = d.wait_event("worker.refused", service="echo")
        assert "external = false" in refused[0]["reason"]
        # It keeps trying (it reconnects at each DISCONNECT): the log is rate-limited.
        assert len(d.events("worker.refused")) <= 20 * (2 + time.monotonic() - t0)
    finally:
        intruder.stop()
    assert all(not w["external"] for w in d.workers("echo"))


def test_unconfigured_services_can_be_refused(start_daemon):
    d = start_daemon(TOOL, broker={"external_services": False})
    worker = ExternalWorker(f"ipc://{d.runtime}/backend.sock", b"outside")
    worker.start()
    try:
        wait_until(lambda: worker.disconnects >= 1, 5, "DISCONNECT")
        assert "outside" not in d.status()["services"]
        assert call(frontend(d), "outside", "x")[0] == "404"
        assert "external_services" in d.wait_event("worker.refused")[0]["reason"]
    finally:
        worker.stop()


def test_a_flood_of_unconfigured_services_is_capped(start_daemon):
    d = start_daemon(TOOL, broker={"max_external_services": 3})
    workers = [ExternalWorker(f"ipc://{d.runtime}/backend.sock", b"s%d" % i) for i in range(5)]
    for w in workers:
        w.start()
    try:
        wait_until(lambda: sum(w.disconnects > 0 for w in workers) >= 2, 5, "two refused")
        services = set(d.status()["services"]) - {"tool"}
        assert len(services) == 3, services
    finally:
        for w in workers:
            w.stop()
