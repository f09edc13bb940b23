"""The daemon's death and restart under load, pickles on the wire, protocol abuse, control fuzz."""

import json
import os
import pickle
import signal
import sqlite3
import threading
import time
from contextlib import closing

import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tacore.client import CallError, Client
from tests.helpers import wait_until
from tests.mdp import call

TOOL = {"tool": {"handler": "tests.workers:Tool", "workers": 2}}


class _Exploit:
    """Unpickling this creates a file: proof that a pickle was executed."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickles_on_any_socket_are_never_executed(start_daemon, workdir):
    """A pickle that would create a file, sent to the frontend, the backend and the control
    socket, as every frame: answered as garbage, never unpickled."""
    d = start_daemon(TOOL)
    marker = workdir / "pwned"
    payload = pickle.dumps(_Exploit(str(marker)))
    ctx = zmq.Context.instance()
    for endpoint, frames in (
            ("frontend", [b"", b"MDPC01", b"tool", payload]),
            ("frontend", [b"", payload]),
            ("backend", [b"", b"MDPW01", b"\x03", payload, b"", payload]),
            ("backend", [payload]),
            ("control", [b"", payload])):
        with ctx.socket(zmq.DEALER) as sock:
            sock.setsockopt(zmq.LINGER, 100)
            sock.connect(f"ipc://{d.runtime}/{endpoint}.sock")
            sock.send_multipart(frames)
            if endpoint != "backend":
                assert sock.poll(3000), endpoint  # an error answer
                reply = sock.recv_multipart()
                assert b"400" in reply or b'"ok": false' in reply[-1], reply
    assert call(f"ipc://{d.runtime}/frontend.sock", "tool", "echo", 1) == ("200", 1)
    assert not marker.exists()


def test_protocol_abuse_by_a_worker(start_daemon):
    """READY twice, and a FINAL for a request it never got: DISCONNECT, and nothing else hurt."""
    d = start_daemon(TOOL, broker={"heartbeat_interval": 0.1})
    ctx = zmq.Context.instance()
    with ctx.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"ipc://{d.runtime}/backend.sock")
        sock.send_multipart([b"", b"MDPW01", b"\x01", b"rogue"])
        sock.send_multipart([b"", b"MDPW01", b"\x01", b"rogue"])  # READY twice
        got = []
        wait_until(lambda: sock.poll(100) and got.append(sock.recv_multipart()) is None
                   and [b"", b"MDPW01", b"\x05"] in got, 5, "DISCONNECT for the second READY")
    with ctx.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"ipc://{d.runtime}/backend.sock")
        sock.send_multipart([b"", b"MDPW01", b"\x03", b"\x00" * 8, b"", b"200", b"{}"])
        assert sock.poll(3000) and sock.recv_multipart() == [b"", b"MDPW01", b"\x05"]
    assert call(f"ipc://{d.runtime}/frontend.sock", "tool", "echo", 2) == ("200", 2)


def test_client_gone_mid_request(start_daemon):
    """A client that disconnects while its request runs costs nothing and hurts no one."""
    d = start_daemon(TOOL)
    ctx = zmq.Context.instance()
    for _ in range(20):
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 2000)  # the request goes out; the reply finds no one
        sock.connect(f"ipc://{d.runtime}/frontend.sock")
        sock.send_multipart([b"MDPC01", b"tool", json.dumps(
            {"method": "sleep", "params": 0.05}).encode()])
        sock.close()
    wait_until(lambda: sum(w["requests"] for w in d.workers("tool")) == 20, 10, "all served")
    assert all(w["state"] == "READY" for w in d.workers("tool"))
    assert call(f"ipc://{d.runtime}/frontend.sock", "tool", "echo", 3) == ("200", 3)


CONTROL_WORDS = [b"", b"{}", b'{"command": "status"}', b'{"command": "restart", "args": {}}',
                 b'{"command": "scale", "args": {"service": "tool", "workers": -1}}',
                 b'{"command": "dump", "args": {"target": "tool/99"}}', b"null", b"[]"]


@settings(max_examples=int(os.environ.get("TACORE_FUZZ_EXAMPLES", 150)), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frames=st.lists(st.one_of(st.sampled_from(CONTROL_WORDS), st.binary(max_size=64)),
                       min_size=1, max_size=4))
def test_control_socket_fuzz(start_daemon, frames):
    """Random frames on the control socket: the daemon keeps answering status."""
    d = _control_target(start_daemon)
    ctx = zmq.Context.instance()
    with ctx.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 100)
        sock.connect(d.control)
        sock.send_multipart(frames)
        if len(frames) == 2 and frames[0] == b"":
            assert sock.poll(3000)  # a REQ-shaped request always gets an answer
            json.loads(sock.recv_multipart()[-1])
    assert d.call("ping")["pong"]


_fuzzed = {}


def _control_target(start_daemon):
    d = _fuzzed.get(id(start_daemon))
    if d is None:
        d = _fuzzed[id(start_daemon)] = start_daemon(TOOL)
    return d


def test_daemon_sigkilled_under_load_then_restarted(start_daemon, workdir):
    """SIGKILL of the daemon under load: no worker survives, a new daemon starts on the same
    runtime_dir, clients with retries carry on, and the events database is intact."""
    first = start_daemon(TOOL)
    endpoint = f"ipc://{first.runtime}/frontend.sock"
    client = Client(endpoint, retries=20)
    done, failures, stop = [], [], threading.Event()

    def load():
        n = 0
        while not stop.is_set():
            try:
                assert client.call("tool", "echo", n, timeout=0.5) == n
                done.append(n)
            except CallError as e:
                failures.append(e)
            n += 1

    thread = threading.Thread(target=load)
    thread.start()
    wait_until(lambda: len(done) > 50, 10, "load")
    workers = [c.pid for c in first.children()]
    os.kill(first.proc.pid, signal.SIGKILL)
    first.proc.wait(5)
    wait_until(lambda: not any(_alive(p) for p in workers), 2, "the workers to die")
    before = len(done)
    second = start_daemon(TOOL)
    wait_until(lambda: len(done) > before + 50, 20, "clients to resume")
    stop.set()
    thread.join(30)
    client.close()
    assert not failures, failures[:3]
    db = workdir / "state" / "tacore.db"
    with closing(sqlite3.connect(db)) as conn, conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    names = [e["event"] for e in second.call("events", since=time.time() - 600)]
    assert names.count("daemon.started") == 2


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"
