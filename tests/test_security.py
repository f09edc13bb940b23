"""CURVE on tcp endpoints: the right key gets in, anything else does not."""

import socket

import zmq
import zmq.auth

from tacore.control.client import ControlClient, Unreachable, curve_options
from tests.helpers import wait_until
from tests.mdp import call
from tests.test_cli import ctl

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def keys(workdir):
    """The daemon's key pair, an authorized client's, and a stranger's."""
    made = {}
    for name, where in (("daemon", "server"), ("client", "server/authorized"),
                        ("stranger", "elsewhere")):
        directory = workdir / where
        directory.mkdir(parents=True, exist_ok=True)
        result = ctl("keygen", str(directory), name)
        assert result.returncode == 0, result.stderr
        made[name] = (directory / f"{name}.key", directory / f"{name}.key_secret")
    made["authorized"] = workdir / "server" / "authorized"
    return made


def worker_ready(endpoint: str, keypair=None, server_key=None, timeout=1.0) -> bool:
    """Connect an MDP worker and see if the daemon heartbeats it back (it got in)."""
    ctx = zmq.Context.instance()
    with ctx.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        if keypair:
            for option, value in curve_options(str(keypair[1]), str(server_key)).items():
                setattr(sock, option, value)
        sock.connect(endpoint)
        sock.send_multipart([b"", b"MDPW01", b"\x01", b"outside"])
        return bool(sock.poll(timeout * 1000))


def test_curve_backend_takes_only_authorized_workers(start_daemon, keys):
    """Own workers and an authorized external worker get in; no key or a stranger's, not."""
    port = free_port()
    d = start_daemon({"tool": {"handler": "tests.workers:Tool"}},
                     broker={"backend": f"tcp://127.0.0.1:{port}", "heartbeat_interval": 0.1,
                             "curve_secret_key": str(keys["daemon"][1]),
                             "curve_authorized_keys": str(keys["authorized"])})
    assert call(f"ipc://{d.runtime}/frontend.sock", "tool", "echo", 1) == ("200", 1)
    backend = f"tcp://127.0.0.1:{port}"
    assert worker_ready(backend, keys["client"], keys["daemon"][0])
    assert not worker_ready(backend)  # plain NULL security: the handshake fails
    assert not worker_ready(backend, keys["stranger"], keys["daemon"][0])
    refused = d.wait_event("auth.refused")[0]
    assert refused["domain"] == "tacore.backend"


def test_curve_control_over_tcp(start_daemon, keys):
    """tacorectl with the right keys reaches a tcp control endpoint; without, it does not."""
    port = free_port()
    start_daemon({"tool": {"handler": "tests.workers:Tool"}},
                 control={"endpoint": f"tcp://127.0.0.1:{port}",
                          "curve_secret_key": str(keys["daemon"][1]),
                          "curve_authorized_keys": str(keys["authorized"])},
                 wait_ready=False, control_socket=False)
    endpoint = f"tcp://127.0.0.1:{port}"
    good = ControlClient(endpoint, 5, curve_options(str(keys["client"][1]),
                                                    str(keys["daemon"][0])))
    wait_until(lambda: _answers(good), 10, "the daemon over tcp")
    result = ctl("--control", endpoint, "--curve-key", str(keys["client"][1]),
                 "--curve-server-key", str(keys["daemon"][0]), "health")
    assert result.returncode in (0, 1), result.stderr
    plain = ctl("--control", endpoint, "--timeout", "0.5", "status")
    assert plain.returncode == 3
    stranger = ControlClient(endpoint, 0.5, curve_options(str(keys["stranger"][1]),
                                                          str(keys["daemon"][0])))
    with pytest.raises(Unreachable):
        stranger.call("ping")


def _answers(client) -> bool:
    try:
        return client.call("ping")["pong"]
    except Unreachable:
        return False


def test_non_loopback_tcp_without_curve_is_refused(workdir):
    """A backend reachable from other hosts without CURVE: exit 78, nothing started."""
    from tests.conftest import run_tacored, write_config
    config = write_config(workdir / "t.toml", {"tool": {"handler": "tests.workers:Tool"}},
                          broker={"backend": "tcp://0.0.0.0:5599"})
    result = run_tacored("--config", str(config))
    assert result.returncode == 78
    assert "reachable from other hosts without CURVE" in result.stderr


def test_control_group_opens_the_socket_to_that_group(start_daemon):
    """[control] group: runtime_dir 0750 and control.sock 0660, owned by that group."""
    import grp
    import os
    group = next((g for g in ("nogroup", "users", "daemon") if _has_group(g)), None)
    if group is None:
        pytest.skip("no spare group on this machine")
    d = start_daemon({"tool": {"handler": "tests.workers:Tool"}}, control={"group": group})
    gid = grp.getgrnam(group).gr_gid
    for path, mode in ((d.runtime, 0o750), (d.runtime / "control.sock", 0o660)):
        info = os.stat(path)
        assert (info.st_mode & 0o777, info.st_gid) == (mode, gid), path
    assert os.stat(d.runtime / "frontend.sock").st_mode & 0o777 == 0o600


def _has_group(name: str) -> bool:
    import grp
    try:
        grp.getgrnam(name)
        return True
    except KeyError:
        return False


def first_reply(endpoint: str, service: bytes, keypair, server_key, timeout=2.0) -> bytes:
    """READY as an MDP worker with ``keypair``; the command of the broker's first answer."""
    with zmq.Context.instance().socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        for option, value in curve_options(str(keypair[1]), str(server_key)).items():
            setattr(sock, option, value)
        sock.connect(endpoint)
        sock.send_multipart([b"", b"MDPW01", b"\x01", service])
        assert sock.poll(timeout * 1000), "no answer from the broker"
        return sock.recv_multipart()[2]


def test_an_authorized_key_serves_only_its_services(start_daemon, keys, workdir):
    """[services.NAME] external_keys: of the authorized keys, only those may serve NAME."""
    other = workdir / "server" / "authorized"
    assert ctl("keygen", str(other), "other").returncode == 0
    port = free_port()
    d = start_daemon({"tool": {"handler": "tests.workers:Tool"},
                      "limited": {"workers": 0, "external_keys": [str(keys["client"][0])]}},
                     broker={"backend": f"tcp://127.0.0.1:{port}", "heartbeat_interval": 0.1,
                             "curve_secret_key": str(keys["daemon"][1]),
                             "curve_authorized_keys": str(keys["authorized"])})
    backend, server = f"tcp://127.0.0.1:{port}", keys["daemon"][0]
    pair = (other / "other.key", other / "other.key_secret")
    assert first_reply(backend, b"limited", pair, server) == b"\x05"  # DISCONNECT
    assert "external_keys" in d.wait_event("worker.refused", service="limited")[0]["reason"]
    assert first_reply(backend, b"limited", keys["client"], server) == b"\x04"  # HEARTBEAT
    assert first_reply(backend, b"elsewhere", pair, server) == b"\x04"  # not limited
