"""Node mode on one host: daemon B's workers serve daemon A's broker over loopback tcp (the
network cases are in test_hosts.py). Two real daemons, real workers."""

from __future__ import annotations

import os
import signal
import socket
import time

import pytest

from tests.conftest import STRICT_WARNINGS, RunningDaemon, run_tacored, write_config
from tests.helpers import Load, wait_until
from tests.test_cli import ctl

ECHO = "tacore.services.echo:Echo"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pair:
    """Daemon A with a tcp backend on loopback; node B serving it."""

    def __init__(self, root):
        self.root, self.daemons = root, []
        self.backend = f"tcp://127.0.0.1:{free_port()}"

    def start(self, name: str, services: dict, wait: bool = True, **sections) -> RunningDaemon:
        directory = self.root / f"{name}{len(self.daemons)}"
        directory.mkdir()
        config = write_config(directory / "tacore.toml", services, **sections)
        d = RunningDaemon(config, directory / "daemon.log", env={**os.environ, **STRICT_WARNINGS})
        self.daemons.append(d)
        wait_until(lambda: (d.runtime / "control.sock").exists() or d.proc.poll() is not None,
                   10, f"daemon {name}")
        assert d.proc.poll() is None, d.log_path.read_text()
        if wait:
            d.wait_ready()
        return d

    def a(self, **echo) -> RunningDaemon:
        return self.start("a", {"echo": {"workers": 0, "external": True, **echo}},
                          broker={"backend": self.backend, "heartbeat_interval": 0.2})

    def b(self, wait: bool = True, **echo) -> RunningDaemon:
        return self.start("b", {"echo": {"handler": ECHO, "workers": 2, "broker": self.backend,
                                         **echo}}, wait=wait)


@pytest.fixture
def pair(workdir):
    p = Pair(workdir)
    yield p
    for d in p.daemons:
        d.kill()


def workers(d: RunningDaemon) -> list[dict]:
    return d.status()["services"]["echo"]["workers"]


def frontend(d: RunningDaemon) -> str:
    return f"ipc://{d.runtime}/frontend.sock"


def serving(d: RunningDaemon, count: int) -> bool:
    return [w["state"] for w in workers(d)].count("READY") == count


def test_a_node_without_its_upstream_is_up_but_not_healthy_and_joins_when_it_comes(pair):
    b = pair.b(wait=False)
    wait_until(lambda: [w["state"] for w in workers(b)] == ["CONNECTING"] * 2, 10,
               "B's workers up, not registered")
    health = ctl("--config", str(b.config), "health")
    assert health.returncode != 0 and f"not registered with {pair.backend}" in health.stdout
    a = pair.a()
    wait_until(lambda: serving(b, 2) and len(workers(a)) == 2, 10, "B registered with A")
    assert ctl("--config", str(b.config), "health").returncode == 0
    assert ctl("--config", str(a.config), "call", "echo", "echo", '"via b"').stdout.strip() \
        == '"via b"'


def test_a_node_stopping_under_load_loses_no_request_upstream(pair):
    """B leaves only when its uplinks hold no request; A gives what raced the DISCONNECT to
    another worker: A's clients see only "200"."""
    a = pair.start("a", {"echo": {"handler": ECHO, "workers": 1, "external": True}},
                   broker={"backend": pair.backend, "heartbeat_interval": 0.2})
    b = pair.b()
    wait_until(lambda: len(workers(a)) == 3, 10, "A's worker and B's two")
    with Load(frontend(a), "echo", clients=6) as load:
        wait_until(lambda: sum(w["requests"] for w in workers(b)) > 200, 10, "B serving")
        b.proc.send_signal(signal.SIGTERM)
        assert b.proc.wait(10) == 0
        wait_until(lambda: len(workers(a)) == 1, 5, "A to see B gone")
        before = load.answered
        wait_until(lambda: load.answered > before + 100, 10, "A's own worker serving")
    assert load.sent == load.answered and load.statuses == {"200": load.sent}, load.statuses
    # B said DISCONNECT on each uplink, and closed it: A's heartbeat may reach a closed
    # connection before A has read that DISCONNECT (then "lost", holding nothing).
    assert all(e["requests"] == 0 for e in a.events("worker.lost")), a.events("worker.lost")


def test_recycled_node_workers_re_register_with_no_error_and_no_leak(pair):
    a = pair.a()
    b = pair.b(max_requests=50)
    wait_until(lambda: serving(b, 2) and len(workers(a)) == 2, 10, "B registered with A")
    with Load(frontend(a), "echo", clients=4) as load:
        b.wait_event("worker.recycle", count=4, timeout=20)
    assert load.sent == load.answered and load.statuses == {"200": load.sent}, load.statuses
    wait_until(lambda: serving(b, 2) and len(workers(a)) == 2, 10, "two registrations again")
    b.wait_event("uplink.left", count=4)  # each recycled worker left A, none stays behind


def test_a_reload_that_moves_the_node_to_another_broker(pair):
    a = pair.a()
    b = pair.b()
    wait_until(lambda: len(workers(a)) == 2, 10, "B registered with A")
    other = Pair(pair.root)
    pair.backend, first = other.backend, pair.backend
    a2 = pair.a()
    text = b.config.read_text().replace(first, other.backend)
    b.config.write_text(text)
    assert ctl("--config", str(b.config), "reload").returncode == 0
    wait_until(lambda: len(workers(a2)) == 2 and not workers(a), 10, "B moved to A2")
    wait_until(lambda: [(w["state"], (w["upstream"] or {}).get("broker")) for w in workers(b)]
               == [("READY", other.backend)] * 2, 10, "B's workers (maybe replaced) on A2")


@pytest.mark.parametrize("echo, node, problem", [
    ({"broker": "tcp://10.0.0.1:5556"}, None, "is on another host: CURVE is needed"),
    ({"broker": "tcp://127.0.0.1:5556", "broker_key": "KEY"}, None,
     "broker_key and [node] curve_secret_key go together"),
    ({"broker": "tcp://127.0.0.1:5556", "workers": 0}, None, "a node serves an upstream broker"),
    ({"broker_key": "KEY"}, None, "is set but broker is not"),
])
def test_node_mode_configuration_errors(workdir, echo, node, problem):
    import zmq.auth

    keys = workdir / "keys"
    keys.mkdir()
    zmq.auth.create_certificates(keys, "a")
    echo = {k: str(keys / "a.key") if v == "KEY" else v for k, v in echo.items()}
    config = write_config(workdir / "tacore.toml", {"echo": {"handler": ECHO, **echo}},
                          **({"node": node} if node else {}))
    result = run_tacored("--config", str(config), "--check")
    assert result.returncode == 78 and problem in result.stderr, result.stderr


def test_a_node_key_and_the_upstream_key_on_loopback(pair):
    """CURVE on loopback too: A shows B's workers with the name of the key file that admitted
    them."""
    import zmq.auth

    keys = pair.root / "keys"
    (keys / "nodes").mkdir(parents=True)
    zmq.auth.create_certificates(keys, "a")
    zmq.auth.create_certificates(keys / "nodes", "b")
    a = pair.start("a", {"echo": {"workers": 0, "external": True,
                                  "external_keys": [str(keys / "nodes/b.key")]}},
                   broker={"backend": pair.backend, "heartbeat_interval": 0.2,
                           "curve_secret_key": str(keys / "a.key_secret"),
                           "curve_authorized_keys": str(keys / "nodes")})
    b = pair.start("b", {"echo": {"handler": ECHO, "workers": 2, "broker": pair.backend,
                                  "broker_key": str(keys / "a.key")}},
                   node={"curve_secret_key": str(keys / "nodes/b.key_secret")})
    wait_until(lambda: serving(b, 2) and len(workers(a)) == 2, 10, "B registered with A")
    assert {w["node"] for w in workers(a)} == {"b"}
    t0 = time.monotonic()
    assert ctl("--config", str(a.config), "call", "echo", "echo", "1").stdout.strip() == "1"
    assert time.monotonic() - t0 < 5


def test_a_node_serves_a_majordomo_broker_written_from_the_spec(pair):
    """An upstream that never acknowledges READY and heartbeats only idle workers; it is
    restarted, and the node joins the new one by itself."""
    import subprocess
    import sys

    import zmq

    from tests.conftest import ROOT

    def peer_broker():
        proc = subprocess.Popen([sys.executable, "-m", "tests.peers.mdp_broker", pair.backend,
                                 "--interval", "0.2"], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "listening"
        return proc

    def call(body: bytes) -> list[bytes]:
        with zmq.Context.instance().socket(zmq.REQ) as sock:
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(pair.backend)  # the peer's one ROUTER takes clients too
            sock.send_multipart([b"MDPC01", b"echo", body])
            assert sock.poll(5000), "no reply through the peer broker"
            return sock.recv_multipart()

    def stop(proc):
        proc.kill()
        proc.wait(5)
        proc.stdout.close()

    upstream = peer_broker()
    try:
        b = pair.b(wait=False)
        wait_until(lambda: serving(b, 2), 10, "B registered with the peer (its heartbeats)")
        request = b'{"method": "echo", "params": 7}'
        assert call(request) == [b"MDPC01", b"echo", b"200", b"7"]
        stop(upstream)
        wait_until(lambda: [w["state"] for w in workers(b)] == ["CONNECTING"] * 2, 10,
                   "B to notice the silence")
        upstream = peer_broker()
        wait_until(lambda: serving(b, 2), 10, "B registered with the new peer")
        assert call(request) == [b"MDPC01", b"echo", b"200", b"7"]
        assert sum(w["requests"] for w in workers(b)) == 2
    finally:
        stop(upstream)
